"""The service's optional `target` part: the artist's low-poly to bake onto (issue 10).

The target travels as bytes in the multipart upload (never a path), is sniffed and
size-limited like the source, stored in the job folder and handed to the worker,
which calls ``engine.pipeline.bake(..., target=path)``. While the pipeline has no
``target`` parameter the job fails with a clear error instead of silently baking
a new low-poly.
"""

from __future__ import annotations

import inspect
import io
import json

import numpy as np
import pytest
import requests

from test_service import FAST, Server, assert_error, icosphere_glb, submit, wait_job


def _target_glb() -> bytes:
    """A low-poly with its own UVs (a planar projection): what an artist would send."""
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=1, radius=1.02)
    uv = (m.vertices[:, :2] * 0.45 + 0.5).astype(np.float32)
    m.visual = trimesh.visual.TextureVisuals(uv=uv)
    return m.export(file_type="glb")


def _post(s, url, source: bytes, target, options: dict, target_name="low.glb"):
    files = {"file": ("high.glb", source, "application/octet-stream"), "options": (None, json.dumps(options))}
    if target is not None:
        files["target"] = (target_name, target, "application/octet-stream")
    return s.post(url + "/v1/jobs", files=files, timeout=60)


def _pipeline_has_target() -> bool:
    from engine.pipeline import bake

    return "target" in inspect.signature(bake).parameters


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kiln_serve_target")
    srv = Server(["--workers", "1", "--max-upload-mb", "2", "--data-dir", str(tmp / "data")], tmp)
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


def test_health_lists_features_and_option_names(server, session):
    h = session.get(server.url + "/v1/health", timeout=30).json()
    assert "faces" in h["bake_options"] and "texture_size" in h["bake_options"]
    assert isinstance(h["features"], list)
    deadline = __import__("time").monotonic() + 60  # features come from the worker's hello
    while not h.get("backends") and __import__("time").monotonic() < deadline:
        h = session.get(server.url + "/v1/health", timeout=30).json()
    assert ("bake_target" in h["features"]) == _pipeline_has_target()


def test_target_is_refused_outside_a_bake(server, session, images_dir):
    photo = (images_dir / "human_object" / "image.png").read_bytes()
    files = {"file": ("photo.png", photo, "image/png"), "options": (None, json.dumps({"kind": "reconstruct", **FAST})),
             "target": ("low.glb", _target_glb(), "application/octet-stream")}
    r = session.post(server.url + "/v1/jobs", files=files, timeout=60)
    err = assert_error(r, 422, "unknown_field")
    assert "target" in err["message"] and "bake" in err["message"]


def test_target_is_sniffed_like_the_source(server, session):
    r = _post(session, server.url, icosphere_glb(), b"this is not a mesh at all", FAST, target_name="low.glb")
    err = assert_error(r, code=None)
    assert err["message"].startswith("target: "), err
    r = _post(session, server.url, icosphere_glb(), b"", FAST)
    err = assert_error(r)
    assert err["message"].startswith("target: ") and "empty" in err["message"], err


def test_target_counts_against_the_upload_limit(server, session):
    big = b"glTF" + b"\0" * (3 * 1024 * 1024)
    r = _post(session, server.url, icosphere_glb(), big, FAST)
    assert_error(r, 413, "too_large")


def test_bake_onto_a_target(server, session):
    import trimesh

    target = _target_glb()
    r = _post(session, server.url, icosphere_glb(subdivisions=3), target, FAST)
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    job = wait_job(session, server.url, jid, timeout=180)
    if not _pipeline_has_target():
        assert job["state"] == "failed", job
        assert job["error"]["code"] == "target_unsupported" and "target" in job["error"]["message"] and job["error"]["hint"], job
        pytest.skip("engine.pipeline.bake has no `target` parameter yet: the job fails with a clear error (checked)")
    assert job["state"] == "succeeded", job
    out = session.get(f"{server.url}/v1/jobs/{jid}/result", timeout=60).content
    got = trimesh.load(io.BytesIO(out), file_type="glb", force="mesh", process=False)
    want = trimesh.load(io.BytesIO(target), file_type="glb", force="mesh", process=False)
    # the same triangles, corner by corner: positions and UVs (a glTF writer may split vertices
    # where normals break, so the vertex list itself can be longer)
    assert got.faces.shape == want.faces.shape
    assert np.allclose(got.vertices[got.faces], want.vertices[want.faces], atol=1e-6)
    assert np.allclose(got.visual.uv[got.faces], want.visual.uv[want.faces], atol=1e-6)
    rep = session.get(f"{server.url}/v1/jobs/{jid}/report", timeout=30).json()
    assert rep.get("triangles_out", len(want.faces)) == len(want.faces)
