"""The add-on's pure-Python engine client against the real `kiln serve` (no Blender).

Same client code Blender runs (blender_addon/core), talking to a service
subprocess on loopback with a token and fault injection enabled, CPU only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blender_addon.core import client as kc  # noqa: E402
from blender_addon.core import jobs as kj  # noqa: E402
from blender_addon.core import launcher as kl  # noqa: E402

TOKEN = "service-test-token"
SMALL = {"faces": 200, "texture_size": 64, "device": "cpu"}


def service_available() -> bool:
    r = subprocess.run([sys.executable, "-m", "engine", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return r.returncode == 0 and "--allow-fault-injection" in r.stdout


def start_kiln_serve(data_dir: Path, token: str = TOKEN, extra=()) -> tuple[subprocess.Popen, str]:
    """Start `python -m engine serve` from this checkout; returns (process, url) once a worker is up."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", "0", "--token", token, "--workers", "1", "--allow-fault-injection",
         "--cancel-grace", "2", "--data-dir", str(data_dir), *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(data_dir / "serve.log", "wb"), text=True,
    )
    line = proc.stdout.readline()
    try:
        url = json.loads(line)["url"]
    except (ValueError, KeyError):
        proc.kill()
        raise AssertionError(f"kiln serve did not announce itself: {line!r}\n{(data_dir / 'serve.log').read_text()[-3000:]}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with opener.open(url + "/v1/health", timeout=5) as resp:
            if json.load(resp).get("backends"):
                break
        time.sleep(0.2)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    if not service_available():
        pytest.skip("`kiln serve` is not available in this checkout")
    proc, url = start_kiln_serve(tmp_path_factory.mktemp("kiln-data"))
    yield url
    stop(proc)


@pytest.fixture
def client(service):
    return kc.EngineClient(service, token=TOKEN, timeout=10)


def test_health_as_the_addon_reads_it(client):
    h = client.health()
    assert h["api_version"] == "v1" and h["version"]
    assert "cpu" in h["backends"]
    kinds = kc.job_kinds(h)
    assert kinds is not None and "bake" in kinds


def test_round_trip_bake(client, meshes_dir, tmp_path):
    jid = client.submit(str(meshes_dir / "BoxTextured.glb"), "BoxTextured.glb", {"kind": "bake", **SMALL}, "model/gltf-binary")
    states = []
    final = client.wait(jid, on_update=lambda j: states.append((j["state"], j.get("stage"))), poll_interval=0.1)
    assert final["state"] == "succeeded"
    assert states[-1][0] == "succeeded" and all(s in ("queued", "running", "succeeded") for s, _ in states)
    out = client.download_result(jid, str(tmp_path / "r.glb"))
    data = Path(out).read_bytes()
    assert data[:4] == b"glTF" and int.from_bytes(data[8:12], "little") == len(data)
    rep = client.report(jid)
    assert rep["texture_size"] == 64 and rep["backend"] == "cpu"
    assert any(j["id"] == jid for j in client.jobs())
    client.delete(jid)
    with pytest.raises(kc.EngineError) as ei:
        client.job(jid)
    assert ei.value.status == 404 and ei.value.hint


def test_service_errors_are_mapped(client, service, meshes_dir):
    with pytest.raises(kc.EngineError) as ei:
        client.submit(str(meshes_dir / "BoxTextured.glb"), "b.glb", {"facez": 10})
    e = ei.value
    assert e.status == 422 and e.code == "bad_option" and "facez" in e.message and e.hint
    with pytest.raises(kc.EngineError) as ei:
        client.submit(b"this is not a mesh", "x.glb", {"kind": "bake"})
    assert ei.value.status in (415, 422) and ei.value.message and "Traceback" not in ei.value.message
    with pytest.raises(kc.EngineError) as ei:
        kc.EngineClient(service, token="wrong").jobs()
    assert ei.value.status == 401 and ei.value.code == "unauthorized" and "token" in ei.value.hint
    with pytest.raises(kc.EngineError) as ei:
        client.download_result("0" * 32, "/nonexistent/x.glb")
    assert ei.value.status == 404


def test_worker_crash_is_a_job_error(client, meshes_dir):
    jid = client.submit(str(meshes_dir / "BoxTextured.glb"), "b.glb", {**SMALL, "fault": "segfault@bake"})
    with pytest.raises(kc.EngineError) as ei:
        client.wait(jid, poll_interval=0.1)
    e = ei.value
    assert "SIGSEGV" in e.message and "bake" in e.message and e.hint and e.code != "cancelled"
    assert client.health()["api_version"] == "v1"  # the service is fine


def test_cancel_running_job(client, meshes_dir):
    jid = client.submit(str(meshes_dir / "BoxTextured.glb"), "b.glb", {**SMALL, "fault": "hang@bake"})
    t0 = time.monotonic()
    seen = []

    def want_cancel():
        return bool(seen) and seen[-1] == ("running", "bake")

    with pytest.raises(kc.JobCancelled):
        client.wait(jid, on_update=lambda j: seen.append((j["state"], j.get("stage"))), should_cancel=want_cancel, poll_interval=0.1, timeout=60)
    assert ("running", "bake") in seen and time.monotonic() - t0 < 30
    assert client.job(jid)["state"] == "cancelled"


def test_job_task_local_engine_from_this_checkout(meshes_dir, tmp_path):
    """The add-on's launcher starts the real engine (`<python> -m engine serve --port 0 --token ...`)."""
    if not service_available():
        pytest.skip("`kiln serve` is not available in this checkout")
    settings = kl.EngineSettings(mode="LOCAL", python_path=sys.executable, extra_env=f"PYTHONPATH={ROOT}", start_timeout=120, poll_interval=0.1)
    mgr = kl.EngineManager(log_dir=str(tmp_path / "logs"))
    try:
        spec = kj.JobSpec("bake", str(meshes_dir / "Duck.glb"), "Duck.glb", SMALL, str(tmp_path / "job"), "model/gltf-binary")
        events = []
        final = kj.run_blocking(kj.JobTask(mgr, settings, spec), events.append)
        assert final.kind == kj.DONE, final.data
        stages = {e.data["stage"] for e in events if e.kind == kj.PROGRESS}
        assert {"engine", "upload", "download"} <= stages and len(stages) >= 5
        assert Path(final.data["result"]).read_bytes()[:4] == b"glTF"
        assert final.data["report"]["faces_out"] <= 200 + 10
        pid = mgr.local_pid
        assert pid
        # the engine refuses requests without the add-on's fresh token
        with pytest.raises(kc.EngineError) as ei:
            kc.EngineClient(mgr.local.url).jobs()
        assert ei.value.status == 401
    finally:
        mgr.stop()
    assert mgr.local_pid is None
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
