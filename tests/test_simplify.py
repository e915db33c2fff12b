"""engine.mesh.simplify: weld, the meshoptimizer path (parallel runs, fins, closedness) and the fallback."""

from __future__ import annotations

import importlib.util
import threading
import time

import numpy as np
import pytest

from engine.mesh import simplify as S
from engine.mesh.simplify import is_closed, simplify, unique_rows, weld
from engine.samples import _icosphere, pebble

needs_meshopt = pytest.mark.skipif(importlib.util.find_spec("meshoptimizer") is None, reason="meshoptimizer not installed")


def _soup(v, f):
    """Every face with its own three vertices (as a glTF with seams everywhere)."""
    return v[f].reshape(-1, 3), np.arange(3 * len(f), dtype=np.int32).reshape(-1, 3)


def _surface_distance(a_v, a_f, b_v, b_f, n=4000, seed=0):
    """(largest, mean) distance from points sampled on mesh a to mesh b (trimesh, exact)."""
    import trimesh

    a = trimesh.Trimesh(a_v, a_f, process=False)
    b = trimesh.Trimesh(b_v, b_f, process=False)
    pts, _ = trimesh.sample.sample_surface(a, n, seed=seed)
    _, d, _ = trimesh.proximity.closest_point(b, pts)
    return np.array([d.max(), d.mean()])


def _fast_simplification_only(v, f, target, aggression=5):
    """The path without meshoptimizer (the reference for quality)."""
    real = S._meshopt
    S._meshopt = lambda *a, **k: None
    try:
        return simplify(v, f, target, aggression=aggression)
    finally:
        S._meshopt = real


class Progress:
    def __init__(self):
        self.calls = []

    def update(self, fraction, message=""):
        self.calls.append((fraction, message))


def test_unique_rows_matches_lexsort_and_merges_signed_zero():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(500, 3)).astype(np.float32)
    v = base[rng.integers(0, 500, 4000)]
    v[:10] = [0.0, 1.0, 2.0]
    v[10:20] = [-0.0, 1.0, 2.0]
    u, inv = unique_rows(v)
    assert np.array_equal(u[inv], v)
    ref_u, ref_inv = S._unique_rows_lexsort(v)
    assert len(u) == len(ref_u)
    # the same grouping as the lexsort, up to the numbering
    assert len(np.unique(np.stack([inv, ref_inv], 1), axis=0)) == len(u)
    assert inv[0] == inv[10]
    u2, inv2 = unique_rows(v.astype(np.float64))
    assert len(u2) == len(u) and np.array_equal(u2[inv2], v)
    vi = rng.integers(0, 4, (300, 3)).astype(np.int32)  # not float: the lexsort path
    u3, inv3 = unique_rows(vi)
    assert np.array_equal(u3[inv3], vi) and len(u3) == len(np.unique(vi, axis=0))


def test_unique_rows_falls_back_on_a_key_collision(monkeypatch):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0], [2, 0, 0]], np.float32)
    monkeypatch.setattr(S, "_row_keys", lambda x: np.zeros(len(x), np.uint64))
    u, inv = unique_rows(v)
    assert len(u) == 3 and np.array_equal(u[inv], v) and inv[0] == inv[2]


def test_weld_joins_a_soup_back_into_a_closed_mesh():
    v, f = _icosphere(3)
    sv, sf = _soup(v.astype(np.float32), f)
    wv, wf = weld(sv, sf)
    assert wv.dtype == np.float32 and wf.dtype == np.int32
    assert len(wv) == len(v) and len(wf) == len(f) and is_closed(wf)
    assert np.allclose(np.sort(wv, axis=0), np.sort(v.astype(np.float32), axis=0))


def test_weld_drops_collapsed_faces_and_unused_vertices():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [5, 5, 5]], np.float32)
    f = np.array([[0, 1, 2], [0, 1, 3]], np.int32)  # the second face loses a corner to the weld
    wv, wf = weld(v, f)
    assert len(wf) == 1 and len(wv) == 3 and wf.max() == 2


@needs_meshopt
@pytest.mark.parametrize("target", [2000, 500])
def test_target_reached_closed_stays_closed_and_types(target):
    src = pebble(5)  # 20,480 faces
    prog = Progress()
    lv, lf = simplify(src.vertices, src.faces, target, aggression=5, progress=prog)
    assert lv.dtype == np.float32 and lf.dtype == np.int32
    assert lv.flags.c_contiguous and lf.flags.c_contiguous
    assert 0.8 * target <= len(lf) <= 1.05 * target
    assert is_closed(lf)
    assert lf.min() >= 0 and lf.max() == len(lv) - 1  # no unused vertex
    tri = lv[lf].astype(np.float64)
    assert np.all(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) > 0)
    assert prog.calls[0][1] == "welded" and all(0 <= p <= 1 for p, _ in prog.calls)
    assert any("meshoptimizer" in m for _, m in prog.calls)
    # about as close to the source as fast-simplification alone, both ways (measured: largest about the same, mean +20-35%; allowed +50%)
    rv, rf = _fast_simplification_only(src.vertices, src.faces, target)
    assert np.all(_surface_distance(lv, lf, src.vertices, src.faces) <= 1.5 * _surface_distance(rv, rf, src.vertices, src.faces))
    assert np.all(_surface_distance(src.vertices, src.faces, lv, lf) <= 1.5 * _surface_distance(src.vertices, src.faces, rv, rf))


@needs_meshopt
def test_seam_split_source_is_welded_before_simplifying():
    src = pebble(4)
    sv, sf = _soup(src.vertices, src.faces)
    lv, lf = simplify(sv, sf, 1000)
    assert len(lf) <= 1050 and is_closed(lf)


@needs_meshopt
def test_parallel_runs_join_into_a_closed_mesh(monkeypatch):
    """The run path (locked borders) on a small mesh: runs of ~4,000 faces."""
    monkeypatch.setattr(S, "_CHUNK_FACES", 10_000)
    monkeypatch.setattr(S, "_CHUNK_MIN", 4_000)
    monkeypatch.setattr(S, "_workers", lambda: 2)
    src = pebble(5)
    prog = Progress()
    lv, lf = simplify(src.vertices, src.faces, 1500, aggression=5, progress=prog)
    assert any("runs" in m for _, m in prog.calls)
    assert len(lf) <= 1.05 * 1500 and is_closed(lf)
    rv, rf = _fast_simplification_only(src.vertices, src.faces, 1500)
    assert np.all(_surface_distance(lv, lf, src.vertices, src.faces) <= 1.5 * _surface_distance(rv, rf, src.vertices, src.faces))


def test_mesh_below_target_comes_back_welded_only():
    v, f = _icosphere(2)  # 320 faces
    sv, sf = _soup(v.astype(np.float32), f)
    lv, lf = simplify(sv, sf, 1000)
    wv, wf = weld(sv, sf)
    assert np.array_equal(lv, wv) and np.array_equal(lf, wf)
    assert lv.dtype == np.float32 and lf.dtype == np.int32 and len(lf) == 320


def test_drop_fins_removes_opposite_face_pairs_only():
    f = np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4], [1, 0, 4], [5, 6, 7]], np.int32)
    assert np.array_equal(S._drop_fins(f), f[[0, 1, 4]])


def test_fallback_without_meshoptimizer_keeps_the_contract(monkeypatch):
    monkeypatch.setattr(S, "_meshopt", lambda *a, **k: None)
    src = pebble(4)
    lv, lf = simplify(src.vertices, src.faces, 1000, aggression=5)
    assert lv.dtype == np.float32 and lf.dtype == np.int32
    assert len(lf) <= 1050 and is_closed(lf)


@needs_meshopt
def test_non_closed_result_of_a_closed_input_falls_back(monkeypatch):
    """Should meshoptimizer leave a closed input open, fast-simplification starts again from the source."""
    src = pebble(4)
    real = S._meshopt
    seen = []

    def leaky(v, f, target, progress=None):
        ov, of = real(v, f, target, progress)
        seen.append(len(of))
        return ov, of[1:]  # a hole

    monkeypatch.setattr(S, "_meshopt", leaky)
    lv, lf = simplify(src.vertices, src.faces, 1000, aggression=5)
    assert seen and is_closed(lf) and len(lf) <= 1050


@needs_meshopt
def test_open_surface_keeps_its_border():
    """An open surface (a hemisphere) is simplified without closing or tearing its rim."""
    v, f = _icosphere(5)
    keep = v[f].mean(1)[:, 2] > 0
    lv, lf = simplify(v.astype(np.float32), f[keep], 800)
    assert len(lf) <= 1.05 * 800
    assert not is_closed(lf)
    assert np.isclose(lv[:, 2].min(), 0, atol=0.05)


@needs_meshopt
def test_meshoptimizer_releases_the_gil():
    """meshoptimizer runs while the main thread keeps going (to overlap with GPU work later);
    fast-simplification, timed the same way, holds the GIL: the main thread's loop rate is compared."""
    import ctypes

    import fast_simplification
    import meshoptimizer
    from meshoptimizer import _loader

    assert not isinstance(_loader.lib, ctypes.PyDLL)  # ctypes.CDLL calls drop the GIL
    v, f = weld(pebble(6).vertices, pebble(6).faces)
    f = S._spatial_faces(len(v), f)
    idx = np.ascontiguousarray(f, np.uint32).ravel()

    def mo():
        meshoptimizer.simplify(np.empty_like(idx), idx, v, target_index_count=3000, target_error=1.0)

    def fs():
        fast_simplification.simplify(v.astype(np.float64), f, target_count=1000, agg=5)

    def rate(fn):
        th = threading.Thread(target=fn)
        ticks, t0 = 0, time.perf_counter()
        th.start()
        while th.is_alive():
            ticks += 1
        return ticks / (time.perf_counter() - t0)

    assert rate(mo) > 2 * rate(fs)


@needs_meshopt
def test_finishing_pass_that_opens_a_closed_mesh_is_retried_gently(monkeypatch):
    """A finishing pass that leaves a closed input open is run again from meshoptimizer's result at
    SAFE_AGGRESSION, not from the whole source."""
    src = pebble(5)
    real = S._quadric_passes
    calls = []

    def spy(v, f, target, aggression, progress=None):
        calls.append((len(f), aggression))
        lv, lf = real(v, f, target, aggression, progress)
        return (lv, lf[1:]) if aggression > S.SAFE_AGGRESSION else (lv, lf)  # the aggressive pass tears a hole

    monkeypatch.setattr(S, "_quadric_passes", spy)
    lv, lf = simplify(src.vertices, src.faces, 1000, aggression=8)
    assert is_closed(lf) and len(lf) <= 1050
    assert [a for _, a in calls] == [8, S.SAFE_AGGRESSION]
    assert calls[0][0] == calls[1][0] < len(src.faces)  # both from meshoptimizer's result


def test_run_count_follows_cores_and_target():
    """meshoptimizer's first pass: one run per core on many cores (runs of >= 40K faces), runs of 150K on few,
    one run where the runs' budget would keep every face."""
    assert S._n_runs(327_680, 32_000, 16) == 8
    assert S._n_runs(327_680, 32_000, 2) == 2
    assert S._n_runs(5_242_880, 40_000, 16) == 34
    assert S._n_runs(5_242_880, 40_000, 1) == 4  # at most 4 runs per core
    assert S._n_runs(100_000, 40_000, 16) == 1  # 4 x 40K >= 100K: the runs would keep every face
    assert S._n_runs(60_000, 4_000, 16) == 1  # two runs of >= 40K faces need 80K faces
