"""File formats: loading bake sources, writing GLB results."""

from __future__ import annotations

import os
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


def require_writable(path) -> Path:
    """Check before any work that ``path`` can be written (a bake must not run a minute and then fail on its output)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"output '{p}' is a folder", hint="give a file name, e.g. -o result.glb", code="bad_output")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder '{p.parent}': {e.strerror}", hint="choose a writable location for -o", code="bad_output")
    if not os.access(p.parent, os.W_OK):
        raise InputError(f"output folder '{p.parent}' is not writable", hint="choose a writable location for -o", code="bad_output")
    return p
