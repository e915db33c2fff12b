"""The in-memory form of a bake source: plain numpy arrays, and its whole PBR material.

Colour conventions (glTF's):
  * ``Material.base_color_factor``, ``Material.emissive_factor`` and
    ``SourceMesh.vertex_color`` are LINEAR.
  * ``Material.texture`` (base colour) and ``Material.emissive`` images are
    sRGB-encoded uint8; metallic-roughness (G = roughness, B = metallic),
    occlusion (R) and normal-map images are linear data.
  * UVs follow glTF: (u, v) with v = 0 at the TOP row of the texture image,
    i.e. texel row = v * H. Every module of Kiln uses this convention.
  * Normal maps are tangent space, +Y up (OpenGL / glTF / Blender), decoded
    as 2 * value - 1 and scaled in x, y by ``normal_scale``.
Shading (``shade``) returns sRGB base colours in [0, 1]; it is the ``base``
bake channel (engine.bake.channels) evaluated on the CPU, so the renderers,
the checks and the bake can never disagree about a colour.
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


ALPHA_MODES = ("OPAQUE", "MASK", "BLEND")


@dataclass
class TextureRef:
    """One texture slot of a material: the image, which UV set it reads, how it wraps, its UV transform."""

    image: np.ndarray  # uint8 (H, W) or (H, W, C), row 0 = v 0
    texcoord: int = 0
    wrap: str = "repeat"  # repeat | clamp | mirror
    transform: Optional[np.ndarray] = None  # (3, 2) affine of KHR_texture_transform: uv' = [u, v, 1] @ transform


@dataclass
class Material:
    name: str = "material"
    base_color_factor: np.ndarray = field(default_factory=lambda: np.ones(4, np.float32))
    texture: Optional[np.ndarray] = None  # base colour, uint8 (H, W, C) sRGB, row 0 = v 0
    wrap: str = "repeat"  # base colour texture wrap: repeat | clamp | mirror
    texcoord: int = 0  # base colour texture UV set
    transform: Optional[np.ndarray] = None  # base colour KHR_texture_transform (3, 2)
    metallic_factor: float = 0.0
    roughness_factor: float = 0.5
    metallic_roughness: Optional[TextureRef] = None  # G = roughness, B = metallic (linear)
    normal: Optional[TextureRef] = None  # tangent-space normal map (linear)
    normal_scale: float = 1.0
    occlusion: Optional[TextureRef] = None  # R = occlusion (linear)
    occlusion_strength: float = 1.0
    emissive_factor: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    emissive: Optional[TextureRef] = None  # sRGB
    emissive_strength: float = 1.0  # KHR_materials_emissive_strength
    alpha_mode: str = "OPAQUE"  # OPAQUE | MASK | BLEND
    alpha_cutoff: float = 0.5

    @property
    def base_ref(self) -> Optional[TextureRef]:
        if self.texture is None:
            return None
        return TextureRef(self.texture, self.texcoord, self.wrap, self.transform)

    def has_alpha(self) -> bool:
        return self.alpha_mode != "OPAQUE"

    def has_emission(self) -> bool:
        # glTF: emission = emissiveFactor * emissiveTexture * strength; the factor defaults to 0 (no emission)
        return self.emissive_strength > 0 and float(np.max(self.emissive_factor)) > 0

    def texture_refs(self) -> dict:
        refs = {"base": self.base_ref, "metallic_roughness": self.metallic_roughness, "normal": self.normal,
                "occlusion": self.occlusion, "emissive": self.emissive}
        return {k: v for k, v in refs.items() if v is not None}


@dataclass
class SourceMesh:
    vertices: np.ndarray  # (N, 3) float32, in the source's own (world) frame
    faces: np.ndarray  # (M, 3) int32
    uv: Optional[np.ndarray] = None  # (N, 2) float32, TEXCOORD_0, glTF convention
    vertex_color: Optional[np.ndarray] = None  # (N, 3|4) float32 linear (alpha in column 3)
    face_material: Optional[np.ndarray] = None  # (M,) int32 index into materials
    materials: list = field(default_factory=list)
    name: str = "source"
    normals: Optional[np.ndarray] = None  # (N, 3) float32 shading normals (glTF NORMAL: split where hard)
    tangents: Optional[np.ndarray] = None  # (N, 4) float32 glTF TANGENT (xyz, handedness w)
    extra_uvs: dict = field(default_factory=dict)  # {k: (N, 2)} for TEXCOORD_k, k >= 1
    ignored_features: list = field(default_factory=list)  # material features read but not baked (named in the report)
    vertex_color_interpolation: str = "linear"  # "srgb": vertex colours blend in sRGB (BakeOptions.vertex_color_interpolation)

    @property
    def n_faces(self) -> int:
        return int(len(self.faces))

    @property
    def has_texture(self) -> bool:
        return any(m.texture is not None for m in self.materials)

    def uv_set(self, k: int) -> Optional[np.ndarray]:
        return self.uv if k == 0 else self.extra_uvs.get(int(k))

    def bounds(self) -> np.ndarray:
        return np.stack([self.vertices.min(0), self.vertices.max(0)]).astype(np.float64)

    def appearance_kind(self) -> str:
        if self.has_texture and self.uv is not None:
            return "texture"
        if self.vertex_color is not None:
            return "vertex_color"
        return "material_color"


def shade(src: SourceMesh, face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """sRGB base colour (K, 3) in [0, 1] at points given by face index and barycentrics (K, 3)."""
    from engine.bake.channels import evaluate_points

    return evaluate_points(src, "base", face_idx, bary)[:, :3]
