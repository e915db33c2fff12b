"""Weld and simplify a triangle mesh to a target face count (fast-simplification, quadric decimation)."""

from __future__ import annotations

import numpy as np


def unique_rows(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique rows, inverse index) of an (N, 3) array; a lexsort is ~4x faster than np.unique(axis=0)."""
    v = np.asarray(v)
    if len(v) == 0:
        return v, np.zeros(0, np.int64)
    order = np.lexsort((v[:, 2], v[:, 1], v[:, 0]))
    sv = v[order]
    new = np.empty(len(v), bool)
    new[0] = True
    new[1:] = np.any(sv[1:] != sv[:-1], axis=1)
    gid = np.cumsum(new) - 1
    inv = np.empty(len(v), np.int64)
    inv[order] = gid
    return sv[new], inv


def weld(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices with identical positions (glTF splits them at UV/colour seams) and drop unused ones.

    Without this, decimation would tear the surface open along every seam.
    """
    uniq, inv = unique_rows(vertices)
    f = inv[faces]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[ok]
    used = np.unique(f)
    remap = np.full(len(uniq), -1, np.int64)
    remap[used] = np.arange(len(used))
    return np.ascontiguousarray(uniq[used], np.float32), np.ascontiguousarray(remap[f], np.int32)


def _clean(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(f, np.int64)
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[ok]
    tri = v[f]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    f = f[area > 0]
    used = np.unique(f)
    remap = np.full(len(v), -1, np.int64)
    remap[used] = np.arange(len(used))
    return np.ascontiguousarray(v[used], np.float32), np.ascontiguousarray(remap[f], np.int32)


def simplify(vertices: np.ndarray, faces: np.ndarray, target_faces: int, aggression: int = 7, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """-> (vertices float32, faces int32) with at most ~target_faces triangles (<= 1.05x)."""
    import fast_simplification

    v, f = weld(vertices, faces)
    if progress is not None:
        progress.update(0.1, "welded")
    if len(f) <= target_faces:
        return v, f
    cur_v, cur_f = v.astype(np.float64), f
    for _ in range(4):
        reduction = 1.0 - target_faces / len(cur_f)
        nv, nf = fast_simplification.simplify(cur_v, cur_f, target_reduction=float(np.clip(reduction, 0.0, 0.999999)), agg=aggression)
        cur_v, cur_f = _clean(np.asarray(nv, np.float64), np.asarray(nf))
        if progress is not None:
            progress.update(0.9, f"{len(cur_f)} faces")
        if len(cur_f) <= target_faces * 1.05 or len(cur_f) < 8:
            break
    return np.ascontiguousarray(cur_v, np.float32), np.ascontiguousarray(cur_f, np.int32)


def is_closed(faces: np.ndarray) -> bool:
    """Every edge shared by exactly two faces (a closed, manifold surface)."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1).astype(np.int64)
    key = e[:, 0] * (int(e.max()) + 1) + e[:, 1]
    _, counts = np.unique(key, return_counts=True)
    return bool(np.all(counts == 2))


def orient_outward(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, bool]:
    """Flip the winding of a closed mesh whose normals point inward (negative signed volume).

    The CUDA bake trusts normals to face the cameras that see a texel, and
    viewers cull back faces; open surfaces are left as they are (every
    orientation of them is seen from some bake view).
    """
    if len(faces) == 0 or not is_closed(faces):
        return faces, False
    t = vertices[faces].astype(np.float64)
    vol = np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0
    if vol < 0:
        return np.ascontiguousarray(faces[:, [0, 2, 1]]), True
    return faces, False
