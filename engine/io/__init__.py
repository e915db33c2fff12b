"""File formats: loading bake sources, writing GLB results."""

from __future__ import annotations

from pathlib import Path

from engine.errors import InputError


def require_file(path, what: str = "file", noun: str = "a model file", hint: str = "pass a .glb, .gltf, .obj or .ply file") -> Path:
    """The one check that an input path names a non-empty file; InputError naming the problem otherwise."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}", hint="check the path", code="missing_file")
    if p.is_dir():
        raise InputError(f"{what} '{p}' is a folder, not {noun}", hint=hint, code="unsupported_format")
    if p.stat().st_size == 0:
        raise InputError(f"{what} is empty: {p.name}", hint="the file has 0 bytes; export it again", code="empty_file")
    return p
