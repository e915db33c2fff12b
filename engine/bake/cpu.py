"""CPU bake backend: Embree rays from the target surface to the source.

For every texel covered by the low-poly mesh in UV space we know its 3D
position p and (smooth) normal n. Like Blender's "selected to active" bake we
cast rays from p along +n and along -n up to a cage distance and take the
source colour at the nearest hit; texels whose rays miss are retried with a
4x cage, then left uncovered for the dilation stage to fill.
"""

from __future__ import annotations

import time

import numpy as np

from engine.bake.texel import edge_ring, rasterize_uv, vertex_normals
from engine.mesh.source import shade

RAY_BATCH = 262_144


def _scene(src):
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(scene, np.ascontiguousarray(src.vertices[src.faces], np.float32))
    return scene


def cast(scene, origins: np.ndarray, dirs: np.ndarray, dist: float | np.ndarray):
    """First hits: (prim (K,) int32 -1 on miss, bary (K,3) f32, t (K,) f32)."""
    d = np.full(len(origins), dist, np.float32) if np.isscalar(dist) else np.asarray(dist, np.float32)
    r = scene.run(np.ascontiguousarray(origins, np.float32), np.ascontiguousarray(dirs, np.float32), dists=d, output=1)
    u = r["u"].astype(np.float32)
    v = r["v"].astype(np.float32)
    bary = np.stack([1.0 - u - v, u, v], 1)
    return r["primID"].astype(np.int32), bary, r["tfar"].astype(np.float32)


def transfer(scene, src, p: np.ndarray, n: np.ndarray, cage: float, progress=None, p_lo=0.0, p_hi=1.0):
    """Nearest source hit along +-n within cage for points p -> (colours (K,3), hit mask (K,))."""
    K = len(p)
    cols = np.zeros((K, 3), np.float32)
    hit = np.zeros(K, bool)
    for s in range(0, K, RAY_BATCH):
        e = min(K, s + RAY_BATCH)
        pp, nn = p[s:e], n[s:e]
        # start slightly behind the surface so a source lying exactly on it is found by both casts
        eps = cage * 1e-3
        pa, ba, ta = cast(scene, pp - nn * eps, nn, cage + eps)
        pb, bb, tb = cast(scene, pp + nn * eps, -nn, cage + eps)
        ta = np.where(pa >= 0, ta, np.inf)
        tb = np.where(pb >= 0, tb, np.inf)
        use_b = tb < ta
        prim = np.where(use_b, pb, pa)
        bary = np.where(use_b[:, None], bb, ba)
        ok = prim >= 0
        if ok.any():
            cols[s:e][ok] = shade(src, prim[ok], bary[ok])
        hit[s:e] = ok
        if progress is not None:
            progress.update(p_lo + (p_hi - p_lo) * e / K, f"{e}/{K} texels")
    return cols, hit


def bake_cpu(src, vertices, faces, uv, options, progress):
    t0 = time.perf_counter()
    S = options.texture_size
    tri, bary = rasterize_uv(uv, faces, S)
    rr, cc, rt, rb = edge_ring(tri, uv, faces)
    inside = tri >= 0
    tri[rr, cc] = rt
    bary[rr, cc] = rb
    mask = tri >= 0
    ti = tri[mask]
    b = bary[mask]
    fv = faces[ti]
    p = np.einsum("kj,kjc->kc", b, vertices[fv].astype(np.float32))
    vn = vertex_normals(vertices, faces)
    n = np.einsum("kj,kjc->kc", b, vn[fv])
    nl = np.linalg.norm(n, axis=1, keepdims=True)
    # fall back to the face normal where smooth normals cancel out
    tr = vertices[fv].astype(np.float64)
    fnrm = np.cross(tr[:, 1] - tr[:, 0], tr[:, 2] - tr[:, 0])
    fnrm /= np.maximum(np.linalg.norm(fnrm, axis=1, keepdims=True), 1e-30)
    n = np.where(nl > 1e-6, n / np.maximum(nl, 1e-30), fnrm).astype(np.float32)
    t_raster = time.perf_counter() - t0
    progress.update(0.05, f"{len(p)} texels")

    scene = _scene(src)
    diag = float(np.linalg.norm(src.vertices.max(0) - src.vertices.min(0)))
    cage = float(options.cage) * diag
    cols, hit = transfer(scene, src, p, n, cage, progress, 0.05, 0.9)
    retried = 0
    if (~hit).any():
        miss = np.nonzero(~hit)[0]
        retried = len(miss)
        c2, h2 = transfer(scene, src, p[miss], n[miss], cage * 4.0)
        cols[miss[h2]] = c2[h2]
        hit[miss[h2]] = True
    progress.update(1.0)
    tex = np.zeros((S, S, 3), np.float32)
    cov = np.zeros((S, S), bool)
    rr, cc = np.nonzero(mask)
    tex[rr[hit], cc[hit]] = cols[hit]
    cov[rr[hit], cc[hit]] = True
    info = {
        "method": "cpu-embree-raycast",
        "texels_in_charts": int(inside.sum()),
        "texels_edge_ring": int(len(rr)),
        "texels_hit": int(hit.sum()),
        "texels_retried": int(retried),
        "cage": cage,
        "raster_seconds": round(t_raster, 4),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return tex, cov, info
