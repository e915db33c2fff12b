"""A bake source on a torch device, ready for channels to sample at hits.

A *hit* is a source face index and barycentrics (w.r.t. the face's corners
0, 1, 2). Backends find hits (Embree rays on the CPU, the rasteriser's
triangle id + the exact ray/triangle intersection on CUDA); channels
(engine.bake.channels) turn hits into values through this object: per-vertex
and per-corner attributes interpolated at the hit (one ``interp`` for any
attribute, like nvdiffrast's interpolate), per-material constants, and
textures sampled bilinearly with their wrap mode, UV set and
KHR_texture_transform.

Everything is uploaded lazily, once, and cached: a channel pays only for
what it reads.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from engine.mesh.source import Material, SourceMesh, TextureRef


def srgb_to_linear_t(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp_min(0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb_t(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)


def _wrap(t: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "clamp":
        return t.clamp(0.0, 1.0)
    if mode == "mirror":
        f = torch.remainder(t, 2.0)
        return torch.where(f > 1.0, 2.0 - f, f)
    return t - torch.floor(t)


def sample_bilinear(tex: torch.Tensor, uv: torch.Tensor, wrap: str = "repeat") -> torch.Tensor:
    """tex (H,W,C) float, uv (K,2) glTF UVs -> (K,C); texel centres at (i + 0.5) / size, like GL."""
    H, W = tex.shape[:2]
    u = _wrap(uv[:, 0], wrap) * W - 0.5
    v = _wrap(uv[:, 1], wrap) * H - 0.5
    x0 = torch.floor(u)
    y0 = torch.floor(v)
    fx = (u - x0)[:, None]
    fy = (v - y0)[:, None]
    x0 = x0.long()
    y0 = y0.long()
    if wrap == "repeat":
        xa, xb = x0 % W, (x0 + 1) % W
        ya, yb = y0 % H, (y0 + 1) % H
    else:
        xa, xb = x0.clamp(0, W - 1), (x0 + 1).clamp(0, W - 1)
        ya, yb = y0.clamp(0, H - 1), (y0 + 1).clamp(0, H - 1)
    flat = tex.reshape(H * W, -1)
    c00 = flat[ya * W + xa]
    c01 = flat[ya * W + xb]
    c10 = flat[yb * W + xa]
    c11 = flat[yb * W + xb]
    return (c00 * (1 - fx) + c01 * fx) * (1 - fy) + (c10 * (1 - fx) + c11 * fx) * fy


class SourceSurface:
    def __init__(self, src: SourceMesh, device="cpu"):
        self.src = src
        self.device = torch.device(device)
        self.pos = torch.as_tensor(np.asarray(src.vertices, np.float32), device=self.device)
        self.faces = torch.as_tensor(np.asarray(src.faces, np.int64), device=self.device)
        mats = list(src.materials) or [Material()]
        self.materials: list[Material] = mats
        fm = src.face_material if src.face_material is not None else np.zeros(len(src.faces), np.int64)
        self.face_mat = torch.as_tensor(np.asarray(fm, np.int64), device=self.device)
        self._cache: dict = {}
        self._lock = threading.RLock()  # a backend's prepare (engine.bake.threads.background) fills the cache too

    # --- generic helpers -------------------------------------------------------------------
    def tensor(self, key, make):
        """The cached tensor ``key``, made once: a second thread asking while it is made waits for it."""
        t = self._cache.get(key)
        if t is not None:
            return t
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def vertex_attr(self, name: str, array) -> torch.Tensor:
        return self.tensor(("v", name), lambda: torch.as_tensor(np.asarray(array, np.float32), device=self.device))

    def interp(self, attr: torch.Tensor, face: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        """Per-vertex (N,C) or per-corner (F,3,C) attribute at hits -> (K,C) (``texel.bary_combine``)."""
        from engine.bake.texel import bary_combine, corner_interp

        if attr.dim() == 3:
            return corner_interp(attr, face, bary)
        return bary_combine(bary, attr[torch.index_select(self.faces, 0, face)])

    def material_table(self, name: str, fn) -> torch.Tensor:
        """Per-material constants (M, C) from fn(material) -> sequence of floats."""
        return self.tensor(("m", name), lambda: torch.as_tensor(np.asarray([np.atleast_1d(np.asarray(fn(m), np.float32)) for m in self.materials], np.float32), device=self.device))

    def uv(self, k: int, face: torch.Tensor, bary: torch.Tensor):
        arr = self.src.uv_set(k)
        if arr is None:
            return None
        return self.interp(self.vertex_attr(f"uv{k}", arr), face, bary)

    def image(self, img: np.ndarray, srgb: bool) -> torch.Tensor:
        def make():
            a = np.asarray(img)
            t = torch.as_tensor(a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0), device=self.device)
            if t.dim() == 2:
                t = t[..., None]
            if srgb:
                c = t.shape[-1]
                rgb = srgb_to_linear_t(t[..., : min(c, 3) if c != 2 else 1])
                t = torch.cat([rgb, t[..., rgb.shape[-1]:]], -1)
            return t.contiguous()

        return self.tensor(("img", id(img), srgb), make)

    def sample(self, ref: TextureRef, face: torch.Tensor, bary: torch.Tensor, srgb: bool) -> torch.Tensor | None:
        """A texture slot at hits -> (K, C) (linear where srgb), or None when the mesh lacks its UV set."""
        uv = self.uv(ref.texcoord, face, bary)
        if uv is None:
            return None
        if ref.transform is not None:
            m = torch.as_tensor(np.asarray(ref.transform, np.float32), device=self.device)
            uv = uv @ m[:2] + m[2]
        return sample_bilinear(self.image(ref.image, srgb), uv, ref.wrap)

    def per_material(self, face: torch.Tensor, slot, fn):
        """Yield (material index, selection of hits) for materials whose ``slot(material)`` is set."""
        if all(slot(m) is None for m in self.materials):
            return  # (no per-hit material lookup)
        fm = self.face_mat[face]
        for mi, m in enumerate(self.materials):
            if slot(m) is None:
                continue
            sel = torch.nonzero(fm == mi, as_tuple=True)[0]
            if sel.numel():
                fn(mi, m, sel)

    def vertex_color(self):
        vc = self.src.vertex_color
        return None if vc is None else self.vertex_attr("vcol", vc)

    def vertex_color_at(self, face: torch.Tensor, bary: torch.Tensor) -> torch.Tensor | None:
        """Linear vertex colour (K, 3|4) at hits, blended the way the source is meant to be seen
        (``SourceMesh.vertex_color_interpolation``): in linear (glTF), or in sRGB then decoded."""
        vc = self.vertex_color()
        if vc is None:
            return None
        if getattr(self.src, "vertex_color_interpolation", "linear") != "srgb":
            return self.interp(vc, face, bary)
        enc = self.tensor(("v", "vcol_srgb"), lambda: torch.cat([linear_to_srgb_t(vc[:, :3]), vc[:, 3:]], 1))
        v = self.interp(enc, face, bary)
        return torch.cat([srgb_to_linear_t(v[:, :3]), v[:, 3:]], 1)


def surface_for(src: SourceMesh, device) -> SourceSurface:
    """The SourceSurface of ``src`` on ``device``, cached on the mesh object (renderers and checks shade
    the same mesh many times)."""
    key = str(torch.device(device))
    with _SURFACES_LOCK:  # the pipeline and a backend's prepare thread may ask at once
        cache = src.__dict__.setdefault("_surfaces", {})
        if key not in cache:
            cache[key] = SourceSurface(src, device)
        return cache[key]


_SURFACES_LOCK = threading.Lock()
