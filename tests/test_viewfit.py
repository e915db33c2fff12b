"""The view fit's normal equations (engine.bake.viewfit) against an explicit bilinear sampling matrix."""

import numpy as np
import torch

from engine.bake.fit import _apply_stencil, fit_texture
from engine.bake.viewfit import ViewSystem


def _dense(uv, S):
    """Explicit (K, S*S) bilinear sampling matrix (glTF UVs, texel centres at (i + 0.5) / S)."""
    K = len(uv)
    A = np.zeros((K, S * S))
    x = uv[:, 0] * S - 0.5
    y = uv[:, 1] * S - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for k in range(K):
        for ax, wx in ((0, 1 - fx[k]), (1, fx[k])):
            for ay, wy in ((0, 1 - fy[k]), (1, fy[k])):
                A[k, (y0[k] + ay) * S + x0[k] + ax] += wx * wy
    return A


def test_normal_equations_match_dense_matrix():
    rng = np.random.default_rng(0)
    S, C, K = 9, 2, 400
    uv = rng.uniform(0.5 / S + 1e-3, 1 - 0.5 / S - 1e-3, size=(K, 2))  # taps inside the texture
    vals = rng.uniform(size=(K, C))
    w = rng.uniform(0.5, 2.0, size=K)
    sys_ = ViewSystem(S, C, "cpu")
    sys_.add(torch.as_tensor(uv[:200], dtype=torch.float32), torch.as_tensor(vals[:200], dtype=torch.float32), torch.as_tensor(w[:200], dtype=torch.float32))
    sys_.add(torch.as_tensor(uv[200:], dtype=torch.float32), torch.as_tensor(vals[200:], dtype=torch.float32), torch.as_tensor(w[200:], dtype=torch.float32))
    assert sys_.observations == K
    coef, rhs = sys_.normal_equations()
    A = _dense(uv, S)
    AtA = A.T @ (w[:, None] * A)
    Atb = A.T @ (w[:, None] * vals)
    x = rng.normal(size=(C, S * S))
    got = _apply_stencil(coef, torch.as_tensor(x.reshape(1, C, S, S), dtype=torch.float32))[0].reshape(C, -1).numpy()
    np.testing.assert_allclose(got, (AtA @ x.T).T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rhs[0].reshape(C, -1).numpy(), Atb.T, rtol=1e-4, atol=1e-4)
    # row sums of A^T A are the observation weight each texel carries
    np.testing.assert_allclose(sys_.support(coef).reshape(-1).numpy(), A.T @ w, rtol=1e-4, atol=1e-4)


def test_observations_at_the_border_are_left_out():
    sys_ = ViewSystem(8, 1, "cpu")
    sys_.add(torch.tensor([[0.01, 0.5], [0.5, 0.99], [0.5, 0.5]]), torch.ones(3, 1))
    assert sys_.observations == 1


def test_fit_reproduces_views_better_than_texel_fit_alone():
    """A texture seen through views at UVs that the fine texel samples do not cover exactly: adding the
    view equations lowers the error of bilinear renders at those UVs (what held-out views measure)."""
    rng = np.random.default_rng(1)
    S = 16
    truth = rng.uniform(size=(S, S, 1)).astype(np.float32)
    # fine samples: a blurred, biased version of the truth (the texel gather's compromise)
    fine = np.repeat(np.repeat(truth, 2, 0), 2, 1) * 0.8 + 0.1
    cov = np.ones((2 * S, 2 * S), bool)
    uv = rng.uniform(0.5 / S + 1e-3, 1 - 0.5 / S - 1e-3, size=(20000, 2))
    A = _dense(uv, S)
    obs = A @ truth.reshape(-1)
    vs = ViewSystem(S, 1, "cpu")
    vs.add(torch.as_tensor(uv, dtype=torch.float32), torch.as_tensor(obs[:, None], dtype=torch.float32))
    t_plain, _ = fit_texture(torch.as_tensor(fine), torch.as_tensor(cov), 2)
    t_view, cov2 = fit_texture(torch.as_tensor(fine), torch.as_tensor(cov), 2, iters=64, view=vs.normal_equations(), view_weight=16.0)
    err_plain = np.abs(A @ t_plain.numpy().reshape(-1) - obs).mean()
    err_view = np.abs(A @ t_view.numpy().reshape(-1) - obs).mean()
    assert bool(cov2.all())
    assert err_view < 0.25 * err_plain, (err_view, err_plain)
