"""The channel interface, and the ``base`` channel: base colour (sRGB) and alpha."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from engine.bake.surface import SourceSurface, linear_to_srgb_t


@dataclass
class ChannelResult:
    """A baked channel: an image (uint8 (S,S,C)) or a constant (what its texels all hold, in [0,1])."""

    name: str
    image: Optional[np.ndarray] = None
    constant: Optional[np.ndarray] = None
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "texture" if self.image is not None else "factor"


AddTexture = Callable[[np.ndarray, str], int]  # (uint8 image, suffix) -> glTF texture index


class Channel:
    name = "channel"
    size = 3  # values per hit (what backends accumulate)
    out_size = 3  # channels of the stored image
    fill = (0.5, 0.5, 0.5)  # texel value where nothing was baked (before push-pull fill)
    always_texture = False  # keep a texture even when constant
    constant_tol = 2.0 / 255.0
    view_fit = False  # stored values are the sampled ones (finalize needs no frame and no statistics of all texels):
    # the backend may fit them to renders of the source in the bake views (engine.bake.viewfit)

    def __init__(self, surface: SourceSurface):
        self.surface = surface
        self.meta: dict = {}

    @classmethod
    def present(cls, src) -> bool:
        return False

    def constant(self) -> Optional[np.ndarray]:
        """The channel's stored value when it is the same everywhere on the source (no bake needed), else None."""
        return None

    def sample(self, face: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finalize(self, values: torch.Tensor, frame=None) -> torch.Tensor:
        """Blended hit values of texels (T, size) -> stored values (T, out_size) in [0, 1]."""
        return values[:, : self.out_size].clamp(0.0, 1.0)

    def result(self, image: np.ndarray, covered: np.ndarray) -> ChannelResult:
        """Make a constant of an image that holds one value over its covered texels."""
        if self.always_texture:
            return ChannelResult(self.name, image=image, meta=dict(self.meta))
        px = image[covered] if covered is not None and covered.any() else image.reshape(-1, image.shape[-1])
        if len(px) and float((px.max(0).astype(np.float32) - px.min(0)).max()) / 255.0 <= self.constant_tol:
            return ChannelResult(self.name, constant=px.mean(0, dtype=np.float64).astype(np.float32) / 255.0, meta=dict(self.meta))
        return ChannelResult(self.name, image=image, meta=dict(self.meta))

    @classmethod
    def gltf(cls, res: ChannelResult, material: dict, add_texture: AddTexture) -> None:
        """Write this channel's part of the glTF material (from the result alone: res.meta holds settings)."""
        raise NotImplementedError


def combined_alpha_mode(materials) -> tuple[str, float]:
    modes = [m.alpha_mode for m in materials]
    if "BLEND" in modes:
        return "BLEND", 0.5
    if "MASK" in modes:
        return "MASK", float(min(m.alpha_cutoff for m in materials if m.alpha_mode == "MASK"))
    return "OPAQUE", 0.5


class BaseChannel(Channel):
    """Base colour = factor x base texture x vertex colour (linear products), stored sRGB; alpha likewise,
    for materials whose alphaMode is not OPAQUE (glTF ignores alpha there)."""

    name = "base"
    size = 4
    fill = (0.5, 0.5, 0.5, 1.0)
    always_texture = True  # artists paint on it; a factor-only base is a surprise
    view_fit = True

    def __init__(self, surface):
        super().__init__(surface)
        self.alpha_mode, self.alpha_cutoff = combined_alpha_mode(surface.materials)
        self.out_size = 4 if self.alpha_mode != "OPAQUE" else 3
        self.meta.update(alpha_mode=self.alpha_mode, alpha_cutoff=self.alpha_cutoff)

    @classmethod
    def present(cls, src) -> bool:
        return True

    def sample(self, face, bary):
        s = self.surface
        fac = s.material_table("base_factor", lambda m: m.base_color_factor)
        one = len(s.materials) == 1  # one material: its row, no per-hit lookups
        lin = fac[0].expand(face.shape[0], 4).clone() if one else fac[s.face_mat[face]].clone()  # (K,4) linear

        def apply(mi, m, sel):
            t = s.sample(m.base_ref, face[sel], bary[sel], srgb=True)
            if t is None:
                return
            c = t.shape[1]
            rgb = t[:, :3] if c >= 3 else t[:, :1].expand(-1, 3)
            a = t[:, 3] if c == 4 else (t[:, 1] if c == 2 else torch.ones_like(t[:, 0]))
            lin[sel, :3] *= rgb
            lin[sel, 3] *= a

        s.per_material(face, lambda m: m.base_ref, apply)
        v = s.vertex_color_at(face, bary)
        if v is not None:
            lin[:, :3] *= v[:, :3]
            if v.shape[1] > 3:
                lin[:, 3] *= v[:, 3]
        if all(m.alpha_mode == "OPAQUE" for m in s.materials):
            alpha = torch.ones_like(lin[:, 3])
        else:
            opaque = s.material_table("opaque", lambda m: [1.0 if m.alpha_mode == "OPAQUE" else 0.0])[s.face_mat[face], 0]
            alpha = torch.where(opaque > 0, torch.ones_like(lin[:, 3]), lin[:, 3].clamp(0.0, 1.0))
        return torch.cat([linear_to_srgb_t(lin[:, :3]), alpha[:, None]], 1)

    @classmethod
    def gltf(cls, res, material, add_texture):
        pbr = material.setdefault("pbrMetallicRoughness", {})
        img = res.image if res.image is not None else np.broadcast_to(np.round(np.asarray(res.constant) * 255).astype(np.uint8), (4, 4, len(res.constant))).copy()
        pbr["baseColorTexture"] = {"index": add_texture(img, "basecolor")}
        pbr["baseColorFactor"] = [1.0, 1.0, 1.0, 1.0]
        mode = res.meta.get("alpha_mode", "OPAQUE")
        if mode != "OPAQUE":
            material["alphaMode"] = mode
            if mode == "MASK":
                material["alphaCutoff"] = float(res.meta.get("alpha_cutoff", 0.5))
