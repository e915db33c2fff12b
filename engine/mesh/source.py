"""The in-memory form of a bake source: plain numpy arrays.

Colour conventions (glTF's):
  * ``Material.base_color_factor`` and ``SourceMesh.vertex_color`` are LINEAR.
  * ``Material.texture`` is an sRGB-encoded uint8 image (H, W, 3|4).
  * UVs follow glTF: (u, v) with v = 0 at the TOP row of the texture image,
    i.e. texel row = v * H. Every module of Kiln uses this convention.
Shading (``shade``) returns sRGB colours in [0, 1]: the texture we bake is an
sRGB image, so the final colour is linear_to_srgb(factor * tex_lin * vcol_lin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1.0 / 2.4) - 0.055).astype(np.float32)


@dataclass
class Material:
    name: str = "material"
    base_color_factor: np.ndarray = field(default_factory=lambda: np.ones(4, np.float32))
    texture: Optional[np.ndarray] = None  # uint8 (H, W, C) sRGB, row 0 = v 0
    wrap: str = "repeat"  # repeat | clamp | mirror


@dataclass
class SourceMesh:
    vertices: np.ndarray  # (N, 3) float32, in the source's own (world) frame
    faces: np.ndarray  # (M, 3) int32
    uv: Optional[np.ndarray] = None  # (N, 2) float32, glTF convention
    vertex_color: Optional[np.ndarray] = None  # (N, 3) float32 linear
    face_material: Optional[np.ndarray] = None  # (M,) int32 index into materials
    materials: list = field(default_factory=list)
    name: str = "source"

    @property
    def n_faces(self) -> int:
        return int(len(self.faces))

    @property
    def has_texture(self) -> bool:
        return any(m.texture is not None for m in self.materials)

    def bounds(self) -> np.ndarray:
        return np.stack([self.vertices.min(0), self.vertices.max(0)]).astype(np.float64)

    def appearance_kind(self) -> str:
        if self.has_texture and self.uv is not None:
            return "texture"
        if self.vertex_color is not None:
            return "vertex_color"
        return "material_color"


def _wrap_coords(t: np.ndarray, mode: str) -> np.ndarray:
    if mode == "clamp":
        return np.clip(t, 0.0, 1.0)
    if mode == "mirror":
        f = np.mod(t, 2.0)
        return np.where(f > 1.0, 2.0 - f, f)
    return t - np.floor(t)


def sample_texture_bilinear(tex: np.ndarray, uv: np.ndarray, wrap: str = "repeat") -> np.ndarray:
    """Bilinear lookup of an (H, W, C) uint8/float texture at (K, 2) glTF UVs -> (K, C) float32 in [0, 1]."""
    h, w = tex.shape[:2]
    texf = tex.astype(np.float32) / 255.0 if tex.dtype == np.uint8 else tex.astype(np.float32)
    u = _wrap_coords(uv[:, 0].astype(np.float64), wrap) * w - 0.5
    v = _wrap_coords(uv[:, 1].astype(np.float64), wrap) * h - 0.5
    x0 = np.floor(u).astype(np.int64)
    y0 = np.floor(v).astype(np.int64)
    fx = (u - x0).astype(np.float32)[:, None]
    fy = (v - y0).astype(np.float32)[:, None]
    if wrap == "repeat":
        xs0, xs1 = x0 % w, (x0 + 1) % w
        ys0, ys1 = y0 % h, (y0 + 1) % h
    else:
        xs0, xs1 = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
        ys0, ys1 = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    c00 = texf[ys0, xs0]
    c01 = texf[ys0, xs1]
    c10 = texf[ys1, xs0]
    c11 = texf[ys1, xs1]
    if texf.ndim == 2:
        c00, c01, c10, c11 = (c[:, None] for c in (c00, c01, c10, c11))
    top = c00 * (1 - fx) + c01 * fx
    bot = c10 * (1 - fx) + c11 * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def shade(src: SourceMesh, face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """sRGB base colour (K, 3) in [0, 1] at points given by face index and barycentrics (K, 3)."""
    face_idx = np.asarray(face_idx, dtype=np.int64)
    bary = np.asarray(bary, dtype=np.float32)
    k = len(face_idx)
    lin = np.ones((k, 3), np.float32)
    tri = src.faces[face_idx]
    mats = src.materials or [Material()]
    fm = src.face_material[face_idx] if src.face_material is not None else np.zeros(k, np.int64)
    uvs = None
    if src.uv is not None and any(m.texture is not None for m in mats):
        uvs = np.einsum("kj,kjc->kc", bary, src.uv[tri].astype(np.float32))
    for mi, m in enumerate(mats):
        sel = np.nonzero(fm == mi)[0]
        if len(sel) == 0:
            continue
        col = np.broadcast_to(np.asarray(m.base_color_factor, np.float32)[:3], (len(sel), 3)).copy()
        if m.texture is not None and uvs is not None:
            t = sample_texture_bilinear(m.texture, uvs[sel], m.wrap)
            if t.shape[1] == 1:
                t = np.repeat(t, 3, axis=1)
            col *= srgb_to_linear(t[:, :3])
        lin[sel] = col
    if src.vertex_color is not None:
        vc = np.einsum("kj,kjc->kc", bary, src.vertex_color[tri][:, :, :3].astype(np.float32))
        lin *= vc
    return linear_to_srgb(lin)
