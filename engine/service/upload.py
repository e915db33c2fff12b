"""Streaming multipart parsing for POST /v1/jobs.

The body is parsed chunk by chunk as it arrives (python-multipart's streaming
parser); the `file` part goes straight to a randomly named file in the data
dir's uploads/ folder and the size limit is enforced while it streams, so an
upload is never held in memory and an oversized one is cut off at the limit.
The client's file name is kept only as a display name, never used as a path.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import anyio
try:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError:  # python-multipart < 0.0.13 names its package `multipart`
    from multipart.exceptions import FormParserError
    from multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from engine.service.errors import ApiError

MAX_OPTIONS_BYTES = 1024 * 1024
MAX_PARTS = 16
DRAIN_CAP = 64 * 1024 * 1024  # read (and drop) this much past the limit so clients see the 413
FLUSH_BYTES = 1024 * 1024
CURL_HINT = "e.g. curl -F file=@model.glb -F 'options={\"faces\": 5000}' http://127.0.0.1:8765/v1/jobs"


FILE_FIELDS = ("file", "mask", "target")  # mask: optional mask image (reconstruct); target: optional low-poly to bake onto (bake)


@dataclass
class UploadedFile:
    path: Optional[Path]
    size: int
    filename: Optional[str]


@dataclass
class Upload:
    files: dict  # field name -> UploadedFile ("file" always, "mask" / "target" optionally)
    options_text: Optional[str]

    @property
    def path(self) -> Optional[Path]:
        return self.files["file"].path

    @property
    def size(self) -> int:
        return self.files["file"].size

    @property
    def filename(self) -> Optional[str]:
        return self.files["file"].filename

    def discard(self) -> None:
        for f in self.files.values():
            if f.path is not None:
                try:
                    f.path.unlink()
                except OSError:
                    pass
                f.path = None


def display_name(raw: Optional[str]) -> str:
    """A harmless display name from a client-sent file name (for reports and messages only)."""
    if not raw:
        return "upload"
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in "\"'<>|:*?")
    name = name.strip().lstrip(".").strip()
    return name[:120] or "upload"


def download_stem(source_name: str) -> str:
    stem = os.path.splitext(source_name)[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80]
    return stem or "kiln"


def _too_large(limit: int) -> ApiError:
    mb = limit / (1024 * 1024)
    return ApiError(
        413,
        "too_large",
        f"the upload is larger than this service's limit of {mb:g} MB",
        "decimate the model or compress its textures before sending, or start the service with a larger --max-upload-mb",
    )


async def receive_job_upload(request: Request, uploads_dir: Path, max_bytes: int) -> Upload:
    ctype = request.headers.get("content-type", "")
    media, params = parse_options_header(ctype)
    if media != b"multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"POST /v1/jobs takes multipart/form-data with the fields `file` and `options`, not {ctype[:100] or 'a body without Content-Type'}",
            CURL_HINT,
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(415, "unsupported_media_type", "multipart/form-data without a boundary parameter", CURL_HINT)
    clen = request.headers.get("content-length")
    if clen is not None:
        try:
            declared = int(clen)
        except ValueError:
            raise ApiError(400, "bad_request", "the Content-Length header is not a number")
        if declared > max_bytes + MAX_OPTIONS_BYTES + DRAIN_CAP:
            # Too big to even read: answer now (the server closes the connection).
            raise _too_large(max_bytes)

    events: list = []
    hdr = {"field": b"", "value": b""}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        hdr["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        hdr["value"] += data[start:end]

    def on_header_end() -> None:
        events.append(("header", (hdr["field"].lower(), hdr["value"])))
        hdr["field"] = hdr["value"] = b""

    callbacks = {
        "on_part_begin": lambda: events.append(("begin", None)),
        "on_part_data": lambda data, start, end: events.append(("data", data[start:end])),
        "on_part_end": lambda: events.append(("end", None)),
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": lambda: events.append(("headers_done", None)),
        "on_end": lambda: events.append(("finished", None)),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
    except (FormParserError, ValueError) as e:
        raise ApiError(422, "bad_multipart", f"cannot parse the multipart body: {e}", CURL_HINT)

    files: dict = {}  # field -> UploadedFile
    current: Optional[UploadedFile] = None
    fh = None
    pending = bytearray()
    size = 0  # all file bytes so far
    options_buf: Optional[bytearray] = None
    parts = 0
    part_headers: dict = {}
    mode = None  # "file" | "options"
    finished = False
    too_large = False

    async def flush() -> None:
        if fh is not None and pending:
            data = bytes(pending)
            pending.clear()
            await anyio.to_thread.run_sync(fh.write, data)

    def discard_files() -> None:
        nonlocal fh
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
            fh = None
        Upload(files, None).discard()

    try:
        drained = 0
        async for chunk in request.stream():
            if too_large:
                drained += len(chunk)
                if drained > DRAIN_CAP:
                    break
                continue
            if not chunk:
                continue
            try:
                parser.write(chunk)
            except FormParserError as e:
                raise ApiError(422, "bad_multipart", f"cannot parse the multipart body: {str(e)[:200]}", CURL_HINT)
            for kind, value in events:
                if kind == "begin":
                    parts += 1
                    if parts > MAX_PARTS:
                        raise ApiError(422, "bad_multipart", f"too many form fields (more than {MAX_PARTS})", "send only `file` and `options`")
                    part_headers = {}
                    mode = None
                elif kind == "header":
                    part_headers[value[0]] = value[1]
                elif kind == "headers_done":
                    disp, opts = parse_options_header(part_headers.get(b"content-disposition"))
                    if disp != b"form-data" or b"name" not in opts:
                        raise ApiError(422, "bad_multipart", "a multipart part has no Content-Disposition: form-data; name=...", CURL_HINT)
                    name = opts[b"name"].decode("utf-8", "replace")
                    if name in FILE_FIELDS:
                        if name in files:
                            raise ApiError(422, "bad_multipart", f"more than one `{name}` field: a job takes exactly one", "zip an OBJ together with its .mtl and textures")
                        raw_name = opts.get(b"filename")
                        current = files[name] = UploadedFile(uploads_dir / (uuid.uuid4().hex + ".part"), 0,
                                                             raw_name.decode("utf-8", "replace") if raw_name is not None else None)
                        fh = open(current.path, "xb")  # exclusive: never through a planted link
                        mode = "file"
                    elif name == "options":
                        if options_buf is not None:
                            raise ApiError(422, "bad_multipart", "more than one `options` field", "send the options as one JSON object")
                        options_buf = bytearray()
                        mode = "options"
                    else:
                        raise ApiError(
                            422,
                            "unknown_field",
                            f"unknown form field {name[:60]!r}: POST /v1/jobs takes `file`, `options` (and `target` for kind bake, `mask` for kind reconstruct)",
                            "put job settings inside the `options` JSON object",
                        )
                elif kind == "data":
                    if mode == "file":
                        size += len(value)
                        current.size += len(value)
                        if size > max_bytes:
                            too_large = True
                            pending.clear()
                            discard_files()
                            break
                        pending += value
                        if len(pending) >= FLUSH_BYTES:
                            await flush()
                    elif mode == "options":
                        options_buf += value
                        if len(options_buf) > MAX_OPTIONS_BYTES:
                            raise ApiError(422, "bad_options", "the `options` field is larger than 1 MB", "send a small JSON object of options")
                elif kind == "end":
                    if mode == "file":
                        await flush()
                        fh.close()
                        fh = None
                    mode = None
                elif kind == "finished":
                    finished = True
            events.clear()
        if too_large:
            raise _too_large(max_bytes)
        if not finished:
            try:
                parser.finalize()
            except FormParserError:
                pass
            raise ApiError(422, "bad_multipart", "the multipart body ended early (truncated upload?)", CURL_HINT)
        if "file" not in files:
            raise ApiError(422, "missing_file", "the request has no `file` field", CURL_HINT)
        options_text = None
        if options_buf is not None:
            try:
                options_text = bytes(options_buf).decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, "bad_json", "the `options` field is not UTF-8 text", 'send a JSON object, e.g. {"faces": 5000}')
        result = Upload(files, options_text)
        files = {}  # ownership passes to the caller
        return result
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the connection during the upload")
    finally:
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
        Upload(files, None).discard()
