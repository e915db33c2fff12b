"""Guards for untrusted input and for files Kiln writes, shared by the CLI and the service.

- ``json_loads_limited``: JSON with a nesting-depth limit (a 100,000-level document is an
  InputError, never a RecursionError deep inside the parser).
- ``atomic_write`` / ``atomic_writer``: write a file through a temporary file created
  exclusively (``mkstemp``: O_CREAT|O_EXCL, mode 0600, random name) in the target's own
  folder, then ``os.replace`` it into place. A symlink planted at a predictable temp name
  can never be followed, and readers never see a half-written file.
- ``check_image_pixels``: the pixel count of an image from its header, before any decoding;
  an image over the limit is an InputError (Pillow's own guard only raises above twice its
  limit and decodes everything in between).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from engine.errors import InputError

MAX_JSON_DEPTH = 64
"""Nesting limit of JSON from clients (job options): real options are 2-3 levels deep."""
MAX_GLTF_JSON_DEPTH = 256
"""Nesting limit of a glTF document's JSON (its `extras` may nest application data)."""
MAX_IMAGE_PIXELS = 100_000_000
"""Images (textures, photos) with more pixels than this are refused before decoding."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(data: Union[str, bytes]) -> int:
    """The deepest nesting of arrays/objects in a JSON text (strings are skipped), without parsing it.
    Plain Python (the service's HTTP process loads no numpy)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def json_loads_limited(data: Union[str, bytes], max_depth: int = MAX_JSON_DEPTH, what: str = "the JSON") -> Any:
    """``json.loads`` that refuses documents nested deeper than ``max_depth`` (InputError code bad_input).

    Other parse errors propagate as ``ValueError`` (``json.JSONDecodeError``) as usual.
    """
    depth = json_depth(data)
    if depth > max_depth:
        raise InputError(
            f"{what} is nested {depth} levels deep (the limit is {max_depth})",
            hint="send plain JSON; this nesting is not something a real file or request needs",
            code="bad_input",
        )
    try:
        return json.loads(data)
    except RecursionError:  # the depth scan above makes this unreachable in practice
        raise InputError(f"{what} is nested too deeply", hint="send plain JSON", code="bad_input") from None


@contextlib.contextmanager
def atomic_writer(path: Union[str, os.PathLike], mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temp file next to ``path`` (exclusive creation, random name, 0600 then the umask's mode);
    on a clean exit it replaces ``path`` atomically, on an error it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
        _apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: Union[str, os.PathLike], data: Union[bytes, str]) -> Path:
    """Write ``data`` to ``path`` through an exclusively created temp file and an atomic rename."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _apply_umask(tmp: str) -> None:
    """mkstemp creates 0600; give the final file the mode a plain open() would (0666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o666 & ~mask)


def check_image_pixels(src, what: str = "image", max_pixels: int = MAX_IMAGE_PIXELS):
    """Open ``src`` (path, bytes or file object) with Pillow, read only its header, and refuse it
    (InputError ``image_too_large``) when width x height is over ``max_pixels``. Returns the still
    undecoded ``PIL.Image``; the caller calls ``.load()``. Pillow's own errors propagate."""
    import warnings

    from PIL import Image

    if isinstance(src, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(src))
    # Pillow raises DecompressionBombError itself only above twice its limit (and just warns in
    # between): keep its guard as the backstop and enforce the exact limit here, from the header.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(src)
    except Image.DecompressionBombError:
        raise _too_large(what, None, max_pixels) from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise _too_large(what, (w, h), max_pixels)
    return im


def _too_large(what: str, size, max_pixels: int) -> InputError:
    dims = f"{size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.1f} megapixels" if size else f"more than {2 * max_pixels / 1e6:g} megapixels"
    return InputError(f"{what} is {dims} (the limit is {max_pixels / 1e6:g} MP)", hint="downscale it first", code="image_too_large")
