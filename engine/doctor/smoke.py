"""Run the GPU smoke test (``smoke_child.py``) in a child process with a timeout
and describe how it ended: finished, wrong results, Python error, killed by a
signal (named), or timed out.

For tests only, ``KILN_DOCTOR_SMOKE_CMD`` (a shell-style command line, run
without a shell) replaces the child command.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

CHILD = Path(__file__).with_name("smoke_child.py")
CMD_ENV = "KILN_DOCTOR_SMOKE_CMD"
PREFIX = "KILN-SMOKE"


@dataclass
class ChildRun:
    cmd: list[str]
    outcome: str  # "ok" | "wrong" | "error" | "signal" | "timeout" | "no_result" | "not_started"
    returncode: Optional[int] = None
    signal_name: str = ""
    signal_text: str = ""
    last_stage: str = ""
    stages_started: list[str] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    stderr_tail: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timeout: float = 0.0

    @property
    def where(self) -> str:
        return f" during stage '{self.last_stage}'" if self.last_stage else ""

    def describe(self) -> str:
        """One line: how the child ended."""
        if self.outcome == "ok":
            return f"finished in {self.seconds:.1f} s"
        if self.outcome == "signal":
            frame = last_frame(self.stderr_tail)
            return f"crashed with {self.signal_name} ({self.signal_text}){self.where}" + (f"; last output: {frame}" if frame else "")
        if self.outcome == "timeout":
            return f"did not finish within the {self.timeout:g} s timeout{self.where} and was killed"
        if self.outcome == "wrong":
            return "ran but gave wrong results: " + "; ".join(self.result.get("errors") or ["(no detail)"])
        if self.outcome == "not_started":
            return "could not start: " + (self.stderr_tail[-1] if self.stderr_tail else "?")
        last = _last_error_line(self.stderr_tail)
        if self.outcome == "error":
            return f"failed (exit code {self.returncode}){self.where}" + (f": {last}" if last else "")
        return f"exited with code {self.returncode} without a result{self.where}" + (f": {last}" if last else "")


def last_frame(lines: Sequence[str]) -> str:
    """The most telling line of a crashed child's stderr (faulthandler prints the Python frames)."""
    for line in reversed(lines):
        s = line.strip()
        if s.startswith("File ") and "line" in s:
            return s[:240]
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:240]
    return ""


def _last_error_line(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        s = line.strip()
        if s and not s.startswith(("File ", "Traceback", "^", "~")):
            return s[:300]
    return ""


def _signal_of(rc: int) -> Optional[signal.Signals]:
    try:
        if rc < 0:
            return signal.Signals(-rc)
        if 128 < rc < 128 + 65:  # a shell in between reports death by signal N as 128 + N
            return signal.Signals(rc - 128)
    except ValueError:
        pass
    return None


def child_command(import_only: bool = False, env: Optional[Mapping[str, str]] = None) -> tuple[list[str], bool]:
    """(command, custom?) for the smoke child. The env override applies to the full test only."""
    env = os.environ if env is None else env
    custom = env.get(CMD_ENV, "").strip()
    if custom and not import_only:
        return shlex.split(custom), True
    cmd = [sys.executable, str(CHILD)]
    if import_only:
        cmd.append("--import-only")
    return cmd, False


def run_child(cmd: Sequence[str], timeout: float, env: Optional[Mapping[str, str]] = None) -> ChildRun:
    """Run ``cmd`` in its own process group; kill the whole group on timeout."""
    cenv = dict(os.environ if env is None else env)
    cenv.setdefault("PYTHONFAULTHANDLER", "1")
    cenv["PYTHONUNBUFFERED"] = "1"
    run = ChildRun(cmd=list(cmd), outcome="no_result", timeout=float(timeout))
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cenv,
            start_new_session=(os.name == "posix"),
        )
    except OSError as e:
        run.outcome = "not_started"
        run.stderr_tail = [f"{cmd[0]}: {e}"]
        return run
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        out, err = proc.communicate()
    run.seconds = time.perf_counter() - t0
    run.returncode = proc.returncode
    text = out.decode("utf-8", "replace") if isinstance(out, bytes) else (out or "")
    etext = err.decode("utf-8", "replace") if isinstance(err, bytes) else (err or "")
    run.stderr_tail = etext.strip().splitlines()[-40:]
    for line in text.splitlines():
        if not line.startswith(PREFIX + " "):
            continue
        _, kind, rest = (line.split(" ", 2) + ["", ""])[:3]
        if kind == "stage":
            run.stages_started.append(rest.strip())
            run.last_stage = rest.strip()
        elif kind == "result":
            try:
                run.result = json.loads(rest)
            except ValueError:
                pass
    if timed_out:
        run.outcome = "timeout"
        return run
    sig = _signal_of(proc.returncode)
    if sig is not None:
        run.outcome = "signal"
        run.signal_name = sig.name
        run.signal_text = signal.strsignal(sig) or sig.name
        if proc.returncode > 0:
            run.signal_text += f", reported as exit code {proc.returncode} by a shell"
        return run
    if run.result:
        run.last_stage = "" if proc.returncode == 0 or run.result.get("errors") else run.last_stage
        if run.result.get("ok") and proc.returncode == 0:
            run.outcome = "ok"
        elif run.result.get("errors"):
            run.outcome = "wrong"
        else:
            run.outcome = "error"
        return run
    run.outcome = "error" if proc.returncode != 0 else "no_result"
    return run


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - windows
            proc.kill()
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except OSError:
            pass
