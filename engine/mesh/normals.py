"""Shading normals per face corner, with hard edges.

A mesh's shading normal lives on its face corners: corners that meet at a
vertex across a *smooth* edge share one normal (the corner-angle weighted
average of their faces' normals), corners separated by a *hard* edge do not.
Which edges are hard is a predicate the caller gives (a dihedral-angle
threshold, Blender's "smooth by angle", for sources that carry no normals; the
baked source normals for a simplified target, see engine.bake.frames).

Smooth groups are the connected components of the graph whose nodes are
corners and whose links join the two corners at each end of every smooth,
manifold edge (scipy's connected_components): no per-vertex fan walking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit face normals (F,3) float64, areas (F,))."""
    t = np.asarray(vertices, np.float64)[faces]
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    ln = np.linalg.norm(n, axis=1)
    return n / np.maximum(ln, 1e-300)[:, None], 0.5 * ln


def corner_angles(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Interior angle (F,3) of each triangle at each corner."""
    t = np.asarray(vertices, np.float64)[faces]
    out = np.empty((len(faces), 3))
    for k in range(3):
        a = t[:, (k + 1) % 3] - t[:, k]
        b = t[:, (k + 2) % 3] - t[:, k]
        la = np.linalg.norm(a, axis=1)
        lb = np.linalg.norm(b, axis=1)
        c = (a * b).sum(1) / np.maximum(la * lb, 1e-300)
        out[:, k] = np.arccos(np.clip(c, -1.0, 1.0))
    return out


def half_edges(faces: np.ndarray, vkey: np.ndarray | None = None):
    """Manifold edge pairs: (face a, corner k_a, face b, corner k_b) where half-edge k of a face runs from
    its corner k to corner k+1, and the two half-edges are the same edge in opposite directions.
    ``vkey`` maps vertices to position keys (welded), so UV seams do not cut the mesh apart."""
    f = np.asarray(faces, np.int64)
    key = f if vkey is None else np.asarray(vkey, np.int64)[f]
    F = len(f)
    a = key.reshape(-1)
    b = key[:, [1, 2, 0]].reshape(-1)
    hid = np.arange(3 * F)
    n = int(key.max()) + 1 if F else 1
    fwd = a * n + b
    rev = b * n + a
    order = np.argsort(fwd, kind="stable")
    sf = fwd[order]
    cnt_f = np.searchsorted(sf, fwd, "right") - np.searchsorted(sf, fwd, "left")
    lo_r = np.searchsorted(sf, rev, "left")
    cnt_r = np.searchsorted(sf, rev, "right") - lo_r
    partner = order[np.clip(lo_r, 0, max(len(sf) - 1, 0))]
    # manifold: the edge is used once in each direction; keep each pair once
    ok = (cnt_f == 1) & (cnt_r == 1) & (a != b) & (partner > hid)
    h = hid[ok]
    p = partner[ok]
    return h // 3, h % 3, p // 3, p % 3


@dataclass(frozen=True)
class EdgeTopology:
    """What ``corner_normals`` needs of a mesh whatever edges are hard: face normals, corner angles, the
    welded vertex keys and the manifold edges with their dihedral angles. A bake computes it once for its
    target and uses it twice (the texels' smooth normals, then the frame with hard edges)."""

    faces: np.ndarray  # (F,3) int64
    fn: np.ndarray  # (F,3) unit face normals
    ang: np.ndarray  # (F,3) corner angles
    vkey: np.ndarray  # (N,) position key per vertex
    fa: np.ndarray  # manifold edges, as half_edges lists them
    ka: np.ndarray
    fb: np.ndarray
    kb: np.ndarray
    dih: np.ndarray  # dihedral angle per edge, radians

    @staticmethod
    def of(vertices: np.ndarray, faces: np.ndarray, vkey: np.ndarray | None = None) -> "EdgeTopology":
        f = np.asarray(faces, np.int64)
        fn, _ = face_normals(vertices, f)
        ang = corner_angles(vertices, f)
        if vkey is None:
            from engine.mesh.simplify import unique_rows

            _, vkey = unique_rows(np.asarray(vertices))
        fa, ka, fb, kb = half_edges(f, vkey)
        dih = np.arccos(np.clip((fn[fa] * fn[fb]).sum(1), -1.0, 1.0))
        return EdgeTopology(f, fn, ang, np.asarray(vkey), fa, ka, fb, kb, dih)


def corner_normals(vertices: np.ndarray, faces: np.ndarray, hard=None, vkey: np.ndarray | None = None,
                   topology: EdgeTopology | None = None) -> np.ndarray:
    """Shading normal per face corner (F,3,3) float32.

    ``hard``: None (all smooth), a float (dihedral angle in degrees above which an edge is hard),
    or a callable (fa, fb, ka, kb, dihedral_radians) -> bool array over the manifold edges (as half_edges
    lists them: face a's half-edge ka is face b's half-edge kb reversed).
    Non-manifold and boundary edges never join corners (they are hard).
    ``topology``: ``EdgeTopology.of(vertices, faces, vkey)`` computed before (then ``vkey`` is not used).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    topo = topology if topology is not None else EdgeTopology.of(vertices, faces, vkey)
    f, fn, ang = topo.faces, topo.fn, topo.ang
    F = len(f)
    fa, ka, fb, kb, dih = topo.fa, topo.ka, topo.fb, topo.kb, topo.dih
    if hard is None:
        smooth = np.ones(len(fa), bool)
    elif callable(hard):
        smooth = ~np.asarray(hard(fa, fb, ka, kb, dih), bool)
    else:
        smooth = dih <= np.radians(float(hard))
    fa, ka, fb, kb = fa[smooth], ka[smooth], fb[smooth], kb[smooth]
    # half-edge k of face a runs corner k -> k+1; its partner in face b runs kb -> kb+1 in the other direction,
    # so corner k of a is corner kb+1 of b, and corner k+1 of a is corner kb of b
    c1a, c1b = fa * 3 + ka, fb * 3 + (kb + 1) % 3
    c2a, c2b = fa * 3 + (ka + 1) % 3, fb * 3 + kb
    rows = np.concatenate([c1a, c2a])
    cols = np.concatenate([c1b, c2b])
    g = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(3 * F, 3 * F))
    _, comp = connected_components(g, directed=False)
    w = (ang.reshape(-1, 1) * np.repeat(fn, 3, axis=0))  # corner-angle weighted face normals
    acc = np.zeros((comp.max() + 1, 3))
    np.add.at(acc, comp, w)
    n = acc[comp]
    ln = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(ln > 1e-12, n / np.maximum(ln, 1e-300), np.repeat(fn, 3, axis=0))
    return n.reshape(F, 3, 3).astype(np.float32)


def split_by_corner(faces: np.ndarray, *corner_attrs: np.ndarray, decimals: int = 6, n_vertices: int | None = None):
    """Give every vertex one value per corner attribute by duplicating vertices whose corners disagree.

    corner_attrs: arrays (F, 3, C). -> (vmap (n,) new vertex -> old vertex, new faces (F,3) int32,
    per-vertex attribute arrays (n, C) for each corner attribute). Vertices keep their order; with
    ``n_vertices``, unused vertices are kept too (attributes 0), so a mesh needing no split comes back
    with the very same vertex list.
    """
    f = np.asarray(faces, np.int64)
    F = len(f)
    cols = [f.reshape(-1, 1).astype(np.float64)]
    for a in corner_attrs:
        cols.append(np.round(np.asarray(a, np.float64).reshape(3 * F, -1), decimals))
    key = np.concatenate(cols, 1)
    vals = [np.asarray(a).reshape(3 * F, -1) for a in corner_attrs]
    src_vertex = f.reshape(-1)
    if n_vertices is not None:
        unused = np.setdiff1d(np.arange(int(n_vertices)), src_vertex)
        if len(unused):
            extra = np.zeros((len(unused), key.shape[1]))
            extra[:, 0] = unused
            key = np.concatenate([key, extra])
            vals = [np.concatenate([v, np.zeros((len(unused), v.shape[1]), v.dtype)]) for v in vals]
            src_vertex = np.concatenate([src_vertex, unused])
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)[: 3 * F]
    vmap = src_vertex[first]
    out = [v[first].astype(np.float32) for v in vals]
    return vmap, inv.reshape(F, 3).astype(np.int32), out
