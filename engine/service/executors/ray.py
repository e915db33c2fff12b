"""The ``ray`` executor: each job runs in a long-lived Ray actor, one per GPU (or CPU slot) of a cluster.

    driver (kiln serve's HTTP process, or kiln batch)          Ray cluster (any node)
    RaySlot thread --ray.put(input files as bytes)-->  object store  --> KilnActor.run(...)
                   <--result GLB + report as bytes---                    (the service worker's
                   <--progress (polled), cancel------                     job runner, warm CUDA)

* An actor asks for ``num_gpus=1`` (Ray pins it to one GPU through CUDA_VISIBLE_DEVICES) or
  ``num_cpus=1``; it imports the pipeline once and keeps its CUDA context between jobs, like a
  service worker. It runs the very function a local worker runs (``engine.service.worker._run_job``)
  on files it writes to its own temporary folder, so nodes need no shared file system.
* A crashed actor process (segfault, OOM kill) fails the job with ``worker_crashed``; the slot
  starts a fresh actor, and the job runs again at most ``config.ray_retries`` times.
* The driver never imports torch: this module imports only ``ray`` and the service's messages.

``config.ray_address``: "HOST:PORT" joins that cluster, "auto" the one of $RAY_ADDRESS (or the
one started on this machine with ``ray start``); None starts a private Ray instance for the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Optional

import ray

from engine.service import messages as M
from engine.service.executors.base import PARTIAL_NAME, REPORT_NAME, RESULT_NAME, SCRATCH_DIR, SupervisedSlot

log = logging.getLogger("kiln.service")

CRASH_HINT = (
    "the Ray worker process running this job died (native code crashed, or the node ran out of memory); a fresh actor "
    "took its place. Try device \"cpu\", a smaller texture_size or view_resolution, or clean up the mesh; the Ray "
    "dashboard and the node's logs (/tmp/ray/session_latest/logs) say more."
)


# -- the actor (runs on the cluster's nodes) ----------------------------------------------------------
class _Cancel:
    """The ``cancel_seq.value`` the worker's job runner compares with its job's seq."""

    def __init__(self):
        self.value = 0


class _Collector:
    """Stands in for the worker's pipe: keeps the last progress and the final message of a job."""

    def __init__(self):
        self.progress: Optional[dict] = None
        self.final: Optional[bytes] = None

    def send_bytes(self, data: bytes) -> None:
        msg = M.decode(data)
        if isinstance(msg, M.Progress):
            self.progress = {"stage": msg.stage, "fraction": msg.fraction, "message": msg.message}
        elif isinstance(msg, (M.Done, M.Failed, M.Cancelled)):
            self.final = data


class KilnActor:
    """One warm engine process on a Ray node; one job at a time (progress/cancel calls run beside it)."""

    def __init__(self, slot: int):
        import faulthandler

        faulthandler.enable()  # a crash leaves the Python stack in the node's worker log
        self.slot = slot
        # the job runner points TMPDIR / tempfile at each job's scratch folder: keep the real one
        self.tmp_root = tempfile.gettempdir()
        self.tmp_env = {k: os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")}
        self.cancel_seq = _Cancel()
        self.collectors: dict[int, _Collector] = {}
        self.info: Optional[dict] = None

    def where(self) -> dict:
        ctx = ray.get_runtime_context()
        try:
            ip = ray.util.get_node_ip_address()
        except Exception:  # pragma: no cover
            ip = None
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        names = (self.info or {}).get("gpu_names") or []
        gpu = None
        if gpu_ids:
            gpu = f"{names[0] if names else 'GPU'} (Ray GPU {','.join(gpu_ids)})"
        return {
            "node": f"{socket.gethostname()} ({ip})" if ip else socket.gethostname(),
            "node_id": ctx.get_node_id(),
            "node_ip": ip,
            "gpu": gpu,
            "worker": f"ray actor {self.slot} (pid {os.getpid()})",
        }

    def hello(self) -> dict:
        from engine.service.worker import _probe

        self.info = M.plain(_probe())
        self.info["slot"] = self.slot
        self.info["where"] = self.where()
        return self.info

    def progress(self, seq: int) -> Optional[dict]:
        c = self.collectors.get(seq)
        return c.progress if c is not None else None

    def cancel(self, seq: int) -> None:
        self.cancel_seq.value = seq

    def run(self, seq: int, kind: str, files: dict, input_rel: str, target_rel: Optional[str], mask_rel: Optional[str],
            options: dict, recon_options: Optional[dict], fault: Optional[str], source_name: Optional[str]) -> dict:
        from engine.service.worker import _run_job

        work = Path(tempfile.mkdtemp(prefix="kiln-ray-job-", dir=self.tmp_root))
        collector = self.collectors[seq] = _Collector()
        try:
            inputs = work / "in"
            for rel, data in files.items():
                p = PurePosixPath(rel)
                if p.is_absolute() or ".." in p.parts:
                    raise ValueError(f"bad file name in a job bundle: {rel!r}")
                dest = inputs.joinpath(*p.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            fields = dict(
                seq=seq, id=f"ray-{seq}", kind=kind, input=str(inputs / input_rel), partial=str(work / PARTIAL_NAME),
                output=str(work / RESULT_NAME), report=str(work / REPORT_NAME), scratch=str(work / SCRATCH_DIR),
                options=options, recon_options=recon_options, fault=fault,
                mask=str(inputs / mask_rel) if mask_rel else None, source_name=source_name,
            )
            if target_rel:
                fields["target"] = str(inputs / target_rel)
            _run_job(collector, self.cancel_seq, M.JobRequest(**fields))
            out = {"final": collector.final, "where": self.where(), "result": None, "report": None}
            for key, name in (("result", RESULT_NAME), ("report", REPORT_NAME)):
                f = work / name
                if f.is_file():
                    out[key] = f.read_bytes()
            return out
        finally:
            self.collectors.pop(seq, None)
            shutil.rmtree(work, ignore_errors=True)
            tempfile.tempdir = self.tmp_root
            for k, v in self.tmp_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# -- the driver side ----------------------------------------------------------------------------------
class RayCluster:
    """This process's connection to Ray, shared by its slots; disconnected when the last slot ends."""

    _lock = threading.Lock()
    _users = 0
    _started_here = False

    @classmethod
    def connect(cls, address: Optional[str], num_cpus: Optional[int] = None) -> None:
        with cls._lock:
            if not ray.is_initialized():
                _token_auth_from_file()
                kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
                # ray.init installs its own SIGTERM/SIGINT handlers (sys.exit(signum)); the service and
                # kiln batch keep theirs (graceful shutdown, exit 0 / 130)
                main = threading.current_thread() is threading.main_thread()
                saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
                try:
                    if address:
                        ray.init(address=address, **kwargs)
                    else:  # a private Ray instance for this run, stopped with it
                        ray.init(num_cpus=num_cpus, **kwargs)
                finally:
                    for sig, handler in saved.items():
                        if handler is not None:
                            signal.signal(sig, handler)
                cls._started_here = True
            cls._users += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users <= 0 and cls._started_here and ray.is_initialized():
                ray.shutdown()
                cls._started_here = False
                cls._users = 0

    @staticmethod
    def resources() -> dict:
        return ray.cluster_resources()


def _token_auth_from_file() -> None:
    """Ray >= 2.5x clusters use token authentication: `ray start` writes ~/.ray/auth_token (or takes
    $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH). ``ray.init(address=HOST:PORT)`` does not pick that token up
    unless RAY_AUTH_MODE says so (address="auto" does): say so when a token is there."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:  # what `ray.init(address="auto")` does; it also refreshes Ray's cached config
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # Ray without token authentication
        return
    quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # not its "token authentication is enabled" warning on every run
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def _bundle(paths) -> tuple[dict, Path]:
    """{relative name: bytes} of the job's files, relative to their common folder."""
    files = [Path(p) for p in paths]
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in files}, root


class RaySlot(SupervisedSlot):
    """One Ray actor at a time, supervised by one thread (the counterpart of the local WorkerSlot)."""

    def __init__(self, queue, index: int, use_gpu: bool, gpu_share: float = 1.0):
        self.sup = queue
        self.index = index
        self.use_gpu = use_gpu
        self.gpu_share = gpu_share  # 1.0 = a GPU of its own; 0.5 = two actors per GPU (CPU stages of one overlap the other's bake)
        self.state = "starting"
        self.actor = None
        self.info: Optional[dict] = None
        self._where: dict = {}
        self.job_id: Optional[str] = None
        self.jobs_done = 0
        self.restarts = 0
        self.last_exit: Optional[str] = None
        self.thread = threading.Thread(target=self._loop, name=f"kiln-ray-slot-{index}", daemon=True)

    # -- status ---------------------------------------------------------------------------------
    def public(self) -> dict:
        info = self.info or {}
        return {
            "id": self.index,
            "state": self.state,
            "pid": info.get("pid"),
            "gpu": {"name": (info.get("gpu_names") or [None])[0]} if self.use_gpu else None,
            "device": "cuda" if self.use_gpu else "cpu",
            "job": self.job_id,
            "jobs_done": self.jobs_done,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "backends": info.get("backends"),
            "gpu_names": info.get("gpu_names"),
            "cuda_visible_devices": info.get("cuda_visible_devices"),
            "executor": "ray",
            "node": self._where.get("node"),
        }

    def where(self) -> dict:
        return dict(self._where)

    def kill(self) -> None:
        actor, self.actor = self.actor, None
        if actor is not None:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass

    # -- actor management -----------------------------------------------------------------------
    def _start(self) -> bool:
        self.state = "starting"
        self.info = None
        resources = {"num_gpus": self.gpu_share, "num_cpus": 1} if self.use_gpu else {"num_cpus": 1}
        try:
            actor = ray.remote(KilnActor).options(max_restarts=0, max_task_retries=0, max_concurrency=4, **resources).remote(self.index)
            ref = actor.hello.remote()
        except Exception as e:
            self.last_exit = f"could not create a Ray actor: {e.__class__.__name__}: {e}"
            log.error("ray slot %d %s", self.index, self.last_exit)
            return False
        self.actor = actor
        deadline = time.monotonic() + self.sup.config.worker_start_timeout
        while not self.sup.stopping:
            ready, _ = ray.wait([ref], timeout=0.5)
            if ready:
                try:
                    self.info = ray.get(ref)
                except Exception as e:
                    self.last_exit = f"died while starting: {_first_line(e)}"
                    log.error("ray slot %d %s", self.index, self.last_exit)
                    self.kill()
                    return False
                self._where = dict(self.info.get("where") or {})
                self.state = "idle"
                log.info("ray slot %d ready on %s (backends %s)", self.index, self._where.get("node"), self.info.get("backends"))
                return True
            if time.monotonic() > deadline:
                self.last_exit = (f"the Ray actor did not start within {self.sup.config.worker_start_timeout:.0f} s "
                                  f"(does the cluster have a free {'GPU' if self.use_gpu else 'CPU'}?)")
                log.error("ray slot %d %s", self.index, self.last_exit)
                self.kill()
                return False
        self.kill()
        return False

    name = "ray slot"

    def _alive(self) -> bool:
        return self.actor is not None

    def _stop(self) -> None:
        self.kill()

    def _released(self) -> None:
        RayCluster.release()

    # -- one job --------------------------------------------------------------------------------
    def _run(self, job) -> None:
        sup = self.sup
        jdir = sup.job_dir(job.id)
        inputs = sup.inputs(job)
        try:
            files, root = _bundle(inputs.all_files())
        except OSError as e:
            sup.finish(job, "failed", error={"code": "bad_input", "message": f"cannot read the job's input: {e.strerror or e}",
                                             "hint": "check the input files", "stage": "start"})
            return
        rel = lambda p: Path(p).relative_to(root).as_posix() if p else None  # noqa: E731
        bundle = ray.put(files)
        self.state = "busy"
        self.job_id = job.id
        attempts = 0
        try:
            while True:
                attempts += 1
                if self.actor is None and not self._start():
                    sup.finish(job, "failed", error={"code": "worker_unavailable", "message": f"no Ray actor could be started: {self.last_exit}",
                                                     "hint": "check the Ray cluster (ray status)", "stage": "start", "attempts": attempts})
                    return
                self.state = "busy"
                fut = self.actor.run.remote(job.seq, job.kind, bundle, rel(inputs.input), rel(inputs.target), rel(inputs.mask),
                                            job.options, job.recon_options, job.fault, job.source_name)
                out = self._watch(job, fut)
                if out is None:
                    return  # cancelled or timed out: already recorded
                if isinstance(out, BaseException):
                    self.restarts += 1
                    self.last_exit = f"actor died: {_first_line(out)} (job {job.id})"
                    log.warning("ray slot %d %s", self.index, self.last_exit)
                    self.kill()
                    retries = int(getattr(sup.config, "ray_retries", 0) or 0)
                    if attempts <= retries and not job.cancel_requested and not sup.stopping:
                        sup.progress(job, "start", 0.0, f"retrying after a crash ({attempts}/{retries})")
                        continue
                    stage = job.stage or "start"
                    if job.cancel_requested:
                        sup.finish(job, "cancelled", message=f"cancelled in stage '{stage}'",
                                   error={"code": "cancelled", "message": f"cancelled in stage '{stage}'", "hint": None, "forced": True, "stage": stage})
                    else:
                        sup.finish(job, "failed", error={
                            "code": "worker_crashed",
                            "message": f"the Ray worker process crashed in stage '{stage}' ({_first_line(out)[:300]})"
                            + (f", {attempts} attempts" if attempts > 1 else ""),
                            "hint": CRASH_HINT, "signal": None, "stage": stage, "attempts": attempts,
                        })
                    return
                self._finish(job, jdir, out, attempts)
                self.jobs_done += 1
                return
        finally:
            self.job_id = None
            del bundle
            self.state = "idle" if self.actor is not None else "restarting"

    def _watch(self, job, fut):
        """Wait for ``fut``: its result dict, the exception of a dead actor, or None (cancelled/timed out here)."""
        cfg = self.sup.config
        t0 = time.monotonic()
        cancel_deadline = None
        next_poll = 0.0
        while True:
            ready, _ = ray.wait([fut], timeout=0.2)
            if ready:
                try:
                    return ray.get(fut)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as e:
                    return e
                except ray.exceptions.RayTaskError as e:  # the actor method itself raised: a bug, not a crash
                    self.sup.finish(job, "failed", error={"code": "internal_error", "message": _first_line(e)[:500],
                                                          "hint": "this is probably a bug in Kiln; see the Ray worker log", "stage": job.stage})
                    return None
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + 0.3
                try:
                    p = ray.get(self.actor.progress.remote(job.seq), timeout=5)
                except Exception:
                    p = None
                if p:
                    self.sup.progress(job, p["stage"], p["fraction"], p["message"])
            if job.cancel_requested:
                if cancel_deadline is None:
                    try:
                        self.actor.cancel.remote(job.seq)
                    except Exception:
                        pass
                    cancel_deadline = now + cfg.cancel_grace
                elif now >= cancel_deadline:
                    stage = job.stage
                    self.kill()
                    self.restarts += 1
                    self.last_exit = f"killed: job {job.id} did not stop within {cfg.cancel_grace:g} s of its cancel"
                    self.sup.finish(job, "cancelled", message=f"cancelled in stage '{stage}' (the actor did not stop within {cfg.cancel_grace:g} s and was restarted)",
                                    error={"code": "cancelled", "message": f"cancelled in stage '{stage}'", "hint": None, "forced": True, "stage": stage})
                    return None
            if cfg.job_timeout and now - t0 > cfg.job_timeout:
                stage = job.stage or "start"
                self.kill()
                self.restarts += 1
                self.last_exit = f"killed: job {job.id} timed out"
                self.sup.finish(job, "failed", error={
                    "code": "timeout", "message": f"timed out after {cfg.job_timeout:g} s in stage '{stage}'",
                    "hint": "lower faces, texture_size, views or view_resolution, or allow a longer run time", "stage": stage, "signal": None,
                })
                return None

    def _finish(self, job, jdir: Path, out: dict, attempts: int) -> None:
        sup = self.sup
        self._where = dict(out.get("where") or self._where)
        try:
            msg = M.decode(out.get("final") or b"")
        except M.MessageError as e:
            sup.finish(job, "failed", error={"code": "internal_error", "message": f"the actor returned no valid outcome ({e})",
                                             "hint": "this is a bug in Kiln; see the Ray worker log", "stage": job.stage})
            return
        if isinstance(msg, M.Done):
            try:
                jdir.mkdir(parents=True, exist_ok=True)
                for key, name in (("result", RESULT_NAME), ("report", REPORT_NAME)):
                    data = out.get(key)
                    if data is None:
                        raise OSError(f"the actor sent no {name}")
                    tmp = jdir / (name + ".part")
                    tmp.write_bytes(data)
                    os.replace(tmp, jdir / name)
            except OSError as e:
                sup.finish(job, "failed", error={"code": "write_failed", "message": f"cannot store the result: {getattr(e, 'strerror', None) or e}",
                                                 "hint": "check free disk space on this machine", "stage": "export"})
                return
            sup.finish(job, "succeeded", message="done", timings=msg.timings)
        elif isinstance(msg, M.Failed):
            err = dict(msg.error)
            err.setdefault("stage", msg.stage)
            if attempts > 1:
                err["attempts"] = attempts
            sup.finish(job, "failed", error=err, stage=msg.stage)
        elif isinstance(msg, M.Cancelled):
            sup.finish(job, "cancelled", message=msg.message or "cancelled",
                       error={"code": "cancelled", "message": msg.message or "cancelled", "hint": None, "forced": False, "stage": msg.stage})


def _first_line(e: BaseException) -> str:
    cause = getattr(e, "cause", None)  # RayTaskError: the exception the remote code raised
    if isinstance(cause, BaseException) and cause is not e:
        e = cause
    text = str(e).strip() or e.__class__.__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{e.__class__.__name__}: {lines[0] if lines else text}"


def make_slots(queue, config) -> list:
    """One slot per GPU of the cluster (or per CPU slot), or ``config.workers`` when > 0 (more than the GPUs:
    they share GPUs, e.g. 16 actors on 8 GPUs ask for half a GPU each)."""
    from engine.service.executors import ExecutorUnavailable

    device = getattr(config, "ray_device", "auto")
    workers = int(getattr(config, "workers", 0) or 0)
    try:
        RayCluster.connect(config.ray_address, num_cpus=workers or None)
    except Exception as e:
        where = config.ray_address or "a local Ray instance"
        raise ExecutorUnavailable(
            f"cannot connect to the Ray cluster at {where}: {_first_line(e)[:300]}",
            hint="start it with `ray start --head --port 6379` (and `ray start --address=HEAD:6379` on the other machines), "
            "then pass --ray-address HEAD:6379, or `auto` with RAY_ADDRESS set",
        ) from None
    try:
        res = RayCluster.resources()
        gpus = int(res.get("GPU", 0))
        cpus = int(res.get("CPU", 1))
        use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
        if use_gpu and gpus == 0:
            raise ExecutorUnavailable("the Ray cluster has no GPU", hint="add GPU nodes (`ray start --address=HEAD:PORT` on them), or use device cpu")
        n = workers or (gpus if use_gpu else max(1, cpus))
        # more actors than GPUs: k actors share each GPU (num_gpus=1/k), never more than fit
        share = 1.0 / -(-n // gpus) if use_gpu and gpus and n > gpus else 1.0
    except BaseException:
        RayCluster.release()
        raise
    # every slot releases the connection when its thread ends; the first connect counted one
    for _ in range(n - 1):
        RayCluster.connect(config.ray_address)
    return [RaySlot(queue, i, use_gpu, share) for i in range(n)]
