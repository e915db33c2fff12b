"""Fill texels the bake did not reach: crisp dilation for the padding, then push-pull for the rest.

1. ``padding`` rounds of dilation: every empty texel next to filled ones takes
   the mean of its filled 8-neighbours. Chart borders grow by >= padding
   texels of their own colours, so mip-mapping and bilinear filtering never
   pull in black.
2. Push-pull (a coverage-weighted mip pyramid, then upsampled back down)
   fills every remaining texel with a smooth blend of the nearest colours, so
   the whole texture has no holes at any mip level.
"""

from __future__ import annotations

import numpy as np


def _dilate_once(col: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    H, W = w.shape
    pc = np.pad(col * w[..., None], ((1, 1), (1, 1), (0, 0)))
    pw = np.pad(w, 1)
    acc = np.zeros_like(col)
    cnt = np.zeros_like(w)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            acc += pc[dy : dy + H, dx : dx + W]
            cnt += pw[dy : dy + H, dx : dx + W]
    grow = (w == 0) & (cnt > 0)
    out = col.copy()
    out[grow] = acc[grow] / cnt[grow][:, None]
    w2 = w.copy()
    w2[grow] = 1.0
    return out, w2


def push_pull(col: np.ndarray, w: np.ndarray) -> np.ndarray:
    levels = [(col * w[..., None], w)]
    while max(levels[-1][1].shape) > 1:
        c, ww = levels[-1]
        H, W = ww.shape
        if H % 2 or W % 2:
            c = np.pad(c, ((0, H % 2), (0, W % 2), (0, 0)))
            ww = np.pad(ww, ((0, H % 2), (0, W % 2)))
            H, W = ww.shape
        c2 = c.reshape(H // 2, 2, W // 2, 2, -1).sum((1, 3))
        w2 = ww.reshape(H // 2, 2, W // 2, 2).sum((1, 3))
        levels.append((c2, w2))
    # pull: from coarse to fine, fill empty texels with the coarser level's mean colour
    c, ww = levels[-1]
    mean = c / np.maximum(ww, 1e-12)[..., None]
    for c, ww in reversed(levels[:-1]):
        H, W = ww.shape
        up = np.repeat(np.repeat(mean, 2, 0), 2, 1)[:H, :W]
        m = c / np.maximum(ww, 1e-12)[..., None]
        mean = np.where((ww > 0)[..., None], m, up)
    return mean


def fill_and_dilate(texture: np.ndarray, coverage: np.ndarray, padding: int = 4) -> np.ndarray:
    """float (S,S,3) sRGB + bool coverage -> uint8 (S,S,3), every texel filled."""
    col = np.asarray(texture, np.float32)
    w = coverage.astype(np.float32)
    if w.sum() == 0:
        col = np.full_like(col, 0.5)
        return (col * 255.0 + 0.5).astype(np.uint8)
    for _ in range(max(int(padding), 1) * 2):
        if w.min() > 0:
            break
        col, w = _dilate_once(col, w)
    if w.min() == 0:
        col = np.where((w > 0)[..., None], col, push_pull(col, w))
    return (np.clip(col, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
