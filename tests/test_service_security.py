"""Service hardening (issue 11): typed worker messages, browser/rebinding protection, server-side
caps, job-local scratch files, 4xx for malformed input, doctor single flight, no internals in answers."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from engine.service import messages as M


# --- typed worker messages (no pickle from a worker) ------------------------------------------------
def test_messages_round_trip():
    for msg in (
        M.Hello({"pid": 1, "backends": ["cpu"]}),
        M.Progress(3, "bake", 0.5, "half"),
        M.Done(3, {"bake": 1.5}),
        M.Failed(3, {"code": "bad_input", "message": "x", "hint": None}, "load"),
        M.Cancelled(3, "bake", "cancelled"),
        M.Stop(),
        M.JobRequest(seq=1, id="a" * 32, kind="bake", input="/j/in.glb", partial="/j/p.glb", output="/j/r.glb",
                     report="/j/r.json", scratch="/j/scratch", options={"faces": 10}),
    ):
        assert M.decode(M.encode(msg)) == msg
    assert json.loads(M.encode(M.Progress(1, "bake", 1, "")))["type"] == "progress"


@pytest.mark.parametrize("data", [
    b"\x80\x04\x95",  # a pickle
    b"not json",
    b"[1, 2]",
    b'{"type": "exec", "seq": 1}',
    b'{"type": "progress", "seq": "1", "stage": "bake", "fraction": 0.1, "message": ""}',
    b'{"type": "progress", "seq": 1, "stage": "bake", "fraction": 0.1, "message": "", "extra": 1}',
    b'{"type": "done"}',
    b'{"type": "hello", "info": ' + b"[" * 100000 + b"]" * 100000 + b"}",
])
def test_messages_refuse_anything_else(data):
    with pytest.raises(M.MessageError):
        M.decode(data)


def test_a_pickled_object_on_the_pipe_is_never_unpickled():
    a, b = multiprocessing.Pipe()

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    a.send(Boom())  # what a compromised worker could write
    with pytest.raises(M.MessageError):
        M.recv(b)


# --- a real server ------------------------------------------------------------------------------------
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import requests

from test_service import FAST, Server, assert_error, get_job, icosphere_glb, submit, submit_ok, wait_job, wait_workers_idle

TOKEN = "sec-token-for-tests"


@pytest.fixture(scope="module")
def env_tmp(tmp_path_factory):
    base = tmp_path_factory.mktemp("sec")
    tmpdir = base / "tmpdir"  # the service's $TMPDIR: must stay empty
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return base, tmpdir, env


@pytest.fixture(scope="module")
def server(env_tmp):
    base, _, env = env_tmp
    s = Server(["--workers", "1", "--allow-fault-injection", "--cancel-grace", "0.5", "--data-dir", str(base / "data"),
                "--max-faces", "50000", "--max-texture-size", "512", "--job-memory-gb", "2"], base, env=env, name="sec")
    yield s
    s.stop()


@pytest.fixture()
def http():
    with requests.Session() as s:
        s.trust_env = False
        yield s


def test_ready_line_says_a_tokenless_service_is_open_to_local_users(server):
    assert server.ready["auth"] is False and "any user" in server.ready["warning"]
    assert server.ready["limits"]["max_faces"] == 50000 and server.ready["limits"]["max_texture_size"] == 512


def test_cross_origin_requests_are_refused(server, http):
    glb = icosphere_glb()
    port = server.url.rsplit(":", 1)[1]
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{int(port) + 1}", f"https://127.0.0.1:{port}"):
        r = submit(http, server.url, glb, FAST, headers={"Origin": origin})
        assert_error(r, 403, "cross_origin")
    # a plain cross-site form POST from a browser (Sec-Fetch-Site without Origin is refused too)
    r = submit(http, server.url, glb, FAST, headers={"Sec-Fetch-Site": "cross-site"})
    assert_error(r, 403, "cross_origin")
    jid = submit_ok(http, server.url, glb, {**FAST, "fault": "hang@load"})
    r = http.post(f"{server.url}/v1/jobs/{jid}/cancel", headers={"Origin": "http://evil.example"}, timeout=30)
    assert_error(r, 403, "cross_origin")
    assert get_job(http, server.url, jid)["cancel_requested"] is False
    assert http.get(server.url + "/v1/jobs", headers={"Origin": "http://evil.example"}, timeout=30).status_code == 403
    # its own origin (the docs page) is fine, and no CORS header is ever sent
    r = http.post(f"{server.url}/v1/jobs/{jid}/cancel", headers={"Origin": server.url}, timeout=30)
    assert r.status_code == 200 and "access-control-allow-origin" not in {k.lower() for k in r.headers}
    wait_job(http, server.url, jid)


def test_dns_rebinding_host_is_refused(server, http):
    port = server.url.rsplit(":", 1)[1]
    for host in ("rebind.evil.example", f"rebind.evil.example:{port}", "127.0.0.1.evil.example", "10.1.2.3"):
        for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/health"), ("POST", "/v1/jobs")):
            r = http.request(method, server.url + path, headers={"Host": host}, timeout=30)
            assert_error(r, 421, "bad_host")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"LOCALHOST.:{port}"):
        assert http.get(server.url + "/v1/jobs", headers={"Host": host}, timeout=30).status_code == 200


def test_addon_client_still_works(server):
    from blender_addon.core.client import EngineClient

    c = EngineClient(server.url)
    assert c.health()["status"] in ("ok", "degraded")
    assert isinstance(c.jobs(), list)


def test_clients_cannot_raise_server_caps(server, http):
    glb = icosphere_glb()
    err = assert_error(submit(http, server.url, glb, {**FAST, "max_faces": 10**9}), 422, "over_limit")
    assert "50000" in err["message"] and "max_faces" in err["hint"]
    err = assert_error(submit(http, server.url, glb, {**FAST, "texture_size": 1024}), 422, "over_limit")
    assert "512" in err["message"]
    # lowering is fine; the server's cap is what the worker enforces when the client sends none
    jid = submit_ok(http, server.url, glb, {**FAST, "max_faces": 1000})
    assert get_job(http, server.url, jid)["options"]["max_faces"] == 1000
    jid2 = submit_ok(http, server.url, glb, FAST)
    assert get_job(http, server.url, jid2)["options"]["max_faces"] == 50000
    for j in (jid, jid2):
        wait_job(http, server.url, j, timeout=120)


def test_memory_estimate_refuses_what_does_not_fit(env_tmp, http):
    base, _, env = env_tmp
    s = Server(["--workers", "1", "--data-dir", str(base / "data-mem"), "--job-memory-gb", "0.6", "--max-texture-size", "8192"], base, env=env, name="mem")
    try:
        err = assert_error(submit(http, s.url, icosphere_glb(), {**FAST, "texture_size": 512}), 422, "over_limit")
        assert "GB" in err["message"] and "what fits" in err["hint"], err
        jid = submit_ok(http, s.url, icosphere_glb(), {**FAST, "texture_size": 128, "max_faces": 5000})
        assert get_job(http, s.url, jid)["state"] != "failed"
    finally:
        s.stop()


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def test_deep_json_is_a_422(server, http):
    err = assert_error(submit(http, server.url, icosphere_glb(), '{"faces": 100, "x": ' + _deep(100_000) + "}"), 422, "bad_json")
    assert "nested" in err["message"]
    # a GLB whose JSON chunk nests 100,000 levels deep
    import struct

    js = ('{"asset": {"version": "2.0"}, "extras": ' + _deep(100_000) + "}").encode()
    js += b" " * (-len(js) % 4)
    glb = struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js)) + struct.pack("<II", len(js), 0x4E4F534A) + js
    err = assert_error(submit(http, server.url, glb, FAST), 422, "bad_input")
    assert "nested" in err["message"]


def test_failed_job_carries_no_traceback(server, http):
    wait_workers_idle(http, server.url)
    jid = submit_ok(http, server.url, icosphere_glb(), {**FAST, "fault": "raise@simplify"})
    j = wait_job(http, server.url, jid)
    err = j["error"]
    assert j["state"] == "failed" and err["code"] == "internal_error"
    assert "traceback" not in err and "Traceback" not in json.dumps(j) and str(server.ready["data_dir"]) not in json.dumps(j)
    assert set(err) >= {"code", "message", "hint", "error_id"} and err["error_id"] in err["hint"]
    deadline = time.monotonic() + 10
    while err["error_id"] not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert err["error_id"] in server.log() and "Traceback" in server.log()


def _padded_zip(path: Path, pad_mb: int) -> bytes:
    import trimesh

    obj = trimesh.creation.box().export(file_type="obj")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("aaa_padding.bin", "w", force_zip64=True) as f:
            block = b"\0" * (1 << 20)
            for _ in range(pad_mb):
                f.write(block)
        z.writestr("model.obj", obj)
    return path.read_bytes()


def _outside(tmpdir: Path) -> list:
    return [p for p in tmpdir.rglob("*")]


@pytest.mark.parametrize("how", ["sigkill", "cancel"])
def test_killed_zip_extraction_leaves_nothing_outside_the_data_dir(server, http, env_tmp, how):
    base, tmpdir, _ = env_tmp
    data = _padded_zip(base / f"pad-{how}.zip", 1500)
    assert len(data) < 2 * 1024 * 1024
    wait_workers_idle(http, server.url)
    jid = submit_ok(http, server.url, data, FAST, filename="model.zip")
    scratch = Path(server.ready["data_dir"]) / "jobs" / jid / "scratch"
    deadline = time.monotonic() + 60
    def extracting() -> bool:
        try:
            return any(p.is_file() and p.stat().st_size > 0 for p in scratch.rglob("*"))
        except OSError:
            return False

    while not extracting():  # the worker is writing the zip's members into the job's scratch folder
        assert time.monotonic() < deadline, get_job(http, server.url, jid)
        time.sleep(0.01)
    if how == "sigkill":
        pid = http.get(server.url + "/v1/health", timeout=30).json()["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
    else:
        assert http.post(f"{server.url}/v1/jobs/{jid}/cancel", timeout=30).status_code == 200
    j = wait_job(http, server.url, jid, timeout=60)
    assert j["state"] in ("failed", "cancelled"), j
    assert not scratch.exists()
    assert _outside(tmpdir) == []
    wait_workers_idle(http, server.url)


def test_health_without_the_token_says_only_that_it_is_up(env_tmp, http):
    base, _, env = env_tmp
    s = Server(["--workers", "1", "--token", TOKEN, "--data-dir", str(base / "data-tok")], base, env=env, name="tok")
    try:
        h = http.get(s.url + "/v1/health", timeout=30).json()
        assert set(h) == {"status", "version", "api_version", "auth"}, h
        full = http.get(s.url + "/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
        assert "workers" in full and "jobs" in full
        assert "warning" not in s.ready
    finally:
        s.stop()


def test_doctor_storm_runs_one_subprocess_and_sigterm_does_not_wait_for_it(env_tmp, http):
    base, _, env = env_tmp
    s = Server(["--workers", "1", "--cancel-grace", "1", "--data-dir", str(base / "data-doc")], base, env=env, name="doc")
    results = []

    def ask():
        try:
            results.append(requests.get(s.url + "/v1/doctor?refresh=true", timeout=120).status_code)
        except requests.RequestException as e:
            results.append(repr(e))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while "doctor: running kiln doctor" not in s.log():
            assert time.monotonic() < deadline, s.log()
            time.sleep(0.05)
        time.sleep(0.5)  # every request has arrived and joined the one run
        assert s.log().count("doctor: running kiln doctor") == 1
        t0 = time.monotonic()
        assert s.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - t0 < 1 + 6, time.monotonic() - t0
    finally:
        s.stop(signal.SIGKILL)
        for t in threads:
            t.join(30)
    assert len(results) == 20


def test_cli_refuses_to_write_through_a_planted_symlink(tmp_path):
    from engine.io.export import write_glb
    from engine.io.safety import atomic_write

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.glb"
    # every predictable temp name a previous version used, planted as links to the victim
    for name in (f".out.glb.{os.getpid()}.tmp", ".out.glb.tmp", "out.glb.part"):
        (tmp_path / name).symlink_to(victim)
    import numpy as np

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    write_glb(out, v, np.array([[0, 1, 2]], np.int32), v[:, :2].copy(), np.zeros((4, 4, 3), np.uint8))
    assert victim.read_text() == "precious" and out.read_bytes()[:4] == b"glTF" and not out.is_symlink()
    atomic_write(tmp_path / "r.json", "{}")
    assert (tmp_path / "r.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()) == []


def test_image_pixel_limit_from_the_header(tmp_path):
    from PIL import Image

    from engine.errors import InputError
    from engine.io.safety import check_image_pixels

    p = tmp_path / "big.png"
    Image.new("L", (12_500, 12_500)).save(p)  # 156 MP: under Pillow's own 2x guard, over the 100 MP limit
    with pytest.raises(InputError) as e:
        check_image_pixels(p, "photo")
    assert e.value.code == "image_too_large" and "156.2 megapixels" in e.value.message
    assert check_image_pixels(p, "photo", max_pixels=200_000_000).size == (12_500, 12_500)
