"""nvdiffrast (0.4, RasterizeCudaContext) rendering of Kiln meshes on CUDA.

Every tensor handed to nvdiffrast goes through ``_f32``/``_i32``: float32 /
int32, contiguous, on the context's device -- float64 or a stray CPU tensor
never reaches the rasteriser (float64 raises there; out-of-range indices are
skipped silently, which validation rules out before we get here).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from engine.mesh.source import SourceMesh


def _f32(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(device=device, dtype=torch.float32).contiguous()


def _i32(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(device=device, dtype=torch.int32).contiguous()


from engine.bake.surface import linear_to_srgb_t, srgb_to_linear_t  # noqa: E402,F401  (re-exported)


_CTX: dict = {}
_RASTER_LOCK = threading.RLock()  # one context per device, used from the bake and its prepare thread (engine.bake.cuda)


def context(device="cuda"):
    import nvdiffrast.torch as dr

    key = str(device)
    with _RASTER_LOCK:
        if key not in _CTX:
            _CTX[key] = dr.RasterizeCudaContext(device=device)
        return _CTX[key]


def rasterize(device, clip: torch.Tensor, tri: torch.Tensor, resolution: int) -> torch.Tensor:
    """nvdiffrast's rasterize on the device's shared context -> raster (V,H,W,4). The context holds the
    rasteriser's working buffers, so the bake and its prepare thread (engine.bake.cuda) take turns here."""
    import nvdiffrast.torch as dr

    with _RASTER_LOCK:
        rast, _ = dr.rasterize(context(device), clip, tri, resolution=[resolution, resolution])
    return rast


class GpuMesh:
    """A SourceMesh on the GPU for rasterisation; its colours come from the ``base`` bake channel
    (engine.bake.channels), the one implementation of base colour in Kiln."""

    def __init__(self, m: SourceMesh, device="cuda"):
        self.mesh = m
        self.device = torch.device(device)
        self.pos = _f32(m.vertices, device)
        self.tri = _i32(m.faces, device)
        self.n_faces = int(len(m.faces))
        self._base = None

    def clip(self, mvps: torch.Tensor) -> torch.Tensor:
        ph = torch.cat([self.pos, torch.ones_like(self.pos[:, :1])], 1)
        return torch.einsum("vij,nj->vni", mvps, ph).contiguous()

    def shade_points(self, face_idx: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        """Exact sRGB base colour (K,3) at surface points given by face index (K,) and barycentrics (K,3)."""
        if self._base is None:
            from engine.bake.channels import channel_class
            from engine.bake.surface import surface_for

            self._base = channel_class("base")(surface_for(self.mesh, self.device))
        return self._base.sample(face_idx.long(), bary)[:, :3]

    def shade(self, rast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rast (V,H,W,4) -> sRGB colour (V,H,W,3) (0 outside), coverage mask (V,H,W)."""
        tri_id = rast[..., 3].long() - 1
        mask = tri_id >= 0
        u, v = rast[..., 0], rast[..., 1]
        bary = torch.stack([u, v, 1 - u - v], -1)  # nvdiffrast: (u, v) weigh corners 0 and 1
        out = torch.zeros(mask.shape + (3,), device=self.device)
        if bool(mask.any()):
            out[mask] = self.shade_points(tri_id[mask], bary[mask])
        return out, mask

    def rasterize(self, mvps: torch.Tensor, resolution: int) -> torch.Tensor:
        """nvdiffrast's raster output (V,H,W,4): barycentrics u, v (weights of corners 0, 1), z/w, triangle id + 1."""
        return rasterize(self.device, self.clip(mvps), self.tri, resolution)

    def rasterize_ids(self, mvps: torch.Tensor, resolution: int) -> torch.Tensor:
        """Triangle id per pixel (V,H,W) int64, -1 where empty."""
        return self.rasterize(mvps, resolution)[..., 3].long() - 1

    def camera_depth(self, rast: torch.Tensor, views_R: torch.Tensor, views_t: torch.Tensor) -> torch.Tensor:
        """Camera-space z per pixel (V,H,W), interpolated perspective-correctly; inf where empty."""
        import nvdiffrast.torch as dr

        zc = (torch.einsum("vij,nj->vni", views_R, self.pos) + views_t[:, None, :])[..., 2:3].contiguous()
        depth, _ = dr.interpolate(zc, rast, self.tri)
        return torch.where(rast[..., 3] > 0, depth[..., 0], torch.full_like(depth[..., 0], float("inf")))

    def render(self, mvps: torch.Tensor, resolution: int, want_depth: bool = False, views_R=None, views_t=None):
        rast = self.rasterize(mvps, resolution)
        col, mask = self.shade(rast)
        depth = self.camera_depth(rast, views_R, views_t) if want_depth else None
        return col, mask, depth


def cams_to_tensors(cams, device):
    mvp = _f32(np.stack([c.gl_mvp() for c in cams]), device)
    R = _f32(np.stack([c.R for c in cams]), device)
    t = _f32(np.stack([c.t for c in cams]), device)
    return mvp, R, t


def render_pair(src: SourceMesh, res: SourceMesh, cams, device="cuda", chunk: int = 4):
    """Render source and result from the same cameras -> list of numpy (ca, ma, cb, mb)."""
    ga, gb = GpuMesh(src, device), GpuMesh(res, device)
    out = []
    with torch.no_grad():
        for s in range(0, len(cams), chunk):
            cc = cams[s : s + chunk]
            mvp, _, _ = cams_to_tensors(cc, device)
            r = cc[0].width
            ca, ma, _ = ga.render(mvp, r)
            cb, mb, _ = gb.render(mvp, r)
            for i in range(len(cc)):
                out.append((ca[i].cpu().numpy(), ma[i].cpu().numpy(), cb[i].cpu().numpy(), mb[i].cpu().numpy()))
    return out
