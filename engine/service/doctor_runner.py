"""`GET /v1/doctor`: one `kiln doctor --json` subprocess at a time, cached, cancelled when nobody waits.

- single flight: every request that arrives while a run is in flight waits for that run;
- cached for ``CACHE_S`` seconds; ``refresh=true`` within ``REFRESH_MIN_S`` of the last run
  answers the cached value (a refresh storm starts at most one run);
- a run whose every waiting client went away is killed (with its process group);
- ``stop()`` (service shutdown) kills a run in flight at once, so it never delays the exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Optional

import anyio

from engine.service.errors import ApiError

log = logging.getLogger("kiln.service")

CACHE_S = 60.0
REFRESH_MIN_S = 10.0


@dataclass
class _Run:
    proc: subprocess.Popen
    done: threading.Event
    waiters: int = 0
    value: Optional[dict] = None
    error: Optional[ApiError] = None


class DoctorRunner:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.lock = threading.Lock()
        self.run: Optional[_Run] = None
        self.value: Optional[dict] = None
        self.at = 0.0
        self.stopping = False
        self.runs_started = 0

    async def get(self, refresh: bool, disconnected: Callable[[], Awaitable[bool]]) -> dict:
        with self.lock:
            if self.stopping:
                raise ApiError(503, "shutting_down", "the service is shutting down", "retry when it is back")
            age = time.time() - self.at
            if self.value is not None and self.run is None and (age < REFRESH_MIN_S or (not refresh and age < CACHE_S)):
                return self.value
            run = self.run or self._start()
            run.waiters += 1
        try:
            while not run.done.is_set():
                await anyio.sleep(0.1)
                if not run.done.is_set() and await disconnected():
                    raise ApiError(503, "client_gone", "the client went away before `kiln doctor` finished")
        finally:
            with self.lock:
                run.waiters -= 1
                if run.waiters == 0 and not run.done.is_set():
                    log.info("doctor: every client went away; stopping the run (pid %d)", run.proc.pid)
                    _kill(run.proc)
        if run.error is not None:
            raise run.error
        return run.value

    def _start(self) -> _Run:
        try:
            import importlib.util

            found = importlib.util.find_spec("engine.doctor") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ApiError(501, "doctor_unavailable", "`kiln doctor` is not part of this engine build", "update the engine on the server")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "doctor", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
            start_new_session=True,  # its own process group: a kill reaches whatever it started
        )
        self.runs_started += 1
        log.info("doctor: running kiln doctor (pid %d)", proc.pid)
        run = self.run = _Run(proc, threading.Event())
        threading.Thread(target=self._wait, args=(run,), name="kiln-doctor", daemon=True).start()
        return run

    def _wait(self, run: _Run) -> None:
        try:
            out, err = run.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill(run.proc)
            run.proc.communicate()
            run.error = ApiError(504, "doctor_timeout", f"`kiln doctor` did not finish within {self.timeout:g} s",
                                 "run `kiln doctor` on the server to see where it hangs")
        else:
            try:
                run.value = json.loads(out)
                if not isinstance(run.value, dict):
                    raise ValueError
            except ValueError:
                run.value = None
                if self.stopping or run.proc.returncode in (-signal.SIGKILL, -signal.SIGTERM):
                    run.error = ApiError(503, "doctor_cancelled", "the `kiln doctor` run was stopped", "retry")
                else:
                    tail = (err or out or "").strip().splitlines()[-3:]
                    log.warning("doctor: exited %s without JSON: %s", run.proc.returncode, " | ".join(tail)[:1000])
                    run.error = ApiError(502, "doctor_failed", f"`kiln doctor --json` exited {run.proc.returncode} without a report",
                                         "run `kiln doctor` on the server; its output is in the service log")
        with self.lock:
            if run.value is not None:
                self.value, self.at = run.value, time.time()
            if self.run is run:
                self.run = None
            run.done.set()

    def stop(self) -> None:
        """Kill a run in flight (service shutdown); later requests get 503."""
        with self.lock:
            self.stopping = True
            run = self.run
        if run is not None:
            _kill(run.proc)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        try:
            proc.kill()
        except OSError:
            pass
