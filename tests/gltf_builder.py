"""Build small glTF/GLB files for tests (independent of engine.io.export)."""

from __future__ import annotations

import io
import json
import struct

import numpy as np


def make_glb(
    vertices,
    faces,
    *,
    colors=None,  # (N,3|4) float LINEAR, written as COLOR_0 float
    colors_u8=None,  # (N,4) uint8 normalized COLOR_0
    uv=None,  # (N,2) glTF convention
    texture=None,  # (H,W,3|4) uint8 sRGB
    factor=None,  # baseColorFactor (4,) linear
    matrix=None,  # node matrix (4,4) row-major
    mode: int = 4,
    index_dtype=np.uint32,
    with_material: bool = True,
) -> bytes:
    v = np.ascontiguousarray(vertices, np.float32)
    f = np.ascontiguousarray(faces, index_dtype).reshape(-1)
    blobs, accessors, views = [], [], []

    def add(arr, comp, typ, normalized=False, minmax=False):
        b = np.ascontiguousarray(arr).tobytes()
        off = sum(len(x) for x in blobs)
        blobs.append(b + b"\x00" * ((4 - len(b) % 4) % 4))
        views.append({"buffer": 0, "byteOffset": off, "byteLength": len(b)})
        a = {"bufferView": len(views) - 1, "componentType": comp, "count": int(arr.shape[0]), "type": typ}
        if normalized:
            a["normalized"] = True
        if minmax:
            a["min"] = arr.min(0).tolist()
            a["max"] = arr.max(0).tolist()
        accessors.append(a)
        return len(accessors) - 1

    comp_idx = {np.uint32: 5125, np.uint16: 5123, np.uint8: 5121}[index_dtype]
    attrs = {"POSITION": add(v, 5126, "VEC3", minmax=True)}
    prim = {"attributes": attrs, "mode": mode}
    if len(f):
        prim["indices"] = add(f, comp_idx, "SCALAR")
    if colors is not None:
        c = np.ascontiguousarray(colors, np.float32)
        attrs["COLOR_0"] = add(c, 5126, "VEC3" if c.shape[1] == 3 else "VEC4")
    if colors_u8 is not None:
        attrs["COLOR_0"] = add(np.ascontiguousarray(colors_u8, np.uint8), 5121, "VEC4", normalized=True)
    if uv is not None:
        attrs["TEXCOORD_0"] = add(np.ascontiguousarray(uv, np.float32), 5126, "VEC2")
    gltf = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}], "meshes": [{"primitives": [prim]}]}
    if matrix is not None:
        gltf["nodes"][0]["matrix"] = np.asarray(matrix, np.float64).T.reshape(-1).tolist()
    if with_material:
        pbr = {"metallicFactor": 0.0}
        if factor is not None:
            pbr["baseColorFactor"] = [float(x) for x in factor]
        if texture is not None:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(np.asarray(texture, np.uint8)).save(buf, format="PNG")
            png = buf.getvalue()
            off = sum(len(x) for x in blobs)
            blobs.append(png + b"\x00" * ((4 - len(png) % 4) % 4))
            views.append({"buffer": 0, "byteOffset": off, "byteLength": len(png)})
            gltf["images"] = [{"bufferView": len(views) - 1, "mimeType": "image/png"}]
            gltf["textures"] = [{"source": 0}]
            pbr["baseColorTexture"] = {"index": 0}
        gltf["materials"] = [{"pbrMetallicRoughness": pbr}]
        prim["material"] = 0
    binbuf = b"".join(blobs)
    gltf["accessors"] = accessors
    gltf["bufferViews"] = views
    gltf["buffers"] = [{"byteLength": len(binbuf)}]
    js = json.dumps(gltf).encode()
    js += b" " * ((4 - len(js) % 4) % 4)
    total = 12 + 8 + len(js) + 8 + len(binbuf)
    return struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(binbuf), 0x004E4942) + binbuf


def uv_sphere(n_lat: int = 24, n_lon: int = 48, radius: float = 1.0):
    """Closed UV sphere (poles welded): vertices (N,3), faces (M,3)."""
    lat = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    ring = np.stack([np.sin(la) * np.cos(lo), np.cos(la), np.sin(la) * np.sin(lo)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]) * radius
    faces = []
    top, bot = 0, len(v) - 1
    idx = lambda i, j: 1 + i * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        faces.append([top, idx(0, j + 1), idx(0, j)])
        faces.append([bot, idx(n_lat - 2, j), idx(n_lat - 2, j + 1)])
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b, c, d = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            faces.append([a, b, d])
            faces.append([a, d, c])
    return v.astype(np.float32), np.asarray(faces, np.int64)
