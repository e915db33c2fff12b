"""Write the baked result as a GLB: one mesh (positions, normals, MikkTSpace tangents, UVs) and one
glTF metallic-roughness material assembled from the baked channels.

Each channel (engine.bake.channels) writes its own part of the material --
``baseColorTexture`` (RGBA where the source has alpha, with its alphaMode),
``normalTexture``, ``metallicRoughnessTexture`` + ``occlusionTexture`` on one
ORM image, ``emissiveTexture`` + factor + KHR_materials_emissive_strength --
or plain factors where the channel is constant. Textures are PNG, all on
TEXCOORD_0, clamped, trilinear.

The mesh stays in the source's (or target's) coordinate frame: no recentring
or rescaling. The file is written to an exclusively created temporary file
and renamed, so a reader never sees half a GLB.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np

from engine import __version__
from engine.io.safety import atomic_write


def _pad4(b: bytes, fill: bytes = b"\x00") -> bytes:
    return b + fill * ((4 - len(b) % 4) % 4)


def png_bytes(texture: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(texture)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _as_channels(textures) -> dict:
    from engine.bake.channels.base import ChannelResult

    if isinstance(textures, dict):
        return textures
    return {"base": ChannelResult("base", image=np.asarray(textures, np.uint8))}


def glb_bytes(vertices, faces, uv, textures, normals=None, name: str = "kiln", tangents=None) -> bytes:
    """``textures``: {channel name: ChannelResult} (or one uint8 base-colour image)."""
    from engine.bake.channels import channel_class
    from engine.bake.texel import vertex_normals

    channels = _as_channels(textures)
    v = np.ascontiguousarray(vertices, np.float32)
    f = np.ascontiguousarray(faces, np.uint32)
    t = np.ascontiguousarray(uv, np.float32)
    n = np.ascontiguousarray(normals if normals is not None else vertex_normals(v, faces), np.float32)
    blobs = [f.tobytes(), v.tobytes(), n.tobytes(), t.tobytes()]
    attrs = {"POSITION": 1, "NORMAL": 2, "TEXCOORD_0": 3}
    accessors = [
        {"bufferView": 0, "componentType": 5125, "count": int(f.size), "type": "SCALAR", "min": [int(f.min())], "max": [int(f.max())]},
        {"bufferView": 1, "componentType": 5126, "count": len(v), "type": "VEC3", "min": v.min(0).tolist(), "max": v.max(0).tolist()},
        {"bufferView": 2, "componentType": 5126, "count": len(n), "type": "VEC3"},
        {"bufferView": 3, "componentType": 5126, "count": len(t), "type": "VEC2", "min": t.min(0).tolist(), "max": t.max(0).tolist()},
    ]
    images, textures_js = [], []

    def add_texture(img: np.ndarray, suffix: str) -> int:
        blobs.append(png_bytes(img))
        images.append({"bufferView": len(blobs) - 1, "mimeType": "image/png", "name": f"{name}_{suffix}"})
        textures_js.append({"source": len(images) - 1, "sampler": 0})
        return len(textures_js) - 1

    material = {"name": f"{name}_baked", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0, "roughnessFactor": 1.0},
                "doubleSided": False}
    for cname, res in channels.items():
        channel_class(cname).gltf(res, material, add_texture)
    if "normalTexture" in material and tangents is not None:
        tg = np.ascontiguousarray(tangents, np.float32)
        blobs.insert(4, tg.tobytes())  # keep vertex data before the images
        for im in images:
            im["bufferView"] += 1
        accessors.append({"bufferView": 4, "componentType": 5126, "count": len(tg), "type": "VEC4"})
        attrs["TANGENT"] = len(accessors) - 1
    views, off, binbuf = [], 0, b""
    n_vertex_blobs = len(blobs) - len(images)
    for i, blob in enumerate(blobs):
        views.append({"buffer": 0, "byteOffset": off, "byteLength": len(blob)})
        if i == 0:
            views[-1]["target"] = 34963
        elif i < n_vertex_blobs:
            views[-1]["target"] = 34962
        padded = _pad4(blob)
        binbuf += padded
        off += len(padded)
    gltf = {
        "asset": {"version": "2.0", "generator": f"Kiln {__version__}"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{"attributes": attrs, "indices": 0, "material": 0, "mode": 4}]}],
        "materials": [material],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(binbuf)}],
    }
    if textures_js:
        gltf["textures"] = textures_js
        gltf["images"] = images
        gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
    used = sorted({k for k in (material.get("extensions") or {})})
    if used:
        gltf["extensionsUsed"] = used
    js = _pad4(json.dumps(gltf, separators=(",", ":")).encode("utf-8"), b" ")
    total = 12 + 8 + len(js) + 8 + len(binbuf)
    return b"".join(
        [
            struct.pack("<III", 0x46546C67, 2, total),
            struct.pack("<II", len(js), 0x4E4F534A),
            js,
            struct.pack("<II", len(binbuf), 0x004E4942),
            binbuf,
        ]
    )


def write_glb(path, vertices, faces, uv, textures, normals=None, name: str = "kiln", tangents=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = glb_bytes(vertices, faces, uv, textures, normals, name, tangents)
    atomic_write(path, data)  # exclusive temp file in the target folder + rename: never follows a planted link
    return path
