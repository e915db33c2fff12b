"""Peak RSS of CPU bakes at a few sizes: the measurements behind engine/service/limits.py.

Runs `kiln bake --device cpu` in a subprocess per case under /usr/bin/time -v and prints
one JSON line per case: input faces, texture_size, peak RSS (MB) and the estimate.

    python benchmarks/service_memory.py [--cases 20480:512,20480:1024,...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sphere_glb(subdivisions: int) -> bytes:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdivisions)
    rng = np.random.default_rng(0)
    m.visual.vertex_colors = rng.integers(0, 255, (len(m.vertices), 4)).astype(np.uint8)
    return m.export(file_type="glb")


def main() -> int:
    from engine.service.limits import estimate_job_bytes

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="5:512,5:1024,5:2048,7:512,8:512", help="subdivisions:texture_size,...")
    ap.add_argument("--faces", type=int, default=5000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases.split(","):
            sub, tex = (int(x) for x in case.split(":"))
            src = Path(tmp) / f"s{sub}.glb"
            if not src.exists():
                src.write_bytes(sphere_glb(sub))
            faces_in = 20 * 4**sub
            cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "engine", "bake", str(src), "-o", str(Path(tmp) / "out.glb"),
                   "--device", "cpu", "--faces", str(min(a.faces, faces_in)), "--texture-size", str(tex), "--quiet"]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
            w = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", p.stderr)
            rss_mb = int(m.group(1)) / 1024 if m else None
            est = estimate_job_bytes(faces_in, tex, supersample=2, views=100, view_resolution=1024, channels=1, device="cpu")
            print(json.dumps({"faces_in": faces_in, "texture_size": tex, "rc": p.returncode, "peak_rss_mb": round(rss_mb or 0),
                              "estimate_mb": round(est / 2**20), "wall": w.group(1) if w else None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
