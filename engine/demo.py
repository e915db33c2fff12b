"""`kiln demo`: bake the bundled procedural sample on the CPU, write a GLB and a preview PNG.

No GPU, no downloads: the source is generated (engine.samples.pebble), baked
from 20,480 to 2,000 faces with a 512 px texture, then the source and the
result are rendered side by side from a held-out view.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out-dir", default="demo_out", help="where to write pebble_baked.glb and preview.png (default ./demo_out)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="cpu", help="backend (default cpu)")
    p.add_argument("--faces", type=int, default=2000)
    p.add_argument("--texture-size", type=int, default=512)
    p.add_argument("--json", action="store_true", help="print the bake report as JSON")


def preview(src, result, path: Path, backend_name: str, size: int = 384) -> None:
    from PIL import Image

    from engine.evaluate import heldout_cameras, result_mesh
    from engine.render.cpu import CpuRenderer

    cam = heldout_cameras(src.vertices, 8, size)[2]
    res = result_mesh(result.vertices, result.faces, result.uv, result.texture)
    a, ma, _ = CpuRenderer(src).render(cam)
    b, mb, _ = CpuRenderer(res).render(cam)
    bg = np.array([0.16, 0.16, 0.18], np.float32)
    a = np.where(ma[..., None], a, bg)
    b = np.where(mb[..., None], b, bg)
    tex = np.asarray(Image.fromarray(result.texture).resize((size, size), Image.BILINEAR), np.float32) / 255.0
    img = np.concatenate([a, b, tex], 1)
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(path)


def run(args) -> int:
    from engine.pipeline import bake
    from engine.pipeline.cli import StderrProgress, print_summary, report_error
    from engine.options import BakeOptions
    from engine.samples import pebble

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        src = pebble(5)
        opts = BakeOptions(faces=args.faces, texture_size=args.texture_size, device=args.device, evaluate=True, eval_views=4, eval_resolution=256)
        res = bake(src, out_dir / "pebble_baked.glb", opts, progress=StderrProgress())
        preview(src, res, out_dir / "preview.png", res.report["backend"])
    except Exception as e:  # noqa: BLE001
        return report_error(e)
    if args.json:
        print(json.dumps(res.report, indent=2))
    print_summary(res.report, out_dir / "pebble_baked.glb")
    print(f"kiln demo: preview (source | baked result | texture) at {out_dir / 'preview.png'}", file=sys.stderr)
    return 0
