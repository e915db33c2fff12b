"""The README's performance table, made from a benchmarks/bake.py JSON (default: results/h200_bake.json).

    python benchmarks/readme_table.py [benchmarks/results/h200_bake.json]

Prints Markdown: the table of Kiln against the baseline, the warm stages, and the big / service / 4096²
figures when the JSON has them. Paste it over the README's table (README.md, "Performance").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _s(x, unit="s", nd=2):
    return "—" if x is None else f"{x:.{nd}f} {unit}".rstrip()


def table(d: dict) -> str:
    out = []
    gpu = "the lent " + str(d.get("gpu") or d.get("device"))
    out.append(f"Measured on {gpu} ({d.get('cpu_cores')} CPU cores, torch {d.get('torch')}, nvdiffrast {d.get('nvdiffrast')}, "
               f"{str(d.get('date', ''))[:10]}):")
    out.append("")
    out.append("| | time | held-out PSNR, linear reference (glTF) | same, sRGB reference | peak GPU memory |")
    out.append("|---|---|---|---|---|")
    out.append(f"| **Kiln whole bake** load → export, {' + '.join(k for k, v in (d.get('maps') or {}).items() if v == 'texture')}, warm "
               f"| **{_s(d.get('whole_seconds_warm'))}** best warm run"
               + (f", median {_s(d['whole_seconds_warm_median'])} of {len(d.get('kiln_runs') or []) - 1}" if d.get("whole_seconds_warm_median") else "")
               + f" (cold {_s(d.get('whole_seconds_cold'))}) "
               f"| **{_s(d.get('kiln_psnr_linear'), 'dB')}** | {_s(d.get('kiln_psnr_srgb'), 'dB')} | {_s(d.get('peak_gpu_gib'), 'GiB')} |")
    b = d.get("baseline") or {}
    for mode, label in (("opt", "baseline `opt` (Adam, 2500 steps, TV, cosine lr, Telea), bake step only"),
                        ("fast", "baseline `fast` (nearest-texel average, Telea), bake step only")):
        lin, srgb = b.get(f"{mode}_linear"), b.get(f"{mode}_srgb")
        if not lin or not srgb:
            continue
        out.append(f"| {label} | {_s(lin['bake_seconds'])} / {_s(srgb['bake_seconds'])} | {_s(lin['psnr'], 'dB')} | {_s(srgb['psnr'], 'dB')} "
                   f"| {_s(max(lin.get('peak_gpu_gib') or 0, srgb.get('peak_gpu_gib') or 0), 'GiB')} |")
    out.append("")
    st = d.get("stage_seconds_warm") or {}
    out.append("Warm stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in st.items() if k != "load") + ".")
    if "lead_db_linear" in d:
        out.append(f"Lead over the 2500-step baseline: {d['lead_db_linear']:+.2f} dB (linear reference), "
                   f"{d['lead_db_srgb']:+.2f} dB (sRGB reference); goal ≥ +0.5 dB under both.")
    if d.get("big"):
        g = d["big"]
        out.append(f"{g['source_faces']:,} faces → {g['faces_out']:,} at {g['texture_size']}²: {_s(g['whole_seconds'])} "
                   f"({', '.join(f'{k} {v:.2f} s' for k, v in g['stages'].items() if k != 'load')}); peak GPU {_s(g.get('peak_gpu_gib'), 'GiB')}, "
                   f"host RSS {_s(g.get('peak_rss_gib'), 'GiB')}.")
    if d.get("serve"):
        sv = d["serve"]
        out.append(f"`kiln serve`, one pre-warmed worker: jobs (POST → succeeded) {sv['job_seconds']} s; first / warm = "
                   f"{d.get('first_job_over_warm')} (goal ≤ 1.5).")
    if d.get("pbr4k"):
        p = d["pbr4k"]
        out.append(f"4-channel bake at {p['texture_size']}²: {_s(p['whole_seconds'])}, peak GPU {_s(p.get('peak_gpu_gib'), 'GiB')}, "
                   f"host RSS {_s(p.get('peak_rss_gib'), 'GiB')}.")
    return "\n".join(out)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "h200_bake.json"
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
