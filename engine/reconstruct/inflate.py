"""`inflate`: the embedded, weight-free reconstruction backend (numpy + OpenCV, CPU).

A silhouette is inflated into a closed 2.5D "pillow":

1. The photo and mask are downscaled to ``max_size`` (longest side) and the
   silhouette is cleaned (open/close, small holes filled, main component kept,
   or all components with ``keep_all_components``).
2. A regular grid of square cells (``step`` working pixels, chosen so the mesh
   has about ``mesh_faces`` triangles) is laid over the silhouette; cells that
   only touch diagonally are bridged so every vertex is manifold.
3. Two sheets (front, back) are triangulated over the same cells and stitched
   along every boundary edge by a thin rim wall, so the surface is closed and
   watertight by construction (a ring gives a genus-1 torus-like solid).
   Boundary vertices are snapped onto the sub-pixel contour of the silhouette
   (Newton steps on a lightly blurred mask), reverting any move that would flip
   a triangle.
4. Height from the distance transform ``d`` (pixels to the silhouette edge):
   ``h = inflation * sqrt(d' (2R - d'))`` with ``d' = min(d, R)`` and
   ``R = min(max d of the component, depth/2 * larger side)``: a circular,
   rounded rim of radius R that becomes a flat plateau where the object is
   wider than its allowed thickness (a disc becomes a sphere when the cap does
   not bite). The front is +Z, the back -Z.
5. Frame: +Y up, front faces +Z, object height 1, bottom at Y = 0, centred in
   X and Z. The photo is not mirrored: image right is +X.
6. Appearance: UVs are image coordinates; the texture is the photo cropped to
   the object's bounding box (at the photo's full resolution up to
   ``texture_max``), with background pixels replaced by a smooth extension of
   the object so nothing bleeds in at the rim. The back uses the same UVs
   with a ``back`` style: ``shaded`` (default: the front's colours blurred past recognition and
   darkened, so no face shows through), ``average`` (the front's mean colour), ``mirror`` (the
   front seen from behind) or a solid colour.
"""

from __future__ import annotations

import math
import time
from enum import Enum
from typing import Optional

import numpy as np

from engine.errors import InputError
from engine.mesh.source import Material, SourceMesh, srgb_to_linear
from engine.reconstruct import image as imgmod
from engine.reconstruct.base import FrontView, ReconBackend, ReconResult, StageProgress, validate_inputs


RIM_HALF_HEIGHT = 0.5
"""Half height of the rim wall joining the two sheets, in grid steps."""


class BackStyle(str, Enum):
    """What the back of an inflated object shows (the photo only saw the front)."""

    SHADED = "shaded"  # the front's colours blurred past recognition and darkened (default)
    AVERAGE = "average"  # one colour: the front's average
    MIRROR = "mirror"  # the front seen from behind (a face shows through, mirrored)
    COLOUR = "colour"  # a given solid colour


BACK_HINT = "use shaded (default), average, mirror, #rrggbb or r,g,b"
SHADED_BLUR = 0.06
"""Gaussian sigma of the shaded back, as a fraction of the texture's longer side (features vanish)."""
SHADED_DARKEN = 0.6
"""Brightness of the shaded back relative to the front (it faces away from the camera's light)."""


def parse_back(back) -> tuple:
    """(BackStyle, sRGB floats in [0, 1] for COLOUR else None) from 'shaded' | 'average' | 'mirror' |
    '#rrggbb' / 'r,g,b' (0..255 or 0..1) / [r, g, b]; None means the default, shaded."""
    if back is None:
        return BackStyle.SHADED, None
    if isinstance(back, str):
        s = back.strip().lower()
        if s in ("", "shaded", "shade", "blurred"):
            return BackStyle.SHADED, None
        if s in ("average", "mean", "solid"):
            return BackStyle.AVERAGE, None
        if s in ("mirror", "front", "mirrored"):
            return BackStyle.MIRROR, None
        if s.startswith("#"):
            h = s[1:]
            if len(h) == 3:
                h = "".join(c * 2 for c in h)
            if len(h) != 6 or any(c not in "0123456789abcdef" for c in h):
                raise InputError(f"invalid back colour {back!r}", hint=BACK_HINT, code="bad_option")
            return BackStyle.COLOUR, np.array([int(h[i : i + 2], 16) for i in (0, 2, 4)], np.float32) / 255.0
        parts = [p for p in s.replace(" ", ",").split(",") if p]
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"invalid back colour {back!r}", hint=BACK_HINT, code="bad_option") from None
        back = vals
    try:
        arr = np.asarray(back, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"invalid back colour {back!r}", hint=BACK_HINT, code="bad_option") from None
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise InputError(f"invalid back colour {back!r}", hint=BACK_HINT, code="bad_option")
    if arr.max() > 1.0:
        if arr.max() > 255.0:
            raise InputError(f"invalid back colour {back!r}: components must be 0..255 or 0..1", code="bad_option")
        arr = arr / 255.0
    return BackStyle.COLOUR, arr


def _bilinear(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample a per-pixel field (value of pixel (i, j) at its centre (j+.5, i+.5)) at continuous (x, y)."""
    h, w = field.shape[:2]
    u = np.clip(x - 0.5, 0.0, w - 1.0)
    v = np.clip(y - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(u).astype(np.int64), w - 2) if w > 1 else np.zeros(len(u), np.int64)
    y0 = np.minimum(np.floor(v).astype(np.int64), h - 2) if h > 1 else np.zeros(len(v), np.int64)
    fx = u - x0
    fy = v - y0
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    top = field[y0, x0] * (1 - fx) + field[y0, x1] * fx
    bot = field[y1, x0] * (1 - fx) + field[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def bridge_diagonals(cells: np.ndarray) -> np.ndarray:
    """Turn on one cell of every 2x2 block whose on-cells touch only at a corner,
    until none is left, so the grid surface has no pinched (non-manifold) vertex."""
    c = cells.astype(bool).copy()
    for _ in range(10000):
        a = c[:-1, :-1]
        b = c[:-1, 1:]
        d = c[1:, :-1]
        e = c[1:, 1:]
        p1 = a & e & ~b & ~d  # main diagonal
        p2 = b & d & ~a & ~e  # anti diagonal
        if not (p1.any() or p2.any()):
            return c
        ys, xs = np.nonzero(p1)
        c[ys, xs + 1] = True  # fill the top-right cell of the block
        ys, xs = np.nonzero(p2)
        c[ys, xs] = True  # fill the top-left cell
    return c  # pragma: no cover - converges long before


def grid_cells(mask: np.ndarray, step: int) -> np.ndarray:
    """Cells of ``step`` x ``step`` pixels that are at least half foreground."""
    if step == 1:
        return mask.copy()
    h, w = mask.shape
    hc, wc = -(-h // step), -(-w // step)
    pad = np.zeros((hc * step, wc * step), np.float32)
    pad[:h, :w] = mask
    frac = pad.reshape(hc, step, wc, step).mean(axis=(1, 3))
    return frac >= 0.5


def build_pillow(
    mask: np.ndarray,
    step: int,
    inflation: float = 1.0,
    depth: float = 0.3,
    progress: Optional[StageProgress] = None,
) -> dict:
    """Closed two-sheet mesh over ``mask`` in working-pixel units.

    Returns dict(xy (n, 2) pixel coords, z (n,) pixels (front +), faces (m, 3),
    n_front_faces, n_back_faces, is_front_vertex, step, rim).
    """
    import cv2

    h, w = mask.shape
    cells = bridge_diagonals(grid_cells(mask, step))
    if not cells.any():
        raise InputError("the silhouette is too thin to build a mesh", hint="use a larger image or a solider mask", code="mask_too_small")
    hc, wc = cells.shape
    cp = np.zeros((hc + 2, wc + 2), bool)
    cp[1:-1, 1:-1] = cells
    # corner (i, j), 0 <= i <= hc, 0 <= j <= wc, touches cells (i-1, j-1) (i-1, j) (i, j-1) (i, j)
    cnt = cp[:-1, :-1].astype(np.int8) + cp[:-1, 1:] + cp[1:, :-1] + cp[1:, 1:]
    used = cnt > 0
    interior = cnt == 4
    boundary = used & ~interior

    nv = int(used.sum())
    vid = np.full(used.shape, -1, np.int64)
    vid[used] = np.arange(nv)
    ii, jj = np.nonzero(used)
    xy = np.stack([np.minimum(jj * step, w), np.minimum(ii * step, h)], axis=1).astype(np.float64)
    is_bnd = boundary[ii, jj]

    # front-sheet triangles, counter-clockwise seen from +Z (world Y = -image y)
    r, c = np.nonzero(cells)
    a = vid[r, c]
    b = vid[r, c + 1]
    cc = vid[r + 1, c + 1]
    d = vid[r + 1, c]
    even = ((r + c) % 2) == 0
    t1 = np.where(even[:, None], np.stack([a, d, cc], 1), np.stack([a, d, b], 1))
    t2 = np.where(even[:, None], np.stack([a, cc, b], 1), np.stack([b, d, cc], 1))
    front = np.concatenate([t1, t2], axis=0)

    if progress:
        progress(0.3, f"{len(front)} front triangles")

    # --- snap boundary vertices to the sub-pixel contour -------------------------
    field = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)
    gy, gx = np.gradient(field)
    bidx = np.nonzero(is_bnd)[0]
    orig = xy[bidx].copy()
    p = orig.copy()
    max_move = 0.7 * step
    for _ in range(4):
        f = _bilinear(field, p[:, 0], p[:, 1])
        g = np.stack([_bilinear(gx, p[:, 0], p[:, 1]), _bilinear(gy, p[:, 0], p[:, 1])], 1)
        g2 = (g * g).sum(1)
        ok = g2 > 1e-6
        delta = np.zeros_like(p)
        delta[ok] = ((0.5 - f[ok]) / g2[ok])[:, None] * g[ok]
        n = np.linalg.norm(delta, axis=1)
        lim = 0.5 * step
        delta *= np.minimum(1.0, lim / np.maximum(n, 1e-12))[:, None]
        p = p + delta
        off = p - orig
        on = np.linalg.norm(off, axis=1)
        p = orig + off * np.minimum(1.0, max_move / np.maximum(on, 1e-12))[:, None]
    p[:, 0] = np.clip(p[:, 0], 0.0, w)
    p[:, 1] = np.clip(p[:, 1], 0.0, h)
    xy[bidx] = p

    def signed_area(xy_: np.ndarray) -> np.ndarray:
        P = np.stack([xy_[:, 0], -xy_[:, 1]], 1)  # world orientation
        A, B, C = P[front[:, 0]], P[front[:, 1]], P[front[:, 2]]
        return 0.5 * ((B[:, 0] - A[:, 0]) * (C[:, 1] - A[:, 1]) - (B[:, 1] - A[:, 1]) * (C[:, 0] - A[:, 0]))

    min_area = 0.02 * step * step
    for _ in range(50):
        bad = signed_area(xy) < min_area
        if not bad.any():
            break
        vs = np.unique(front[bad].reshape(-1))
        vs = vs[is_bnd[vs]]
        moved = vs[np.any(xy[vs] != np.stack([np.minimum(jj[vs] * step, w), np.minimum(ii[vs] * step, h)], 1), axis=1)]
        if len(moved) == 0:
            break
        xy[moved, 0] = np.minimum(jj[moved] * step, w)
        xy[moved, 1] = np.minimum(ii[moved] * step, h)

    if progress:
        progress(0.5, "height field")

    # --- height: rounded profile from the distance transform --------------------
    mp = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(mp, cv2.DIST_L2, 5)[1:-1, 1:-1]
    nlab, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    rmax = np.zeros(nlab, np.float32)
    np.maximum.at(rmax, lab.reshape(-1), dist.reshape(-1))
    rmax[0] = 0.0
    rmap = rmax[lab]
    k = 2 * step + 1
    rmap = cv2.dilate(rmap, np.ones((k, k), np.uint8))
    ys, xs = np.nonzero(mask)
    size = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    cap = max(1.0, 0.5 * depth * size)
    rim = RIM_HALF_HEIGHT * step  # half height of the rim wall that joins the two sheets

    z = np.zeros(nv, np.float64)
    inn = ~is_bnd
    if inn.any():
        pi = xy[inn]
        dd = np.maximum(_bilinear(dist, pi[:, 0], pi[:, 1]) - 0.5, 0.25 * step)
        ri = rmap[np.clip(pi[:, 1].astype(np.int64), 0, h - 1), np.clip(pi[:, 0].astype(np.int64), 0, w - 1)]
        ri = np.where(ri > 0, ri, dd)
        reff = np.minimum(ri, cap)
        dc = np.minimum(dd, reff)
        z[inn] = inflation * np.sqrt(np.maximum(dc * (2.0 * reff - dc), 0.0))
    z += rim

    # --- back sheet + rim wall --------------------------------------------------
    back_faces = front[:, ::-1] + nv
    # boundary edges of the front sheet: directed edges without a twin
    e = np.concatenate([front[:, [0, 1]], front[:, [1, 2]], front[:, [2, 0]]], axis=0)
    key = e[:, 0] * nv + e[:, 1]
    rkey = e[:, 1] * nv + e[:, 0]
    twin = np.isin(key, rkey)
    be = e[~twin]
    u, v = be[:, 0], be[:, 1]
    wall = np.concatenate([np.stack([v, u, u + nv], 1), np.stack([v, u + nv, v + nv], 1)], axis=0)
    faces = np.concatenate([front, back_faces, wall], axis=0).astype(np.int64)
    xy_all = np.concatenate([xy, xy], axis=0)
    z_all = np.concatenate([z, -z], axis=0)
    return {
        "xy": xy_all,
        "z": z_all,
        "faces": faces,
        "n_front_faces": int(len(front)),
        "n_back_faces": int(len(back_faces)),
        "n_wall_faces": int(len(wall)),
        "n_sheet_vertices": nv,
        "step": int(step),
        "rim": float(rim),
        "cap": float(cap),
    }


class InflateBackend(ReconBackend):
    name = "inflate"
    option_defaults = {
        "max_size": 1024,  # working resolution: longest side in pixels
        "keep_all_components": False,
        "back": "shaded",  # shaded | average | mirror | '#rrggbb' | 'r,g,b' | [r, g, b]
        "inflation": 1.0,  # profile multiplier: 1 = circular rim
        "depth": 0.3,  # max thickness as a fraction of the object's larger side
        "mesh_faces": 120_000,  # triangle budget before Kiln's simplify
        "texture_max": 2048,  # longest side of the front texture crop
        "clean_px": 1,  # radius of the morphological open/close, working pixels
    }

    def check_options(self, options):
        o = super().check_options(options)

        def need(cond, msg):
            if not cond:
                raise InputError(f"invalid inflate option: {msg}", code="bad_option")

        need(isinstance(o["max_size"], int) and 64 <= o["max_size"] <= 8192, f"max_size={o['max_size']!r} must be an integer in 64..8192")
        need(isinstance(o["keep_all_components"], bool), "keep_all_components must be true or false")
        need(isinstance(o["inflation"], (int, float)) and 0.0 < float(o["inflation"]) <= 10.0, f"inflation={o['inflation']!r} must be in (0, 10]")
        need(isinstance(o["depth"], (int, float)) and 0.0 < float(o["depth"]) <= 2.0, f"depth={o['depth']!r} must be in (0, 2]")
        need(isinstance(o["mesh_faces"], int) and 1000 <= o["mesh_faces"] <= 5_000_000, f"mesh_faces={o['mesh_faces']!r} must be in 1000..5000000")
        need(isinstance(o["texture_max"], int) and 16 <= o["texture_max"] <= 8192, f"texture_max={o['texture_max']!r} must be in 16..8192")
        need(isinstance(o["clean_px"], int) and 0 <= o["clean_px"] <= 32, f"clean_px={o['clean_px']!r} must be in 0..32")
        o["back_style"], o["back_rgb"] = parse_back(o["back"])
        return o

    def reconstruct(self, rgb, mask, options=None, progress=None) -> ReconResult:
        import cv2

        o = self.check_options(options)
        validate_inputs(rgb, mask)
        t = {}
        t0 = time.perf_counter()
        H0, W0 = rgb.shape[:2]
        work, wmask, sc = imgmod.downscale(rgb, mask.astype(bool), o["max_size"])
        h, w = wmask.shape
        if wmask.sum() < imgmod.MIN_FOREGROUND_PIXELS:
            raise InputError(
                f"foreground too small: {int(wmask.sum())} pixel(s) at the working resolution {w}x{h} (at least {imgmod.MIN_FOREGROUND_PIXELS} needed)",
                hint="use a larger mask, or raise max_size",
                code="mask_too_small",
            )
        clean, cinfo = imgmod.clean_silhouette(wmask, keep_all_components=o["keep_all_components"], open_px=o["clean_px"], close_px=o["clean_px"])
        n = int(clean.sum())
        x0, y0, x1, y1 = imgmod.bbox(clean)
        if n < imgmod.MIN_FOREGROUND_PIXELS or min(x1 - x0, y1 - y0) < 3:
            raise InputError(
                f"foreground too small after cleaning: {n} pixel(s), {x1 - x0}x{y1 - y0} box at {w}x{h}",
                hint="use a larger, solid mask of the object",
                code="mask_too_small",
            )
        t["silhouette"] = time.perf_counter() - t0
        if progress:
            progress(0.1, f"silhouette {n} px at {w}x{h}")

        # ---- geometry -------------------------------------------------------------
        t0 = time.perf_counter()
        step = max(1, int(math.ceil(math.sqrt(4.0 * n / o["mesh_faces"]))))
        while True:
            try:
                geo = build_pillow(
                    clean,
                    step,
                    inflation=float(o["inflation"]),
                    depth=float(o["depth"]),
                    progress=(lambda f, m: progress(0.1 + 0.6 * f, m)) if progress else None,
                )
                break
            except InputError:
                if step == 1:
                    raise
                step = max(1, step // 2)
        t["mesh"] = time.perf_counter() - t0

        scale = 1.0 / float(y1 - y0)  # unit height
        cx = 0.5 * (x0 + x1)
        cy = float(y1)
        xy, z = geo["xy"], geo["z"]
        verts = np.stack([(xy[:, 0] - cx) * scale, (cy - xy[:, 1]) * scale, z * scale], axis=1).astype(np.float32)

        # ---- appearance -----------------------------------------------------------
        t0 = time.perf_counter()
        margin = 2 + step
        ox0 = max(0, int(math.floor((x0 - margin) / sc)))
        oy0 = max(0, int(math.floor((y0 - margin) / sc)))
        ox1 = min(W0, int(math.ceil((x1 + margin) / sc)))
        oy1 = min(H0, int(math.ceil((y1 + margin) / sc)))
        ch, cw = oy1 - oy0, ox1 - ox0
        ts = min(1.0, o["texture_max"] / float(max(ch, cw)))
        tw, th = max(1, round(cw * ts)), max(1, round(ch * ts))
        crop = rgb[oy0:oy1, ox0:ox1]
        if (tw, th) != (cw, ch):
            crop = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA)
        # the reconstructed silhouette at texture resolution (texel centres mapped to working pixels),
        # minus a 1-texel band of mixed edge pixels; everything else is filled from the object
        tx = (ox0 + (np.arange(tw) + 0.5) * (cw / tw)) * sc
        ty = (oy0 + (np.arange(th) + 0.5) * (ch / th)) * sc
        gx, gy = np.meshgrid(tx, ty)
        inside = _bilinear(clean.astype(np.float32), gx.reshape(-1), gy.reshape(-1)).reshape(th, tw) >= 0.5
        valid = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if not valid.any():
            valid = inside
        tex = imgmod.pull_push_fill(crop.astype(np.float32), valid)
        tex_u8 = np.clip(np.rint(tex), 0, 255).astype(np.uint8)
        u = (xy[:, 0] / sc - ox0) / float(cw)
        v = (xy[:, 1] / sc - oy0) / float(ch)
        uv = np.stack([u, v], axis=1).astype(np.float32)
        mats = [Material(name="photo", texture=tex_u8, wrap="clamp")]
        face_material = None
        style, back_rgb = o["back_style"], o["back_rgb"]
        if style is BackStyle.AVERAGE:
            back_rgb = tex[valid].mean(axis=0) / 255.0 if valid.any() else tex.reshape(-1, 3).mean(axis=0) / 255.0
        if style is BackStyle.SHADED:
            sigma = max(1.0, SHADED_BLUR * max(tw, th))
            blurred = cv2.GaussianBlur(tex, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
            back_u8 = np.clip(np.rint(blurred * SHADED_DARKEN), 0, 255).astype(np.uint8)
            mats.append(Material(name="back", texture=back_u8, wrap="clamp"))
        elif style is not BackStyle.MIRROR:
            col = np.ones(4, np.float32)
            col[:3] = srgb_to_linear(np.asarray(back_rgb, np.float32))
            mats.append(Material(name="back", base_color_factor=col))
        if len(mats) > 1:
            face_material = np.zeros(len(geo["faces"]), np.int32)
            nf, nb = geo["n_front_faces"], geo["n_back_faces"]
            face_material[nf : nf + nb] = 1
        t["texture"] = time.perf_counter() - t0

        mesh = SourceMesh(
            vertices=verts,
            faces=geo["faces"].astype(np.int32),
            uv=uv,
            face_material=face_material,
            materials=mats,
            name="inflate",
        )
        fv = FrontView(rgb=work, mask=clean, input_mask=wmask, scale=scale, cx=cx, cy=cy)
        info = {
            "working_size": [w, h],
            "input_size": [W0, H0],
            "downscale": round(sc, 6),
            "silhouette": cinfo,
            "bbox_px": [x0, y0, x1, y1],
            "grid_step_px": geo["step"],
            "faces": int(len(geo["faces"])),
            "vertices": int(len(verts)),
            "faces_front": geo["n_front_faces"],
            "faces_back": geo["n_back_faces"],
            "faces_rim": geo["n_wall_faces"],
            "thickness": round(float(2.0 * z.max() * scale), 6),
            "rim_radius_cap": round(float(geo["cap"] * scale), 6),
            "texture_size": [int(tex_u8.shape[1]), int(tex_u8.shape[0])],
            "back": style.value if style in (BackStyle.SHADED, BackStyle.MIRROR) else "#%02x%02x%02x" % tuple(int(round(float(c) * 255)) for c in back_rgb),
            "timings": {k: round(v, 4) for k, v in t.items()},
        }
        if progress:
            progress(1.0, f"{info['faces']} faces")
        return ReconResult(mesh=mesh, front_view=fv, info=info)
