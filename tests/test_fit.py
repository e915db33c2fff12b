"""Least-squares texture fit (engine.bake.fit)."""

import numpy as np
import torch
import torch.nn.functional as F

from engine.bake.fit import _up, _up_adjoint, fit_texture


def test_upsampling_adjoint_is_exact():
    t = torch.zeros(1, 3, 17, 17, requires_grad=True)
    y = torch.randn(1, 3, 34, 34)
    (F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False) * y).sum().backward()
    assert torch.allclose(t.grad, _up_adjoint(y), atol=1e-5)
    assert torch.allclose(_up(t.detach() + 1), F.interpolate(t.detach() + 1, scale_factor=2, mode="bilinear", align_corners=False))


def test_fit_reproduces_the_signal_better_than_point_sampling():
    # a sharp-ish signal sampled at 2x; compare bilinear reconstructions at 8x against the true signal
    S = 32
    def signal(x, y):
        return 0.5 + 0.4 * np.sin(x * 0.9) * np.cos(y * 0.7) + 0.1 * (x > 13)

    def grid(n):
        c = (np.arange(n) + 0.5) / n * S  # texel-centre coordinates in texture units
        return np.meshgrid(c, c, indexing="ij")

    fy, fx = grid(2 * S)
    fine = np.repeat(signal(fx, fy)[..., None], 3, -1).astype(np.float32)
    tex, cov = fit_texture(torch.as_tensor(fine), torch.ones(2 * S, 2 * S, dtype=torch.bool), 2)
    assert bool(cov.all())
    py, px = grid(S)
    point = torch.as_tensor(np.repeat(signal(px, py)[..., None], 3, -1).astype(np.float32))
    ey, ex = grid(8 * S)
    truth = torch.as_tensor(signal(ex, ey).astype(np.float32))

    def err(t):
        rec = F.interpolate(t.permute(2, 0, 1)[None], scale_factor=8, mode="bilinear", align_corners=False)[0, 0]
        return float(((rec - truth)[8:-8, 8:-8] ** 2).mean())

    assert err(tex) < 0.8 * err(point), (err(tex), err(point))


def test_fit_leaves_uncovered_texels_uncovered():
    fine = torch.rand(64, 64, 3)
    cov = torch.zeros(64, 64, dtype=torch.bool)
    cov[10:30, 10:30] = True
    tex, c = fit_texture(fine, cov, 2)
    assert bool(c[6:14, 6:14].all()) and not bool(c[25:, 25:].any())
    assert float(tex.min()) >= 0 and float(tex.max()) <= 1


def test_stencil_is_the_normal_equation_operator():
    """The 3x3 stencil the fit iterates with is exactly U^T W U + prior (borders, odd sizes, partial coverage)."""
    from engine.bake.fit import _apply_stencil, _stencil

    g = torch.Generator().manual_seed(0)
    for S in (5, 7, 12):
        W = (torch.rand(1, 1, 2 * S, 2 * S, generator=g) > 0.4).float() * torch.rand(1, 1, 2 * S, 2 * S, generator=g)
        prior = torch.rand(1, 1, S, S, generator=g) * 0.1
        x = torch.randn(2, 3, S, S, generator=g)
        want = _up_adjoint(_up(x) * W) + prior * x
        assert torch.allclose(_apply_stencil(_stencil(W, prior), x), want, atol=1e-5)


def test_fit_converges_to_the_least_squares_optimum():
    """With the default iterations the texture reproduces the samples under bilinear filtering (what a viewer
    shows) as well as the exact minimiser of the fit's objective (a 400-iteration solve) does, within 0.05 dB."""
    g = torch.Generator().manual_seed(1)
    S = 64
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 2 * S), torch.linspace(0, 1, 2 * S), indexing="ij")
    fine = torch.stack([0.5 + 0.4 * torch.sin(17 * xx + 5 * yy), 0.5 + 0.4 * torch.cos(11 * yy), (xx * yy)], -1)
    cov = torch.rand(2 * S, 2 * S, generator=g) > 0.3
    cov[:, : S // 2] = False  # an empty region and a chart border
    ref, c = fit_texture(fine, cov, 2, iters=400, tol=0.0)
    tex, c2 = fit_texture(fine, cov, 2)
    assert torch.equal(c, c2)

    def reproduction_psnr(t):
        err = _up(t.permute(2, 0, 1)[None])[0].permute(1, 2, 0) - fine
        return float(10 * torch.log10(1.0 / (err[cov] ** 2).mean()))

    best = reproduction_psnr(ref)
    assert best > 55.0
    assert reproduction_psnr(tex) > best - 0.05
    assert reproduction_psnr(fit_texture(fine, cov, 2, iters=4, tol=0.0)[0]) < best - 0.5  # the check can fail


def test_packed_system_is_the_stencil(monkeypatch):
    """The packed operator the fit iterates with (five planes, the other four read one texel back) applies
    exactly the 3x3 stencil U^T W U + prior, row band by row band (bands of 3 rows here: their seams)."""
    from engine.bake import fit as fit_mod

    monkeypatch.setattr(fit_mod, "_TILE_ROWS", 3)
    g = torch.Generator().manual_seed(2)
    for S in (5, 7, 12):
        W = (torch.rand(1, 1, 2 * S, 2 * S, generator=g) > 0.4).float() * torch.rand(1, 1, 2 * S, 2 * S, generator=g)
        prior = torch.rand(1, 1, S, S, generator=g) * 0.1
        coef = fit_mod._stencil(W, prior)
        P = fit_mod._system(W, prior)
        assert torch.equal(P, fit_mod._pack(coef))  # the same floats as the nine planes
        x = torch.randn(2, 3, S, S, generator=g)
        xp = F.pad(x, (1, 1, 1, 1))
        out = torch.empty_like(x)
        dot = fit_mod._apply_packed(P, xp, out, fit_mod._tiles(S, "cpu"))
        want = _up_adjoint(_up(x) * W) + prior * x
        assert torch.allclose(out, want, atol=1e-5)
        assert abs(dot - float((x * want).sum())) < 1e-3 * max(1.0, abs(dot))


def test_box_sums_and_adjoint_in_one_pass():
    from engine.bake.fit import _box_and_adjoint

    y = torch.randn(2, 3, 18, 18)
    box, adj = _box_and_adjoint(y)
    assert torch.allclose(box, F.avg_pool2d(y, 2) * 4, atol=1e-5)
    assert torch.allclose(adj, _up_adjoint(y), atol=1e-5)


def test_fit_cache_shares_the_coverage_between_channels():
    """Channels of one bake share the coverage's part of the system; a different coverage is not reused."""
    g = torch.Generator().manual_seed(3)
    fine_a = torch.rand(64, 64, 3, generator=g)
    fine_b = torch.rand(64, 64, 4, generator=g)
    cov = torch.rand(64, 64, generator=g) > 0.3
    cov2 = cov.clone()
    cov2[:20] = False
    cache: dict = {}
    ta, ca = fit_texture(fine_a, cov, 2, cache=cache)
    tb, cb = fit_texture(fine_b, cov, 2, cache=cache)
    built = cache["coverage"]
    t2, c2 = fit_texture(fine_a, cov2, 2, cache=cache)
    assert cache["coverage"] is not built
    for (t, c), (want_t, want_c) in (((ta, ca), fit_texture(fine_a, cov, 2)), ((tb, cb), fit_texture(fine_b, cov, 2)),
                                     ((t2, c2), fit_texture(fine_a, cov2, 2))):
        assert torch.equal(t, want_t) and torch.equal(c, want_c)
