"""The outcome of a batch: ``AssetResult`` per asset, written as ``summary.json`` and ``summary.csv``."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional


class AssetStatus(str, Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class AssetResult:
    name: str
    source: str
    output: str
    status: AssetStatus
    target: Optional[str] = None
    seconds: Optional[float] = None
    """Wall time of the asset's run on its worker (None when skipped)."""
    faces_in: Optional[int] = None
    faces_out: Optional[int] = None
    backend: Optional[str] = None
    error: Optional[dict] = None
    """{code, message, hint, ...} for a failed asset."""
    node: Optional[str] = None
    """The machine that ran it: host name (and Ray node id / IP on Ray)."""
    gpu: Optional[str] = None
    """The GPU that ran it (name and CUDA id), None on a CPU worker."""
    worker: Optional[str] = None
    attempts: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        extra = d.pop("extra")
        d.update(extra)
        return d


CSV_COLUMNS = ("name", "status", "source", "target", "output", "seconds", "faces_in", "faces_out", "backend", "node", "gpu",
               "attempts", "error_code", "error_message")


def totals(results: list[AssetResult], wall_seconds: float) -> dict:
    by = {s.value: 0 for s in AssetStatus}
    for r in results:
        by[r.status.value] += 1
    done = by[AssetStatus.SUCCEEDED.value]
    ran = [r for r in results if r.status is not AssetStatus.SKIPPED]
    return {
        "assets": len(results),
        **by,
        "wall_seconds": round(wall_seconds, 3),
        "asset_seconds": round(sum(r.seconds or 0.0 for r in ran), 3),
        "assets_per_minute": round(done / wall_seconds * 60.0, 2) if wall_seconds > 0 and done else 0.0,
        "faces_in": sum(r.faces_in or 0 for r in results if r.status is AssetStatus.SUCCEEDED),
        "faces_out": sum(r.faces_out or 0 for r in results if r.status is AssetStatus.SUCCEEDED),
        "nodes": sorted({r.node for r in ran if r.node}),
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_summary(outdir: Path, executor: str, results: list[AssetResult], started_at: float, wall_seconds: float, extra: Optional[dict] = None) -> dict:
    """Write OUTDIR/summary.json and OUTDIR/summary.csv; returns the summary."""
    from engine import __version__

    doc = {
        "kiln_version": __version__,
        "executor": executor,
        **(extra or {}),
        "started_at": started_at,
        "finished_at": time.time(),
        "totals": totals(results, wall_seconds),
        "assets": [r.to_dict() for r in results],
    }
    outdir.mkdir(parents=True, exist_ok=True)
    _atomic_write(outdir / "summary.json", json.dumps(doc, indent=1, default=str) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in results:
        d = r.to_dict()
        err = r.error or {}
        d["error_code"] = err.get("code")
        d["error_message"] = err.get("message")
        w.writerow(["" if d.get(c) is None else d.get(c) for c in CSV_COLUMNS])
    _atomic_write(outdir / "summary.csv", buf.getvalue())
    return doc
