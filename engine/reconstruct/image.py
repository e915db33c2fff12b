"""Image and foreground-mask input for reconstruction.

Everything here works on plain numpy arrays:
  * photos are (H, W, 3) uint8 sRGB, row 0 at the top;
  * masks are (H, W) bool, True = foreground.

Foreground, in order of precedence: an explicit mask (any nonzero pixel, or
its alpha channel when it has a non-constant one), else the photo's own alpha
channel when it is not fully opaque, else automatic segmentation (OpenCV
GrabCut seeded from the image border). Every unusable input raises InputError
with a message naming the problem and a hint.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from engine.io import require_file
from engine.io.safety import check_image_pixels
from engine.errors import InputError

MIN_SIDE = 16
"""Images (and working resolutions) smaller than this on a side are refused."""
MAX_PIXELS = 100_000_000
"""Decompression-bomb guard: images with more pixels are refused."""
MIN_FOREGROUND_PIXELS = 64
"""A foreground smaller than this (at the working resolution) is refused."""

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, None]


def _open_pil(src, what: str):
    from PIL import ImageOps, UnidentifiedImageError

    if isinstance(src, (bytes, bytearray)):
        if len(src) == 0:
            raise InputError(f"{what} is empty (0 bytes)", hint=f"upload a PNG or JPEG {what}", code="empty_file")
        name = what
        fobj = io.BytesIO(bytes(src))
    else:
        p = require_file(src, what, noun="an image", hint="pass a PNG or JPEG file")
        name = p.name
        fobj = p
    try:
        im = check_image_pixels(fobj, f"{what} '{name}'", MAX_PIXELS)  # refused from its header, before decoding
        im.load()
    except UnidentifiedImageError:
        raise InputError(
            f"{what} '{name}' is not an image Kiln can read",
            hint="use a PNG, JPEG, WebP, BMP or TIFF file",
            code="unsupported_format",
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{what} '{name}' is corrupt or truncated ({e})", hint="export it again", code="corrupt_file") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:
        pass
    if im.width < MIN_SIDE or im.height < MIN_SIDE:
        raise InputError(
            f"{what} '{name}' is {im.width}x{im.height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed",
            hint="use a larger image",
            code="image_too_small",
        )
    return im, name


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    a = a.astype(np.float64)
    hi = float(a.max()) if a.size else 0.0
    if hi > 255.0:  # 16-bit or 32-bit integer data
        a = a / (65535.0 if hi <= 65535.0 else hi) * 255.0
    elif hi <= 1.0 and a.dtype.kind == "f":
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def load_image(src: PathOrBytes) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Read a photo -> (rgb (H, W, 3) uint8, alpha (H, W) uint8 or None)."""
    if src is None:
        raise InputError("no image given", hint="pass the photo to reconstruct", code="missing_file")
    im, _ = _open_pil(src, "image")
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        g = _to_uint8(np.asarray(im))
        return np.repeat(g[:, :, None], 3, axis=2), None
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        a = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(a[:, :, :3]), np.ascontiguousarray(a[:, :, 3])
    return np.ascontiguousarray(np.asarray(im.convert("RGB"))), None


def load_mask(src: PathOrBytes, shape: tuple[int, int]) -> np.ndarray:
    """Read a mask image -> (H, W) bool, True where any channel is nonzero.

    A mask with a non-constant alpha channel is read from its alpha (a cut-out
    PNG can serve as its own mask). ``shape`` is the photo's (H, W): a mask of
    another size is refused.
    """
    im, name = _open_pil(src, "mask")
    mode = im.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        a = np.asarray(im.convert("RGBA"))
        alpha = a[:, :, 3]
        if alpha.min() != alpha.max():
            m = alpha > 0
        else:
            m = a[:, :, :3].max(axis=2) > 0
    elif mode == "1":
        m = np.asarray(im).astype(bool)
    elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        m = np.asarray(im) != 0
    else:
        a = np.asarray(im.convert("RGB") if mode not in ("L",) else im)
        m = (a.max(axis=2) if a.ndim == 3 else a) > 0
    h, w = shape
    if m.shape != (h, w):
        raise InputError(
            f"mask '{name}' is {m.shape[1]}x{m.shape[0]} pixels but the image is {w}x{h}",
            hint="the mask must have exactly the image's size (white = object, black = background)",
            code="mask_size_mismatch",
        )
    return m


def mask_from_alpha(alpha: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The alpha channel as a foreground mask, or None when it carries no cut-out
    (absent, fully opaque, or fully transparent)."""
    if alpha is None:
        return None
    if alpha.min() >= 255:
        return None
    m = alpha >= 128
    if not m.any() or m.all():
        return None
    return m


def grabcut_mask(rgb: np.ndarray, border: float = 0.04, max_side: int = 512, iterations: int = 5) -> np.ndarray:
    """Automatic foreground: OpenCV GrabCut seeded from the image border.

    The outer ``border`` fraction of each side is marked sure-background; the
    rest starts as probable foreground. Runs on a copy downscaled to
    ``max_side`` for speed and returns a full-resolution (H, W) bool mask.
    """
    import cv2

    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1.0 else rgb
    sh, sw = small.shape[:2]
    bx, by = max(1, int(round(sw * border))), max(1, int(round(sh * border)))
    gc = np.full((sh, sw), cv2.GC_PR_FGD, np.uint8)
    gc[:by, :] = cv2.GC_BGD
    gc[-by:, :] = cv2.GC_BGD
    gc[:, :bx] = cv2.GC_BGD
    gc[:, -bx:] = cv2.GC_BGD
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(small[:, :, ::-1])
    try:
        cv2.grabCut(bgr, gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error as e:  # e.g. a uniform image: no colour model can be fitted
        raise InputError(
            f"automatic foreground segmentation failed ({str(e).strip().splitlines()[-1]})",
            hint="pass --mask MASK.png (white = object) or use a PNG with transparency",
            code="no_foreground",
        ) from None
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    if s < 1.0:
        fg = cv2.resize(fg * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
    return fg.astype(bool)


@dataclass
class Foreground:
    mask: np.ndarray  # (H, W) bool at the photo's resolution
    source: str  # "mask" | "alpha" | "grabcut"
    pixels: int
    fraction: float

    def stats(self) -> dict:
        return {"source": self.source, "pixels": self.pixels, "fraction": round(self.fraction, 6)}


def foreground(rgb: np.ndarray, alpha: Optional[np.ndarray], mask: PathOrBytes | np.ndarray = None, auto: bool = True) -> Foreground:
    """Pick the foreground mask (explicit mask > alpha > GrabCut) and check it is usable."""
    h, w = rgb.shape[:2]
    if isinstance(mask, np.ndarray):
        m = np.asarray(mask)
        if m.ndim == 3:
            m = m.max(axis=2)
        if m.shape != (h, w):
            raise InputError(
                f"mask is {m.shape[1]}x{m.shape[0]} pixels but the image is {w}x{h}",
                hint="the mask must have exactly the image's size",
                code="mask_size_mismatch",
            )
        m, src = m != 0, "mask"
    elif mask is not None:
        m, src = load_mask(mask, (h, w)), "mask"
    else:
        m = mask_from_alpha(alpha)
        src = "alpha"
        if m is None:
            if not auto:
                raise InputError(
                    "the image has no transparency and no mask was given",
                    hint="pass --mask MASK.png (white = object) or a PNG with an alpha cut-out",
                    code="no_foreground",
                )
            m, src = grabcut_mask(rgb), "grabcut"
    n = int(m.sum())
    frac = n / float(h * w)
    where = {"mask": "the mask", "alpha": "the image's alpha channel", "grabcut": "automatic segmentation"}[src]
    if n == 0:
        raise InputError(
            f"no foreground: {where} selects no pixel",
            hint="the mask must be white (nonzero) on the object and black elsewhere",
            code="empty_mask",
        )
    if n < MIN_FOREGROUND_PIXELS:
        raise InputError(
            f"foreground too small: {where} selects only {n} pixel(s) (at least {MIN_FOREGROUND_PIXELS} needed)",
            hint="use a larger crop of the object or a bigger mask",
            code="mask_too_small",
        )
    if frac > 0.995:
        raise InputError(
            f"no usable foreground: {where} covers the whole image",
            hint="the mask must be black on the background; for automatic segmentation the object must not touch every border",
            code="no_foreground",
        )
    return Foreground(m, src, n, frac)


def downscale(rgb: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Shrink photo and mask so the longest side is at most ``max_side``.

    Returns (rgb, mask, scale) with scale = new / old (1.0 when unchanged).
    The mask is area-averaged then thresholded at one half.
    """
    import cv2

    h, w = rgb.shape[:2]
    s = max_side / float(max(h, w))
    if s >= 1.0:
        return rgb, mask, 1.0
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA) >= 0.5
    return small, m, nw / float(w)


def clean_silhouette(
    mask: np.ndarray,
    keep_all_components: bool = False,
    open_px: int = 1,
    close_px: int = 1,
    fill_holes_fraction: float = 0.002,
    min_component_fraction: float = 0.002,
) -> tuple[np.ndarray, dict]:
    """Clean a binary silhouette.

    Morphological open (removes specks and 1-pixel spurs) then close (mends
    1-pixel cracks) with elliptical kernels of radius ``open_px`` / ``close_px``;
    holes smaller than ``fill_holes_fraction`` of the foreground are filled
    (real holes, such as a ring's, are kept); then the largest connected
    component is kept, or with ``keep_all_components`` every component of at
    least ``min_component_fraction`` of the foreground.
    """
    import cv2

    m = mask.astype(np.uint8)
    n_in = int(m.sum())

    def ellipse(r: int):
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))

    if open_px > 0:
        opened = cv2.morphologyEx(m, cv2.MORPH_OPEN, ellipse(open_px))
        if opened.sum() >= 0.5 * n_in:  # never let cleaning erase a thin object
            m = opened
    if close_px > 0:
        pad = close_px + 1
        mp = cv2.copyMakeBorder(m, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        mp = cv2.morphologyEx(mp, cv2.MORPH_CLOSE, ellipse(close_px))
        m = mp[pad:-pad, pad:-pad]

    # fill small holes: background components that do not touch the border
    n_fg = max(1, int(m.sum()))
    inv = (1 - m).astype(np.uint8)
    nb, lab, st, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    filled = 0
    kept_holes = 0
    h, w = m.shape
    for i in range(1, nb):
        x, y, bw, bh, area = st[i]
        touches = x == 0 or y == 0 or x + bw == w or y + bh == h
        if touches:
            continue
        if area <= fill_holes_fraction * n_fg:
            m[lab == i] = 1
            filled += 1
        else:
            kept_holes += 1

    nc, lab, st, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    areas = st[1:, cv2.CC_STAT_AREA]
    if len(areas) == 0:
        raise InputError(
            "no foreground left after cleaning the silhouette (the mask is only thin lines or specks)",
            hint="use a solid mask of the object",
            code="mask_too_small",
        )
    order = np.argsort(-areas)
    if keep_all_components:
        keep = [int(i) + 1 for i in order if areas[i] >= max(1.0, min_component_fraction * areas.sum())]
    else:
        keep = [int(order[0]) + 1]
    out = np.isin(lab, keep)
    info = {
        "components_found": int(nc - 1),
        "components_kept": len(keep),
        "kept_fraction": round(float(areas[np.asarray(keep) - 1].sum()) / float(areas.sum()), 4),
        "holes_filled": filled,
        "holes_kept": kept_holes,
        "pixels_in": n_in,
        "pixels_out": int(out.sum()),
    }
    return out, info


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the True pixels, x1/y1 exclusive."""
    ys = np.nonzero(mask.any(axis=1))[0]
    xs = np.nonzero(mask.any(axis=0))[0]
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def pull_push_fill(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill pixels where ``valid`` is False with a smooth extension of the valid ones
    (mask-weighted image pyramid). Keeps valid pixels unchanged. float32 in/out."""
    import cv2

    img = img.astype(np.float32)
    if valid.all() or not valid.any():
        return img
    wgt = valid.astype(np.float32)
    levels = []
    cur, cw = img * wgt[:, :, None], wgt
    while min(cur.shape[:2]) > 1:
        levels.append((cur, cw))
        h, w = cur.shape[:2]
        nh, nw = max(1, (h + 1) // 2), max(1, (w + 1) // 2)
        cur = cv2.resize(cur, (nw, nh), interpolation=cv2.INTER_AREA)
        cw = cv2.resize(cw, (nw, nh), interpolation=cv2.INTER_AREA)
        if cur.ndim == 2:
            cur = cur[:, :, None]
    levels.append((cur, cw))
    # coarsest: normalise
    col = levels[-1][0] / np.maximum(levels[-1][1], 1e-8)[:, :, None]
    for cur, cw in reversed(levels[:-1]):
        h, w = cur.shape[:2]
        up = cv2.resize(col, (w, h), interpolation=cv2.INTER_LINEAR)
        if up.ndim == 2:
            up = up[:, :, None]
        here = cur / np.maximum(cw, 1e-8)[:, :, None]
        a = np.clip(cw, 0.0, 1.0)[:, :, None]
        col = here * a + up * (1.0 - a)
    out = img.copy()
    out[~valid] = col[~valid]
    return out
