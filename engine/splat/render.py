"""Render Gaussian splats with gsplat (CUDA only).

Cameras follow Kiln's convention (engine.render.cameras): OpenCV, world ->
camera ``viewmats`` (x right, y down, z forward) and pinhole ``Ks`` in pixels,
pixel (u, v) with row 0 at the top.

``render_splat_views`` returns, on the GPU, for every view
  * colors (V, H, W, 3) float32: straight (not premultiplied) sRGB in [0, 1],
    i.e. the rendered colour divided by the accumulated opacity (0 where
    nothing was drawn), so a half-covered edge pixel still has the object's colour;
  * alpha  (V, H, W) float32: accumulated opacity in [0, 1];
  * depth  (V, H, W) float32: expected camera-space z of the Gaussians under
    the pixel (gsplat's "ED" mode), 0 where alpha is ~0.
Views are rendered in chunks of ``chunk`` so memory stays bounded.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from engine.errors import BackendError
from engine.splat.types import Splats

ALPHA_EPS = 1e-4


def splat_backend_status() -> tuple[bool, str]:
    """(usable, why-not) for splat rendering: a CUDA GPU visible to torch, and gsplat importable."""
    from engine.backend import module_status, torch_cuda_status

    ok, why = torch_cuda_status()
    return module_status("gsplat") if ok else (ok, why)


def require_splat_backend() -> None:
    ok, why = splat_backend_status()
    if not ok:
        raise BackendError(
            f"splat sources need CUDA + gsplat: {why}",
            hint="run on a machine with an NVIDIA GPU, a CUDA build of torch and `pip install gsplat` (kiln-engine[gpu]); "
            "or bake a mesh (GLB/OBJ/PLY mesh) instead, which also works on the CPU",
            code="splat_needs_cuda",
        )


class GpuSplats:
    """Splat parameters uploaded once as torch tensors on ``device``."""

    def __init__(self, splats: Splats, device: str = "cuda"):
        import torch

        self.device = torch.device(device)
        f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        self.means = f(splats.means)
        self.quats = f(splats.quats)
        self.scales = f(splats.scales)
        self.opacities = f(splats.opacities)
        self.sh = f(splats.sh)
        self.sh_degree = splats.sh_degree
        self.n = splats.n


def _as_tensor(a, device):
    import torch

    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(a, np.float32), device=device)


def render_splat_views(
    splats,
    viewmats,
    Ks,
    width: int,
    height: int,
    chunk: int = 8,
    near: float = 0.01,
    far: float = 1e10,
    device: str = "cuda",
    rasterize_mode: str = "classic",
):
    """Render ``splats`` (Splats or GpuSplats) from V cameras -> (colors, alpha, depth) torch tensors on the GPU.

    viewmats: (V, 4, 4) world -> camera (OpenCV); Ks: (V, 3, 3) pixels. Raises
    BackendError without CUDA + gsplat.
    """
    require_splat_backend()
    import torch
    from gsplat import rasterization

    gs = splats if isinstance(splats, GpuSplats) else GpuSplats(splats, device)
    dev = gs.device
    vm = _as_tensor(viewmats, dev).reshape(-1, 4, 4)
    ks = _as_tensor(Ks, dev).reshape(-1, 3, 3)
    if len(vm) != len(ks):
        raise ValueError(f"{len(vm)} viewmats but {len(ks)} Ks")
    V = len(vm)
    width, height = int(width), int(height)
    colors = torch.zeros((V, height, width, 3), device=dev)
    alpha = torch.zeros((V, height, width), device=dev)
    depth = torch.zeros((V, height, width), device=dev)
    chunk = max(1, int(chunk))
    with torch.no_grad():
        for s in range(0, V, chunk):
            e = min(V, s + chunk)
            out, alphas, _ = rasterization(
                gs.means,
                gs.quats,
                gs.scales,
                gs.opacities,
                gs.sh,
                vm[s:e],
                ks[s:e],
                width,
                height,
                near_plane=near,
                far_plane=far,
                sh_degree=gs.sh_degree,
                render_mode="RGB+ED",
                rasterize_mode=rasterize_mode,
            )
            a = alphas[..., 0].clamp(0.0, 1.0)
            covered = a > ALPHA_EPS
            rgb = out[..., :3] / a.clamp_min(ALPHA_EPS)[..., None]
            colors[s:e] = torch.where(covered[..., None], rgb.clamp(0.0, 1.0), torch.zeros_like(rgb))
            alpha[s:e] = a
            depth[s:e] = torch.where(covered, out[..., 3], torch.zeros_like(a))
    return colors, alpha, depth


def splat_view_renderer(splats, K, device: str = "cuda", alpha_threshold: float = 0.5, chunk: Optional[int] = None):
    """Adapter to the CUDA bake's ``view_renderer(mvp, R, t, res) -> (col, mask, depth)``
    interface (engine.bake.cuda): every view shares the pinhole matrix ``K``
    (3, 3), built for ``res``; ``mask`` is alpha >= ``alpha_threshold``."""
    import torch

    require_splat_backend()
    gs = splats if isinstance(splats, GpuSplats) else GpuSplats(splats, device)
    K = np.asarray(K, np.float32)

    def render(mvp, R, t, res):
        C = R.shape[0]
        vm = torch.zeros((C, 4, 4), device=gs.device)
        vm[:, :3, :3] = R.to(gs.device, torch.float32)
        vm[:, :3, 3] = t.to(gs.device, torch.float32)
        vm[:, 3, 3] = 1.0
        ks = _as_tensor(np.broadcast_to(K, (C, 3, 3)), gs.device)
        col, a, d = render_splat_views(gs, vm, ks, res, res, chunk=chunk or C)
        return col, a >= alpha_threshold, d

    return render
