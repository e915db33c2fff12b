"""Least-squares texture fit: the texel values that best reproduce the source under bilinear filtering.

A viewer samples the texture bilinearly, so a texel value equal to the source
colour at its centre (point sampling) is not the best choice: a pixel between
texel centres sees a blend of four texels. The bake therefore samples the
source on a grid ``k`` times finer than the texture (exact source colours at
k*k points per texel), and solves

    min_t  || W (U t - c) ||^2  +  lam || t - t0 ||^2

where U is bilinear upsampling of the texture to the fine grid (what a viewer
does at those points), c the fine samples, W their coverage, and t0 their
box average (a weak prior that only matters where few samples exist, at chart
borders). Conjugate gradients on the normal equations, in torch on the bake's
device: this is the closed-form counterpart of an optimisation loop through a
renderer, with exact colours instead of rendered ones, and it takes
milliseconds on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


_K1 = (0.25, 0.75, 0.75, 0.25)


def _kernel(t: torch.Tensor) -> torch.Tensor:
    k = torch.tensor(_K1, dtype=t.dtype, device=t.device)
    return (k[:, None] * k[None, :])[None, None]  # (1,1,4,4) separable bilinear x2 kernel


def _up(t: torch.Tensor) -> torch.Tensor:
    """(N,C,S,S) -> (N,C,2S,2S) bilinear (align_corners=False, edges clamped): what a viewer does between texels.

    Per axis: fine[2i] = .25 t[i-1] + .75 t[i], fine[2i+1] = .75 t[i] + .25 t[i+1] (t clamped at the
    ends): torch's bilinear interpolation, which is exactly that (and faster than the equivalent stride-2
    transposed convolution of the edge-replicated texture, whose adjoint ``_up_adjoint`` is).
    """
    return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)


def _up_adjoint(y: torch.Tensor) -> torch.Tensor:
    """Exact adjoint (transpose) of _up: (N,C,2S,2S) -> (N,C,S,S): un-crop, stride-2 convolution, fold the
    replicated border back onto the edge texels."""
    N, C, H2, W2 = y.shape
    H, W = H2 // 2, W2 // 2
    z = F.pad(y.reshape(N * C, 1, H2, W2), (3, 3, 3, 3))
    u = F.conv2d(z, _kernel(y), stride=2)  # (NC,1,H+2,W+2): adjoint of the transposed conv on the padded texture
    u = u[:, 0]
    u[:, 1, :] += u[:, 0, :]
    u[:, H, :] += u[:, H + 1, :]
    u[:, :, 1] += u[:, :, 0]
    u[:, :, W] += u[:, :, W + 1]
    return u[:, 1 : H + 1, 1 : W + 1].reshape(N, C, H, W).contiguous()


def fit_texture(fine, fine_cov, k: int = 2, iters: int = 24, lam: float = 0.05):
    """fine (2S,2S,3) float sRGB samples + (2S,2S) bool coverage -> (texture (S,S,3) float, coverage (S,S) bool), torch."""
    if k != 2:
        raise ValueError("the least-squares fit samples the source at 2x the texture resolution (supersample 2)")
    fine = torch.as_tensor(fine, dtype=torch.float32)
    w = torch.as_tensor(fine_cov).to(fine.device, torch.float32)
    c = fine.permute(2, 0, 1)[None] * w[None, None]
    W = w[None, None]
    cnt = F.avg_pool2d(W, k) * (k * k)
    t0 = F.avg_pool2d(c, k) * (k * k) / cnt.clamp_min(1e-12)
    support = _up_adjoint(W)  # how much fine data touches each texel
    cov = (support[0, 0] > 0.25 * k * k * 0.25) | (cnt[0, 0] > 0)
    prior = lam * torch.where(cnt > 0, torch.ones_like(cnt), torch.full_like(cnt, 0.01))

    def A(x):
        return _up_adjoint(_up(x) * W) + prior * x

    b = _up_adjoint(c) + prior * t0
    x = t0.clone()
    r = b - A(x)
    p = r.clone()
    rs = (r * r).sum()
    for _ in range(iters):
        Ap = A(p)
        alpha = rs / (p * Ap).sum().clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum()
        if rs_new < 1e-12:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x[0].permute(1, 2, 0).clamp(0.0, 1.0), cov
