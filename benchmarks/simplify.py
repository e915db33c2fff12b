"""simplify() benchmark (issue 12, performance): the old path (lexsort weld + fast-simplification) vs the current one.

    python benchmarks/simplify.py                       # pebble(7) and pebble(9), bunny; -> results/cpu_simplify.json
    python benchmarks/simplify.py --cases p7 --repeats 3

For each case and path: seconds (weld included, the minimum of --repeats runs), faces reached,
whether the result is closed (every edge on two faces), and its distance to the source: points
sampled on one surface (--samples, fixed seed), each one's distance to the other surface (exact
point-triangle distance to the triangles of its --knn nearest triangle centroids), both ways ->
symmetric Hausdorff (the largest) and the mean of the two mean distances; also divided by the
bounding-box diagonal. The old path is ``engine/mesh/simplify.py`` as of commit OLD_COMMIT, loaded
from git. Timings are of this machine: state its cores (os.sched_getaffinity) and whether it was
busy (the load average before and after is recorded). This is a benchmark (prints figures), not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OLD_COMMIT = "f87086c"  # last commit of the fast-simplification-only simplify()
CASES = {  # name -> (source, target faces)
    "p7": ("pebble(7)", 16_000),
    "p9": ("pebble(9)", 20_000),
    "bunny": ("bunny.ply", 5_000),
}


def old_module():
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:engine/mesh/simplify.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("simplify_old")
    exec(compile(src, f"simplify_old@{OLD_COMMIT}", "exec"), mod.__dict__)
    return mod


def load(case: str) -> tuple[np.ndarray, np.ndarray]:
    from engine.samples import pebble

    what = CASES[case][0]
    if what.startswith("pebble"):
        m = pebble(int(what[7:-1]))
        return m.vertices, m.faces
    import trimesh

    m = trimesh.load(ROOT.parent / "shared" / "assets" / "meshes" / what, process=False, force="mesh")
    return np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int32)


def distances(a_v, a_f, b_v, b_f, n: int, knn: int, seed: int) -> np.ndarray:
    """Distance from n points sampled on mesh a to mesh b."""
    import trimesh
    from scipy.spatial import cKDTree

    a = trimesh.Trimesh(a_v, a_f, process=False)
    pts, _ = trimesh.sample.sample_surface(a, n, seed=seed)
    tri_b = np.asarray(b_v, np.float64)[b_f]
    _, cand = cKDTree(tri_b.mean(1)).query(pts, k=min(knn, len(b_f)))
    cand = cand.reshape(len(pts), -1)
    best = np.full(len(pts), np.inf)
    for j in range(cand.shape[1]):
        cp = trimesh.triangles.closest_point(tri_b[cand[:, j]], pts)
        best = np.minimum(best, np.linalg.norm(cp - pts, axis=1))
    return best


def quality(src_v, src_f, v, f, n: int, knn: int) -> dict:
    d1 = distances(v, f, src_v, src_f, n, knn, 1)  # result -> source
    d2 = distances(src_v, src_f, v, f, n, knn, 2)  # source -> result
    diag = float(np.linalg.norm(src_v.max(0) - src_v.min(0)))
    h, m = float(max(d1.max(), d2.max())), float((d1.mean() + d2.mean()) / 2)
    return {"hausdorff": h, "mean_distance": m, "hausdorff_over_diag": h / diag, "mean_over_diag": m / diag}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="p7,p9,bunny")
    ap.add_argument("--repeats", type=int, default=3, help="runs per path (p9: at most 2)")
    ap.add_argument("--aggression", type=int, default=5, help="fast-simplification's (BakeOptions' default: 5)")
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--knn", type=int, default=16)
    ap.add_argument("--json-out", default=str(ROOT / "benchmarks" / "results" / "cpu_simplify.json"))
    args = ap.parse_args()

    from engine.mesh import simplify as new
    from engine.mesh.simplify import is_closed

    try:
        import meshoptimizer  # noqa: F401

        backend = "meshoptimizer + fast-simplification"
    except ImportError:
        backend = "fast-simplification (meshoptimizer not installed)"
    old = old_module()
    out = {
        "machine": f"{len(os.sched_getaffinity(0))} cores ({platform.processor() or platform.machine()}), CPU only",
        "load_average_before": os.getloadavg(),
        "aggression": args.aggression,
        "new_backend": backend,
        "old": f"engine/mesh/simplify.py @ {OLD_COMMIT}: lexsort weld + fast-simplification",
        "quality": f"{args.samples} surface samples each way, exact distance to the {args.knn} nearest-centroid triangles",
        "cases": {},
    }
    for case in args.cases.split(","):
        src_v, src_f = load(case)
        target = CASES[case][1]
        repeats = min(args.repeats, 2) if len(src_f) > 2_000_000 else args.repeats
        res = {"source": CASES[case][0], "source_faces": int(len(src_f)), "target_faces": target}
        for name, mod in (("old", old), ("new", new)):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                v, f = mod.simplify(src_v, src_f, target, aggression=args.aggression)
                times.append(time.perf_counter() - t)
            t = time.perf_counter()
            new.weld(src_v, src_f) if name == "new" else mod.weld(src_v, src_f)
            weld_s = time.perf_counter() - t
            r = {"seconds": round(min(times), 3), "seconds_all": [round(x, 3) for x in times], "weld_seconds": round(weld_s, 3)}
            r.update(faces=int(len(f)), closed=bool(is_closed(f)), source_closed=bool(is_closed(np.asarray(new.weld(src_v, src_f)[1]))))
            r.update({k: round(x, 7) for k, x in quality(src_v, src_f, v, f, args.samples, args.knn).items()})
            res[name] = r
            print(case, name, json.dumps(r), flush=True)
        res["speedup"] = round(res["old"]["seconds"] / res["new"]["seconds"], 2)
        out["cases"][case] = res
    out["load_average_after"] = os.getloadavg()
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({c: {"speedup": r["speedup"], "old_s": r["old"]["seconds"], "new_s": r["new"]["seconds"]} for c, r in out["cases"].items()}))


if __name__ == "__main__":
    main()
