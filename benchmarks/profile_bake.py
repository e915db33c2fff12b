"""Where a warm CUDA bake spends its time: torch.profiler over the whole bake, ops ranked by GPU and CPU time.

    python benchmarks/profile_bake.py                   # 327,680 -> 16,000 faces at 1024^2 (the benchmark's main)
    python benchmarks/profile_bake.py --json-out results/h200_profile.json --trace /tmp/bake_trace.json

Two warm-up bakes, then one under torch.profiler (CPU + CUDA activities, shapes off). Prints the
stage timings of the profiled bake, the bake stage's parts (the report's *_seconds), and the top
``--top`` operators by self CUDA time and by self CPU time; ``--trace`` writes a Chrome trace
(chrome://tracing, Perfetto). Profiling slows the bake (the printed stage times are the profiled
run's); benchmarks/bake.py gives the unprofiled figures. This is a benchmark (prints figures), not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subdivisions", type=int, default=7)
    ap.add_argument("--faces", type=int, default=16000)
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--views", type=int, default=100)
    ap.add_argument("--view-resolution", type=int, default=1024)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--trace", help="write a Chrome trace here")
    ap.add_argument("--json-out", help="write the figures here")
    args = ap.parse_args()

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from engine.options import BakeOptions
    from engine.pipeline import bake
    from engine.samples import pebble

    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (the CPU bake's profile: python -m cProfile -m engine bake ...)")
    src = pebble(args.subdivisions)
    opts = BakeOptions(faces=args.faces, texture_size=args.texture_size, device="cuda", views=args.views,
                       view_resolution=args.view_resolution)
    for _ in range(2):
        bake(src, None, opts)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        res = bake(src, None, opts)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    rep = res.report
    print(f"profiled bake: {wall:.3f}s (profiler on); stages {rep['timings']}")
    print("bake stage parts: " + ", ".join(f"{k} {v}" for k, v in rep["bake"].items() if k.endswith("seconds")))
    ka = prof.key_averages()
    rows = []
    for e in ka:
        cuda_t = getattr(e, "self_device_time_total", None)
        if cuda_t is None:
            cuda_t = getattr(e, "self_cuda_time_total", 0)
        kernel = getattr(e, "device_type", None) == DeviceType.CUDA  # a kernel (or memcpy/memset) row
        rows.append({"op": e.key, "calls": e.count, "self_cuda_ms": round(cuda_t / 1e3, 3), "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
                     "kernel": kernel})
    by_cuda = sorted(rows, key=lambda r: -r["self_cuda_ms"])[: args.top]
    by_cpu = sorted(rows, key=lambda r: -r["self_cpu_ms"])[: args.top]
    # the GPU's busy time: the kernel rows alone (an aten op's self CUDA time is its kernels' time again)
    total_cuda = sum(r["self_cuda_ms"] for r in rows if r["kernel"])
    print(f"\nGPU busy (sum of kernel times): {total_cuda:.1f} ms of {wall * 1e3:.0f} ms wall")
    print(f"\n{'op':60s} {'calls':>7s} {'self CUDA ms':>13s} {'self CPU ms':>12s}")
    for r in by_cuda:
        print(f"{r['op'][:60]:60s} {r['calls']:7d} {r['self_cuda_ms']:13.2f} {r['self_cpu_ms']:12.2f}")
    print(f"\nby self CPU time:\n{'op':60s} {'calls':>7s} {'self CUDA ms':>13s} {'self CPU ms':>12s}")
    for r in by_cpu:
        print(f"{r['op'][:60]:60s} {r['calls']:7d} {r['self_cuda_ms']:13.2f} {r['self_cpu_ms']:12.2f}")
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace -> {args.trace}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "args": vars(args), "wall_seconds_profiled": round(wall, 3), "stages": rep["timings"],
            "bake_parts": {k: v for k, v in rep["bake"].items() if k.endswith("seconds")},
            "gpu_busy_ms": round(total_cuda, 1), "top_by_cuda": by_cuda, "top_by_cpu": by_cpu}, indent=2))
        print(f"figures -> {args.json_out}")


if __name__ == "__main__":
    main()
