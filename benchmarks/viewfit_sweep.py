"""Sweep of the CUDA base-colour bake's settings on one fixed low-poly and atlas (issue 12's quality goal).

    python benchmarks/viewfit_sweep.py --json-out benchmarks/results/h200_viewfit_sweep.json

The benchmark's pebble (327,680 faces) is simplified and unwrapped once (16,000 faces, 1024^2); every
variant then bakes the base colour onto that same target, and is scored by benchmarks/bake.py's
independent renderer on 16 random held-out views (not bake views) under both colour conventions; the
2500-step TRELLIS-style baseline is given the same mesh, atlas and 100 observations rendered under each
convention. Variants: the view weight cos^p of the texel gather, the view fit (engine.bake.viewfit) on
or off with its weight against the texel-space samples, its depth tolerance and CG iterations, and the
source's vertex-colour interpolation (linear = glTF, srgb = TRELLIS' renders). CUDA only; prints
figures and writes JSON (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subdivisions", type=int, default=7)
    ap.add_argument("--faces", type=int, default=16000)
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--set", default="weights", choices=["weights", "views"],
                    help="weights: gather cos power, view-fit weight, depth test, iterations; views: number and size of bake views")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    import torch

    import bake as bench  # benchmarks/bake.py: scorer, baseline, cameras
    import engine.bake.cuda as cuda_mod
    import engine.bake.fit as fit_mod
    from engine import backend as backend_mod
    from engine.bake.material import Target, bake_material
    from engine.mesh.simplify import orient_outward, simplify
    from engine.mesh.validate import validate_source
    from engine.options import BakeOptions
    from engine.render.cameras import BAKE_OFFSET, bounding_sphere, fibonacci_directions, sphere_cameras
    from engine.samples import pebble
    from engine.uv.unwrap import unwrap

    src, _ = validate_source(pebble(args.subdivisions), max_faces=10_000_000)
    lv, lf = simplify(src.vertices, src.faces, args.faces)
    lf, _ = orient_outward(lv, lf)
    tv, tf, tuv, _ = unwrap(lv, lf, texture_size=args.texture_size)
    tgt = Target(tv, tf, tuv)
    be = backend_mod.resolve("cuda")
    c, rad = bounding_sphere(src.vertices)
    scorer = bench.Scorer(src, bench.random_cameras(c, rad, 16, 1024, 12, fibonacci_directions(100, BAKE_OFFSET)), "cuda")
    diag = float(np.linalg.norm(src.vertices.max(0) - src.vertices.min(0)))
    figures = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "gpu": torch.cuda.get_device_name(0), "source_faces": int(len(src.faces)),
               "target_faces": int(len(tf)), "texture_size": args.texture_size, "variants": []}
    orig_fit = fit_mod.fit_texture
    orig_obs = cuda_mod.CudaBackend.view_observer

    def run(name, conv="linear", cos=4.0, view_fit=True, weight=16.0, iters=16, depth=None, views=100, res=1024):
        cuda_mod.COS_POWER = cos
        fit_mod.fit_texture = lambda *a, **k: orig_fit(*a, **{**k, "view_weight": weight, "iters": iters})
        cuda_mod.CudaBackend.view_observer = (lambda self, t, ch, S, tol: orig_obs(self, t, ch, S, depth)) if depth else orig_obs
        s = dataclasses.replace(src, vertex_color_interpolation=conv)
        opts = BakeOptions(device="cuda", faces=args.faces, texture_size=args.texture_size, view_fit=view_fit, vertex_color_interpolation=conv,
                           views=views, view_resolution=res)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        mb = bake_material(s, tgt, ("base",), be, texture_size=args.texture_size, supersample=2, padding=4, cage=0.02 * diag,
                           options=opts, progress_bake=_Null(), progress_fit=_Null())
        torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        p = scorer.score(mb.vertices, mb.faces, mb.uv, mb.results["base"].image)
        row = {"name": name, "convention": conv, "cos_power": cos, "view_fit": view_fit, "view_weight": weight, "iters": iters,
               "depth_tol": depth or "cage", "views": views, "view_resolution": res, "bake_seconds": round(secs, 3), "psnr": p,
               "view_fit_seconds": mb.info.get("view_fit_seconds"), "observations": mb.info.get("view_fit_observations")}
        figures["variants"].append(row)
        print(f"{name:28s} {conv:6s} {secs:6.3f}s  psnr srgb {p['srgb']:.3f}  linear {p['linear']:.3f}  obs {row['observations']}", flush=True)

    for conv in ("linear", "srgb") if args.set == "weights" else ():
        run("gather only (cos^4)", conv, view_fit=False)
        run("gather only (cos^1)", conv, cos=1.0, view_fit=False)
        run("gather only (cos^2)", conv, cos=2.0, view_fit=False)
        for w in (1.0, 4.0, 16.0, 64.0):
            run(f"view fit w{w:g}", conv, weight=w)
        run("view fit w16 cos^1", conv, cos=1.0, weight=16.0)
        run("view fit w16 no depth test", conv, weight=16.0, depth=1e30)
        run("view fit w16 32 iters", conv, weight=16.0, iters=32)
        run("view fit w64 64 iters", conv, weight=64.0, iters=64)
    for conv in ("linear", "srgb") if args.set == "views" else ():
        run("warm-up", conv)
        for views, res in ((100, 1024), (50, 1024), (200, 1024), (300, 1024), (100, 2048), (100, 512)):
            run(f"view fit, {views} views at {res}", conv, views=views, res=res)
        run("gather only, 200 views", conv, view_fit=False, views=200)
    fit_mod.fit_texture = orig_fit
    cuda_mod.CudaBackend.view_observer = orig_obs
    cuda_mod.COS_POWER = 4.0
    if not args.no_baseline:
        cams = sphere_cameras(c, rad, 100, 1024, offset=BAKE_OFFSET)
        figures["baseline"] = {}
        for conv in ("linear", "srgb"):
            obs, msk = scorer.observations(src, cams, conv)
            tex, secs = bench.baseline("opt", tv, tf, tuv, obs, msk, cams, args.texture_size, steps=args.steps)
            p = scorer.score(tv, tf, tuv, tex)
            figures["baseline"][conv] = {"seconds": round(secs, 3), "psnr": p}
            print(f"baseline opt on {conv} observations: {secs:.2f}s psnr srgb {p['srgb']:.3f} linear {p['linear']:.3f}", flush=True)
            del obs, msk
            torch.cuda.empty_cache()
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
        print("figures ->", args.json_out)


class _Null:
    def update(self, *a, **k):
        pass


if __name__ == "__main__":
    main()
