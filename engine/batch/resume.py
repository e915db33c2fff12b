"""Resumable batches: a rerun skips an asset whose output is up to date.

Up to date = the output GLB exists, is newer than every file the bake reads (source, its .mtl,
textures, buffers, the target) and was made with the same options and target. The options and
target of each successful bake are kept in a stamp, ``OUTDIR/.kiln-batch/stamps/<name>.json``;
a changed option makes the output older than its options, so the asset is baked again.
``--force`` ignores all of this.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from engine.batch.inputs import Asset

STATE_DIR = ".kiln-batch"


def state_dir(outdir: Path) -> Path:
    return Path(outdir) / STATE_DIR


def stamp_path(outdir: Path, asset: Asset) -> Path:
    return state_dir(outdir) / "stamps" / (asset.name + ".json")


def fingerprint(asset: Asset) -> str:
    """What the output depends on besides file times: the options and which target."""
    doc = {"options": asset.options, "target": str(asset.target) if asset.target else None}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _newest_input(asset: Asset) -> Optional[float]:
    newest = 0.0
    for f in asset.files():
        try:
            newest = max(newest, f.stat().st_mtime)
        except OSError:
            return None  # a missing input: never skip, the bake reports it
    return newest


def up_to_date(outdir: Path, asset: Asset) -> bool:
    out = asset.output_path(outdir)
    try:
        out_mtime = out.stat().st_mtime
        stamp = json.loads(stamp_path(outdir, asset).read_text())
    except (OSError, ValueError):
        return False
    newest = _newest_input(asset)
    if newest is None or out_mtime < newest:
        return False
    return isinstance(stamp, dict) and stamp.get("fingerprint") == fingerprint(asset) and stamp.get("source") == str(asset.source)


def write_stamp(outdir: Path, asset: Asset) -> None:
    p = stamp_path(outdir, asset)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    tmp.write_text(json.dumps({"source": str(asset.source), "fingerprint": fingerprint(asset), "options": asset.options,
                               "target": str(asset.target) if asset.target else None}, indent=1))
    os.replace(tmp, p)


def clear_stamp(outdir: Path, asset: Asset) -> None:
    try:
        stamp_path(outdir, asset).unlink()
    except OSError:
        pass
