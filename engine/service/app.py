"""The HTTP API of the engine service (FastAPI). Versioned under /v1, OpenAPI at /openapi.json.

Every error is JSON ``{"error": {"code", "message", "hint"}}``, including
unknown routes (404), wrong methods (405), request validation (422) and
anything unexpected (500). This module never imports torch.
"""

from __future__ import annotations

import errno
import hmac
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Optional

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import API_VERSION, __version__
from engine.errors import InputError
from engine.options import BakeOptions
from engine.io.safety import MAX_JSON_DEPTH, json_loads_limited
from engine.service.doctor_runner import DoctorRunner
from engine.service.errors import ApiError, code_for_status, error_body
from engine.service.guard import HostOriginGuard, allowed_hosts
from engine.service.limits import check_job
from engine.service.sniff import sniff_upload
from engine.service.supervisor import Job, Supervisor
from engine.service.upload import download_stem, display_name, receive_job_upload

log = logging.getLogger("kiln.service")

KINDS = ("bake", "reconstruct")
FAULT_RE = re.compile(r"^(segfault|abort|hang|raise)@([a-z_]{1,40})$")
INPUT_EXT = {"glb": "glb", "gltf": "gltf", "obj": "obj", "ply": "ply", "zip": "zip", "png": "png", "jpeg": "jpg"}
# reconstruction options that name files on the server: never taken from a client
SERVER_ONLY_RECON_KEYS = {
    "mask": "it is a file path on the server",
    "config": "the server's SAM 3D checkpoint is set by its administrator (KILN_SAM3D_CONFIG)",
    "repo": "the server's SAM 3D checkout is set by its administrator (KILN_SAM3D_REPO)",
}
OPTIONS_HINT = 'send a JSON object, e.g. {"faces": 5000, "texture_size": 1024}; allowed fields: kind, ' + ", ".join(BakeOptions.field_names())


# --- response models (documentation; extra fields are kept) -------------------------------------
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Open):
    code: str
    message: str
    hint: Optional[str] = None


class ErrorResponse(_Open):
    error: ErrorDetail


class JobModel(_Open):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: Optional[str] = None
    progress: float = 0.0
    message: Optional[str] = None
    error: Optional[dict[str, Any]] = None
    timings: Optional[dict[str, Any]] = None
    created_at: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    queue_position: Optional[int] = None


class JobList(_Open):
    jobs: list[JobModel]
    count: int


class Deleted(_Open):
    id: str
    deleted: bool


class Health(_Open):
    status: str
    version: str
    api_version: str
    backends: Optional[list[str]] = None
    gpus: list[str] = []
    workers: list[dict[str, Any]] = []
    queue_length: int = 0


ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 422)}


def _job_not_found(job_id: str) -> ApiError:
    return ApiError(
        404,
        "job_not_found",
        f"no job with id {job_id[:80]!r}",
        "the job may have been deleted or have expired; list the jobs with GET /v1/jobs",
    )


def reconstruct_available() -> bool:
    """Whether engine.reconstruct.pipeline exists, found without importing it (it may import torch)."""
    try:
        spec = importlib.util.find_spec("engine.reconstruct")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(loc) / "pipeline.py").is_file() or (Path(loc) / "pipeline" / "__init__.py").is_file() for loc in spec.submodule_search_locations)


def parse_job_options(text: Optional[str], allow_fault: bool, recon_keys: Optional[list] = None) -> dict:
    """Validate the `options` JSON of a job -> {kind, fault, reconstruct, options (BakeOptions dict)}.

    ``recon_keys``: the reconstruction option names a worker reported (None: not known yet; the
    worker then checks them and fails the job with bad_input).
    """
    if text is None or not text.strip():
        data: Any = {}
    else:
        try:
            data = json_loads_limited(text, MAX_JSON_DEPTH, "the `options` JSON")
        except InputError as e:
            raise ApiError(422, "bad_json", e.message, OPTIONS_HINT)
        except ValueError as e:
            raise ApiError(422, "bad_json", f"the `options` field is not valid JSON: {str(e)[:200]}", OPTIONS_HINT)
    if not isinstance(data, dict):
        raise ApiError(422, "bad_json", f"`options` must be a JSON object, not {type(data).__name__}", OPTIONS_HINT)
    data = dict(data)
    given = frozenset(str(k) for k in data)
    kind = data.pop("kind", "bake")
    if kind not in KINDS:
        raise ApiError(422, "unknown_kind", f"unknown kind {str(kind)[:60]!r}", 'kind is "bake" (default) or "reconstruct"')
    if kind == "reconstruct" and not reconstruct_available():
        raise ApiError(422, "unknown_kind", "kind 'reconstruct' is not available in this engine", 'use kind "bake" with a 3D model')
    fault = data.pop("fault", None)
    if fault is not None:
        if not allow_fault:
            raise ApiError(
                422,
                "bad_option",
                "unknown option(s): fault (fault injection is off)",
                "`fault` exists for tests only: start the service with --allow-fault-injection",
            )
        if not isinstance(fault, str) or not FAULT_RE.match(fault):
            raise ApiError(422, "bad_option", f"invalid option: fault={str(fault)[:60]!r}", 'use "segfault@STAGE", "abort@STAGE", "hang@STAGE" or "raise@STAGE"')
    recon = data.pop("reconstruct", None) if kind == "reconstruct" else None
    if recon is not None:
        if not isinstance(recon, dict):
            raise ApiError(422, "bad_option", "invalid option: reconstruct must be a JSON object", OPTIONS_HINT)
        for key in SERVER_ONLY_RECON_KEYS:
            if recon.get(key) is not None:
                raise ApiError(422, "bad_option", f"reconstruct.{key} cannot be set over HTTP ({SERVER_ONLY_RECON_KEYS[key]})",
                               "leave it out" + (": give the photo a transparent background, or let automatic segmentation find the object" if key == "mask" else ""))
        if recon_keys is not None:
            unknown = sorted(str(k) for k in recon if k not in recon_keys)
            if unknown:
                raise ApiError(422, "bad_option", f"unknown reconstruction option(s): {', '.join(unknown)[:200]}",
                               f"allowed: {', '.join(k for k in recon_keys if k not in SERVER_ONLY_RECON_KEYS)}")
    try:
        opts = BakeOptions.from_dict(data)
    except InputError as e:
        hint = e.hint or OPTIONS_HINT
        if hint.startswith("allowed: "):
            hint += ", kind (bake | reconstruct)"
        raise ApiError(422, e.code, e.message, hint)
    except (TypeError, ValueError, OverflowError) as e:
        raise ApiError(422, "bad_option", f"invalid options: {str(e)[:200]}", OPTIONS_HINT)
    return {"kind": kind, "fault": fault, "reconstruct": recon, "options": opts.to_dict(), "given": given}


class TokenAuth:
    """ASGI middleware: every request except GET /v1/health needs `Authorization: Bearer <token>`."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        got = b""
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                got = v
                break
        scheme, _, cred = got.partition(b" ")
        ok = scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), self.token)
        scope.setdefault("state", {})["kiln_authenticated"] = ok
        if scope["method"] == "GET" and scope["path"] == "/v1/health":
            return await self.app(scope, receive, send)  # answered in short without a valid token
        if not ok:
            why = "no Authorization header" if not got else "the token does not match"
            resp = JSONResponse(
                error_body(
                    "unauthorized",
                    f"this service needs a token ({why})",
                    "send `Authorization: Bearer <token>` with the token the service was started with (--token/--token-file)",
                ),
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="kiln"'},
            )
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(sup: Supervisor) -> FastAPI:
    cfg = sup.config
    app = FastAPI(
        title="Kiln engine service",
        version=__version__,
        description="Jobs over HTTP: upload a model (or a photo), get a low-poly, UV-unwrapped, texture-baked GLB. "
        "Errors are always JSON {\"error\": {\"code\", \"message\", \"hint\"}}. See docs/service.md.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.supervisor = sup
    doctor = app.state.doctor = DoctorRunner(cfg.doctor_timeout)

    # --- errors ----------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code, hint = code_for_status(exc.status_code)
        path = request.url.path[:200]
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {path}"
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(code, message, hint), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        return JSONResponse(error_body("bad_request", "invalid request: " + "; ".join(parts)[:500], "see /openapi.json"), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            log.error("no space left in the data dir %s (%s %s)", cfg.data_dir, request.method, request.url.path)
            return JSONResponse(error_body("no_space", "no space left in the data dir of the service",
                                           "free disk space on the server (or ask its administrator), then retry"), status_code=507)
        if isinstance(exc, RecursionError):
            return JSONResponse(error_body("bad_input", "the request is nested too deeply", "send plain JSON and files"), status_code=422)
        error_id = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        code, hint = code_for_status(500)
        return JSONResponse(error_body(code, f"internal error (error id {error_id}: the details are in the service log)", hint), status_code=500)

    if cfg.token:
        app.add_middleware(TokenAuth, token=cfg.token)
    # outermost: a foreign Host or Origin is refused before anything else (also before the token check)
    app.add_middleware(HostOriginGuard, hosts=cfg.allowed_hosts or allowed_hosts("127.0.0.1"))

    # --- endpoints -------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return {"service": "kiln", "version": __version__, "api": f"/{API_VERSION}", "health": "/v1/health", "openapi": "/openapi.json"}

    @app.get("/v1/health", response_model=Health, summary="Service status (without the token of a token server: only that it is up)")
    def health(request: Request):
        if cfg.token and not request.scope.get("state", {}).get("kiln_authenticated"):
            return JSONResponse({"status": "stopping" if sup.stopping else "ok", "version": __version__, "api_version": API_VERSION, "auth": True})
        h = sup.health()
        info = h.pop("worker_info") or {}
        workers = h["workers"]
        status = "ok"
        if sup.stopping:
            status = "stopping"
        elif any(w["state"] in ("failing", "broken") for w in workers):
            status = "degraded"
        gpus = [g.name for g in cfg.gpus] or list(info.get("gpu_names") or [])
        kinds = ["bake"] + (["reconstruct"] if reconstruct_available() else [])
        return {
            "status": status,
            "version": __version__,
            "api_version": API_VERSION,
            "backends": info.get("backends"),
            "cuda": info.get("cuda"),
            "gpus": gpus,
            "workers": workers,
            "queue_length": h["queue_length"],
            "jobs": h["jobs"],
            "kinds": kinds,
            # what this engine can do beyond the basics ("bake_target": a `target` part), and the
            # option names a job may send: clients drop what an older engine does not know
            "features": [f for f in (info.get("features") or []) if isinstance(f, str)],
            "bake_options": BakeOptions.field_names(),
            "auth": bool(cfg.token),
            "fault_injection": cfg.allow_fault_injection,
            "limits": {
                "max_upload_bytes": cfg.max_upload_bytes,
                "job_timeout_s": cfg.job_timeout,
                "cancel_grace_s": cfg.cancel_grace,
                "retention_s": cfg.retention_s,
                "max_queue": cfg.max_queue,
                **(cfg.caps.to_dict() if cfg.caps else {}),
            },
            "pid": os.getpid(),
            "uptime_s": round(time.time() - sup.started_at, 1),
        }

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobModel,
        summary="Submit a job: multipart `file` (model bytes, or a photo for kind=reconstruct) + `options` (JSON)",
        responses={**ERRORS, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "format": "binary", "description": "GLB, glTF (embedded), OBJ or a zip of OBJ+MTL+textures, PLY; PNG/JPEG for kind=reconstruct"},
                                "mask": {"type": "string", "format": "binary", "description": "optional mask image (PNG/JPEG, nonzero = object) for kind=reconstruct"},
                                "target": {"type": "string", "format": "binary", "description": "optional low-poly model (GLB/glTF/OBJ zip/PLY) for kind=bake: the result keeps its vertices, faces and UVs (first UV set, or options.uv_set)"},
                                "options": {
                                    "type": "string",
                                    "description": "JSON object: the `kiln bake` options (" + ", ".join(BakeOptions.field_names()) + ") plus kind (bake|reconstruct)",
                                },
                            },
                        }
                    }
                },
            }
        },
    )
    async def create_job(request: Request):
        if sup.stopping:
            raise ApiError(503, "shutting_down", "the service is shutting down", "retry when it is back")
        if sup.queue_full():
            raise ApiError(429, "queue_full", f"the job queue is full ({cfg.max_queue} jobs waiting)", "wait for jobs to finish, then retry")
        up = await receive_job_upload(request, cfg.uploads_dir, cfg.max_upload_bytes)
        try:
            spec = parse_job_options(up.options_text, cfg.allow_fault_injection, sup.recon_option_keys())
            if cfg.caps is not None:
                maps = spec["options"].get("maps")
                device = "cpu" if not cfg.gpus or spec["options"].get("device") == "cpu" else "cuda"
                n_maps = None
                if isinstance(maps, str) and maps.strip().lower() not in ("", "auto"):
                    from engine.bake.channels import ALL, parse_maps  # torch-free: names only

                    n_maps = len(parse_maps(maps) or ALL)
                spec["options"], refusal = check_job(spec["options"], cfg.caps, spec["given"], n_maps, device)
                if refusal is not None:
                    raise ApiError(422, "over_limit", refusal.message, refusal.hint)
            fmt = await anyio.to_thread.run_sync(sniff_upload, up.path, spec["kind"], max(cfg.max_upload_bytes * 10, 4 * 1024**3))
            mask = up.files.get("mask")
            mask_fmt = None
            if mask is not None:
                if spec["kind"] != "reconstruct":
                    raise ApiError(422, "unknown_field", "the `mask` field belongs to kind=reconstruct jobs", "leave it out of a bake")
                try:
                    mask_fmt = await anyio.to_thread.run_sync(sniff_upload, mask.path, "reconstruct")
                except ApiError as e:
                    raise ApiError(e.status, e.code, "mask: " + e.message, "send the mask as a PNG or JPEG image (nonzero = object)")
            target = up.files.get("target")
            target_fmt = None
            if target is not None:
                if spec["kind"] != "bake":
                    raise ApiError(422, "unknown_field", "the `target` field belongs to kind=bake jobs", "leave it out of a reconstruction")
                try:
                    target_fmt = await anyio.to_thread.run_sync(sniff_upload, target.path, "bake", max(cfg.max_upload_bytes * 10, 4 * 1024**3))
                except ApiError as e:
                    raise ApiError(e.status, e.code, "target: " + e.message, "send the low-poly to bake onto as a GLB, glTF, OBJ (zip) or PLY file")
            job_id = uuid.uuid4().hex
            jdir = sup.job_dir(job_id)
            jdir.mkdir(parents=True)
            input_file = "input." + INPUT_EXT[fmt]
            os.replace(up.path, jdir / input_file)
            up.files["file"].path = None
            mask_file = None
            if mask is not None:
                mask_file = "mask." + INPUT_EXT[mask_fmt]
                os.replace(mask.path, jdir / mask_file)
                mask.path = None
            target_file = None
            if target is not None:
                target_file = "target." + INPUT_EXT[target_fmt]
                os.replace(target.path, jdir / target_file)
                target.path = None
            job = Job(
                id=job_id,
                kind=spec["kind"],
                options=spec["options"],
                source_name=display_name(up.filename),
                input_file=input_file,
                input_format=fmt,
                input_bytes=up.size,
                recon_options=spec["reconstruct"],
                fault=spec["fault"],
                mask_file=mask_file,
                target_file=target_file,
            )
            if not sup.submit(job):
                shutil.rmtree(jdir, ignore_errors=True)
                raise ApiError(503, "shutting_down", "the service is shutting down", "retry when it is back")
        finally:
            up.discard()
        return JSONResponse(sup.get(job_id), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})

    @app.get("/v1/jobs", response_model=JobList, summary="All jobs, oldest first", responses=ERRORS)
    def list_jobs(state: Optional[Literal["queued", "running", "succeeded", "failed", "cancelled"]] = Query(None)):
        jobs = sup.list(state)
        return {"jobs": jobs, "count": len(jobs)}

    @app.get("/v1/jobs/{job_id}", response_model=JobModel, summary="State, stage, progress, timings and error of a job", responses=ERRORS)
    def get_job(job_id: str):
        return _job_or_404(job_id)

    def _job_or_404(job_id: str) -> dict:
        job = sup.get(job_id)
        if job is None:
            raise _job_not_found(job_id)
        return job

    def _need_succeeded(job_id: str) -> dict:
        job = _job_or_404(job_id)
        if job["state"] in ("queued", "running"):
            raise ApiError(409, "not_ready", f"job {job_id} is {job['state']} (stage {job['stage']}, {job['progress']:.0%})",
                           "poll GET /v1/jobs/{id} until its state is succeeded")
        if job["state"] != "succeeded":
            err = job.get("error") or {}
            raise ApiError(409, "no_result", f"job {job_id} {job['state']}: {err.get('message') or job['message']}", err.get("hint"))
        return job

    @app.get(
        "/v1/jobs/{job_id}/result",
        summary="The baked GLB (model/gltf-binary); 409 while the job is not done",
        response_class=Response,
        responses={200: {"content": {"model/gltf-binary": {"schema": {"type": "string", "format": "binary"}}}}, 409: {"model": ErrorResponse}, **ERRORS},
    )
    def get_result(job_id: str):
        job = _need_succeeded(job_id)
        try:
            f = open(sup.result_path(job_id, "result.glb"), "rb")
        except OSError:
            raise _job_not_found(job_id)
        size = os.fstat(f.fileno()).st_size

        def chunks():
            try:
                while True:
                    b = f.read(1024 * 1024)
                    if not b:
                        break
                    yield b
            finally:
                f.close()

        name = download_stem(job["source_name"]) + "_kiln.glb"
        return StreamingResponse(
            chunks(),
            media_type="model/gltf-binary",
            headers={"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/v1/jobs/{job_id}/report", summary="The JSON report of a finished bake", responses={409: {"model": ErrorResponse}, **ERRORS})
    def get_report(job_id: str):
        _need_succeeded(job_id)
        try:
            with open(sup.result_path(job_id, "report.json")) as f:
                return JSONResponse(json.load(f))
        except (OSError, ValueError):
            raise _job_not_found(job_id)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobModel, summary="Cancel a queued or running job (a finished job is returned unchanged)", responses=ERRORS)
    def cancel_job(job_id: str):
        job = sup.cancel(job_id)
        if job is None:
            raise _job_not_found(job_id)
        return job

    @app.delete("/v1/jobs/{job_id}", response_model=Deleted, summary="Remove a finished job and its files", responses={409: {"model": ErrorResponse}, **ERRORS})
    def delete_job(job_id: str):
        r = sup.delete(job_id)
        if r is None:
            raise _job_not_found(job_id)
        if r != "deleted":
            raise ApiError(409, "job_not_finished", f"job {job_id} is {r}", f"cancel it first (POST /v1/jobs/{job_id}/cancel), then delete it")
        return {"id": job_id, "deleted": True}

    @app.get("/v1/doctor", summary="Diagnose the engine's environment (runs `kiln doctor --json` in a subprocess)",
             responses={501: {"model": ErrorResponse}, 502: {"model": ErrorResponse}, 504: {"model": ErrorResponse}, **ERRORS})
    async def doctor_endpoint(request: Request, refresh: bool = False):
        return JSONResponse(await doctor.get(refresh, request.is_disconnected))

    return app
