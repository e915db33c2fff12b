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


def _tex_transform(info: dict):
    """KHR_texture_transform of a textureInfo as a (3, 2) affine matrix (uv' = [u, v, 1] @ M), or None."""
    ext = (info.get("extensions") or {}).get("KHR_texture_transform")
    if not ext:
        return None
    off = np.asarray(ext.get("offset", [0, 0]), np.float64)
    rot = float(ext.get("rotation", 0.0))
    sc = np.asarray(ext.get("scale", [1, 1]), np.float64)
    c, s = np.cos(rot), np.sin(rot)
    r = np.array([[c, s], [-s, c]])
    m = np.zeros((3, 2))
    m[:2] = np.diag(sc) @ r.T
    m[2] = off
    return m.astype(np.float32)


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


IGNORED_EXTENSIONS = {
    "KHR_materials_transmission": "transmission",
    "KHR_materials_clearcoat": "clearcoat",
    "KHR_materials_sheen": "sheen",
    "KHR_materials_volume": "volume",
    "KHR_materials_specular": "specular",
    "KHR_materials_ior": "ior",
    "KHR_materials_iridescence": "iridescence",
    "KHR_materials_anisotropy": "anisotropy",
    "KHR_materials_dispersion": "dispersion",
    "KHR_materials_diffuse_transmission": "diffuse transmission",
    "KHR_materials_unlit": "unlit (baked as lit PBR)",
}


def _texref(doc: _Doc, info, tex_cache: dict, what: str):
    """A textureInfo -> TextureRef (image decoded once per glTF image), or None when it has no image."""
    from engine.mesh.source import TextureRef

    if not isinstance(info, dict) or "index" not in info:
        return None
    try:
        tex = doc.j["textures"][int(info["index"])]
    except (KeyError, IndexError, TypeError, ValueError):
        raise doc.bad(f"{what} points at a missing texture {info.get('index')!r}")
    src = tex.get("source")
    if src is None:
        for ext in (tex.get("extensions") or {}).values():
            if isinstance(ext, dict) and "source" in ext:
                src = ext["source"]
    if src is None:
        return None
    if src not in tex_cache:
        tex_cache[src] = doc.image(int(src))
    smp = doc.j.get("samplers", [])[tex["sampler"]] if "sampler" in tex else {}
    return TextureRef(tex_cache[src], int(info.get("texCoord", 0)), _WRAP.get(int(smp.get("wrapS", 10497)), "repeat"), _tex_transform(info))


def _material(doc: _Doc, mi: int | None, tex_cache: dict, ignored: list) -> Material:
    """The whole PBR material of glTF material index mi (None: the default material, a plain dielectric)."""
    if mi is None:
        return Material(name="default")
    m = doc.j["materials"][mi]
    name = m.get("name") or f"material_{mi}"
    exts = m.get("extensions") or {}
    pbr = m.get("pbrMetallicRoughness")
    sg = exts.get("KHR_materials_pbrSpecularGlossiness")
    if pbr is None and sg is not None:
        factor = sg.get("diffuseFactor", [1, 1, 1, 1])
        base = _texref(doc, sg.get("diffuseTexture"), tex_cache, f"material {name} diffuseTexture")
        metallic, roughness, mr = 0.0, 1.0 - float(sg.get("glossinessFactor", 1.0)), None
        ignored.append("specular-glossiness (converted: diffuse -> base colour, 1 - glossiness -> roughness)")
    else:
        pbr = pbr or {}
        factor = pbr.get("baseColorFactor", [1, 1, 1, 1])
        base = _texref(doc, pbr.get("baseColorTexture"), tex_cache, f"material {name} baseColorTexture")
        metallic = float(pbr.get("metallicFactor", 1.0))
        roughness = float(pbr.get("roughnessFactor", 1.0))
        mr = _texref(doc, pbr.get("metallicRoughnessTexture"), tex_cache, f"material {name} metallicRoughnessTexture")
    mat = Material(name=name, base_color_factor=np.asarray(factor, np.float32).reshape(4))
    if base is not None:
        mat.texture, mat.texcoord, mat.wrap, mat.transform = base.image, base.texcoord, base.wrap, base.transform
    mat.metallic_factor, mat.roughness_factor, mat.metallic_roughness = metallic, roughness, mr
    nt = m.get("normalTexture")
    mat.normal = _texref(doc, nt, tex_cache, f"material {name} normalTexture")
    if mat.normal is not None:
        mat.normal_scale = float(nt.get("scale", 1.0))
    ot = m.get("occlusionTexture")
    mat.occlusion = _texref(doc, ot, tex_cache, f"material {name} occlusionTexture")
    if mat.occlusion is not None:
        mat.occlusion_strength = float(ot.get("strength", 1.0))
    mat.emissive_factor = np.asarray(m.get("emissiveFactor", [0, 0, 0]), np.float32).reshape(3)
    mat.emissive = _texref(doc, m.get("emissiveTexture"), tex_cache, f"material {name} emissiveTexture")
    es = exts.get("KHR_materials_emissive_strength")
    if isinstance(es, dict):
        mat.emissive_strength = float(es.get("emissiveStrength", 1.0))
    mode = str(m.get("alphaMode", "OPAQUE")).upper()
    mat.alpha_mode = mode if mode in ("OPAQUE", "MASK", "BLEND") else "OPAQUE"
    mat.alpha_cutoff = float(m.get("alphaCutoff", 0.5))
    for ext, label in IGNORED_EXTENSIONS.items():
        if ext in exts:
            ignored.append(label)
    return mat


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
    ignored: list[str] = []
    V, F, FM, NRM, TAN, VC, UVS = [], [], [], [], [], [], []
    for mesh_i, world in instances:
        lin = world[:3, :3]
        det = float(np.linalg.det(lin))
        nrm_m = np.linalg.inv(lin).T if abs(det) > 1e-300 else lin
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
            if len(pos) and tris.size and (tris.max() >= len(pos) or tris.min() < 0):
                raise InputError(
                    f"corrupt glTF '{doc.name}': face indices out of range (max index {int(tris.max())} >= {len(pos)} vertices)",
                    code="bad_indices",
                )
            p = pos @ lin.T + world[:3, 3]
            if det < 0:
                tris = tris[:, [0, 2, 1]]
            n = len(pos)

            def attr(name, width):
                if name not in attrs:
                    return None
                a = doc.accessor(int(attrs[name]))
                if not np.issubdtype(a.dtype, np.floating):
                    a = a.astype(np.float32) / _NORM_DIV.get(a.dtype.type, 1.0)
                a = a.astype(np.float32)
                if len(a) != n:
                    raise doc.bad(f"attribute {name} has {len(a)} values for {n} vertices")
                return a[:, :width]

            uvs = {k: attr(f"TEXCOORD_{k}", 2) for k in range(8) if f"TEXCOORD_{k}" in attrs}
            nrm = attr("NORMAL", 3)
            if nrm is not None:
                nrm = nrm.astype(np.float64) @ nrm_m.T
                nrm = (nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-30)).astype(np.float32)
            tan = attr("TANGENT", 4)
            if tan is not None:
                if tan.shape[1] < 4:
                    tan = None
                else:
                    t3 = tan[:, :3].astype(np.float64) @ lin.T
                    t3 /= np.maximum(np.linalg.norm(t3, axis=1, keepdims=True), 1e-30)
                    tan = np.concatenate([t3, tan[:, 3:4] * (1.0 if det >= 0 else -1.0)], 1).astype(np.float32)
            vc = attr("COLOR_0", 4)
            if vc is not None:
                vc = np.clip(vc, 0.0, 1.0)
                if vc.shape[1] == 3:
                    vc = np.concatenate([vc, np.ones((n, 1), np.float32)], 1)
            mi = prim.get("material")
            key = -1 if mi is None else int(mi)
            if key not in mat_cache:
                m = _material(doc, None if mi is None else int(mi), tex_cache, ignored)
                mat_cache[key] = (len(materials), m)
                materials.append(m)
            mat_idx, m = mat_cache[key]
            missing = sorted({r.texcoord for r in m.texture_refs().values() if r.texcoord not in uvs})
            if missing:
                # textures reading a UV set this primitive lacks: those slots fall back to their factors
                key2 = (key, tuple(missing))
                if key2 not in mat_cache:
                    m2 = _without_uv_sets(m, set(missing))
                    mat_cache[key2] = (len(materials), m2)
                    materials.append(m2)
                    ignored.append(f"textures of material '{m.name}' on a primitive without TEXCOORD_{missing[0]}")
                mat_idx = mat_cache[key2][0]
            V.append(p)
            F.append(tris)
            FM.append(np.full(len(tris), mat_idx, np.int32))
            NRM.append(nrm)
            TAN.append(tan)
            VC.append(vc)
            UVS.append(uvs)
    if not V:
        raise InputError(f"'{doc.name}' contains no triangle meshes", hint="export the object as a mesh (not points, lines or curves)", code="empty_mesh")
    # glTF: a primitive without NORMAL is flat-shaded; give such parts per-face normals where others have normals
    if any(x is not None for x in NRM) and any(x is None for x in NRM):
        for i in range(len(V)):
            if NRM[i] is None:
                keys = sorted(UVS[i])
                V[i], F[i], extra = _flat(V[i], F[i], [VC[i], TAN[i]] + [UVS[i][k] for k in keys])
                VC[i], TAN[i] = extra[0], extra[1]
                UVS[i] = dict(zip(keys, extra[2:]))
                NRM[i] = _face_normals_per_vertex(V[i], F[i])
    offsets = np.cumsum([0] + [len(x) for x in V[:-1]])
    F = [f + o for f, o in zip(F, offsets)]
    sizes = [len(x) for x in V]

    def cat(parts, width, fill):
        if all(x is None for x in parts):
            return None
        return np.concatenate([x if x is not None else np.broadcast_to(np.asarray(fill, np.float32), (k, width)) for x, k in zip(parts, sizes)]).astype(np.float32)

    uv_sets = sorted({k for u in UVS for k in u})
    uv_all = {k: cat([u.get(k) for u in UVS], 2, (0.0, 0.0)) for k in uv_sets}
    return SourceMesh(
        vertices=np.concatenate(V).astype(np.float32),
        faces=np.concatenate(F).astype(np.int64),
        uv=uv_all.get(0),
        vertex_color=cat(VC, 4, (1.0, 1.0, 1.0, 1.0)),
        face_material=np.concatenate(FM),
        materials=materials,
        name=doc.name,
        normals=cat(NRM, 3, (0.0, 0.0, 1.0)) if all(x is not None for x in NRM) else None,
        tangents=cat(TAN, 4, (1.0, 0.0, 0.0, 1.0)) if all(x is not None for x in TAN) else None,
        extra_uvs={k: v for k, v in uv_all.items() if k != 0},
        ignored_features=sorted(set(ignored)),
    )


def _without_uv_sets(m: Material, missing: set) -> Material:
    import dataclasses

    m2 = dataclasses.replace(m, name=m.name + "_nouv")
    if m2.texture is not None and m2.texcoord in missing:
        m2.texture = None
    for slot in ("metallic_roughness", "normal", "occlusion", "emissive"):
        r = getattr(m2, slot)
        if r is not None and r.texcoord in missing:
            setattr(m2, slot, None)
    return m2


def _flat(v, f, attrs):
    """Un-index a primitive: every face gets its own three vertices (for per-face normals)."""
    idx = np.asarray(f, np.int64).reshape(-1)
    out = [None if a is None else a[idx] for a in attrs]
    return v[idx], np.arange(len(idx), dtype=np.int64).reshape(-1, 3), out


def _face_normals_per_vertex(v, f):
    t = v[f]
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
    return np.repeat(n, 3, axis=0).astype(np.float32)


def load_gltf(path: Path) -> SourceMesh:
    data = path.read_bytes()
    return parse(data, path.name, path.parent)
