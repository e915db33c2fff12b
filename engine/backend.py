"""The one place where the compute backend (cuda or cpu) is chosen.

Nothing else in Kiln looks at torch.cuda or imports nvdiffrast directly to
decide a device: stage modules receive the resolved ``Backend``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from engine.errors import BackendError


@dataclass(frozen=True)
class Backend:
    name: str  # "cuda" or "cpu"
    device: str  # torch device string
    reason: str = ""


def torch_cuda_status() -> tuple[bool, str]:
    """(usable, why-not) for CUDA through torch alone."""
    try:
        import torch
    except Exception as e:  # pragma: no cover - torch is a hard dependency
        return False, f"torch does not import: {e}"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA GPU" + ("" if torch.version.cuda else " (this is a CPU-only build of torch)")
    return True, ""


def module_status(name: str) -> tuple[bool, str]:
    """(importable, why-not) for an optional GPU module (nvdiffrast.torch, gsplat)."""
    try:
        __import__(name)
    except Exception as e:
        return False, f"{name.split('.')[0]} does not import ({e.__class__.__name__}: {e})"
    return True, ""


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(usable, why-not) for the nvdiffrast CUDA backend. Cached per process."""
    ok, why = torch_cuda_status()
    return module_status("nvdiffrast.torch") if ok else (ok, why)


def available_backends() -> list[str]:
    ok, _ = cuda_status()
    return (["cuda"] if ok else []) + ["cpu"]


def gpu_names() -> list[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return []


def resolve(device: str = "auto") -> Backend:
    """Turn 'auto' | 'cuda' | 'cpu' into a usable Backend, or raise BackendError."""
    device = (device or "auto").lower()
    if device == "cpu":
        return Backend("cpu", "cpu", "requested")
    ok, why = cuda_status()
    if device == "cuda":
        if not ok:
            raise BackendError(
                f"CUDA backend unavailable: {why}",
                hint="install a CUDA build of torch and nvdiffrast (see README, GPU set-up), run `kiln doctor`, or use --device cpu",
                code="cuda_unavailable",
            )
        return Backend("cuda", "cuda", "requested")
    if device == "auto":
        if ok:
            return Backend("cuda", "cuda", "auto: GPU found")
        return Backend("cpu", "cpu", f"auto: {why}")
    raise BackendError(f"unknown device {device!r}", hint="use auto, cuda or cpu", code="bad_option")
