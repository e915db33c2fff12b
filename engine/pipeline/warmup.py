"""Warm a long-lived worker before its first job: one tiny real bake through the whole pipeline.

A fresh process pays, on its first bake, for importing torch and the stage modules, creating the CUDA
context and nvdiffrast's rasteriser context, the first kernels (rasterise, gather, least-squares fit),
the Embree and xatlas libraries. ``warm_up`` pays all of that once at worker start with an 80-face
source baked to a 32x32 texture from 4 views at 64x64 (base and normal channels), so the first job
on a fresh worker runs about as fast as a later one. It never raises: a failure is reported (the
worker still starts, and the real job then reports the real error).
"""

from __future__ import annotations

import time


def warm_up(device: str = "auto") -> dict:
    """-> {"seconds", "backend"} or {"seconds", "error"}."""
    t0 = time.perf_counter()
    try:
        from engine.options import BakeOptions
        from engine.pipeline.bake import bake
        from engine.samples import pebble

        res = bake(pebble(1), None, BakeOptions(faces=40, texture_size=32, views=4, view_resolution=64, device=device, maps="base,normal"))
        out = {"backend": res.report["backend"]}
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
        except Exception:  # pragma: no cover - a broken CUDA after a successful bake
            pass
    except Exception as e:  # the worker must start anyway; its jobs report the real error
        out = {"error": f"{e.__class__.__name__}: {str(e)[:200]}"}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
