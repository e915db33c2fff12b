"""HTTP client for the Kiln engine service (`kiln serve`, API /v1).

Standard library only (urllib), so it runs inside Blender's bundled Python
and in plain test interpreters alike. Every failure is raised as an
:class:`EngineError` carrying the service's ``code``/``message``/``hint`` (or
a client-side equivalent when the engine could not be reached), so callers
only ever handle one exception type.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, BinaryIO, Callable, Iterable, Optional

API_PREFIX = "/v1"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
USER_AGENT = "kiln-blender-addon"


class EngineError(Exception):
    """A failure an artist can act on: ``message`` says what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str | None = None, code: str = "engine_error", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint or ""
        self.code = code
        self.status = status

    def __str__(self) -> str:
        return self.message

    def full_text(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint, "status": self.status}


class JobCancelled(EngineError):
    def __init__(self, message: str = "cancelled", hint: str | None = None):
        super().__init__(message, hint, code="cancelled")


# --------------------------------------------------------------------------- multipart


class MultipartBody(io.RawIOBase):
    """A streamed ``multipart/form-data`` body with a known length.

    Parts are ``(name, value)`` for text fields or ``(name, filename, source,
    content_type)`` for files, where ``source`` is bytes or a filesystem path.
    File parts are read in chunks while uploading (big meshes are never held
    twice in memory); ``on_read(sent, total)`` reports upload progress.
    """

    def __init__(self, fields: Iterable[tuple], boundary: str | None = None, on_read: Callable[[int, int], None] | None = None):
        super().__init__()
        self.boundary = boundary or ("kiln-" + secrets.token_hex(16))
        self._segments: list[tuple[str, Any]] = []  # ("bytes", b) | ("file", path)
        b = self.boundary.encode("ascii")
        for field in fields:
            if len(field) == 2:
                name, value = field
                if not isinstance(value, (bytes, bytearray)):
                    value = str(value).encode("utf-8")
                head = b"--" + b + b"\r\n" + _disposition(name) + b"\r\n\r\n"
                self._segments.append(("bytes", head + bytes(value) + b"\r\n"))
            elif len(field) == 4:
                name, filename, source, ctype = field
                head = (
                    b"--" + b + b"\r\n" + _disposition(name, filename) + b"\r\n"
                    + b"Content-Type: " + (ctype or "application/octet-stream").encode("ascii") + b"\r\n\r\n"
                )
                self._segments.append(("bytes", head))
                if isinstance(source, (bytes, bytearray)):
                    self._segments.append(("bytes", bytes(source)))
                else:
                    self._segments.append(("file", os.fspath(source)))
                self._segments.append(("bytes", b"\r\n"))
            else:
                raise ValueError(f"bad multipart field {field!r}")
        self._segments.append(("bytes", b"--" + b + b"--\r\n"))
        self.total = sum(len(v) if kind == "bytes" else os.path.getsize(v) for kind, v in self._segments)
        self._on_read = on_read
        self._index = 0
        self._pos = 0  # position inside the current bytes segment
        self._fh: Optional[BinaryIO] = None
        self.sent = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self.total

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.total
        out = bytearray()
        while len(out) < size and self._index < len(self._segments):
            kind, value = self._segments[self._index]
            if kind == "bytes":
                chunk = value[self._pos:self._pos + size - len(out)]
                self._pos += len(chunk)
                if self._pos >= len(value):
                    self._index += 1
                    self._pos = 0
            else:
                if self._fh is None:
                    self._fh = open(value, "rb")
                chunk = self._fh.read(size - len(out))
                if not chunk:
                    self._fh.close()
                    self._fh = None
                    self._index += 1
                    continue
            out += chunk
        self.sent += len(out)
        if self._on_read is not None and out:
            self._on_read(self.sent, self.total)
        return bytes(out)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


def _quote(value: str) -> bytes:
    # RFC 7578: names and filenames in quotes, with '"' and CR/LF escaped.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A").encode("utf-8")


def _disposition(name: str, filename: str | None = None) -> bytes:
    d = b'Content-Disposition: form-data; name="' + _quote(name) + b'"'
    if filename is not None:
        d += b'; filename="' + _quote(filename) + b'"'
    return d


# --------------------------------------------------------------------------- client


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_url(url: str) -> str:
    url = (url or "").strip()
    if not url:
        raise EngineError("no engine URL set", hint="set the engine URL in Kiln's add-on preferences (e.g. http://127.0.0.1:8765)", code="bad_url")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineError(f"engine URL {url!r} is not an http(s) URL", hint="use a URL like http://127.0.0.1:8765", code="bad_url")
    path = parts.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path[: -len(API_PREFIX)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class EngineClient:
    """One engine endpoint. Thread-safe: it holds no connection state."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0, transfer_timeout: float = 300.0):
        self.base_url = normalize_url(base_url)
        self.token = (token or "").strip() or None
        self.timeout = float(timeout)
        self.transfer_timeout = float(transfer_timeout)
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers)

    # -- plumbing -------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + API_PREFIX + path

    def build_request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> urllib.request.Request:
        h = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        data = None
        if isinstance(body, MultipartBody):
            data = body
            h["Content-Type"] = body.content_type
            h["Content-Length"] = str(len(body))
        elif body is not None:
            data = json.dumps(body).encode("utf-8")
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return urllib.request.Request(self.url(path), data=data, headers=h, method=method)

    def _open(self, req: urllib.request.Request, timeout: float):
        try:
            return self._opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            raise self._unreachable(e.reason) from None
        except (socket.timeout, TimeoutError) as e:
            raise self._unreachable(e) from None
        except (ConnectionError, OSError) as e:
            raise self._unreachable(e) from None

    def _unreachable(self, reason: Any) -> EngineError:
        if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
            return EngineError(
                f"the Kiln engine at {self.base_url} did not answer in time",
                hint="the engine may be overloaded or the network slow: raise the timeout in Kiln's preferences, or check the engine",
                code="engine_timeout",
            )
        return EngineError(
            f"cannot reach the Kiln engine at {self.base_url} ({_reason_text(reason)})",
            hint="start it (`kiln serve`), check the URL/port and any SSH tunnel, or switch Kiln's preferences to a local engine",
            code="engine_unreachable",
        )

    def _http_error(self, e: urllib.error.HTTPError) -> EngineError:
        try:
            raw = e.read()
        except Exception:
            raw = b""
        return error_from_response(e.code, raw, self.base_url)

    def request_json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        req = self.build_request(method, path, body)
        with self._open(req, self.timeout if timeout is None else timeout) as resp:
            raw = resp.read()
        if not raw:
            return {}
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            raise EngineError(
                f"the engine at {self.base_url} answered {method} {path} with something that is not JSON",
                hint="is this URL really a Kiln engine (`kiln serve`)?",
                code="bad_response",
            ) from None

    # -- API ----------------------------------------------------------------

    def health(self) -> dict:
        h = self.request_json("GET", "/health")
        if not isinstance(h, dict):
            raise EngineError(f"{self.base_url} answered /v1/health with an unexpected body", hint="is this URL really a Kiln engine?", code="bad_response")
        return h

    def doctor(self) -> Optional[dict]:
        """The engine's doctor report, or None when the engine has no /v1/doctor."""
        try:
            return self.request_json("GET", "/doctor", timeout=max(self.timeout, 120.0))
        except EngineError as e:
            if e.status in (404, 405, 501):
                return None
            raise

    def submit(
        self,
        source: Any,
        filename: str,
        options: dict,
        content_type: str = "application/octet-stream",
        extra_files: Iterable[tuple[str, str, Any, str]] = (),
        on_upload: Callable[[int, int], None] | None = None,
    ) -> str:
        """Upload ``source`` (path or bytes) with ``options``; returns the job id."""
        fields = [("options", json.dumps(options)), ("file", filename, source, content_type)]
        fields += [(n, fn, src, ct) for (n, fn, src, ct) in extra_files]
        body = MultipartBody(fields, on_read=on_upload)
        try:
            req = self.build_request("POST", "/jobs", body)
            with self._open(req, self.transfer_timeout) as resp:
                raw = resp.read()
        finally:
            body.close()
        try:
            data = json.loads(raw.decode("utf-8"))
            return str(data["id"])
        except Exception:
            raise EngineError("the engine accepted the upload but returned no job id", hint="update the engine (`kiln serve`) to match this add-on", code="bad_response") from None

    def job(self, job_id: str) -> dict:
        return self.request_json("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}")

    def jobs(self) -> list:
        data = self.request_json("GET", "/jobs")
        if isinstance(data, dict):
            data = data.get("jobs", [])
        return list(data)

    def cancel(self, job_id: str) -> dict:
        return self.request_json("POST", f"/jobs/{urllib.parse.quote(job_id, safe='')}/cancel")

    def delete(self, job_id: str) -> None:
        self.request_json("DELETE", f"/jobs/{urllib.parse.quote(job_id, safe='')}")

    def report(self, job_id: str) -> dict:
        return self.request_json("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}/report")

    def download_result(self, job_id: str, dest: str, on_progress: Callable[[int, int], None] | None = None) -> str:
        req = self.build_request("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}/result", headers={"Accept": "model/gltf-binary"})
        tmp = dest + ".part"
        with self._open(req, self.transfer_timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            got = 0
            with open(tmp, "wb") as fh:
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    fh.write(chunk)
                    got += len(chunk)
                    if on_progress is not None:
                        on_progress(got, total)
        if total and got != total:
            os.remove(tmp)
            raise EngineError(f"the result download was cut short ({got} of {total} bytes)", hint="try again; check the network to the engine", code="bad_response")
        os.replace(tmp, dest)
        return dest

    def wait(
        self,
        job_id: str,
        on_update: Callable[[dict], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        poll_interval: float = 0.5,
        timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_retries: int = 3,
    ) -> dict:
        """Poll a job until it ends. Returns the final job on success; raises
        :class:`EngineError` when it failed and :class:`JobCancelled` when it
        was cancelled. ``should_cancel()`` returning True asks the engine to
        cancel (once) and keeps polling until the engine confirms."""
        t0 = time.monotonic()
        cancel_sent = False
        misses = 0
        while True:
            if should_cancel is not None and not cancel_sent and should_cancel():
                try:
                    self.cancel(job_id)
                except EngineError as e:
                    if e.status != 409:  # 409: already finished, the next poll tells how
                        raise
                cancel_sent = True
            try:
                job = self.job(job_id)
                misses = 0
            except EngineError as e:
                # A slow answer on a busy or distant engine is retried a few times; a refused connection is not.
                misses += 1
                if e.code != "engine_timeout" or misses > max_retries:
                    raise
                sleep(poll_interval)
                continue
            if on_update is not None:
                on_update(job)
            state = job.get("state")
            if state == "succeeded":
                return job
            if state == "failed":
                raise job_error(job)
            if state == "cancelled":
                raise JobCancelled(job.get("message") or "the job was cancelled")
            if timeout is not None and time.monotonic() - t0 > timeout:
                try:
                    self.cancel(job_id)
                except EngineError:
                    pass
                raise EngineError(
                    f"the job did not finish within {timeout:.0f} s and was cancelled",
                    hint="raise the job timeout in Kiln's preferences, or lower faces/texture size",
                    code="job_timeout",
                )
            sleep(poll_interval)


def _reason_text(reason: Any) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    text = str(getattr(reason, "strerror", None) or reason)
    return text or reason.__class__.__name__


_STATUS_HINTS = {
    401: "set the token in Kiln's add-on preferences to the engine's --token",
    403: "set the token in Kiln's add-on preferences to the engine's --token",
    404: "is this URL a Kiln engine, and is the job still there? (finished jobs are removed after a while)",
    409: "wait for the job to finish",
    413: "the upload is larger than the engine allows (--max-upload-mb): simplify the source or raise the limit",
    415: "the engine could not read the uploaded file",
    422: "check the options in the Kiln panel",
    503: "the engine is busy or shutting down: try again in a moment",
}


def error_from_response(status: int, raw: bytes, where: str = "the engine") -> EngineError:
    """Map an HTTP error answer to an EngineError.

    The service answers ``{"error": {"code", "message", "hint"}}``; FastAPI's
    own ``{"detail": ...}`` and non-JSON bodies (proxies, wrong server) are
    handled too, so the artist always gets a sentence, never a traceback."""
    body: Any = None
    try:
        body = json.loads(raw.decode("utf-8")) if raw else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return EngineError(
            str(err.get("message") or f"engine error (HTTP {status})"),
            hint=str(err.get("hint") or _STATUS_HINTS.get(status, "")),
            code=str(err.get("code") or f"http_{status}"),
            status=status,
        )
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list):
            msgs = []
            for d in detail:
                if isinstance(d, dict):
                    loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                    msgs.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
                else:
                    msgs.append(str(d))
            detail = "; ".join(msgs)
        return EngineError(str(detail), hint=_STATUS_HINTS.get(status, ""), code=f"http_{status}", status=status)
    text = raw.decode("utf-8", "replace").strip().splitlines()[0][:200] if raw and raw.strip() else ""
    return EngineError(
        f"{where} answered HTTP {status}" + (f": {text}" if text else ""),
        hint=_STATUS_HINTS.get(status, "is this URL really a Kiln engine (`kiln serve`)?"),
        code=f"http_{status}",
        status=status,
    )


def job_error(job: dict) -> EngineError:
    err = job.get("error")
    if isinstance(err, dict):
        message = err.get("message") or job.get("message") or "the job failed"
        hint = err.get("hint") or ""
        code = err.get("code") or "job_failed"
    else:
        message = str(err or job.get("message") or "the job failed")
        hint, code = "", "job_failed"
    stage = job.get("stage")
    if stage and stage not in message:
        message = f"{message} (stage: {stage})"
    return EngineError(message, hint=hint, code=code)


def job_kinds(health: dict) -> Optional[list]:
    """The job kinds the engine offers, or None when its health does not say."""
    for key in ("job_kinds", "kinds"):
        v = health.get(key)
        if isinstance(v, (list, tuple)):
            return [str(x) for x in v]
        if isinstance(v, dict):
            return [str(k) for k, ok in v.items() if ok]
    return None
