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
milliseconds on a GPU. The normal-equation operator is a 3x3 stencil on the
texture grid (``_stencil``, built once per fit), so an iteration touches S^2
texels instead of the 4 S^2 fine samples, and its diagonal preconditions the
CG: 16 iterations land closer to the optimum than 24 plain ones did (on a
512^2 pebble bake, texels vs a 200-iteration solution: mean 0.03 vs 0.26
8-bit steps at 12 iterations; the fine samples are reproduced within 0.01 dB
of the optimum), at about a third of the CPU time.
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


def _bands_1d(V: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-D bands of U^T diag(V) U along ``dim`` (fine length 2S -> coarse S): (K_-1, K_0, K_+1), where
    K_d[r] = sum_f V[f] a_f(r) a_f(r + d) and a_f are the bilinear weights of fine sample f (edges clamped).

    Fine sample 2i weighs texels (i-1, i) by (1/4, 3/4), sample 2i+1 texels (i, i+1) by (3/4, 1/4); at the
    ends the clamped weight folds onto the edge texel (weight 1)."""
    V = V.movedim(dim, -1)
    S = V.shape[-1] // 2
    ev, od = V[..., 0::2], V[..., 1::2]  # V[2r], V[2r+1]
    zero = torch.zeros_like(ev[..., :1])
    ev_next = torch.cat([ev[..., 1:], zero], -1)  # V[2r+2]
    od_prev = torch.cat([zero, od[..., :-1]], -1)  # V[2r-1]
    k0 = 0.5625 * (ev + od) + 0.0625 * (od_prev + ev_next)
    k0[..., 0] += 0.4375 * ev[..., 0]
    k0[..., S - 1] += 0.4375 * od[..., S - 1]
    kp = 0.1875 * (od + ev_next)
    kp[..., S - 1] = 0.0
    km = torch.cat([zero, kp[..., :-1]], -1)
    return tuple(k.movedim(-1, dim) for k in (km, k0, kp))


def _stencil(W: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """The normal-equation operator  x -> U^T (W * U x) + prior * x  as a 3x3 stencil of coefficient images.

    Bilinear x2 upsampling couples a texel only with its 8 neighbours, so the operator is a 9-band
    matrix on the texture grid; its weights are separable, so the bands come from two 1-D passes over
    the fine coverage W (along x, then along y). -> (3,3,1,1,S,S): [dy+1, dx+1] is the weight of texel
    (i+dy, j+dx) in row (i, j).
    """
    gx = _bands_1d(W, -1)  # (1,1,2S,S) each, per dx
    coef = torch.stack([torch.stack(_bands_1d(g, -2), 0) for g in gx], 1)  # [dy, dx]
    coef[1, 1] += prior
    return coef


def _apply_stencil(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    H, Wd = x.shape[-2:]
    xp = F.pad(x, (1, 1, 1, 1))
    y = coef[1, 1] * x
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                y.addcmul_(coef[dy + 1, dx + 1], xp[..., 1 + dy : 1 + dy + H, 1 + dx : 1 + dx + Wd])
    return y


def fit_texture(fine, fine_cov, k: int = 2, iters: int = 16, lam: float = 0.05, tol: float = 1e-4, view=None, view_weight: float = 16.0):
    """fine (2S,2S,C) float samples + (2S,2S) bool coverage -> (texture (S,S,C) float, coverage (S,S) bool), torch.

    Jacobi-preconditioned conjugate gradients on the texture grid (the operator as a 3x3 stencil,
    ``_stencil``), started from the box average; stops after ``iters`` iterations or when the
    residual falls below ``tol`` times its start (the remaining change is far below one 8-bit step).
    ``view``: (stencil (3,3,1,1,S,S), right-hand side (1,C,S,S)) of the bake views' observations
    (engine.bake.viewfit), added with ``view_weight`` times the fine samples' average weight per texel.
    """
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
    coef = _stencil(W, prior)
    b = _up_adjoint(c) + prior * t0
    if view is not None:
        vcoef, vrhs = view
        vsup = vcoef.sum((0, 1))
        seen = vsup > 0
        if bool(seen.any()):
            alpha = view_weight * float(support[support > 0].mean()) / float(vsup[seen].mean())
            coef = coef + alpha * vcoef
            b = b + alpha * vrhs.to(b.dtype)
            cov = cov | seen[0, 0]
    inv_diag = 1.0 / coef[1, 1]

    x = t0.clone()
    r = b - _apply_stencil(coef, x)
    z = r * inv_diag
    p = z.clone()
    rz = (r * z).sum()
    stop = float(rz) * tol * tol
    for _ in range(iters):
        if float(rz) <= stop or float(rz) < 1e-24:
            break
        Ap = _apply_stencil(coef, p)
        alpha = rz / (p * Ap).sum().clamp_min(1e-30)
        x.add_(alpha * p)
        r.sub_(alpha * Ap)
        z = r * inv_diag
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x[0].permute(1, 2, 0).clamp(0.0, 1.0), cov
