"""CPU bake backend: Embree rays from the target surface to the source.

For every texel covered by the target in UV space we know its 3D position p
and shading normal n. Like Blender's "selected to active" bake we look for
the source along +n and along -n up to a cage distance and take the nearest
hit (with a cage mesh: one ray from the cage point through p, as Cycles does);
texels whose rays miss are retried with a 4x cage, then left uncovered for
the fill stage. The hit (source face + barycentrics) goes to the channels.

The nearest hit takes one ray where the source lies inside the target and a
second, short one where it lies outside (``find_hits``): ~1.6 rays per texel
instead of two. Embree and torch's kernels release the GIL, so batches of
texels (rays, then the channels at their hits) run on all cores.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from engine.backend import Backend
from engine.bake.texel import texels_cpu

RAY_BATCH = 262_144
_THREAD_RAYS = 65_536  # rays per task of the thread pool


def _scene(src):
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    scene = rtcore_scene.EmbreeScene()
    # indexed (the vertex soup of every face took twice as long to hand over); prim ids are face indices
    TriangleMesh(scene, np.ascontiguousarray(src.vertices, np.float32), np.ascontiguousarray(src.faces, np.int32))
    z = np.zeros((1, 3), np.float32)
    scene.run(z, z + np.float32([0, 0, 1]), dists=np.ones(1, np.float32))  # commit now: threads then share it read-only
    return scene


def scene_for(src):
    """The Embree scene of ``src``, built once per mesh object (or taken from ``prepare_scene``'s build)."""
    cache = src.__dict__.setdefault("_embree", {})
    if "scene" not in cache:
        pending = cache.pop("pending", None)
        cache["scene"] = pending.result() if pending is not None else _scene(src)
    return cache["scene"]


def prepare_scene(src, before=None) -> None:
    """Start building the Embree scene of ``src`` on a background thread (``scene_for`` waits for it),
    after ``before()`` when given (on the same thread: the bake's sampling starts once the scene is there).

    The pipeline calls this as the UV unwrap starts: xatlas leaves the second core mostly idle, so the
    build (~0.7 s for 327,680 faces, mostly holding the GIL) costs the unwrap ~0.25 s and the bake none."""
    cache = src.__dict__.setdefault("_embree", {})
    if "scene" not in cache and "pending" not in cache:

        def build():
            if before is not None:
                try:
                    before()
                except Exception:  # noqa: BLE001 -- only a head start: the bake redoes it and reports
                    pass
            return _scene(src)

        from engine.bake.threads import background

        cache["pending"] = background().submit(build)


_POOL = None


def _workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, min(8, os.cpu_count() or 1))


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(_workers(), thread_name_prefix="kiln-rays")
    return _POOL


_BATCHES = None


def _after_fork() -> None:  # a forked child has none of the parent's pool threads: start new pools there
    global _POOL, _BATCHES
    _POOL = _BATCHES = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _batches():
    global _BATCHES
    if _BATCHES is None:
        from concurrent.futures import ThreadPoolExecutor

        _BATCHES = ThreadPoolExecutor(_workers(), thread_name_prefix="kiln-bake-batches")
    return _BATCHES


def cast(scene, origins: np.ndarray, dirs: np.ndarray, dist: float | np.ndarray):
    """First hits: (prim (K,) int32 -1 on miss, bary (K,3) f32, t (K,) f32). Large batches run on all cores."""
    o = np.ascontiguousarray(origins, np.float32)
    dv = np.ascontiguousarray(dirs, np.float32)
    d = np.full(len(o), dist, np.float32) if np.isscalar(dist) else np.ascontiguousarray(dist, np.float32)
    K = len(o)
    prim = np.empty(K, np.int32)
    u = np.empty(K, np.float32)
    v = np.empty(K, np.float32)
    t = np.empty(K, np.float32)

    def run(a, b):
        r = scene.run(o[a:b], dv[a:b], dists=d[a:b], output=1)
        prim[a:b], u[a:b], v[a:b], t[a:b] = r["primID"], r["u"], r["v"], r["tfar"]

    if K >= 2 * _THREAD_RAYS and _workers() > 1:
        list(_pool().map(lambda a: run(a, min(K, a + _THREAD_RAYS)), range(0, K, _THREAD_RAYS)))
    else:
        run(0, K)
    bary = np.empty((K, 3), np.float32)
    np.subtract(1.0, u, out=bary[:, 0])
    bary[:, 0] -= v
    bary[:, 1] = u
    bary[:, 2] = v
    return prim, bary, t


def _find_hits_two_casts(scene, p, n, cage):
    """The nearest hit along +-n by one ray each way (the reference rule of ``find_hits``)."""
    eps = cage * 1e-3
    # start slightly behind the surface so a source lying exactly on it is found by both casts
    pa, ba, ta = cast(scene, p - n * eps, n, cage + eps)
    pb, bb, tb = cast(scene, p + n * eps, -n, cage + eps)
    ta = np.where(pa >= 0, ta, np.inf)
    tb = np.where(pb >= 0, tb, np.inf)
    use_b = tb < ta
    return np.where(use_b, pb, pa), np.where(use_b[:, None], bb, ba)


def find_hits(scene, p: np.ndarray, n: np.ndarray, cage: float, origins: np.ndarray | None = None):
    """Nearest source hit along +-n within ``cage`` of points p (or from cage ``origins`` through p).

    -> (prim (K,) int32, -1 on miss; bary (K,3) float32).

    The rule of ``_find_hits_two_casts`` (a ray each way from p, the nearer hit; within eps = cage/1000 of p
    both rays see a hit and the inward one wins unless it lies beyond p by more than the outward one) with
    fewer rays. With s the signed distance of a hit along n:
      1. one ray from p + cage n inward over 2 cage: the outermost hit s1; s1 <= -eps: it is the nearest.
      2. s1 > eps: a ray from p - s1 n outward over 2 s1: the innermost hit s2 within |s| <= s1; s2 >= 0:
         it is the nearest (nothing lies inside p within s1); s2 < 0 (hits on both sides): both rays of the
         reference rule (rare: thin parts).
         -eps < s1 <= eps: a ray from p - eps n outward up to s1 gives the outward ray's hit s2, the
         inward one's is s1: s1 unless s2 is nearer (-s1 >= s2), as the reference decides.
      3. no hit: both rays of the reference rule (a ray through a vertex or an edge may slip through).
    """
    eps = cage * 1e-3
    if origins is not None:
        d = p - origins
        ln = np.linalg.norm(d, axis=1, keepdims=True)
        use = ln[:, 0] > 1e-9
        d = np.where(use[:, None], d / np.maximum(ln, 1e-30), -n)
        o = np.where(use[:, None], origins, p + n * cage)
        dist = np.where(use, ln[:, 0] + cage, 2 * cage)
        prim, bary, _ = cast(scene, o - d * eps, d, dist + eps)
        return prim, bary
    prim, bary, t = cast(scene, p + n * cage, -n, 2 * cage)
    s1 = cage - t
    i = np.nonzero((prim >= 0) & (s1 > -eps))[0]
    if len(i):
        si = s1[i]
        m = np.maximum(si, eps)
        ni = n[i]
        p2, b2, t2 = cast(scene, p[i] - ni * m[:, None], ni, m + si + eps * 1e-3)
        s2 = t2 - m
        ok = p2 >= 0
        wide = si > eps
        take = ok & np.where(wide, s2 >= 0, -si >= s2)
        prim[i[take]] = p2[take]
        bary[i[take]] = b2[take]
        both = i[ok & wide & (s2 < 0)]
        if len(both):
            prim[both], bary[both] = _find_hits_two_casts(scene, p[both], n[both], cage)
    miss = np.nonzero(prim < 0)[0]
    if len(miss):  # a ray through a vertex or an edge may slip through: the reference's two get their chance
        prim[miss], bary[miss] = _find_hits_two_casts(scene, p[miss], n[miss], cage)
    return prim, bary


def transfer(scene, src, p, n, cage, progress=None, p_lo=0.0, p_hi=1.0, sample=None, origins=None):
    """Values of ``sample(face, bary)`` (default: the base colour, sRGB RGB) at the nearest hits of points p.

    -> (values (K,C) float32 numpy, hit mask (K,))."""
    if sample is None:
        from engine.bake.channels import channel_class
        from engine.bake.surface import surface_for

        base = channel_class("base")(surface_for(src, "cpu"))
        sample = lambda f, b: base.sample(f, b)[:, :3]  # noqa: E731
    from engine.bake.threads import single_thread

    K = len(p)
    hit = np.zeros(K, bool)
    with torch.no_grad():  # one hit first: the channels' lazy tables are made here, not by two threads at once
        c = sample(torch.zeros(1, dtype=torch.long), torch.full((1, 3), 1 / 3))
    out = np.zeros((K, c.shape[1]), np.float32)

    def work(s, e):  # rays, then the channels at the hits, of one batch (batches on all cores)
        prim, bary = find_hits(scene, p[s:e], n[s:e], cage, None if origins is None else origins[s:e])
        ok = prim >= 0
        if ok.any():
            every = bool(ok.all())
            with torch.no_grad():
                vals = sample(torch.as_tensor((prim if every else prim[ok]).astype(np.int64)), torch.as_tensor(bary if every else bary[ok]))
            vals = vals.numpy() if torch.is_tensor(vals) else np.asarray(vals)
            if every:
                out[s:e] = vals
            else:
                out[s:e][ok] = vals
        hit[s:e] = ok

    chunks = [(s, min(K, s + RAY_BATCH)) for s in range(0, K, RAY_BATCH)]
    with single_thread():  # torch's ops one thread each: the batches are the parallel work
        futures = [_batches().submit(work, s, e) for s, e in chunks]
        try:
            for (s, e), f in zip(chunks, futures):
                f.result()
                if progress is not None:
                    progress.update(p_lo + (p_hi - p_lo) * e / K, f"{e}/{K} texels")
        finally:
            for f in futures:
                f.cancel()
            for f in futures:
                if not f.cancelled():
                    f.exception()  # wait: no batch outlives the call (nor the one-thread setting)
    return out, hit


class CpuBackend(Backend):
    name = "cpu"
    renderer_name = "embree"
    device = "cpu"
    licence_note = "Embree (Apache-2.0): commercial use is fine"

    def texels(self, uv, faces, size):
        return texels_cpu(uv, faces, size, "cpu")

    def prepare(self, src, options) -> None:
        """Work for the bake of ``src`` that can start while the pipeline is still busy: its ray scene, and
        the shading normals of a source without normals (what the ``normal`` channel samples; 0.25 s for
        327,680 faces). It starts as the unwrap does (not ``prepare_beside_simplify``): begun before
        simplify on the 2-core machine (2026-12-05, 327,680 -> 20,000 faces at 1024^2), it held the GIL
        against simplify's threads -- simplify 0.34 -> 1.0 s, the whole bake 6.66 -> 7.05 s."""
        from engine.bake.surface import surface_for

        surface = surface_for(src, "cpu")
        before = None
        if src.normals is None:
            from engine.bake.channels.normal import source_corner_normals

            def before():
                surface.tensor("corner_normals", lambda: source_corner_normals(src, surface.device))

        prepare_scene(src, before)

    def gather(self, surface, sample, P, N, tol, options, progress, origins=None):
        t0 = time.perf_counter()
        src = surface.src
        scene = scene_for(src)
        p = P.cpu().numpy().astype(np.float32)
        n = N.cpu().numpy().astype(np.float32)
        o = None if origins is None else origins.cpu().numpy().astype(np.float32)
        vals, hit = transfer(scene, src, p, n, tol, progress, 0.0, 0.9, sample=sample, origins=o)
        retried = 0
        if (~hit).any():
            miss = np.nonzero(~hit)[0]
            retried = len(miss)
            v2, h2 = transfer(scene, src, p[miss], n[miss], tol * 4.0, sample=sample, origins=None if o is None else o[miss])
            vals[miss[h2]] = v2[h2]
            hit[miss[h2]] = True
        progress.update(1.0)
        info = {
            "method": "cpu-embree-raycast" + ("-cage-mesh" if o is not None else ""),
            "texels_hit": int(hit.sum()),
            "texels_retried": int(retried),
            "cage": float(tol),
            "seconds": round(time.perf_counter() - t0, 4),
        }
        return torch.as_tensor(vals), torch.as_tensor(hit), info

    def render_pairs(self, src, res, cams, progress=None):
        from engine.render.cpu import CpuRenderer

        ra, rb = CpuRenderer(src), CpuRenderer(res)
        pairs = []
        for i, cam in enumerate(cams):
            ca, ma, _ = ra.render(cam)
            cb, mb, _ = rb.render(cam)
            pairs.append((ca, ma, cb, mb))
            if progress is not None:
                progress.update((i + 1) / len(cams), f"view {i + 1}/{len(cams)}")
        return pairs
