"""A CPU stand-in for the part of ``nvdiffrast.torch`` that Kiln's CUDA bake uses (rasterize, interpolate).

It lets the whole CUDA backend (engine.bake.cuda: texel raster, exact gather, view fit, the source
views it prepares while the pipeline simplifies and unwraps) run in torch on the CPU in tests, where
no GPU is. It answers the same questions as nvdiffrast, computed another way:

* ``rasterize``: each view's clip-space triangles are taken to normalised device coordinates (a
  projective map: triangles stay triangles when every corner has w > 0) and hit there by Embree with
  rays along +z through the pixel centres, from z = -1 to z = 1 (nvdiffrast's depth range). The
  nearest hit is the visible triangle; its screen-space barycentrics b are made perspective-correct as
  nvdiffrast's are (b_i / w_i, normalised). Output layout as nvdiffrast's: (u, v, z/w, triangle id + 1)
  with u, v the weights of corners 0 and 1; row 0 at y = -1.
* ``interpolate``: those weights applied to a per-vertex attribute.

Edge and tie rules differ from nvdiffrast's on pixels exactly on an edge; nothing else should. Not for
triangles crossing the camera plane (nvdiffrast clips them; here they are left out).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch


class RasterizeCudaContext:
    def __init__(self, device=None):
        self.device = device


def _one_view(pos: np.ndarray, tri: np.ndarray, H: int, W: int) -> np.ndarray:
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    out = np.zeros((H, W, 4), np.float32)
    w = pos[:, 3]
    ok = (w[tri] > 1e-12).all(1)
    if not ok.any():
        return out
    ndc = pos[:, :3] / np.where(np.abs(w) > 1e-12, w, 1.0)[:, None]
    ids = np.flatnonzero(ok)
    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(scene, np.ascontiguousarray(ndc[tri[ids]], np.float32))
    y, x = np.meshgrid((np.arange(H) + 0.5) / H * 2 - 1, (np.arange(W) + 0.5) / W * 2 - 1, indexing="ij")
    o = np.stack([x.ravel(), y.ravel(), np.full(H * W, -1.0)], 1).astype(np.float32)
    d = np.tile(np.array([[0.0, 0.0, 1.0]], np.float32), (H * W, 1))
    r = scene.run(o, d, dists=np.full(H * W, 2.0, np.float32), output=1)
    prim = r["primID"].astype(np.int64)
    hit = prim >= 0
    t = ids[prim[hit]]
    su, sv = r["u"][hit].astype(np.float64), r["v"][hit].astype(np.float64)  # embree: weights of corners 1, 2
    beta = np.stack([1 - su - sv, su, sv], 1)
    pw = beta / w[tri[t]]
    b = pw / pw.sum(1, keepdims=True)
    flat = out.reshape(-1, 4)
    flat[hit, 0] = b[:, 0]
    flat[hit, 1] = b[:, 1]
    flat[hit, 2] = -1.0 + r["tfar"][hit]
    flat[hit, 3] = t + 1
    return out


def rasterize(glctx, pos, tri, resolution, ranges=None, grad_db=True):
    if ranges is not None:
        raise NotImplementedError("the stand-in takes (minibatch, N, 4) positions")
    if pos.dtype != torch.float32 or tri.dtype != torch.int32:
        raise ValueError("nvdiffrast takes float32 positions and int32 triangles")  # as the real one does
    H, W = int(resolution[0]), int(resolution[1])
    p = pos.detach().cpu().numpy()
    f = tri.detach().cpu().numpy().astype(np.int64)
    views = [_one_view(p[i].astype(np.float64), f, H, W) for i in range(p.shape[0])]
    rast = torch.as_tensor(np.stack(views)).to(pos.device)
    return rast, torch.zeros_like(rast)


def interpolate(attr, rast, tri, rast_db=None, diff_attrs=None):
    t = rast[..., 3].long() - 1
    m = t >= 0
    a = attr if attr.dim() == 3 else attr[None].expand(rast.shape[0], -1, -1)
    out = torch.zeros(rast.shape[:3] + (a.shape[-1],), dtype=attr.dtype, device=attr.device)
    tl = tri.long()
    for i in range(rast.shape[0]):
        mi = m[i]
        if not bool(mi.any()):
            continue
        corners = a[i][tl[t[i][mi]]]  # (K,3,C)
        u, v = rast[i][mi][:, 0:1], rast[i][mi][:, 1:2]
        out[i][mi] = u * corners[:, 0] + v * corners[:, 1] + (1 - u - v) * corners[:, 2]
    return out, torch.zeros(rast.shape[:3] + (0,), device=attr.device)


def install(monkeypatch) -> types.ModuleType:
    """Make ``import nvdiffrast.torch`` give this stand-in for the test (monkeypatch undoes it)."""
    pkg = types.ModuleType("nvdiffrast")
    mod = types.ModuleType("nvdiffrast.torch")
    mod.RasterizeCudaContext = RasterizeCudaContext
    mod.rasterize = rasterize
    mod.interpolate = interpolate
    pkg.torch = mod
    pkg.__version__ = "cpu-stand-in"
    monkeypatch.setitem(sys.modules, "nvdiffrast", pkg)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", mod)
    import engine.render.nvdr as nvdr

    monkeypatch.setattr(nvdr, "_CTX", {})
    return mod
