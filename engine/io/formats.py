"""The one table of file formats Kiln reads: the loader and the service's upload check both use it.

Formats are recognised from their bytes (uploads have random names, and a
suffix can lie); ``detect(head)`` looks at the first ``HEAD_BYTES`` of a
file. Each mesh format names its loader (``module:function``, imported on
first use), so adding a format is one row here. Plain Python only: the
service's HTTP process imports this and must stay free of numpy and torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

HEAD_BYTES = 64 * 1024

OBJ_KEYWORDS = frozenset({
    "v", "vt", "vn", "vp", "f", "l", "p", "o", "g", "s", "mtllib", "usemtl", "usemap", "maplib",
    "cstype", "deg", "curv", "curv2", "surf", "parm", "end", "bevel", "c_interp", "d_interp", "lod", "shadow_obj",
    "trace_obj", "ctech", "stech", "mg", "bmat", "step", "call", "csh", "hole", "scrv", "sp", "trim", "con",
})


@dataclass(frozen=True)
class Format:
    name: str
    kind: str  # "mesh" | "archive" | "image"
    suffixes: tuple
    magic: tuple = ()  # leading bytes, any of
    loader: Optional[str] = None  # "module:function(path) -> SourceMesh" for meshes
    title: str = ""


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("glb", "mesh", (".glb",), (b"glTF",), "engine.io.gltf:load_gltf", "binary glTF"),
        Format("gltf", "mesh", (".gltf",), (), "engine.io.gltf:load_gltf", "glTF (JSON)"),
        Format("obj", "mesh", (".obj",), (), "engine.io.load:load_obj", "Wavefront OBJ (+ MTL)"),
        Format("ply", "mesh", (".ply",), (b"ply\n", b"ply\r"), "engine.io.load:load_ply", "PLY"),
        Format("zip", "archive", (".zip",), (b"PK\x03\x04", b"PK\x05\x06"), "engine.io.load:load_zip", "zip of a model with its files"),
        Format("png", "image", (".png",), (b"\x89PNG\r\n\x1a\n",), None, "PNG"),
        Format("jpeg", "image", (".jpg", ".jpeg"), (b"\xff\xd8\xff",), None, "JPEG"),
    )
}
MESH_FORMATS = tuple(n for n, f in FORMATS.items() if f.kind in ("mesh", "archive"))
IMAGE_FORMATS = tuple(n for n, f in FORMATS.items() if f.kind == "image")
MESH_SUFFIXES = tuple(s for n in MESH_FORMATS for s in FORMATS[n].suffixes)
MODEL_SUFFIXES = tuple(s for n, f in FORMATS.items() if f.kind == "mesh" for s in f.suffixes)  # what a zip may hold
EXPECTED = "GLB, glTF with embedded data, OBJ (or a .zip of the .obj with its .mtl and textures) or PLY"


def detect(head: bytes) -> Optional[str]:
    """Format name from a file's first bytes, or None (not a format Kiln reads)."""
    for f in FORMATS.values():
        if f.magic and any(head.startswith(m) for m in f.magic):
            return f.name
    if b"\x00" in head:
        return None
    text = head.decode("latin-1")
    stripped = text.lstrip("\ufeff\xef\xbb\xbf \t\r\n")
    if stripped.startswith("{"):
        return "gltf"
    return "obj" if looks_like_obj(text) else None


def looks_like_obj(text: str) -> bool:
    """OBJ has no magic: text whose statements are OBJ statements, with at least one vertex."""
    lines = text.splitlines()
    if len(lines) > 1 and not text.endswith(("\n", "\r")):
        lines = lines[:-1]  # the last line may be cut by the head limit
    statements = unknown = 0
    has_vertex = False
    for line in lines:
        t = line.strip()
        if not t or t.startswith("#"):
            continue
        word = t.split(None, 1)[0]
        statements += 1
        if word not in OBJ_KEYWORDS:
            if statements == 1:
                return False  # an OBJ starts with an OBJ statement
            unknown += 1  # tolerate a few exporter-specific lines
        elif word == "v":
            has_vertex = True
        if statements >= 200:
            break
    return has_vertex and unknown <= max(2, statements // 10)


def detect_file(path) -> Optional[str]:
    with open(path, "rb") as fh:
        return detect(fh.read(HEAD_BYTES))


def loader(name: str):
    spec = FORMATS[name].loader
    if spec is None:
        raise KeyError(f"{name} is not a mesh format")
    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)
