"""GPU discovery for the HTTP process, without importing torch or touching CUDA.

``nvidia-smi -L`` names the GPUs; ``CUDA_VISIBLE_DEVICES`` (when set) selects
and orders them, exactly as CUDA would. Each worker later gets
``CUDA_VISIBLE_DEVICES=<its id>`` before it imports torch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping, Optional

_GPU_LINE = re.compile(r"^GPU\s+(\d+):\s*(.*?)\s*(?:\(UUID:\s*([^)]+)\))?\s*$")


@dataclass(frozen=True)
class GpuInfo:
    visible_id: str  # what goes into the worker's CUDA_VISIBLE_DEVICES
    name: str
    uuid: Optional[str] = None

    def to_dict(self) -> dict:
        return {"id": self.visible_id, "name": self.name, "uuid": self.uuid}


def parse_nvidia_smi_list(text: str) -> list[GpuInfo]:
    """Parse ``nvidia-smi -L`` output (top-level GPU lines only; MIG lines are indented)."""
    out = []
    for line in text.splitlines():
        m = _GPU_LINE.match(line)
        if m:
            out.append(GpuInfo(m.group(1), m.group(2) or f"GPU {m.group(1)}", m.group(3)))
    return out


def nvidia_smi_gpus(timeout: float = 10.0) -> Optional[list[GpuInfo]]:
    """GPUs listed by ``nvidia-smi -L``, or None when nvidia-smi is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return parse_nvidia_smi_list(proc.stdout)


def detect_gpus(env: Optional[Mapping[str, str]] = None, listed: Optional[list[GpuInfo]] = ...) -> list[GpuInfo]:
    """The GPUs this service may use, in CUDA order.

    ``listed`` is the nvidia-smi list (looked up when not given; None = no nvidia-smi).
    """
    env = os.environ if env is None else env
    if listed is ...:
        listed = nvidia_smi_gpus()
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        # Pin workers by UUID: nvidia-smi numbers GPUs in PCI order, CUDA (by default) fastest first.
        return [GpuInfo(g.uuid or g.visible_id, g.name, g.uuid) for g in (listed or [])]
    cvd = cvd.strip()
    if cvd == "" or cvd.startswith("-1"):
        return []
    ids = [x.strip() for x in cvd.split(",") if x.strip()]
    if listed is None:
        # No nvidia-smi: trust the variable (names unknown until a worker reports them).
        return [GpuInfo(i, f"GPU {i}") for i in ids]
    by_index = {g.visible_id: g for g in listed}
    by_uuid = {g.uuid: g for g in listed if g.uuid}
    out = []
    for i in ids:
        g = by_index.get(i) or by_uuid.get(i) or next((x for x in listed if x.uuid and x.uuid.startswith(i)), None)
        if g is None:
            break  # CUDA ignores everything from the first invalid entry on
        out.append(GpuInfo(i, g.name, g.uuid))
    return out
