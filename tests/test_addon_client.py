"""The Blender add-on's engine client, job runner and launcher, without Blender.

These run against ``FakeEngine``, a small stdlib HTTP server on loopback that
speaks the service's /v1 API (jobs scripted per test), and against fake
``engine`` packages started the way the add-on starts a local engine. The
same client against the real ``kiln serve`` is in test_addon_service.py.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blender_addon.core import client as kc  # noqa: E402
from blender_addon.core import jobs as kj  # noqa: E402
from blender_addon.core import launcher as kl  # noqa: E402


# --------------------------------------------------------------------------- fake engine


def parse_multipart(content_type: str, body: bytes) -> dict:
    """{name: (filename | None, bytes, content_type)} using the stdlib email parser."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    )
    out = {}
    for part in msg.iter_parts():
        out[part.get_param("name", header="content-disposition")] = (
            part.get_filename(),
            part.get_payload(decode=True),
            part.get_content_type(),
        )
    return out


class FakeEngine:
    """A scripted stand-in for `kiln serve` on 127.0.0.1 (random port).

    ``script`` is the list of job snapshots successive GETs of a job return
    (the last one repeats). ``result`` is the GLB served for a succeeded job.
    ``routes`` may override any "METHOD /path" with (status, body_bytes, content_type)."""

    def __init__(self, token=None, script=None, result=b"glTF-fake-result", health=None, delay=0.0):
        self.token = token
        self.script = script or [
            {"state": "queued", "stage": None, "progress": 0.0},
            {"state": "running", "stage": "simplify", "progress": 0.2, "message": "100 -> 50 faces"},
            {"state": "running", "stage": "bake", "progress": 0.6},
            {"state": "succeeded", "stage": "done", "progress": 1.0},
        ]
        self.result = result
        self.health_body = health or {"version": "0.1.0", "api_version": "v1", "backends": ["cpu"], "gpus": [], "workers": [{"state": "idle"}], "queue": 0}
        self.delay = delay
        self.slow_polls = 0  # this many job GETs answer only after 1 s
        self.routes: dict = {}
        self.uploads: list = []
        self.requests: list = []  # (method, path, headers)
        self.cancelled: list = []
        self.deleted: list = []
        self._polls: dict = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body, ctype="application/json"):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                with fake._lock:
                    fake.requests.append((method, path, dict(self.headers)))
                if fake.delay:
                    time.sleep(fake.delay)
                key = f"{method} {path}"
                if key in fake.routes:
                    return self._send(*fake.routes[key])
                if path == "/v1/health" and method == "GET":
                    return self._send(200, fake.health_body)
                if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._send(401, {"error": {"code": "unauthorized", "message": "missing or wrong token", "hint": "send Authorization: Bearer <token>"}})
                parts = path.strip("/").split("/")
                if method == "GET" and path == "/v1/jobs":
                    return self._send(200, {"jobs": [{"id": u["id"]} for u in fake.uploads if u["id"] not in fake.deleted]})
                if method == "POST" and path == "/v1/jobs":
                    form = parse_multipart(self.headers["Content-Type"], body)
                    with fake._lock:
                        jid = f"job{len(fake.uploads) + 1}"
                        fake.uploads.append({"id": jid, "form": form, "headers": dict(self.headers)})
                    return self._send(202, {"id": jid})
                if len(parts) >= 3 and parts[:2] == ["v1", "jobs"]:
                    jid = parts[2]
                    if not any(u["id"] == jid for u in fake.uploads) or jid in fake.deleted:
                        return self._send(404, {"error": {"code": "not_found", "message": f"no job {jid}", "hint": ""}})
                    if len(parts) == 3 and method == "GET":
                        with fake._lock:
                            slow = fake.slow_polls > 0
                            fake.slow_polls -= 1
                        if slow:
                            time.sleep(1.0)
                        with fake._lock:
                            i = fake._polls.get(jid, 0)
                            fake._polls[jid] = i + 1
                        snap = dict(fake.script[min(i, len(fake.script) - 1)])
                        if jid in fake.cancelled:
                            snap = {"state": "cancelled", "stage": snap.get("stage"), "progress": snap.get("progress", 0), "message": "cancelled by client"}
                        snap["id"] = jid
                        return self._send(200, snap)
                    if len(parts) == 3 and method == "DELETE":
                        fake.deleted.append(jid)
                        return self._send(200, {"id": jid, "deleted": True})
                    if parts[3:] == ["cancel"] and method == "POST":
                        fake.cancelled.append(jid)
                        return self._send(200, {"id": jid, "state": "cancelling"})
                    if parts[3:] == ["result"] and method == "GET":
                        return self._send(200, fake.result, "model/gltf-binary")
                    if parts[3:] == ["report"] and method == "GET":
                        return self._send(200, {"faces_out": 50, "total_seconds": 1.5})
                return self._send(404, {"error": {"code": "not_found", "message": f"no route {method} {path}", "hint": ""}})

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- multipart + request building


def test_multipart_round_trip_streams_files(tmp_path):
    big = os.urandom(300_000)
    src = tmp_path / "src.glb"
    src.write_bytes(big)
    seen = []
    body = kc.MultipartBody(
        [("options", json.dumps({"faces": 500})), ("file", 'we"ird\nname.glb', src, "model/gltf-binary"), ("mask", "m.png", b"\x89PNG", "image/png")],
        on_read=lambda s, t: seen.append((s, t)),
    )
    chunks = []
    while True:
        c = body.read(8192)
        if not c:
            break
        assert len(c) <= 8192
        chunks.append(c)
    data = b"".join(chunks)
    assert len(data) == len(body) == body.total
    assert seen[-1] == (len(data), len(data)) and len(seen) > 10  # progress while streaming
    form = parse_multipart(body.content_type, data)
    assert json.loads(form["options"][1]) == {"faces": 500}
    assert form["file"][1] == big and form["file"][2] == "model/gltf-binary"
    assert "\n" not in form["file"][0] and form["file"][0].endswith(".glb")
    assert form["mask"] == ("m.png", b"\x89PNG", "image/png")


def test_build_request_auth_and_url_normalisation():
    c = kc.EngineClient("127.0.0.1:8765/v1/", token=" sekret ")
    assert c.base_url == "http://127.0.0.1:8765"
    req = c.build_request("GET", "/jobs/abc")
    assert req.full_url == "http://127.0.0.1:8765/v1/jobs/abc"
    assert req.get_header("Authorization") == "Bearer sekret"
    assert kc.EngineClient("https://gpu.example.com/kiln").url("/health") == "https://gpu.example.com/kiln/v1/health"
    assert kc.EngineClient("http://h:1").build_request("GET", "/health").get_header("Authorization") is None
    req = c.build_request("POST", "/jobs/x/cancel", {"a": 1})
    assert req.get_method() == "POST" and json.loads(req.data) == {"a": 1} and req.get_header("Content-type") == "application/json"
    for bad in ("", "ftp://host/x", "http://"):
        with pytest.raises(kc.EngineError) as ei:
            kc.EngineClient(bad)
        assert ei.value.code == "bad_url" and ei.value.hint


def test_loopback_requests_ignore_proxy_environment(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a proxy that does not exist
    with FakeEngine() as fe:
        assert kc.EngineClient(fe.url).health()["version"] == "0.1.0"


# --------------------------------------------------------------------------- API against the fake


def test_submit_poll_download_round_trip(tmp_path):
    src = tmp_path / "in.glb"
    src.write_bytes(b"glTF" + os.urandom(5000))
    with FakeEngine(token="tok") as fe:
        c = kc.EngineClient(fe.url, token="tok")
        jid = c.submit(str(src), "Duck.glb", {"kind": "bake", "faces": 500}, "model/gltf-binary")
        up = fe.uploads[0]
        assert up["form"]["file"] == ("Duck.glb", src.read_bytes(), "model/gltf-binary")
        assert json.loads(up["form"]["options"][1]) == {"kind": "bake", "faces": 500}
        assert up["headers"]["Authorization"] == "Bearer tok"
        updates = []
        final = c.wait(jid, on_update=updates.append, poll_interval=0.01)
        assert final["state"] == "succeeded"
        assert [u["state"] for u in updates] == ["queued", "running", "running", "succeeded"]
        assert updates[1]["message"] == "100 -> 50 faces"
        out = c.download_result(jid, str(tmp_path / "out.glb"))
        assert Path(out).read_bytes() == b"glTF-fake-result"
        assert not (tmp_path / "out.glb.part").exists()
        assert c.report(jid)["faces_out"] == 50
        c.delete(jid)
        assert fe.deleted == [jid]
        with pytest.raises(kc.EngineError) as ei:
            c.job(jid)
        assert ei.value.status == 404 and ei.value.code == "not_found"


def test_error_mapping_of_service_json_errors():
    with FakeEngine() as fe:
        c = kc.EngineClient(fe.url)
        fe.routes["POST /v1/jobs"] = (422, json.dumps({"error": {"code": "bad_option", "message": "unknown option(s): facez", "hint": "allowed: faces, ..."}}).encode(), "application/json")
        with pytest.raises(kc.EngineError) as ei:
            c.submit(b"x", "a.glb", {"facez": 1})
        e = ei.value
        assert (e.status, e.code, e.message, e.hint) == (422, "bad_option", "unknown option(s): facez", "allowed: faces, ...")
        assert e.full_text() == "unknown option(s): facez — allowed: faces, ..."
        # FastAPI's own validation body
        fe.routes["GET /v1/jobs"] = (422, json.dumps({"detail": [{"loc": ["body", "options"], "msg": "field required"}]}).encode(), "application/json")
        with pytest.raises(kc.EngineError) as ei:
            c.jobs()
        assert ei.value.message == "options: field required" and ei.value.status == 422
        # not JSON at all (a proxy error page)
        fe.routes["GET /v1/jobs"] = (502, b"<html><body>Bad Gateway</body></html>", "text/html")
        with pytest.raises(kc.EngineError) as ei:
            c.jobs()
        assert ei.value.status == 502 and "HTTP 502" in ei.value.message and ei.value.hint
        # 401 without a body still gets an actionable hint
        fe.routes["GET /v1/jobs"] = (401, b"", "text/plain")
        with pytest.raises(kc.EngineError) as ei:
            c.jobs()
        assert ei.value.status == 401 and "token" in ei.value.hint
        # a 200 that is not JSON
        fe.routes["GET /v1/jobs"] = (200, b"hello", "text/plain")
        with pytest.raises(kc.EngineError) as ei:
            c.jobs()
        assert ei.value.code == "bad_response"


def test_wrong_token_is_reported_as_auth_error():
    with FakeEngine(token="right") as fe:
        with pytest.raises(kc.EngineError) as ei:
            kc.EngineClient(fe.url, token="wrong").submit(b"x", "a.glb", {})
        assert ei.value.status == 401 and ei.value.code == "unauthorized"
        assert kc.EngineClient(fe.url).health()["api_version"] == "v1"  # health needs no token


def test_failed_job_maps_error_and_stage():
    script = [{"state": "running", "stage": "bake", "progress": 0.4},
              {"state": "failed", "stage": "bake", "progress": 0.4, "error": {"code": "worker_crashed", "message": "the worker was killed by SIGSEGV", "hint": "run `kiln doctor`"}}]
    with FakeEngine(script=script) as fe:
        c = kc.EngineClient(fe.url)
        jid = c.submit(b"x", "a.glb", {})
        with pytest.raises(kc.EngineError) as ei:
            c.wait(jid, poll_interval=0.01)
        e = ei.value
        assert e.code == "worker_crashed" and "SIGSEGV" in e.message and "(stage: bake)" in e.message and e.hint == "run `kiln doctor`"
    assert kc.job_error({"state": "failed", "error": "boom"}).message == "boom"


def test_cancel_is_sent_once_and_confirmed():
    script = [{"state": "running", "stage": "bake", "progress": 0.1}]
    with FakeEngine(script=script) as fe:
        c = kc.EngineClient(fe.url)
        jid = c.submit(b"x", "a.glb", {})
        with pytest.raises(kc.JobCancelled):
            c.wait(jid, should_cancel=lambda: True, poll_interval=0.01)
        assert fe.cancelled == [jid]


def test_job_timeout_cancels_on_the_engine():
    with FakeEngine(script=[{"state": "running", "stage": "bake", "progress": 0.1}]) as fe:
        c = kc.EngineClient(fe.url)
        jid = c.submit(b"x", "a.glb", {})
        with pytest.raises(kc.EngineError) as ei:
            c.wait(jid, poll_interval=0.01, timeout=0.1)
        assert ei.value.code == "job_timeout" and fe.cancelled == [jid]


def test_slow_polls_are_retried_then_given_up():
    with FakeEngine() as fe:
        c = kc.EngineClient(fe.url, timeout=0.3)
        jid = c.submit(b"x", "a.glb", {})
        fe.slow_polls = 2
        assert c.wait(jid, poll_interval=0.01)["state"] == "succeeded"
        jid = c.submit(b"x", "a.glb", {})
        fe.slow_polls = 10
        with pytest.raises(kc.EngineError) as ei:
            c.wait(jid, poll_interval=0.01, max_retries=2)
        assert ei.value.code == "engine_timeout"


def test_upload_over_the_engine_limit_is_refused_before_sending(tmp_path):
    src = tmp_path / "big.glb"
    src.write_bytes(b"\0" * 5000)
    with FakeEngine(health={"version": "0.1.0", "limits": {"max_upload_bytes": 4000}}) as fe:
        final = kj.run_blocking(kj.JobTask(kl.EngineManager(), _remote(fe), kj.JobSpec("bake", str(src), "b.glb", {}, str(tmp_path / "j"))), lambda ev: None)
        assert final.kind == kj.ERROR and final.data.code == "upload_too_large" and "--max-upload-mb" in final.data.hint
        assert fe.uploads == []


def test_unreachable_engine_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(kc.EngineError) as ei:
        kc.EngineClient(url, timeout=5).health()
    assert time.monotonic() - t0 < 5
    e = ei.value
    assert e.code == "engine_unreachable" and url in e.message and "refused" in e.message and "kiln serve" in e.hint


def test_slow_engine_times_out():
    with FakeEngine(delay=2.0) as fe:
        t0 = time.monotonic()
        with pytest.raises(kc.EngineError) as ei:
            kc.EngineClient(fe.url, timeout=0.3).health()
        assert ei.value.code == "engine_timeout" and time.monotonic() - t0 < 1.9


def test_doctor_absent_is_none():
    with FakeEngine() as fe:
        assert kc.EngineClient(fe.url).doctor() is None
        fe.routes["GET /v1/doctor"] = (200, json.dumps({"checks": [{"name": "cuda", "status": "warn"}]}).encode(), "application/json")
        assert kc.EngineClient(fe.url).doctor()["checks"][0]["status"] == "warn"


def test_job_kinds_from_health():
    assert kc.job_kinds({"job_kinds": ["bake", "reconstruct"]}) == ["bake", "reconstruct"]
    assert kc.job_kinds({"kinds": {"bake": True, "reconstruct": False}}) == ["bake"]
    assert kc.job_kinds({"version": "0.1.0"}) is None


# --------------------------------------------------------------------------- job runner (worker thread + queue)


def _remote(fe, **kw) -> kl.EngineSettings:
    return kl.EngineSettings(mode="REMOTE", url=fe.url, token=kw.pop("token", ""), poll_interval=0.01, **kw)


def test_job_task_events_and_result(tmp_path):
    src = tmp_path / "s.glb"
    src.write_bytes(b"glTF" + b"\0" * 200_000)
    main_thread = threading.current_thread()
    with FakeEngine() as fe:
        spec = kj.JobSpec("bake", str(src), "s.glb", {"faces": 500}, str(tmp_path / "job"), "model/gltf-binary")
        task = kj.JobTask(kl.EngineManager(), _remote(fe), spec)
        events = []
        final = kj.run_blocking(task, lambda ev: events.append((ev, threading.current_thread())))
        assert final.kind == kj.DONE, final.data
        assert all(t is main_thread for _, t in events)  # handled on the caller's thread only
        phases = [e.data["phase"] for e, _ in events if e.kind == kj.PROGRESS]
        assert phases[0] == "connecting" and "uploading" in phases and "running" in phases and phases[-1] == "downloading"
        assert phases.index("uploading") < phases.index("queued") < phases.index("running")
        assert Path(final.data["result"]).read_bytes() == fe.result
        assert final.data["report"]["faces_out"] == 50
        assert json.loads(fe.uploads[0]["form"]["options"][1]) == {"faces": 500, "kind": "bake"}
        assert fe.deleted == ["job1"]  # the engine keeps nothing once we have the result
        assert not task.thread.is_alive()


def test_job_task_cancel_while_running(tmp_path):
    with FakeEngine(script=[{"state": "running", "stage": "bake", "progress": 0.3}]) as fe:
        spec = kj.JobSpec("bake", __file__, "s.glb", {}, str(tmp_path / "job"))
        task = kj.JobTask(kl.EngineManager(), _remote(fe), spec).start()
        seen_running = threading.Event()

        def handle(ev):
            if ev.kind == kj.PROGRESS and ev.data["phase"] == "running":
                seen_running.set()
                task.cancel()

        final = kj.run_blocking(task, handle)
        assert seen_running.is_set()
        assert final.kind == kj.CANCELLED and fe.cancelled == ["job1"]


def test_job_task_unsupported_kind_and_unreachable(tmp_path):
    with FakeEngine(health={"version": "0.1.0", "job_kinds": ["bake"]}) as fe:
        task = kj.JobTask(kl.EngineManager(), _remote(fe), kj.JobSpec("reconstruct", __file__, "a.png", {}, str(tmp_path)))
        final = kj.run_blocking(task, lambda ev: None)
        assert final.kind == kj.ERROR and final.data.code == "unsupported_kind" and "reconstruct" in final.data.message
        assert fe.uploads == []
    settings = kl.EngineSettings(mode="REMOTE", url=f"http://127.0.0.1:{free_port()}")
    final = kj.run_blocking(kj.JobTask(kl.EngineManager(), settings, kj.JobSpec("bake", __file__, "a.glb", {}, str(tmp_path))), lambda ev: None)
    assert final.kind == kj.ERROR and final.data.code == "engine_unreachable"


def test_job_task_engine_side_failure(tmp_path):
    script = [{"state": "failed", "stage": "unwrap", "error": {"code": "worker_crashed", "message": "worker killed by SIGABRT", "hint": "see the engine log"}}]
    with FakeEngine(script=script) as fe:
        final = kj.run_blocking(kj.JobTask(kl.EngineManager(), _remote(fe), kj.JobSpec("bake", __file__, "a.glb", {}, str(tmp_path))), lambda ev: None)
        assert final.kind == kj.ERROR and final.data.code == "worker_crashed" and "unwrap" in final.data.message


def test_check_task(tmp_path):
    with FakeEngine(health={"version": "9.9", "job_kinds": ["bake", "reconstruct"]}) as fe:
        final = kj.run_blocking(kj.CheckTask(kl.EngineManager(), _remote(fe)), lambda ev: None)
        assert final.kind == kj.DONE
        assert final.data["health"]["version"] == "9.9" and final.data["kinds"] == ["bake", "reconstruct"] and final.data["doctor"] is None


# --------------------------------------------------------------------------- local engine launcher

FAKE_ENGINE_MAIN = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
args = sys.argv[1:]
assert args[0] == "serve", args
token = args[args.index("--token") + 1]
mode = open(os.environ["FAKE_MODE_FILE"]).read().strip() if os.environ.get("FAKE_MODE_FILE") else os.environ.get("FAKE_MODE", "ok")
if mode == "fail":
    print("Traceback ...\\nRuntimeError: CUDA driver too old", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "silent":
    time.sleep(60)
from test_addon_client import FakeEngine
fe = FakeEngine(token=token, health={{"version": "fake", "env": os.environ.get("KILN_TEST_VAR"), "pid": os.getpid()}})
fe.thread.start()
print("some banner line")
print(json.dumps({{"event": "ready", "url": fe.url, "pid": os.getpid()}}), flush=True)
if mode == "die":
    time.sleep(0.5)
    os._exit(0)
while True:
    time.sleep(1)
"""


@pytest.fixture
def fake_engine_pkg(tmp_path):
    pkg = tmp_path / "fakepkg" / "engine"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_ENGINE_MAIN.format(tests=str(Path(__file__).parent)))
    return tmp_path / "fakepkg"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_parse_env_text():
    base = {"PATH": "/usr/bin", "HOME": "/home/a"}
    env = kl.parse_env_text("CUDA_HOME=/usr/local/cuda-11.8;PATH=$CUDA_HOME/bin:$PATH\nLD_LIBRARY_PATH=${CUDA_HOME}/lib64", base)
    assert env == {"CUDA_HOME": "/usr/local/cuda-11.8", "PATH": "/usr/local/cuda-11.8/bin:/usr/bin", "LD_LIBRARY_PATH": "/usr/local/cuda-11.8/lib64"}
    assert kl.parse_env_text(r"PATH=C:\cuda\bin;C:\Windows;X=1", base) == {"PATH": r"C:\cuda\bin;C:\Windows", "X": "1"}
    assert kl.parse_env_text("  # comment\n\n A = b=c ", base) == {"A": "b=c"}
    for bad in ("NOVALUE", "1A=2"):
        with pytest.raises(kc.EngineError) as ei:
            kl.parse_env_text(bad, base)
        assert ei.value.code == "bad_env"
    env = kl.engine_environment({"X": "1"}, {"PYTHONHOME": "/blender/python", "PATH": "/bin"})
    assert "PYTHONHOME" not in env and env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_local_engine_start_env_token_stop(fake_engine_pkg, tmp_path):
    settings = kl.EngineSettings(mode="LOCAL", python_path=sys.executable, extra_env=f"PYTHONPATH={fake_engine_pkg};KILN_TEST_VAR=hello world", start_timeout=30)
    mgr = kl.EngineManager(log_dir=str(tmp_path / "logs"))
    try:
        notes = []
        c = mgr.client(settings, notes)
        assert notes == []
        h = c.health()
        assert h["env"] == "hello world" and h["version"] == "fake"
        pid = mgr.local_pid
        assert pid == h["pid"] and _alive(pid)
        cmd = mgr.local.proc.args
        assert cmd[:4] == [sys.executable, "-m", "engine", "serve"] and "--port" in cmd and cmd[cmd.index("--port") + 1] == "0"
        assert c.token and cmd[cmd.index("--token") + 1] == c.token  # fresh token, used by the client
        assert re.fullmatch(r"[0-9a-f]{48}", c.token)  # never starts with "-" (argparse would take it for an option)
        assert len(c.jobs()) == 0  # authorised request works
        c2 = mgr.client(settings)  # reused, not restarted
        assert mgr.local_pid == pid and c2.base_url == c.base_url
    finally:
        mgr.stop()
    assert not _alive(pid)
    with pytest.raises(kc.EngineError) as ei:
        c.health()
    assert ei.value.code == "engine_unreachable"


def test_local_engine_died_is_restarted_with_a_note(fake_engine_pkg, tmp_path):
    settings = kl.EngineSettings(mode="LOCAL", python_path=sys.executable, extra_env=f"PYTHONPATH={fake_engine_pkg};FAKE_MODE=die", start_timeout=30)
    mgr = kl.EngineManager(log_dir=str(tmp_path / "logs"))
    try:
        mgr.client(settings)
        first = mgr.local.pid
        mgr.local.proc.wait(10)
        assert "engine" in (mgr.explain_lost() or "")
        notes = []
        mgr.client(settings, notes)
        assert mgr.local.pid != first
        assert len(notes) == 1 and "had stopped" in notes[0] and "exited with code 0" in notes[0]
    finally:
        mgr.stop()


def test_failed_restart_still_says_the_engine_had_died(fake_engine_pkg, tmp_path):
    mode = tmp_path / "mode"
    mode.write_text("ok")
    settings = kl.EngineSettings(mode="LOCAL", python_path=sys.executable, extra_env=f"PYTHONPATH={fake_engine_pkg};FAKE_MODE_FILE={mode}", start_timeout=30)
    mgr = kl.EngineManager(log_dir=str(tmp_path / "logs"))
    try:
        assert kj.run_blocking(kj.CheckTask(mgr, settings, doctor=False), lambda ev: None).kind == kj.DONE
        mgr.local.proc.kill()
        mgr.local.proc.wait(10)
        mode.write_text("fail")
        events = []
        final = kj.run_blocking(kj.CheckTask(mgr, settings, doctor=False), events.append)
        assert final.kind == kj.ERROR and final.data.code == "engine_start_failed"
        notes = [e.data for e in events if e.kind == kj.NOTE]
        assert len(notes) == 1 and "killed by SIGKILL" in notes[0]
    finally:
        mgr.stop()


def test_local_engine_start_failures(fake_engine_pkg, tmp_path):
    mgr = kl.EngineManager(log_dir=str(tmp_path / "logs"))
    with pytest.raises(kc.EngineError) as ei:
        mgr.client(kl.EngineSettings(mode="LOCAL", python_path=""))
    assert ei.value.code == "no_python" and "Engine Python" in ei.value.hint
    with pytest.raises(kc.EngineError) as ei:
        mgr.client(kl.EngineSettings(mode="LOCAL", python_path=str(tmp_path / "nope" / "python")))
    assert ei.value.code == "no_python"
    with pytest.raises(kc.EngineError) as ei:
        mgr.client(kl.EngineSettings(mode="LOCAL", python_path=sys.executable, extra_env=f"PYTHONPATH={fake_engine_pkg};FAKE_MODE=fail"))
    e = ei.value
    assert e.code == "engine_start_failed" and "exited with code 3" in e.message and "CUDA driver too old" in e.message and "log" in e.hint
    # an environment without the engine at all: this Python with site-packages switched off (-S), so an
    # installed kiln-engine (pip install -e .) is not importable either
    bare = tmp_path / "bare" / "python"
    bare.parent.mkdir()
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    with pytest.raises(kc.EngineError) as ei:
        mgr.client(kl.EngineSettings(mode="LOCAL", python_path=str(bare), extra_env=f"PYTHONPATH={tmp_path}"))
    assert ei.value.code == "engine_start_failed" and "not installed" in ei.value.hint
    # a command that works (the README's install from a checkout), not a package that is not on PyPI
    assert "pip install -e ." in ei.value.hint and "torch==2.13.0" in ei.value.hint and "pip install kiln-engine" not in ei.value.hint
    # never ready -> timeout, and the process is not left behind
    eng = kl.LocalEngine(sys.executable, {"PYTHONPATH": str(fake_engine_pkg), "FAKE_MODE": "silent"}, start_timeout=1.0, log_dir=str(tmp_path / "l2"))
    with pytest.raises(kc.EngineError) as ei:
        eng.start()
    assert ei.value.code == "engine_start_timeout" and not eng.alive()


def test_job_through_local_engine_and_shutdown_leaves_nothing(fake_engine_pkg, tmp_path):
    settings = kl.EngineSettings(mode="LOCAL", python_path=sys.executable, extra_env=f"PYTHONPATH={fake_engine_pkg}", start_timeout=30, poll_interval=0.01)
    mgr = kl.EngineManager(log_dir=str(tmp_path / "logs"))
    before = {t.ident for t in threading.enumerate()}
    try:
        final = kj.run_blocking(kj.JobTask(mgr, settings, kj.JobSpec("bake", __file__, "a.glb", {}, str(tmp_path / "job"))), lambda ev: None)
        assert final.kind == kj.DONE, final.data
        pid = mgr.local_pid
    finally:
        mgr.stop()
    assert not _alive(pid)
    assert {t.ident for t in threading.enumerate()} <= before


# --------------------------------------------------------------------------- packaging and isolation


def test_core_never_imports_bpy_or_engine():
    code = "import sys; import blender_addon, blender_addon.core.client, blender_addon.core.jobs, blender_addon.core.launcher; " \
           "bad = [m for m in ('bpy', 'engine', 'torch', 'numpy', 'requests') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_addon_sources_import_nothing_from_the_engine():
    import ast

    for py in (ROOT / "blender_addon").rglob("*.py"):
        tree = ast.parse(py.read_text(), str(py))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for n in names:
                assert n.split(".")[0] not in ("engine", "torch", "numpy", "requests", "trimesh"), f"{py}: imports {n}"


def test_build_addon_zip(tmp_path):
    (ROOT / "blender_addon" / "__pycache__").mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "-o", str(tmp_path / "a")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    zpath = Path(r.stdout.strip())
    import tomllib

    manifest = tomllib.loads((ROOT / "blender_addon" / "blender_manifest.toml").read_text())
    assert zpath.name == f"kiln-{manifest['version']}.zip"
    assert manifest["id"] == "kiln" and manifest["schema_version"] == "1.0.0" and manifest["license"] == ["SPDX:MIT"]
    assert manifest["blender_version_min"] == "4.2.0" and set(manifest["permissions"]) == {"network", "files"}
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
    assert names[0] == "blender_manifest.toml" and "__init__.py" in names and "core/client.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    src = {p.relative_to(ROOT / "blender_addon").as_posix() for p in (ROOT / "blender_addon").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert set(names) == src
    r2 = subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "-o", str(tmp_path / "b")], capture_output=True, text=True)
    assert (tmp_path / "b" / zpath.name).read_bytes() == zpath.read_bytes()  # reproducible
