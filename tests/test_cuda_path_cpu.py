"""The CUDA backend's whole bake (engine.bake.cuda) run in torch on the CPU, nvdiffrast replaced by a
stand-in (tests/fake_nvdiffrast.py): what it renders ahead while the pipeline simplifies and unwraps
(``CudaBackend.prepare``) must change no texel, whether it holds every view, some or none."""

import numpy as np
import pytest

from engine import backend as backend_mod
from engine.options import BakeOptions
from engine.pipeline import bake
from engine.samples import pebble

from tests import fake_nvdiffrast


@pytest.fixture
def cuda_on_cpu(monkeypatch):
    fake_nvdiffrast.install(monkeypatch)
    from engine.bake import cuda

    class CudaOnCpu(cuda.CudaBackend):
        device = "cpu"

    real = backend_mod.resolve
    monkeypatch.setattr(backend_mod, "resolve", lambda device: real("cpu") if device == "cpu" else CudaOnCpu("test: nvdiffrast stand-in"))
    return cuda


OPTS = BakeOptions(faces=600, texture_size=64, views=10, view_resolution=96, device="cuda")


def _maps(res):
    return {n: r.image for n, r in res.maps.items() if r.image is not None}


def test_views_rendered_ahead_change_nothing(cuda_on_cpu, monkeypatch):
    src = pebble(3)
    ahead = bake(src, None, OPTS)
    info = ahead.report["bake"]
    assert info["method"] == "cuda-nvdiffrast-texel-gather-exact"
    assert info["views_rendered_ahead"] == 10  # all of them: well under the budget
    assert info["view_fit_observations"] > 0
    assert set(_maps(ahead)) == {"base", "normal"}

    # a budget for 4 of the 10 views: those come from the head start, the gather renders the rest
    monkeypatch.setattr(cuda_on_cpu, "AHEAD_BUDGET", 4.5 * 96 * 96 * 20)
    part = bake(src, None, OPTS)
    assert part.report["bake"]["views_rendered_ahead"] == 4
    # no head start at all
    monkeypatch.setattr(cuda_on_cpu.CudaBackend, "prepare", lambda self, src, options: None)
    none = bake(src, None, OPTS)
    assert "views_rendered_ahead" not in none.report["bake"]
    for name, img in _maps(none).items():
        np.testing.assert_array_equal(_maps(ahead)[name], img, err_msg=name)
        np.testing.assert_array_equal(_maps(part)[name], img, err_msg=name)
    assert none.report["bake"]["view_fit_observations"] == info["view_fit_observations"]


def test_a_failed_head_start_only_costs_time(cuda_on_cpu, monkeypatch):
    src = pebble(3)
    want = _maps(bake(src, None, OPTS))

    def fail(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(cuda_on_cpu.PreparedViews, "__init__", fail)
    res = bake(src, None, OPTS)
    assert "views_rendered_ahead" not in res.report["bake"]
    for name, img in _maps(res).items():
        np.testing.assert_array_equal(want[name], img, err_msg=name)


def test_views_of_other_cameras_are_not_used(cuda_on_cpu):
    from engine.bake.cuda import PreparedViews, bake_cameras

    src = pebble(2)
    be = backend_mod.resolve("cuda")
    be.prepare(src, OPTS)
    other = BakeOptions(views=12, view_resolution=96)
    assert PreparedViews.take_from(src, bake_cameras(src, other), "cpu") is None
    assert "_views_ahead" not in src.__dict__  # taken (and dropped): nothing stays on the device


def test_cuda_path_on_cpu_matches_the_cpu_backend(cuda_on_cpu):
    """The two backends find hits differently (views and the rasteriser's triangle ids vs rays along the
    normal) but bake the same surface: held-out PSNR within 1 dB, base colours within a few 8-bit steps."""
    import dataclasses

    src = pebble(4)
    opts = BakeOptions(faces=1000, texture_size=128, views=24, view_resolution=128, device="cuda", evaluate=True)
    via_cuda = bake(src, None, opts)
    via_cpu = bake(src, None, dataclasses.replace(opts, device="cpu"))
    assert (via_cuda.report["backend"], via_cpu.report["backend"]) == ("cuda", "cpu")
    assert via_cuda.report["psnr"] > via_cpu.report["psnr"] - 1.0
    assert via_cuda.report["psnr"] > 28.0
    a, b = via_cuda.maps["base"].image.astype(float), via_cpu.maps["base"].image.astype(float)
    both = via_cuda.coverage & via_cpu.coverage
    assert both.mean() > 0.4
    assert np.abs(a - b)[both].mean() < 4.0


def _gather_setup(src, faces: int, size: int, views: int, view_res: int):
    """A simplified, unwrapped target's texel points and normals (torch), the source's cameras and GpuMesh."""
    import torch

    from engine.bake.texel import rasterize_uv, vertex_normals
    from engine.mesh.simplify import simplify
    from engine.render.cameras import bounding_sphere, sphere_cameras
    from engine.render.nvdr import GpuMesh
    from engine.uv.unwrap import unwrap

    lv, lf = simplify(src.vertices, src.faces, faces)
    v, f, uv, _ = unwrap(lv, lf, size, 2)
    tri, bary = rasterize_uv(uv, f, size)
    m = tri >= 0
    P = np.einsum("kj,kjc->kc", bary[m], v[f[tri[m]]])
    N = np.einsum("kj,kjc->kc", bary[m], vertex_normals(v, f)[f[tri[m]]])
    N /= np.linalg.norm(N, axis=1, keepdims=True)
    c, r = bounding_sphere(src.vertices)
    cams = sphere_cameras(c, r, views, view_res)
    return torch.as_tensor(P, dtype=torch.float32), torch.as_tensor(N, dtype=torch.float32), cams, GpuMesh(src, "cpu")


def test_texel_gather_on_every_other_view_misses_no_texel(cuda_on_cpu, meshes_dir):
    """stride 2: every texel from every 2nd view, the texels those miss from the others -- the same texels
    are hit as with every view (the Duck's undersides and bill are seen from few directions), and where a
    texel is seen both ways its colour stays close (a blend of fewer views)."""
    import torch

    from engine.bake.cuda import gather_exact
    from engine.io.load import load_source
    from engine.mesh.validate import validate_source

    src, _ = validate_source(load_source(meshes_dir / "Duck.glb"))
    P, N, cams, gm = _gather_setup(src, 800, 96, 10, 128)
    tol = 0.02 * float(np.linalg.norm(np.ptp(src.vertices, 0)))
    a1, w1 = gather_exact(gm, cams, P, N, tol, "cpu", chunk=3)
    stats = {}
    a2, w2 = gather_exact(gm, cams, P, N, tol, "cpu", chunk=3, stride=2, stats=stats)
    assert stats["texels_from_other_views"] > 0  # some texels only the odd views see ...
    assert torch.equal(w1 > 0, w2 > 0)  # ... and they are hit all the same
    hit = w1 > 0
    c1, c2 = a1[hit] / w1[hit][:, None], a2[hit] / w2[hit][:, None]
    assert float((c1 - c2).abs().mean()) < 0.02


def test_texel_gather_view_count(cuda_on_cpu):
    """100 bake views: the texel gather takes every 2nd (50); 60 views: all of them (30 would be too few);
    the view fit sees every view either way."""
    src = pebble(2)
    for views, texel_views in ((100, 50), (60, 60)):
        info = bake(src, None, BakeOptions(faces=200, texture_size=64, views=views, view_resolution=64, device="cuda")).report["bake"]
        assert (info["views"], info["texel_views"]) == (views, texel_views)
        assert info["texels_missed"] == 0


def test_chunk_budget_follows_free_gpu_memory(monkeypatch):
    """Views a chunk: an eighth of the free GPU memory, between MEM_BUDGET and CHUNK_BUDGET_MAX (a small
    card keeps small chunks; the CPU, MEM_BUDGET)."""
    import torch

    from engine.bake import cuda

    assert cuda.chunk_budget("cpu") == cuda.MEM_BUDGET
    for free, want in ((4e9, cuda.MEM_BUDGET), (24e9, 3e9), (140e9, cuda.CHUNK_BUDGET_MAX)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (int(free), int(2 * free)))
        assert cuda.chunk_budget("cuda") == pytest.approx(want)
    # 1024^2 views, 2.3M texels (a 1024^2 texture supersampled): 3 views a chunk at the least budget, 14 at the most
    assert cuda.chunk_size(2_300_000, 1024, 0, cuda.MEM_BUDGET) == 3
    assert cuda.chunk_size(2_300_000, 1024, 0, cuda.CHUNK_BUDGET_MAX) == 14


def test_other_views_go_in_chunks_sized_for_their_texels(cuda_on_cpu):
    """The views after the texel gather's every-2nd only see the texels those missed (few): with a budget,
    their chunks are sized for those texels -- larger -- and the texture is the one fixed chunks give."""
    import torch

    from engine.bake.cuda import chunk_size, gather_exact

    P, N, cams, gm = _gather_setup(pebble(3), 300, 64, 16, 64)
    budget = 2.2 * (64 * 64 * 48 + len(P) * 160)  # two views of every texel a chunk (chunk_size's estimate)
    assert chunk_size(len(P), 64, 0, budget) == 2
    fixed, sized = {}, {}
    a1, w1 = gather_exact(gm, cams, P, N, 0.05, "cpu", chunk=2, stride=2, stats=fixed)
    a2, w2 = gather_exact(gm, cams, P, N, 0.05, "cpu", chunk=2, stride=2, stats=sized, budget=budget)
    assert "view_chunk_other_views" not in fixed
    assert sized["texels_from_other_views"] < len(P) / 4
    assert sized["view_chunk_other_views"] > 2
    assert torch.equal(w1 > 0, w2 > 0)
    torch.testing.assert_close(a1, a2, rtol=1e-5, atol=1e-5)
