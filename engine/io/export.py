"""Write the baked result as a GLB: one mesh with UVs and normals, a PBR
metallic-roughness material (baseColorTexture PNG, metallic 0, roughness 1).

The mesh stays in the source's coordinate frame: no recentring or rescaling.
The file is written to a temporary name and renamed, so a reader never sees
half a GLB.
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


def glb_bytes(vertices, faces, uv, texture, normals=None, name: str = "kiln") -> bytes:
    from engine.bake.texel import vertex_normals

    v = np.ascontiguousarray(vertices, np.float32)
    f = np.ascontiguousarray(faces, np.uint32)
    t = np.ascontiguousarray(uv, np.float32)
    n = np.ascontiguousarray(normals if normals is not None else vertex_normals(v, faces), np.float32)
    png = png_bytes(texture)
    blobs = [f.tobytes(), v.tobytes(), n.tobytes(), t.tobytes(), png]
    views, off = [], 0
    binbuf = b""
    for i, blob in enumerate(blobs):
        views.append({"buffer": 0, "byteOffset": off, "byteLength": len(blob)})
        if i == 0:
            views[-1]["target"] = 34963
        elif i < 4:
            views[-1]["target"] = 34962
        padded = _pad4(blob)
        binbuf += padded
        off += len(padded)
    gltf = {
        "asset": {"version": "2.0", "generator": f"Kiln {__version__}"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [
            {
                "name": name,
                "primitives": [{"attributes": {"POSITION": 1, "NORMAL": 2, "TEXCOORD_0": 3}, "indices": 0, "material": 0, "mode": 4}],
            }
        ],
        "materials": [
            {
                "name": f"{name}_baked",
                "pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0, "roughnessFactor": 1.0},
                "doubleSided": False,
            }
        ],
        "textures": [{"source": 0, "sampler": 0}],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"bufferView": 4, "mimeType": "image/png", "name": f"{name}_basecolor"}],
        "accessors": [
            {"bufferView": 0, "componentType": 5125, "count": int(f.size), "type": "SCALAR", "min": [int(f.min())], "max": [int(f.max())]},
            {"bufferView": 1, "componentType": 5126, "count": len(v), "type": "VEC3", "min": v.min(0).tolist(), "max": v.max(0).tolist()},
            {"bufferView": 2, "componentType": 5126, "count": len(n), "type": "VEC3"},
            {"bufferView": 3, "componentType": 5126, "count": len(t), "type": "VEC2", "min": t.min(0).tolist(), "max": t.max(0).tolist()},
        ],
        "bufferViews": views,
        "buffers": [{"byteLength": len(binbuf)}],
    }
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


def write_glb(path, vertices, faces, uv, texture, normals=None, name: str = "kiln") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = glb_bytes(vertices, faces, uv, texture, normals, name)
    atomic_write(path, data)  # exclusive temp file in the target folder + rename: never follows a planted link
    return path
