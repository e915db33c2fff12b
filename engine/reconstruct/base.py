"""Reconstruction backends: interface and registry.

A backend turns one photo and its foreground mask into a 3D object:

    backend = get_backend("inflate")
    result = backend.reconstruct(rgb, mask, options, progress)

``rgb`` is (H, W, 3) uint8 sRGB, ``mask`` (H, W) bool. ``options`` is the
backend's own dict (unknown keys are refused). ``progress(fraction, message)``
is optional and may raise CancelledError. The result is a ReconResult holding
a coloured SourceMesh (engine.mesh.source conventions) and/or 3D Gaussians
(engine.splat.Splats) that Kiln renders from its bake views.

Backends are registered by name and imported lazily, so ``inflate`` (numpy,
CPU) never imports a GPU stack and ``sam3d`` imports SAM 3D only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from engine.errors import InputError
from engine.mesh.source import SourceMesh

StageProgress = Callable[[float, str], None]


@dataclass
class FrontView:
    """How the reconstruction maps onto the photo, for front-view checks.

    A world point (X, Y, Z) seen by an orthographic camera looking down -Z
    lands on working-image pixel coordinates
        x = X / scale + cx,    y = cy - Y / scale
    (continuous coordinates: pixel (i, j) covers [j, j+1) x [i, i+1)).
    """

    rgb: np.ndarray  # (h, w, 3) uint8 working-resolution photo
    mask: np.ndarray  # (h, w) bool silhouette that was reconstructed (cleaned)
    input_mask: np.ndarray  # (h, w) bool silhouette as given (before cleaning)
    scale: float  # world units per working pixel
    cx: float
    cy: float

    def pixel_to_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(x, np.float64) - self.cx) * self.scale, (self.cy - np.asarray(y, np.float64)) * self.scale


@dataclass
class ReconResult:
    mesh: Optional[SourceMesh] = None
    splats: Any = None  # engine.splat.Splats or None
    front_view: Optional[FrontView] = None  # set when the object is aligned with the photo pixel-for-pixel
    info: dict = field(default_factory=dict)  # JSON-able backend details for the report


class ReconBackend:
    """Base class. Subclasses set ``name`` and ``option_defaults`` and implement ``reconstruct``."""

    name = "base"
    option_defaults: dict = {}

    def check_options(self, options: Optional[dict]) -> dict:
        opts = dict(self.option_defaults)
        unknown = sorted(set(options or {}) - set(opts))
        if unknown:
            raise InputError(
                f"unknown {self.name} option(s): {', '.join(unknown)}",
                hint=f"allowed: {', '.join(sorted(opts)) or '(none)'}",
                code="bad_option",
            )
        opts.update(options or {})
        return opts

    def reconstruct(self, rgb: np.ndarray, mask: np.ndarray, options: Optional[dict] = None, progress: Optional[StageProgress] = None) -> ReconResult:
        raise NotImplementedError


# name -> (module, class). Third parties may add entries with register_backend.
_REGISTRY: dict[str, tuple[str, str] | Callable[[], ReconBackend]] = {
    "inflate": ("engine.reconstruct.inflate", "InflateBackend"),
    "sam3d": ("engine.reconstruct.sam3d", "Sam3DBackend"),
}


def register_backend(name: str, factory: Callable[[], ReconBackend]) -> None:
    _REGISTRY[name.lower()] = factory


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> ReconBackend:
    key = (name or "inflate").lower()
    entry = _REGISTRY.get(key)
    if entry is None:
        raise InputError(
            f"unknown reconstruction backend {name!r}",
            hint=f"use one of: {', '.join(_REGISTRY)}",
            code="bad_option",
        )
    if callable(entry):
        return entry()
    mod, cls = entry
    return getattr(importlib.import_module(mod), cls)()


def validate_inputs(rgb: np.ndarray, mask: np.ndarray) -> None:
    """Array-level checks shared by every backend (the file-level ones live in image.py)."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(
            f"image must be an (H, W, 3) uint8 array, got {getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}",
            code="bad_input",
        )
    if not isinstance(mask, np.ndarray) or mask.shape != rgb.shape[:2]:
        raise InputError(
            f"mask must be an (H, W) array of the image's size {rgb.shape[1]}x{rgb.shape[0]}, got {getattr(mask, 'shape', type(mask).__name__)}",
            code="mask_size_mismatch",
        )
    if not mask.any():
        raise InputError("the mask selects no pixel", hint="white (nonzero) = object", code="empty_mask")
