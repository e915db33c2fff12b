"""`kiln bake SOURCE -o OUT.glb`: the CLI face of engine.pipeline.bake.

Progress (stage + percent) goes to stderr: a redrawn bar on a terminal, one
line per stage/10% step otherwise. Bad input prints one line and exits 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

from engine.errors import KilnError
from engine.options import BakeOptions


def add_bake_arguments(p: argparse.ArgumentParser) -> None:
    d = BakeOptions()
    p.add_argument("--faces", type=int, default=d.faces, help=f"target triangle count (default {d.faces})")
    p.add_argument("--texture-size", type=int, default=d.texture_size, help=f"texture side in texels (default {d.texture_size})")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d.device, help="compute backend (default auto: cuda if usable)")
    p.add_argument("--views", type=int, default=d.views, help=f"bake views around the object, cuda (default {d.views})")
    p.add_argument("--view-resolution", type=int, default=d.view_resolution, help=f"bake view size in pixels, cuda (default {d.view_resolution})")
    p.add_argument("--padding", type=int, default=d.padding, help=f"chart padding/dilation in texels (default {d.padding})")
    p.add_argument("--cage", type=float, default=d.cage, help=f"ray search distance as a fraction of the bbox diagonal, cpu (default {d.cage})")
    p.add_argument("--max-faces", type=int, default=d.max_faces, help=f"refuse larger inputs (default {d.max_faces:,})")
    p.add_argument("--maps", default=d.maps, help="channels to bake: auto (every channel the source has, plus a normal map when the "
                   "geometry changes), all, or a comma list of base,normal,orm,emissive (default auto)")
    p.add_argument("--vertex-colors", choices=["linear", "srgb"], default=d.vertex_color_interpolation, dest="vertex_color_interpolation",
                   help="how the source's vertex colours blend across a triangle: linear (glTF, Blender; default) or srgb "
                   "(as TRELLIS / SAM 3D / Hunyuan3D render their meshes)")
    p.add_argument("--no-view-fit", action="store_true", help="cuda: skip the least-squares refinement of the base colour against "
                   "renders of the source (faster, slightly less faithful)")
    p.add_argument("--evaluate", action="store_true", help="measure held-out PSNR of the result against the source")
    p.add_argument("--eval-views", type=int, default=d.eval_views, help=argparse.SUPPRESS)
    p.add_argument("--eval-resolution", type=int, default=d.eval_resolution, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def options_from_args(args) -> BakeOptions:
    return BakeOptions(
        faces=args.faces,
        texture_size=args.texture_size,
        device=args.device,
        views=args.views,
        view_resolution=args.view_resolution,
        padding=args.padding,
        cage=args.cage,
        evaluate=bool(args.evaluate),
        eval_views=args.eval_views,
        eval_resolution=args.eval_resolution,
        max_faces=args.max_faces,
        maps=args.maps,
        vertex_color_interpolation=getattr(args, "vertex_color_interpolation", "linear"),
        view_fit=not bool(getattr(args, "no_view_fit", False)),
        uv_set=getattr(args, "uv_set", 0),
        unwrap=bool(getattr(args, "unwrap", False)),
    ).validate()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="+", help="mesh (.glb .gltf .obj .ply, or a .zip of an OBJ with its .mtl and textures); "
                   "several sources are merged into one (many high-poly parts -> one target)")
    p.add_argument("-o", "--output", required=True, help="output .glb")
    p.add_argument("--mesh", help="target mesh for a Gaussian-splat source (splat PLY)")
    p.add_argument("--target", help="your own low-poly (.glb .gltf .obj .ply): keep its vertices, faces and UVs and bake onto it "
                   "(Blender's 'selected to active')")
    p.add_argument("--uv-set", type=int, default=0, help="with --target: which UV set (TEXCOORD_n) to bake into (default 0)")
    p.add_argument("--unwrap", action="store_true", help="with --target: make a new atlas instead of using its UVs")
    p.add_argument("--cage-mesh", help="with --target: a cage (the target's topology, pushed outwards); rays start on it")
    add_bake_arguments(p)


class StderrProgress:
    """Progress printer: a bar on a terminal, sparse lines otherwise."""

    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = (None, -1)
        self.t0 = time.perf_counter()

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if self.quiet:
            return
        pct = int(fraction * 100)
        if self.tty:
            bar = "#" * (pct // 4) + "-" * (25 - pct // 4)
            msg = f"\r[{bar}] {pct:3d}% {stage:<9} {message[:40]:<40}"
            self.stream.write(msg + ("\n" if stage == "done" else ""))
            self.stream.flush()
            return
        step = pct // 10
        if (stage, step) != self.last:
            self.last = (stage, step)
            el = time.perf_counter() - self.t0
            self.stream.write(f"kiln: {pct:3d}% {stage}{(': ' + message) if message else ''} ({el:.1f}s)\n")
            self.stream.flush()


def report_error(e: BaseException) -> int:
    if isinstance(e, KilnError):
        line = f"kiln: error: {e.message}"
        if e.hint:
            line += f" (hint: {e.hint})"
        print(line, file=sys.stderr)
        return e.exit_code
    if isinstance(e, MemoryError):
        print("kiln: error: out of memory (hint: use a smaller --texture-size or --faces, or simplify the source first)", file=sys.stderr)
        return 1
    print(f"kiln: internal error: {e.__class__.__name__}: {e} (please report this; traceback below)", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)
    return 1


def print_summary(report: dict, output) -> None:
    t = report.get("timings", {})
    parts = ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
    maps = report.get("maps") or {}
    mtxt = ", ".join(f"{k}" + ("" if v == "texture" else " (factor)") for k, v in maps.items())
    line = (
        f"kiln: wrote {output}: {report.get('triangles_in', report['faces_in']):,} -> {report.get('triangles_out', report['faces_out']):,} triangles"
        f"{' (your target)' if report.get('mode') == 'target' else ''}, {report['texture_size']}px maps: {mtxt or 'base'}; "
        f"backend {report['backend']}; {parts}"
    )
    if "psnr" in report:
        line += f"; held-out PSNR {report['psnr']:.2f} dB"
    print(line, file=sys.stderr)
    for w in report.get("warnings", []):
        print(f"kiln: warning: {w}", file=sys.stderr)
    if report.get("texels_missed"):
        print(f"kiln: note: {report['texels_missed']:,} texels found no source within the cage (filled from their neighbours); "
              "a larger --cage or a --cage-mesh reaches them", file=sys.stderr)
    if report.get("ignored_features"):
        print(f"kiln: note: not baked: {'; '.join(report['ignored_features'])}", file=sys.stderr)


def run_and_report(produce, args, summary=None) -> int:
    """Run ``produce()`` -> BakeResult; every failure becomes one line + exit code; --json/--quiet handled."""
    try:
        res = produce()
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line + exit code
        if isinstance(e, KeyboardInterrupt):
            raise
        return report_error(e)
    if args.json:
        print(json.dumps(res.report, indent=2))
    if not args.quiet:
        (summary or print_summary)(res.report, args.output)
    return 0


def run(args) -> int:
    from engine.pipeline import bake

    def produce():
        from engine.errors import InputError

        opts = options_from_args(args)
        sources = list(args.source)
        source = sources[0] if len(sources) == 1 else sources
        if getattr(args, "mesh", None):
            from engine.pipeline.splat import splat_source

            if len(sources) != 1 or args.target:
                raise InputError("--mesh takes one splat source and no --target", code="bad_option")
            source = splat_source(sources[0], args.mesh)
        if (args.uv_set or args.unwrap or args.cage_mesh) and not args.target:
            raise InputError("--uv-set, --unwrap and --cage-mesh need --target", hint="--target LOW.glb names your low-poly", code="bad_option")
        return bake(source, args.output, opts, progress=StderrProgress(args.quiet), target=args.target, cage=args.cage_mesh)

    return run_and_report(produce, args)
