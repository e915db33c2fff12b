"""nvdiffrast (0.4, RasterizeCudaContext) rendering of Kiln meshes on CUDA.

Every tensor handed to nvdiffrast goes through ``_f32``/``_i32``: float32 /
int32, contiguous, on the context's device -- float64 or a stray CPU tensor
never reaches the rasteriser (float64 raises there; out-of-range indices are
skipped silently, which validation rules out before we get here).
"""

from __future__ import annotations

import numpy as np
import torch

from engine.mesh.source import SourceMesh


def _f32(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(device=device, dtype=torch.float32).contiguous()


def _i32(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(device=device, dtype=torch.int32).contiguous()


def srgb_to_linear_t(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb_t(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)


_CTX: dict = {}


def context(device="cuda"):
    import nvdiffrast.torch as dr

    key = str(device)
    if key not in _CTX:
        _CTX[key] = dr.RasterizeCudaContext(device=device)
    return _CTX[key]


class GpuMesh:
    """A SourceMesh uploaded once: positions, faces, per-vertex attributes, linear textures."""

    def __init__(self, m: SourceMesh, device="cuda"):
        self.device = torch.device(device)
        self.pos = _f32(m.vertices, device)
        self.tri = _i32(m.faces, device)
        self.n_faces = int(len(m.faces))
        mats = m.materials or []
        self.factors = _f32(np.stack([np.asarray(x.base_color_factor, np.float32)[:3] for x in mats]) if mats else np.ones((1, 3), np.float32), device)
        self.face_mat = torch.as_tensor(np.asarray(m.face_material if m.face_material is not None else np.zeros(len(m.faces)), np.int64), device=self.device)
        self.textures = []
        for x in mats:
            if x.texture is not None and m.uv is not None:
                t = _f32(x.texture[..., :3].astype(np.float32) / 255.0 if x.texture.ndim == 3 else np.repeat(x.texture[..., None], 3, -1) / 255.0, device)
                self.textures.append((srgb_to_linear_t(t)[None].contiguous(), x.wrap))
            else:
                self.textures.append(None)
        self.uv = _f32(m.uv, device)[None] if m.uv is not None and any(t is not None for t in self.textures) else None
        self.vcol = _f32(m.vertex_color[:, :3], device)[None] if m.vertex_color is not None else None

    def clip(self, mvps: torch.Tensor) -> torch.Tensor:
        ph = torch.cat([self.pos, torch.ones_like(self.pos[:, :1])], 1)
        return torch.einsum("vij,nj->vni", mvps, ph).contiguous()

    def shade(self, rast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rast (V,H,W,4) -> sRGB colour (V,H,W,3) (0 outside), coverage mask (V,H,W)."""
        import nvdiffrast.torch as dr

        tri_id = rast[..., 3].long() - 1
        mask = tri_id >= 0
        V, H, W = tri_id.shape
        lin = torch.ones((V, H, W, 3), device=self.device)
        fm = self.face_mat[tri_id.clamp_min(0)]
        lin = lin * self.factors[fm]
        if self.uv is not None:
            uvi, _ = dr.interpolate(self.uv.expand(1, -1, -1).contiguous(), rast, self.tri)
            for mi, t in enumerate(self.textures):
                if t is None:
                    continue
                tex, wrap = t
                sel = mask & (fm == mi)
                if not bool(sel.any()):
                    continue
                uvs = uvi
                if wrap == "mirror":
                    f = torch.remainder(uvs, 2.0)
                    uvs = torch.where(f > 1.0, 2.0 - f, f)
                col = dr.texture(tex, uvs.contiguous(), filter_mode="linear", boundary_mode="wrap" if wrap == "repeat" else "clamp") if V == 1 else torch.cat(
                    [dr.texture(tex, uvs[i : i + 1].contiguous(), filter_mode="linear", boundary_mode="wrap" if wrap == "repeat" else "clamp") for i in range(V)]
                )
                lin = torch.where(sel[..., None], lin * col, lin)
        if self.vcol is not None:
            vc, _ = dr.interpolate(self.vcol, rast, self.tri)
            lin = lin * vc
        out = linear_to_srgb_t(lin)
        return torch.where(mask[..., None], out, torch.zeros_like(out)), mask

    def shade_points(self, face_idx: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        """Exact sRGB base colour (K,3) at surface points given by face index (K,) and barycentrics (K,3)."""
        import nvdiffrast.torch as dr

        fi = face_idx.long()
        fm = self.face_mat[fi]
        lin = self.factors[fm].clone()
        tri = self.tri[fi].long()
        if self.uv is not None:
            uvp = (bary[..., None] * self.uv[0][tri]).sum(1)
            for mi, t in enumerate(self.textures):
                if t is None:
                    continue
                tex, wrap = t
                sel = torch.nonzero(fm == mi, as_tuple=True)[0]
                if sel.numel() == 0:
                    continue
                u = uvp[sel]
                if wrap == "mirror":
                    f = torch.remainder(u, 2.0)
                    u = torch.where(f > 1.0, 2.0 - f, f)
                col = dr.texture(tex, u.reshape(1, -1, 1, 2).contiguous(), filter_mode="linear",
                                 boundary_mode="wrap" if wrap == "repeat" else "clamp")[0, :, 0]
                lin[sel] = lin[sel] * col
        if self.vcol is not None:
            lin = lin * (bary[..., None] * self.vcol[0][tri]).sum(1)
        return linear_to_srgb_t(lin)

    def rasterize_ids(self, mvps: torch.Tensor, resolution: int) -> torch.Tensor:
        """Triangle id per pixel (V,H,W) int64, -1 where empty."""
        import nvdiffrast.torch as dr

        rast, _ = dr.rasterize(context(self.device), self.clip(mvps), self.tri, resolution=[resolution, resolution])
        return rast[..., 3].long() - 1

    def render(self, mvps: torch.Tensor, resolution: int, want_depth: bool = False, views_R=None, views_t=None):
        import nvdiffrast.torch as dr

        ctx = context(self.device)
        clip = self.clip(mvps)
        rast, _ = dr.rasterize(ctx, clip, self.tri, resolution=[resolution, resolution])
        col, mask = self.shade(rast)
        depth = None
        if want_depth:
            # camera-space z per vertex, interpolated perspective-correctly
            zc = (torch.einsum("vij,nj->vni", views_R, self.pos) + views_t[:, None, :])[..., 2:3].contiguous()
            depth, _ = dr.interpolate(zc, rast, self.tri)
            depth = torch.where(mask, depth[..., 0], torch.full_like(depth[..., 0], float("inf")))
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
