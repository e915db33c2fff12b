"""End-to-end CPU bakes: shared assets and procedural sources with known colours."""

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.errors import CancelledError
from engine.io.load import load_source
from engine.mesh.source import SourceMesh, shade, srgb_to_linear
from engine.options import BakeOptions
from engine.pipeline import bake
from tests.gltf_builder import make_glb, uv_sphere


def surface_colour_error(src: SourceMesh, out_glb, n=400, seed=0):
    """Colours of the result at random surface points vs the source colour at the nearest source point."""
    import trimesh

    res = load_source(out_glb)
    rng = np.random.default_rng(seed)
    fi = rng.integers(0, len(res.faces), n)
    b = rng.dirichlet([2, 2, 2], n).astype(np.float32)
    pts = np.einsum("kj,kjc->kc", b, res.vertices[res.faces[fi]])
    got = shade(res, fi, b)
    tm = trimesh.Trimesh(src.vertices, src.faces, process=False)
    cp, _, tri = trimesh.proximity.closest_point(tm, pts)
    bary = trimesh.triangles.points_to_barycentric(tm.triangles[tri], cp).astype(np.float32)
    want = shade(src, tri, np.clip(bary, 0, 1) / np.clip(bary, 0, 1).sum(1, keepdims=True))
    return np.abs(got - want).max(1), res


def check_result(src, out, faces_target, tex_size):
    res = load_source(out)
    assert len(res.faces) <= faces_target * 1.05
    assert res.uv is not None and res.uv.min() >= 0.0 and res.uv.max() <= 1.0
    assert res.materials[0].texture.shape[:2] == (tex_size, tex_size)
    ext = np.ptp(src.vertices, 0).max()
    np.testing.assert_allclose(res.bounds(), src.bounds(), atol=0.02 * ext)
    return res


@pytest.mark.parametrize("name,faces", [("Duck.glb", 1500), ("BoxTextured.glb", 12), ("monkey.glb", 600), ("bunny.ply", 3000)])
def test_bake_shared_assets_cpu(meshes_dir, tmp_path, name, faces):
    src = load_source(meshes_dir / name)
    out = tmp_path / "out.glb"
    r = bake(meshes_dir / name, out, BakeOptions(faces=faces, texture_size=256, device="cpu"))
    assert r.report["backend"] == "cpu"
    check_result(src, out, faces, 256)
    err, _ = surface_colour_error(src, out)
    # away from colour edges the baked colour is the source colour; edges and simplification differences allow outliers
    assert np.median(err) < 0.05, np.median(err)
    assert np.mean(err < 0.15) > 0.85, np.mean(err < 0.15)


def test_known_colours_vertex_coloured_sphere(tmp_path):
    v, f = uv_sphere(48, 96)
    red, blue = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.2, 0.9])  # sRGB
    srgb = np.where(v[:, 1:2] > 0, red, blue)
    p = tmp_path / "s.glb"
    p.write_bytes(make_glb(v, f, colors=srgb_to_linear(srgb.astype(np.float32))))
    out = tmp_path / "o.glb"
    bake(p, out, BakeOptions(faces=800, texture_size=256, device="cpu"))
    res = load_source(out)
    rng = np.random.default_rng(1)
    fi = rng.integers(0, len(res.faces), 500)
    b = np.full((500, 3), 1 / 3, np.float32)
    pts = np.einsum("kj,kjc->kc", b, res.vertices[res.faces[fi]])
    col = shade(res, fi, b)
    far = np.abs(pts[:, 1]) > 0.25  # away from the equator where the colours meet
    want = np.where(pts[far, 1:2] > 0, red, blue)
    assert np.abs(col[far] - want).max() < 4 / 255


def test_known_colours_textured_quad_checker(tmp_path):
    # a quad with a 4x4 checker texture: result colours at cell centres must match exactly
    tex = np.zeros((64, 64, 3), np.uint8)
    for i in range(4):
        for j in range(4):
            tex[i * 16 : (i + 1) * 16, j * 16 : (j + 1) * 16] = [200, 40, 40] if (i + j) % 2 else [30, 160, 60]
    n = 20
    xs, ys = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], 1).astype(np.float32)
    uv = np.stack([xs.ravel(), 1 - ys.ravel()], 1).astype(np.float32)
    f = []
    for i in range(n - 1):
        for j in range(n - 1):
            a = i * n + j
            f += [[a, a + 1, a + n + 1], [a, a + n + 1, a + n]]
    p = tmp_path / "q.glb"
    p.write_bytes(make_glb(v, np.array(f), uv=uv, texture=tex))
    src = load_source(p)
    out = tmp_path / "o.glb"
    bake(p, out, BakeOptions(faces=200, texture_size=256, device="cpu"))
    err, _ = surface_colour_error(src, out, n=600)
    assert np.median(err) < 2 / 255
    assert np.mean(err < 0.05) > 0.9


def test_progress_cancel_and_report(tmp_path):
    v, f = uv_sphere(24, 48)
    p = tmp_path / "s.glb"
    p.write_bytes(make_glb(v, f, colors=np.full((len(v), 3), 0.5, np.float32)))
    seen = []
    r = bake(p, tmp_path / "o.glb", BakeOptions(faces=300, texture_size=128, device="cpu", evaluate=True, eval_views=2, eval_resolution=64),
             progress=lambda s, fr, m: seen.append((s, fr)))
    fracs = [fr for _, fr in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    stages = [s for s, _ in seen]
    for s in ("load", "validate", "simplify", "unwrap", "bake", "dilate", "export", "evaluate", "done"):
        assert s in stages
    rep = r.report
    for k in ("timings", "faces_in", "faces_out", "backend", "texture_size", "psnr"):
        assert k in rep
    json.dumps(rep)
    assert rep["psnr"] > 35  # a uniform colour survives the bake
    # cancel at the bake stage: nothing written
    with pytest.raises(CancelledError):
        bake(p, tmp_path / "c.glb", BakeOptions(faces=300, texture_size=128, device="cpu"),
             progress=lambda s, fr, m: seen.append(s), cancel=lambda: "bake" in seen)
    assert not (tmp_path / "c.glb").exists()


def test_dilation_leaves_no_black_and_grows_charts():
    from engine.bake.dilate import fill_and_dilate

    tex = np.zeros((64, 64, 3), np.float32)
    cov = np.zeros((64, 64), bool)
    tex[20:30, 20:30] = [0.2, 0.6, 0.9]
    cov[20:30, 20:30] = True
    out = fill_and_dilate(tex, cov, padding=4)
    assert (out.reshape(-1, 3).sum(1) > 0).all()
    ring = out[16:34, 16:34].reshape(-1, 3).astype(int)
    assert np.abs(ring - [51, 153, 230]).max() <= 1  # padding ring is the chart's own colour


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_cpu_fill_matches_the_torch_fill(channels):
    """The CPU fill (ring-by-ring gathers) gives the torch fill's texels (float32 sums in another order)."""
    import torch

    from engine.bake.dilate import _fill_cpu, _fill_torch

    rng = np.random.default_rng(channels)
    for pad in (0, 1, 4, 9):
        tex = rng.random((97, 131, channels)).astype(np.float32)
        cov = rng.random((97, 131)) > 0.995
        cov[10:30, 40:90] = True
        cov[60:64, 3:9] = True
        a = _fill_torch(torch.as_tensor(tex), torch.as_tensor(cov), max(pad, 1) * 2)
        b = _fill_cpu(tex, cov, max(pad, 1) * 2)
        assert a.shape == b.shape == (97, 131, channels) and b.dtype == np.uint8
        diff = np.abs(a.astype(int) - b)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    empty = np.zeros((8, 8), bool)
    assert (_fill_cpu(np.zeros((8, 8, 3), np.float32), empty, 8) == 128).all()
    assert (_fill_torch(torch.zeros(8, 8, 3), torch.as_tensor(empty), 8) == 128).all()


def test_cli_bake_json_and_evaluate(meshes_dir, tmp_path, kiln_env):
    out = tmp_path / "duck.glb"
    p = subprocess.run([sys.executable, "-m", "engine", "bake", str(meshes_dir / "Duck.glb"), "-o", str(out), "--faces", "1000",
                        "--texture-size", "256", "--device", "cpu", "--evaluate", "--json"], capture_output=True, text=True, env=kiln_env, timeout=300)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["faces_out"] <= 1050 and rep["backend"] == "cpu" and rep["texture_size"] == 256
    assert set(rep["timings"]) >= {"load", "validate", "simplify", "unwrap", "bake", "dilate", "export", "evaluate"}
    assert rep["psnr"] > 30, rep["psnr"]
    assert "%" in p.stderr  # progress went to stderr
    assert out.stat().st_size > 1000


def test_closed_mesh_with_inverted_winding_is_oriented_outward(tmp_path):
    v, f = uv_sphere(16, 32)
    p = tmp_path / "inv.glb"
    p.write_bytes(make_glb(v, f[:, [0, 2, 1]], colors=np.full((len(v), 3), 0.3, np.float32)))
    r = bake(p, tmp_path / "o.glb", BakeOptions(faces=200, texture_size=128, device="cpu"))
    res = load_source(tmp_path / "o.glb")
    t = res.vertices[res.faces].astype(np.float64)
    vol = np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6
    assert vol > 0 and r.report["winding_flipped"]


def test_cuda_requested_without_gpu_is_a_clear_error(meshes_dir, tmp_path, kiln_env):
    from engine.backend import cuda_status

    if cuda_status()[0]:
        pytest.skip("this machine has a usable GPU")
    p = subprocess.run([sys.executable, "-m", "engine", "bake", str(meshes_dir / "BoxTextured.glb"), "-o", str(tmp_path / "o.glb"),
                        "--device", "cuda", "-q"], capture_output=True, text=True, env=kiln_env, timeout=300)
    assert p.returncode == 3, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA backend unavailable" in lines[0] and "kiln doctor" in lines[0]
    assert not (tmp_path / "o.glb").exists()


def test_auto_device_falls_back_to_cpu(tmp_path):
    from engine.backend import cuda_status

    v, f = uv_sphere(12, 24)
    p = tmp_path / "s.glb"
    p.write_bytes(make_glb(v, f, colors=np.full((len(v), 3), 0.5, np.float32)))
    r = bake(p, tmp_path / "o.glb", BakeOptions(faces=100, texture_size=64, device="auto"))
    assert r.report["backend"] == ("cuda" if cuda_status()[0] else "cpu")
    assert r.report["backend_reason"].startswith("auto")


def test_supersample_1_point_sampling_still_works(tmp_path):
    v, f = uv_sphere(12, 24)
    p = tmp_path / "s.glb"
    p.write_bytes(make_glb(v, f, colors=np.full((len(v), 3), 0.214, np.float32)))
    r = bake(p, tmp_path / "o.glb", BakeOptions(faces=100, texture_size=64, device="cpu", supersample=1))
    assert r.report["bake"]["supersample"] == 1
    assert np.abs(r.texture.astype(int) - 128).max() <= 2
