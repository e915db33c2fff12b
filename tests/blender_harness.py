"""Shared pytest side of the real-Blender add-on tests (test_addon_blender*.py).

The add-on zip built by build_addon.py, a real `kiln serve` (one CPU worker, fault
injection on), and ``run_driver``: runs the Blender-side scenarios of a driver script
in a fresh process (bpy can be imported once per process) with its own Blender user
folder, and returns each scenario's ``KILN_RESULT`` JSON.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _service_available() -> bool:
    r = subprocess.run([sys.executable, "-m", "engine", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return r.returncode == 0 and "--allow-fault-injection" in r.stdout


@pytest.fixture(scope="module")
def engine_service(tmp_path_factory, kiln_env_module):
    if not _service_available():
        pytest.skip("`kiln serve` is not available in this checkout")
    data = tmp_path_factory.mktemp("kiln-data")
    token = "addon-test-token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", "0", "--token", token, "--workers", "1", "--allow-fault-injection",
         "--cancel-grace", "2", "--data-dir", str(data)],
        cwd=ROOT, env=kiln_env_module, stdout=subprocess.PIPE, stderr=open(data / "serve.log", "wb"), text=True,
    )
    line = proc.stdout.readline()
    try:
        ready = json.loads(line)
    except ValueError:
        proc.kill()
        raise AssertionError(f"kiln serve did not announce itself: {line!r}\n{(data / 'serve.log').read_text()[-3000:]}")
    deadline = time.monotonic() + 60  # wait for the worker, so health lists the backends
    while time.monotonic() < deadline:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(ready["url"] + "/v1/health", timeout=5) as resp:
            if json.load(resp).get("backends"):
                break
        time.sleep(0.2)
    yield {"url": ready["url"], "token": token, "proc": proc}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def kiln_env_module():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_driver(driver: str, addon_zip, tmp_path_factory, scenarios, prefs, extra=None, timeout=600) -> dict:
    """Run ``scenarios`` of the Blender-side ``driver`` script in a fresh process; {scenario: result}."""
    home = tmp_path_factory.mktemp("blender-user")
    cfg = {"zip": addon_zip, "scenarios": scenarios, "prefs": prefs, **(extra or {})}
    cfg_path = home / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ)
    env["BLENDER_USER_RESOURCES"] = str(home / "user")  # isolated extensions, prefs, caches
    env.pop("PYTHONPATH", None)  # the add-on must not find `engine` through Blender's Python
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(driver), str(cfg_path)], cwd=str(home), env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    results = {}
    for line in r.stdout.splitlines():
        if line.startswith("KILN_RESULT "):
            d = json.loads(line[len("KILN_RESULT "):])
            results[d.pop("scenario")] = d
    log = (r.stdout[-4000:] + "\n--- stderr ---\n" + r.stderr[-4000:])
    assert "install" in results, f"driver failed (rc {r.returncode}):\n{log}"
    for name in scenarios:
        assert name in results, f"scenario {name} produced no result (rc {r.returncode}):\n{log}"
        assert "driver_exception" not in results[name], results[name]["driver_exception"] + "\n" + log
    results["_log"] = log
    print(f"blender driver: {wall:.1f} s; scenarios (s):", {k: v.get("_seconds") for k, v in results.items() if isinstance(v, dict)})
    return results

