"""Units of the CPU bake (engine.bake.texel, engine.bake.cpu) against plain reference implementations."""

import numpy as np
import pytest

from engine.bake.texel import edge_ring, rasterize_uv


def _raster_reference(uv, faces, S):
    """Every texel of each triangle's bounding box tested (the barycentric rule of rasterize_uv, triangle by
    triangle: later triangles win ties) -> tri, bary, counts."""
    tri = np.full((S, S), -1, np.int32)
    bary = np.zeros((S, S, 3), np.float32)
    cnt = np.zeros((S, S), np.int32)
    P = uv[faces].astype(np.float64) * S - 0.5
    for t, (a, b, c) in enumerate(P):
        v0, v1 = b - a, c - a
        den = v0[0] * v1[1] - v1[0] * v0[1]
        if abs(den) <= 1e-12:
            continue
        x0, x1 = int(np.clip(np.ceil(P[t, :, 0].min()), 0, S - 1)), int(np.clip(np.floor(P[t, :, 0].max()), 0, S - 1))
        y0, y1 = int(np.clip(np.ceil(P[t, :, 1].min()), 0, S - 1)), int(np.clip(np.floor(P[t, :, 1].max()), 0, S - 1))
        y, x = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
        px, py = x - a[0], y - a[1]
        l1 = (px * v1[1] - v1[0] * py) / den
        l2 = (v0[0] * py - px * v0[1]) / den
        l0 = 1.0 - l1 - l2
        ins = (l0 >= -1e-7) & (l1 >= -1e-7) & (l2 >= -1e-7)
        tri[y[ins], x[ins]] = t
        bary[y[ins], x[ins]] = np.stack([l0, l1, l2], -1)[ins]
        cnt[y[ins], x[ins]] += 1
    return tri, bary, cnt


def _meshes():
    rng = np.random.default_rng(5)
    for k in range(4):
        uv = rng.random((200, 2)) * 1.2 - 0.1  # some triangles leave the square
        f = rng.integers(0, 200, (300, 3))
        f[:15, 2] = f[:15, 1]  # degenerate
        uv[:12] = np.round(uv[:12] * 8) / 8
        uv[12:24, 1] = uv[12, 1] + rng.random(12) * 1e-12  # edges (nearly) along a texel row
        yield uv.astype(np.float32), f.astype(np.int32), 40 + 29 * k
    # a grid of squares split along diagonals that pass exactly through texel centres (ties between neighbours)
    g = np.stack(np.meshgrid(np.arange(9), np.arange(9)), -1).reshape(-1, 2) / 8.0
    q = np.arange(81).reshape(9, 9)
    f = np.concatenate([np.stack([q[:-1, :-1], q[:-1, 1:], q[1:, 1:]], -1).reshape(-1, 3),
                        np.stack([q[:-1, :-1], q[1:, 1:], q[1:, :-1]], -1).reshape(-1, 3)])
    yield g.astype(np.float32), f.astype(np.int32), 64
    yield g.astype(np.float32), f.astype(np.int32), 67


@pytest.mark.parametrize("case", range(6))
def test_span_rasteriser_matches_the_bounding_box_test(case):
    uv, f, S = list(_meshes())[case]
    want = _raster_reference(uv, f, S)
    for chunk in (50, 300_000):  # chunk seams
        got = rasterize_uv(uv, f, S, chunk_texels=chunk, counts=True)
        for g, w in zip(got, want):
            assert np.array_equal(g, w)


def test_edge_ring_is_the_3x3_neighbour_of_the_charts():
    from scipy.ndimage import maximum_filter

    uv, f, S = list(_meshes())[-1]
    f = f[np.arange(len(f)) % 3 != 0]  # holes: chart borders everywhere
    tri, _ = rasterize_uv(uv, f, S)
    rr, cc, t, b = edge_ring(tri, uv, f)
    nb = maximum_filter(tri, size=3, mode="constant", cval=-1)
    ring = (tri < 0) & (nb >= 0)
    assert ring[rr, cc].all() and np.array_equal(t, nb[rr, cc])
    assert ring.sum() > 100 and len(rr) > 0.9 * ring.sum()  # all but sliver extrapolations
