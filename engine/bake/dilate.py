"""Fill texels the bake did not reach: crisp dilation for the padding, then push-pull for the rest.

1. ``padding`` rounds of dilation: every empty texel next to filled ones takes
   the mean of its filled 8-neighbours. Chart borders grow by >= padding
   texels of their own colours, so mip-mapping and bilinear filtering never
   pull in black.
2. Push-pull (a coverage-weighted mip pyramid, then upsampled back down)
   fills every remaining texel with a smooth blend of the nearest colours, so
   the whole texture has no holes at any mip level.
Torch ops, so it runs where the bake ran (GPU for cuda, CPU otherwise).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _dilate_once(col: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # col (1,3,H,W) premultiplied by w (1,1,H,W)
    box = lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True) * 9.0  # noqa: E731
    cnt = box(w)
    acc = box(col * w)
    grow = (w == 0) & (cnt > 0)
    col = torch.where(grow, acc / cnt.clamp_min(1e-12), col)
    return col, torch.where(grow, torch.ones_like(w), w)


def push_pull(col: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    levels = [(col * w, w)]
    while max(levels[-1][1].shape[2:]) > 1:
        c, ww = levels[-1]
        H, W = ww.shape[2:]
        if H % 2 or W % 2:
            c = F.pad(c, (0, W % 2, 0, H % 2))
            ww = F.pad(ww, (0, W % 2, 0, H % 2))
        levels.append((F.avg_pool2d(c, 2) * 4, F.avg_pool2d(ww, 2) * 4))
    c, ww = levels[-1]
    mean = c / ww.clamp_min(1e-12)
    for c, ww in reversed(levels[:-1]):
        H, W = ww.shape[2:]
        up = F.interpolate(mean, scale_factor=2, mode="nearest")[:, :, :H, :W]
        mean = torch.where(ww > 0, c / ww.clamp_min(1e-12), up)
    return mean


def fill_and_dilate(texture, coverage, padding: int = 4, device=None) -> np.ndarray:
    """float (S,S,3) sRGB + bool coverage (numpy or torch) -> uint8 (S,S,3) numpy, every texel filled."""
    t = torch.as_tensor(np.asarray(texture) if not torch.is_tensor(texture) else texture).to(torch.float32)
    m = torch.as_tensor(np.asarray(coverage) if not torch.is_tensor(coverage) else coverage)
    if device is not None:
        t, m = t.to(device), m.to(device)
    with torch.no_grad():
        col = t.permute(2, 0, 1)[None].contiguous()
        w = m.to(torch.float32)[None, None]
        if float(w.sum()) == 0:
            col = torch.full_like(col, 0.5)
        else:
            for _ in range(max(int(padding), 1) * 2):
                col, w = _dilate_once(col, w)
            if bool((w == 0).any()):
                col = torch.where(w > 0, col, push_pull(col, w))
        out = (col[0].permute(1, 2, 0).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return out.cpu().numpy()
