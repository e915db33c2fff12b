"""gsplat rendering of synthetic splats whose images are known (CUDA + gsplat only).

Run on the GPU machine:  python -m pytest tests/test_splat_render_cuda.py -q
Scene: large, nearly opaque, isotropic Gaussians of known SH-DC colour seen
head-on by an OpenCV pinhole camera 6 units away. A Gaussian at world x
projects to u = cx + f x / 6; its centre pixel must show C0 * f_dc + 0.5 with
alpha ~1 and depth 6; empty corners show alpha 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.splat import SH_C0, Splats

pytestmark = pytest.mark.cuda

W, H, F = 256, 192, 300.0
CX, CY = W / 2, H / 2
DIST = 6.0
COLORS = np.array([[0.8, 0.2, 0.1], [0.1, 0.7, 0.3], [0.2, 0.3, 0.9]], np.float32)


@pytest.fixture(autouse=True)
def _need_gsplat():
    pytest.importorskip("gsplat")
    from engine.splat.render import splat_backend_status

    ok, why = splat_backend_status()
    if not ok:
        pytest.skip(why)


def splats(xs, zs, colors, scale=0.25, opacity=0.9997) -> Splats:
    n = len(xs)
    means = np.stack([np.asarray(xs, np.float32), np.zeros(n, np.float32), np.asarray(zs, np.float32)], 1)
    dc = (np.asarray(colors, np.float32) - 0.5) / SH_C0
    return Splats(
        means=means,
        scales=np.full((n, 3), scale, np.float32),
        quats=np.tile(np.array([[1, 0, 0, 0]], np.float32), (n, 1)),
        opacities=np.full(n, opacity, np.float32),
        sh=dc[:, None, :],
    )


def camera(flip: bool = False):
    """World -> camera: the camera sits at z = -DIST looking along +z (or, flipped, at +DIST looking along -z)."""
    vm = np.eye(4, dtype=np.float32)
    if flip:
        vm[:3, :3] = np.diag([-1.0, 1.0, -1.0])
    vm[2, 3] = DIST
    K = np.array([[F, 0, CX], [0, F, CY], [0, 0, 1]], np.float32)
    return vm, K


def centre(img, u, v):
    """Mean of the 2x2 pixels around the continuous image point (u, v) (pixel centres at +0.5)."""
    u0, v0 = int(round(u)) - 1, int(round(v)) - 1
    return img[v0 : v0 + 2, u0 : u0 + 2].reshape(-1, *img.shape[2:]).mean(0)


def test_known_colours_alpha_depth():
    from engine.splat.render import render_splat_views

    vm, K = camera()
    col, alpha, depth = render_splat_views(splats([-1.0, 0.0, 1.0], [0, 0, 0], COLORS), vm[None], K[None], W, H)
    assert col.is_cuda and col.shape == (1, H, W, 3) and alpha.shape == (1, H, W) and depth.shape == (1, H, W)
    col, alpha, depth = col[0].cpu().numpy(), alpha[0].cpu().numpy(), depth[0].cpu().numpy()
    for x, c in zip([-1.0, 0.0, 1.0], COLORS):
        u = CX + F * x / DIST
        assert np.allclose(centre(col, u, CY), c, atol=0.02), (x, centre(col, u, CY), c)
        assert centre(alpha, u, CY) > 0.95
        assert abs(centre(depth, u, CY) - DIST) < 0.05
    # nothing drawn far from the Gaussians (3-sigma radius ~ 3 * F * 0.25 / DIST = 37 px)
    for u, v in [(5, 5), (W - 5, 5), (5, H - 5), (W - 5, H - 5), (CX, 10)]:
        assert alpha[int(v), int(u)] < 1e-3 and np.all(col[int(v), int(u)] == 0)
    # the footprint is about the Gaussian's projected size: alpha halves near 1.18 sigma
    sig = F * 0.25 / DIST
    row = alpha[int(CY)]
    half = np.nonzero(row[int(CX) : int(CX) + 25] < 0.5)[0][0]
    assert 0.8 * sig < half < 1.6 * sig + 1


def test_front_gaussian_occludes():
    from engine.splat.render import render_splat_views

    vm, K = camera()
    s = splats([0.0, 0.0], [-1.0, 1.0], COLORS[[0, 2]])  # red in front (depth 5), blue behind (depth 7)
    col, alpha, depth = (t[0].cpu().numpy() for t in render_splat_views(s, vm[None], K[None], W, H))
    assert np.allclose(centre(col, CX, CY), COLORS[0], atol=0.03)
    assert abs(centre(depth, CX, CY) - 5.0) < 0.05


def test_chunks_and_flipped_view():
    from engine.splat.render import render_splat_views

    vm, K = camera()
    vf, _ = camera(flip=True)
    vms = np.stack([vm, vf, vm, vf, vm])
    Ks = np.stack([K] * 5)
    s = splats([-1.0, 0.0, 1.0], [0, 0, 0], COLORS)
    a = [t.cpu().numpy() for t in render_splat_views(s, vms, Ks, W, H, chunk=2)]
    b = [t.cpu().numpy() for t in render_splat_views(s, vms, Ks, W, H, chunk=5)]
    for x, y in zip(a, b):
        assert np.allclose(x, y, atol=1e-4)
    col = a[0]
    # seen from behind, x = -1 (red) appears on the right
    assert np.allclose(centre(col[1], CX + F / DIST, CY), COLORS[0], atol=0.02)
    assert np.allclose(centre(col[0], CX - F / DIST, CY), COLORS[0], atol=0.02)


def test_view_renderer_adapter():
    import torch

    from engine.splat.render import splat_view_renderer

    vm, _ = camera()
    K = np.array([[F, 0, W / 2], [0, F, W / 2], [0, 0, 1]], np.float32)  # square views of side W
    render = splat_view_renderer(splats([0.0], [0.0], COLORS[1:2]), K)
    R = torch.tensor(vm[None, :3, :3], device="cuda")
    t = torch.tensor(vm[None, :3, 3], device="cuda")
    col, mask, depth = render(None, R, t, W)
    assert col.shape == (1, W, W, 3) and mask.dtype == torch.bool
    assert bool(mask[0, W // 2, W // 2]) and not bool(mask[0, 2, 2])
    assert np.allclose(col[0, W // 2, W // 2].cpu().numpy(), COLORS[1], atol=0.02)
