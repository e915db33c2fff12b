"""The worker process: runs one job at a time, all of its GPU work on this process's main thread.

Started by the supervisor with the multiprocessing *spawn* context; the target
is ``worker_main``. Everything heavy (torch, nvdiffrast, the pipeline) is
imported inside ``worker_main``, so importing this module costs nothing in the
HTTP process.

Protocol over the duplex pipe: the typed messages of ``engine.service.messages``, each sent
as one JSON object (never a pickle): the supervisor sends ``JobRequest`` or ``Stop``; the
worker answers ``Hello`` once, then per job ``Progress`` and one of ``Done`` / ``Failed`` /
``Cancelled``.
Cancellation: the supervisor writes the job's ``seq`` into the shared
``cancel_seq`` value; the pipeline's cancel callback compares it with the
running job's seq at every progress check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from typing import Optional

from engine.io.safety import atomic_write
from engine.service import messages as M

FAULT_KINDS = ("segfault", "abort", "hang", "raise")


def _watch_parent(parent_pid: int) -> None:
    """Exit if the service process goes away (no orphaned GPU workers)."""

    def loop():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=loop, name="kiln-parent-watch", daemon=True).start()


def _probe() -> dict:
    info: dict = {"pid": os.getpid(), "python": sys.version.split()[0], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        from engine import __version__

        info["kiln_version"] = __version__
    except Exception:  # pragma: no cover
        pass
    try:
        from engine import backend

        ok, why = backend.cuda_status()
        info["cuda"] = {"available": bool(ok), "reason": why}
        info["backends"] = backend.available_backends()
        info["gpu_names"] = backend.gpu_names()
    except Exception as e:
        info["cuda"] = {"available": False, "reason": f"probe failed: {e.__class__.__name__}: {e}"}
        info["backends"] = ["cpu"]
        info["gpu_names"] = []
    try:
        import torch

        info["torch"] = torch.__version__
    except Exception:
        info["torch"] = None
    kinds = []
    features = []
    try:
        import engine.pipeline  # noqa: F401  (warm the imports so the first job starts fast)

        kinds.append("bake")
        if "target" in _bake_parameters(engine.pipeline.bake):
            features.append("bake_target")
    except Exception as e:
        info["pipeline_error"] = f"{e.__class__.__name__}: {e}"
    try:
        from engine.reconstruct.pipeline import recon_option_defaults, reconstruct  # noqa: F401

        kinds.append("reconstruct")
        info["recon_option_keys"] = sorted(recon_option_defaults())
    except Exception as e:
        info["reconstruct_error"] = f"{e.__class__.__name__}: {e}"
    info["kinds"] = kinds
    info["features"] = features
    return info


def _bake_parameters(fn) -> list:
    """Parameter names of the pipeline's bake (the ``target`` one arrives with target baking)."""
    import inspect

    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _fire_fault(kind: str, stage: str) -> None:
    sys.stderr.write(f"kiln worker {os.getpid()}: injected fault {kind}@{stage}\n")
    sys.stderr.flush()
    if kind == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(5)
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        while True:
            time.sleep(3600)
    elif kind == "raise":
        raise RuntimeError(f"injected fault raise@{stage}")


def _use_scratch(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    for var in ("TMPDIR", "TEMP", "TMP"):
        os.environ[var] = path
    tempfile.tempdir = path


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.\-+@~]+){2,}")


def _no_paths(text: str) -> str:
    """``text`` with every file path cut to its last part (no server paths in answers)."""
    return _PATH.sub(lambda m: os.path.basename(m.group(0).replace("\\", "/")), text)


def _error(code: str, message: str, hint=None, **extra) -> dict:
    d = {"code": code, "message": message, "hint": hint}
    d.update(extra)
    return d


def _run_job(conn, cancel_seq, msg: M.JobRequest) -> None:
    seq = msg.seq
    input_name = os.path.basename(msg.input)
    display = msg.source_name or input_name
    state = {"stage": "start", "last": 0.0, "fraction": -1.0}
    fault = msg.fault
    fault_kind, fault_stage = (fault.split("@", 1) if fault else (None, None))
    fired = []

    def progress(stage: str, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        changed = stage != state["stage"]
        if changed or now - state["last"] >= 0.1 or fraction >= 1.0:
            M.send(conn, M.Progress(seq, str(stage), float(fraction), str(message or "")[:500]))
            state["last"] = now
        state["stage"] = stage
        if fault_kind and stage == fault_stage and not fired:
            fired.append(True)
            _fire_fault(fault_kind, stage)

    def cancel() -> bool:
        return cancel_seq.value == seq

    def clean(text: str) -> str:
        return str(text).replace(input_name, display)

    from engine.errors import CancelledError, InputError, KilnError
    from engine.options import BakeOptions

    # Every scratch file of the job (zip extraction, caches of libraries that use tempfile or
    # $TMPDIR) goes under the job's own folder, so a killed worker leaves nothing outside the
    # data dir and the job's removal removes it.
    _use_scratch(msg.scratch)
    # The job's last message is sent only after its scratch and partial result are gone: the
    # service shows the job ended as soon as it reads that message.
    final: Optional[M.Message] = None
    try:
        options = BakeOptions.from_dict(msg.options or {})
        progress("start", 0.0, "worker picked up the job")
        if msg.kind == "bake":
            from engine.pipeline import bake

            if msg.target:
                if "target" not in _bake_parameters(bake):
                    raise KilnError(
                        "this engine cannot bake onto a target mesh yet (its bake has no `target` parameter)",
                        hint="update the engine on the server, or bake without a target",
                        code="target_unsupported",
                    )
                result = bake(msg.input, msg.partial, options, progress=progress, cancel=cancel, target=msg.target)
            else:
                result = bake(msg.input, msg.partial, options, progress=progress, cancel=cancel)
        elif msg.kind == "reconstruct":
            try:
                from engine.reconstruct.pipeline import reconstruct
            except ImportError as e:
                raise KilnError(
                    f"reconstruction is not available in this engine ({e})",
                    hint="install the reconstruction dependencies on the server, or bake a mesh instead",
                    code="reconstruct_unavailable",
                )
            recon = dict(msg.recon_options or {})
            for key in ("mask", "config", "repo"):  # never paths from a client (the server refuses them too)
                recon.pop(key, None)
            if msg.mask:
                recon["mask"] = msg.mask
            result = reconstruct(msg.input, msg.partial, options, recon, progress, cancel)
        else:
            raise KilnError(f"unknown job kind {msg.kind!r}", code="unknown_kind")
        report = getattr(result, "report", None)
        if report is None and isinstance(result, dict):
            report = result
        report = dict(report or {})
        report["source"] = display
        if not os.path.exists(msg.partial):
            raise KilnError("the pipeline finished but wrote no GLB", hint="this is a bug in Kiln; please report it", code="no_output")
        os.replace(msg.partial, msg.output)
        atomic_write(msg.report, json.dumps(report, indent=1, default=str))
        timings = report.get("timings") if isinstance(report.get("timings"), dict) else {}
        final = M.Done(seq, M.plain(timings))
    except CancelledError as e:
        final = M.Cancelled(seq, str(state["stage"]), clean(e.message))
    except KilnError as e:
        if isinstance(e, InputError):
            err = _error("bad_input", clean(e.message), clean(e.hint) if e.hint else None, reason=e.code)
        else:
            err = _error(e.code, clean(e.message), clean(e.hint) if e.hint else None)
        final = M.Failed(seq, M.plain(err), str(state["stage"]))
    except MemoryError:
        err = _error("out_of_memory", f"ran out of memory in stage '{state['stage']}'", "lower faces, texture_size or view_resolution, or run fewer workers")
        final = M.Failed(seq, err, str(state["stage"]))
    except Exception as e:
        # The traceback goes to the service log only, under a short id the client gets instead.
        error_id = uuid.uuid4().hex[:12]
        sys.stderr.write(f"kiln worker {os.getpid()}: error {error_id} in job {msg.id}\n{traceback.format_exc()}")
        sys.stderr.flush()
        if e.__class__.__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            err = _error(
                "gpu_out_of_memory",
                f"the GPU ran out of memory in stage '{state['stage']}'",
                "lower texture_size, view_resolution or views, or use device cpu",
            )
        else:
            err = _error(
                "internal_error",
                f"{e.__class__.__name__} in stage '{state['stage']}': {_no_paths(clean(str(e)))[:300]}",
                f"this is probably a bug in Kiln; the details are in the service log under error id {error_id}",
            )
        err["error_id"] = error_id
        final = M.Failed(seq, M.plain(err), str(state["stage"]))
    finally:
        try:
            if os.path.exists(msg.partial):
                os.remove(msg.partial)
        except OSError:
            pass
        shutil.rmtree(msg.scratch, ignore_errors=True)
        if final is not None:
            M.send(conn, final)


def worker_main(conn, cancel_seq, slot: int, gpu_id, parent_pid: int) -> None:
    # The service owns shutdown: a Ctrl+C in the terminal reaches the whole process
    # group, but workers must stop through the supervisor, not mid-job on their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # stdout belongs to the service (its first line is the ready event): send any
    # output of the pipeline or of native code to stderr instead.
    try:
        sys.stdout.flush()
        os.dup2(2, 1)
    except OSError:
        pass
    if gpu_id is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_id)
    import faulthandler

    faulthandler.enable()  # a crash dumps the Python stack to the service log, then dies with the signal
    _watch_parent(parent_pid)
    try:
        info = _probe()
        info["slot"] = slot
        info["gpu"] = gpu_id
        if "bake" in info.get("kinds", []):
            # torch, the CUDA and nvdiffrast contexts, the first kernels: paid here, not by the first job
            from engine.pipeline.warmup import warm_up

            info["prewarm"] = warm_up()
        M.send(conn, M.Hello(M.plain(info)))
        while True:
            try:
                msg = M.recv(conn)
            except (EOFError, OSError, M.MessageError):
                break
            if isinstance(msg, M.JobRequest):
                _run_job(conn, cancel_seq, msg)
            else:
                break
    except (BrokenPipeError, EOFError):
        pass  # the supervisor went away
