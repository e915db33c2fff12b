"""End-to-end tests of `kiln serve`: a real server subprocess on loopback, CPU workers.

Shared servers (module scope) keep the file fast: `server` (fault injection on,
2 workers, 5 s cancel grace, 2 MB upload limit) and `token_server` (a token, no
fault injection, 3 s retention). Meshes are tiny procedural icospheres.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token-for-tests"
FAST = {"faces": 100, "texture_size": 64, "device": "cpu"}


# --- helpers --------------------------------------------------------------------------------------
class Server:
    def __init__(self, args, tmp: Path, env=None, name="server"):
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(env or os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(tmp),
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self.next_event(timeout=60)
        assert self.ready.get("event") == "ready", self.ready
        self.url = self.ready["url"]
        self.pid = self.ready["pid"]
        assert self.pid == self.proc.pid

    def _pump(self):
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace"))
        self.lines.put("")

    def next_event(self, timeout=30.0) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no stdout line within {timeout} s; log:\n{self.log()}")
        if not line:
            raise AssertionError(f"server exited ({self.proc.poll()}) without a line; log:\n{self.log()}")
        return json.loads(line)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"server did not stop within {timeout} s; log:\n{self.log()}")
        self._log.close()
        return self.proc.returncode


def icosphere_glb(color=(200, 40, 40), subdivisions=1) -> bytes:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdivisions)
    m.visual.vertex_colors = np.tile(np.array([*color, 255], np.uint8), (len(m.vertices), 1))
    return m.export(file_type="glb")


def noisy_glb(subdivisions=4) -> bytes:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdivisions)
    rng = np.random.default_rng(0)
    m.visual.vertex_colors = rng.integers(0, 255, (len(m.vertices), 4)).astype(np.uint8)
    return m.export(file_type="glb")


def expected_srgb(color) -> np.ndarray:
    from engine.mesh.source import linear_to_srgb  # 8-bit COLOR_0 is linear in glTF

    return linear_to_srgb(np.asarray(color, np.float32) / 255.0) * 255.0


def texture_median(glb: bytes) -> np.ndarray:
    import trimesh

    mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
    img = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    return np.median(img.reshape(-1, 3), axis=0), len(mesh.faces)


def submit(s: requests.Session, url: str, data: bytes, options=None, filename="model.glb", **kw) -> requests.Response:
    files = {"file": (filename, data, "application/octet-stream")}
    if options is not None:
        files["options"] = (None, options if isinstance(options, str) else json.dumps(options))
    return s.post(url + "/v1/jobs", files=files, timeout=60, **kw)


def submit_ok(s, url, data, options=None, filename="model.glb") -> str:
    r = submit(s, url, data, options, filename)
    assert r.status_code == 202, r.text
    body = r.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["state"] in ("queued", "running", "succeeded", "failed", "cancelled")  # a quick job may be done already
    assert r.headers["location"] == f"/v1/jobs/{body['id']}"
    return body["id"]


def get_job(s, url, jid) -> dict:
    r = s.get(f"{url}/v1/jobs/{jid}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(s, url, jid, states=("succeeded", "failed", "cancelled"), timeout=90.0, pred=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(s, url, jid)
        if (pred(job) if pred else job["state"] in states):
            return job
        if job["state"] in ("succeeded", "failed", "cancelled") and not pred:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {jid} still {job['state']} ({job['stage']}) after {timeout} s: {job}")
        time.sleep(0.05)


def wait_workers_idle(s, url, timeout=90.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        h = s.get(url + "/v1/health", timeout=30).json()
        if all(w["state"] == "idle" for w in h["workers"]) and h["queue_length"] == 0:
            return h["workers"]
        if time.monotonic() > deadline:
            raise AssertionError(f"workers not idle after {timeout} s: {h['workers']}")
        time.sleep(0.1)


def assert_error(r: requests.Response, status=None, code=None):
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert set(err) >= {"code", "message", "hint"}
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kiln_serve")
    data = tmp / "data"
    srv = Server(
        ["--workers", "2", "--allow-fault-injection", "--job-timeout", "120", "--cancel-grace", "5",
         "--max-upload-mb", "2", "--data-dir", str(data)],
        tmp,
    )
    srv.data_dir = data
    yield srv
    rc = srv.stop()
    assert rc == 0, srv.log()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kiln_serve_token")
    data = tmp / "data"
    tf = tmp / "token"
    tf.write_text(TOKEN + "\n")
    srv = Server(["--workers", "1", "--token-file", str(tf), "--retention-hours", str(3 / 3600), "--data-dir", str(data)], tmp, name="token")
    srv.data_dir = data
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture
def http():
    with requests.Session() as s:
        yield s


# --- tests ----------------------------------------------------------------------------------------
def test_ready_line_health_and_openapi(server, http):
    assert server.ready["url"].startswith("http://127.0.0.1:")
    h = http.get(server.url + "/v1/health", timeout=30).json()
    assert h["status"] == "ok"
    assert h["api_version"] == "v1" and h["version"]
    assert len(h["workers"]) == 2
    assert isinstance(h["queue_length"], int)
    assert isinstance(h["gpus"], list)
    wait_workers_idle(http, server.url)
    h = http.get(server.url + "/v1/health", timeout=30).json()
    assert "cpu" in h["backends"]  # reported by a worker, not probed in the server
    spec = http.get(server.url + "/openapi.json", timeout=30).json()
    for path in ("/v1/health", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result", "/v1/jobs/{job_id}/report",
                 "/v1/jobs/{job_id}/cancel", "/v1/doctor"):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(spec["paths"]["/v1/jobs/{job_id}"]) == {"get", "delete"}
    # the doctor runs in a subprocess (`kiln doctor --json`); its JSON comes back as is
    d = http.get(server.url + "/v1/doctor", timeout=300)
    if d.status_code == 501:
        assert_error_5xx = d.json()["error"]
        assert assert_error_5xx["code"] == "doctor_unavailable"
    else:
        assert d.status_code == 200, d.text
        assert isinstance(d.json().get("checks"), list)


def _mapped_libs(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_http_process_never_loads_torch(server, http, kiln_env):
    workers = wait_workers_idle(http, server.url)
    server_maps = _mapped_libs(server.pid)
    for lib in ("libtorch", "torch/lib", "nvdiffrast", "libcuda.so", "libcudart"):
        assert lib not in server_maps, f"the HTTP process mapped {lib}"
    # the same check on a worker finds torch: the test can fail
    assert "torch" in _mapped_libs(workers[0]["pid"])
    code = (
        "import sys, argparse, tempfile, pathlib\n"
        "from engine.cli import build_parser\n"
        "build_parser('serve')\n"
        "from engine.service.app import create_app\n"
        "from engine.service.config import ServiceConfig\n"
        "from engine.service.supervisor import Supervisor\n"
        "import engine.service.worker, engine.service.cli, engine.service.gpus\n"
        "app = create_app(Supervisor(ServiceConfig(data_dir=pathlib.Path(tempfile.mkdtemp()))))\n"
        "bad = [m for m in ('torch', 'nvdiffrast', 'numpy', 'trimesh') if m in sys.modules]\n"
        "print('LOADED', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=kiln_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_round_trip_bake(server, http):
    color = (40, 160, 220)
    jid = submit_ok(http, server.url, icosphere_glb(color, 2), {**FAST, "texture_size": 128}, filename="blue ball.glb")
    job = wait_job(http, server.url, jid)
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0 and job["error"] is None
    assert job["result_url"] == f"/v1/jobs/{jid}/result"
    assert {"load", "simplify", "unwrap", "bake", "export"} <= set(job["timings"]["stages"])
    assert job["timings"]["run"] > 0
    r = http.get(server.url + job["result_url"], timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"] == "model/gltf-binary"
    assert r.content[:4] == b"glTF" and struct.unpack("<I", r.content[8:12])[0] == len(r.content)
    assert 'filename="blue_ball_kiln.glb"' in r.headers["content-disposition"]
    median, nfaces = texture_median(r.content)
    assert nfaces <= 110
    assert np.abs(median - expected_srgb(color)).max() < 20, (median, expected_srgb(color))
    rep = http.get(f"{server.url}/v1/jobs/{jid}/report", timeout=30)
    assert rep.status_code == 200
    report = rep.json()
    assert report["source"] == "blue ball.glb"
    assert report["faces_out"] == nfaces and report["texture_size"] == 128 and report["backend"] == "cpu"
    listed = http.get(server.url + "/v1/jobs", timeout=30).json()
    assert jid in [j["id"] for j in listed["jobs"]] and listed["count"] == len(listed["jobs"])
    assert jid in [j["id"] for j in http.get(server.url + "/v1/jobs?state=succeeded", timeout=30).json()["jobs"]]
    assert jid not in [j["id"] for j in http.get(server.url + "/v1/jobs?state=failed", timeout=30).json()["jobs"]]
    # the data dir holds the job under its random id, with a neutral input name
    jdir = server.data_dir / "jobs" / jid
    assert sorted(p.name for p in jdir.iterdir()) == ["input.glb", "job.json", "report.json", "result.glb"]
    # cancel of a finished job changes nothing
    c = http.post(f"{server.url}/v1/jobs/{jid}/cancel", timeout=30)
    assert c.status_code == 200 and c.json()["state"] == "succeeded"
    d = http.delete(f"{server.url}/v1/jobs/{jid}", timeout=30)
    assert d.status_code == 200 and d.json() == {"id": jid, "deleted": True}
    assert not jdir.exists()
    assert_error(http.get(f"{server.url}/v1/jobs/{jid}", timeout=30), 404, "job_not_found")
    assert_error(http.get(f"{server.url}/v1/jobs/{jid}/result", timeout=30), 404)
    assert_error(http.delete(f"{server.url}/v1/jobs/{jid}", timeout=30), 404)


def test_worker_crashes_fail_only_their_job(server, http):
    wait_workers_idle(http, server.url)
    before = {w["id"]: w["restarts"] for w in http.get(server.url + "/v1/health", timeout=30).json()["workers"]}
    glb = icosphere_glb((120, 200, 60))
    # both workers crash (one SIGSEGV, one SIGABRT) while four good jobs wait in the queue
    crash_segv = submit_ok(http, server.url, glb, {**FAST, "fault": "segfault@bake"})
    crash_abrt = submit_ok(http, server.url, glb, {**FAST, "fault": "abort@unwrap"})
    good = [submit_ok(http, server.url, glb, FAST) for _ in range(4)]
    j = wait_job(http, server.url, crash_segv)
    assert j["state"] == "failed", j
    assert j["error"]["code"] == "worker_crashed" and j["error"]["signal"] == "SIGSEGV" and j["error"]["stage"] == "bake"
    assert "SIGSEGV" in j["error"]["message"] and "bake" in j["error"]["message"]
    assert j["error"]["hint"]
    j = wait_job(http, server.url, crash_abrt)
    assert j["state"] == "failed" and j["error"]["signal"] == "SIGABRT" and j["error"]["stage"] == "unwrap", j
    h = http.get(server.url + "/v1/health", timeout=10)
    assert h.status_code == 200 and h.json()["status"] == "ok"
    for jid in good:  # queued jobs survive the crashes and run in fresh workers
        assert wait_job(http, server.url, jid)["state"] == "succeeded"
    after = http.get(server.url + "/v1/health", timeout=30).json()["workers"]
    assert sum(w["restarts"] for w in after) >= sum(before.values()) + 2
    nxt = submit_ok(http, server.url, glb, FAST)
    assert wait_job(http, server.url, nxt)["state"] == "succeeded"


def test_worker_killed_from_outside_busy_or_idle(server, http):
    """What the OOM killer does: SIGKILL. A busy worker fails its job (with the OOM hint); an idle one is
    simply replaced."""
    workers = wait_workers_idle(http, server.url)
    os.kill(workers[0]["pid"], signal.SIGKILL)  # idle
    jid = submit_ok(http, server.url, icosphere_glb(), {**FAST, "fault": "hang@unwrap"})
    j = wait_job(http, server.url, jid, pred=lambda j: j["state"] == "running" and j["stage"] == "unwrap")
    busy = next(w for w in http.get(server.url + "/v1/health", timeout=30).json()["workers"] if w["id"] == j["worker"])
    assert busy["job"] == jid and busy["state"] == "busy"
    os.kill(busy["pid"], signal.SIGKILL)
    j = wait_job(http, server.url, jid)
    assert j["state"] == "failed" and j["error"]["signal"] == "SIGKILL" and j["error"]["stage"] == "unwrap", j
    assert "out-of-memory" in j["error"]["hint"]
    after = {w["id"]: w for w in wait_workers_idle(http, server.url)}
    assert after[0]["pid"] != workers[0]["pid"] and after[0]["restarts"] > workers[0]["restarts"]
    assert after[0]["last_exit"]
    ok = [submit_ok(http, server.url, icosphere_glb(), FAST) for _ in range(2)]
    assert all(wait_job(http, server.url, x)["state"] == "succeeded" for x in ok)


def test_job_sent_to_a_worker_that_just_died_goes_back_to_the_queue(tmp_path, http):
    """Kill the only (idle) worker and submit at once: the job may reach the dead worker's pipe before the
    supervisor notices; it must run in the fresh worker, not fail with the previous worker's SIGKILL."""
    srv = Server(["--workers", "1"], tmp_path, name="requeue")
    try:
        for _ in range(4):
            (w,) = wait_workers_idle(http, srv.url)
            os.kill(w["pid"], signal.SIGKILL)
            jid = submit_ok(http, srv.url, icosphere_glb(), FAST)
            j = wait_job(http, srv.url, jid)
            assert j["state"] == "succeeded", j
    finally:
        assert srv.stop() == 0, srv.log()


def test_python_exception_in_worker_is_a_failed_job_without_restart(server, http):
    workers = wait_workers_idle(http, server.url)
    pids = {w["id"]: w["pid"] for w in workers}
    jid = submit_ok(http, server.url, icosphere_glb(), {**FAST, "fault": "raise@simplify"})
    j = wait_job(http, server.url, jid)
    assert j["state"] == "failed" and j["error"]["code"] == "internal_error", j
    assert "injected fault" in j["error"]["message"] and j["error"]["stage"] == "simplify"
    now = {w["id"]: w["pid"] for w in wait_workers_idle(http, server.url)}
    assert now[j["worker"]] == pids[j["worker"]]  # the worker survived


def test_bad_content_fails_in_the_worker_with_bad_input(server, http):
    data = icosphere_glb()
    clen = struct.unpack("<I", data[12:16])[0]
    doc = json.loads(data[20 : 20 + clen])
    doc["accessors"][0]["count"] = 10**6  # plausible header, impossible data
    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    rest = data[20 + clen :]
    bad = b"glTF" + struct.pack("<II", 2, 20 + len(js) + len(rest)) + struct.pack("<II", len(js), 0x4E4F534A) + js + rest
    jid = submit_ok(http, server.url, bad, FAST, filename="broken.glb")
    j = wait_job(http, server.url, jid)
    assert j["state"] == "failed" and j["error"]["code"] == "bad_input", j
    assert "broken.glb" in j["error"]["message"] and "input.glb" not in j["error"]["message"]
    assert_error(http.get(f"{server.url}/v1/jobs/{jid}/result", timeout=30), 409, "no_result")
    assert_error(http.get(f"{server.url}/v1/jobs/{jid}/report", timeout=30), 409, "no_result")
    # an OBJ whose face points at a missing vertex
    jid = submit_ok(http, server.url, b"v 0 0 0\nv 1 0 0\nf 1 2 3\n", FAST, filename="cut.obj")
    j = wait_job(http, server.url, jid)
    assert j["state"] == "failed" and j["error"]["code"] == "bad_input", j


def test_hang_is_killed_at_the_job_timeout(tmp_path, http):
    srv = Server(["--workers", "1", "--allow-fault-injection", "--job-timeout", "3"], tmp_path, name="timeout")
    try:
        ok = submit_ok(http, srv.url, icosphere_glb(), FAST)  # a job that ends in time is not touched
        assert wait_job(http, srv.url, ok)["state"] == "succeeded"
        t0 = time.monotonic()
        jid = submit_ok(http, srv.url, icosphere_glb(), {**FAST, "fault": "hang@bake"})
        j = wait_job(http, srv.url, jid, timeout=60)
        elapsed = time.monotonic() - t0
        assert j["state"] == "failed" and j["error"]["code"] == "timeout", j
        assert j["error"]["message"] == "timed out after 3 s in stage 'bake'" and j["error"]["hint"]
        assert 3 <= elapsed < 30
        assert http.get(srv.url + "/v1/health", timeout=10).json()["status"] == "ok"
        ok = submit_ok(http, srv.url, icosphere_glb(), FAST)
        assert wait_job(http, srv.url, ok)["state"] == "succeeded"
        assert http.get(srv.url + "/v1/health", timeout=10).json()["workers"][0]["restarts"] == 1
    finally:
        assert srv.stop() == 0, srv.log()


def test_cancel_queued_and_running_jobs(server, http):
    wait_workers_idle(http, server.url)
    glb = icosphere_glb()
    hung = [submit_ok(http, server.url, glb, {**FAST, "fault": "hang@load"}) for _ in range(2)]
    for jid in hung:
        wait_job(http, server.url, jid, pred=lambda j: j["state"] == "running" and j["stage"] == "load")
    queued = submit_ok(http, server.url, glb, FAST)
    j = get_job(http, server.url, queued)
    assert j["state"] == "queued" and j["queue_position"] == 0
    assert_error(http.get(f"{server.url}/v1/jobs/{queued}/result", timeout=30), 409, "not_ready")
    assert_error(http.delete(f"{server.url}/v1/jobs/{queued}", timeout=30), 409, "job_not_finished")
    c = http.post(f"{server.url}/v1/jobs/{queued}/cancel", timeout=30)
    assert c.status_code == 200 and c.json()["state"] == "cancelled"
    # running jobs stuck in native code: cooperative cancel cannot work, the worker is killed after the grace
    t0 = time.monotonic()
    for jid in hung:
        assert http.post(f"{server.url}/v1/jobs/{jid}/cancel", timeout=30).status_code == 200
    for jid in hung:
        j = wait_job(http, server.url, jid, timeout=30)
        assert j["state"] == "cancelled" and j["error"]["forced"] is True and j["error"]["stage"] == "load", j
    assert time.monotonic() - t0 < 12
    assert get_job(http, server.url, queued)["state"] == "cancelled"  # never ran
    assert_error(http.get(f"{server.url}/v1/jobs/{queued}/result", timeout=30), 409, "no_result")
    assert http.delete(f"{server.url}/v1/jobs/{queued}", timeout=30).status_code == 200
    # a running bake stops cooperatively at its next progress check: cancel once the bake stage is in
    # its ray batches (progress moved inside the stage), where the pipeline checks every batch
    wait_workers_idle(http, server.url)
    jid = submit_ok(http, server.url, noisy_glb(4), {"faces": 2000, "texture_size": 2048, "device": "cpu"})
    first = {}

    def in_bake_loop(j):
        if j["state"] != "running":
            return j["state"] != "queued"
        if j["stage"] == "bake":
            first.setdefault("p", j["progress"])
            return j["progress"] > first["p"]
        return j["stage"] in ("dilate", "export")

    wait_job(http, server.url, jid, timeout=120, pred=in_bake_loop)
    assert get_job(http, server.url, jid)["state"] == "running"
    assert_error(http.get(f"{server.url}/v1/jobs/{jid}/result", timeout=30), 409, "not_ready")
    t0 = time.monotonic()
    r = http.post(f"{server.url}/v1/jobs/{jid}/cancel", timeout=30)
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    j = wait_job(http, server.url, jid, timeout=30)
    assert j["state"] == "cancelled", j
    assert j["error"]["forced"] is False, j
    assert time.monotonic() - t0 < 5


def test_concurrent_clients_get_their_own_results(server, http):
    levels_rg = (0.05, 0.3, 0.6, 0.95)
    palette = [
        tuple(int(round(c * 255)) for c in (r, g, b))
        for r in levels_rg for g in levels_rg for b in (0.1, 0.9)
    ]
    assert len(palette) == 32
    expected = np.stack([expected_srgb(c) for c in palette])

    def client(ci: int) -> list[tuple[int, str, np.ndarray]]:
        out = []
        with requests.Session() as s:
            ids = []
            for k in range(4):
                n = ci * 4 + k
                ids.append((n, submit_ok(s, server.url, icosphere_glb(palette[n]), FAST, filename=f"client{ci}_job{k}.glb")))
            for n, jid in ids:
                job = wait_job(s, server.url, jid, timeout=180)
                assert job["state"] == "succeeded", job
                res = s.get(f"{server.url}/v1/jobs/{jid}/result", timeout=30)
                assert res.status_code == 200
                rep = s.get(f"{server.url}/v1/jobs/{jid}/report", timeout=30).json()
                assert rep["source"] == f"client{ci}_job{n - ci * 4}.glb"
                out.append((n, jid, texture_median(res.content)[0]))
        return out

    with ThreadPoolExecutor(8) as ex:
        results = [r for rs in ex.map(client, range(8)) for r in rs]
    assert len(results) == 32 and len({jid for _, jid, _ in results}) == 32
    for n, jid, median in results:
        nearest = int(np.argmin(np.abs(expected - median).max(axis=1)))
        assert nearest == n, (n, median, expected[n])
        assert np.abs(median - expected[n]).max() < 20


def _zip(entries: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _binary_ply(nverts=100, nfaces=100) -> bytes:
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {nverts}\nproperty float x\nproperty float y\n"
        f"property float z\nelement face {nfaces}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    rng = np.random.default_rng(1)
    verts = rng.random((nverts, 3), dtype=np.float32).tobytes()
    faces = b"".join(struct.pack("<Biii", 3, *rng.integers(0, nverts, 3)) for _ in range(nfaces))
    return header + verts + faces


def test_bad_requests_get_4xx_json_and_the_server_stays_up(server, http):
    url = server.url
    glb = icosphere_glb()
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", 4, 4) + b"\x08\x02\x00\x00\x00" + b"\x00" * 4 + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    ext_gltf = json.dumps({"asset": {"version": "2.0"}, "buffers": [{"uri": "../../../etc/passwd", "byteLength": 10}]}).encode()
    bad_version = b"glTF" + struct.pack("<II", 1, len(glb)) + glb[12:]
    corrupt_json = glb[:20] + b"{not json" + glb[29:]
    cases = [
        ("empty upload", dict(data=b""), 422, "empty_file"),
        ("random bytes", dict(data=os.urandom(4096).replace(b"glTF", b"xxxx")), 415, "unsupported_format"),
        ("plain text", dict(data=b"hello world\nthis is not a model\n"), 415, "unsupported_format"),
        ("truncated glb", dict(data=glb[: len(glb) // 2]), 422, "bad_file"),
        ("glb cut inside its header", dict(data=glb[:15]), 422, "bad_file"),
        ("corrupt glb json", dict(data=corrupt_json), 422, "bad_file"),
        ("glb version 1", dict(data=bad_version), 415, "unsupported_format"),
        ("truncated binary ply", dict(data=_binary_ply()[:300]), 422, "bad_file"),
        ("ply without end_header", dict(data=b"ply\nformat ascii 1.0\nelement vertex 3\n"), 422, "bad_file"),
        ("zip without a model", dict(data=_zip({"readme.txt": b"hi"})), 415, "unsupported_format"),
        ("zip slip", dict(data=_zip({"../../evil.obj": b"v 0 0 0\n"})), 422, "unsafe_zip"),
        ("corrupt zip", dict(data=b"PK\x03\x04" + os.urandom(200)), 422, "bad_file"),
        ("gltf with external buffer", dict(data=ext_gltf, filename="x.gltf"), 422, "external_file"),
        ("json that is not gltf", dict(data=b'{"hello": 1}'), 415, "unsupported_format"),
        ("png for a bake", dict(data=png, filename="photo.png"), 415, "unsupported_format"),
        ("path-like filename, bad bytes", dict(data=b"\x00garbage", filename="../../x"), 415, "unsupported_format"),
        ("bad json options", dict(data=glb, options="{faces: 5"), 422, "bad_json"),
        ("options not an object", dict(data=glb, options="[1, 2]"), 422, "bad_json"),
        ("unknown option", dict(data=glb, options={"faces": 100, "colour": "red"}), 422, "bad_option"),
        ("bad option value", dict(data=glb, options={"faces": -5}), 422, "bad_option"),
        ("bad option type", dict(data=glb, options={"texture_size": "big"}), 422, "bad_option"),
        ("unknown kind", dict(data=glb, options={"kind": "melt"}), 422, "unknown_kind"),
        ("bad fault", dict(data=glb, options={"fault": "explode@bake"}), 422, "bad_option"),
        ("oversize upload", dict(data=b"glTF" + b"\x00" * (3 * 1024 * 1024)), 413, "too_large"),
    ]
    for name, kw, status, code in cases:
        r = submit(http, url, kw["data"], kw.get("options"), kw.get("filename", "model.glb"))
        err = assert_error(r, status, code)
        assert err["message"], name

    def raw(body: bytes, ctype: str, **kw):
        return http.post(url + "/v1/jobs", data=body, headers={"Content-Type": ctype} if ctype else {}, timeout=60, **kw)

    b = "kilnboundary"
    part = lambda name, data, fn=None: (  # noqa: E731
        f"--{b}\r\nContent-Disposition: form-data; name=\"{name}\"" + (f'; filename="{fn}"' if fn else "") + "\r\n\r\n"
    ).encode() + data + b"\r\n"
    end = f"--{b}--\r\n".encode()
    mp = f"multipart/form-data; boundary={b}"
    assert_error(raw(json.dumps({"file": "x"}).encode(), "application/json"), 415, "unsupported_media_type")
    assert_error(raw(b"file=abc", "application/x-www-form-urlencoded"), 415, "unsupported_media_type")
    assert_error(raw(glb, ""), 415, "unsupported_media_type")
    assert_error(raw(glb, "multipart/form-data"), 415, "unsupported_media_type")  # no boundary
    assert_error(raw(part("options", b"{}") + end, mp), 422, "missing_file")
    assert_error(raw(part("file", glb, "a.glb") + part("file", glb, "b.glb") + end, mp), 422, "bad_multipart")
    assert_error(raw(part("file", glb, "a.glb") + part("path", b"/etc/passwd") + end, mp), 422, "unknown_field")
    assert_error(raw(part("file", glb, "a.glb")[:-50], mp), 422, "bad_multipart")  # body cut off
    assert_error(raw(b"garbage without any boundary", mp), 422, "bad_multipart")
    assert_error(raw(part("file", glb, "a.glb") + part("options", b"{" + b" " * (1024 * 1024 + 10) + b"}") + end, mp), 422, "bad_options")
    # oversize without Content-Length (chunked): the limit holds while streaming
    big = part("file", b"glTF" + b"\x00" * (3 * 1024 * 1024), "big.glb") + end
    assert_error(raw((big[i : i + 65536] for i in range(0, len(big), 65536)), mp), 413, "too_large")
    # routes and methods
    assert_error(http.get(url + "/v2/jobs", timeout=30), 404, "not_found")
    assert_error(http.get(url + "/v1/jobs/" + "0" * 32, timeout=30), 404, "job_not_found")
    assert_error(http.get(url + "/v1/jobs/..%2F..%2Fetc%2Fpasswd", timeout=30), 404)
    assert_error(http.post(url + "/v1/jobs/nope/cancel", timeout=30), 404, "job_not_found")
    assert_error(http.delete(url + "/v1/health", timeout=30), 405, "method_not_allowed")
    assert_error(http.put(url + "/v1/jobs", timeout=30), 405, "method_not_allowed")
    assert_error(http.get(url + "/v1/jobs?state=bogus", timeout=30), 422, "bad_request")
    # nothing was queued by any of this, nothing leaked into uploads/, and the server is fine
    assert not list((server.data_dir / "uploads").iterdir())
    h = http.get(url + "/v1/health", timeout=10)
    assert h.status_code == 200 and h.json()["status"] == "ok"
    # a path-like file name with good bytes is harmless: it is only a display name
    jid = submit_ok(http, url, glb, FAST, filename="../../x.glb")
    j = wait_job(http, url, jid)
    assert j["state"] == "succeeded" and j["source_name"] == "x.glb"
    assert sorted(p.name for p in (server.data_dir / "jobs" / jid).iterdir()) == ["input.glb", "job.json", "report.json", "result.glb"]
    assert not (server.data_dir.parent / "x.glb").exists() and not (server.data_dir / "x.glb").exists()
    # a zipped OBJ with its MTL is accepted
    obj = b"mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nusemtl red\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"
    mtl = b"newmtl red\nKd 0.8 0.1 0.1\n"
    jid = submit_ok(http, url, _zip({"model/tet.obj": obj, "model/m.mtl": mtl}), {**FAST, "faces": 4}, filename="tet.zip")
    assert wait_job(http, url, jid)["state"] == "succeeded"


def _png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


def test_reconstruct_jobs(server, http):
    url = server.url
    h = http.get(url + "/v1/health", timeout=30).json()
    if "reconstruct" not in h["kinds"]:
        pytest.skip("engine.reconstruct is not part of this build")
    wait_workers_idle(http, url)
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 < 34**2
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[..., :3] = (220, 120, 30)
    rgba[..., 3] = disc * 255
    photo = _png(rgba)
    opts = {"kind": "reconstruct", "faces": 200, "texture_size": 64, "device": "cpu"}
    jid = submit_ok(http, url, photo, opts, filename="disc.png")
    # the same photo without alpha, with the mask uploaded as its own part
    mask = np.repeat((disc * 255).astype(np.uint8)[..., None], 4, axis=2)
    mask[..., 3] = 255
    files = {"file": ("disc_rgb.png", _png(np.concatenate([rgba[..., :3], np.full((96, 96, 1), 255, np.uint8)], axis=2)), "image/png"),
             "mask": ("m.png", _png(mask), "image/png"),
             "options": (None, json.dumps(opts))}
    r = http.post(url + "/v1/jobs", files=files, timeout=60)
    assert r.status_code == 202, r.text
    jid2 = r.json()["id"]
    for j_id in (jid, jid2):
        j = wait_job(http, url, j_id, timeout=120)
        assert j["state"] == "succeeded", j
        rep = http.get(f"{url}/v1/jobs/{j_id}/report", timeout=30).json()
        assert rep["reconstruct"]["backend"] == "inflate"
        assert http.get(f"{url}/v1/jobs/{j_id}/result", timeout=30).content[:4] == b"glTF"
    assert sorted(p.name for p in (server.data_dir / "jobs" / jid2).iterdir()) == ["input.png", "job.json", "mask.png", "report.json", "result.glb"]
    # server-side paths and unknown keys are refused; a model is not a photo; a mask is not for bakes
    for recon, code in (({"mask": "/etc/passwd"}, "bad_option"), ({"repo": "/tmp"}, "bad_option"), ({"colour": 1}, "bad_option")):
        assert_error(submit(http, url, photo, {**opts, "reconstruct": recon}), 422, code)
    assert_error(submit(http, url, icosphere_glb(), opts), 415, "unsupported_format")
    files = {"file": ("a.glb", icosphere_glb(), "model/gltf-binary"), "mask": ("m.png", _png(mask), "image/png")}
    assert_error(http.post(url + "/v1/jobs", files=files, timeout=60), 422, "unknown_field")


def test_token_auth(token_server, http):
    url = token_server.url
    assert token_server.ready["auth"] is True
    h = http.get(url + "/v1/health", timeout=30)
    assert h.status_code == 200 and h.json()["auth"] is True
    for method, path in (("GET", "/v1/jobs"), ("GET", "/openapi.json"), ("GET", "/v1/jobs/" + "0" * 32), ("POST", "/v1/jobs"),
                         ("DELETE", "/v1/jobs/x"), ("GET", "/v1/doctor"), ("GET", "/nope")):
        r = http.request(method, url + path, timeout=30)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_error(http.request(method, url + path, headers={"Authorization": "Bearer wrong"}, timeout=30), 401, "unauthorized")
        assert_error(http.request(method, url + path, headers={"Authorization": TOKEN}, timeout=30), 401)
        assert_error(http.request(method, url + path, headers={"Authorization": f"Basic {TOKEN}"}, timeout=30), 401)
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert http.get(url + "/v1/jobs", headers=good, timeout=30).status_code == 200
    assert http.get(url + "/openapi.json", headers={"Authorization": f"bearer {TOKEN}"}, timeout=30).status_code == 200
    # without --allow-fault-injection the fault option does not exist
    err = assert_error(submit(http, url, icosphere_glb(), {"fault": "segfault@bake"}, headers=good), 422, "bad_option")
    assert "fault" in err["message"]
    r = submit(http, url, icosphere_glb(), FAST, headers=good)
    assert r.status_code == 202
    jid = r.json()["id"]
    s = requests.Session()
    s.headers.update(good)
    j = wait_job(s, url, jid)
    assert j["state"] == "succeeded"
    # retention: finished jobs are swept after the retention period (3 s here)
    jdir = token_server.data_dir / "jobs" / jid
    assert jdir.is_dir()
    deadline = time.monotonic() + 20
    while jdir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not jdir.exists()
    assert_error(s.get(f"{url}/v1/jobs/{jid}", timeout=30), 404, "job_not_found")


def test_non_loopback_without_token_refuses_to_start(tmp_path, kiln_env):
    env = {k: v for k, v in kiln_env.items() if k != "KILN_TOKEN"}
    for args in (["--host", "0.0.0.0"], ["--host", "::"], ["--host", "192.0.2.1"], ["--host", "0.0.0.0", "--token", " "]):
        r = subprocess.run([sys.executable, "-m", "engine", "serve", "--port", "0", *args], capture_output=True, text=True,
                           env=env, timeout=60, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stdout == ""
        assert "token" in r.stderr and "ssh -L" in r.stderr
    r = subprocess.run([sys.executable, "-m", "engine", "serve", "--token-file", str(tmp_path / "missing")], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2 and "token file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "engine", "serve", "--token", "a", "--token-file", "b"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2


def _engine_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_sigterm_shutdown_cancels_jobs_and_ends_workers(tmp_path, http):
    data = tmp_path / "data"
    srv = Server(["--workers", "2", "--allow-fault-injection", "--cancel-grace", "2", "--data-dir", str(data)], tmp_path, name="term")
    try:
        glb = icosphere_glb()
        hung = [submit_ok(http, srv.url, glb, {**FAST, "fault": "hang@load"}) for _ in range(2)]
        for jid in hung:
            wait_job(http, srv.url, jid, pred=lambda j: j["state"] == "running" and j["stage"] == "load")
        queued = submit_ok(http, srv.url, glb, FAST)
        pids = [w["pid"] for w in http.get(srv.url + "/v1/health", timeout=30).json()["workers"]]
        assert all(pids)
    finally:
        t0 = time.monotonic()
        rc = srv.stop(signal.SIGTERM, timeout=60)
    assert rc == 0, srv.log()
    assert time.monotonic() - t0 < 30
    assert srv.next_event()["event"] == "stopped"
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in pids), "worker processes outlived the service"
    states = {p.name: json.loads((p / "job.json").read_text())["state"] for p in (data / "jobs").iterdir()}
    assert states == {hung[0]: "cancelled", hung[1]: "cancelled", queued: "cancelled"}
    # a restart on the same data dir still knows the finished jobs; SIGINT also exits 0
    srv2 = Server(["--workers", "1", "--data-dir", str(data)], tmp_path, name="restart")
    try:
        listed = http.get(srv2.url + "/v1/jobs", timeout=30).json()["jobs"]
        assert {j["id"]: j["state"] for j in listed} == states
        r = subprocess.run([sys.executable, "-m", "engine", "serve", "--data-dir", str(data)], capture_output=True, text=True,
                           timeout=60, env=_engine_env(), cwd=tmp_path)
        assert r.returncode == 2 and "another `kiln serve`" in r.stderr  # one service per data dir
    finally:
        assert srv2.stop(signal.SIGINT) == 0, srv2.log()


def test_property_based_requests_never_get_5xx(server, http):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    url = server.url
    spec = http.get(url + "/openapi.json", timeout=30).json()
    ops = [(path, method, op) for path, item in sorted(spec["paths"].items()) for method, op in sorted(item.items())]
    assert len(ops) >= 8
    glb = icosphere_glb()
    known_ids = [j["id"] for j in http.get(url + "/v1/jobs", timeout=30).json()["jobs"]][:5] or ["0" * 32]
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=6,
    )
    field_names = ["faces", "texture_size", "device", "views", "padding", "cage", "evaluate", "seed", "kind", "bogus"]
    options = st.one_of(
        st.none(),
        st.text(max_size=40),
        st.dictionaries(st.sampled_from(field_names), json_values, max_size=4).map(json.dumps),
        st.just(json.dumps({"faces": 50, "texture_size": 32, "device": "cpu"})),
    )
    files = st.one_of(
        st.binary(max_size=2048),
        st.integers(0, len(glb)).map(lambda n: glb[:n]),
        st.tuples(st.integers(0, len(glb) - 1), st.integers(0, 255)).map(lambda t: glb[: t[0]] + bytes([t[1]]) + glb[t[0] + 1 :]),
        st.just(glb),
    )
    path_values = st.one_of(st.sampled_from(known_ids), st.text(max_size=40), st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
    seen = []

    @settings(max_examples=150, deadline=60_000, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def check(data):
        path, method, op = data.draw(st.sampled_from(ops))
        concrete = re.sub(r"\{[^}]+\}", lambda m: quote(data.draw(path_values), safe="") or "x", path)
        params = {}
        for p in op.get("parameters", []):
            if p.get("in") == "query" and data.draw(st.booleans()):
                params[p["name"]] = data.draw(st.one_of(st.text(max_size=12), st.sampled_from(["queued", "running", "succeeded", "true", "1"])))
        kw = {}
        if "requestBody" in op:
            files_ = {}
            if data.draw(st.integers(0, 9)) > 0:  # now and then no file at all
                files_["file"] = (data.draw(st.text(max_size=20)) or "f", data.draw(files), "application/octet-stream")
            opt = data.draw(options)
            if opt is not None:
                files_["options"] = (None, opt)
            kw["files"] = files_
        r = http.request(method.upper(), url + concrete, params=params, timeout=60, **kw)
        seen.append(r.status_code)
        if path == "/v1/doctor" and r.status_code in (501, 502, 504):
            pass  # documented errors of the doctor subprocess, still JSON
        else:
            assert r.status_code < 500, (method, concrete, r.status_code, r.text)
        if r.status_code >= 400:
            err = r.json()["error"]
            assert {"code", "message", "hint"} <= set(err)

    check()
    assert any(s >= 400 for s in seen) and any(s < 300 for s in seen)
    assert http.get(url + "/v1/health", timeout=10).json()["status"] == "ok"
    for j in http.get(url + "/v1/jobs", timeout=30).json()["jobs"]:  # leave no work behind
        if j["state"] in ("queued", "running"):
            http.post(f"{url}/v1/jobs/{j['id']}/cancel", timeout=30)


@pytest.mark.cuda
def test_cuda_workers_one_per_gpu(tmp_path, http):
    """On a GPU machine: one worker per GPU, each pinned with CUDA_VISIBLE_DEVICES; cuda bakes work, and a
    crash in a CUDA worker fails only its job."""
    srv = Server(["--allow-fault-injection"], tmp_path, name="cuda")
    try:
        assert srv.ready["gpus"] and srv.ready["workers"] == len(srv.ready["gpus"])
        workers = wait_workers_idle(http, srv.url, timeout=300)
        h = http.get(srv.url + "/v1/health", timeout=30).json()
        assert "cuda" in h["backends"] and h["cuda"]["available"] and h["gpus"]
        for w in workers:  # each worker sees exactly its own GPU
            assert w["cuda_visible_devices"] == w["gpu"]["id"] and len(w["gpu_names"]) == 1, w
        assert "libtorch" not in _mapped_libs(srv.pid) and "libcuda" not in _mapped_libs(srv.pid)
        opts = {"faces": 500, "texture_size": 256, "device": "cuda", "views": 16, "view_resolution": 256}
        jid = submit_ok(http, srv.url, noisy_glb(3), opts)
        j = wait_job(http, srv.url, jid, timeout=300)
        assert j["state"] == "succeeded", j
        assert http.get(f"{srv.url}/v1/jobs/{jid}/report", timeout=30).json()["backend"] == "cuda"
        bad = submit_ok(http, srv.url, noisy_glb(3), {**opts, "fault": "segfault@bake"})
        j = wait_job(http, srv.url, bad, timeout=300)
        assert j["state"] == "failed" and j["error"]["signal"] == "SIGSEGV", j
        again = submit_ok(http, srv.url, noisy_glb(3), opts)
        assert wait_job(http, srv.url, again, timeout=300)["state"] == "succeeded"
    finally:
        assert srv.stop() == 0, srv.log()
