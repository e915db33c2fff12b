"""Recognise an uploaded file from its bytes (never from the client's file name).

``sniff_upload(path, kind)`` returns the format ("glb", "gltf", "obj", "ply",
"zip", "png", "jpeg") or raises ApiError 415 (not a format Kiln reads) / 422
(the right format, but empty, truncated or corrupt). These checks are cheap
and need no geometry code; the worker loads the file fully and reports
anything deeper (bad accessors, unreadable textures) as a failed job with
code ``bad_input``.
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

from engine.errors import InputError
from engine.io.safety import MAX_GLTF_JSON_DEPTH, json_loads_limited
from engine.service.errors import ApiError

from engine.io.formats import (  # noqa: E402  the one format table, shared with the loader
    EXPECTED,
    HEAD_BYTES,
    IMAGE_FORMATS,
    MODEL_SUFFIXES,
    detect as _detect,
)

MAX_JSON_PARSE = 64 * 1024 * 1024
PLY_TYPES = {
    "char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
    "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8,
}


def _bad(message: str, hint: str = "export the file again and re-upload it", code: str = "bad_file") -> ApiError:
    return ApiError(422, code, message, hint)


def _unsupported(message: str, hint: str | None = None) -> ApiError:
    return ApiError(415, "unsupported_format", message, hint or f"upload {EXPECTED}")


def sniff_upload(path: Path, kind: str = "bake", max_expanded: int = 4 * 1024**3) -> str:
    """Format of the uploaded file at ``path`` for a job of ``kind`` ("bake" | "reconstruct")."""
    size = path.stat().st_size
    if size == 0:
        raise _bad("the uploaded file is empty (0 bytes)", "send the model file's bytes in the `file` field", code="empty_file")
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    fmt = _detect(head)
    if kind == "reconstruct":
        if fmt in IMAGE_FORMATS:
            _check_image(path, fmt, head, size)
            return fmt
        if fmt is None:
            raise _unsupported("unrecognised file: kind=reconstruct takes a PNG or JPEG photo", "upload a PNG or JPEG image")
        raise _unsupported(f"this is a {fmt.upper()} model; kind=reconstruct takes a PNG or JPEG photo", 'to bake a model use kind "bake"')
    if fmt in IMAGE_FORMATS:
        raise _unsupported(f"this is a {fmt.upper()} image; a bake takes a 3D model ({EXPECTED})", 'to turn a photo into a model use kind "reconstruct"')
    if fmt is None:
        raise _unsupported(f"unrecognised file format: expected {EXPECTED}")
    if fmt == "glb":
        _check_glb(path, head, size)
    elif fmt == "gltf":
        _check_gltf(path, head, size)
    elif fmt == "ply":
        _check_ply(path, head, size)
    elif fmt == "zip":
        _check_zip(path, max_expanded)
    return fmt


def _check_glb(path: Path, head: bytes, size: int) -> None:
    if size < 20:
        raise _bad(f"truncated GLB: only {size} bytes")
    version, length = struct.unpack("<II", head[4:12])
    if version != 2:
        raise _unsupported(f"GLB version {version} is not supported (only glTF 2.0)", "re-export the model as glTF 2.0 binary (.glb)")
    if length != size:
        if length > size:
            raise _bad(f"truncated GLB: the header says {length} bytes but the upload has {size}", "the file was cut off; export or download it again")
        raise _bad(f"corrupt GLB: the header says {length} bytes but the upload has {size}")
    clen, ctype = struct.unpack("<II", head[12:20])
    if ctype != 0x4E4F534A:
        raise _bad("corrupt GLB: the first chunk is not the JSON chunk")
    if 20 + clen > size:
        raise _bad("corrupt GLB: the JSON chunk runs past the end of the file")
    if clen > MAX_JSON_PARSE:
        raise _bad(f"GLB JSON chunk is implausibly large ({clen} bytes)")
    with open(path, "rb") as f:
        f.seek(20)
        js = f.read(clen)
    _check_gltf_doc(js, "GLB")


def _check_gltf(path: Path, head: bytes, size: int) -> None:
    if size > MAX_JSON_PARSE:
        with open(path, "rb") as f:
            start = f.read(MAX_JSON_PARSE)
        if b'"asset"' not in start:
            raise _unsupported("this JSON file is not a glTF document (no \"asset\")")
        return
    doc = _check_gltf_doc(path.read_bytes(), "glTF")
    for what in ("buffers", "images"):
        for i, item in enumerate(doc.get(what) or []):
            uri = item.get("uri") if isinstance(item, dict) else None
            if isinstance(uri, str) and not uri.startswith("data:"):
                raise ApiError(
                    422,
                    "external_file",
                    f"the glTF refers to an external file ({what}[{i}]); uploads are single files",
                    "upload a .glb, a .gltf with embedded (data: URI) buffers and images, or a .zip of the folder",
                )


def _check_gltf_doc(raw: bytes, what: str) -> dict:
    try:
        doc = json_loads_limited(raw.decode("utf-8-sig"), MAX_GLTF_JSON_DEPTH, f"the {what} JSON")
    except InputError as e:
        raise ApiError(422, "bad_input", e.message, e.hint)
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(f"corrupt {what}: its JSON does not parse ({e.__class__.__name__}: {str(e)[:120]})")
    if not isinstance(doc, dict) or not isinstance(doc.get("asset"), dict):
        if what == "glTF":
            raise _unsupported("this JSON file is not a glTF document (no \"asset\" object)")
        raise _bad(f"corrupt {what}: the JSON has no \"asset\" object")
    version = str(doc["asset"].get("version", ""))
    if not version.startswith("2"):
        raise _unsupported(f"glTF version {version or '?'} is not supported (only glTF 2.0)", "re-export the model as glTF 2.0")
    return doc


def _check_ply(path: Path, head: bytes, size: int) -> None:
    end = head.find(b"end_header")
    if end < 0:
        raise _bad("corrupt PLY: no end_header in the first 64 KiB (truncated or not a PLY)")
    nl = head.find(b"\n", end)
    if nl < 0:
        raise _bad("truncated PLY: the file ends right after its header")
    header = head[:end].decode("latin-1").splitlines()
    body = size - (nl + 1)
    fmt = None
    elements: list[list] = []  # [name, count, [props]]
    for line in header[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) >= 3:
            try:
                count = int(words[2])
            except ValueError:
                raise _bad(f"corrupt PLY header: bad element line {line.strip()!r}")
            if count < 0:
                raise _bad(f"corrupt PLY header: negative count in {line.strip()!r}")
            elements.append([words[1], count, []])
        elif words[0] == "property" and elements:
            elements[-1][2].append(words[1:])
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise _bad(f"corrupt PLY header: format {fmt!r} is not ascii/binary_little_endian/binary_big_endian")
    if not any(name == "vertex" for name, _, _ in elements):
        raise _bad("PLY has no vertex element", "export the mesh with its vertices and faces")
    if fmt == "ascii":
        return  # the worker's loader checks the rows
    need = 0  # a lower bound on the body size: lists count at least their length field
    for name, count, props in elements:
        per = 0
        for p in props:
            if p and p[0] == "list" and len(p) >= 3:
                per += PLY_TYPES.get(p[1], 1)
            elif p:
                per += PLY_TYPES.get(p[0], 1)
        need += per * count
    if body < need:
        raise _bad(f"truncated PLY: the header needs at least {need} bytes of data but the file has {body}", "the file was cut off; export or download it again")


def _check_zip(path: Path, max_expanded: int) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise _bad(f"corrupt zip archive ({str(e)[:120]})")
    if len(infos) > 10000:
        raise _bad(f"zip holds {len(infos)} files; at most 10000 are accepted")
    total = 0
    models = 0
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = [p for p in name.split("/") if p]
        if name.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", name):
            raise ApiError(422, "unsafe_zip", f"zip member {info.filename!r} points outside the archive", "zip the model's folder with relative paths")
        if info.flag_bits & 0x1:
            raise _bad(f"zip member {info.filename!r} is encrypted", "zip the files without a password")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ApiError(422, "unsafe_zip", f"zip member {info.filename!r} is a symbolic link", "zip the files themselves, not links")
        total += info.file_size
        if not info.is_dir() and name.lower().endswith(MODEL_SUFFIXES):
            models += 1
    if total > max_expanded:
        raise ApiError(413, "too_large", f"zip expands to {total} bytes, more than the limit of {max_expanded}", "upload the model without the extra files")
    if models == 0:
        raise _unsupported("the zip holds no .obj, .glb, .gltf or .ply model", "zip the .obj together with its .mtl and texture files")


def _check_image(path: Path, fmt: str, head: bytes, size: int) -> None:
    if fmt == "png":
        if size < 33 or head[12:16] != b"IHDR":
            raise _bad("corrupt PNG: no IHDR header (truncated?)", "save the image again as PNG")
        w, h = struct.unpack(">II", head[16:24])
        if w == 0 or h == 0:
            raise _bad(f"PNG has an empty size {w}x{h}")
        with open(path, "rb") as f:
            f.seek(max(0, size - 12))
            tail = f.read()
        if b"IEND" not in tail:
            raise _bad("truncated PNG: no IEND chunk at the end", "the image was cut off; save it again")
    elif fmt == "jpeg":
        if size < 128:
            raise _bad(f"truncated JPEG: only {size} bytes")
