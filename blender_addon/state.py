"""Transient runtime state of the add-on (never saved in the .blend).

Holds the engine manager (which owns the local engine process), the running
job and engine check, their last progress, and the last message/error shown
in the panel. A ``bpy.app.timers`` callback drains the worker threads' event
queues on the main thread while anything runs.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Callable, Optional

import bpy

from .core.client import EngineError
from .core.jobs import CANCELLED, DONE, ERROR, NOTE, PROGRESS, TERMINAL, CheckTask, JobSpec, JobTask, run_blocking
from .core.launcher import EngineManager, EngineSettings

TICK_SECONDS = 0.1


class ActiveJob:
    """A job as the UI sees it: its task plus what to do with the result."""

    def __init__(self, task: JobTask, label: str, on_done: Callable[[dict], str], workdir: str):
        self.task = task
        self.label = label
        self.on_done = on_done  # main thread: imports the result, returns the info text
        self.workdir = workdir
        self.phase = "starting"
        self.stage = ""
        self.progress = 0.0
        self.message = ""
        self.started = time.monotonic()


class Runtime:
    def __init__(self):
        self.manager = EngineManager()
        self.job: Optional[ActiveJob] = None
        self.check: Optional[CheckTask] = None
        self.engine_info: Optional[dict] = None  # last successful check: {"health", "doctor", "url", "kinds"}
        self.engine_error: Optional[EngineError] = None  # last failed check
        self.last_error: Optional[EngineError] = None
        self.last_info: str = ""
        self.last_report: Optional[dict] = None  # the engine's report of the last finished job
        self.notes: list = []
        self.timer_on = False

    @property
    def busy(self) -> bool:
        return self.job is not None


rt = Runtime()


def addon_package() -> str:
    return __package__


def prefs():
    addon = bpy.context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def engine_settings() -> EngineSettings:
    """Copy the preferences into plain values for the worker thread."""
    p = prefs()
    if p is None:
        return EngineSettings()
    return EngineSettings(
        mode=p.engine_mode,
        python_path=bpy.path.abspath(p.python_path) if p.python_path.startswith("//") else p.python_path,
        extra_env=p.extra_env,
        url=p.engine_url,
        token=p.token,
        timeout=p.timeout,
        start_timeout=p.start_timeout,
        transfer_timeout=p.transfer_timeout,
        job_timeout=p.job_timeout,
    )


def set_error(e: Optional[EngineError]) -> None:
    """The last job error, for the panel and for scripts (WindowManager props, never saved)."""
    rt.last_error = e
    wm = bpy.context.window_manager
    if wm is not None and hasattr(wm, "kiln_error"):
        wm.kiln_error = e.message if e else ""
        wm.kiln_error_hint = e.hint if e else ""
        wm.kiln_error_code = e.code if e else ""


def offers(kind: str) -> Optional[bool]:
    """Whether the last checked engine offers ``kind`` jobs (None: unknown)."""
    info = rt.engine_info
    if not info or info.get("kinds") is None:
        return None
    return kind in info["kinds"]


# --------------------------------------------------------------------------- events


def _apply_job_event(job: ActiveJob, ev) -> Optional[tuple]:
    """Update UI state from one event; returns (level, text) for terminal events."""
    if ev.kind == PROGRESS:
        d = ev.data
        job.phase, job.stage, job.progress, job.message = d["phase"], d["stage"], d["progress"], d["message"]
        return None
    if ev.kind == NOTE:
        rt.notes.append(ev.data)
        return ("WARNING", f"Kiln: {ev.data}")
    if ev.kind == DONE:
        try:
            info = job.on_done(ev.data)
        except EngineError as e:
            set_error(e)
            shutil.rmtree(job.workdir, ignore_errors=True)
            return ("ERROR", f"Kiln: {e.full_text()}")
        except Exception as e:  # import failed in Blender: report, keep the files for inspection
            import traceback

            traceback.print_exc()
            set_error(EngineError(f"could not import the result: {e}", hint=f"the result is kept in {job.workdir}", code="import_failed"))
            return ("ERROR", f"Kiln: {rt.last_error.full_text()}")
        set_error(None)
        rt.last_info = info
        rt.last_report = ev.data.get("report")
        shutil.rmtree(job.workdir, ignore_errors=True)
        return ("INFO", f"Kiln: {info}")
    if ev.kind == ERROR:
        set_error(ev.data)
        rt.last_info = ""
        shutil.rmtree(job.workdir, ignore_errors=True)
        return ("ERROR", f"Kiln: {ev.data.full_text()}")
    if ev.kind == CANCELLED:
        set_error(None)
        rt.last_info = f"{job.label}: cancelled"
        shutil.rmtree(job.workdir, ignore_errors=True)
        return ("WARNING", f"Kiln: {job.label} cancelled")
    return None


def _apply_check_event(ev) -> Optional[tuple]:
    if ev.kind == DONE:
        rt.engine_info = ev.data
        rt.engine_error = None
        return ("INFO", "Kiln: " + engine_summary(ev.data))
    if ev.kind == ERROR:
        rt.engine_error = ev.data
        rt.engine_info = None
        return ("ERROR", f"Kiln: {ev.data.full_text()}")
    if ev.kind == NOTE:
        rt.notes.append(ev.data)
        return ("WARNING", f"Kiln: {ev.data}")
    if ev.kind == CANCELLED:
        return ("WARNING", "Kiln: engine check cancelled")
    return None


def process_events(report: Callable[[str, str], None]) -> bool:
    """Drain both tasks' queues on the main thread. Returns True if anything changed."""
    changed = False
    job = rt.job
    if job is not None:
        for ev in job.task.drain():
            changed = True
            msg = _apply_job_event(job, ev)
            if msg:
                report(*msg)
            if ev.kind in TERMINAL:
                rt.job = None
                break
    chk = rt.check
    if chk is not None:
        for ev in chk.drain():
            changed = True
            msg = _apply_check_event(ev)
            if msg:
                report(*msg)
            if ev.kind in TERMINAL:
                rt.check = None
                break
    return changed


def _report_async(level: str, text: str) -> None:
    """Report from a timer: the Info log / status bar via an internal operator, and the console."""
    print(text)
    try:
        with bpy.context.temp_override(**_window_ctx()):
            bpy.ops.kiln.report(level=level, message=text)
    except Exception:
        pass


def _window_ctx() -> dict:
    wm = bpy.context.window_manager
    if wm is not None and len(wm.windows):
        win = wm.windows[0]
        return {"window": win, "screen": win.screen}
    return {}


def redraw() -> None:
    wm = bpy.context.window_manager
    if wm is None:
        return
    for win in wm.windows:
        for area in win.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def _tick() -> Optional[float]:
    try:
        if process_events(_report_async):
            redraw()
    except Exception:
        import traceback

        traceback.print_exc()
    if rt.job is None and rt.check is None:
        rt.timer_on = False
        return None
    return TICK_SECONDS


def ensure_timer() -> None:
    if not rt.timer_on and not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=TICK_SECONDS, persistent=True)
    rt.timer_on = True


def blocking_wanted(run_mode: str) -> bool:
    if run_mode == "BLOCKING":
        return True
    if run_mode == "ASYNC":
        return False
    return bool(bpy.app.background)


# --------------------------------------------------------------------------- start / stop


def start_job(spec: JobSpec, label: str, on_done: Callable[[dict], str], blocking: bool, report: Callable[[str, str], None]):
    """Start a job. Blocking: returns the terminal event kind. Otherwise returns None and the timer takes over."""
    settings = engine_settings()
    task = JobTask(rt.manager, settings, spec)
    job = ActiveJob(task, label, on_done, spec.workdir)
    rt.job = job
    set_error(None)
    rt.last_info = ""
    rt.notes = []
    return _launch(task, lambda ev: _apply_job_event(job, ev), blocking, report, "job")


def _launch(task, apply_event, blocking: bool, report, slot: str):
    """Async: start the worker thread and let the timer drain its events; returns None.
    Blocking (background mode): run the task here, report its messages, return the terminal event kind."""
    if not blocking:
        task.start()
        ensure_timer()
        return None
    final = {"kind": None}

    def handle(ev):
        msg = apply_event(ev)
        if msg:
            report(*msg)
        if ev.kind in TERMINAL:
            final["kind"] = ev.kind

    try:
        run_blocking(task, handle)
    finally:
        setattr(rt, slot, None)
    return final["kind"]


def start_check(blocking: bool, report: Callable[[str, str], None]):
    settings = engine_settings()
    task = CheckTask(rt.manager, settings)
    rt.check = task
    return _launch(task, _apply_check_event, blocking, report, "check")


def new_workdir() -> str:
    return tempfile.mkdtemp(prefix="kiln-job-")


def shutdown(join_timeout: float = 10.0) -> None:
    """Cancel what runs, stop the local engine, wait for the worker threads."""
    tasks = [t for t in ((rt.job.task if rt.job else None), rt.check) if t is not None]
    for t in tasks:
        t.cancel()
    rt.manager.stop(remove_logs=True)  # requests in flight fail fast once the engine is gone
    deadline = time.monotonic() + join_timeout
    for t in tasks:
        t.join(max(0.0, deadline - time.monotonic()))
    if rt.job is not None:
        shutil.rmtree(rt.job.workdir, ignore_errors=True)
    rt.job = None
    rt.check = None
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    rt.timer_on = False


def engine_summary(info: Optional[dict]) -> str:
    if not info:
        return "not checked"
    h = info.get("health") or {}
    parts = [f"engine {h.get('version', '?')}"]
    backends = h.get("backends")
    if not backends and isinstance(h.get("workers"), list):  # the service may not have heard from a worker yet
        seen = []
        for w in h["workers"]:
            for b in (w.get("backends") or []) if isinstance(w, dict) else []:
                if b not in seen:
                    seen.append(b)
        backends = seen or ["starting…"]
    if isinstance(backends, dict):
        names = [k for k, v in backends.items() if v and k != "gpus"]
        parts.append("backends: " + ", ".join(names))
    elif isinstance(backends, (list, tuple)):
        parts.append("backends: " + ", ".join(str(b) for b in backends))
    gpus = h.get("gpus")
    if gpus is None and isinstance(backends, dict):
        gpus = backends.get("gpus")
    if isinstance(gpus, (list, tuple)):
        parts.append("GPU: " + (", ".join(str(g if not isinstance(g, dict) else g.get("name", g)) for g in gpus) or "none"))
    return " · ".join(parts) + f" at {info.get('url', '?')}"

