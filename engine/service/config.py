"""Settings of one running service (filled from the `kiln serve` command line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from engine.service.gpus import GpuInfo
from engine.service.limits import Caps


@dataclass
class ServiceConfig:
    data_dir: Path
    workers: int = 1
    gpus: list[GpuInfo] = field(default_factory=list)
    """GPUs the workers are spread over (round robin); empty = CPU workers."""
    max_upload_bytes: int = 512 * 1024 * 1024
    job_timeout: Optional[float] = 3600.0
    """Seconds a job may run before its worker is killed; None = no limit."""
    cancel_grace: float = 3.0
    """Seconds a running job gets to stop cooperatively before its worker is killed."""
    retention_s: float = 24 * 3600.0
    """Finished jobs (their files and results) are removed this long after they finished."""
    sweep_interval_s: Optional[float] = None
    max_queue: int = 1000
    allow_fault_injection: bool = False
    token: Optional[str] = None
    worker_start_timeout: float = 300.0
    executor: str = "local"
    """Where jobs run (engine.service.executors): local worker processes, or a Ray cluster."""
    ray_address: Optional[str] = None
    """Ray cluster to join (HOST:PORT, or "auto" for $RAY_ADDRESS); None starts a local Ray instance."""
    ray_retries: int = 1
    """A job whose Ray worker process crashed runs again at most this many times."""
    ray_device: str = "auto"
    """Ray actors ask for a GPU each ("cuda"), a CPU each ("cpu"), or a GPU when the cluster has any ("auto")."""
    doctor_timeout: float = 120.0
    caps: Optional[Caps] = None
    """Server-side job limits (max input faces, texture size, memory per job); None = engine defaults only."""
    allowed_hosts: frozenset = frozenset()
    """Host header values this service answers (engine.service.guard); empty = the loopback names."""

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def sweep_interval(self) -> float:
        if self.sweep_interval_s is not None:
            return max(0.2, self.sweep_interval_s)
        return min(300.0, max(0.5, self.retention_s / 4.0))
