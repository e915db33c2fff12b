"""A small, strict glTF 2.0 / GLB reader for bake sources.

Own reader (not trimesh's) so that colour spaces are exact: COLOR_0 stays a
float LINEAR colour, baseColorFactor is kept linear, baseColorTexture stays an
sRGB image; node transforms are applied; all primitives are merged.
Every problem raises InputError with a message naming it.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import numpy as np

from engine.errors import InputError
from engine.io.safety import MAX_GLTF_JSON_DEPTH, check_image_pixels, json_loads_limited
from engine.mesh.source import Material, SourceMesh

_CTYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_NORM_DIV = {np.int8: 127.0, np.uint8: 255.0, np.int16: 32767.0, np.uint16: 65535.0}
_WRAP = {33071: "clamp", 33648: "mirror", 10497: "repeat"}


class _Doc:
    def __init__(self, gltf: dict, bin_chunk: bytes | None, base_dir: Path | None, name: str):
        self.j = gltf
        self.bin = bin_chunk
        self.base = base_dir
        self.name = name
        self._buffers: dict[int, bytes] = {}

    def bad(self, what: str) -> InputError:
        return InputError(f"corrupt glTF '{self.name}': {what}", hint="re-export the file from your DCC tool", code="corrupt_file")

    def buffer(self, i: int) -> bytes:
        if i in self._buffers:
            return self._buffers[i]
        try:
            b = self.j["buffers"][i]
        except (KeyError, IndexError, TypeError):
            raise self.bad(f"buffer {i} missing")
        uri = b.get("uri")
        if uri is None:
            if self.bin is None:
                raise self.bad("GLB has no BIN chunk")
            data = self.bin
        elif uri.startswith("data:"):
            try:
                data = base64.b64decode(uri.split(",", 1)[1])
            except Exception:
                raise self.bad(f"buffer {i} has an invalid data URI")
        else:
            data = self._external(uri, f"buffer {i}")
        if len(data) < int(b.get("byteLength", 0)):
            raise self.bad(f"buffer {i} is truncated ({len(data)} of {b.get('byteLength')} bytes)")
        self._buffers[i] = data
        return data

    def _external(self, uri: str, what: str) -> bytes:
        from urllib.parse import unquote

        if self.base is None:
            raise InputError(f"{what} refers to an external file '{uri}'", hint="upload a .glb (or a .gltf with embedded data, or a zip of the folder)", code="missing_file")
        p = (self.base / unquote(uri)).resolve()
        try:
            p.relative_to(self.base.resolve())
        except ValueError:
            raise InputError(f"{what} points outside the model's folder: '{uri}'", code="bad_input")
        if not p.is_file():
            raise InputError(f"{what} file not found: {p.name}", hint="keep the .gltf next to its .bin and textures", code="missing_file")
        return p.read_bytes()

    def view_bytes(self, vi: int) -> tuple[bytes, int, int | None]:
        try:
            bv = self.j["bufferViews"][vi]
        except (KeyError, IndexError, TypeError):
            raise self.bad(f"bufferView {vi} missing")
        data = self.buffer(int(bv["buffer"]))
        off = int(bv.get("byteOffset", 0))
        ln = int(bv["byteLength"])
        if off + ln > len(data):
            raise self.bad(f"bufferView {vi} runs past the end of its buffer (truncated file?)")
        return data, off, bv.get("byteStride")

    def accessor(self, ai: int) -> np.ndarray:
        try:
            a = self.j["accessors"][ai]
            dtype = _CTYPES[a["componentType"]]
            nc = _NCOMP[a["type"]]
            count = int(a["count"])
        except (KeyError, IndexError, TypeError):
            raise self.bad(f"accessor {ai} is malformed")
        itemsize = np.dtype(dtype).itemsize
        if "bufferView" in a:
            data, off, stride = self.view_bytes(int(a["bufferView"]))
            off += int(a.get("byteOffset", 0))
            elem = itemsize * nc
            stride = stride or elem
            need = off + (count - 1) * stride + elem if count else off
            if need > len(data):
                raise self.bad(f"accessor {ai} runs past the end of its data (truncated file?)")
            if stride == elem:
                arr = np.frombuffer(data, dtype=dtype, count=count * nc, offset=off).reshape(count, nc)
            else:
                raw = np.frombuffer(data, dtype=np.uint8, count=need - off, offset=off)
                rows = np.lib.stride_tricks.as_strided(raw, shape=(count, elem), strides=(stride, 1))
                arr = np.ascontiguousarray(rows).view(dtype).reshape(count, nc)
            arr = arr.copy()
        else:
            arr = np.zeros((count, nc), dtype=dtype)
        sp = a.get("sparse")
        if sp:
            n = int(sp["count"])
            idt = _CTYPES[sp["indices"]["componentType"]]
            d, o, _ = self.view_bytes(int(sp["indices"]["bufferView"]))
            idx = np.frombuffer(d, dtype=idt, count=n, offset=o + int(sp["indices"].get("byteOffset", 0))).astype(np.int64)
            d, o, _ = self.view_bytes(int(sp["values"]["bufferView"]))
            vals = np.frombuffer(d, dtype=dtype, count=n * nc, offset=o + int(sp["values"].get("byteOffset", 0))).reshape(n, nc)
            if len(idx) and (idx.max() >= count or idx.min() < 0):
                raise self.bad(f"accessor {ai} has sparse indices out of range")
            arr[idx] = vals
        if a.get("normalized") and dtype in _NORM_DIV:
            arr = np.maximum(arr.astype(np.float32) / _NORM_DIV[dtype], -1.0)
        return arr

    def image(self, ii: int) -> np.ndarray:
        try:
            im = self.j["images"][ii]
        except (KeyError, IndexError, TypeError):
            raise self.bad(f"image {ii} missing")
        if "bufferView" in im:
            data, off, _ = self.view_bytes(int(im["bufferView"]))
            ln = int(self.j["bufferViews"][int(im["bufferView"])]["byteLength"])
            raw = data[off : off + ln]
        elif str(im.get("uri", "")).startswith("data:"):
            raw = base64.b64decode(im["uri"].split(",", 1)[1])
        elif "uri" in im:
            raw = self._external(im["uri"], f"image {ii}")
        else:
            raise self.bad(f"image {ii} has no data")
        try:
            pil = check_image_pixels(raw, f"texture image {ii} of '{self.name}'")
            pil.load()
        except InputError:
            raise
        except Exception as e:
            why = "not a PNG/JPEG image" if e.__class__.__name__ == "UnidentifiedImageError" else f"{e.__class__.__name__}: {e}"
            raise InputError(f"texture image {ii} of '{self.name}' cannot be decoded ({why})", hint="re-save the texture as PNG or JPEG", code="corrupt_file")
        if pil.mode not in ("RGB", "RGBA"):
            pil = pil.convert("RGBA" if "A" in pil.getbands() or pil.mode == "P" else "RGB")
        return np.asarray(pil, dtype=np.uint8)


def _node_matrix(node: dict) -> np.ndarray:
    if "matrix" in node:
        return np.asarray(node["matrix"], dtype=np.float64).reshape(4, 4).T
    t = np.asarray(node.get("translation", [0, 0, 0]), np.float64)
    x, y, z, w = np.asarray(node.get("rotation", [0, 0, 0, 1]), np.float64)
    s = np.asarray(node.get("scale", [1, 1, 1]), np.float64)
    r = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    m = np.eye(4)
    m[:3, :3] = r * s[None, :]
    m[:3, 3] = t
    return m


def _tri_indices(mode: int, idx: np.ndarray) -> np.ndarray | None:
    if mode == 4:
        n = len(idx) // 3 * 3
        return idx[:n].reshape(-1, 3)
    if mode == 5:  # strip
        if len(idx) < 3:
            return np.zeros((0, 3), np.int64)
        a, b, c = idx[:-2], idx[1:-1], idx[2:]
        odd = (np.arange(len(a)) % 2) == 1
        f = np.stack([a, b, c], 1)
        f[odd] = np.stack([b[odd], a[odd], c[odd]], 1)
        return f
    if mode == 6:  # fan
        if len(idx) < 3:
            return np.zeros((0, 3), np.int64)
        return np.stack([np.full(len(idx) - 2, idx[0]), idx[1:-1], idx[2:]], 1)
    return None  # points / lines: not a surface


def _apply_tex_transform(uv: np.ndarray, info: dict) -> np.ndarray:
    ext = (info.get("extensions") or {}).get("KHR_texture_transform")
    if not ext:
        return uv
    off = np.asarray(ext.get("offset", [0, 0]), np.float32)
    rot = float(ext.get("rotation", 0.0))
    sc = np.asarray(ext.get("scale", [1, 1]), np.float32)
    c, s = np.cos(rot), np.sin(rot)
    r = np.array([[c, s], [-s, c]], np.float32)
    return (uv * sc) @ r.T + off


def parse(data: bytes, name: str, base_dir: Path | None) -> SourceMesh:
    if data[:4] == b"glTF":
        if len(data) < 20:
            raise InputError(f"corrupt GLB '{name}': file is truncated", code="corrupt_file")
        version, length = struct.unpack("<II", data[4:12])
        if version != 2:
            raise InputError(f"unsupported glTF version {version} in '{name}'", hint="only glTF 2.0 is supported; re-export as glTF 2.0", code="unsupported_format")
        if length > len(data):
            raise InputError(f"corrupt GLB '{name}': truncated ({len(data)} of {length} bytes)", hint="the file was cut off; download or export it again", code="corrupt_file")
        pos, js, binc = 12, None, None
        while pos + 8 <= length:
            clen, ctype = struct.unpack("<II", data[pos : pos + 8])
            chunk = data[pos + 8 : pos + 8 + clen]
            if len(chunk) < clen:
                raise InputError(f"corrupt GLB '{name}': chunk runs past the end of the file", code="corrupt_file")
            if ctype == 0x4E4F534A:
                js = chunk
            elif ctype == 0x004E4942 and binc is None:
                binc = chunk
            pos += 8 + clen
        if js is None:
            raise InputError(f"corrupt GLB '{name}': no JSON chunk", code="corrupt_file")
    else:
        js, binc = data, None
    try:
        gltf = json_loads_limited(js.decode("utf-8"), MAX_GLTF_JSON_DEPTH, f"the glTF JSON of '{name}'")
        if not isinstance(gltf, dict):
            raise ValueError("not an object")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"corrupt glTF '{name}': JSON does not parse ({e.__class__.__name__})", code="corrupt_file")
    doc = _Doc(gltf, binc, base_dir, name)
    try:
        return _build(doc)
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, struct.error) as e:
        raise doc.bad(f"{e.__class__.__name__}: {e}")


def _material(doc: _Doc, mi: int | None, tex_cache: dict) -> tuple[Material, int]:
    """(Material, texCoord set) for glTF material index mi (None: the default material)."""
    if mi is None:
        return Material(name="default"), 0
    m = doc.j["materials"][mi]
    pbr = m.get("pbrMetallicRoughness")
    sg = (m.get("extensions") or {}).get("KHR_materials_pbrSpecularGlossiness")
    if pbr is None and sg is not None:
        factor = sg.get("diffuseFactor", [1, 1, 1, 1])
        tinfo = sg.get("diffuseTexture")
    else:
        pbr = pbr or {}
        factor = pbr.get("baseColorFactor", [1, 1, 1, 1])
        tinfo = pbr.get("baseColorTexture")
    mat = Material(name=m.get("name") or f"material_{mi}", base_color_factor=np.asarray(factor, np.float32).reshape(4))
    texcoord = 0
    if tinfo is not None:
        ti = int(tinfo["index"])
        tex = doc.j["textures"][ti]
        src = tex.get("source")
        if src is None:
            for ext in (tex.get("extensions") or {}).values():
                if isinstance(ext, dict) and "source" in ext:
                    src = ext["source"]
        if src is not None:
            if src not in tex_cache:
                tex_cache[src] = doc.image(int(src))
            mat.texture = tex_cache[src]
            smp = doc.j.get("samplers", [])[tex["sampler"]] if "sampler" in tex else {}
            mat.wrap = _WRAP.get(int(smp.get("wrapS", 10497)), "repeat")
            mat._tinfo = tinfo  # KHR_texture_transform, applied to UVs per primitive
        texcoord = int(tinfo.get("texCoord", 0))
    return mat, texcoord


def _build(doc: _Doc) -> SourceMesh:
    j = doc.j
    scenes = j.get("scenes") or []
    nodes = j.get("nodes") or []
    if scenes:
        roots = scenes[int(j.get("scene", 0))].get("nodes", [])
    else:  # no scene: every node that is nobody's child
        children = {c for n in nodes for c in n.get("children", [])}
        roots = [i for i in range(len(nodes)) if i not in children]
    instances = []  # (mesh index, world matrix)
    stack = [(int(r), np.eye(4)) for r in roots]
    seen = 0
    while stack:
        ni, parent = stack.pop()
        seen += 1
        if seen > 1_000_000:
            raise doc.bad("node hierarchy has a cycle")
        node = nodes[ni]
        world = parent @ _node_matrix(node)
        if "mesh" in node:
            instances.append((int(node["mesh"]), world))
        for c in node.get("children", []):
            stack.append((int(c), world))
    if not scenes and not nodes and j.get("meshes"):
        instances = [(i, np.eye(4)) for i in range(len(j["meshes"]))]

    tex_cache: dict = {}
    mat_cache: dict = {}
    materials: list[Material] = []
    V, F, UV, VC, FM = [], [], [], [], []
    any_uv = any_vc = False
    nv = 0
    for mesh_i, world in instances:
        for prim in j["meshes"][mesh_i].get("primitives", []):
            attrs = prim.get("attributes", {})
            if "POSITION" not in attrs:
                continue
            pos = doc.accessor(int(attrs["POSITION"])).astype(np.float64)[:, :3]
            if "indices" in prim:
                idx = doc.accessor(int(prim["indices"])).reshape(-1).astype(np.int64)
            else:
                idx = np.arange(len(pos), dtype=np.int64)
            tris = _tri_indices(int(prim.get("mode", 4)), idx)
            if tris is None or len(tris) == 0:
                continue
            p = pos @ world[:3, :3].T + world[:3, 3]
            if np.linalg.det(world[:3, :3]) < 0:
                tris = tris[:, [0, 2, 1]]
            mi = prim.get("material")
            key = -1 if mi is None else int(mi)
            if key not in mat_cache:
                m, tc = _material(doc, None if mi is None else int(mi), tex_cache)
                mat_cache[key] = (len(materials), m, tc)
                materials.append(m)
            mat_idx, m, tc = mat_cache[key]
            uv = None
            if m.texture is not None and f"TEXCOORD_{tc}" in attrs:
                uv = doc.accessor(int(attrs[f"TEXCOORD_{tc}"])).astype(np.float32)[:, :2]
                uv = _apply_tex_transform(uv, getattr(m, "_tinfo", {}))
                any_uv = True
            elif m.texture is not None:
                # textured material but no UVs on this primitive: use its factor only
                key2 = (key, "noUV")
                if key2 not in mat_cache:
                    m2 = Material(name=m.name + "_nouv", base_color_factor=m.base_color_factor.copy())
                    mat_cache[key2] = (len(materials), m2, 0)
                    materials.append(m2)
                mat_idx = mat_cache[key2][0]
            vc = None
            if "COLOR_0" in attrs:
                c = doc.accessor(int(attrs["COLOR_0"]))
                if c.dtype != np.float32 and not np.issubdtype(c.dtype, np.floating):
                    div = _NORM_DIV.get(c.dtype.type, 1.0)
                    c = c.astype(np.float32) / div
                vc = np.clip(c.astype(np.float32)[:, :3], 0.0, 1.0)
                any_vc = True
            if len(pos) and tris.size and (tris.max() >= len(pos)):
                raise InputError(
                    f"corrupt glTF '{doc.name}': face indices out of range (max index {int(tris.max())} >= {len(pos)} vertices)",
                    code="bad_indices",
                )
            V.append(p)
            F.append(tris + nv)
            UV.append(uv if uv is not None else np.zeros((len(pos), 2), np.float32))
            VC.append(vc)
            FM.append(np.full(len(tris), mat_idx, np.int32))
            nv += len(pos)
    if not V:
        raise InputError(f"'{doc.name}' contains no triangle meshes", hint="export the object as a mesh (not points, lines or curves)", code="empty_mesh")
    vcol = None
    if any_vc:
        vcol = np.concatenate([c if c is not None else np.ones((len(v), 3), np.float32) for c, v in zip(VC, V)])
    for m in materials:
        if hasattr(m, "_tinfo"):
            del m._tinfo
    return SourceMesh(
        vertices=np.concatenate(V).astype(np.float32),
        faces=np.concatenate(F).astype(np.int64),
        uv=np.concatenate(UV).astype(np.float32) if any_uv else None,
        vertex_color=vcol,
        face_material=np.concatenate(FM),
        materials=materials,
        name=doc.name,
    )


def load_gltf(path: Path) -> SourceMesh:
    data = path.read_bytes()
    return parse(data, path.name, path.parent)
