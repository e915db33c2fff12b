"""Weld and simplify a triangle mesh to a target face count.

Decimators: meshoptimizer's quadric edge collapse (``meshopt_simplify``, MIT, through the
``meshoptimizer`` package: ctypes, so the GIL is released while it runs) down to
``_FINISH_RATIO`` (2) x the target, then fast-simplification (Fast Quadric Mesh Simplification,
``aggression``) from there to the target. Steps:

1. Weld (``weld``): one argsort of a 64-bit key per vertex (a coarse Morton cell in the top bits,
   a hash of the float bits below; rows with equal keys are compared, and a hash collision falls
   back to the old lexsort), so the welded vertices come out grouped in space; faces are then
   ordered by the cell of their first vertex (a 16-bit radix sort). Neither decimator likes the
   source's own order (an icosphere's vertices are by subdivision level): on pebble(9) one
   meshoptimizer call took 30 s on the source order and 6 s on this one, fast-simplification 28 s
   and 12 s. The weld itself: 5.6 s -> 1.1 s on pebble(9).
2. Large meshes (``_CHUNK_FACES`` and up) are cut into spatially compact runs of that face order;
   each run is simplified on its own thread with its border vertices locked (``LockBorder |
   Sparse``) to a share of ``_CHUNK_BUDGET`` x meshoptimizer's target, so the runs still fit
   together; one more meshoptimizer pass over the (much smaller) joined mesh places that budget
   where the error is lowest. Runs = faces / 150,000, at most 4 per core, or one per core where
   cores outnumber those runs and each keeps 40,000 faces (``_n_runs``): on the GPU machine's 16
   cores this is where the speed comes from; on 2 cores the runs mostly take turns. pebble(7),
   327,680 -> 16,000 faces, 8 runs instead of 2 (2-core box, runs one after another): the longest
   run 55 -> 12 ms, all runs 106 -> 90 ms of CPU, the final pass over the joined 128,000 faces 38 ->
   42 ms; Hausdorff 0.0146 -> 0.0163 (0.4% of the diagonal), mean distance 0.00045 -> 0.00044.
3. meshoptimizer's ``target_error`` is 1.0 (relative to the mesh extent: no error limit), so it
   stops at its target or when no collapse is topologically valid; fast-simplification then goes
   on from whatever count it reached. The sloppy simplifier is not used (it does not keep the
   topology). Why not meshoptimizer all the way: it only collapses onto existing vertices, while
   fast-simplification moves them to the quadric optimum; alone it was ~1.7x further from the
   source (largest distance) at the same count, with the finishing pass the largest distance is
   fast-simplification's and the mean distance 20-35% higher (pebble(5) and pebble(7)).
4. meshoptimizer does not check the link condition: on pebble(9) it left 13 "fins", pairs of
   opposite triangles on the same three vertices hanging off an edge (a non-manifold edge each).
   ``_drop_fins`` removes both triangles of every such pair, which leaves every edge of a closed
   input with two faces again. Other non-manifold edges remain possible (pebble(9) -> 80,000:
   two edges where two sheets touch); the finishing fast-simplification pass collapsed them in
   every case seen. Should the final result still not be closed while the welded input was, the
   finishing pass runs again from meshoptimizer's (closed) result at aggression 5, which keeps
   closed meshes closed (``BakeOptions.simplify_aggression``; pebble(7) 327,680 -> 16,000 at
   aggression 7 left one non-manifold edge: this retry takes 0.05 s on 2 cores where starting over
   from the source took 0.7 s); only if that is still open does fast-simplification do the whole
   simplification again from the source (slow). Without the
   ``meshoptimizer`` package the same path runs on fast-simplification alone.

Measured on the 2-core development machine while other work kept both cores busy (min of
repeats; ``benchmarks/simplify.py`` -> ``benchmarks/results/cpu_simplify.json``), weld included,
aggression 5, old = lexsort weld + fast-simplification:

- pebble(7), 327,680 -> 16,000 faces: old 1.0 s, this 0.30 s; Hausdorff 0.0073 -> 0.0068,
  mean distance 0.00033 -> 0.00044
- pebble(9), 5,242,880 -> 20,000 faces: old 24.5 s (34 s in a busier run; weld 4-5.6 s), this
  4.4 s (9 s in a busier run; weld 1.0 s); Hausdorff 0.0062 -> 0.0091, mean 0.00030 -> 0.00040
  (pebble size ~4: both well under 0.1% of the diagonal)
- bunny.ply, 16,301 -> 5,000: both ~0.03 s, about the same distances

closed inputs staying closed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# meshoptimizer's simplifier options (meshoptimizer.h, meshopt_Simplify*)
_LOCK_BORDER = 1 << 0
_SPARSE = 1 << 1
_CHUNK_FACES = 300_000  # a mesh this large is simplified in parallel runs first, whatever the cores
_CHUNK_MIN = 150_000  # faces per run on few cores (smaller runs are more locked border; many cores: _CORE_RUN_MIN)
_CORE_RUN_MIN = 40_000  # with more cores than such runs: one run per core, each of this many faces at least
_CHUNK_BUDGET = 4.0  # the runs together keep this many times meshoptimizer's target for its final pass
_FINISH_RATIO = 2.0  # meshoptimizer down to this many times the target, fast-simplification the rest
SAFE_AGGRESSION = 5  # fast-simplification's aggression that kept every closed test shape closed (see BakeOptions)

_MIX = np.array([0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], np.uint64)
# 5 bits of each axis spread 3 apart: a 15-bit Morton code from a table
_SPREAD = np.array([sum(((i >> b) & 1) << (3 * b) for b in range(5)) for i in range(32)], np.uint64)


def _row_keys(v: np.ndarray) -> np.ndarray:
    """One uint64 per row of an (N, 3) float array: equal rows get equal keys (-0.0 counts as 0.0).

    The top 15 bits are the row's cell in a 32^3 grid over the bounding box (Morton order), the
    rest a hash of the float bits: sorting by the key groups equal rows and keeps near rows near.
    """
    v = v + v.dtype.type(0)  # -0.0 -> 0.0
    bits = v.view(np.uint32 if v.dtype == np.float32 else np.uint64).astype(np.uint64, copy=False)
    h = bits[:, 0] * _MIX[0]
    h ^= bits[:, 1] * _MIX[1]
    h ^= bits[:, 2] * _MIX[2]
    h ^= h >> np.uint64(31)
    h >>= np.uint64(15)
    lo, hi = v.min(0), v.max(0)
    if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
        scale = (32.0 / np.maximum(hi - lo, 1e-30)).astype(v.dtype)
        q = np.clip(((v - lo) * scale).astype(np.int32), 0, 31)
        h |= (_SPREAD[q[:, 0]] | (_SPREAD[q[:, 1]] << np.uint64(1)) | (_SPREAD[q[:, 2]] << np.uint64(2))) << np.uint64(49)
    return h


def _unique_rows_lexsort(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(tuple(v[:, i] for i in range(v.shape[1] - 1, -1, -1)))
    sv = v[order]
    new = np.empty(len(v), bool)
    new[0] = True
    new[1:] = np.any(sv[1:] != sv[:-1], axis=1)
    inv = np.empty(len(v), np.int64)
    inv[order] = np.cumsum(new) - 1
    return sv[new], inv


def unique_rows(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique rows, inverse index) of an (N, 3) array; unique rows in no promised order.

    Float (N, 3) arrays go through one argsort of ``_row_keys`` (~3x faster than the 3-key lexsort,
    which stays for other arrays and for the astronomically rare hash collision).
    """
    v = np.asarray(v)
    if len(v) == 0:
        return v, np.zeros(0, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or v.dtype not in (np.float32, np.float64):
        return _unique_rows_lexsort(v)
    v = np.ascontiguousarray(v)
    key = _row_keys(v)
    order = np.argsort(key)
    sk = key[order]
    new = np.empty(len(v), bool)
    new[0] = True
    np.not_equal(sk[1:], sk[:-1], out=new[1:])
    dup = np.flatnonzero(~new)
    if len(dup) and np.any(v[order[dup]] != v[order[dup - 1]]):
        return _unique_rows_lexsort(v)  # two different rows with one key
    inv = np.empty(len(v), np.int64)
    inv[order] = np.cumsum(new) - 1
    return v[order[new]], inv


def _drop_unused(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop vertices no face uses (order kept); O(n), no sort."""
    used = np.zeros(len(v), bool)
    used[f] = True
    if used.all():
        return v, f
    remap = (np.cumsum(used) - 1).astype(f.dtype)
    return v[used], remap[f]


def weld(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices with identical positions (glTF splits them at UV/colour seams) and drop unused ones.

    Without this, decimation would tear the surface open along every seam. Faces that lose a
    corner to the merge are dropped; the welded vertices are grouped in space (see ``_row_keys``).
    """
    v = np.ascontiguousarray(vertices, np.float32)
    uniq, inv = unique_rows(v)
    f = inv.astype(np.int32)[np.asarray(faces)]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    if not ok.all():
        f = f[ok]
    uniq, f = _drop_unused(uniq, f)
    return np.ascontiguousarray(uniq, np.float32), np.ascontiguousarray(f, np.int32)


def _spatial_faces(n_vertices: int, f: np.ndarray) -> np.ndarray:
    """Faces ordered by their first vertex (vertices being in space order: faces too), 16-bit radix sort."""
    shift = max(0, int(n_vertices - 1).bit_length() - 16)
    order = np.argsort((f[:, 0] >> shift).astype(np.uint16), kind="stable")
    return np.take(f, order, axis=0)


def _clean(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop degenerate and zero-area faces, then unused vertices -> (float32, int32)."""
    f = np.asarray(f, np.int64)
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[ok]
    tri = np.asarray(v, np.float64)[f]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    v, f = _drop_unused(np.asarray(v), f[area > 0])
    return np.ascontiguousarray(v, np.float32), np.ascontiguousarray(f, np.int32)


def _drop_fins(f: np.ndarray) -> np.ndarray:
    """Remove every pair of faces on the same three vertices (a zero-volume fin or a doubled face)."""
    if len(f) < 2:
        return f
    s = np.sort(f, axis=1).astype(np.int64)
    n = int(s.max()) + 1
    key = (s[:, 0] * n + s[:, 1]) * n + s[:, 2] if n < 2**21 else None
    if key is None:
        _, inv, counts = np.unique(s, axis=0, return_inverse=True, return_counts=True)
        return f[counts[inv.ravel()] == 1]
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    return f[counts[inv] == 1]


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _n_runs(n_faces: int, target_faces: int, workers: int) -> int:
    """How many parallel runs meshoptimizer's first pass takes: runs of ``_CHUNK_MIN`` faces from
    ``_CHUNK_FACES`` on (at most 4 per core), and on many cores one run per core as long as each keeps
    ``_CORE_RUN_MIN`` faces (pebble(7), 327,680 faces on 16 cores: 8 runs of 41K instead of 2 of 164K).
    One run when the runs together would keep every face (``_CHUNK_BUDGET`` x the target): they would
    not simplify at all, and the final pass would see the whole mesh again."""
    if n_faces <= _CHUNK_BUDGET * target_faces:
        return 1
    by_size = n_faces // _CHUNK_MIN if n_faces >= _CHUNK_FACES else 1
    by_cores = min(workers, n_faces // _CORE_RUN_MIN)
    return int(min(max(by_size, by_cores, 1), 4 * workers))


def _meshopt(v: np.ndarray, f: np.ndarray, target_faces: int, progress=None) -> tuple[np.ndarray, np.ndarray] | None:
    """meshoptimizer down to target_faces (in parallel runs for a large mesh), fins dropped, cleaned;
    None where the library is not installed."""
    try:
        import meshoptimizer
    except ImportError:
        return None

    def run(indices: np.ndarray, target: int, options: int) -> np.ndarray:
        indices = np.ascontiguousarray(indices, np.uint32).ravel()
        dst = np.empty_like(indices)
        n = meshoptimizer.simplify(dst, indices, v_mo, target_index_count=3 * int(target), target_error=1.0, options=options)
        return dst[:n].reshape(-1, 3)

    v_mo = np.ascontiguousarray(v, np.float32)
    n_runs = _n_runs(len(f), target_faces, _workers())
    if n_runs > 1:
        bounds = np.linspace(0, len(f), n_runs + 1).astype(np.int64)
        share = max(int(np.ceil(_CHUNK_BUDGET * target_faces / n_runs)), 1)
        with ThreadPoolExecutor(min(n_runs, _workers())) as pool:
            parts = list(pool.map(lambda i: run(f[bounds[i] : bounds[i + 1]], share, _LOCK_BORDER | _SPARSE), range(n_runs)))
        v_mo, joined = _drop_unused(v_mo, np.concatenate(parts))
        if progress is not None:
            progress.update(0.6, f"{len(joined)} faces in {n_runs} runs")
    else:
        joined = f
    out = run(joined, target_faces, 0)
    return _clean(v_mo, _drop_fins(out))


def _quadric_passes(v: np.ndarray, f: np.ndarray, target_faces: int, aggression: int, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """fast-simplification, up to 4 passes until the target (<= 1.05x) is reached."""
    import fast_simplification

    cur_v, cur_f = np.asarray(v, np.float64), np.asarray(f, np.int32)
    for i in range(4):
        if len(cur_f) <= target_faces * (1.05 if i else 1.0) or len(cur_f) < 8:
            break
        reduction = 1.0 - target_faces / len(cur_f)
        nv, nf = fast_simplification.simplify(cur_v, cur_f, target_reduction=float(np.clip(reduction, 0.0, 0.999999)), agg=aggression)
        cur_v, cur_f = _clean(np.asarray(nv, np.float64), np.asarray(nf))
        cur_v = cur_v.astype(np.float64)
        if progress is not None:
            progress.update(0.9, f"{len(cur_f)} faces")
    return np.ascontiguousarray(cur_v, np.float32), np.ascontiguousarray(cur_f, np.int32)


def simplify(vertices: np.ndarray, faces: np.ndarray, target_faces: int, aggression: int = 7, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """-> (vertices float32, faces int32) with at most ~target_faces triangles (<= 1.05x).

    A mesh already at or below the target comes back welded only. meshoptimizer takes the mesh
    to ``_FINISH_RATIO`` x the target, fast-simplification (``aggression``) from there to the
    target (see the module doc).
    """
    v, f = weld(vertices, faces)
    if progress is not None:
        progress.update(0.1, "welded")
    if len(f) <= target_faces:
        return v, f
    f = _spatial_faces(len(v), f)
    middle = int(_FINISH_RATIO * target_faces)
    out = _meshopt(v, f, middle, progress) if len(f) > middle else None
    if out is not None and len(out[1]):
        if progress is not None:
            progress.update(0.7, f"{len(out[1])} faces (meshoptimizer)")
        lv, lf = _quadric_passes(*out, target_faces, aggression, progress)
        if is_closed(lf) or not is_closed(f):
            return lv, lf
        if aggression > SAFE_AGGRESSION and is_closed(out[1]):
            # the finishing pass opened it: again from meshoptimizer's result at the aggression that keeps it closed
            lv, lf = _quadric_passes(*out, target_faces, SAFE_AGGRESSION, progress)
            if is_closed(lf):
                return lv, lf
        # a closed input came out open: fast-simplification alone, from the source
    return _quadric_passes(v, f, target_faces, aggression, progress)


def is_closed(faces: np.ndarray) -> bool:
    """Every edge shared by exactly two faces (a closed, manifold surface)."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1).astype(np.int64)
    key = e[:, 0] * (int(e.max()) + 1) + e[:, 1]
    _, counts = np.unique(key, return_counts=True)
    return bool(np.all(counts == 2))


def orient_outward(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, bool]:
    """Flip the winding of a closed mesh whose normals point inward (negative signed volume).

    The CUDA bake trusts normals to face the cameras that see a texel, and
    viewers cull back faces; open surfaces are left as they are (every
    orientation of them is seen from some bake view).
    """
    if len(faces) == 0 or not is_closed(faces):
        return faces, False
    t = vertices[faces].astype(np.float64)
    vol = np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0
    if vol < 0:
        return np.ascontiguousarray(faces[:, [0, 2, 1]]), True
    return faces, False
