"""The seam between *what* runs (a job table and queue) and *where* it runs (an executor's slots).

A ``JobQueue`` owns the jobs: ``kiln serve``'s ``Supervisor`` (HTTP jobs, persisted) and
``kiln batch``'s ``BatchQueue`` (the assets of one batch). An executor makes ``Slot`` s that
pull from a queue, each running one job at a time somewhere: ``local`` = a supervised worker
process on this machine (``engine.service.supervisor.WorkerSlot``), ``ray`` = a long-lived
actor on a Ray cluster (``engine.service.executors.ray.RaySlot``). A slot reports every outcome
back through the queue's public methods; it never touches the queue's tables.

The job's files: the slot asks ``queue.inputs(job)`` where its input files are and writes the
result into ``queue.job_dir(job.id)`` (``result.glb``, ``report.json``); the queue decides what
happens to them in ``finish``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

RESULT_NAME = "result.glb"
PARTIAL_NAME = "result.partial.glb"
REPORT_NAME = "report.json"
SCRATCH_DIR = "scratch"  # a job's temporary files (zip extraction, library temp files), removed with the job


@dataclass(frozen=True)
class JobInputs:
    """Where a job's input files are, for the executor that runs it."""

    input: Path
    """The file the pipeline opens."""
    target: Optional[Path] = None
    """The artist's own low-poly (bake onto it instead of simplifying), or None."""
    mask: Optional[Path] = None
    """Reconstruction mask, or None."""
    files: tuple[Path, ...] = field(default_factory=tuple)
    """Every file the job reads (input, target, mask and their sidecars: .mtl, textures, .bin).
    A remote executor ships exactly these."""

    def all_files(self) -> tuple[Path, ...]:
        seen, out = set(), []
        for p in (self.input, self.target, self.mask, *self.files):
            if p is not None and p not in seen:
                seen.add(p)
                out.append(p)
        return tuple(out)


class ExecutorSettings(Protocol):
    """The settings a slot reads (``ServiceConfig`` has them all)."""

    worker_start_timeout: float
    job_timeout: Optional[float]
    cancel_grace: float
    ray_address: Optional[str]
    ray_retries: int


class JobQueue(Protocol):
    """What a slot may call. ``Job`` is ``engine.service.supervisor.Job``."""

    config: ExecutorSettings
    stopping: bool
    stop_event: threading.Event

    def take(self, slot: "Slot", timeout: float):
        """The next job for ``slot`` (now 'running' on it), or None after ``timeout`` s."""

    def requeue(self, job) -> None:
        """``job`` never started (its worker went away first): back to the head of the queue."""

    def progress(self, job, stage: str, fraction: float, message: str) -> None:
        ...

    def finish(self, job, state: str, message: Optional[str] = None, error: Optional[dict] = None,
               stage: Optional[str] = None, timings: Optional[dict] = None) -> None:
        """The job ended: 'succeeded' (its result and report are in ``job_dir``), 'failed' or 'cancelled'."""

    def job_dir(self, job_id: str) -> Path:
        ...

    def inputs(self, job) -> JobInputs:
        ...


class Slot(Protocol):
    """One place that runs one job at a time, supervised by its own thread."""

    index: int
    thread: threading.Thread
    info: Optional[dict]
    """What the worker reported about itself (backends, GPU names, ...), None until it started."""

    def public(self) -> dict:
        """Status for /v1/health: id, state, pid, gpu, device, job, jobs_done, restarts, last_exit, ..."""

    def where(self) -> dict:
        """Where the current / last job ran: {"node": ..., "gpu": ..., "worker": ...}."""

    def kill(self) -> None:
        """End the worker now (service shutdown after the grace period)."""


class SupervisedSlot:
    """The loop every executor's slot runs in its own thread: keep a worker up (with back-off while it
    cannot start), take the next job from the queue, run it; stop the worker when the queue stops.

    Subclasses say what a worker is: ``_alive()``, ``_start()``, ``_stop()``, ``_run(job)``, and
    optionally ``_on_idle_death()`` (a worker that died between jobs) and ``_released()``.
    """

    name = "slot"

    def _alive(self) -> bool:
        raise NotImplementedError

    def _start(self) -> bool:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _run(self, job) -> None:
        raise NotImplementedError

    def _on_idle_death(self) -> None:
        pass

    def _released(self) -> None:
        pass

    def _loop(self) -> None:
        import logging

        backoff = 1.0
        try:
            while not self.sup.stopping:
                if not self._alive():
                    self._on_idle_death()
                    if not self._start():
                        if self.sup.stopping:
                            break
                        self.state = "failing"
                        self.sup.stop_event.wait(backoff)
                        backoff = min(backoff * 2, 30.0)
                        continue
                    backoff = 1.0
                job = self.sup.take(self, timeout=0.5)
                if job is not None:
                    self._run(job)
        except Exception:  # pragma: no cover - a bug here must not go unnoticed
            logging.getLogger("kiln.service").exception("%s %d supervisor crashed", self.name, self.index)
            self.state = "broken"
            raise
        finally:
            if self.state != "broken":
                self.state = "stopping"
            self._stop()
            if self.state != "broken":
                self.state = "stopped"
            self._released()
