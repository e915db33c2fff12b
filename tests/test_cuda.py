"""CUDA backend (nvdiffrast 0.4, RasterizeCudaContext). Skipped without a GPU; run on the device before resolving."""

import numpy as np
import pytest

from engine.io.load import load_source
from engine.options import BakeOptions
from engine.pipeline import bake

pytestmark = pytest.mark.cuda


def _tex_psnr(a, b, m):
    d = (a[m].astype(np.float64) - b[m].astype(np.float64)) / 255.0
    return 10 * np.log10(1.0 / max(np.mean(d * d), 1e-12))


@pytest.mark.parametrize("name,faces", [("Duck.glb", 1500), ("BoxTextured.glb", 12), ("monkey.glb", 600), ("bunny.ply", 3000)])
def test_cuda_bake_shared_assets(meshes_dir, tmp_path, name, faces):
    from tests.test_bake import check_result, surface_colour_error

    src = load_source(meshes_dir / name)
    out = tmp_path / "o.glb"
    r = bake(meshes_dir / name, out, BakeOptions(faces=faces, texture_size=256, device="cuda", evaluate=True))
    assert r.report["backend"] == "cuda"
    check_result(src, out, faces, 256)
    err, _ = surface_colour_error(src, out)
    assert np.median(err) < 0.05 and np.mean(err < 0.15) > 0.85
    assert r.report["psnr"] > 30


def test_cpu_cuda_agreement(meshes_dir):
    """One contract: on the same target atlas both backends give textures within the documented tolerance."""
    from engine.backend import resolve
    from engine.bake import bake_texture
    from engine.mesh.simplify import simplify
    from engine.mesh.validate import validate_source
    from engine.progress import Progress
    from engine.uv.unwrap import unwrap

    src, _ = validate_source(load_source(meshes_dir / "Duck.glb"))
    lv, lf = simplify(src.vertices, src.faces, 2000)
    v, f, uv, _ = unwrap(lv, lf, 512, 4)
    opts = BakeOptions(texture_size=512)
    out = {}
    for dev in ("cpu", "cuda"):
        tex, cov, _ = bake_texture(src, v, f, uv, opts, resolve(dev), Progress({"bake": 1}))
        out[dev] = ((tex * 255).round(), cov)
    both = out["cpu"][1] & out["cuda"][1]
    assert both.sum() > 0.95 * out["cpu"][1].sum()
    # documented tolerance: >= 25 dB between the backends' textures over texels both saw
    assert _tex_psnr(out["cpu"][0], out["cuda"][0], both) >= 25.0


def test_float64_inputs_never_reach_nvdiffrast():
    """The API casts: float64/int64 arrays in, a clean bake out (nvdiffrast itself raises on float64)."""
    from engine.mesh.source import Material, SourceMesh
    from tests.gltf_builder import uv_sphere

    v, f = uv_sphere(24, 48)
    src = SourceMesh(v.astype(np.float64), f.astype(np.int64), vertex_color=np.full((len(v), 3), 0.5, np.float64),
                     materials=[Material()])
    r = bake(src, None, BakeOptions(faces=400, texture_size=128, device="cuda", views=20, view_resolution=256))
    assert r.report["coverage"] > 0.3


def test_view_chunking_does_not_change_the_result(meshes_dir):
    import torch

    from engine.bake import cuda as cb
    from engine.mesh.simplify import simplify
    from engine.mesh.validate import validate_source
    from engine.render.cameras import sphere_cameras, bounding_sphere
    from engine.uv.unwrap import unwrap

    src, _ = validate_source(load_source(meshes_dir / "Duck.glb"))
    lv, lf = simplify(src.vertices, src.faces, 1000)
    v, f, uv, _ = unwrap(lv, lf, 256, 4)
    mask, P, N = cb.texel_geometry(v, f, uv, 256, "cuda")
    c, r = bounding_sphere(src.vertices)
    cams = sphere_cameras(c, r, 12, 256)
    rend = cb.mesh_view_renderer(src, "cuda")
    a = cb.gather(rend, cams, P, N, 0.05, "cuda", chunk=12)
    b = cb.gather(rend, cams, P, N, 0.05, "cuda", chunk=5)
    assert torch.allclose(a[0], b[0], atol=1e-3) and torch.allclose(a[1], b[1], atol=1e-4)


def test_pebble_cuda_quality_and_memory(monkeypatch):
    """A 1024^2 bake fits a 4 GB card. The gather's chunks and the views rendered ahead take a share of the
    free GPU memory (engine.bake.cuda.chunk_budget, ahead_budget), so on this card they are sized as on a
    4 GB one (the free memory reported as 3.5 GiB, less where the card has less) -- and on this card
    itself the peak stays within those shares of what is free."""
    import torch

    from engine.bake import cuda as cb
    from engine.samples import pebble

    real = torch.cuda.mem_get_info
    opts = BakeOptions(faces=8000, texture_size=1024, device="cuda", evaluate=True)
    torch.cuda.reset_peak_memory_stats()
    r = bake(pebble(6), None, opts)
    assert r.report["psnr"] >= 35.0, r.report["psnr"]
    assert torch.cuda.max_memory_allocated() < 4 * 2**30 + cb.chunk_budget("cuda") + cb.ahead_budget("cuda")

    def small_card(device=None):
        free, total = real(device)
        return min(free, int(3.5 * 2**30)), min(total, 4 * 2**30)

    monkeypatch.setattr(torch.cuda, "mem_get_info", small_card)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    r = bake(pebble(6), None, opts)
    assert r.report["bake"]["view_chunk_budget_gib"] == round(cb.MEM_BUDGET / 2**30, 2)
    assert r.report["psnr"] >= 35.0, r.report["psnr"]
    assert torch.cuda.max_memory_allocated() < 4 * 2**30


def test_splat_source_bake_known_colours(tmp_path):
    """Gaussians on a sphere (red top, blue bottom) baked onto a sphere mesh through gsplat views."""
    pytest.importorskip("gsplat")
    from engine.mesh.source import Material, SourceMesh, shade
    from engine.pipeline.splat import SplatBakeSource
    from engine.splat.types import Splats
    from tests.gltf_builder import uv_sphere

    rng = np.random.default_rng(0)
    n = 40000
    p = rng.normal(size=(n, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    red, blue = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.2, 0.9])
    col = np.where(p[:, 1:2] > 0, red, blue)
    C0 = 0.28209479177387814
    sh = ((col - 0.5) / C0)[:, None, :].astype(np.float32)
    splats = Splats(p.astype(np.float32), np.full((n, 3), 0.02, np.float32), np.tile([[1, 0, 0, 0]], (n, 1)).astype(np.float32),
                    np.full(n, 0.95, np.float32), sh)
    v, f = uv_sphere(48, 96)
    mesh = SourceMesh(v, f, materials=[Material()])
    r = bake(SplatBakeSource(splats, mesh, "test_splat"), tmp_path / "s.glb",
             BakeOptions(faces=2000, texture_size=512, device="cuda", views=40, view_resolution=512, evaluate=True))
    res = load_source(tmp_path / "s.glb")
    fi = rng.integers(0, len(res.faces), 400)
    b = np.full((400, 3), 1 / 3, np.float32)
    pts = np.einsum("kj,kjc->kc", b, res.vertices[res.faces[fi]])
    got = shade(res, fi, b)
    far = np.abs(pts[:, 1]) > 0.3
    want = np.where(pts[far, 1:2] > 0, red, blue)
    assert np.median(np.abs(got[far] - want)) < 0.06
    assert r.report["psnr"] > 20


def test_texel_blocks_give_the_same_texture(meshes_dir, monkeypatch):
    """Large textures are gathered in texel blocks (bounded memory): the result must not depend on it."""
    from engine.bake import cuda as cb

    opts = BakeOptions(faces=1000, texture_size=256, device="cuda", views=16, view_resolution=256)
    a = bake(meshes_dir / "Duck.glb", None, opts)
    monkeypatch.setattr(cb, "MEM_BUDGET", 20_000 * 640)  # ~20K texels a block
    b = bake(meshes_dir / "Duck.glb", None, opts)
    assert b.report["bake"]["texel_blocks"] > 1 and a.report["bake"]["texel_blocks"] == 1
    assert np.abs(a.texture.astype(int) - b.texture.astype(int)).max() <= 1


def test_cuda_material_channels_agree_with_cpu(tmp_path):
    """The whole material through both backends onto one target (same UVs): every channel agrees."""
    from tests import pbr_sources

    src = pbr_sources.make("pbr_body", tmp_path / "body.glb")  # no intersecting parts: both backends see one surface
    v, f, uv, n = pbr_sources.sphere_uv(24, 48)
    low = pbr_sources.write_glb(tmp_path / "low.glb", [{"v": v * 1.01, "f": f, "n": n, "uv": uv}], [pbr_sources.plain()])
    out = {}
    for dev in ("cpu", "cuda"):
        r = bake(src, tmp_path / f"{dev}.glb", BakeOptions(texture_size=256, device=dev, maps="all"), target=low)
        assert r.report["backend"] == dev
        out[dev] = r
    a, b = out["cpu"], out["cuda"]
    assert a.report["maps"] == b.report["maps"] == {"base": "texture", "normal": "texture", "orm": "texture", "emissive": "texture"}
    m = a.coverage & b.coverage
    assert m.sum() > 0.9 * a.coverage.sum()
    for ch in ("base", "orm", "emissive"):
        assert _tex_psnr(a.maps[ch].image[..., :3], b.maps[ch].image[..., :3], m) >= 25.0, ch
    na = a.maps["normal"].image[m].astype(np.float64) / 127.5 - 1
    nb = b.maps["normal"].image[m].astype(np.float64) / 127.5 - 1
    cos = (na * nb).sum(1) / np.linalg.norm(na, axis=1) / np.linalg.norm(nb, axis=1)
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).mean() < 5.0


def test_cuda_full_material_shared_assets_and_texel_frame(meshes_dir):
    """nvdiffrast's (u, v) weigh corners 0 and 1: texel positions interpolated from them land on the target."""
    from engine.bake.cuda import texels_cuda
    from engine.bake.texel import texels_cpu
    from engine.mesh.simplify import simplify
    from engine.mesh.validate import validate_source
    from engine.uv.unwrap import unwrap

    src, _ = validate_source(load_source(meshes_dir / "Duck.glb"))
    lv, lf = simplify(src.vertices, src.faces, 800)
    v, f, uv, _ = unwrap(lv, lf, 256, 4)
    a, b = texels_cpu(uv, f, 256), texels_cuda(uv, f, 256, "cuda")
    both = a.mask & b.mask.cpu()
    pa = a.scatter(a.interp(v), (0, 0, 0))[both]
    pb = b.scatter(b.interp(v), (0, 0, 0)).cpu()[both]
    assert float((pa - pb).norm(dim=1).median()) < 1e-3 * float(np.linalg.norm(np.ptp(v, 0)))


def test_view_fit_lowers_the_heldout_error_on_both_conventions():
    """The view fit (engine.bake.viewfit) uses the bake views' observations and improves held-out PSNR over the
    texel-space fit alone, for vertex colours interpolated in linear (glTF) and in sRGB; each convention's
    bake is closer to its own reference than to the other one."""
    from engine.samples import pebble

    src = pebble(5)
    psnr = {}
    for conv in ("linear", "srgb"):
        for vf in (False, True):
            r = bake(src, None, BakeOptions(faces=3000, texture_size=512, device="cuda", evaluate=True, eval_views=8,
                                            eval_resolution=512, view_fit=vf, vertex_color_interpolation=conv))
            assert (r.report["bake"].get("view_fit_observations", 0) > 100_000) == vf
            psnr[conv, vf] = r.report["psnr"]
    for conv in ("linear", "srgb"):
        assert psnr[conv, True] > psnr[conv, False] + 0.05, psnr
