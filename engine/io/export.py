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


# PNG encoding (issue 12: "choose the compression level consciously"). Measured on the pebble's baked
# 1024^2 base colour + normal map (2-core dev box, CPU ms for both / total MB):
#   Pillow compress_level 0: 115 ms, 6.30 MB (stored)    cv2.imencode level 1: 276 ms, 2.18 MB
#   Pillow compress_level 1: 262 ms, 2.17 MB  (before)   cv2 level 1, Z_RLE: 229 ms, 1.83 MB
#   Pillow compress_level 2: 287 ms, 2.11 MB             cv2 level 3: 391 ms, 2.02 MB
#   Pillow compress_level 3: 316 ms, 2.01 MB             zlib level 1, Sub filter: 125 ms, 2.31 MB
#   Pillow compress_level 6: 793 ms, 1.76 MB             zlib level 1, Paeth filter, Z_RLE: ~230 ms, 1.82 MB
# Baked textures are smooth: the Paeth filter leaves long runs of small residuals, which zlib's run-length
# strategy at level 1 codes almost as tightly as level 6 (1.80 MB for Paeth + level 6, 6x the time), 16%
# smaller than Pillow's level 1 (10-25% on the other images tried: a photo, the Duck's texture, 512^2 bakes).
# Encoded here with numpy + zlib, both of which release the GIL, so the images are cut into row bands that
# are filtered and deflated on threads at once: each band is an independent raw-deflate segment ended by a
# sync flush (the next starts on a byte boundary; Z_RLE only ever looks one byte back, so a band loses
# nothing by not seeing its predecessor), written as its own IDAT chunk; the zlib header leads the first
# and the Adler-32 of the whole (combined from the bands') follows the last. Any other image (16-bit,
# unusual shapes) goes through Pillow.
_PNG_BAND_BYTES = 1 << 19  # raw bytes per band (~170 rows of a 1024-wide RGB image)
_PNG_MAX_THREADS = 8
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    import zlib

    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)) & 0xFFFFFFFF)


def _adler32_combine(a1: int, a2: int, len2: int) -> int:
    """zlib's adler32_combine: the Adler-32 of A + B from those of A and B and B's length."""
    base = 65521
    rem = len2 % base
    s1 = a1 & 0xFFFF
    s2 = (rem * s1) % base
    s1 += (a2 & 0xFFFF) + base - 1
    s2 += ((a1 >> 16) & 0xFFFF) + ((a2 >> 16) & 0xFFFF) + base - rem
    s1 %= base
    s2 %= base
    return s1 | (s2 << 16)


def _png_band(x: np.ndarray, ch: int, r0: int, r1: int, last: bool) -> tuple[bytes, int, int]:
    """Rows r0..r1 of ``x`` (h, w*ch uint8) Paeth-filtered and deflated -> (IDAT chunk, adler32, raw length)."""
    import zlib

    n, w = r1 - r0, x.shape[1]
    pad = np.zeros((n + 1, w + ch), np.int16)  # row 0: the unfiltered row above (zeros above row 0); ch zero columns left
    if r0 > 0:
        pad[0, ch:] = x[r0 - 1]
    pad[1:, ch:] = x[r0:r1]
    cur, left, up, upleft = pad[1:, ch:], pad[1:, :-ch], pad[:-1, ch:], pad[:-1, :-ch]
    pa = up - upleft  # Paeth: p = left + up - upleft; |p - left|, |p - up|, |p - upleft|
    pb = left - upleft
    pc = pa + pb
    np.abs(pa, out=pa)
    np.abs(pb, out=pb)
    np.abs(pc, out=pc)
    use_left = (pa <= pb) & (pa <= pc)
    pred = np.where(pb <= pc, up, upleft)
    np.copyto(pred, left, where=use_left)
    np.subtract(cur, pred, out=pred)
    rows = np.empty((n, w + 1), np.uint8)
    rows[:, 0] = 4  # filter type: Paeth
    rows[:, 1:] = pred  # residual mod 256 (int16 -> uint8 wraps)
    raw = rows.data
    co = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    z = co.compress(raw) + co.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    if r0 == 0:
        z = b"\x78\x01" + z  # zlib header: deflate, 32K window, fastest
    return _png_chunk(b"IDAT", z), zlib.adler32(raw), rows.nbytes


def _png_plan(img: np.ndarray):
    """-> (x (h, w*ch) uint8, ch, IHDR chunk, row bands) for an image this encoder writes, else None."""
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or a.size == 0:
        return None
    if a.ndim == 2:
        a = a[:, :, None]
    h, w, ch = a.shape
    if ch not in _PNG_COLOR_TYPE:
        return None
    x = np.ascontiguousarray(a).reshape(h, w * ch)
    rows = max(1, _PNG_BAND_BYTES // (w * ch + 1))
    bands = [(r, min(r + rows, h)) for r in range(0, h, rows)]
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR_TYPE[ch], 0, 0, 0))
    return x, ch, ihdr, bands


def _png_threads(n_tasks: int) -> int:
    import os

    try:
        n = int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))
    except (ValueError, AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(_PNG_MAX_THREADS, n, n_tasks))


def png_bytes_many(images: list) -> list[bytes]:
    """PNG files of several uint8 images, their row bands encoded on threads together (see above)."""
    plans = [_png_plan(im) for im in images]
    tasks = [(i, k) for i, p in enumerate(plans) if p is not None for k in range(len(p[3]))]

    def run(t):
        i, k = t
        x, ch, _, bands = plans[i]
        return _png_band(x, ch, *bands[k], last=k == len(bands) - 1)

    workers = _png_threads(len(tasks))
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="kiln-png") as ex:
            done = list(ex.map(run, tasks))
    else:
        done = [run(t) for t in tasks]
    parts: dict = {}
    for (i, _), r in zip(tasks, done):
        parts.setdefault(i, []).append(r)
    out = []
    for i, p in enumerate(plans):
        if p is None:
            out.append(_png_bytes_pillow(images[i]))
            continue
        adler = 1
        for _, a, n in parts[i]:
            adler = _adler32_combine(adler, a, n)
        out.append(b"".join([b"\x89PNG\r\n\x1a\n", p[2], *(c for c, _, _ in parts[i]),
                             _png_chunk(b"IDAT", struct.pack(">I", adler)), _png_chunk(b"IEND", b"")]))
    return out


def png_bytes(texture: np.ndarray) -> bytes:
    return png_bytes_many([texture])[0]


def _png_bytes_pillow(texture: np.ndarray) -> bytes:
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

    pending: list = []  # (blob index, image): encoded together on threads once every channel has added its own

    def add_texture(img: np.ndarray, suffix: str) -> int:
        pending.append((len(blobs), img))
        blobs.append(b"")
        images.append({"bufferView": len(blobs) - 1, "mimeType": "image/png", "name": f"{name}_{suffix}"})
        textures_js.append({"source": len(images) - 1, "sampler": 0})
        return len(textures_js) - 1

    material = {"name": f"{name}_baked", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0, "roughnessFactor": 1.0},
                "doubleSided": False}
    for cname, res in channels.items():
        channel_class(cname).gltf(res, material, add_texture)
    for (k, _), png in zip(pending, png_bytes_many([im for _, im in pending])):
        blobs[k] = png
    if "normalTexture" in material and tangents is not None:
        tg = np.ascontiguousarray(tangents, np.float32)
        blobs.insert(4, tg.tobytes())  # keep vertex data before the images
        for im in images:
            im["bufferView"] += 1
        accessors.append({"bufferView": 4, "componentType": 5126, "count": len(tg), "type": "VEC4"})
        attrs["TANGENT"] = len(accessors) - 1
    views, off, bin_parts = [], 0, []
    n_vertex_blobs = len(blobs) - len(images)
    for i, blob in enumerate(blobs):
        views.append({"buffer": 0, "byteOffset": off, "byteLength": len(blob)})
        if i == 0:
            views[-1]["target"] = 34963
        elif i < n_vertex_blobs:
            views[-1]["target"] = 34962
        padded = _pad4(blob)
        bin_parts.append(padded)
        off += len(padded)
    binbuf = b"".join(bin_parts)
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
