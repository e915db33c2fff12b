"""Run a batch: the assets go into a ``BatchQueue`` and an executor's slots pull them.

``BatchQueue`` is a ``engine.service.executors.base.JobQueue``, like the service's
``Supervisor``: the same slots (``local`` worker processes or ``ray`` actors) run a batch's
assets and a service's HTTP jobs, with the same crash isolation. A slot leaves each result in
the asset's job folder (``OUTDIR/.kiln-batch/run-PID/jobs/ID``); ``finish`` moves it to
``OUTDIR/<name>.glb`` and records the ``AssetResult``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engine.batch import resume
from engine.batch.inputs import Asset
from engine.batch.progress import BatchProgress
from engine.batch.summary import AssetResult, AssetStatus
from engine.service.executors.base import REPORT_NAME, RESULT_NAME, JobInputs

log = logging.getLogger("kiln.batch")


@dataclass
class RunSettings:
    executor: str = "local"
    jobs: Optional[int] = None
    """Worker processes / actors; None = one per GPU (local: of this machine, ray: of the cluster), else CPU default."""
    ray_address: Optional[str] = None
    retries: int = 1
    job_timeout: Optional[float] = None
    device: str = "auto"


class BatchQueue:
    """The job queue of one batch (see ``engine.service.executors.base.JobQueue``)."""

    def __init__(self, outdir: Path, assets: list[Asset], config, display: BatchProgress):
        from engine.service.supervisor import Job

        self.outdir = outdir
        self.config = config
        self.display = display
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.stopping = False
        self.stop_event = threading.Event()
        self.jobs: dict[str, Job] = {}
        self.assets: dict[str, Asset] = {}
        self.slot_of: dict[str, object] = {}
        self.queue: deque[str] = deque()
        self.results: list[AssetResult] = []
        self.started: dict[str, float] = {}
        self._seq = 0
        for a in assets:
            jid = uuid.uuid4().hex
            try:
                size = a.source.stat().st_size
            except OSError:
                size = 0
            self.jobs[jid] = Job(id=jid, kind="bake", options=a.options, source_name=a.source.name, input_file=str(a.source),
                                 input_format=a.source.suffix.lower().lstrip("."), input_bytes=size, fault=a.fault)
            self.assets[jid] = a
            self.queue.append(jid)
        self.remaining = len(assets)

    # -- JobQueue ---------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.config.jobs_dir / job_id

    def inputs(self, job) -> JobInputs:
        a = self.assets[job.id]
        return JobInputs(input=a.source, target=a.target, files=tuple(a.files()))

    def take(self, slot, timeout: float):
        with self.cond:
            if not self.queue and not self.stopping:
                self.cond.wait(timeout)
            if self.stopping or not self.queue:
                return None
            job = self.jobs[self.queue.popleft()]
            self._seq += 1
            job.seq = self._seq
            job.state = "running"
            job.started_at = time.time()
            job.worker = slot.index
            self.slot_of[job.id] = slot
            self.started[job.id] = time.monotonic()
            self.job_dir(job.id).mkdir(parents=True, exist_ok=True)
        self.display.started(self.assets[job.id].name, (slot.where() or {}).get("node") or "")
        return job

    def requeue(self, job) -> None:
        with self.cond:
            if job.state != "running":
                return
            job.state = "queued"
            self.queue.appendleft(job.id)
            self.cond.notify()

    def progress(self, job, stage: str, fraction: float, message: str) -> None:
        job.stage = stage
        self.display.stage(self.assets[job.id].name, stage, fraction)

    def finish(self, job, state: str, message: Optional[str] = None, error: Optional[dict] = None,
               stage: Optional[str] = None, timings: Optional[dict] = None) -> None:
        with self.lock:
            if job.state in ("succeeded", "failed", "cancelled"):
                return
            job.state = state
        a = self.assets[job.id]
        slot = self.slot_of.get(job.id)
        where = slot.where() if slot is not None else {}
        seconds = round(time.monotonic() - self.started.get(job.id, time.monotonic()), 3)
        jdir = self.job_dir(job.id)
        result = AssetResult(name=a.name, source=str(a.source), target=str(a.target) if a.target else None,
                             output=str(a.output_path(self.outdir)), status=AssetStatus.FAILED, seconds=seconds,
                             node=where.get("node"), gpu=where.get("gpu"), worker=where.get("worker"),
                             attempts=int((error or {}).get("attempts") or 1))
        if where.get("node_id"):
            result.extra["node_id"] = where["node_id"]
        if state == "succeeded":
            try:
                report = json.loads((jdir / REPORT_NAME).read_text())
                out = a.output_path(self.outdir)
                out.parent.mkdir(parents=True, exist_ok=True)
                os.replace(jdir / RESULT_NAME, out)
                resume.write_stamp(self.outdir, a)
                result.status = AssetStatus.SUCCEEDED
                result.faces_in = report.get("faces_in")
                result.faces_out = report.get("faces_out")
                result.backend = report.get("backend")
                result.extra["bake_seconds"] = report.get("total_seconds")
            except (OSError, ValueError) as e:
                result.error = {"code": "write_failed", "message": f"cannot write {a.output_path(self.outdir)}: {getattr(e, 'strerror', None) or e}",
                                "hint": "check free disk space and permissions of OUTDIR"}
        else:
            err = dict(error or {})
            err.setdefault("code", "cancelled" if state == "cancelled" else "failed")
            err.setdefault("message", message or state)
            err.pop("traceback", None)
            result.error = err
        if result.status is not AssetStatus.SUCCEEDED:
            resume.clear_stamp(self.outdir, a)
        shutil.rmtree(jdir, ignore_errors=True)
        self.record(result)

    # -- batch ----------------------------------------------------------------------------------
    def record(self, result: AssetResult) -> None:
        with self.cond:
            self.results.append(result)
            self.remaining -= 1
            self.cond.notify_all()
        self.display.finished(result)

    def wait(self) -> None:
        with self.cond:
            while self.remaining > 0 and not self.stopping:
                self.cond.wait(0.5)

    def interrupt(self) -> None:
        """Ctrl+C: queued assets are not started, running ones are cancelled."""
        with self.cond:
            self.stopping = True
            for jid in list(self.queue):
                job = self.jobs[jid]
                job.state = "cancelled"
                a = self.assets[jid]
                self.results.append(AssetResult(name=a.name, source=str(a.source), output=str(a.output_path(self.outdir)),
                                                status=AssetStatus.FAILED, target=str(a.target) if a.target else None,
                                                error={"code": "cancelled", "message": "not started: the batch was interrupted", "hint": "run the batch again; finished assets are skipped"}))
            self.queue.clear()
            for job in self.jobs.values():
                if job.state == "running":
                    job.cancel_requested = True
            self.cond.notify_all()
        self.stop_event.set()


def _service_config(outdir: Path, settings: RunSettings, n_assets: int):
    """The slots' settings (a ServiceConfig: the executors are the service's)."""
    from engine.service.config import ServiceConfig

    data_dir = resume.state_dir(outdir) / f"run-{os.getpid()}"
    gpus = []
    workers = settings.jobs or 0
    if settings.executor == "local":
        if settings.device != "cpu":
            from engine.service.gpus import detect_gpus

            gpus = detect_gpus()
        if not workers:
            workers = len(gpus) if gpus else max(1, min(n_assets, (os.cpu_count() or 1) // 4))
        if not gpus and "OMP_NUM_THREADS" not in os.environ:
            # CPU workers share the cores instead of each starting one thread per core
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return ServiceConfig(
        data_dir=data_dir, workers=workers, gpus=gpus, job_timeout=settings.job_timeout, cancel_grace=5.0,
        executor=settings.executor, ray_address=settings.ray_address, ray_retries=settings.retries,
        ray_device="cpu" if settings.device == "cpu" else ("cuda" if settings.device == "cuda" else "auto"),
    )


def run_assets(outdir: Path, assets: list[Asset], settings: RunSettings, display: BatchProgress) -> tuple[list[AssetResult], dict]:
    """Bake ``assets`` (none skipped, none known bad) with the executor; (results, run info for the summary)."""
    from engine.service.executors import make_slots

    config = _service_config(outdir, settings, len(assets))
    config.jobs_dir.mkdir(parents=True, exist_ok=True)
    queue = BatchQueue(outdir, assets, config, display)
    slots = make_slots(settings.executor, queue, config)
    info: dict = {"workers": len(slots), "interrupted": False}
    try:
        for s in slots:
            s.thread.start()
        queue.wait()
    except KeyboardInterrupt:  # Ctrl+C: cancel what runs, keep what finished (the summary lists it)
        info["interrupted"] = True
        queue.interrupt()
        deadline = time.monotonic() + config.cancel_grace + 10
        with queue.cond:
            while any(j.state == "running" for j in queue.jobs.values()) and time.monotonic() < deadline:
                queue.cond.wait(0.2)
    finally:
        with queue.cond:
            queue.stopping = True
            queue.cond.notify_all()
        queue.stop_event.set()
        deadline = time.monotonic() + 30
        for s in slots:
            s.thread.join(max(0.1, deadline - time.monotonic()))
        for s in slots:
            s.kill()
        shutil.rmtree(config.data_dir, ignore_errors=True)
        info["slots"] = [s.where() for s in slots]
    return queue.results, info


def host_name() -> str:
    return socket.gethostname()
