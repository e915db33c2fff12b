"""`kiln reconstruct IMAGE [--mask M] [--backend inflate|sam3d] -o OUT.glb`.

Reconstruction, then the same simplify/unwrap/bake/export stages as
`kiln bake` (same bake options, progress, report and exit codes: 0 ok,
1 internal error, 2 bad input, 3 backend unavailable, 130 cancelled).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from engine.pipeline.cli import add_bake_arguments

    p.add_argument("image", help="photo of the object (PNG, JPEG, WebP, ...); a PNG with an alpha cut-out needs no mask")
    p.add_argument("-o", "--output", required=True, help="output .glb")
    p.add_argument("--mask", help="foreground mask image of the same size (any nonzero pixel = object); default: the image's alpha, else automatic (GrabCut)")
    p.add_argument("--backend", default="inflate", choices=["inflate", "sam3d"], help="reconstruction backend (default inflate: no weights, CPU)")
    p.add_argument("--no-auto-mask", action="store_true", help="fail instead of segmenting automatically when there is no mask and no alpha")
    p.add_argument("--no-checks", action="store_true", help="skip the front-view IoU/PSNR/watertight checks")
    g = p.add_argument_group("inflate backend")
    g.add_argument("--keep-all-components", action="store_true", help="keep every part of the silhouette, not just the largest")
    g.add_argument("--back", default="shaded", help="back side: shaded (default: the front's colours blurred and darkened, no face shows through), "
                   "average (the front's mean colour), mirror (the front seen from behind) or a colour #rrggbb / r,g,b")
    g.add_argument("--depth", type=float, default=0.3, help="maximum thickness as a fraction of the object's larger side (default 0.3)")
    g.add_argument("--inflation", type=float, default=1.0, help="profile multiplier; 1 = round rim (default 1)")
    g.add_argument("--max-size", type=int, default=1024, help="working resolution: longest image side in pixels (default 1024)")
    g = p.add_argument_group("sam3d backend")
    g.add_argument("--sam3d-config", help="SAM 3D checkpoints/<tag>/pipeline.yaml (default $KILN_SAM3D_CONFIG)")
    g.add_argument("--sam3d-repo", help="sam-3d-objects checkout holding notebook/inference.py (default $KILN_SAM3D_REPO or derived from the config)")
    g.add_argument("--seed", type=int, default=42, help="SAM 3D sampling seed (default 42)")
    g.add_argument("--frame", choices=["camera", "canonical"], default="camera", help="SAM 3D object orientation: as the photo sees it (camera) or SAM 3D's own (canonical)")
    add_bake_arguments(p)


def recon_options_from_args(args) -> dict:
    ro = {
        "backend": args.backend,
        "mask": args.mask,
        "auto_mask": not args.no_auto_mask,
        "checks": not args.no_checks,
    }
    if args.backend == "inflate":
        ro.update(
            keep_all_components=bool(args.keep_all_components),
            back=args.back,
            depth=args.depth,
            inflation=args.inflation,
            max_size=args.max_size,
        )
    else:
        ro.update(config=args.sam3d_config, repo=args.sam3d_repo, seed=args.seed, frame=args.frame)
    return ro


def print_summary(report: dict, output) -> None:
    from engine.pipeline.cli import print_summary as bake_summary

    bake_summary(report, output)
    rec = report.get("reconstruct", {})
    fg = rec.get("foreground", {})
    line = f"kiln: reconstruct: backend {rec.get('backend')}, foreground from {fg.get('source')} ({fg.get('pixels')} px)"
    for k, c in (rec.get("checks") or {}).items():
        line += (
            f"; {k}: IoU {c['iou']:.3f}, PSNR {c['psnr']:.1f} dB, "
            f"{'watertight' if c.get('watertight') else 'NOT watertight'}, {'PASS' if c['passed'] else 'FAIL'}"
        )
    print(line, file=sys.stderr)
    from engine.reconstruct.pipeline import mask_parts_warning

    warn = mask_parts_warning(report)
    if warn:
        print(f"kiln: warning: {warn}", file=sys.stderr)


def run(args) -> int:
    from engine.pipeline.cli import StderrProgress, options_from_args, run_and_report
    from engine.reconstruct.pipeline import reconstruct

    def produce():
        opts = options_from_args(args)
        return reconstruct(args.image, args.output, opts, recon_options_from_args(args), progress=StderrProgress(args.quiet))

    return run_and_report(produce, args, summary=print_summary)
