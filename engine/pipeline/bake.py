"""The bake pipeline: load -> validate -> simplify -> unwrap -> bake -> fit/fill -> export (-> evaluate).

With a ``target`` (the artist's own low-poly, Blender's "selected to
active"), simplify is skipped and the target's vertices, faces and UVs are
kept (unwrap only when it has no UVs, or with ``unwrap=True``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from engine import __version__
from engine.errors import InputError
from engine.mesh.source import SourceMesh
from engine.options import BakeOptions
from engine.progress import CancelCheck, Progress, ProgressCallback

STAGES = {"load": 5, "validate": 1, "simplify": 8, "unwrap": 15, "bake": 50, "dilate": 5, "export": 5, "evaluate": 11}
# "dilate" covers the least-squares texture fit (supersample > 1) and the fill/dilation, channel by channel

PathOrMesh = Union[str, os.PathLike, SourceMesh]


@dataclass
class BakeResult:
    output: Optional[Path]
    report: dict
    vertices: np.ndarray = field(repr=False, default=None)  # (n, 3) float32, source (or target) frame
    faces: np.ndarray = field(repr=False, default=None)  # (m, 3) int32
    uv: np.ndarray = field(repr=False, default=None)  # (n, 2) float32, glTF convention
    texture: np.ndarray = field(repr=False, default=None)  # (S, S, 3|4) uint8 sRGB base colour (+ alpha)
    coverage: np.ndarray = field(repr=False, default=None)  # (S, S) bool, texels the bake saw
    maps: dict = field(repr=False, default_factory=dict)  # channel -> ChannelResult (image or constant)
    normals: np.ndarray = field(repr=False, default=None)  # (n, 3) float32 shading normals written
    tangents: np.ndarray = field(repr=False, default=None)  # (n, 4) float32 MikkTSpace tangents written


def _load(item, options, what="source") -> tuple[SourceMesh, str]:
    from engine.io.load import load_source

    if isinstance(item, SourceMesh):
        return item, item.name
    return load_source(item, options=options), Path(item).name


def bake(
    source: Union[PathOrMesh, Sequence[PathOrMesh]],
    output: Union[str, os.PathLike, None] = None,
    options: Optional[BakeOptions] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
    target: Optional[PathOrMesh] = None,
    cage: Optional[PathOrMesh] = None,
) -> BakeResult:
    """Bake ``source`` (a path, a SourceMesh, or a list of them: merged) into a textured GLB at ``output``.

    ``target``: the artist's low-poly (path or SourceMesh): kept as it is, the material baked onto it.
    ``cage``: a cage mesh with the target's topology (rays start on it, as Cycles' cage object).
    Raises InputError (bad file/arrays/options), BackendError, CancelledError.
    """
    options = (options or BakeOptions()).validate()
    if output is not None:
        from engine.io import require_writable

        require_writable(output)
    stages = dict(STAGES)
    if not options.evaluate:
        stages.pop("evaluate")
    if target is not None:
        stages.pop("simplify")
    prog = Progress(stages, progress, cancel)
    prog.begin("load")
    splats = None
    if type(source).__name__ == "SplatBakeSource":
        splats, src, source_name = source.splats, source.mesh, source.name
    elif isinstance(source, (list, tuple)):
        from engine.mesh.merge import merge_sources

        if not source:
            raise InputError("no source given", code="bad_input")
        loaded = [_load(s, options) for s in source]
        src = merge_sources([m for m, _ in loaded], name="+".join(Path(n).stem for _, n in loaded))
        source_name = loaded[0][1] if len(loaded) == 1 else f"{src.name} ({len(loaded)} sources)"
    else:
        src, source_name = _load(source, options)
    tgt = cage_mesh = None
    if target is not None:
        tgt, _ = _load(target, options, "target")
        if cage is not None:
            cage_mesh, _ = _load(cage, options, "cage")
    elif cage is not None:
        raise InputError("a cage mesh needs a target (--target): it has the target's topology", code="bad_option")
    prog.end()
    return bake_mesh(src, output, options, prog, source_name=source_name, splats=splats, target=tgt, cage=cage_mesh)


def _prepare_target(tgt: SourceMesh, cage_mesh, options: BakeOptions, texture_size: int, padding: int):
    """The artist's low-poly as a bake Target (kept exactly), with its UV checks and report entries."""
    from engine.bake.material import Target
    from engine.mesh.validate import validate_arrays

    v, f, _ = validate_arrays(tgt.vertices, tgt.faces, max_faces=options.max_faces, name=f"target {tgt.name}")
    f = np.ascontiguousarray(np.asarray(tgt.faces, np.int64).astype(np.int32))  # keep every face, degenerate ones too
    info: dict = {"target": tgt.name, "uv_set": options.uv_set}
    uv = tgt.uv_set(options.uv_set)
    normals = tgt.normals
    if normals is not None:
        normals = np.asarray(normals, np.float32)
        if normals.shape != v.shape or not np.isfinite(normals).all() or (np.linalg.norm(normals, axis=1) < 1e-6).any():
            info["normals_note"] = "the target's normals are missing or invalid: recomputed (smooth below 30 degrees)"
            normals = None
    if normals is None:
        from engine.bake.channels.normal import SOURCE_SMOOTH_ANGLE
        from engine.mesh.normals import corner_normals

        normals = corner_normals(v, f, hard=SOURCE_SMOOTH_ANGLE)  # per corner
    vmap = None
    if uv is None or options.unwrap:
        if uv is None and options.uv_set != 0:
            raise InputError(f"the target has no UV set {options.uv_set} (TEXCOORD_{options.uv_set})",
                             hint="use --uv-set 0, or --unwrap for a new atlas", code="bad_option")
        from engine.uv.unwrap import unwrap

        info["uv"] = "new atlas (xatlas)" + (" -- --unwrap" if options.unwrap else ": the target has no UVs")
        v2, f2, uv, vmap = unwrap(v, f, texture_size=texture_size, padding=padding)
        if normals.ndim == 2:
            normals = normals[vmap]
        else:  # per-corner normals follow the faces, which xatlas keeps in order
            pass
        v, f = v2, f2
    else:
        uv = np.asarray(uv, np.float32)
        if not np.isfinite(uv).all():
            raise InputError(f"the target's UV set {options.uv_set} has NaN/Inf coordinates", hint="fix the UV map, or --unwrap", code="bad_input")
        used = np.unique(f)
        lo, hi = uv[used].min(0), uv[used].max(0)
        eps = 1e-4
        if (lo < -eps).any() or (hi > 1 + eps).any():
            out = ((uv[f] < -eps) | (uv[f] > 1 + eps)).any(axis=(1, 2))
            raise InputError(
                f"the target's UVs leave the 0..1 square on {out.mean():.1%} of its faces (u {lo[0]:.3g}..{hi[0]:.3g}, v {lo[1]:.3g}..{hi[1]:.3g}): "
                "UDIM tiles and wrapped UVs cannot be baked into one texture",
                hint="pack the UVs into 0..1 in your DCC tool, or pass --unwrap for a new atlas",
                code="uv_out_of_range",
            )
        uv = np.clip(uv, 0.0, 1.0)
        from engine.bake.texel import uv_overlap_fraction

        frac = uv_overlap_fraction(uv, f, min(texture_size, 1024))
        info["uv_overlap_fraction"] = round(float(frac), 5)
        if frac > 0.001:
            info["warnings"] = [f"{frac:.1%} of the used texels are covered by more than one face (overlapping or mirrored UVs): "
                                "those texels hold one of the overlapping surfaces"]
    cage_v = None
    if cage_mesh is not None:
        cv = np.asarray(cage_mesh.vertices, np.float32)
        if cv.shape != np.asarray(tgt.vertices).shape or np.asarray(cage_mesh.faces).shape != np.asarray(tgt.faces).shape \
                or not np.array_equal(np.asarray(cage_mesh.faces, np.int64), np.asarray(tgt.faces, np.int64)):
            raise InputError(
                f"the cage mesh '{cage_mesh.name}' does not have the target's topology ({len(cv)} vertices / {len(cage_mesh.faces)} faces "
                f"vs {len(tgt.vertices)} / {len(tgt.faces)})",
                hint="make the cage from a copy of the target (same vertices and faces, pushed outwards)",
                code="bad_input",
            )
        cage_v = cv if vmap is None else cv[vmap]
        info["cage_mesh"] = cage_mesh.name
    return Target(v, f, uv, normals=normals, cage=cage_v), info


def bake_mesh(src, output, options: BakeOptions, prog: Progress, source_name: str = "source", splats=None,
              target: Optional[SourceMesh] = None, cage: Optional[SourceMesh] = None) -> BakeResult:
    from engine import backend as backend_mod
    from engine.bake.channels import select
    from engine.bake.material import Target, bake_material
    from engine.mesh.simplify import orient_outward, simplify
    from engine.mesh.validate import validate_source
    from engine.uv.unwrap import unwrap

    t_start = time.perf_counter()
    prog.begin("validate")
    src, vreport = validate_source(src, max_faces=options.max_faces)
    if src.vertex_color is not None and src.vertex_color_interpolation != options.vertex_color_interpolation:
        import dataclasses

        src = dataclasses.replace(src, vertex_color_interpolation=options.vertex_color_interpolation)
    be = backend_mod.resolve(options.device)
    if splats is not None and not be.supports_splats:
        from engine.errors import BackendError

        raise BackendError(
            "splat sources are rendered with gsplat and need the CUDA backend",
            hint="run on a machine with an NVIDIA GPU, torch with CUDA, nvdiffrast and gsplat (see `kiln doctor`)",
            code="cuda_unavailable",
        )
    prepare_now = splats is None and (target is not None or be.prepare_beside_simplify)
    if prepare_now:
        be.prepare(src, options)  # the source's side of the bake starts now, beside simplify and unwrap
    tinfo: dict = {}
    if target is not None:
        tgt, tinfo = _prepare_target(target, cage, options, options.texture_size, options.padding)
    prog.end()

    flipped = False
    if target is None:
        prog.begin("simplify", f"{src.n_faces} -> {options.faces} faces")
        low_v, low_f = simplify(src.vertices, src.faces, options.faces, aggression=options.simplify_aggression, progress=prog)
        low_f, flipped = orient_outward(low_v, low_f)
        prog.end()
        prog.begin("unwrap", f"xatlas on {len(low_f)} faces")
        if splats is None and not prepare_now:
            be.prepare(src, options)  # (the CPU's: beside simplify it slows simplify down more than it gains)
        uv_v, uv_f, uv, _ = unwrap(low_v, low_f, texture_size=options.texture_size, padding=options.padding)
        prog.end()
        tgt = Target(uv_v, uv_f, uv)
        new_geometry = len(low_f) != src.n_faces or not np.array_equal(np.sort(low_v, axis=0), np.sort(src.vertices, axis=0))
    else:
        prog.begin("unwrap", tinfo.get("uv", "the target's own UVs"))
        prog.end()
        new_geometry = True
    names = select(options.maps, src, new_geometry=new_geometry)
    if splats is not None:
        names = ("base",) if options.maps == "auto" else names

    diag = float(np.linalg.norm(src.vertices.max(0) - src.vertices.min(0)))
    if target is not None:
        diag = max(diag, float(np.linalg.norm(np.ptp(tgt.vertices, 0))))
    prog.begin("bake", f"{be.name} backend: {', '.join(names)}")
    view_renderer = None
    if splats is not None:
        from engine.pipeline.splat import splat_renderer_for

        view_renderer = splat_renderer_for(splats, options)
    fit_prog = _DeferredStage(prog, "dilate")
    mb = bake_material(src, tgt, names, be, texture_size=options.texture_size, supersample=options.supersample,
                       padding=options.padding, cage=float(options.cage) * diag, options=options,
                       progress_bake=prog, progress_fit=fit_prog, view_renderer=view_renderer)
    bake_info = dict(mb.info)
    if splats is not None:
        bake_info["source"] = f"gaussian splats ({splats.n:,})"
    fit_prog.finish()

    prog.begin("export")
    out_path = None
    if output is not None:
        from engine.io.export import write_glb

        out_path = Path(output)
        try:
            write_glb(out_path, mb.vertices, mb.faces, mb.uv, mb.results, normals=mb.normals, tangents=mb.tangents,
                      name=Path(source_name).stem or "kiln")
        except OSError as e:
            from engine.errors import KilnError

            raise KilnError(f"cannot write '{out_path}': {e.strerror or e}", hint="check free disk space and permissions of the output folder", code="write_failed")
    prog.end()

    base = mb.results["base"]
    texture_u8 = base.image
    ignored = sorted(set(src.ignored_features))
    report = {
        "kiln_version": __version__,
        "source": source_name,
        "backend": be.name,
        "backend_reason": be.reason,
        "texture_size": options.texture_size,
        "faces_in": int(vreport["faces_in"]),
        "faces_valid": int(src.n_faces),
        "faces_dropped": int(vreport["faces_dropped"]),
        "faces_out": int(len(mb.faces)),
        "vertices_out": int(len(mb.vertices)),
        "triangles_in": int(vreport["faces_in"]),
        "triangles_out": int(len(mb.faces)),
        "appearance": src.appearance_kind(),
        "winding_flipped": bool(flipped),
        "coverage": float(np.asarray(mb.coverage).mean()),
        "maps": {n: r.kind for n, r in mb.results.items()},
        "alpha_mode": base.meta.get("alpha_mode", "OPAQUE"),
        "ignored_features": ignored,
        "texels_missed": int(mb.info.get("texels_missed", 0)),
        "raster_overdraw": vreport.get("raster_overdraw"),  # mean surface layers per bake-view pixel (engine.mesh.validate)
        "bake": bake_info,
        "options": options.to_dict(),
    }
    if "emissive" in mb.results:
        report["emissive_strength"] = float(mb.results["emissive"].meta.get("strength", 1.0))
    if target is not None:
        report["mode"] = "target"
        report.update({k: v for k, v in tinfo.items() if k != "warnings"})
        report["warnings"] = list(tinfo.get("warnings", []))
    else:
        report["mode"] = "new"
    if vreport.get("notes"):
        report["notes"] = list(vreport["notes"])
    if options.evaluate:
        from engine.evaluate import heldout_psnr

        prog.begin("evaluate")
        report["evaluate"] = heldout_psnr(src, mb.vertices, mb.faces, mb.uv, texture_u8 if texture_u8 is not None else
                                          np.broadcast_to(np.round(base.constant * 255).astype(np.uint8), (4, 4, len(base.constant))),
                                          options, be, prog, splats=splats)
        report["psnr"] = report["evaluate"]["psnr"]
        prog.end()
    report["timings"] = {k: round(v, 4) for k, v in prog.finish().items()}
    report["total_seconds"] = round(time.perf_counter() - t_start + report["timings"].get("load", 0.0), 4)
    return BakeResult(out_path, report, mb.vertices, mb.faces, mb.uv, texture_u8, np.asarray(mb.coverage), maps=mb.results,
                      normals=mb.normals, tangents=mb.tangents)


class _DeferredStage:
    """Progress for the fit/fill stage, begun on its first update (the bake stage ends where it starts)."""

    def __init__(self, prog: Progress, stage: str):
        self.prog, self.stage, self.started = prog, stage, False

    def update(self, fraction: float, message: str = "") -> None:
        if not self.started:
            self.prog.begin(self.stage, message)
            self.started = True
        self.prog.update(fraction, message)

    def finish(self) -> None:
        if not self.started:
            self.prog.begin(self.stage)
        self.prog.end()
