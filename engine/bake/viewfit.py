"""Least-squares fit of a texture to the bake views: the texels whose renders best match renders of the source.

An observation is a pixel of a bake view where both the target (the low-poly) and the source are seen:
the target gives the pixel's UV, the source its value (a channel sampled exactly at the source's own
surface point in that pixel). A viewer samples the texture bilinearly at that UV, so the pixel's error
is linear in the texels, and the texture that minimises the squared error over every view,

    min_t  sum_views sum_pixels ( bilinear(t, uv_p) - o_p )^2,

is what an optimisation loop through a differentiable renderer (TRELLIS' 2500 Adam steps) approaches:
here it is solved directly. A pixel's four bilinear taps are a 2x2 block of texels, so the normal
equations A^T A t = A^T o are a 3x3 stencil on the texture grid, the same shape as the texel-space fit of
engine.bake.fit, to which they are added (texels that no view sees keep that fit). They are accumulated
as per-texel moments -- 9 numbers for A^T A and 4 per channel for A^T o per observation, one
``index_add_`` per chunk of views -- and turned into the stencil once (``ViewSystem.normal_equations``).

Why it helps: a held-out view sees, at each pixel, the source surface along its own ray, while the
low-poly puts that pixel at a slightly different place; the best texel value is the one that is right on
average over the directions a texel is seen from, weighted by how many pixels it covers -- exactly this
sum. The texel-space gather instead blends the views with a fixed cosine weight.
"""

from __future__ import annotations

from typing import Optional

import torch


class ViewSystem:
    """Accumulates observations (uv, values) of a texture of side ``size`` with ``channels`` values each."""

    def __init__(self, size: int, channels: int, device):
        self.S, self.C = int(size), int(channels)
        self.device = torch.device(device)
        self.mom = torch.zeros((self.S * self.S, 9 + 4 * self.C), device=self.device)
        self.observations = 0

    def add(self, uv: torch.Tensor, values: torch.Tensor, weight: Optional[torch.Tensor] = None) -> None:
        """Observations: uv (K,2) in glTF convention (row = v * S), values (K,C), optional weights (K,)."""
        S = self.S
        x = uv[:, 0].float() * S - 0.5
        y = uv[:, 1].float() * S - 0.5
        x0, y0 = torch.floor(x), torch.floor(y)
        # the 2x2 block must lie inside the texture (charts are padded away from its border)
        ok = (x0 >= 0) & (y0 >= 0) & (x0 <= S - 2) & (y0 <= S - 2)
        if not bool(ok.all()):
            x, y, x0, y0, values = x[ok], y[ok], x0[ok], y0[ok], values[ok]
            weight = None if weight is None else weight[ok]
        if x.numel() == 0:
            return
        fx, fy = x - x0, y - y0
        gx = torch.stack([(1 - fx) ** 2, fx * (1 - fx), fx * fx], 1)  # products of two x-weights: (0,0), (0,1), (1,1)
        gy = torch.stack([(1 - fy) ** 2, fy * (1 - fy), fy * fy], 1)
        hx = torch.stack([1 - fx, fx], 1)
        hy = torch.stack([1 - fy, fy], 1)
        g = (gx[:, :, None] * gy[:, None, :]).reshape(-1, 9)  # [p * 3 + q]: x-pair p, y-pair q
        h = (hx[:, :, None] * hy[:, None, :]).reshape(-1, 4)  # [ax * 2 + ay]
        r = (h[:, :, None] * values.float()[:, None, :]).reshape(-1, 4 * self.C)
        rows = torch.cat([g, r], 1)
        if weight is not None:
            rows = rows * weight.float()[:, None]
        idx = (y0.long() * S + x0.long())
        self.mom.index_add_(0, idx, rows)
        self.observations += int(idx.numel())

    def normal_equations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (stencil coefficients (3,3,1,1,S,S) of A^T A as engine.bake.fit uses them, A^T o (1,C,S,S))."""
        S, C = self.S, self.C
        m = self.mom.reshape(S, S, -1)
        coef = torch.zeros((3, 3, S, S), device=self.device)
        rhs = torch.zeros((C, S, S), device=self.device)
        n = S - 1
        for ax in (0, 1):
            for ay in (0, 1):
                # the texel of tap a = (y0 + ay, x0 + ax) is the row of the equations
                rr = m[:n, :n, 9 + (ax * 2 + ay) * C : 9 + (ax * 2 + ay + 1) * C].permute(2, 0, 1)
                rhs[:, ay : n + ay, ax : n + ax] += rr
                for bx in (0, 1):
                    for by in (0, 1):
                        plane = m[:n, :n, (ax + bx) * 3 + (ay + by)]
                        coef[by - ay + 1, bx - ax + 1, ay : n + ay, ax : n + ax] += plane
        return coef[:, :, None, None], rhs[None]

    def support(self, coef: torch.Tensor) -> torch.Tensor:
        """How much observation weight each texel has (S,S): the row sums of A^T A (bilinear weights sum to 1)."""
        return coef.sum((0, 1))[0, 0]
