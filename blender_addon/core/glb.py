"""Read the baked material of an engine result GLB (standard library only, no bpy).

Used in the "Active" target mode, where the result object is a copy of the artist's
own low-poly and only the baked maps are taken from the engine's GLB: this module
pulls the first material's glTF metallic-roughness channels (textures as their
encoded PNG/JPEG bytes, and factors) out of the file without importing it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from .client import EngineError

GLB_MAGIC = 0x46546C67
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942


class Channel(str, Enum):
    """The baked maps, by their name in the engine's `maps` option."""

    BASE = "base"
    NORMAL = "normal"
    ORM = "orm"
    EMISSIVE = "emissive"


@dataclass
class Texture:
    data: bytes  # encoded image (PNG or JPEG)
    mime: str
    name: str
    texcoord: int = 0

    @property
    def extension(self) -> str:
        return ".jpg" if self.mime == "image/jpeg" else ".png"


@dataclass
class BakedMaterial:
    """glTF metallic-roughness material: every texture is optional, factors always present."""

    name: str = "material"
    base_color: Optional[Texture] = None
    base_color_factor: tuple = (1.0, 1.0, 1.0, 1.0)
    metallic_roughness: Optional[Texture] = None  # G = roughness, B = metallic
    metallic_factor: float = 1.0
    roughness_factor: float = 1.0
    occlusion: Optional[Texture] = None  # R = occlusion (usually the same image as metallic_roughness)
    normal: Optional[Texture] = None
    normal_scale: float = 1.0
    emissive: Optional[Texture] = None
    emissive_factor: tuple = (0.0, 0.0, 0.0)
    alpha_mode: str = "OPAQUE"
    alpha_cutoff: float = 0.5
    double_sided: bool = False
    extras: dict = field(default_factory=dict)

    def channels(self) -> dict:
        """Channel -> "texture" | "factor" (what the artist gets)."""
        out = {Channel.BASE: "texture" if self.base_color else "factor"}
        out[Channel.ORM] = "texture" if (self.metallic_roughness or self.occlusion) else "factor"
        if self.normal is not None:
            out[Channel.NORMAL] = "texture"
        if self.emissive is not None or any(c > 0 for c in self.emissive_factor):
            out[Channel.EMISSIVE] = "texture" if self.emissive else "factor"
        return out


def read_glb(path: str) -> tuple[dict, bytes]:
    """(glTF JSON, BIN chunk) of a GLB file; EngineError when it is not one."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise EngineError(f"cannot read the result {path}: {e.strerror or e}", code="bad_result") from None
    if len(data) < 20:
        raise EngineError("the engine's result is not a GLB file (too short)", code="bad_result")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2:
        raise EngineError("the engine's result is not a glTF 2.0 binary (GLB)", code="bad_result")
    pos, gltf, binary = 12, None, b""
    end = min(length, len(data))
    while pos + 8 <= end:
        clen, ctype = struct.unpack_from("<II", data, pos)
        chunk = data[pos + 8: pos + 8 + clen]
        if ctype == CHUNK_JSON and gltf is None:
            try:
                gltf = json.loads(chunk.decode("utf-8"))
            except ValueError as e:
                raise EngineError(f"the engine's result has a broken glTF JSON chunk: {e}", code="bad_result") from None
        elif ctype == CHUNK_BIN and not binary:
            binary = chunk
        pos += 8 + clen + (-clen % 4)
    if not isinstance(gltf, dict):
        raise EngineError("the engine's result has no glTF JSON chunk", code="bad_result")
    return gltf, binary


def _texture(gltf: dict, binary: bytes, info: Optional[dict], fallback_name: str) -> Optional[Texture]:
    if not isinstance(info, dict) or "index" not in info:
        return None
    try:
        tex = gltf["textures"][info["index"]]
        img = gltf["images"][tex["source"]]
        if "bufferView" not in img:
            raise EngineError("the engine's result refers to an external image", hint="update the engine", code="bad_result")
        view = gltf["bufferViews"][img["bufferView"]]
        if view.get("buffer", 0) != 0:
            raise EngineError("the engine's result keeps an image outside its BIN chunk", code="bad_result")
        start = int(view.get("byteOffset", 0))
        data = binary[start: start + int(view["byteLength"])]
    except (KeyError, IndexError, TypeError, ValueError):
        raise EngineError("the engine's result has a broken texture reference", hint="update the engine", code="bad_result") from None
    mime = img.get("mimeType") or ("image/jpeg" if data[:2] == b"\xff\xd8" else "image/png")
    return Texture(data=bytes(data), mime=mime, name=str(img.get("name") or fallback_name), texcoord=int(info.get("texCoord", 0)))


def read_baked_material(path: str) -> BakedMaterial:
    """The first material of the GLB at ``path`` (the engine writes exactly one)."""
    gltf, binary = read_glb(path)
    mats = gltf.get("materials") or []
    if not mats:
        raise EngineError("the engine's result has no material", hint="update the engine; the result GLB is kept in the job folder", code="bad_result")
    m = mats[0]
    pbr = m.get("pbrMetallicRoughness") or {}
    out = BakedMaterial(name=str(m.get("name") or "material"))
    out.base_color = _texture(gltf, binary, pbr.get("baseColorTexture"), "basecolor")
    out.base_color_factor = tuple(float(x) for x in pbr.get("baseColorFactor", (1.0, 1.0, 1.0, 1.0)))
    out.metallic_roughness = _texture(gltf, binary, pbr.get("metallicRoughnessTexture"), "orm")
    out.metallic_factor = float(pbr.get("metallicFactor", 1.0))
    out.roughness_factor = float(pbr.get("roughnessFactor", 1.0))
    occ = m.get("occlusionTexture")
    if isinstance(occ, dict) and isinstance(pbr.get("metallicRoughnessTexture"), dict) and occ.get("index") == pbr["metallicRoughnessTexture"].get("index"):
        out.occlusion = out.metallic_roughness  # one ORM image
    else:
        out.occlusion = _texture(gltf, binary, occ, "occlusion")
    out.normal = _texture(gltf, binary, m.get("normalTexture"), "normal")
    if isinstance(m.get("normalTexture"), dict):
        out.normal_scale = float(m["normalTexture"].get("scale", 1.0))
    out.emissive = _texture(gltf, binary, m.get("emissiveTexture"), "emissive")
    out.emissive_factor = tuple(float(x) for x in m.get("emissiveFactor", (0.0, 0.0, 0.0)))
    out.alpha_mode = str(m.get("alphaMode", "OPAQUE")).upper()
    out.alpha_cutoff = float(m.get("alphaCutoff", 0.5))
    out.double_sided = bool(m.get("doubleSided", False))
    out.extras = m.get("extras") if isinstance(m.get("extras"), dict) else {}
    return out
