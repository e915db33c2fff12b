"""The one place where the compute backend (cuda or cpu) is chosen.

``resolve(device)`` returns a ``Backend`` strategy object, once per bake:
its ``device`` (torch), capability flags, and the operations that differ
between backends -- rasterising the target in UV space (``texels``),
finding source hits for texels and blending channel values at them
(``gather``), rendering for the held-out metric (``render_pairs``). Nothing
else in Kiln looks at torch.cuda, imports nvdiffrast to decide a device, or
compares a backend's name.

Backends are a registry (name -> module, class), like the reconstruction
backends: ``cuda`` (engine.bake.cuda, nvdiffrast) and ``cpu``
(engine.bake.cpu, Embree). nvdiffrast's licence is non-commercial
(NVIDIA Source Code License); the ``cpu`` backend is the commercial-safe one.
"""

from __future__ import annotations

import functools
import importlib
from typing import ClassVar

from engine.errors import BackendError

BACKENDS: dict[str, tuple[str, str]] = {
    "cuda": ("engine.bake.cuda", "CudaBackend"),
    "cpu": ("engine.bake.cpu", "CpuBackend"),
}


class Backend:
    """Strategy of one compute backend. Subclasses implement the operations; see engine.bake.cpu / cuda."""

    name: ClassVar[str] = "?"
    device: str = "cpu"
    supports_splats: ClassVar[bool] = False  # gsplat view rendering (splat sources)
    renderer_name: ClassVar[str] = "?"  # what render_pairs uses (reports)
    licence_note: ClassVar[str] = ""
    prepare_beside_simplify: ClassVar[bool] = False  # True: ``prepare`` starts before simplify, else as the unwrap starts

    def __init__(self, reason: str = ""):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.reason})>"

    # -- operations ------------------------------------------------------------------------------
    def prepare(self, src, options) -> None:
        """Start the bake's work that needs only the source, in the background, while the pipeline makes
        the target (before simplify where ``prepare_beside_simplify``, else as the unwrap starts; in target
        mode once the source is valid); the bake's operations wait for it."""

    def texels(self, uv, faces, size: int):
        """Rasterise the target in UV space -> engine.bake.texel.TexelSet on this device."""
        raise NotImplementedError

    def gather(self, surface, sample, P, N, tol: float, options, progress, origins=None):
        """Blend ``sample(face, bary)`` values of the source seen from texels at P (T,3) with normals N (T,3).

        -> (values (T,C) tensor, hit (T,) bool tensor, info dict). ``tol``: the cage distance.
        ``origins`` (T,3): ray origins from a cage mesh (rays go from there through P), where supported.
        Backends whose ``view_observer`` returns an observer also take ``observer=`` and feed it the views.
        """
        raise NotImplementedError

    def view_observer(self, target, channels, size: int, tol: float):
        """An observer that ``gather`` feeds with the bake views (engine.bake.cuda.ViewObserver) for the view
        fit of ``channels`` (engine.bake.viewfit), or None where this backend renders no views."""
        return None

    def render_pairs(self, src, res, cams, progress=None):
        """Render source and result (base colour, unlit) from cams -> list of numpy (ca, ma, cb, mb)."""
        raise NotImplementedError


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


def _make(name: str, reason: str) -> Backend:
    mod, cls = BACKENDS[name]
    return getattr(importlib.import_module(mod), cls)(reason)


def resolve(device: str = "auto") -> Backend:
    """Turn 'auto' | 'cuda' | 'cpu' into a usable Backend, or raise BackendError."""
    device = (device or "auto").lower()
    if device == "cpu":
        return _make("cpu", "requested")
    ok, why = cuda_status()
    if device == "cuda":
        if not ok:
            raise BackendError(
                f"CUDA backend unavailable: {why}",
                hint="install a CUDA build of torch and nvdiffrast (see README, GPU set-up), run `kiln doctor`, or use --device cpu",
                code="cuda_unavailable",
            )
        return _make("cuda", "requested")
    if device == "auto":
        if ok:
            return _make("cuda", "auto: GPU found")
        return _make("cpu", f"auto: {why}")
    raise BackendError(f"unknown device {device!r}", hint="use auto, cuda or cpu", code="bad_option")
