"""Job table, queue and worker supervision for the engine service.

One ``WorkerSlot`` (a thread in the HTTP process) owns one worker process at a
time: it starts the worker (spawn), waits for its hello, takes the next queued
job, forwards progress and watches for the end of the job, a cancel request,
the job timeout and the death of the worker. Whatever happens to the worker,
the slot records the outcome on that one job, starts a fresh worker and goes
on with the queue. Queued jobs live here, in the HTTP process, so a worker
crash never loses them.

No torch, no CUDA, no geometry code in this module.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Optional

from engine.io.safety import atomic_write
from engine.service import messages as M
from engine.service.config import ServiceConfig
from engine.service.executors.base import SupervisedSlot

log = logging.getLogger("kiln.service")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_CTX = multiprocessing.get_context("spawn")
SCRATCH_DIR = "scratch"  # a job's temporary files (zip extraction, library temp files), removed with the job

SIGNAL_HINTS = {
    "SIGSEGV": "native code (GPU driver, nvdiffrast, Embree or a mesh library) crashed on this job. The service is fine and "
    "the next job runs in a fresh worker. Try device \"cpu\", a smaller texture_size or view_resolution, or clean up the "
    "mesh; `kiln doctor` on the server checks the GPU set-up.",
    "SIGBUS": "native code crashed (bus error), often a full disk or /dev/shm. Free some space on the server and retry.",
    "SIGILL": "native code used an instruction this CPU does not have; reinstall the engine's packages for this machine.",
    "SIGFPE": "native code crashed (arithmetic error) on this mesh; clean up degenerate geometry or try device \"cpu\".",
    "SIGABRT": "native code aborted, typically a fatal CUDA error or a failed assertion. Retry; if it repeats, try device "
    "\"cpu\" or a smaller texture_size/view_resolution, and run `kiln doctor` on the server.",
    "SIGKILL": "the worker was killed from outside, most often by the out-of-memory killer (see `dmesg` on the server). "
    "Lower faces, texture_size or view_resolution, run fewer workers, or give the server more memory.",
    "SIGTERM": "the worker was terminated from outside the service (an administrator or the system). Submit the job again.",
}


def _remove_scratch(jdir: Path) -> None:
    """A job's scratch folder and partial result: removed as soon as no worker writes them."""
    shutil.rmtree(jdir / SCRATCH_DIR, ignore_errors=True)
    try:
        (jdir / "result.partial.glb").unlink(missing_ok=True)
    except OSError:
        pass


def describe_exit(exitcode: Optional[int], stage: Optional[str]) -> dict:
    """The error of a job whose worker process ended with ``exitcode`` while in ``stage``."""
    stage = stage or "start"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return {
            "code": "worker_crashed",
            "message": f"the worker process crashed with {name} (signal {-exitcode}) in stage '{stage}'",
            "hint": SIGNAL_HINTS.get(name, "the job's worker died; the service started a fresh one. Submit the job again."),
            "signal": name,
            "stage": stage,
        }
    return {
        "code": "worker_crashed",
        "message": f"the worker process exited unexpectedly (status {exitcode}) in stage '{stage}'",
        "hint": "the service started a fresh worker; submit the job again. If it repeats, see the service log.",
        "signal": None,
        "stage": stage,
    }


@dataclass
class Job:
    id: str
    kind: str
    options: dict
    source_name: str
    input_file: str
    input_format: str
    input_bytes: int
    recon_options: Optional[dict] = None
    fault: Optional[str] = None
    mask_file: Optional[str] = None
    target_file: Optional[str] = None  # kind=bake: the uploaded low-poly to bake onto
    state: str = "queued"
    stage: Optional[str] = None
    progress: float = 0.0
    message: str = "waiting for a worker"
    error: Optional[dict] = None
    created_at: float = field(default_factory=time.time)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    stage_seconds: dict = field(default_factory=dict)
    worker: Optional[int] = None
    cancel_requested: bool = False
    # runtime only (not persisted)
    seq: int = 0
    requeues: int = 0
    stage_t0: Optional[float] = None

    PERSISTED = (
        "id", "kind", "options", "source_name", "input_file", "input_format", "input_bytes", "recon_options", "fault", "mask_file", "target_file",
        "state", "stage", "progress", "message", "error", "created_at", "started_at", "finished_at", "stage_seconds",
        "worker", "cancel_requested",
    )

    def to_persisted(self) -> dict:
        return {k: getattr(self, k) for k in self.PERSISTED}

    @classmethod
    def from_persisted(cls, d: dict) -> "Job":
        return cls(**{k: d[k] for k in cls.PERSISTED if k in d})

    def enter_stage(self, stage: str, now: float) -> None:
        if stage == self.stage:
            return
        self.close_stage(now)
        self.stage = stage
        self.stage_t0 = now

    def close_stage(self, now: float) -> None:
        if self.stage and self.stage_t0 is not None and self.stage not in ("start", "done"):
            self.stage_seconds[self.stage] = round(self.stage_seconds.get(self.stage, 0.0) + (now - self.stage_t0), 4)
        self.stage_t0 = None

    def public(self, queue_position: Optional[int], retention_s: float) -> dict:
        now = time.time()
        timings = {
            "queue_wait": round(((self.started_at or self.finished_at or now) - self.created_at), 3),
            "run": round(((self.finished_at or now) - self.started_at), 3) if self.started_at else None,
            "stages": dict(self.stage_seconds),
        }
        done = self.state == "succeeded"
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "stage": self.stage,
            "progress": round(float(self.progress), 4),
            "message": self.message,
            "error": self.error,
            "timings": timings,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "expires_at": (self.finished_at + retention_s) if self.finished_at else None,
            "queue_position": queue_position,
            "worker": self.worker,
            "cancel_requested": self.cancel_requested,
            "source_name": self.source_name,
            "input_format": self.input_format,
            "input_bytes": self.input_bytes,
            "options": self.options,
            "result_url": f"/v1/jobs/{self.id}/result" if done else None,
            "report_url": f"/v1/jobs/{self.id}/report" if done else None,
        }


class WorkerSlot(SupervisedSlot):
    """One worker process at a time, supervised by one thread: the ``local`` executor's slot.

    It pulls jobs from any ``engine.service.executors.base.JobQueue`` (the service's
    ``Supervisor`` or a ``kiln batch`` run) and reports every outcome through its public methods.
    """

    def __init__(self, sup, index: int, gpu):
        self.sup = sup  # a JobQueue
        self.index = index
        self.gpu = gpu  # GpuInfo or None
        self.state = "starting"
        self.proc = None
        self.conn = None
        self.pid: Optional[int] = None
        self.job_id: Optional[str] = None
        self.restarts = 0
        self.jobs_done = 0
        self.last_exit: Optional[str] = None
        self.info: Optional[dict] = None
        self.acked = False
        self.cancel_seq = _CTX.RawValue("q", 0)
        self.thread = threading.Thread(target=self._loop, name=f"kiln-slot-{index}", daemon=True)

    # -- status ---------------------------------------------------------------------------------
    def public(self) -> dict:
        info = self.info or {}
        return {
            "id": self.index,
            "state": self.state,
            "pid": self.pid,
            "gpu": self.gpu.to_dict() if self.gpu else None,
            "device": "cuda" if self.gpu else "cpu",
            "job": self.job_id,
            "jobs_done": self.jobs_done,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "backends": info.get("backends"),
            "gpu_names": info.get("gpu_names"),
            "cuda_visible_devices": info.get("cuda_visible_devices"),
        }

    def where(self) -> dict:
        """Where this slot's jobs run (for kiln batch's summary)."""
        import socket

        info = self.info or {}
        gpu = None
        if self.gpu is not None:
            gpu = f"{self.gpu.name} ({self.gpu.visible_id})" if self.gpu.name else str(self.gpu.visible_id)
        return {"node": socket.gethostname(), "gpu": gpu, "worker": f"local worker {self.index} (pid {self.pid})",
                "backends": info.get("backends")}

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self._kill()

    # -- process management ---------------------------------------------------------------------
    def _start(self) -> bool:
        from engine.service.worker import worker_main

        self.state = "starting"
        self.info = None
        try:
            parent_conn, child_conn = _CTX.Pipe(duplex=True)
            proc = _CTX.Process(
                target=worker_main,
                args=(child_conn, self.cancel_seq, self.index, self.gpu.visible_id if self.gpu else None, os.getpid()),
                name=f"kiln-worker-{self.index}",
                daemon=True,
            )
            proc.start()
            child_conn.close()
        except Exception as e:  # pragma: no cover - fork/exec failures (EMFILE, ENOMEM)
            self.last_exit = f"could not start: {e.__class__.__name__}: {e}"
            log.error("worker %d %s", self.index, self.last_exit)
            return False
        self.proc, self.conn, self.pid = proc, parent_conn, proc.pid
        deadline = time.monotonic() + self.sup.config.worker_start_timeout
        while not self.sup.stopping:
            ready = mp_wait([parent_conn, proc.sentinel], timeout=0.5)
            if parent_conn in ready:
                try:
                    msg = M.recv(parent_conn)
                except (EOFError, OSError):
                    msg = None
                except M.MessageError as e:
                    self.last_exit = f"sent a malformed message while starting ({e}); killed"
                    log.error("worker %d %s", self.index, self.last_exit)
                    self._kill()
                    return False
                if msg is not None:
                    if isinstance(msg, M.Hello):
                        self.info = msg.info
                        self.state = "idle"
                        log.info("worker %d ready (pid %d, backends %s)", self.index, proc.pid, self.info.get("backends"))
                        return True
                    continue
            if proc.sentinel in ready or (parent_conn in ready and not proc.is_alive()):
                proc.join(5)
                self.last_exit = "died while starting: " + describe_exit(proc.exitcode, "start")["message"]
                log.error("worker %d %s", self.index, self.last_exit)
                self._forget()
                return False
            if time.monotonic() > deadline:
                self.last_exit = f"did not start within {self.sup.config.worker_start_timeout:.0f} s"
                log.error("worker %d %s", self.index, self.last_exit)
                self._kill()
                return False
        return False

    def _forget(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
        except OSError:
            pass
        self.proc = self.conn = None
        self.pid = None

    def _kill(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
            except Exception:
                pass
            self.proc.join(10)
        self._forget()

    def _recycle(self, reason: str, jdir: Path) -> None:
        """Kill the worker in the middle of a job (forced cancel, timeout); the loop starts a fresh one.
        The job's scratch (the killed worker wrote it last) goes before the caller marks the job ended."""
        self._kill()
        _remove_scratch(jdir)
        self.restarts += 1
        self.last_exit = reason

    def _stop_worker(self) -> None:
        if self.proc is None:
            return
        try:
            M.send(self.conn, M.Stop())
        except (OSError, ValueError):
            pass
        self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self._forget()

    # -- main loop ------------------------------------------------------------------------------
    name = "worker slot"

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def _on_idle_death(self) -> None:
        if self.proc is not None:  # died while idle
            self.proc.join(5)
            self.last_exit = "died while idle: " + describe_exit(self.proc.exitcode, "idle")["message"]
            log.warning("worker %d %s", self.index, self.last_exit)
            self.restarts += 1
            self._forget()

    def _stop(self) -> None:
        self._stop_worker()

    def _run(self, job: Job) -> None:
        sup = self.sup
        cfg = sup.config
        jdir = sup.job_dir(job.id)
        inputs = sup.inputs(job)
        msg = M.JobRequest(
            seq=job.seq,
            id=job.id,
            kind=job.kind,
            input=str(inputs.input),
            partial=str(jdir / "result.partial.glb"),
            output=str(jdir / "result.glb"),
            report=str(jdir / "report.json"),
            scratch=str(jdir / SCRATCH_DIR),
            options=job.options,
            recon_options=job.recon_options,
            fault=job.fault,
            mask=str(inputs.mask) if inputs.mask else None,
            target=str(inputs.target) if inputs.target else None,
            source_name=job.source_name,
        )
        self.acked = False
        try:
            if not self.proc.is_alive():
                raise BrokenPipeError
            M.send(self.conn, msg)
        except (OSError, ValueError):
            # The worker went away between its hello and this job: the job never started.
            sup.requeue(job)
            return
        self.state = "busy"
        self.job_id = job.id
        t0 = time.monotonic()
        cancel_deadline = None
        try:
            while True:
                ready = mp_wait([self.conn, self.proc.sentinel], timeout=0.2)
                if ready:
                    outcome = self._read(job)
                    if outcome == "ended":
                        self.jobs_done += 1
                        return
                    if outcome == "dead":
                        self._died(job)
                        return
                now = time.monotonic()
                if job.cancel_requested:
                    if cancel_deadline is None:
                        self.cancel_seq.value = job.seq
                        cancel_deadline = now + cfg.cancel_grace
                    elif now >= cancel_deadline:
                        stage = job.stage
                        self._recycle(f"killed: job {job.id} did not stop within {cfg.cancel_grace:g} s of its cancel", jdir)
                        sup.finish(
                            job,
                            "cancelled",
                            message=f"cancelled in stage '{stage}' (the worker did not stop within {cfg.cancel_grace:g} s and was restarted)",
                            error={"code": "cancelled", "message": f"cancelled in stage '{stage}'", "hint": None, "forced": True, "stage": stage},
                        )
                        return
                if cfg.job_timeout and now - t0 > cfg.job_timeout:
                    stage = job.stage or "start"
                    self._recycle(f"killed: job {job.id} timed out", jdir)
                    sup.finish(
                        job,
                        "failed",
                        error={
                            "code": "timeout",
                            "message": f"timed out after {cfg.job_timeout:g} s in stage '{stage}'",
                            "hint": "the service limits a job's run time (kiln serve --job-timeout); lower faces, "
                            "texture_size, views or view_resolution, or ask the administrator for a longer limit",
                            "stage": stage,
                            "signal": None,
                        },
                    )
                    return
        finally:
            self.job_id = None
            self.cancel_seq.value = 0
            # The worker is done with the job or dead: whatever scratch or partial result it
            # left (a killed worker cannot clean up) goes now, not at the retention sweep.
            _remove_scratch(jdir)
            if self.proc is not None and self.proc.is_alive():
                self.state = "idle"
            else:
                self.state = "restarting"

    def _read(self, job: Job) -> Optional[str]:
        """Handle every message that is waiting. Returns "ended", "dead" or None (still running)."""
        while True:
            try:
                if not self.conn.poll(0):
                    break
                m = M.recv(self.conn)
            except (EOFError, OSError):
                return "dead"
            except M.MessageError as e:
                self._distrust(e)
                return "dead"
            if self._handle(job, m):
                return "ended"
        if not self.proc.is_alive():
            # the pipe is drained and the process is gone
            return "dead"
        return None

    def _distrust(self, e: Exception) -> None:
        """A worker that sends something that is not a valid message is killed (and its job reported crashed)."""
        log.error("worker %d sent a malformed message (%s); killing it", self.index, e)
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()

    def _handle(self, job: Job, m: M.Message) -> bool:
        sup = self.sup
        if isinstance(m, M.Hello):
            self.info = m.info
            return False
        if getattr(m, "seq", None) != job.seq:
            return False
        self.acked = True  # the worker has the job (it reports "start" before any work)
        if isinstance(m, M.Progress):
            sup.progress(job, m.stage, m.fraction, m.message)
            return False
        if isinstance(m, M.Done):
            sup.finish(job, "succeeded", message="done", timings=m.timings)
            return True
        if isinstance(m, M.Failed):
            err = dict(m.error)
            err.setdefault("stage", m.stage)
            sup.finish(job, "failed", error=err, stage=m.stage)
            return True
        if isinstance(m, M.Cancelled):
            sup.finish(
                job,
                "cancelled",
                message=m.message or "cancelled",
                error={"code": "cancelled", "message": m.message or "cancelled", "hint": None, "forced": False, "stage": m.stage},
            )
            return True
        return False

    def _died(self, job: Job) -> None:
        proc = self.proc
        proc.join(5)
        if proc.is_alive():  # the pipe broke but the process lingers: do not trust it
            proc.kill()
            proc.join(10)
        code = proc.exitcode
        # nobody writes the job's scratch any more: remove it before the job is seen to end
        _remove_scratch(self.sup.job_dir(job.id))
        self.restarts += 1
        # Everything the worker wrote before it died is still in the pipe: read it, so the
        # job's last stage is known (and a job that did finish is not reported as crashed).
        ended = False
        while not ended:
            try:
                if not self.conn.poll(0):
                    break
                ended = self._handle(job, M.recv(self.conn))
            except (EOFError, OSError, M.MessageError):
                break
        if ended:
            self.last_exit = describe_exit(code, "idle")["message"] + f" right after job {job.id}"
            self._forget()
            return
        if not self.acked and job.requeues < 2 and not job.cancel_requested:
            # Died before it even started this job (e.g. killed while idle): not the job's fault.
            self.last_exit = describe_exit(code, "idle")["message"] + " before it started a job"
            log.warning("worker %d %s; job %s goes back to the queue", self.index, self.last_exit, job.id)
            self._forget()
            job.requeues += 1
            self.sup.requeue(job)
            return
        stage = job.stage or "start"
        err = describe_exit(code, stage)
        self.last_exit = err["message"] + f" (job {job.id})"
        log.warning("worker %d: %s", self.index, self.last_exit)
        self._forget()
        if job.cancel_requested:
            self.sup.finish(
                job, "cancelled", message=f"cancelled in stage '{stage}'",
                error={"code": "cancelled", "message": f"cancelled in stage '{stage}'", "hint": None, "forced": True, "stage": stage},
            )
        else:
            self.sup.finish(job, "failed", error=err)


class Supervisor:
    def __init__(self, config: ServiceConfig):
        self.config = config
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.stopping = False
        self.stop_event = threading.Event()
        self._seq = itertools.count(1)
        from engine.service.executors import make_slots

        self.slots = make_slots(config.executor, self, config)  # where jobs run: local worker processes, a Ray cluster, ...
        self._sweeper = threading.Thread(target=self._sweep_loop, name="kiln-sweeper", daemon=True)
        self.started_at = time.time()

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.config.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.config.uploads_dir.mkdir(parents=True, exist_ok=True)
        # uploads a killed service was receiving (the data dir is locked: none is in use now)
        for p in self.config.uploads_dir.iterdir():
            try:
                p.unlink()
            except OSError:
                pass
        self._load_persisted()
        for s in self.slots:
            s.thread.start()
        self._sweeper.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, cancel queued and running ones, end the workers."""
        with self.cond:
            if self.stopping and not any(s.thread.is_alive() for s in self.slots):
                return
            self.stopping = True
            now = time.time()
            while self.queue:
                job = self.jobs.get(self.queue.popleft())
                if job is not None and job.state == "queued":
                    self._set_terminal(job, "cancelled", now, message="cancelled: the service shut down before the job started",
                                       error={"code": "cancelled", "message": "the service shut down before the job started", "hint": "submit the job again", "forced": False, "stage": None})
            for job in self.jobs.values():
                if job.state == "running":
                    job.cancel_requested = True
                    job.message = "cancelling: the service is shutting down"
            self.cond.notify_all()
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for s in self.slots:
            s.thread.join(max(0.1, deadline - time.monotonic()))
        for s in self.slots:
            s.kill()
        self._sweeper.join(2)

    # -- jobs -----------------------------------------------------------------------------------
    def new_job_id(self) -> str:
        return uuid.uuid4().hex

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):  # ids are ours (uuid4 hex); never a client path
            raise ValueError("bad job id")
        return self.config.jobs_dir / job_id

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the service is shutting down (the caller answers 503)."""
        with self.cond:
            if self.stopping:
                return False
            self.jobs[job.id] = job
            self.queue.append(job.id)
            self._persist(job)
            self.cond.notify()
        log.info("job %s queued (%s, %s, %d bytes)", job.id, job.kind, job.input_format, job.input_bytes)
        return True

    def queue_full(self) -> bool:
        with self.lock:
            return len(self.queue) >= self.config.max_queue

    def get(self, job_id: str) -> Optional[dict]:
        with self.lock:
            job = self.jobs.get(job_id)
            return None if job is None else self._public(job)

    def list(self, state: Optional[str] = None) -> list[dict]:
        with self.lock:
            jobs = sorted(self.jobs.values(), key=lambda j: j.created_at)
            return [self._public(j) for j in jobs if state is None or j.state == state]

    def _public(self, job: Job) -> dict:
        pos = None
        if job.state == "queued":
            try:
                pos = self.queue.index(job.id)
            except ValueError:
                pos = None
        return job.public(pos, self.config.retention_s)

    def state_of(self, job_id: str) -> Optional[str]:
        with self.lock:
            job = self.jobs.get(job_id)
            return None if job is None else job.state

    def cancel(self, job_id: str) -> Optional[dict]:
        with self.cond:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job.state == "queued":
                try:
                    self.queue.remove(job.id)
                except ValueError:
                    pass
                job.cancel_requested = True
                self._set_terminal(job, "cancelled", time.time(), message="cancelled before it started",
                                   error={"code": "cancelled", "message": "cancelled before it started", "hint": None, "forced": False, "stage": None})
            elif job.state == "running" and not job.cancel_requested:
                job.cancel_requested = True
                job.message = f"cancelling (stage '{job.stage}')"
            return self._public(job)

    def delete(self, job_id: str) -> Optional[str]:
        """Remove a finished job and its files. Returns its state, or None if unknown."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job.state not in TERMINAL:
                return job.state
            del self.jobs[job_id]
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        log.info("job %s deleted", job_id)
        return "deleted"

    def result_path(self, job_id: str, name: str) -> Path:
        return self.job_dir(job_id) / name

    # -- called by the slots (engine.service.executors.base.JobQueue) ----------------------------
    def inputs(self, job: Job):
        from engine.service.executors.base import JobInputs

        d = self.job_dir(job.id)
        target_file = getattr(job, "target_file", None)
        return JobInputs(
            input=d / job.input_file,
            target=d / target_file if target_file else None,
            mask=d / job.mask_file if job.mask_file else None,
        )

    def take(self, slot, timeout: float) -> Optional[Job]:
        with self.cond:
            if not self.queue and not self.stopping:
                self.cond.wait(timeout)
            if self.stopping or not self.queue:
                return None
            job = self.jobs.get(self.queue.popleft())
            if job is None or job.state != "queued":
                return None
            job.state = "running"
            job.started_at = time.time()
            job.worker = slot.index
            job.seq = next(self._seq)
            job.message = "starting"
            job.enter_stage("start", time.monotonic())
            return job

    def requeue(self, job: Job) -> None:
        with self.cond:
            if job.state != "running":
                return
            job.state = "queued"
            job.started_at = None
            job.worker = None
            job.stage = None
            job.stage_t0 = None
            job.message = "waiting for a worker"
            if job.cancel_requested:
                self._set_terminal(job, "cancelled", time.time(), message="cancelled before it started",
                                   error={"code": "cancelled", "message": "cancelled before it started", "hint": None, "forced": False, "stage": None})
            else:
                self.queue.appendleft(job.id)
                self.cond.notify()

    def progress(self, job: Job, stage: str, fraction: float, message: str) -> None:
        with self.lock:
            if job.state != "running":
                return
            job.enter_stage(stage, time.monotonic())
            if fraction == fraction:  # not NaN
                job.progress = min(max(float(fraction), job.progress if stage != "start" else 0.0), 1.0)
            if not job.cancel_requested:
                job.message = message or stage

    def finish(self, job: Job, state: str, message: Optional[str] = None, error: Optional[dict] = None,
                stage: Optional[str] = None, timings: Optional[dict] = None) -> None:
        with self.cond:
            if job.state in TERMINAL:
                return
            now = time.time()
            if state == "succeeded":
                job.progress = 1.0
                if timings:
                    job.stage_seconds = {str(k): round(float(v), 4) for k, v in timings.items() if isinstance(v, (int, float))}
            if error is not None and message is None:
                message = error.get("message")
            self._set_terminal(job, state, now, message=message or state, error=error, close=timings is None)
        level = logging.INFO if state != "failed" else logging.WARNING
        log.log(level, "job %s %s%s", job.id, state, f": {error.get('message')}" if error else "")

    def _set_terminal(self, job: Job, state: str, now: float, message: str, error: Optional[dict] = None, close: bool = True) -> None:
        if close:
            job.close_stage(time.monotonic())
        else:
            job.stage_t0 = None
        job.state = state
        job.message = message
        job.error = error
        job.finished_at = now
        if state == "succeeded":
            job.stage = "done"
        self._persist(job)

    # -- persistence and retention ---------------------------------------------------------------
    def _persist(self, job: Job) -> None:
        try:
            d = self.job_dir(job.id)
            if not d.is_dir():
                return
            atomic_write(d / "job.json", json.dumps(job.to_persisted(), default=str))
        except OSError as e:
            log.warning("could not save job %s: %s", job.id, e)

    def _load_persisted(self) -> None:
        now = time.time()
        for d in sorted(self.config.jobs_dir.iterdir()):
            if not d.is_dir() or not JOB_ID.match(d.name):
                continue
            try:
                job = Job.from_persisted(json.loads((d / "job.json").read_text()))
                if job.id != d.name:
                    raise ValueError("id mismatch")
            except Exception:
                shutil.rmtree(d, ignore_errors=True)
                continue
            # a killed run's scratch and partial result (the worker could not clean up)
            shutil.rmtree(d / SCRATCH_DIR, ignore_errors=True)
            try:
                (d / "result.partial.glb").unlink(missing_ok=True)
            except OSError:
                pass
            if job.state not in TERMINAL:
                self._set_terminal(
                    job, "failed", now, message="the service stopped before this job finished",
                    error={"code": "service_restarted", "message": "the service stopped before this job finished",
                           "hint": "submit the job again", "stage": job.stage, "signal": None},
                )
            self.jobs[job.id] = job
        if self.jobs:
            log.info("loaded %d finished job(s) from %s", len(self.jobs), self.config.jobs_dir)

    def sweep(self) -> int:
        """Remove finished jobs older than the retention period, and stale uploads."""
        now = time.time()
        expired = []
        with self.lock:
            for job in list(self.jobs.values()):
                if job.state in TERMINAL and job.finished_at is not None and now - job.finished_at >= self.config.retention_s:
                    expired.append(job.id)
                    del self.jobs[job.id]
        for jid in expired:
            shutil.rmtree(self.job_dir(jid), ignore_errors=True)
            log.info("job %s expired and was removed", jid)
        try:
            for p in self.config.uploads_dir.iterdir():
                try:
                    if now - p.stat().st_mtime > 3600:
                        p.unlink()
                except OSError:
                    pass
        except OSError:
            pass
        return len(expired)

    def _sweep_loop(self) -> None:
        while not self.stop_event.wait(self.config.sweep_interval()):
            try:
                self.sweep()
            except Exception:  # pragma: no cover
                log.exception("retention sweep failed")

    def recon_option_keys(self) -> Optional[list]:
        for s in self.slots:
            keys = (s.info or {}).get("recon_option_keys")
            if keys:
                return list(keys)
        return None

    # -- health ---------------------------------------------------------------------------------
    def health(self) -> dict:
        with self.lock:
            workers = [s.public() for s in self.slots]
            counts = {s: 0 for s in STATES}
            for j in self.jobs.values():
                counts[j.state] += 1
            queue_length = len(self.queue)
            info = next((s.info for s in self.slots if s.info), None)
        return {"workers": workers, "queue_length": queue_length, "jobs": counts, "worker_info": info}
