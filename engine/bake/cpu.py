"""CPU bake backend: Embree rays from the target surface to the source.

For every texel covered by the target in UV space we know its 3D position p
and shading normal n. Like Blender's "selected to active" bake we cast rays
from p along +n and along -n up to a cage distance and take the nearest hit
(with a cage mesh: one ray from the cage point through p, as Cycles does);
texels whose rays miss are retried with a 4x cage, then left uncovered for
the fill stage. The hit (source face + barycentrics) goes to the channels.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from engine.backend import Backend
from engine.bake.texel import texels_cpu

RAY_BATCH = 262_144


def _scene(src):
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(scene, np.ascontiguousarray(src.vertices[src.faces], np.float32))
    return scene


def scene_for(src):
    """The Embree scene of ``src``, built once per mesh object."""
    cache = src.__dict__.setdefault("_embree", {})
    if "scene" not in cache:
        cache["scene"] = _scene(src)
    return cache["scene"]


def cast(scene, origins: np.ndarray, dirs: np.ndarray, dist: float | np.ndarray):
    """First hits: (prim (K,) int32 -1 on miss, bary (K,3) f32, t (K,) f32)."""
    d = np.full(len(origins), dist, np.float32) if np.isscalar(dist) else np.asarray(dist, np.float32)
    r = scene.run(np.ascontiguousarray(origins, np.float32), np.ascontiguousarray(dirs, np.float32), dists=d, output=1)
    u = r["u"].astype(np.float32)
    v = r["v"].astype(np.float32)
    bary = np.stack([1.0 - u - v, u, v], 1)
    return r["primID"].astype(np.int32), bary, r["tfar"].astype(np.float32)


def find_hits(scene, p: np.ndarray, n: np.ndarray, cage: float, origins: np.ndarray | None = None):
    """Nearest source hit along +-n within ``cage`` of points p (or from cage ``origins`` through p).

    -> (prim (K,) int32, -1 on miss; bary (K,3) float32)."""
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
    # start slightly behind the surface so a source lying exactly on it is found by both casts
    pa, ba, ta = cast(scene, p - n * eps, n, cage + eps)
    pb, bb, tb = cast(scene, p + n * eps, -n, cage + eps)
    ta = np.where(pa >= 0, ta, np.inf)
    tb = np.where(pb >= 0, tb, np.inf)
    use_b = tb < ta
    return np.where(use_b, pb, pa), np.where(use_b[:, None], bb, ba)


def transfer(scene, src, p, n, cage, progress=None, p_lo=0.0, p_hi=1.0, sample=None, origins=None):
    """Values of ``sample(face, bary)`` (default: the base colour, sRGB RGB) at the nearest hits of points p.

    -> (values (K,C) float32 numpy, hit mask (K,))."""
    if sample is None:
        from engine.bake.channels import channel_class
        from engine.bake.surface import surface_for

        base = channel_class("base")(surface_for(src, "cpu"))
        sample = lambda f, b: base.sample(f, b)[:, :3]  # noqa: E731
    K = len(p)
    out = None
    hit = np.zeros(K, bool)
    for s in range(0, K, RAY_BATCH):
        e = min(K, s + RAY_BATCH)
        prim, bary = find_hits(scene, p[s:e], n[s:e], cage, None if origins is None else origins[s:e])
        ok = prim >= 0
        if ok.any():
            with torch.no_grad():
                vals = sample(torch.as_tensor(prim[ok].astype(np.int64)), torch.as_tensor(bary[ok]))
            vals = vals.numpy() if torch.is_tensor(vals) else np.asarray(vals)
            if out is None:
                out = np.zeros((K, vals.shape[1]), np.float32)
            out[s:e][ok] = vals
        hit[s:e] = ok
        if progress is not None:
            progress.update(p_lo + (p_hi - p_lo) * e / K, f"{e}/{K} texels")
    if out is None:
        with torch.no_grad():
            c = sample(torch.zeros(1, dtype=torch.long), torch.full((1, 3), 1 / 3))
        out = np.zeros((K, c.shape[1]), np.float32)
    return out, hit


class CpuBackend(Backend):
    name = "cpu"
    renderer_name = "embree"
    device = "cpu"
    licence_note = "Embree (Apache-2.0): commercial use is fine"

    def texels(self, uv, faces, size):
        return texels_cpu(uv, faces, size, "cpu")

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
