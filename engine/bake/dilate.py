"""Fill texels the bake did not reach: crisp dilation for the padding, then push-pull for the rest.

1. ``padding`` rounds of dilation: every empty texel next to filled ones takes
   the mean of its filled 8-neighbours. Chart borders grow by >= padding
   texels of their own colours, so mip-mapping and bilinear filtering never
   pull in black.
2. Push-pull (a coverage-weighted mip pyramid, then upsampled back down)
   fills every remaining texel with a smooth blend of the nearest colours, so
   the whole texture has no holes at any mip level.
Torch ops where the bake ran on a GPU. On the CPU the dilation works on the
ring of texels it fills in each round (a 3x3 sum is 9 gathers at fixed offsets
of a zero-padded premultiplied image), not on the whole texture: same result
(float32 sums in another order), ~10x less time (1024^2: ~0.9 s -> ~0.1 s).
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


def _fill_cpu(col: np.ndarray, cov: np.ndarray, rounds: int) -> np.ndarray:
    """fill_and_dilate on the CPU: float32 (H,W,C), bool (H,W) -> uint8 (H,W,C)."""
    import cv2

    H, W, C = col.shape
    if not cov.any():
        return np.full((H, W, C), 128, np.uint8)  # 0.5, as the torch path
    Wp = W + 2
    acc = np.zeros((H + 2, Wp, C + 1), np.float32)  # premultiplied colour, weight; zero border
    inner = acc[1:-1, 1:-1]
    np.multiply(col, cov[..., None], out=inner[..., :C])
    inner[..., C] = cov
    flat = acc.reshape(-1, C + 1)
    texel = flat.view(np.dtype((np.void, 4 * (C + 1)))).ravel()  # one element per texel: fast np.take
    offs = [dy * Wp + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    done = cov.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(rounds):
        r, c = np.nonzero(cv2.dilate(done, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > done)
        if not len(r):
            break
        idx = (r + 1) * Wp + (c + 1)
        s = np.take(texel, idx + offs[0]).view(np.float32).reshape(-1, C + 1).copy()
        for o in offs[1:]:
            s += np.take(texel, idx + o).view(np.float32).reshape(-1, C + 1)
        flat[idx, :C] = s[:, :C] / s[:, C:]  # the mean of the filled 8-neighbours
        flat[idx, C] = 1.0
        done[r, c] = 1
    out = np.ascontiguousarray(inner[..., :C])
    hole = done == 0
    if hole.any():
        from engine.bake.threads import single_thread

        w = torch.as_tensor(done.astype(np.float32))[None, None]
        with single_thread():
            pp = push_pull(torch.as_tensor(out).permute(2, 0, 1)[None], w)[0].permute(1, 2, 0).numpy()
        out[hole] = pp[hole]
    out *= 255.0
    out += 0.5
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def _fill_torch(t: torch.Tensor, m: torch.Tensor, rounds: int) -> np.ndarray:
    """fill_and_dilate with torch ops where the tensors are (the GPU path): float (S,S,C), bool (S,S)."""
    with torch.no_grad():
        col = t.to(torch.float32).permute(2, 0, 1)[None].contiguous()
        w = m.to(torch.float32)[None, None]
        if float(w.sum()) == 0:
            col = torch.full_like(col, 0.5)
        else:
            for _ in range(rounds):
                col, w = _dilate_once(col, w)
            if bool((w == 0).any()):
                col = torch.where(w > 0, col, push_pull(col, w))
        out = (col[0].permute(1, 2, 0).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return out.cpu().numpy()


def fill_and_dilate(texture, coverage, padding: int = 4, device=None) -> np.ndarray:
    """float (S,S,3) sRGB + bool coverage (numpy or torch) -> uint8 (S,S,3) numpy, every texel filled."""
    rounds = max(int(padding), 1) * 2
    dev = torch.device(device) if device is not None else (texture.device if torch.is_tensor(texture) else torch.device("cpu"))
    if dev.type == "cpu":
        col = texture.detach().cpu().numpy() if torch.is_tensor(texture) else np.asarray(texture)
        cov = coverage.detach().cpu().numpy() if torch.is_tensor(coverage) else np.asarray(coverage)
        return _fill_cpu(np.asarray(col, np.float32), np.asarray(cov, bool), rounds)
    t = torch.as_tensor(np.asarray(texture) if not torch.is_tensor(texture) else texture)
    m = torch.as_tensor(np.asarray(coverage) if not torch.is_tensor(coverage) else coverage)
    return _fill_torch(t.to(dev), m.to(dev), rounds)
