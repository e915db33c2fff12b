"""Batch throughput: `kiln batch` (local workers, Ray actors) against a shell loop of `kiln bake`.

    python benchmarks/batch.py                        # 20 small assets, CPU, --jobs 2: local vs ray vs loop
    python benchmarks/batch.py --assets 100 --device cuda --modes local,ray --texture-size 1024 --faces 16000 --subdivisions 6

Each mode bakes the same generated assets (vertex-coloured icospheres with a noisy colour field)
into its own output folder, timed end to end as a user would run it (process start, worker /
actor start, every bake, summary). The loop pays Python + torch start-up for every asset; the
executors pay it once per worker. Prints a table and writes the figures as JSON (--json-out).
A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_assets(folder: Path, n: int, subdivisions: int) -> int:
    import numpy as np
    import trimesh

    folder.mkdir(parents=True, exist_ok=True)
    faces = 0
    for i in range(n):
        m = trimesh.creation.icosphere(subdivisions=subdivisions)
        rng = np.random.default_rng(i)
        m.vertices *= 1.0 + 0.15 * rng.standard_normal((1, 3))
        c = (np.sin(m.vertices @ rng.standard_normal((3, 3)) * 3.0) * 0.5 + 0.5) * 255
        m.visual.vertex_colors = np.concatenate([c, np.full((len(c), 1), 255)], 1).astype(np.uint8)
        m.export(folder / f"asset_{i:03d}.glb")
        faces = len(m.faces)
    return faces


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.pop("RAY_ADDRESS", None)
    return e


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0, r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", type=int, default=20)
    p.add_argument("--subdivisions", type=int, default=4, help="icosphere subdivisions of each source (4: 5,120 faces)")
    p.add_argument("--faces", type=int, default=1000)
    p.add_argument("--texture-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=2, help="workers / actors (default 2; on GPUs use the GPU count)")
    p.add_argument("--modes", default="local,ray,loop", help="comma list of local, ray, loop")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a private instance per run)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kiln-batch-bench-"))
    try:
        src = work / "in"
        faces_in = make_assets(src, args.assets, args.subdivisions)
        opts = ["--faces", str(args.faces), "--texture-size", str(args.texture_size), "--device", args.device]
        results = {}
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            out = work / f"out_{mode}"
            if mode in ("local", "ray"):
                cmd = [sys.executable, "-m", "engine", "batch", str(src), "-o", str(out), *opts, "--executor", mode, "-q"]
                if args.jobs:
                    cmd += ["--jobs", str(args.jobs)]
                if mode == "ray" and args.ray_address:
                    cmd += ["--ray-address", args.ray_address]
                wall, r = timed(cmd)
                ok = r.returncode == 0
                summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
                done = summary.get("totals", {}).get("succeeded", 0)
                per_asset = [a["seconds"] for a in summary.get("assets", []) if a.get("seconds")]
                workers = summary.get("workers")
                if not ok:
                    print(f"{mode}: exit {r.returncode}\n{r.stderr[-2000:]}", file=sys.stderr)
            elif mode == "loop":
                out.mkdir()
                wall, done, per_asset, workers = 0.0, 0, [], 1
                for f in sorted(src.glob("*.glb")):
                    t, r = timed([sys.executable, "-m", "engine", "bake", str(f), "-o", str(out / f.name), *opts, "-q"])
                    wall += t
                    per_asset.append(t)
                    done += r.returncode == 0
                    if r.returncode:
                        print(f"loop {f.name}: exit {r.returncode}: {r.stderr[-500:]}", file=sys.stderr)
            else:
                raise SystemExit(f"unknown mode {mode}")
            results[mode] = {
                "wall_seconds": round(wall, 2),
                "assets_done": done,
                "assets_per_minute": round(done / wall * 60.0, 2) if wall else 0.0,
                "workers": workers,
                "mean_asset_seconds": round(sum(per_asset) / len(per_asset), 3) if per_asset else None,
            }
            if args.device != "cpu" and workers:
                results[mode]["assets_per_minute_per_worker"] = round(results[mode]["assets_per_minute"] / workers, 2)
            print(f"{mode:>6}: {done}/{args.assets} assets in {wall:7.1f} s = {results[mode]['assets_per_minute']:6.1f} assets/min "
                  f"(workers {workers}, mean per asset {results[mode]['mean_asset_seconds']} s)", flush=True)
        doc = {
            "benchmark": "batch",
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "assets": args.assets,
            "faces_in": faces_in,
            "faces_out": args.faces,
            "texture_size": args.texture_size,
            "device": args.device,
            "jobs": args.jobs,
            "results": results,
        }
        if "loop" in results and results["loop"]["assets_per_minute"]:
            for m in ("local", "ray"):
                if m in results:
                    doc[f"speedup_{m}_vs_loop"] = round(results[m]["assets_per_minute"] / results["loop"]["assets_per_minute"], 2)
        print(json.dumps(doc, indent=1))
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(doc, indent=1) + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
