"""Start, watch and stop a local Kiln engine process.

The engine runs in its own Python (a conda env or venv with torch, not
Blender's), started DIRECTLY as::

    <python> -m engine serve --port 0 --token <fresh random token>

with the artist's extra environment (e.g. ``CUDA_HOME``) merged into
Blender's. Never through ``conda run``, which drops variables. The engine's
first stdout line is ``{"event": "ready", "url": ..., "pid": ...}``. stdout and
stderr go to log files, so no reader thread is needed and nothing blocks on a
full pipe.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Callable, Optional

from .client import EngineError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SPLIT = re.compile(r"(?:\r?\n)|(?:;(?=\s*" + _NAME + r"\s*=))")
_VAR = re.compile(r"\$(?:\{(" + _NAME + r")\}|(" + _NAME + r"))")


def parse_env_text(text: str, base: Optional[dict] = None) -> dict:
    """Parse ``NAME=value`` items separated by newlines or by ``;`` before the
    next ``NAME=``: ``CUDA_HOME=/usr/local/cuda-11.8;PATH=$CUDA_HOME/bin:$PATH``.
    ``$NAME``/``${NAME}`` expand from earlier items, then from ``base``.
    A ``;`` inside a value (Windows path lists) is kept. Raises EngineError on
    an item that is not NAME=value."""
    env_base = dict(os.environ if base is None else base)
    out: dict[str, str] = {}
    for item in _SPLIT.split(text or ""):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        if "=" not in item:
            raise EngineError(
                f"extra environment item {item!r} is not NAME=value",
                hint="write e.g. CUDA_HOME=/usr/local/cuda-11.8;PATH=$CUDA_HOME/bin:$PATH",
                code="bad_env",
            )
        name, value = item.split("=", 1)
        name = name.strip()
        if not re.fullmatch(_NAME, name):
            raise EngineError(f"{name!r} is not a valid environment variable name", hint="names are letters, digits and _", code="bad_env")

        def sub(m: re.Match) -> str:
            key = m.group(1) or m.group(2)
            return out.get(key, env_base.get(key, ""))

        out[name] = _VAR.sub(sub, value.strip())
    return out


def engine_environment(extra: dict, base: Optional[dict] = None) -> dict:
    env = dict(os.environ if base is None else base)
    # Blender's own interpreter settings must not leak into the engine's Python.
    for k in ("PYTHONHOME", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
        env.pop(k, None)
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def describe_exit(returncode: Optional[int]) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


def _tail(path: str, n: int = 6) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


class LocalEngine:
    """One local engine process. ``start()`` blocks until the engine is ready
    (call it from a worker thread, never from Blender's main thread)."""

    def __init__(self, python: str, extra_env: Optional[dict] = None, start_timeout: float = 120.0, log_dir: Optional[str] = None, args: tuple = ()):
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.start_timeout = float(start_timeout)
        self.args = tuple(args)
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="kiln-engine-")
        self.proc: Optional[subprocess.Popen] = None
        self.url: Optional[str] = None
        self.token: Optional[str] = None
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{secrets.token_hex(2)}"
        self.stdout_path = os.path.join(self.log_dir, f"engine-{stamp}-stdout.log")
        self.stderr_path = os.path.join(self.log_dir, f"engine-{stamp}-stderr.log")

    # -- lifecycle ------------------------------------------------------------

    def command(self) -> list:
        return [self.python, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", "0", "--token", self.token or "", *self.args]

    def start(self, should_cancel: Callable[[], bool] = lambda: False) -> tuple[str, str]:
        python = (self.python or "").strip()
        if not python:
            raise EngineError(
                "no engine Python set for the local engine",
                hint="in Kiln's add-on preferences, set 'Engine Python' to the python executable of the environment where Kiln's engine is installed (e.g. ~/miniconda3/envs/kiln/bin/python)",
                code="no_python",
            )
        python = os.path.expanduser(python)
        if not os.path.isfile(python) or not os.access(python, os.X_OK):
            raise EngineError(
                f"engine Python {python!r} does not exist or is not executable",
                hint="set 'Engine Python' in Kiln's preferences to the env's bin/python (python.exe on Windows), not the env folder or `conda run`",
                code="no_python",
            )
        self.python = python
        self.token = secrets.token_hex(24)  # hex: a token starting with "-" would read as an option
        env = engine_environment(self.extra_env)
        os.makedirs(self.log_dir, exist_ok=True)
        out = open(self.stdout_path, "wb")
        err = open(self.stderr_path, "wb")
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # Ctrl-C in Blender's terminal does not hit the engine
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=self.log_dir, **kwargs)
        except OSError as e:
            raise EngineError(f"could not start the engine with {python!r}: {e}", hint="check 'Engine Python' in Kiln's preferences", code="engine_start_failed") from None
        finally:
            out.close()
            err.close()
        t0 = time.monotonic()
        while True:
            ready = self._read_ready()
            if ready is not None:
                self.url = ready
                return self.url, self.token
            code = self.proc.poll()
            if code is not None:
                tail = _tail(self.stderr_path) or _tail(self.stdout_path)
                hint = "check that Kiln's engine is installed in that environment (`<python> -m engine doctor`)"
                if "No module named engine" in tail or "No module named 'engine'" in tail:
                    hint = ("the engine is not installed in that Python: from a Kiln checkout run "
                            "`python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e .` "
                            "and set Engine Python to that .venv/bin/python (or add the checkout to PYTHONPATH in 'Extra environment')")
                raise EngineError(
                    f"the local engine {describe_exit(code)} before it was ready" + (f": {tail.splitlines()[-1]}" if tail else ""),
                    hint=hint + f"; full log: {self.stderr_path}",
                    code="engine_start_failed",
                )
            if should_cancel():
                self.stop()
                raise EngineError("cancelled while the engine was starting", code="cancelled")
            if time.monotonic() - t0 > self.start_timeout:
                self.stop()
                raise EngineError(
                    f"the local engine was not ready within {self.start_timeout:.0f} s",
                    hint=f"raise the start timeout in Kiln's preferences, or look at {self.stderr_path}",
                    code="engine_start_timeout",
                )
            time.sleep(0.05)

    def _read_ready(self) -> Optional[str]:
        try:
            with open(self.stdout_path, "rb") as fh:
                data = fh.read(1 << 16)
        except OSError:
            return None
        for line in data.split(b"\n")[:-1]:  # complete lines only
            line = line.strip()
            if not line.startswith(b"{"):
                continue
            try:
                msg = json.loads(line.decode("utf-8"))
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("event") == "ready" and msg.get("url"):
                return str(msg["url"])
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def exit_description(self) -> str:
        return describe_exit(self.proc.poll() if self.proc is not None else None)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful: the service cancels jobs and ends its workers), then SIGKILL."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            p.terminate()
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                if os.name != "nt":
                    os.killpg(p.pid, signal.SIGKILL)  # the workers too
                else:
                    p.kill()
            except OSError:
                p.kill()
            p.wait(5)
        except OSError:
            pass


class EngineSettings:
    """What the add-on's preferences say about the engine (plain values, copied
    on the main thread so worker threads never read bpy)."""

    def __init__(self, mode: str = "LOCAL", python_path: str = "", extra_env: str = "", url: str = "", token: str = "",
                 timeout: float = 10.0, start_timeout: float = 120.0, transfer_timeout: float = 300.0, job_timeout: float = 0.0,
                 poll_interval: float = 0.5, engine_args: tuple = ()):
        self.mode = mode
        self.python_path = python_path
        self.extra_env = extra_env
        self.url = url
        self.token = token
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.transfer_timeout = transfer_timeout
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        self.engine_args = tuple(engine_args)

    def local_key(self) -> tuple:
        return (os.path.expanduser(self.python_path.strip()), self.extra_env.strip(), self.engine_args)


class EngineManager:
    """Hands out clients for the configured engine; owns the local engine.

    The local engine starts on first use and is restarted (with a note saying
    why) when it died or when the Python/environment settings changed."""

    def __init__(self, log_dir: Optional[str] = None):
        self._lock = threading.Lock()
        self.local: Optional[LocalEngine] = None
        self._local_key: Optional[tuple] = None
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir
        self.closed = False  # after a final stop (add-on disabled, Blender quitting) nothing starts again

    def _logs(self) -> str:
        # One folder per session; each engine start writes its own pair of log files there.
        if self.log_dir is None:
            self.log_dir = tempfile.mkdtemp(prefix="kiln-engine-")
        return self.log_dir

    def client(self, settings: EngineSettings, notes: Optional[list] = None, should_cancel: Callable[[], bool] = lambda: False):
        from .client import EngineClient

        notes = notes if notes is not None else []
        if settings.mode == "REMOTE":
            return EngineClient(settings.url, settings.token, settings.timeout, settings.transfer_timeout)
        with self._lock:
            if self.closed:
                raise EngineError("Kiln is shutting down", hint="enable the add-on again to use the engine", code="cancelled")
            if should_cancel():
                raise EngineError("cancelled", code="cancelled")
            key = settings.local_key()
            if self.local is not None and self._local_key != key:
                self.local.stop()
                self.local = None
                notes.append("engine settings changed: restarted the local engine")
            if self.local is not None and not self.local.alive():
                why = self.local.exit_description()
                log = self.local.stderr_path
                self.local = None
                notes.append(f"the local engine had stopped ({why}); restarted it. Its log: {log}")
            if self.local is None:
                extra = parse_env_text(settings.extra_env)
                eng = LocalEngine(settings.python_path, extra, settings.start_timeout, self._logs(), settings.engine_args)
                eng.start(should_cancel)
                self.local, self._local_key = eng, key
            return EngineClient(self.local.url, self.local.token, settings.timeout, settings.transfer_timeout)

    def explain_lost(self) -> Optional[str]:
        """If the local engine died, a sentence saying so (for errors seen mid-job)."""
        eng = self.local
        if eng is not None and eng.proc is not None and not eng.alive():
            return f"the local engine {eng.exit_description()} (log: {eng.stderr_path}); it will be restarted on the next use"
        return None

    def stop(self, remove_logs: bool = False) -> None:
        with self._lock:
            if self.local is not None:
                self.local.stop()
                self.local = None
                self._local_key = None
            if remove_logs:
                self.closed = True
            if remove_logs and self._own_log_dir and self.log_dir is not None:
                shutil.rmtree(self.log_dir, ignore_errors=True)
                self.log_dir = None

    @property
    def local_pid(self) -> Optional[int]:
        eng = self.local
        return eng.pid if eng is not None and eng.alive() else None
