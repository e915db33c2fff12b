"""CUDA bake backend: texel-space gather from rendered views (nvdiffrast).

1. Rasterise the low-poly target in UV space once: every covered texel gets
   its 3D position p and smooth normal n.
2. Render the source from ``views`` cameras on the bounding sphere, in chunks
   (GPU memory stays bounded): colour and camera-space depth per pixel. A
   mesh source is rasterised by nvdiffrast; a splat source is rendered by
   gsplat (engine.splat) through the same ``view_renderer`` interface.
3. Project every texel into each view; it takes that view's colour when the
   source surface seen at that pixel lies within the cage distance of the
   texel (depth test -- rejects occluders), the pixel is inside the source's
   silhouette, and the texel faces the camera. Views are blended with weight
   cos(angle)^k, so head-on views dominate and grazing ones barely count.
No optimisation loop: one pass, so a bake takes a fraction of a second.

For mesh sources the view only says which source triangle is in front; the
hit on it goes to the bake channels (engine.bake.channels), which sample
every material attribute exactly there (``gather_exact``). ``CudaBackend``
is the strategy object engine.backend.resolve returns for ``cuda``.

What needs only the source starts before the target exists (``CudaBackend.prepare``, called by
the pipeline before simplify, run on engine.bake.threads.background while simplify and the
unwrap keep the CPU busy): the upload, the source's shading normals, and its rasters and camera
depths in the bake views (``PreparedViews``, up to ``AHEAD_BUDGET`` bytes, at most a quarter of
the free GPU memory; views beyond that are rasterised in the gather as before).

The texel gather takes every 2nd bake view (``TEXEL_VIEW_STRIDE``, while that leaves >= 50), then the
other views for the texels those missed only; the view fit (base colour, ORM) takes every view.
Measured with the CPU stand-in for nvdiffrast (tests/fake_nvdiffrast.py, which reproduces the H200's
figures: 40.549 vs 40.555 dB), 2026-12-05: the benchmark's 327,680 -> 16,000 faces at 1024^2, 100
views: held-out PSNR 40.549 dB linear with every view, 40.549 with every 2nd, 40.547 with every 4th
(25 views; 50 views for the view fit too: 40.526); normal maps against the CPU backend's rays along
the normal, mean angle, 4,000 faces at 512^2: bunny 1.26 deg -> 1.34 (2nd) -> 1.44 (4th), Duck 0.42
-> 0.43 -> 0.51. The gather's work is proportional to its views.
nvdiffrast is under NVIDIA's non-commercial Source Code License: the ``cpu``
backend is the commercial-safe choice.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from engine.backend import Backend
from engine.bake.texel import TexelSet, vertex_normals
from engine.render.cameras import BAKE_OFFSET, bounding_sphere, sphere_cameras
from engine.render.nvdr import GpuMesh, _f32, _i32, cams_to_tensors, rasterize

COS_POWER = 4.0  # view weight cos(angle)^4; 8 and 16 measured no better on the benchmark
TEXEL_VIEW_STRIDE = 2  # the texel gather takes every 2nd bake view (the others: only texels those miss) ...
TEXEL_VIEWS_MIN = 50  # ... when that leaves at least this many; the view fit takes them all (module doc)


def texels_cuda(uv, faces, S, device) -> TexelSet:
    """The target rasterised in UV space by nvdiffrast, plus the ring of texels just outside each chart
    (extrapolated barycentrics on the neighbouring triangle's plane, see engine.bake.texel.edge_ring)."""
    uvt = _f32(uv, device)
    clip = torch.cat([uvt * 2 - 1, torch.zeros_like(uvt[:, :1]), torch.ones_like(uvt[:, :1])], 1)[None].contiguous()
    tri = _i32(faces, device)
    rast = rasterize(device, clip, tri, S)
    r = rast[0]
    ids = r[..., 3]
    inside = ids > 0
    face = torch.full((S, S), -1, dtype=torch.long, device=device)
    bary = torch.zeros((S, S, 3), device=device)
    face[inside] = ids[inside].long() - 1
    u, v = r[..., 0], r[..., 1]
    bary[inside] = torch.stack([u, v, 1 - u - v], -1)[inside]  # nvdiffrast: (u, v) weigh corners 0 and 1
    nb = torch.nn.functional.max_pool2d(ids[None, None], 3, stride=1, padding=1)[0, 0]
    ring = (~inside) & (nb > 0)
    rr, cc = torch.nonzero(ring, as_tuple=True)
    t = nb[rr, cc].long() - 1
    fl = tri.long()[t]
    P2 = uvt[fl] * S - 0.5
    a, b, c = P2[:, 0], P2[:, 1], P2[:, 2]
    v0, v1 = b - a, c - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = torch.where(den.abs() > 1e-12, den, torch.ones_like(den))
    px, py = cc.float() - a[:, 0], rr.float() - a[:, 1]
    l1 = (px * v1[:, 1] - v1[:, 0] * py) / den
    l2 = (v0[:, 0] * py - px * v0[:, 1]) / den
    rb = torch.stack([1 - l1 - l2, l1, l2], 1)
    ok = rb.abs().amax(1) < 4.0
    face[rr[ok], cc[ok]] = t[ok]
    bary[rr[ok], cc[ok]] = rb[ok]
    mask = face >= 0
    return TexelSet(mask, face[mask], bary[mask], tri.long(), int(inside.sum()))


def texel_geometry(vertices, faces, uv, S, device):
    """-> (mask (S,S) bool, positions (T,3), unit smooth normals (T,3)) of covered texels, on device."""
    ts = texels_cuda(uv, faces, S, device)
    P = ts.interp(np.asarray(vertices, np.float32))
    N = ts.interp(vertex_normals(vertices, faces))
    return ts.mask, P, N / N.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


MEM_BUDGET = 1.5e9  # bytes of GPU memory a texel block's tensors may take; the least a chunk of views may take
CHUNK_BUDGET_MAX = 6.0e9  # the most a chunk of views may take (``chunk_budget``)


class _SubProgress:
    """Maps a gather's 0..1 progress into [lo, hi] of the bake stage."""

    def __init__(self, progress, lo, hi):
        self.p, self.lo, self.hi = progress, lo, hi

    def update(self, f, msg=""):
        if self.p is not None:
            self.p.update(self.lo + (self.hi - self.lo) * f, msg)


def chunk_size(n_texels: int, res: int, n_src_verts: int, budget_bytes: float = MEM_BUDGET) -> int:
    # per view in a chunk: the rendered image (rast/ids/depth) and ~10 (T, 3) float tensors of the texel projection
    per_view = res * res * 4 * 12 + n_texels * 160 + n_src_verts * 16
    return int(max(1, min(16, budget_bytes // max(per_view, 1))))


def chunk_budget(device) -> float:
    """Bytes of GPU memory the gather's per-chunk tensors may take: an eighth of the free memory, at least
    MEM_BUDGET and at most CHUNK_BUDGET_MAX. More views a chunk means fewer kernel launches and host
    syncs (the warm bake is bound by those, not by the GPU's work: an H200 profile had the GPU busy 180 ms
    of a 1.35 s bake); a small card keeps small chunks."""
    free = _free_gpu_bytes(device)
    return MEM_BUDGET if free is None else float(min(CHUNK_BUDGET_MAX, max(MEM_BUDGET, free / 8)))


def _free_gpu_bytes(device) -> float | None:
    """Free memory of the CUDA device (None for the CPU): what the gather's and the head start's budgets share out."""
    if torch.device(device).type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return float(free)


def mesh_view_renderer(src, device):
    """Colour/mask/depth views of a mesh (the image-sampling path splats take; the bake shades meshes exactly)."""
    gm = GpuMesh(src, device)

    def render(mvp, R, t, res):
        col, mask, depth = gm.render(mvp, res, want_depth=True, views_R=R, views_t=t)
        return col, mask, depth

    return render


def gather(view_renderer, cams, P, N, tol, device, progress=None, cos_power=None, chunk=None):
    """Accumulate colours of texels (P, N) over cameras -> (colour sum (T,3), weight sum (T,))."""
    T = P.shape[0]
    res = cams[0].width
    cos_power = COS_POWER if cos_power is None else cos_power
    acc = torch.zeros((T, 3), device=device)
    wsum = torch.zeros((T,), device=device)
    chunk = chunk or chunk_size(T, res, 0)
    Ph = P
    for s in range(0, len(cams), chunk):
        cc = cams[s : s + chunk]
        mvp, R, t = cams_to_tensors(cc, device)
        col, mask, depth = view_renderer(mvp, R, t, res)  # (C,H,W,3), (C,H,W), (C,H,W)
        C = len(cc)
        q = torch.einsum("cij,tj->cti", R, Ph) + t[:, None, :]  # camera coords (C,T,3)
        z = q[..., 2]
        fx = torch.tensor([float(c.fx) for c in cc], device=device, dtype=torch.float32)[:, None]
        cx = torch.tensor([float(c.cx) for c in cc], device=device, dtype=torch.float32)[:, None]
        fy = torch.tensor([float(c.fy) for c in cc], device=device, dtype=torch.float32)[:, None]
        cy = torch.tensor([float(c.cy) for c in cc], device=device, dtype=torch.float32)[:, None]
        zs = z.clamp_min(1e-9)
        u = fx * q[..., 0] / zs + cx
        v = fy * q[..., 1] / zs + cy
        grid = torch.stack([u / res * 2 - 1, v / res * 2 - 1], -1)[:, None]  # (C,1,T,2), align_corners=False
        colp = col.permute(0, 3, 1, 2)
        cov = mask.float()[:, None]
        c_s = torch.nn.functional.grid_sample(colp * cov, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, :, 0].permute(0, 2, 1)
        m_s = torch.nn.functional.grid_sample(cov, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, 0]
        d_s = torch.nn.functional.grid_sample(
            torch.where(mask, depth, torch.zeros_like(depth))[:, None], grid, mode="nearest", padding_mode="zeros", align_corners=False
        )[:, 0, 0]
        inside = (u >= 0) & (u < res) & (v >= 0) & (v < res) & (z > 0)
        centers = -torch.einsum("cji,cj->ci", R, t)  # (C,3) camera centres in world
        to_cam = centers[:, None, :] - Ph[None]
        to_cam = to_cam / to_cam.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cosang = (to_cam * N[None]).sum(-1)
        ok = inside & (m_s > 0.5) & ((d_s - z).abs() <= tol) & (cosang > 0.05)
        w = torch.where(ok, cosang.clamp_min(0) ** cos_power, torch.zeros_like(cosang))
        colr = c_s / m_s.clamp_min(1e-6)[..., None]  # un-premultiply: average of covered pixels only
        acc += (w[..., None] * colr).sum(0)
        wsum += w.sum(0)
        if progress is not None:
            progress.update(0.1 + 0.85 * min(1.0, (s + C) / len(cams)), f"views {min(s + C, len(cams))}/{len(cams)}")
    return acc, wsum


class ViewObserver:
    """Observations for the view fit (engine.bake.viewfit): in each chunk of bake views the target is
    rasterised too; where target and source are both seen and the source lies within ``tol`` of the
    target along the pixel's ray (not an occluder or another part), the pixel gives the target's UV and
    the channels' stored values sampled exactly on the source (their ``sample`` then ``finalize``)."""

    def __init__(self, target, channels, size: int, tol: float, device):
        from engine.bake.viewfit import ViewSystem

        self.channels = list(channels)
        self.slices, c0 = {}, 0
        for ch in self.channels:
            self.slices[ch.name] = slice(c0, c0 + ch.out_size)
            c0 += ch.out_size
        self.system = ViewSystem(size, c0, device)
        self.mesh = GpuMesh.__new__(GpuMesh)  # the target as a GpuMesh (positions and triangles only)
        self.mesh.device, self.mesh.pos, self.mesh.tri = torch.device(device), _f32(target.vertices, device), _i32(target.faces, device)
        self.uv = _f32(target.uv, device)
        self.tol = float(tol)
        self.seconds = 0.0

    def __call__(self, mvp, R, t, rast_src, src: GpuMesh, res: int, depth_src=None) -> None:
        import nvdiffrast.torch as dr

        t0 = time.perf_counter()
        rast_t = self.mesh.rasterize(mvp, res)
        uv, _ = dr.interpolate(self.uv, rast_t, self.mesh.tri)
        both = (rast_src[..., 3] > 0) & (rast_t[..., 3] > 0)
        if depth_src is None:
            depth_src = src.camera_depth(rast_src, R, t)
        near = (depth_src - self.mesh.camera_depth(rast_t, R, t)).abs() <= self.tol
        m = both & near
        if bool(m.any()):
            r = rast_src[m]
            face = r[:, 3].long() - 1
            bary = torch.stack([r[:, 0], r[:, 1], 1 - r[:, 0] - r[:, 1]], -1)
            vals = torch.cat([ch.finalize(ch.sample(face, bary), None) for ch in self.channels], 1)
            self.system.add(uv[m], vals)
        self.seconds += time.perf_counter() - t0

    def equations(self, name: str):
        """(stencil, right-hand side) of one channel, for engine.bake.fit.fit_texture(view=...)."""
        if not hasattr(self, "_eq"):
            self._eq = self.system.normal_equations()
        coef, rhs = self._eq
        return coef, rhs[:, self.slices[name]]


def _gather_block(ids, P, N, R, t, intr, centers, res, pos, tri_all, tol, cos_power, sample):
    """One chunk of views x one block of texels -> (texel index (K,), weight (K,), values (K,C)) or None."""
    # 1. every (view, texel) pair: projection and facing -- cheap, then only the candidates go on
    q = torch.einsum("cij,tj->cti", R, P) + t[:, None, :]
    z = q[..., 2]
    zs = z.clamp_min(1e-9)
    u = intr[:, 0:1] * q[..., 0] / zs + intr[:, 1:2]
    v = intr[:, 0:1] * q[..., 1] / zs + intr[:, 2:3]
    to_cam = centers[:, None, :] - P[None]
    cosang = (to_cam * N[None]).sum(-1) / to_cam.norm(dim=-1).clamp_min(1e-12)
    cand = (u >= 0) & (u < res) & (v >= 0) & (v < res) & (z > 0) & (cosang > 0.05)
    del q, to_cam
    ci, ti = torch.nonzero(cand, as_tuple=True)
    pix = ci * (res * res) + v[ci, ti].long().clamp(0, res - 1) * res + u[ci, ti].long().clamp(0, res - 1)
    tri_id = ids[pix]
    keep = tri_id >= 0
    ci, ti, tri_id, cos_k = ci[keep], ti[keep], tri_id[keep], cosang[ci, ti][keep]
    del u, v, z, cosang, cand, pix
    if ti.numel() == 0:
        return None
    # 2. the candidates: the ray camera -> texel against the triangle the view sees there
    cen = centers[ci]
    d = P[ti] - cen  # texel at ray parameter 1
    tri = tri_all[tri_id]
    A = pos[tri[:, 0]]
    e1, e2 = pos[tri[:, 1]] - A, pos[tri[:, 2]] - A
    pvec = torch.cross(d, e2, dim=-1)
    det = (e1 * pvec).sum(-1)
    good = det.abs() > 1e-20
    inv = 1.0 / torch.where(good, det, torch.ones_like(det))
    tvec = cen - A
    b1 = (tvec * pvec).sum(-1) * inv
    qvec = torch.cross(tvec, e1, dim=-1)
    b2 = (d * qvec).sum(-1) * inv
    th = (e2 * qvec).sum(-1) * inv  # hit at centre + th * d
    ok = good & ((th - 1.0).abs() * d.norm(dim=-1) <= tol)
    sel = torch.nonzero(ok, as_tuple=True)[0]
    if sel.numel() == 0:
        return None
    bary = torch.stack([1 - b1[sel] - b2[sel], b1[sel], b2[sel]], -1).clamp_min(0.0)
    bary = bary / bary.sum(-1, keepdim=True).clamp_min(1e-12)
    return ti[sel], cos_k[sel] ** cos_power, sample(tri_id[sel], bary)


def gather_exact(gm: GpuMesh, cams, P, N, tol, device, progress=None, cos_power=None, chunk=None, sample=None, observer=None, block=None,
                 views=None, stride: int = 1, stats: dict | None = None, budget: float | None = None):
    """Mesh sources: like ``gather`` but each texel's colour is shaded exactly on the source.

    The view only tells *which* source triangle is in front at the texel's
    pixel (the rasteriser's triangle id, nearest pixel); the ray from the
    camera through the texel is intersected with that triangle and the source
    is shaded at the exact hit (full source-texture resolution, no resampling
    of a rendered image). Hits farther than the cage from the texel along the
    ray are rejected (occluders, other parts). ``sample(face, bary)`` gives
    the values at hits (default: the mesh's base colour). ``observer(mvp, R, t, rast, gm, res, depth)`` is
    called with each chunk's raster of the source (the view fit's observations, ViewObserver), for every view.
    ``views``: the source's rasters rendered ahead (``PreparedViews``), used for the views they hold.
    ``stride``: every texel is gathered from every ``stride``-th view (an evenly spread subset of the
    spiral); the other views then gather only the texels none of those hit (seen from few directions)
    and still feed the observer (``stats``, when given, gets how many views the first set has and how many
    texels the others gathered).
    Views are the outer loop (the source is rasterised once per view, however large the texture),
    texels in ``block``s the inner one (bounded memory). ``budget``: bytes a chunk may take; given, the
    other views (few texels) go in chunks sized for their texels (``chunk_size``), not ``chunk``.
    """
    T = P.shape[0]
    V = len(cams)
    res = cams[0].width
    cos_power = COS_POWER if cos_power is None else cos_power
    sample = sample or gm.shade_points
    acc = None
    wsum = torch.zeros((T,), device=device)
    chunk = chunk or chunk_size(T, res, 0)
    block = int(block or T) or 1
    pos = gm.pos
    tri_all = gm.tri.long()
    # every camera's matrices in one transfer (a host->device copy per chunk would wait for the GPU)
    mvp_all, R_all, t_all = cams_to_tensors(cams, device)
    intr_all = torch.tensor([[float(c.fx), float(c.cx), float(c.cy)] for c in cams], device=device, dtype=torch.float32)
    centers_all = -torch.einsum("cji,cj->ci", R_all, t_all)  # (V,3) camera centres in world
    stride = max(1, int(stride))
    first = list(range(0, V, stride))
    rest = [i for i in range(V) if i % stride]
    if stats is not None:
        stats["texel_views"] = len(first)
    order_all = first + rest
    perm = torch.as_tensor(order_all, device=device)  # one transfer (one per chunk would wait for the GPU each time)
    done = 0
    for part, (p0, p1) in enumerate(((0, len(first)), (len(first), V))):
        texels = None  # all of them
        if part == 1 and p1 > p0:
            texels = torch.nonzero(wsum <= 0, as_tuple=True)[0]  # the texels the first views missed
            if stats is not None:
                stats["texels_from_other_views"] = int(texels.numel())
            if budget is not None:
                chunk = chunk_size(min(int(texels.numel()), block), res, 0, budget)
                if stats is not None:
                    stats["view_chunk_other_views"] = chunk
        for s in range(p0, p1, chunk):
            e = min(p1, s + chunk)
            idx_list = order_all[s:e]
            if progress is not None and done:
                progress.update(0.1 + 0.85 * done / V, f"views {done}/{V}")
            done += len(idx_list)
            idx = perm[s:e]
            mvp, R, t, intr, centers = mvp_all[idx], R_all[idx], t_all[idx], intr_all[idx], centers_all[idx]
            ahead = views.take(idx_list) if views is not None else None
            rast, depth = ahead if ahead is not None else (gm.rasterize(mvp, res), None)
            if observer is not None:
                observer(mvp, R, t, rast, gm, res, depth)
            if texels is not None and texels.numel() == 0:
                continue
            ids = (rast[..., 3].long() - 1).reshape(-1)  # (C*H*W,)
            n = T if texels is None else int(texels.numel())
            for b0 in range(0, n, block):
                b1 = min(n, b0 + block)
                if texels is None:
                    Pb, Nb = P[b0:b1], N[b0:b1]
                else:
                    Pb, Nb = P[texels[b0:b1]], N[texels[b0:b1]]
                a = _gather_block(ids, Pb, Nb, R, t, intr, centers, res, pos, tri_all, tol, cos_power, sample)
                if a is None:
                    continue
                tsel, w, col = a
                if acc is None:
                    acc = torch.zeros((T, col.shape[1]), device=device)
                tsel = tsel + b0 if texels is None else texels[b0:b1][tsel]
                acc.index_add_(0, tsel, w[:, None] * col)
                wsum.index_add_(0, tsel, w)
    if progress is not None:
        progress.update(0.95, f"views {V}/{V}")
    if acc is None:
        acc = torch.zeros((T, sample(torch.zeros(1, dtype=torch.long, device=device), torch.full((1, 3), 1 / 3, device=device)).shape[1]), device=device)
    return acc, wsum


def bake_cameras(src, options):
    """The bake views of a source: ``options.views`` cameras on its bounding sphere (kept on the source:
    the head start and the gather both ask, and the sphere of a large source takes a while)."""
    key = (int(options.views), int(options.view_resolution))
    memo = src.__dict__.setdefault("_bake_cameras", {})
    if key not in memo:
        center, radius = bounding_sphere(src.vertices)
        memo[key] = sphere_cameras(center, radius, options.views, options.view_resolution, offset=BAKE_OFFSET)
    return memo[key]


AHEAD_BUDGET = 3.0e9  # bytes of GPU memory the views rendered ahead may take (and at most a quarter of what is free)
_AHEAD_CHUNK = 4  # views rasterised per call while rendering ahead


class PreparedViews:
    """The source side of the bake views, rendered before the target exists (``CudaBackend.prepare``):
    the source on the device (``GpuMesh``), and for the first ``n`` views -- as many as ``budget``
    bytes hold (20 per pixel) -- nvdiffrast's raster (V,H,W,4) and the camera depth (V,H,W) the view
    fit compares with the target's. The gather takes them chunk by chunk (``take``), releasing each as
    it goes, and rasterises the views beyond ``n`` itself."""

    def __init__(self, src, cams, device, budget: float):
        t0 = time.perf_counter()
        self.key = _views_key(cams)
        self.gm = GpuMesh(src, device)
        res = cams[0].width
        self.n = int(max(0, min(len(cams), budget // (res * res * 20))))
        self.rast: list = [None] * len(cams)
        self.depth: list = [None] * len(cams)
        mvp, R, t = cams_to_tensors(cams[: self.n], device) if self.n else (None, None, None)
        for s in range(0, self.n, _AHEAD_CHUNK):
            e = min(self.n, s + _AHEAD_CHUNK)
            r = self.gm.rasterize(mvp[s:e], res)
            d = self.gm.camera_depth(r, R[s:e], t[s:e])
            self.rast[s:e] = list(r.unbind(0))
            self.depth[s:e] = list(d.unbind(0))
        _sync(device)
        self.seconds = round(time.perf_counter() - t0, 4)

    def take(self, idx: list):
        """(raster (C,H,W,4), depth (C,H,W)) of the views ``idx``, released here; None unless all were rendered."""
        if any(i >= self.n or self.rast[i] is None for i in idx):
            return None
        out = (torch.stack([self.rast[i] for i in idx]), torch.stack([self.depth[i] for i in idx]))
        for i in idx:
            self.rast[i] = self.depth[i] = None
        return out

    @staticmethod
    def take_from(src, cams, device) -> "PreparedViews | None":
        """The views ``CudaBackend.prepare`` rendered for ``src`` (waiting for them), if they are these cameras' on this
        device; None otherwise, or when rendering them failed (the gather then renders every view itself)."""
        fut = src.__dict__.pop("_views_ahead", None)
        if fut is None:
            return None
        t0 = time.perf_counter()
        try:
            views = fut.result()
        except Exception:  # noqa: BLE001 -- only a head start (out of memory, say): the gather renders them
            return None
        if views.key != _views_key(cams) or views.gm.device != torch.device(device):
            return None
        views.waited = round(time.perf_counter() - t0, 4)
        return views


def ahead_budget(device) -> float:
    """Bytes the views rendered ahead may take: AHEAD_BUDGET, and at most a quarter of the free GPU memory."""
    free = _free_gpu_bytes(device)
    return AHEAD_BUDGET if free is None else min(AHEAD_BUDGET, free / 4)


def _views_key(cams) -> tuple:
    return tuple((c.width, c.height, float(c.fx), float(c.cx), float(c.cy), tuple(np.round(c.center, 9))) for c in cams)


def gather_views(src, P, N, tol, options, progress, device="cuda", sample=None, view_renderer=None, observer=None):
    """All views of a bake, in texel blocks under the memory budget -> (values (T,C), weight sum (T,), info).

    Mesh sources: ``sample(face, bary)`` at exact hits (gather_exact), and the view fit's ``observer``.
    Splat sources: ``view_renderer`` images (base colour only, RGB)."""
    cams = bake_cameras(src, options)
    T = int(P.shape[0])
    # texels in blocks so that at least 4 views of a block fit the memory budget (large textures)
    block = max(1, min(T, int(MEM_BUDGET // (160 * 4))))
    exact = view_renderer is None
    # mesh sources: chunks as large as free memory allows; splat renders keep MEM_BUDGET (gsplat's own
    # memory for a chunk of views is not in chunk_size's estimate)
    budget = chunk_budget(device) if exact else MEM_BUDGET
    chunk = chunk_size(min(T, block), options.view_resolution, len(src.vertices), budget)
    method = "cuda-nvdiffrast-texel-gather"
    ahead = {}
    if exact:
        method += "-exact"
        views = PreparedViews.take_from(src, cams, device)
        gm = views.gm if views is not None else GpuMesh(src, device)
        if views is not None:
            # seconds: rendering them on the background thread; waited: how long the bake still waited for them
            ahead = {"views_rendered_ahead": views.n, "views_ahead_seconds": views.seconds, "views_ahead_waited_seconds": views.waited}
        stride = TEXEL_VIEW_STRIDE if len(cams) // TEXEL_VIEW_STRIDE >= TEXEL_VIEWS_MIN else 1
        stats: dict = {}
        acc, wsum = gather_exact(gm, cams, P, N, tol, device, progress, chunk=chunk, sample=sample, observer=observer, block=block,
                                 views=views, stride=stride, stats=stats, budget=budget)
        ahead.update(stats)
    else:
        acc = None
        wsum = torch.zeros((T,), device=device)
        for b0 in range(0, max(T, 1), block):
            b1 = min(T, b0 + block)
            sub = _SubProgress(progress, b0 / max(T, 1), b1 / max(T, 1))
            a, w = gather(view_renderer, cams, P[b0:b1], N[b0:b1], tol, device, sub, chunk=chunk)
            if acc is None:
                acc = torch.zeros((T, a.shape[1]), device=device)
            acc[b0:b1] = a
            wsum[b0:b1] = w
    info = {
        "method": method,
        "views": len(cams),
        "view_resolution": options.view_resolution,
        "view_chunk": chunk,
        "view_chunk_budget_gib": round(budget / 2**30, 2),
        "texel_blocks": (T + block - 1) // block,
        "cos_power": COS_POWER,
        "depth_tolerance": tol,
        **ahead,
    }
    return acc, wsum, info


class CudaBackend(Backend):
    name = "cuda"
    renderer_name = "nvdiffrast"
    device = "cuda"
    supports_splats = True
    licence_note = "nvdiffrast is under NVIDIA's non-commercial licence; use --device cpu for commercial work"
    prepare_beside_simplify = True  # its head start is GPU work: the CPU stays with simplify and unwrap

    def texels(self, uv, faces, size):
        return texels_cuda(uv, faces, size, self.device)

    def prepare(self, src, options) -> None:
        """Start the source's side of the bake on the background thread, while simplify and unwrap keep
        the CPU busy: its upload, its shading normals (the ``normal`` channel's, for a source without
        normals) and its rasters in the bake views (``PreparedViews``, under a memory budget)."""
        from engine.bake.surface import surface_for

        surface = surface_for(src, self.device)
        budget = ahead_budget(self.device)

        def ahead():
            cams = bake_cameras(src, options)
            if src.normals is None:
                from engine.bake.channels.normal import source_corner_normals

                surface.tensor("corner_normals", lambda: source_corner_normals(src, surface.device))
            if src.vertex_color is not None:
                surface.vertex_color()
            return PreparedViews(src, cams, self.device, budget)

        from engine.bake.threads import background

        src.__dict__["_views_ahead"] = background().submit(ahead)

    def view_observer(self, target, channels, size, tol):
        return ViewObserver(target, channels, size, tol, self.device)

    def gather(self, surface, sample, P, N, tol, options, progress, origins=None, view_renderer=None, observer=None):
        t0 = time.perf_counter()
        with torch.no_grad():
            acc, wsum, info = gather_views(surface.src, P, N, tol, options, progress, self.device, sample=sample,
                                           view_renderer=view_renderer, observer=observer)
            hit = wsum > 0
            vals = torch.where(hit[:, None], acc / wsum.clamp_min(1e-12)[:, None], torch.zeros_like(acc))
            _sync(self.device)
        if origins is not None:
            info["cage_mesh"] = "not used by the view gather (views see the source directly); the cage distance still applies"
        if observer is not None:
            info["view_fit_observations"] = observer.system.observations
            info["view_fit_seconds"] = round(observer.seconds, 4)
        info["texels_hit"] = int(hit.sum())
        if torch.device(self.device).type == "cuda":
            info["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        info["seconds"] = round(time.perf_counter() - t0, 4)
        return vals, hit, info

    def render_pairs(self, src, res, cams, progress=None):
        from engine.render.nvdr import render_pair

        return render_pair(src, res, cams, device=self.device)
