"""UV-space rasterisation on the CPU: which triangle covers each texel centre.

Texel (row r, col c) has its centre at uv = ((c + .5) / S, (r + .5) / S).
Vectorised over triangle chunks: candidate texels from each triangle's
bounding box, kept where all barycentrics are >= 0. Later triangles win ties
(charts never overlap after xatlas packing, so ties are only shared edges).
"""

from __future__ import annotations

import numpy as np


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int, chunk_texels: int = 4_000_000):
    """-> (tri (S,S) int32, -1 where uncovered; bary (S,S,3) float32)."""
    S = int(size)
    tri_img = np.full(S * S, -1, np.int32)
    bary_img = np.zeros((S * S, 3), np.float32)
    P = uv[faces].astype(np.float64) * S - 0.5  # texel-centre coordinates: centre of texel c at c
    xmin = np.clip(np.ceil(P[:, :, 0].min(1)), 0, S - 1).astype(np.int64)
    xmax = np.clip(np.floor(P[:, :, 0].max(1)), 0, S - 1).astype(np.int64)
    ymin = np.clip(np.ceil(P[:, :, 1].min(1)), 0, S - 1).astype(np.int64)
    ymax = np.clip(np.floor(P[:, :, 1].max(1)), 0, S - 1).astype(np.int64)
    w = np.maximum(xmax - xmin + 1, 0)
    h = np.maximum(ymax - ymin + 1, 0)
    w[(P[:, :, 0].max(1) < xmin) | (P[:, :, 1].max(1) < ymin)] = 0
    n = w * h
    order = np.arange(len(faces))
    start = 0
    csum = np.cumsum(n)
    while start < len(faces):
        base = csum[start - 1] if start else 0
        end = int(np.searchsorted(csum, base + chunk_texels, side="right"))
        end = max(end, start + 1)
        idx = order[start:end]
        cnt = n[idx]
        tot = int(cnt.sum())
        if tot:
            t = np.repeat(idx, cnt)
            local = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            ww = np.repeat(w[idx], cnt)
            x = np.repeat(xmin[idx], cnt) + local % np.maximum(ww, 1)
            y = np.repeat(ymin[idx], cnt) + local // np.maximum(ww, 1)
            a, b, c = P[t, 0], P[t, 1], P[t, 2]
            v0 = b - a
            v1 = c - a
            px = x - a[:, 0]
            py = y - a[:, 1]
            den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
            ok = np.abs(den) > 1e-12
            den = np.where(ok, den, 1.0)
            l1 = (px * v1[:, 1] - v1[:, 0] * py) / den
            l2 = (v0[:, 0] * py - px * v0[:, 1]) / den
            l0 = 1.0 - l1 - l2
            eps = -1e-7
            inside = ok & (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
            pix = (y * S + x)[inside]
            tri_img[pix] = t[inside]
            bary_img[pix] = np.stack([l0, l1, l2], 1)[inside]
        start = end
    return tri_img.reshape(S, S), bary_img.reshape(S, S, 3)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, weld_positions: bool = True) -> np.ndarray:
    """Area-weighted vertex normals; with weld_positions, vertices at the same position (UV seams) share one normal."""
    v = vertices.astype(np.float64)
    tri = v[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if weld_positions:
        from engine.mesh.simplify import unique_rows

        _, key = unique_rows(vertices)
    else:
        key = np.arange(len(v))
    acc = np.zeros((key.max() + 1, 3))
    for k in range(3):
        np.add.at(acc, key[faces[:, k]], fn)
    n = acc[key]
    ln = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.where(ln > 0, ln, 1.0)).astype(np.float32)


def edge_ring(tri_img: np.ndarray, uv: np.ndarray, faces: np.ndarray):
    """Texels just outside the charts (centre not covered, a covered 8-neighbour).

    Their colour matters: bilinear filtering at a chart's border blends them in.
    Instead of copying a neighbour's colour (plain dilation), each is placed on
    the plane of the neighbouring triangle by extrapolated barycentrics, so it
    is baked from the true surface colour just beyond the chart's edge.
    -> (rows, cols, triangle ids, barycentrics (K,3) float32, may be < 0).
    """
    from scipy.ndimage import maximum_filter

    S = tri_img.shape[0]
    nb = maximum_filter(tri_img, size=3, mode="constant", cval=-1)
    ring = (tri_img < 0) & (nb >= 0)
    rr, cc = np.nonzero(ring)
    t = nb[ring]
    P2 = uv[faces[t]].astype(np.float64) * S - 0.5
    a, b, c = P2[:, 0], P2[:, 1], P2[:, 2]
    v0, v1 = b - a, c - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) > 1e-12, den, 1.0)
    px, py = cc - a[:, 0], rr - a[:, 1]
    l1 = (px * v1[:, 1] - v1[:, 0] * py) / den
    l2 = (v0[:, 0] * py - px * v0[:, 1]) / den
    bary = np.stack([1 - l1 - l2, l1, l2], 1)
    ok = np.abs(bary).max(1) < 4.0  # sliver triangles would extrapolate wildly: leave those to dilation
    return rr[ok], cc[ok], t[ok], bary[ok].astype(np.float32)
