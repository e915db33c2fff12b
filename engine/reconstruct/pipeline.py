"""Reconstruction pipeline: image (+ mask) -> 3D object -> Kiln's bake -> GLB.

    from engine.reconstruct.pipeline import reconstruct
    result = reconstruct("photo.png", "out.glb", BakeOptions(faces=20000),
                         {"backend": "inflate", "mask": "mask.png"}, progress=cb, cancel=check)
    result.report["reconstruct"]   # backend, timings, foreground stats, quality checks

Stages reported to ``progress(stage, fraction, message)``: ``image``
(decode + foreground), ``reconstruct`` (the backend), ``check_source``
(front-view checks of the reconstruction), then the bake's own stages
(load, validate, simplify, unwrap, bake, dilate, export, evaluate), then
``check`` (front-view checks of the baked GLB) and ``done``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np

from engine.errors import InputError
from engine.options import BakeOptions
from engine.progress import CancelCheck, ProgressCallback
from engine.reconstruct import image as imgmod
from engine.reconstruct.base import get_backend

COMMON_KEYS = ("backend", "mask", "auto_mask", "checks")
STAGES = {"image": 2.0, "reconstruct": 20.0, "check_source": 3.0, "bake": 70.0, "check": 5.0}


def recon_option_defaults() -> dict:
    """Every key ``recon_options`` accepts, with its default (for docs, the service and the CLI)."""
    from engine.reconstruct.base import _REGISTRY

    out = {"backend": "inflate", "mask": None, "auto_mask": True, "checks": True}
    for name in _REGISTRY:
        try:
            b = get_backend(name)
        except Exception:  # a backend module that cannot even be imported contributes no keys
            continue
        for k, v in b.option_defaults.items():
            out.setdefault(k, v)
    return out


def split_options(recon_options: Optional[dict]) -> tuple[dict, dict, list]:
    """-> (common, backend options, ignored keys). Unknown keys raise InputError."""
    ro = dict(recon_options or {})
    backend = get_backend(ro.get("backend") or "inflate")
    allowed = recon_option_defaults()
    unknown = sorted(k for k in ro if k not in allowed)
    if unknown:
        raise InputError(
            f"unknown reconstruction option(s): {', '.join(unknown)}",
            hint=f"allowed: {', '.join(sorted(allowed))}",
            code="bad_option",
        )
    common = {k: ro.get(k, allowed[k]) for k in COMMON_KEYS}
    for k in ("auto_mask", "checks"):
        if not isinstance(common[k], bool):
            raise InputError(f"invalid reconstruction option: {k}={common[k]!r} must be true or false", code="bad_option")
    common["backend"] = backend.name
    mine = {k: v for k, v in ro.items() if k in backend.option_defaults}
    ignored = sorted(k for k in ro if k not in COMMON_KEYS and k not in backend.option_defaults)
    return common, mine, ignored


class _Stages:
    """Outer progress: our stages plus the bake's own, mapped into the 'bake' share."""

    def __init__(self, cb: Optional[ProgressCallback], cancel: Optional[CancelCheck]):
        total = sum(STAGES.values())
        self.w = {k: v / total for k, v in STAGES.items()}
        self.off = {}
        acc = 0.0
        for k, v in self.w.items():
            self.off[k] = acc
            acc += v
        self.cb = cb
        self.cancel = cancel
        self.timings: dict[str, float] = {}
        self._stage = None
        self._t0 = 0.0

    def check(self):
        if self.cancel is not None and self.cancel():
            from engine.errors import CancelledError

            raise CancelledError(f"cancelled during {self._stage or 'start'}")

    def begin(self, stage: str, msg: str = ""):
        self.end()
        self._stage = stage
        self._t0 = time.perf_counter()
        self.update(0.0, msg)

    def update(self, f: float, msg: str = "", name: Optional[str] = None):
        self.check()
        if self.cb is None or self._stage is None:
            return
        f = min(max(float(f), 0.0), 1.0)
        self.cb(name or self._stage, min(1.0, self.off[self._stage] + self.w[self._stage] * f), msg)

    def end(self):
        if self._stage is not None:
            self.timings[self._stage] = self.timings.get(self._stage, 0.0) + time.perf_counter() - self._t0
            if self.cb is not None:
                self.cb(self._stage, min(1.0, self.off[self._stage] + self.w[self._stage]), "")
            self._stage = None

    def inner(self, stage: str, fraction: float, message: str = ""):
        """Callback handed to engine.pipeline.bake: its overall fraction -> our 'bake' share."""
        if stage == "done":
            return
        self.update(fraction, message, name=stage)


def load_inputs(image: Union[str, os.PathLike, bytes], mask=None, auto_mask: bool = True):
    """-> (rgb, Foreground, image name)."""
    rgb, alpha = imgmod.load_image(image)
    fg = imgmod.foreground(rgb, alpha, mask, auto=auto_mask)
    name = Path(image).name if isinstance(image, (str, os.PathLike)) else "image"
    return rgb, fg, name


def _bake_source(res, options: BakeOptions) -> tuple[object, str]:
    """What to hand to engine.pipeline.bake: the backend's Gaussians with its mesh
    when a splat bake is possible (CUDA + gsplat), else the coloured mesh."""
    if res.splats is None:
        return res.mesh, res.mesh.appearance_kind()
    from engine import backend as backend_mod
    from engine.splat.render import splat_backend_status

    ok, why = splat_backend_status()
    be = backend_mod.resolve(options.device)
    if be.supports_splats and ok:
        from engine.pipeline.splat import SplatBakeSource

        return SplatBakeSource(splats=res.splats, mesh=res.mesh, name=res.mesh.name), f"gaussians ({res.splats.n})"
    return res.mesh, f"{res.mesh.appearance_kind()} (gaussians not used: {why or 'device is cpu'})"


def reconstruct(
    image_path: Union[str, os.PathLike, bytes],
    output: Union[str, os.PathLike, None] = None,
    options: Optional[BakeOptions] = None,
    recon_options: Optional[dict] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
):
    """Photo -> reconstructed, simplified, unwrapped, baked GLB at ``output``.

    ``recon_options`` (all optional):
      backend              "inflate" (default) | "sam3d"
      mask                 path or bytes of a mask image (nonzero = object), or an (H, W) array; None: the
                           image's alpha, else automatic segmentation
      auto_mask            allow GrabCut when there is neither mask nor alpha (default True)
      checks               run the front-view checks on the source and the baked result (default True)
      inflate options      keep_all_components, back ("shaded" default | "average" | "mirror" | "#rrggbb" | [r, g, b]), depth, inflation,
                           max_size, mesh_faces, texture_max, clean_px
      sam3d options        config, repo, seed, frame ("camera" | "canonical"), compile, use_gaussians
    Options of the other backend are ignored (listed in the report); unknown keys raise InputError.
    Returns engine.pipeline.BakeResult whose report has a "reconstruct" section.
    """
    from engine.pipeline import bake
    from engine.reconstruct.checks import front_view_checks, mesh_from_bake_result

    options = (options or BakeOptions()).validate()
    if output is not None:
        from engine.io import require_writable

        require_writable(output)  # before any work
    common, bopts, ignored = split_options(recon_options)
    backend = get_backend(common["backend"])
    backend.check_options(bopts)  # option errors before any work
    st = _Stages(progress, cancel)
    t_start = time.perf_counter()

    st.begin("image", "reading the image")
    rgb, fg, name = load_inputs(image_path, common["mask"], bool(common["auto_mask"]))
    st.end()

    st.begin("reconstruct", f"{backend.name}")
    res = backend.reconstruct(rgb, fg.mask, bopts, progress=lambda f, m: st.update(f, m))
    st.end()

    checks: dict = {}
    if common["checks"] and res.front_view is not None:
        st.begin("check_source", "front view of the reconstruction")
        checks["source"] = front_view_checks(res.mesh, res.front_view)
        st.end()

    res.mesh.name = Path(name).stem or "reconstruction"
    source, appearance = _bake_source(res, options)
    st.begin("bake")
    result = bake(source, output, options, progress=st.inner, cancel=cancel)
    st.end()

    if common["checks"] and res.front_view is not None:
        st.begin("check", "front view of the baked GLB")
        if output is not None:
            from engine.io.load import load_source

            baked = load_source(output)
        else:
            baked = mesh_from_bake_result(result)
        if baked is not None:
            checks["baked"] = front_view_checks(baked, res.front_view)
        st.end()

    rep = result.report
    rep["source"] = name
    rep["kind"] = "reconstruct"
    section = {
        "backend": backend.name,
        "image_size": [int(rgb.shape[1]), int(rgb.shape[0])],
        "foreground": fg.stats(),
        "appearance_source": appearance,
        "backend_info": res.info,
        "options": {**{k: v for k, v in common.items() if k != "mask"}, "mask": _describe_mask(common["mask"]), **_jsonable(bopts)},
        "ignored_options": ignored,
        "timings": {k: round(v, 4) for k, v in st.timings.items()},
    }
    if checks:
        section["checks"] = checks
        section["checks_passed"] = all(c.get("passed", False) for c in checks.values())
    rep["reconstruct"] = section
    parts = mask_parts(res.info)
    if parts is not None:
        rep["mask_parts"] = parts
    rep["total_seconds"] = round(time.perf_counter() - t_start, 4)
    if progress is not None:
        progress("done", 1.0, "")
    return result


def mask_parts(backend_info: dict) -> Optional[dict]:
    """{"found", "kept", "kept_fraction"} of the silhouette's connected parts (inflate), or None.
    kept_fraction: the kept parts' share of the cleaned mask's pixels."""
    sil = (backend_info or {}).get("silhouette")
    if not isinstance(sil, dict) or "components_found" not in sil:
        return None
    return {"found": int(sil["components_found"]), "kept": int(sil["components_kept"]), "kept_fraction": float(sil.get("kept_fraction", 1.0))}


def mask_parts_warning(report: dict) -> Optional[str]:
    """One line when parts of the mask were dropped (only the largest kept), else None."""
    mp = report.get("mask_parts")
    if not isinstance(mp, dict) or mp.get("found", 0) <= mp.get("kept", 0):
        return None
    kept = "the largest" if mp["kept"] == 1 else f"the {mp['kept']} largest"
    return (f"mask: kept {kept} of {mp['found']} parts ({mp['kept_fraction'] * 100:.0f}% of the mask); "
            "the rest was dropped (--keep-all-components keeps every part)")


def _describe_mask(mask) -> Optional[str]:
    if mask is None:
        return None
    if isinstance(mask, (bytes, bytearray)):
        return f"<{len(mask)} bytes>"
    if isinstance(mask, np.ndarray):
        return f"<array {mask.shape[1]}x{mask.shape[0]}>"
    return str(mask)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out
