"""Held-out bake sources for the material tests, written as GLB by this file (not by engine.io.export).

  ridged_blob      327K-face icosphere with ridges and dimples (shading detail the low-poly loses)
  grooved_box      ~400K-face rounded box with grooves and studs
  hard_cube        a subdivided cube with split (flat) normals: hard edges only
  normal_mapped    a smooth sphere whose detail lives in its own tangent-space normal map (+ TANGENTs)
  two_material     a painted body (base texture, roughness stripes, a metal disc, emissive spots, a
                   normal map) and a gold fin with an alpha cut-out (MASK), two primitives
Every texture is procedural; colours are authored in sRGB where glTF stores sRGB.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np


# ---------------------------------------------------------------------------------------------- geometry
def icosphere(subdivisions: int):
    from engine.samples import _icosphere

    return _icosphere(subdivisions)


def smooth_normals(v, f):
    t = v[f]
    fn = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def ridged_blob(subdivisions: int = 7):
    v, f = icosphere(subdivisions)
    lat = np.arcsin(np.clip(v[:, 1], -1, 1))
    lon = np.arctan2(v[:, 2], v[:, 0])
    ridges = 0.035 * np.sin(lat * 22.0) ** 3
    dimples = -0.05 * np.exp(-6.0 * (1.0 - np.cos(lon * 7.0) * np.cos(lat * 9.0)) ** 2)
    r = 1.0 + 0.12 * np.sin(3 * v[:, 0] + 1) * np.cos(2 * v[:, 2]) + ridges + dimples
    p = v * r[:, None]
    return p.astype(np.float32), f.astype(np.int64)


def cube_grid_faces(n: int):
    """The six faces of the cube [-1,1]^3 as (n+1)^2-vertex grids: [(axis, sign, points (K,3), triangles)]."""
    g = np.linspace(-1, 1, n + 1)
    a, b = np.meshgrid(g, g, indexing="ij")
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    q = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    tri = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    out = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            pts = np.zeros((n + 1, n + 1, 3))
            o = [i for i in range(3) if i != axis]
            pts[..., axis] = sign
            pts[..., o[0]] = a
            pts[..., o[1]] = b
            p = pts.reshape(-1, 3)
            t = p[tri]
            outward = (np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])[:, axis] * sign).sum() > 0
            out.append((axis, sign, p, tri if outward else tri[:, [0, 2, 1]]))
    return out


def grooved_box(n: int = 183):
    """A rounded box (superellipsoid from a subdivided cube) with grooves and studs."""
    faces_v, faces_f = [], []
    off = 0
    for _, _, p, tri in cube_grid_faces(n):
        faces_v.append(p)
        faces_f.append(tri + off)
        off += len(p)
    v = np.concatenate(faces_v)
    f = np.concatenate(faces_f)
    from engine.mesh.simplify import weld

    v, f = weld(v.astype(np.float32), f)
    v = v.astype(np.float64)
    # rounded box: superellipsoid-ish projection
    e = 8.0
    r = (np.abs(v) ** e).sum(1) ** (1 / e)
    p = v / r[:, None] * np.array([1.4, 0.8, 1.0])
    nrm = smooth_normals(p, f)
    # grooves along x on the top/bottom, studs on the sides
    groove = -0.035 * (np.cos(p[:, 0] * 9.0) > 0.8) * (np.abs(p[:, 1]) > 0.6)
    studs = 0.05 * np.exp(-30.0 * ((np.sin(p[:, 0] * 4.0)) ** 2 + (np.sin(p[:, 1] * 5.0)) ** 2)) * (np.abs(p[:, 2]) > 0.8)
    p = p + nrm * (groove + studs)[:, None]
    if (np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]]) * (p[f].mean(1))).sum() < 0:
        f = f[:, [0, 2, 1]]
    return p.astype(np.float32), f.astype(np.int64)


def hard_cube(n: int = 40):
    """A cube of 6 * 2 * n^2 faces with per-face-split (flat) normals."""
    V, F, N = [], [], []
    off = 0
    for axis, sign, p, tri in cube_grid_faces(n):
        nn = np.zeros_like(p)
        nn[:, axis] = sign
        V.append(p)
        F.append(tri + off)
        N.append(nn)
        off += len(p)
    return np.concatenate(V).astype(np.float32), np.concatenate(F).astype(np.int64), np.concatenate(N).astype(np.float32)


def sphere_uv(n_lat=96, n_lon=192):
    """UV sphere with a seam (u 0..1 around, v 0..1 top to bottom, glTF convention) and its normals."""
    th = np.linspace(0, np.pi, n_lat + 1)
    ph = np.linspace(0, 2 * np.pi, n_lon + 1)
    T, P = np.meshgrid(th, ph, indexing="ij")
    v = np.stack([np.sin(T) * np.cos(P), np.cos(T), -np.sin(T) * np.sin(P)], -1).reshape(-1, 3)
    uv = np.stack([P / (2 * np.pi), T / np.pi], -1).reshape(-1, 2)
    idx = np.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    q = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    f = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    t = v[f]
    area = np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)
    f = f[area > 1e-12]
    if (np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]) * v[f].mean(1)).sum() < 0:
        f = f[:, [0, 2, 1]]
    return v.astype(np.float32), f.astype(np.int64), uv.astype(np.float32), v.astype(np.float32).copy()


def sphere_tangents(v):
    """Analytic tangents of sphere_uv (d/du direction), w = +1 for its UV layout (checked in the tests)."""
    t = np.stack([-v[:, 2], np.zeros(len(v)), -v[:, 0]], 1) * -1.0
    ln = np.linalg.norm(t, axis=1, keepdims=True)
    t = np.where(ln > 1e-6, t / np.maximum(ln, 1e-12), np.array([[1.0, 0, 0]]))
    return t


# ---------------------------------------------------------------------------------------------- textures
def height_normal_map(h: np.ndarray, strength: float) -> np.ndarray:
    """Tangent-space normal map (uint8, +Y up the image) of a height field h (H,W) in texels."""
    dx = (np.roll(h, -1, 1) - np.roll(h, 1, 1)) * 0.5 * strength
    dy = (np.roll(h, -1, 0) - np.roll(h, 1, 0)) * 0.5 * strength
    n = np.stack([-dx, dy, np.ones_like(h)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return np.round((n * 0.5 + 0.5) * 255).astype(np.uint8)


def bumps(size: int, freq: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return (np.sin(2 * np.pi * freq * x) * np.sin(2 * np.pi * freq * y * 0.5)) ** 2


# ------------------------------------------------------------------------------------------ GLB writing
def write_glb(path, parts, materials):
    """parts: [{"v","f","n"?,"uv"?,"t"?(N,4),"material": index}], materials: glTF material dicts whose texture
    slots hold {"image": uint8 array, "texCoord"?: k, "scale"?/"strength"?} instead of indices."""
    blobs, accessors, views, images, textures = [], [], [], [], []

    def add(arr, comp, typ, target=None, minmax=False):
        b = np.ascontiguousarray(arr).tobytes()
        off = sum(len(x) for x in blobs)
        blobs.append(b + b"\x00" * ((4 - len(b) % 4) % 4))
        vw = {"buffer": 0, "byteOffset": off, "byteLength": len(b)}
        if target:
            vw["target"] = target
        views.append(vw)
        a = {"bufferView": len(views) - 1, "componentType": comp, "count": int(arr.shape[0]), "type": typ}
        if minmax:
            a["min"] = arr.min(0).tolist()
            a["max"] = arr.max(0).tolist()
        accessors.append(a)
        return len(accessors) - 1

    def add_image(img):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img, np.uint8)).save(buf, format="PNG")
        png = buf.getvalue()
        off = sum(len(x) for x in blobs)
        blobs.append(png + b"\x00" * ((4 - len(png) % 4) % 4))
        views.append({"buffer": 0, "byteOffset": off, "byteLength": len(png)})
        images.append({"bufferView": len(views) - 1, "mimeType": "image/png"})
        textures.append({"source": len(images) - 1, "sampler": 0})
        return len(textures) - 1

    mats = json.loads(json.dumps(materials, default=lambda o: None))  # deep copy without arrays
    for mj, m in zip(mats, materials):
        for holder_j, holder in ((mj, m), (mj.get("pbrMetallicRoughness", {}), m.get("pbrMetallicRoughness", {}))):
            for key, val in list(holder.items()):
                if isinstance(val, dict) and "image" in val:
                    info = {k: v for k, v in val.items() if k != "image"}
                    info["index"] = add_image(val["image"])
                    holder_j[key] = info
    prims = []
    for part in parts:
        attrs = {"POSITION": add(np.asarray(part["v"], np.float32), 5126, "VEC3", 34962, True)}
        if part.get("n") is not None:
            attrs["NORMAL"] = add(np.asarray(part["n"], np.float32), 5126, "VEC3", 34962)
        if part.get("t") is not None:
            attrs["TANGENT"] = add(np.asarray(part["t"], np.float32), 5126, "VEC4", 34962)
        if part.get("uv") is not None:
            attrs["TEXCOORD_0"] = add(np.asarray(part["uv"], np.float32), 5126, "VEC2", 34962)
        prims.append({"attributes": attrs, "indices": add(np.asarray(part["f"], np.uint32).reshape(-1), 5125, "SCALAR", 34963),
                      "material": part.get("material", 0), "mode": 4})
    binbuf = b"".join(blobs)
    gltf = {"asset": {"version": "2.0", "generator": "kiln tests"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "src"}],
            "meshes": [{"primitives": prims}], "materials": mats, "accessors": accessors, "bufferViews": views,
            "buffers": [{"byteLength": len(binbuf)}]}
    if textures:
        gltf["textures"] = textures
        gltf["images"] = images
        gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9987}]
    exts = sorted({e for m in mats for e in (m.get("extensions") or {})})
    if exts:
        gltf["extensionsUsed"] = exts
    js = json.dumps(gltf).encode()
    js += b" " * ((4 - len(js) % 4) % 4)
    total = 12 + 8 + len(js) + 8 + len(binbuf)
    data = struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(binbuf), 0x004E4942) + binbuf
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def plain(name="plain", base=(0.6, 0.6, 0.6, 1.0), metallic=0.0, roughness=0.5):
    return {"name": name, "pbrMetallicRoughness": {"baseColorFactor": list(base), "metallicFactor": metallic, "roughnessFactor": roughness}}


def make(name: str, path):
    """Write source ``name`` to ``path`` (a .glb)."""
    if name == "ridged_blob":
        v, f = ridged_blob()
        return write_glb(path, [{"v": v, "f": f, "n": smooth_normals(v, f)}], [plain()])
    if name == "grooved_box":
        v, f = grooved_box()
        return write_glb(path, [{"v": v, "f": f, "n": smooth_normals(v, f)}], [plain(base=(0.5, 0.55, 0.6, 1))])
    if name == "hard_cube":
        v, f, n = hard_cube()
        return write_glb(path, [{"v": v, "f": f, "n": n}], [plain(base=(0.7, 0.5, 0.3, 1))])
    if name == "normal_mapped":
        v, f, uv, n = sphere_uv(64, 128)
        nm = height_normal_map(bumps(1024, 12.0) * 6.0, 1.0)
        return write_glb(path, [{"v": v, "f": f, "n": n, "uv": uv}],
                         [{"name": "nm", "pbrMetallicRoughness": {"baseColorFactor": [0.7, 0.7, 0.7, 1], "metallicFactor": 0.0, "roughnessFactor": 0.6},
                           "normalTexture": {"image": nm, "scale": 1.0}}])
    if name == "two_material":
        return _two_material(path)
    if name == "pbr_body":  # the two-material object's body alone: every channel, no intersecting parts
        return _two_material(path, fin=False)
    raise KeyError(name)


def _two_material(path, fin: bool = True):
    S = 512
    y, x = np.mgrid[0:S, 0:S] / S
    # body: painted stripes (sRGB), roughness stripes, a metal disc, emissive spots, a bumpy normal map
    paint = np.stack([0.75 + 0.2 * np.sin(2 * np.pi * 3 * x), 0.35 + 0.25 * (np.sin(2 * np.pi * 5 * y) > 0), 0.2 + 0.1 * x], -1)
    disc = ((x - 0.3) ** 2 + (y - 0.5) ** 2) < 0.12 ** 2
    base = np.round(np.clip(paint, 0, 1) * 255).astype(np.uint8)
    base[disc] = (200, 200, 210)
    rough = np.where(np.sin(2 * np.pi * 8 * x) > 0, 0.25, 0.85)
    rough[disc] = 0.2
    metal = disc.astype(np.float64)
    mr = np.stack([np.zeros_like(rough), rough, metal], -1)
    mr = np.round(mr * 255).astype(np.uint8)
    spots = ((np.sin(2 * np.pi * 6 * x) * np.sin(2 * np.pi * 3 * y)) > 0.85) & ~disc
    emis = np.zeros((S, S, 3), np.uint8)
    emis[spots] = (255, 180, 60)
    nm = height_normal_map(bumps(S, 10.0) * 4.0, 1.0)
    body_v, body_f, body_uv, body_n = sphere_uv(96, 192)
    # fin: a thin slab above the body, gold, with a cut-out pattern in its alpha
    fv, ff, fn = hard_cube(6)
    fv = fv * np.array([0.05, 0.45, 0.6], np.float32) + np.array([0.0, 1.35, 0.0], np.float32)
    fuv = np.stack([(fv[:, 2] + 0.6) / 1.2, 1.0 - (fv[:, 1] - 0.9) / 0.9], 1).astype(np.float32)
    holes = (((np.sin(2 * np.pi * 4 * x) * np.sin(2 * np.pi * 4 * y)) > 0.3)).astype(np.float64)
    fin_base = np.zeros((S, S, 4), np.uint8)
    fin_base[..., :3] = (255, 200, 90)
    fin_base[..., 3] = np.round((1.0 - holes) * 255).astype(np.uint8)
    mats = [
        {"name": "body", "pbrMetallicRoughness": {"baseColorTexture": {"image": base}, "metallicFactor": 1.0, "roughnessFactor": 1.0,
                                                  "metallicRoughnessTexture": {"image": mr}},
         "normalTexture": {"image": nm, "scale": 1.0}, "emissiveTexture": {"image": emis}, "emissiveFactor": [1.0, 1.0, 1.0],
         "extensions": {"KHR_materials_emissive_strength": {"emissiveStrength": 3.0}}},
        {"name": "gold_fin", "pbrMetallicRoughness": {"baseColorFactor": [1.0, 0.78, 0.35, 1.0], "baseColorTexture": {"image": fin_base},
                                                      "metallicFactor": 1.0, "roughnessFactor": 0.3},
         "alphaMode": "MASK", "alphaCutoff": 0.5},
    ]
    parts = [{"v": body_v, "f": body_f, "n": body_n, "uv": body_uv, "material": 0}]
    if fin:
        parts.append({"v": fv, "f": ff, "n": fn, "uv": fuv, "material": 1})
    return write_glb(path, parts, mats if fin else mats[:1])
