"""UV-space rasterisation on the CPU: which triangle covers each texel centre.

Texel (row r, col c) has its centre at uv = ((c + .5) / S, (r + .5) / S).
Vectorised over triangle chunks: candidate texels from each triangle's
bounding box, kept where all barycentrics are >= 0. Later triangles win ties
(charts never overlap after xatlas packing, so ties are only shared edges).
"""

from __future__ import annotations

import numpy as np


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int, chunk_texels: int = 4_000_000, counts: bool = False):
    """-> (tri (S,S) int32, -1 where uncovered; bary (S,S,3) float32) [, faces covering each texel (S,S)]."""
    S = int(size)
    cnt_img = np.zeros(S * S, np.int32) if counts else None
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
            if counts:
                np.add.at(cnt_img, pix, 1)
            tri_img[pix] = t[inside]
            bary_img[pix] = np.stack([l0, l1, l2], 1)[inside]
        start = end
    if counts:
        return tri_img.reshape(S, S), bary_img.reshape(S, S, 3), cnt_img.reshape(S, S)
    return tri_img.reshape(S, S), bary_img.reshape(S, S, 3)


def uv_overlap_fraction(uv: np.ndarray, faces: np.ndarray, size: int = 1024) -> float:
    """Share of the covered texel centres that more than one face covers (overlapping / mirrored UVs).
    A texel centre exactly on an edge shared by two faces counts for both, so this is an upper bound;
    such centres are rare (a warning needs more than 0.1 %)."""
    _, _, cnt = rasterize_uv(np.asarray(uv, np.float64), np.asarray(faces, np.int64), size, counts=True)
    used = int((cnt > 0).sum())
    return float((cnt > 1).sum()) / used if used else 0.0


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


class TexelSet:
    """The texels a bake fills, on a torch device: which target face covers each and where (barycentrics).

    ``mask`` (S,S) bool marks them; ``face`` (T,) and ``bary`` (T,3) list them in row-major order of the
    mask. They include the ring just outside each chart (extrapolated barycentrics, see ``edge_ring``).
    Any per-vertex (N,C) or per-corner (F,3,C) attribute of the target is interpolated with ``interp``.
    """

    def __init__(self, mask, face, bary, faces, inside: int):
        self.mask = mask
        self.face = face
        self.bary = bary
        self.faces = faces  # (F,3) long, on the same device
        self.inside = int(inside)

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def __len__(self) -> int:
        return int(self.face.shape[0])

    def interp(self, attr):
        import torch

        a = torch.as_tensor(attr, device=self.face.device, dtype=torch.float32)
        if a.dim() == 3:
            return (self.bary[..., None] * a[self.face]).sum(1)
        return (self.bary[..., None] * a[self.faces[self.face]]).sum(1)

    def scatter(self, values, fill):
        """(T,C) values -> (S,S,C) image holding ``fill`` elsewhere."""
        import torch

        S = self.size
        img = torch.empty((S, S, values.shape[1]), device=values.device, dtype=values.dtype)
        img[:] = torch.as_tensor(fill, device=values.device, dtype=values.dtype)
        img[self.mask] = values
        return img


def texels_cpu(uv: np.ndarray, faces: np.ndarray, size: int, device="cpu") -> TexelSet:
    import torch

    tri, bary = rasterize_uv(uv, faces, size)
    inside = int((tri >= 0).sum())
    rr, cc, rt, rb = edge_ring(tri, uv, faces)
    tri[rr, cc] = rt
    bary[rr, cc] = rb
    mask = tri >= 0
    return TexelSet(
        torch.as_tensor(mask, device=device),
        torch.as_tensor(tri[mask].astype(np.int64), device=device),
        torch.as_tensor(bary[mask], device=device),
        torch.as_tensor(np.asarray(faces, np.int64), device=device),
        inside,
    )
