"""Engine work on a worker thread, reported through a queue.

A task's thread does all network and process work and never touches Blender
data; it only puts :class:`Event` objects on ``task.events``. Blender's main
thread drains that queue from a ``bpy.app.timers`` callback (or, in
background mode, from a blocking loop) and is the only one that changes the
scene.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

from .client import EngineError, JobCancelled, job_kinds
from .launcher import EngineManager, EngineSettings

# Event kinds
PROGRESS = "progress"  # data: {"phase", "stage", "progress", "message"}
NOTE = "note"  # data: str, something the artist should know (engine restarted, ...)
DONE = "done"  # data: task-specific result dict
ERROR = "error"  # data: EngineError
CANCELLED = "cancelled"  # data: str
TERMINAL = (DONE, ERROR, CANCELLED)


@dataclass
class Event:
    kind: str
    data: Any = None


class Task:
    """Base: a thread running ``_work`` and posting events; cancel() is cooperative."""

    name = "task"

    def __init__(self, manager: EngineManager, settings: EngineSettings):
        self.manager = manager
        self.settings = settings
        self.events: "queue.Queue[Event]" = queue.Queue()
        self._cancel = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.finished = threading.Event()

    # -- main-thread API --------------------------------------------------------

    def start(self) -> "Task":
        self.thread = threading.Thread(target=self._main, name=f"kiln-{self.name}", daemon=True)
        self.thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def drain(self) -> list:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def join(self, timeout: Optional[float] = None) -> bool:
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True

    # -- worker side -----------------------------------------------------------

    def post(self, kind: str, data: Any = None) -> None:
        self.events.put(Event(kind, data))

    def progress(self, phase: str, stage: str, fraction: float, message: str = "") -> None:
        self.post(PROGRESS, {"phase": phase, "stage": stage, "progress": max(0.0, min(1.0, float(fraction))), "message": message})

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled("cancelled")

    def connect(self):
        self.check_cancel()
        local = self.settings.mode != "REMOTE"
        if local and self.manager.local_pid is None:
            self.progress("connecting", "engine", 0.0, "starting the local engine")
        else:
            self.progress("connecting", "engine", 0.0, "connecting to the engine")
        notes: list = []
        try:
            return self.manager.client(self.settings, notes, should_cancel=self._cancel.is_set)
        finally:
            for n in notes:  # also when the restart failed: the artist learns the engine had died
                self.post(NOTE, n)

    def _main(self) -> None:
        try:
            result = self._work()
        except JobCancelled as e:
            self.post(CANCELLED, e.message)
        except EngineError as e:
            if e.code == "cancelled":
                self.post(CANCELLED, e.message)
            else:
                lost = self.manager.explain_lost() if e.code in ("engine_unreachable", "engine_timeout") and self.settings.mode != "REMOTE" else None
                if lost:
                    e = EngineError(lost[0].upper() + lost[1:], hint="the engine crashed or was killed; press the button again to retry", code="engine_died")
                self.post(ERROR, e)
        except Exception as e:  # a bug: say so instead of dying silently in a thread
            traceback.print_exc()
            self.post(ERROR, EngineError(f"unexpected error in Kiln: {e.__class__.__name__}: {e}", hint="see the system console for the traceback and report it", code="internal_error"))
        else:
            self.post(DONE, result)
        finally:
            self.finished.set()

    def _work(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class CheckTask(Task):
    """Health (and doctor, when the engine has it) of the configured engine."""

    name = "check"

    def __init__(self, manager: EngineManager, settings: EngineSettings, doctor: bool = True):
        super().__init__(manager, settings)
        self.want_doctor = doctor

    def _work(self) -> dict:
        client = self.connect()
        self.progress("checking", "health", 0.3, "asking the engine")
        health = client.health()
        doctor = None
        if self.want_doctor:
            self.progress("checking", "doctor", 0.6, "running the engine's diagnostics")
            try:
                doctor = client.doctor()
            except EngineError as e:
                doctor = {"error": e.to_dict()}
        return {"health": health, "doctor": doctor, "url": client.base_url, "kinds": job_kinds(health)}


@dataclass
class JobSpec:
    kind: str  # "bake" | "reconstruct"
    upload: str  # path of the file to upload
    filename: str  # name sent to the engine (never used as a path there)
    options: dict
    workdir: str  # where the result is written
    content_type: str = "application/octet-stream"
    extra_files: list = field(default_factory=list)  # (field, filename, path, content_type)
    label: str = ""
    requires: tuple = ()  # engine features the job needs (health "features"), e.g. "bake_target"


FEATURE_HINTS = {
    "bake_target": "this engine cannot bake onto a target mesh (Target: Active)",
}


class JobTask(Task):
    """Upload a source, follow the engine job, download the result GLB."""

    name = "job"

    def __init__(self, manager: EngineManager, settings: EngineSettings, spec: JobSpec):
        super().__init__(manager, settings)
        self.spec = spec
        self.engine_job_id: Optional[str] = None

    def _upload_progress(self, sent: int, total: int) -> None:
        self.check_cancel()
        self.progress("uploading", "upload", sent / total if total else 0.0, f"{sent / 1e6:.1f} / {total / 1e6:.1f} MB")

    def _download_progress(self, got: int, total: int) -> None:
        self.check_cancel()
        self.progress("downloading", "download", got / total if total else 0.0, f"{got / 1e6:.1f} MB")

    def _on_update(self, job: dict) -> None:
        state = job.get("state") or "running"
        stage = job.get("stage") or state
        msg = job.get("message") or ""
        if state == "queued" and not msg:
            pos = job.get("queue_position")
            msg = "waiting for a worker" + (f" ({pos} ahead)" if isinstance(pos, int) and pos > 0 else "")
        if self._cancel.is_set():
            msg = "cancelling…"
        self.progress(state, stage, float(job.get("progress") or 0.0), msg)

    def _wait_for_worker(self, client, health: dict) -> dict:
        """A just-started engine lists its features once a worker has said hello (``backends`` is
        null until then): wait for that, up to the start timeout, before judging what it can do."""
        deadline = time.monotonic() + max(5.0, float(self.settings.start_timeout or 60.0))
        while health.get("backends") is None and time.monotonic() < deadline:
            self.progress("connecting", "engine", 0.0, "waiting for the engine's worker")
            self.check_cancel()
            time.sleep(0.25)
            health = client.health()
        return health

    def _work(self) -> dict:
        spec = self.spec
        client = self.connect()
        self.check_cancel()
        health = client.health()
        kinds = job_kinds(health)
        if kinds is not None and spec.kind not in kinds:
            raise EngineError(
                f"this engine does not offer '{spec.kind}' jobs (it offers: {', '.join(kinds) or 'none'})",
                hint="update the engine, or connect to one that has it",
                code="unsupported_kind",
            )
        limit = (health.get("limits") or {}).get("max_upload_bytes") if isinstance(health.get("limits"), dict) else None
        size = sum(os.path.getsize(p) for p in [spec.upload] + [f[2] for f in spec.extra_files])
        if isinstance(limit, (int, float)) and limit > 0 and size > limit:
            # Checked here because a server refusing mid-upload often just resets the connection.
            raise EngineError(
                f"the upload is {size / 1e6:.1f} MB but this engine accepts at most {limit / 1e6:.1f} MB",
                hint="lower the source's resolution (e.g. a Decimate modifier) or start the engine with a larger --max-upload-mb",
                code="upload_too_large",
            )
        if spec.requires and "features" in health and health.get("backends") is None:
            health = self._wait_for_worker(client, health)
        features = health.get("features")
        for need in spec.requires:
            if not isinstance(features, (list, tuple)) or need not in features:
                raise EngineError(
                    FEATURE_HINTS.get(need, f"this engine lacks the feature {need!r}"),
                    hint="update the engine (`kiln serve`) to this add-on's version, or set Target to New",
                    code="unsupported_feature",
                )
        options = dict(spec.options)
        known = health.get("bake_options")
        if isinstance(known, (list, tuple)):
            dropped = sorted(k for k in options if k not in known and k not in ("fault",))
            for k in dropped:
                options.pop(k)
            if dropped:
                self.post(NOTE, f"this engine does not know the option(s) {', '.join(dropped)}: baked without them (update the engine)")
        self.progress("uploading", "upload", 0.0, "")
        options["kind"] = spec.kind
        self.engine_job_id = client.submit(spec.upload, spec.filename, options, spec.content_type, spec.extra_files, on_upload=self._upload_progress)
        timeout = self.settings.job_timeout if self.settings.job_timeout and self.settings.job_timeout > 0 else None
        final = client.wait(
            self.engine_job_id,
            on_update=self._on_update,
            should_cancel=self._cancel.is_set,
            poll_interval=self.settings.poll_interval,
            timeout=timeout,
        )
        self.check_cancel()
        os.makedirs(spec.workdir, exist_ok=True)
        out = os.path.join(spec.workdir, "result.glb")
        self.progress("downloading", "download", 0.0, "")
        client.download_result(self.engine_job_id, out, on_progress=self._download_progress)
        try:
            report = client.report(self.engine_job_id)
        except EngineError:
            report = None
        try:
            client.delete(self.engine_job_id)  # the engine keeps nothing we no longer need
        except EngineError:
            pass
        return {"result": out, "report": report, "job": final, "engine": client.base_url}


def run_blocking(task: Task, handle, interval: float = 0.05, timeout: Optional[float] = None) -> Event:
    """Run ``task`` to its end on the calling thread's behalf, passing every
    event to ``handle(event)``; returns the terminal event. Used in Blender's
    background mode (no timers) and by tests. KeyboardInterrupt cancels."""
    if task.thread is None:
        task.start()
    t0 = time.monotonic()
    final = None
    while final is None:
        try:
            task.finished.wait(interval)
        except KeyboardInterrupt:
            task.cancel()
            continue
        for ev in task.drain():
            handle(ev)
            if ev.kind in TERMINAL:
                final = ev
        if final is None and timeout is not None and time.monotonic() - t0 > timeout:
            task.cancel()
            timeout = None
    task.join(5.0)
    return final
