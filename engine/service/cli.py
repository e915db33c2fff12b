"""`kiln serve`: the engine service (HTTP jobs API, supervised worker processes).

The first line on stdout is one JSON object,
    {"event": "ready", "url": "http://HOST:PORT", "pid": PID, ...}
printed once the server accepts requests (with --port 0 the OS picks a free
port, and this line says which). Logs go to stderr. SIGTERM or SIGINT stop the
service gracefully (stop accepting, cancel jobs, end workers) with exit 0,
after a last stdout line {"event": "stopped", ...}.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; anything but loopback needs a token)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free port, announced in the ready line)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", help="require `Authorization: Bearer TOKEN` (visible in `ps`; prefer --token-file)")
    tok.add_argument("--token-file", help="read the token from this file (or set KILN_TOKEN)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per GPU, else 1)")
    p.add_argument("--data-dir", help="folder for job files and results (default: a temporary folder removed at exit)")
    p.add_argument("--max-upload-mb", type=float, default=512.0, help="largest accepted upload in MB (default 512)")
    p.add_argument("--job-timeout", type=float, default=3600.0, help="seconds a job may run before its worker is killed (default 3600; 0 = no limit)")
    p.add_argument("--cancel-grace", type=float, default=3.0, help="seconds a cancelled job gets to stop before its worker is killed (default 3)")
    p.add_argument("--retention-hours", type=float, default=24.0, help="finished jobs and their results are removed after this many hours (default 24)")
    p.add_argument("--max-queue", type=int, default=1000, help="most jobs waiting at once (default 1000)")
    p.add_argument("--max-faces", type=int, default=None,
                   help="largest input (faces) a job may send; clients may lower it, never raise it (default: what fits this machine's memory, at most 5,000,000)")
    p.add_argument("--max-texture-size", type=int, default=None,
                   help="largest texture_size a job may ask for (default: the largest power of two that fits this machine's memory, at most 8192)")
    p.add_argument("--job-memory-gb", type=float, default=None,
                   help="memory one job may plan to use; jobs estimated above it are refused at submit (default: 80%% of this machine's memory / workers)")
    p.add_argument("--public-name", action="append", default=[], metavar="NAME",
                   help="another host name (or address) clients reach this service by, e.g. behind a proxy; "
                   "requests naming any other host are refused (DNS-rebinding protection). Repeatable")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where jobs run: local = worker processes on this machine (default); ray = actors on a Ray cluster "
                   "(one per GPU of the cluster; this process stays torch-free)")
    p.add_argument("--ray-address", metavar="HOST:PORT|auto", default=None,
                   help="with --executor ray: the cluster to join (auto: $RAY_ADDRESS); default: a private Ray instance on this machine")
    p.add_argument("--ray-retries", type=int, default=1, help="with --executor ray: a job whose actor crashed runs again at most this many times (default 1)")
    p.add_argument("--allow-fault-injection", action="store_true", help="accept the job option `fault` (tests only: crash a worker on purpose)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="log level (logs go to stderr)")
    p.add_argument("--access-log", action="store_true", help="log every request (to stderr)")


def _fail(message: str, hint: str | None = None, code: int = 2) -> int:
    print(f"kiln: error: {message}", file=sys.stderr)
    if hint:
        print(f"kiln: hint: {hint}", file=sys.stderr)
    return code


def is_loopback(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _read_token(args) -> tuple[str | None, str | None]:
    """(token, error)."""
    if args.token is not None and args.token.strip():
        return args.token.strip(), None  # (an empty --token means none: loopback only, see run())
    if args.token_file:
        try:
            tok = Path(args.token_file).expanduser().read_text().strip()
        except OSError as e:
            return None, f"cannot read the token file {args.token_file}: {e.strerror or e}"
        return (tok, None) if tok else (None, f"the token file {args.token_file} is empty")
    env = os.environ.get("KILN_TOKEN", "").strip()
    return (env or None), None


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    last = None
    for family, stype, proto, _, addr in infos:
        sock = socket.socket(family, stype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(2048)
            sock.set_inheritable(False)
            return sock
        except OSError as e:
            last = e
            sock.close()
    raise last or OSError(f"no address for {host}")


def _url_host(sock: socket.socket, host: str) -> str:
    addr = sock.getsockname()[0]
    if addr in ("0.0.0.0", ""):
        addr = "127.0.0.1"
    elif addr == "::":
        addr = "::1"
    return f"[{addr}]" if ":" in addr else addr


def _lock_data_dir(data_dir: Path):
    """An exclusive lock on <data-dir>/.lock for the life of the process (None: held by another service)."""
    f = open(data_dir / ".lock", "a+")
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - no fcntl (Windows): no lock
        pass
    except OSError:
        f.close()
        return None
    return f


def _log_config(level: str) -> dict:
    import uvicorn.config

    cfg = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    cfg["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout carries only the JSON events
    cfg["handlers"]["default"]["stream"] = "ext://sys.stderr"
    cfg["loggers"]["kiln"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    cfg["loggers"]["uvicorn"]["level"] = level.upper()
    return cfg


def _event(**fields) -> None:
    try:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass  # whoever started us stopped reading; the service goes on


def run(args) -> int:
    token, err = _read_token(args)
    if err:
        return _fail(err, "put the token (any long random string, e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) in the file")
    if not is_loopback(args.host) and not token:
        return _fail(
            f"refusing to listen on {args.host} without a token: anyone who can reach this port could run jobs on this machine",
            "start with --token-file FILE (clients send `Authorization: Bearer <token>`), or keep --host 127.0.0.1 and reach "
            "the service through an SSH tunnel: ssh -L 8765:127.0.0.1:8765 gpu-host",
        )
    if not 0 <= args.port <= 65535:
        return _fail(f"--port {args.port} is not a port number", "use 0..65535 (0 picks a free port)")
    if args.workers is not None and not 1 <= args.workers <= 64:
        return _fail(f"--workers {args.workers} must be in 1..64")
    if not args.max_upload_mb > 0:
        return _fail("--max-upload-mb must be positive")
    if args.ray_address and args.executor != "ray":
        return _fail("--ray-address needs --executor ray")
    if not 0 <= args.ray_retries <= 10:
        return _fail(f"--ray-retries {args.ray_retries} must be in 0..10")
    if args.job_timeout < 0 or args.cancel_grace < 0 or args.retention_hours < 0 or args.max_queue < 1:
        return _fail("--job-timeout, --cancel-grace and --retention-hours must be >= 0, --max-queue >= 1")
    if args.max_faces is not None and not 4 <= args.max_faces <= 10_000_000_000:
        return _fail(f"--max-faces {args.max_faces} must be at least 4")
    if args.max_texture_size is not None and not 16 <= args.max_texture_size <= 8192:
        return _fail(f"--max-texture-size {args.max_texture_size} must be in 16..8192")
    if args.job_memory_gb is not None and not args.job_memory_gb > 0:
        return _fail("--job-memory-gb must be positive")

    try:
        sock = _bind(args.host, args.port)
    except OSError as e:
        return _fail(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}", "choose another --port (0 picks a free one) or check --host")

    temp_dir = None
    if args.data_dir:
        data_dir = Path(args.data_dir).expanduser().resolve()
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = data_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            sock.close()
            return _fail(f"cannot use --data-dir {data_dir}: {e.strerror or e}", "pass a folder this user can write to")
    else:
        temp_dir = data_dir = Path(tempfile.mkdtemp(prefix="kiln-serve-"))
    lock = _lock_data_dir(data_dir)
    if lock is None:
        sock.close()
        return _fail(f"another `kiln serve` is using the data dir {data_dir}", "give each service its own --data-dir")

    import uvicorn

    from engine import API_VERSION, __version__
    from engine.service.app import create_app
    from engine.service.config import ServiceConfig
    from engine.service.gpus import detect_gpus
    from engine.service.guard import allowed_hosts
    from engine.service.limits import default_caps
    from engine.service.supervisor import Supervisor

    if args.executor == "ray":
        gpus = []  # the cluster's GPUs, not this machine's: one actor per cluster GPU unless --workers
        workers = args.workers or 0
    else:
        gpus = detect_gpus()
        workers = args.workers or max(1, len(gpus))
    config = ServiceConfig(
        data_dir=data_dir,
        workers=workers,
        gpus=gpus,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        job_timeout=args.job_timeout or None,
        cancel_grace=args.cancel_grace,
        retention_s=args.retention_hours * 3600.0,
        max_queue=args.max_queue,
        allow_fault_injection=args.allow_fault_injection,
        token=token,
        executor=args.executor,
        ray_address=args.ray_address,
        ray_retries=args.ray_retries,
        caps=default_caps(
            max(1, workers), max_faces=args.max_faces, max_texture_size=args.max_texture_size,
            job_memory_bytes=int(args.job_memory_gb * 1024**3) if args.job_memory_gb else None,
        ),
        allowed_hosts=allowed_hosts(args.host, args.public_name),
    )

    stop = {"signal": None, "server": None, "app": None}

    def on_signal(signum, frame):  # uvicorn replaces this while it runs, and re-raises into it after
        stop["signal"] = signum
        if stop["server"] is not None:
            stop["server"].should_exit = True
        if stop["app"] is not None:
            stop["app"].state.doctor.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from engine.errors import KilnError

    try:
        sup = Supervisor(config)  # the executor's slots: for ray, this connects to the cluster
    except KilnError as e:
        sock.close()
        lock.close()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        return _fail(e.message, e.hint, code=3)
    workers = len(sup.slots)
    app = create_app(sup)
    stop["app"] = app
    open_note = None
    if not token:
        open_note = ("no token: any user and any program on this machine can submit, read and delete jobs "
                     "(web pages cannot: foreign Host and Origin headers are refused); use --token-file on a shared machine")
    url = f"http://{_url_host(sock, args.host)}:{sock.getsockname()[1]}"

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                _event(
                    event="ready", url=url, pid=os.getpid(), version=__version__, api_version=API_VERSION,
                    workers=workers, gpus=[g.name for g in gpus], data_dir=str(data_dir), auth=bool(token), executor=config.executor,
                    limits=config.caps.to_dict(), **({"warning": open_note} if open_note else {}),
                )
                if open_note:
                    print(f"kiln: warning: {open_note}", file=sys.stderr, flush=True)

        def handle_exit(self, sig, frame):
            app.state.doctor.stop()  # a doctor run in flight must not hold up the exit
            super().handle_exit(sig, frame)

    uconfig = uvicorn.Config(
        app,
        log_config=_log_config(args.log_level),
        log_level=args.log_level,
        access_log=args.access_log,
        lifespan="off",
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    server = Server(uconfig)
    stop["server"] = server
    rc = 0
    try:
        sup.start()
        if stop["signal"] is None:
            server.run(sockets=[sock])
            if not server.started:
                rc = _fail(f"the HTTP server did not start on {url}", "see the log above")
    except SystemExit as e:  # uvicorn exits on startup failures
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        try:
            sock.close()
        except OSError:
            pass
        app.state.doctor.stop()
        sup.shutdown(timeout=config.cancel_grace + 20)
        lock.close()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        _event(event="stopped", pid=os.getpid(), signal=signal.Signals(stop["signal"]).name if stop["signal"] else None)
    return rc
