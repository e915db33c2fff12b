"""Bake benchmark: Kiln vs a re-implementation of the TRELLIS / SAM 3D `bake_texture` baseline.

    python benchmarks/bake.py                      # CUDA: ~328K-face source -> 16K faces, 1024^2, 100 views at 1024^2
    python benchmarks/bake.py --device cpu --faces 20000   # CPU target: 20K faces at 1024^2 on 2 cores

Prints per-stage timings, peak GPU memory and held-out PSNR (views never used
for baking, same metric for every method). The baseline gets Kiln's own
low-poly mesh and UV atlas and the same 100 source renders as observations, so
only the bake step differs; its time excludes rendering those observations.
Baseline modes, as described for TRELLIS' postprocessing:
  opt : texture zero-initialised, Adam lr 1e-2 betas (0.5, 0.9), 2500 steps of one random view each,
        L1 on the mask + 0.01 total variation, cosine lr to 1e-5, then Telea inpainting of empty texels;
  fast: per view, nearest-texel average of observed colours, then Telea inpainting.
This is a benchmark (prints figures), not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.options import BakeOptions  # noqa: E402


def log(*a):
    print(*a, flush=True)


def telea_fill(tex_u8: np.ndarray, empty: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.inpaint(np.ascontiguousarray(tex_u8), empty.astype(np.uint8), 3, cv2.INPAINT_TELEA)


def baseline(mode: str, vertices, faces, uv, observations, masks, cams, S: int, steps: int = 2500, seed: int = 0):
    """TRELLIS-style bake of observations (V,H,W,3 in [0,1], cuda) onto the UV atlas. -> (uint8 texture, seconds)."""
    import nvdiffrast.torch as dr
    import torch

    from engine.render.nvdr import _f32, _i32, cams_to_tensors, context

    dev = "cuda"
    ctx = context(dev)
    pos = _f32(vertices, dev)
    tri = _i32(faces, dev)
    uvt = _f32(uv, dev)[None]
    mvp, _, _ = cams_to_tensors(cams, dev)
    H = observations.shape[1]
    ph = torch.cat([pos, torch.ones_like(pos[:, :1])], 1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if mode == "fast":
        acc = torch.zeros((S * S, 3), device=dev)
        cnt = torch.zeros((S * S,), device=dev)
        for i in range(len(cams)):
            clip = (ph @ mvp[i].T)[None].contiguous()
            rast, _ = dr.rasterize(ctx, clip, tri, resolution=[H, H])
            uvi, _ = dr.interpolate(uvt, rast, tri)
            m = (rast[0, ..., 3] > 0) & masks[i]
            px = (uvi[0][m] * S).floor().long().clamp(0, S - 1)
            idx = px[:, 1] * S + px[:, 0]
            acc.index_add_(0, idx, observations[i][m])
            cnt.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        filled = cnt > 0
        acc[filled] /= cnt[filled][:, None]
        tex = (acc.reshape(S, S, 3).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        empty = (~filled).reshape(S, S).cpu().numpy()
    else:
        uvs, uvds, tmasks = [], [], []
        with torch.no_grad():
            for i in range(len(cams)):
                clip = (ph @ mvp[i].T)[None].contiguous()
                rast, rast_db = dr.rasterize(ctx, clip, tri, resolution=[H, H])
                u, ud = dr.interpolate(uvt, rast, tri, rast_db=rast_db, diff_attrs="all")
                uvs.append(u)
                uvds.append(ud)
                tmasks.append(rast[0, ..., 3] > 0)
        texture = torch.nn.Parameter(torch.zeros((1, S, S, 3), device=dev))
        opt = torch.optim.Adam([texture], betas=(0.5, 0.9), lr=1e-2)
        rng = np.random.default_rng(seed)

        def tv(t):
            return torch.nn.functional.l1_loss(t[:, :-1], t[:, 1:]) + torch.nn.functional.l1_loss(t[:, :, :-1], t[:, :, 1:])

        for step in range(steps):
            i = int(rng.integers(0, len(cams)))
            opt.zero_grad()
            render = dr.texture(texture, uvs[i], uvds[i], filter_mode="linear-mipmap-linear")[0]
            m = masks[i] & tmasks[i]
            loss = torch.nn.functional.l1_loss(render[m], observations[i][m]) + 0.01 * tv(texture)
            loss.backward()
            opt.step()
            for g in opt.param_groups:
                g["lr"] = 1e-5 + 0.5 * (1e-2 - 1e-5) * (1 + math.cos(math.pi * (step + 1) / steps))
        with torch.no_grad():
            tex = (texture[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            clip = torch.cat([uvt[0] * 2 - 1, torch.zeros_like(uvt[0][:, :1]), torch.ones_like(uvt[0][:, :1])], 1)[None].contiguous()
            r, _ = dr.rasterize(ctx, clip, tri, resolution=[S, S])
            empty = (r[0, ..., 3] == 0).cpu().numpy()
    tex = telea_fill(tex, empty)
    torch.cuda.synchronize()
    return tex, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--source", help="mesh file (default: procedural pebble, 327,680 faces)")
    ap.add_argument("--subdivisions", type=int, default=7)
    ap.add_argument("--faces", type=int, default=16000)
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--views", type=int, default=100)
    ap.add_argument("--view-resolution", type=int, default=1024)
    ap.add_argument("--eval-views", type=int, default=8)
    ap.add_argument("--eval-resolution", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=2500, help="baseline 'opt' steps")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="Kiln runs (the first one pays CUDA/JIT warm-up)")
    ap.add_argument("--json-out", help="write all figures here as JSON")
    args = ap.parse_args()

    from engine.io.load import load_source
    from engine.pipeline import bake
    from engine.samples import pebble

    import torch

    src = load_source(args.source) if args.source else pebble(args.subdivisions)
    log(f"source: {src.name}, {len(src.faces):,} faces, appearance {src.appearance_kind()}")
    log(f"machine: {os.cpu_count()} CPU cores" + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))
    opts = BakeOptions(faces=args.faces, texture_size=args.texture_size, device=args.device, views=args.views, view_resolution=args.view_resolution,
                       evaluate=True, eval_views=args.eval_views, eval_resolution=args.eval_resolution)
    import tempfile

    tmp_glb = Path(tempfile.mkdtemp()) / "kiln_bench.glb"
    figures = {"source_faces": int(len(src.faces)), "options": opts.to_dict(), "kiln": []}
    res = None
    for rep in range(max(1, args.repeats)):
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = bake(src, tmp_glb, opts)
        wall = time.perf_counter() - t0
        r = res.report
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
        pipeline_s = wall - r["timings"].get("evaluate", 0.0)
        row = {"run": rep, "pipeline_seconds_without_evaluate": round(pipeline_s, 3), "timings": r["timings"], "psnr": r["psnr"],
               "faces_out": r["faces_out"], "peak_gpu_gib": None if peak is None else round(peak, 3), "bake_info": r["bake"]}
        figures["kiln"].append(row)
        log(f"kiln run {rep}: whole bake (load..export) {pipeline_s:.3f}s, held-out PSNR {r['psnr']:.2f} dB, faces {r['faces_out']}, "
            + (f"peak GPU {peak:.2f} GiB" if peak is not None else "cpu"))
        log("   stages: " + ", ".join(f"{k} {v:.3f}s" for k, v in r["timings"].items()))
    if args.device == "cuda" and not args.no_baseline:
        from engine.evaluate import heldout_psnr
        from engine.render.cameras import BAKE_OFFSET, bounding_sphere, sphere_cameras
        from engine.render.nvdr import GpuMesh, cams_to_tensors

        c, rad = bounding_sphere(src.vertices)
        cams = sphere_cameras(c, rad, args.views, args.view_resolution, offset=BAKE_OFFSET)
        gm = GpuMesh(src)
        obs, msk = [], []
        with torch.no_grad():
            for s in range(0, len(cams), 10):
                mvp, _, _ = cams_to_tensors(cams[s : s + 10], "cuda")
                col, m, _ = gm.render(mvp, args.view_resolution)
                obs.append(col)
                msk.append(m)
        obs = torch.cat(obs)
        msk = torch.cat(msk)
        figures["baseline"] = {}
        for mode in ("fast", "opt"):
            torch.cuda.reset_peak_memory_stats()
            tex, secs = baseline(mode, res.vertices, res.faces, res.uv, obs, msk, cams, args.texture_size, steps=args.steps)
            ev = heldout_psnr(src, res.vertices, res.faces, res.uv, tex, opts, res_backend(), None)
            peak = torch.cuda.max_memory_allocated() / 2**30
            figures["baseline"][mode] = {"bake_seconds": round(secs, 3), "psnr": ev["psnr"], "peak_gpu_gib": round(peak, 3)}
            log(f"baseline {mode}: bake {secs:.3f}s (observations given), held-out PSNR {ev['psnr']:.2f} dB, peak GPU {peak:.2f} GiB")
        best = figures["kiln"][-1]
        log(f"kiln bake stage {best['timings']['bake']:.3f}s (renders its own 100 views) at {best['psnr']:.2f} dB "
            f"vs baseline opt {figures['baseline']['opt']['bake_seconds']:.2f}s at {figures['baseline']['opt']['psnr']:.2f} dB, "
            f"fast {figures['baseline']['fast']['bake_seconds']:.2f}s at {figures['baseline']['fast']['psnr']:.2f} dB")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))


def res_backend():
    from engine.backend import Backend

    return Backend("cuda", "cuda", "benchmark")


if __name__ == "__main__":
    main()
