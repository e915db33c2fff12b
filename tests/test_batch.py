"""End-to-end tests of `kiln batch` (local worker processes and a real Ray cluster) and `kiln serve --executor ray`.

CPU only, tiny procedural assets (320-face spheres baked to 100 faces, 64 px textures). The Ray
cluster is started by the test (`ray start --head --num-cpus 2`) and always stopped afterwards.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--faces", "100", "--texture-size", "64", "--device", "cpu"]
RED, BLUE, GREEN = (200, 40, 40), (40, 60, 210), (30, 200, 60)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("RAY_ADDRESS", None)
    return env


def kiln_batch(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "batch", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def _sphere(color):
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=2)
    m.visual.vertex_colors = np.tile(np.array([*color, 255], np.uint8), (len(m.vertices), 1))
    return m


def make_folder(root: Path) -> Path:
    """Good assets of three formats (one an OBJ with its .mtl and texture in a sub-folder), one with the artist's own
    low-poly beside it (rock_low.glb, 80 faces: baked onto, not simplified), and one corrupt file."""
    import PIL.Image
    import trimesh

    root.mkdir(parents=True)
    _sphere(RED).export(root / "red.glb")
    _sphere(BLUE).export(root / "blue.ply")
    crate = trimesh.creation.icosphere(subdivisions=2)
    uv = np.random.default_rng(0).random((len(crate.vertices), 2))
    crate.visual = trimesh.visual.TextureVisuals(uv=uv, image=PIL.Image.new("RGB", (8, 8), GREEN))
    (root / "props").mkdir()
    crate.export(root / "props" / "crate.obj")  # + material.mtl + material_0.png beside it
    _sphere(RED).export(root / "rock.glb")
    trimesh.creation.icosphere(subdivisions=1).export(root / "rock_low.glb")  # 80 faces
    (root / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00" + b"\x00" * 40)
    return root


def texture_median(glb: Path):
    import trimesh

    mesh = trimesh.load(io.BytesIO(glb.read_bytes()), file_type="glb", force="mesh")
    img = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    return np.median(img.reshape(-1, 3), axis=0), len(mesh.faces)


def srgb(color):
    from engine.mesh.source import linear_to_srgb  # 8-bit COLOR_0 is linear in glTF

    return linear_to_srgb(np.asarray(color, np.float32) / 255.0) * 255.0


def summary(out: Path) -> dict:
    doc = json.loads((out / "summary.json").read_text())
    doc["by"] = {a["name"]: a for a in doc["assets"]}
    return doc


def check_first_run(out: Path, executor: str) -> dict:
    s = summary(out)
    assert s["executor"] == executor
    assert {k: s["totals"][k] for k in ("assets", "succeeded", "failed", "skipped")} == {"assets": 5, "succeeded": 4, "failed": 1, "skipped": 0}
    by = s["by"]
    assert by["rock"]["target"].endswith("rock_low.glb") and by["rock"]["faces_out"] == 80, by["rock"]  # baked onto the target
    assert by["red"]["target"] is None and "rock_low" not in by
    for name in ("red", "blue", "props/crate", "rock"):
        a = by[name]
        assert a["status"] == "succeeded", a
        assert Path(a["output"]) == out / f"{name}.glb" and Path(a["output"]).is_file()
        assert a["faces_in"] == 320 and 4 <= a["faces_out"] <= 110 and a["backend"] == "cpu", a
        assert a["seconds"] > 0 and a["node"] and a["error"] is None
    bad = by["broken"]
    assert bad["status"] == "failed" and not (out / "broken.glb").exists()
    assert bad["error"]["code"] == "bad_input" and "broken.glb" in bad["error"]["message"], bad
    # colours came through: vertex colours (GLB, PLY) and the OBJ's texture file next to its .mtl
    for name, expected in (("red", srgb(RED)), ("blue", np.asarray(BLUE, float))):
        median, _ = texture_median(out / f"{name}.glb")
        assert np.abs(median - expected).max() < 25, (name, median, expected)
    median, _ = texture_median(out / "props/crate.glb")  # green texture (times the .mtl's Kd): not the grey of a lost texture
    assert median[1] > 2.5 * median[0] and median[1] > 2.5 * median[2] and median[1] > 90, median
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted((r["name"], r["status"]) for r in rows) == [("blue", "succeeded"), ("broken", "failed"), ("props/crate", "succeeded"),
                                                             ("red", "succeeded"), ("rock", "succeeded")]
    assert [r["error_code"] for r in rows if r["name"] == "broken"] == ["bad_input"]
    return s


# --- local executor -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("batch") / "in")


@pytest.fixture(scope="module")
def local_out(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("batch_local") / "out"
    r = kiln_batch(folder, "-o", out, *FAST, "--jobs", "2")
    assert r.returncode == 1, r.stderr  # one asset failed
    (out.parent / "first_run.log").write_text(r.stderr)
    return out


def test_local_folder_one_bad_asset_and_resume(folder, local_out):
    s = check_first_run(local_out, "local")
    assert s["by"]["red"]["node"] == socket.gethostname()
    assert s["workers"] == 2
    log = (local_out.parent / "first_run.log").read_text()
    assert "FAILED  broken" in log and "4 succeeded, 1 failed" in log
    # rerun: the good ones are up to date (the failed one is tried again)
    r = kiln_batch(folder, "-o", local_out, *FAST, "--jobs", "2")
    assert r.returncode == 1, r.stderr
    s2 = summary(local_out)
    assert {n: a["status"] for n, a in s2["by"].items()} == {"red": "skipped", "blue": "skipped", "props/crate": "skipped", "rock": "skipped", "broken": "failed"}
    # a newer texture makes its OBJ out of date; other options make everything out of date; --force redoes all
    time.sleep(0.05)
    (folder / "props" / "material_0.png").touch()
    r = kiln_batch(folder, "-o", local_out, *FAST, "--jobs", "1", "--json", "-q")
    assert r.returncode == 1, r.stderr
    s3 = json.loads(r.stdout)
    assert {a["name"]: a["status"] for a in s3["assets"]} == {"red": "skipped", "blue": "skipped", "props/crate": "succeeded", "rock": "skipped", "broken": "failed"}


def test_manifest_per_asset_options_and_a_segfaulting_asset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _sphere(RED).export(src / "a.glb")
    _sphere(BLUE).export(src / "b.glb")
    _sphere(GREEN).export(src / "c.glb")
    man = tmp_path / "assets.csv"
    man.write_text("source,output,faces\nsrc/a.glb,named/a_small,40\nsrc/b.glb,,\nsrc/c.glb,,\nsrc/a.glb,a_bad,lots\n")
    out = tmp_path / "out"
    r = kiln_batch(man, "-o", out, *FAST, "--jobs", "1", "--inject-fault", "b=segfault@bake")
    assert r.returncode == 1, r.stderr
    by = summary(out)["by"]
    assert by["named/a_small"]["status"] == "succeeded" and by["named/a_small"]["faces_out"] <= 44
    assert (out / "named" / "a_small.glb").is_file()
    # the worker died with SIGSEGV on b: b alone fails, and c runs in its replacement
    assert by["b"]["status"] == "failed" and by["b"]["error"]["code"] == "worker_crashed", by["b"]
    assert "SIGSEGV" in by["b"]["error"]["message"] and by["b"]["error"]["stage"] == "bake"
    assert by["c"]["status"] == "succeeded" and by["c"]["faces_out"] <= 110
    assert by["a_bad"]["status"] == "failed" and by["a_bad"]["error"]["code"] == "bad_option"
    assert "line 5" in by["a_bad"]["error"]["message"]


def test_bad_command_lines_exit_2(tmp_path):
    (tmp_path / "m.csv").write_text("source,colour\na.glb,red\n")
    for args in ([tmp_path / "nothing", "-o", tmp_path / "o"],
                 [tmp_path / "m.csv", "-o", tmp_path / "o"],
                 [tmp_path, "-o", tmp_path / "o", "--faces", "2"],
                 [tmp_path, "-o", tmp_path / "o", "--jobs", "0"],
                 [tmp_path, "-o", tmp_path / "o", "--ray-address", "127.0.0.1:1"]):
        r = kiln_batch(*args, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("kiln: error:") and "Traceback" not in r.stderr, r.stderr


# --- Ray -------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    env = _env()
    try:
        r = subprocess.run([str(ray_bin), "start", "--head", "--num-cpus", "2", "--port", str(port), "--include-dashboard=false",
                            "--disable-usage-stats"], capture_output=True, text=True, env=env, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        m = re.search(r"Local node IP: (\S+)", r.stdout + r.stderr)
        yield {"address": f"127.0.0.1:{port}", "ip": m.group(1) if m else None}
    finally:
        subprocess.run([str(ray_bin), "stop"], capture_output=True, env=env, timeout=120)


def test_ray_cluster_same_results_and_names_the_node(folder, local_out, ray_cluster, tmp_path):
    out = tmp_path / "out"
    r = kiln_batch(folder, "-o", out, *FAST, "--executor", "ray", "--ray-address", ray_cluster["address"])
    assert r.returncode == 1, r.stderr
    s = check_first_run(out, "ray")
    assert s["ray_address"] == ray_cluster["address"] and s["workers"] == 2  # one actor per cluster CPU
    for name in ("red", "blue", "props/crate", "rock"):
        a = s["by"][name]
        assert re.fullmatch(r"[0-9a-f]{56}", a["node_id"]), a
        if ray_cluster["ip"]:
            assert ray_cluster["ip"] in a["node"], a
        assert a["worker"].startswith("ray actor")
        m_ray, faces_ray = texture_median(out / f"{name}.glb")
        m_local, faces_local = texture_median(local_out / f"{name}.glb")  # the local executor's GLB of the same asset
        assert faces_ray == faces_local == a["faces_out"], (name, faces_ray, faces_local)
        assert np.abs(m_ray - m_local).max() <= 2, (name, m_ray, m_local)
    # resumable on Ray too
    r = kiln_batch(folder, "-o", out, *FAST, "--executor", "ray", "--ray-address", ray_cluster["address"], "--jobs", "1")
    assert r.returncode == 1, r.stderr
    assert [a["status"] for a in summary(out)["assets"] if a["name"] != "broken"] == ["skipped"] * 4


def test_ray_segfaulting_asset_fails_alone_after_its_retries(ray_cluster, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _sphere(RED).export(src / "good.glb")
    _sphere(BLUE).export(src / "crashy.glb")
    out = tmp_path / "out"
    r = kiln_batch(src, "-o", out, *FAST, "--executor", "ray", "--ray-address", ray_cluster["address"], "--jobs", "1",
                   "--retries", "1", "--inject-fault", "crashy=segfault@bake")
    assert r.returncode == 1, r.stderr
    by = summary(out)["by"]
    assert by["good"]["status"] == "succeeded"
    crash = by["crashy"]
    assert crash["status"] == "failed" and crash["error"]["code"] == "worker_crashed", crash
    assert crash["attempts"] == 2 and "crashed" in crash["error"]["message"]


def test_serve_with_the_ray_executor(ray_cluster, tmp_path):
    import requests
    from test_service import Server, submit_ok, wait_job

    srv = Server(["--executor", "ray", "--ray-address", ray_cluster["address"], "--workers", "1", "--data-dir", str(tmp_path / "data")], tmp_path)
    try:
        assert srv.ready.get("executor") == "ray" and srv.ready["workers"] == 1
        with requests.Session() as http:
            glb = _sphere(GREEN).export(file_type="glb")
            jid = submit_ok(http, srv.url, glb, {"faces": 100, "texture_size": 64, "device": "cpu"}, filename="green.glb")
            job = wait_job(http, srv.url, jid, timeout=240)
            assert job["state"] == "succeeded", job
            res = http.get(srv.url + job["result_url"], timeout=30)
            assert res.status_code == 200 and res.content[:4] == b"glTF"
            (tmp_path / "r.glb").write_bytes(res.content)
            median, faces = texture_median(tmp_path / "r.glb")
            assert faces <= 110 and np.abs(median - srgb(GREEN)).max() < 25
            report = http.get(f"{srv.url}/v1/jobs/{jid}/report", timeout=30).json()
            assert report["source"] == "green.glb" and report["backend"] == "cpu"
            h = http.get(srv.url + "/v1/health", timeout=30).json()
            w = h["workers"][0]
            assert w["executor"] == "ray" and w["jobs_done"] == 1 and (ray_cluster["ip"] or "") in (w["node"] or "")
        maps = Path(f"/proc/{srv.pid}/maps").read_text() if Path(f"/proc/{srv.pid}/maps").exists() else ""
        for lib in ("libtorch", "torch/lib", "libcudart"):
            assert lib not in maps, f"the HTTP process mapped {lib}"
    finally:
        assert srv.stop() == 0, srv.log()
