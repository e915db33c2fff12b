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


def _shell_scene():
    """Two concentric spheres 0.01 apart (a thin shell: hits on both sides of many points) and a plane through them."""
    from engine.bake.cpu import _scene
    from engine.mesh.source import SourceMesh
    from tests.gltf_builder import uv_sphere

    v1, f1 = uv_sphere(40, 80, 1.0)
    v2, f2 = uv_sphere(31, 67, 1.01)
    pv = np.array([[-2, 0.013, -2], [2, 0.013, -2], [2, 0.013, 2], [-2, 0.013, 2]], np.float64)
    pf = np.array([[0, 1, 2], [0, 2, 3]])
    v = np.concatenate([v1, v2, pv]).astype(np.float32)
    f = np.concatenate([f1, f2 + len(v1), pf + len(v1) + len(v2)]).astype(np.int32)
    src = SourceMesh(vertices=v, faces=f)
    return _scene(src), v, f


def test_nearest_hit_with_fewer_rays_is_the_two_ray_rule(monkeypatch):
    """find_hits (one ray, a second one where the source lies outside) finds the hits of the reference rule
    (a ray each way, the nearer hit): points off, inside and exactly on a thin shell, tilted normals."""
    from engine.bake import cpu

    scene, v, f = _shell_scene()
    rng = np.random.default_rng(7)
    K = 60_000
    d = rng.normal(size=(K, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = rng.uniform(0.95, 1.06, K)
    r[: K // 10] = 1.0  # on the inner sphere's vertices' radius (hits within eps of p)
    p = (d * r[:, None]).astype(np.float32)
    on = rng.integers(0, len(v) - 4, K // 10)
    p[K // 10 : K // 5] = v[on]  # exactly on source vertices
    n = d + rng.normal(scale=0.3, size=(K, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    n = n.astype(np.float32)
    calls = []
    ref_rule = cpu._find_hits_two_casts
    monkeypatch.setattr(cpu, "_find_hits_two_casts", lambda *a: calls.append(len(a[1])) or ref_rule(*a))
    on_vertex = np.zeros(K, bool)
    on_vertex[K // 10 : K // 5] = True
    for cage in (0.02, 0.08):
        want_p, want_b = ref_rule(scene, p, n, cage)
        got_p, got_b = cpu.find_hits(scene, p, n, cage)
        assert np.array_equal(got_p >= 0, want_p >= 0) and (got_p >= 0).mean() > 0.5
        hit = got_p >= 0
        # the same hit point (the face may differ where the point lies on an edge or a vertex shared by faces)
        dist = np.linalg.norm(np.einsum("kj,kjc->kc", got_b[hit], v[f[got_p[hit]]])
                              - np.einsum("kj,kjc->kc", want_b[hit], v[f[want_p[hit]]]), axis=1)
        assert dist[~on_vertex[hit]].max() < 1e-4
        # rays exactly through a source vertex may slip through it (Embree is not watertight there), either rule's
        assert (dist[on_vertex[hit]] < 1e-4).mean() > 0.999
    assert sum(calls) > 100  # hits on both sides within reach, and rays that slipped: the reference rule decided those


def test_threaded_casts_equal_one_batch(monkeypatch):
    from engine.bake import cpu

    scene, v, f = _shell_scene()
    rng = np.random.default_rng(3)
    o = rng.normal(size=(300_000, 3)).astype(np.float32) * 3
    d = -o / np.linalg.norm(o, axis=1, keepdims=True)
    monkeypatch.setattr(cpu, "_workers", lambda: 1)
    one = cpu.cast(scene, o, d, 10.0)
    monkeypatch.setattr(cpu, "_workers", lambda: 4)
    many = cpu.cast(scene, o, d, 10.0)
    for a, b in zip(one, many):
        assert np.array_equal(a, b)


def test_texel_scatter_and_interp_match_the_plain_formulas():
    import torch

    from engine.bake.texel import texels_cpu

    uv, f, S = list(_meshes())[-1]
    tx = texels_cpu(uv, f[np.arange(len(f)) % 3 != 0], S)
    g = torch.Generator().manual_seed(0)
    vals = torch.rand(len(tx), 4, generator=g)
    want = torch.empty((S, S, 4))
    want[:] = torch.tensor((0.1, 0.2, 0.3, 0.4))
    want[tx.mask] = vals
    assert torch.equal(tx.scatter(vals, (0.1, 0.2, 0.3, 0.4)), want)
    attr = torch.rand(len(uv), 3, generator=g)
    assert torch.equal(tx.interp(attr), (tx.bary[..., None] * attr[tx.faces[tx.face]]).sum(1))
    corners = torch.rand(len(f), 3, 2, generator=g)
    assert torch.equal(tx.interp(corners), (tx.bary[..., None] * corners[tx.face]).sum(1))


def test_single_thread_block_restores_torch_threads():
    import torch

    from engine.bake.threads import single_thread

    before = torch.get_num_threads()
    with single_thread("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with single_thread("cpu"):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_scene_prepared_in_the_background_is_the_scene():
    from engine.bake import cpu
    from engine.mesh.source import SourceMesh
    from tests.gltf_builder import uv_sphere

    v, f = uv_sphere(20, 40)
    a = SourceMesh(vertices=v.astype(np.float32), faces=f.astype(np.int32))
    b = SourceMesh(vertices=v.astype(np.float32), faces=f.astype(np.int32))
    cpu.prepare_scene(a)
    cpu.prepare_scene(a)  # once
    sa, sb = cpu.scene_for(a), cpu.scene_for(b)
    assert cpu.scene_for(a) is sa and "pending" not in a.__dict__["_embree"]
    rng = np.random.default_rng(1)
    o = rng.normal(size=(1000, 3)).astype(np.float32) * 3
    d = -o / np.linalg.norm(o, axis=1, keepdims=True)
    for x, y in zip(cpu.cast(sa, o, d, 10.0), cpu.cast(sb, o, d, 10.0)):
        assert np.array_equal(x, y)


def test_backend_prepare_starts_the_scene_and_the_source_normals():
    import torch

    from engine.bake import cpu
    from engine.bake.channels.normal import source_corner_normals
    from engine.bake.surface import surface_for
    from engine.mesh.source import SourceMesh
    from engine.options import BakeOptions
    from tests.gltf_builder import uv_sphere

    v, f = uv_sphere(16, 32)
    src = SourceMesh(vertices=v.astype(np.float32), faces=f.astype(np.int32))
    cpu.CpuBackend().prepare(src, BakeOptions())
    cpu.scene_for(src)  # waits for the background work
    got = surface_for(src, "cpu")._cache["corner_normals"]
    assert torch.equal(got, source_corner_normals(src))


def test_thread_pools_work_in_a_forked_child():
    """A child forked after a bake (multiprocessing's default on Linux) gets pools of its own, not the parent's
    dead threads."""
    import multiprocessing as mp

    from engine.bake import cpu, threads

    scene, v, f = _shell_scene()
    o = np.zeros((300_000, 3), np.float32)
    d = np.tile(np.float32([[0, 0, 1]]), (300_000, 1))
    cpu.cast(scene, o, d, 10.0)  # the parent's pools exist
    threads.run_split(lambda g: len(g), list(range(8)), 2)
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child():
        prim, _, _ = cpu.cast(scene, o, d, 10.0)
        q.put((int((prim >= 0).sum()), sum(threads.run_split(lambda g: len(g), list(range(8)), 2))))

    p = ctx.Process(target=child)
    p.start()
    got = q.get(timeout=60)
    p.join(30)
    assert got == (300_000, 8)
