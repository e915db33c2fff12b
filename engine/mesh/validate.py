"""Check a bake source before any GPU call.

Guarantees on return: vertices finite float32 (N, 3) C-contiguous, faces int32
(M, 3) in range, no degenerate faces, M >= 1 and <= max_faces, UVs and colours
finite float32. Anything else raises InputError naming the problem.
"""

from __future__ import annotations

import os

import numpy as np

from engine.errors import InputError
from engine.mesh.source import SourceMesh


# A bake view (engine.render.cameras: 40 degree field of view, bounding sphere filling it with 5% margin)
# sees at most this many layers of surface per pixel on average before the geometry is refused. A closed
# shape is ~2 (front and back), dense foliage or stacked shells a few dozen; a soup of millions of
# triangles spanning the whole bounding box is tens of thousands, and overflows nvdiffrast (a segfault
# after minutes of simplify and unwrap) and makes every Embree ray test all of them.
MAX_OVERDRAW = 4000.0
_HALF_FOV_TAN = float(np.tan(np.radians(20.0)))
_VIEW_DISTANCE = 1.05 / float(np.sin(np.radians(20.0)))  # camera distance in bounding-sphere radii


def raster_overdraw(surface_area: float, radius: float) -> float:
    """Mean surface layers per pixel of a bake view (projected triangle area summed over the image's area).

    A triangle of area A faces a random view at |cos| 1/2 on average; at the nearest possible depth
    (camera distance minus radius) a unit of area covers (f / depth)^2 pixels, f = res / (2 tan 20deg),
    so the image (res^2 pixels) holds A / 2 / (2 tan 20deg * depth)^2 of it: resolution-independent,
    an upper estimate for every bake and evaluation view."""
    depth = max((_VIEW_DISTANCE - 1.0) * float(radius), 1e-30)
    return float(surface_area) * 0.5 / (2.0 * _HALF_FOV_TAN * depth) ** 2


def _absurd(name: str, n_faces: int, area: float, radius: float, overdraw: float) -> InputError:
    return InputError(
        f"{name}: absurd geometry: {n_faces:,} faces with {area:.3g} units^2 of surface inside a bounding "
        f"sphere of radius {radius:.3g} -- about {overdraw:,.0f} layers of surface per pixel of a bake view "
        f"(limit {MAX_OVERDRAW:,.0f}); a triangle soup like this would overflow the rasteriser",
        hint="check the export (huge stray triangles, a broken index buffer, many stacked copies) and remove what is not the object",
        code="absurd_geometry",
    )


def _early_overdraw_check(v: np.ndarray, fi: np.ndarray, name: str, lo: np.ndarray, hi: np.ndarray, sample: int = 65_536) -> None:
    """Large inputs: the surface area estimated from an evenly strided sample of faces, before the full
    validation of millions of faces. The radius is half the bounding box's diagonal (``lo``, ``hi``: the
    finite float64 bounds of all vertices; never smaller than the bounding sphere's), so the estimate errs
    towards accepting; the exact check follows in validate_source."""
    t = v[fi[:: max(1, len(fi) // sample)]].astype(np.float64)
    area = float(np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).mean()) * 0.5 * len(fi)
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    overdraw = raster_overdraw(area, radius)
    if overdraw > MAX_OVERDRAW:
        raise _absurd(name, len(fi), area, radius, overdraw)


# Faces are measured in chunks that stay in cache; with many faces the chunks run on a few threads (numpy's
# take and ufuncs release the GIL). The threads follow OMP_NUM_THREADS where set (kiln batch splits the
# cores between its workers that way).
_CHUNK = 1 << 15
_THREADED_FROM = 1 << 20
_MAX_THREADS = 8


def _threads(n_faces: int) -> int:
    if n_faces < _THREADED_FROM:
        return 1
    try:
        n = int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))
    except (ValueError, AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(_MAX_THREADS, n, n_faces // _CHUNK))


def _face_areas(v: np.ndarray, f: np.ndarray, thr: float, used: np.ndarray | None) -> tuple[np.ndarray, float]:
    """-> (keep: twice each face's area (float64, as if every coordinate were float64 first) > ``thr``,
    the kept faces' summed area * 2); marks the vertices of kept faces in ``used`` (bool, len(v)) when given.

    Each vertex is packed into 16 bytes (float32 x, y, z, 0; or 32 bytes of float64 when the input is not
    float32) and gathered as one item per corner: numpy's take copies 16/32-byte items in one step, where
    a (N, 3) fancy index or nine per-column takes are 2-4x slower. The edges are subtracted straight into
    float64 and the cross product runs on chunk-sized rows, never on an (M, 3, 3) float64 copy of the mesh.
    A repeated index gives exactly zero area (identical corners subtract, or multiply in swapped order, to
    exactly 0.0), so the area test covers the repeated-index test too."""
    n, m = len(v), len(f)
    if v.dtype == np.float32:
        packed = np.zeros((n, 4), np.float32)
        packed[:, :3] = v
        packed = packed.view(np.complex128).reshape(n)
        item = np.float32
    else:
        packed = np.zeros((n, 4), np.float64)
        packed[:, :3] = v
        packed = packed.view(np.clongdouble).reshape(n) if np.dtype(np.clongdouble).itemsize == 32 else packed
        item = np.float64
    keep = np.empty(m, bool)

    def chunk(s: int) -> float:
        e = min(s + _CHUNK, m)
        idx = np.ascontiguousarray(f[s:e].T, dtype=np.intp)
        p0, p1, p2 = (packed.take(i, axis=0).view(item).reshape(e - s, 4) for i in idx)
        # edges straight into float64 (exact for float32 coordinates): no converted copy of the corners
        ax, ay, az = (np.subtract(p1[:, j], p0[:, j], dtype=np.float64) for j in range(3))
        bx, by, bz = (np.subtract(p2[:, j], p0[:, j], dtype=np.float64) for j in range(3))
        cx = ay * bz
        cx -= az * by
        cy = az * bx
        cy -= ax * bz
        cz = ax * by
        cz -= ay * bx
        cx *= cx
        cy *= cy
        cz *= cz
        cx += cy
        cx += cz
        np.sqrt(cx, out=cx)
        k = np.greater(cx, thr, out=keep[s:e])
        if k.all():
            if used is not None:
                used[idx] = True
            return float(cx.sum())
        if used is not None:
            used[idx[:, k]] = True
        return float(cx[k].sum())

    starts = range(0, m, _CHUNK)
    workers = _threads(m)
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="kiln-validate") as ex:
            total = sum(ex.map(chunk, starts))
    else:
        total = sum(chunk(s) for s in starts)
    return keep, total


def validate_arrays(vertices, faces, *, max_faces: int = 5_000_000, name: str = "mesh", stats: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (vertices float32, faces int32 without degenerates, kept-face mask). ``stats`` (optional) receives
    the kept faces' total ``surface_area``. Both arrays returned are new (never the caller's)."""
    v32, f32, keep, _ = _validate(vertices, faces, max_faces=max_faces, name=name, stats=stats, want_used=False)
    return v32, f32, keep


def _validate(vertices, faces, *, max_faces: int, name: str, stats: dict | None, want_used: bool):
    """validate_arrays, + the mask of the vertices the kept faces use (``want_used``)."""
    try:
        v = np.asarray(vertices)
        f = np.asarray(faces)
    except Exception as e:
        raise InputError(f"{name}: vertices/faces are not arrays ({e})", code="bad_input")
    if v.dtype == object or f.dtype == object:
        raise InputError(f"{name}: vertices/faces are ragged or not numeric", code="bad_input")
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(f"{name}: vertices must have shape (N, 3), got {v.shape}", code="bad_input")
    if f.size == 0 or len(f) == 0:
        raise InputError(f"{name}: the mesh has 0 faces", hint="nothing to bake: export a mesh with triangles", code="empty_mesh")
    if f.ndim != 2 or f.shape[1] != 3:
        raise InputError(f"{name}: faces must have shape (M, 3) triangles, got {f.shape}", code="bad_input")
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise InputError(f"{name}: vertices have dtype {v.dtype}, expected floats", code="bad_input")
    if np.issubdtype(f.dtype, np.floating):
        if not np.all(np.isfinite(f)) or not np.all(f == np.round(f)):
            raise InputError(f"{name}: face indices are not integers", code="bad_indices")
        f = f.astype(np.int64)
    if not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"{name}: faces have dtype {f.dtype}, expected integers", code="bad_input")
    if len(v) == 0:
        raise InputError(f"{name}: the mesh has 0 vertices", code="empty_mesh")
    if len(f) > max_faces:
        raise InputError(
            f"{name}: too large: {len(f):,} faces (limit {max_faces:,})",
            hint="decimate it first, or raise the limit with --max-faces",
            code="too_large",
        )
    # the range on the indices' own dtype (no int64 copy); uint64 beyond int64 is out of range like any other
    lo, hi = int(f.min()), int(f.max())
    if lo < 0 or hi >= len(v):
        bad = int(np.count_nonzero((f < 0) | (f >= len(v))))
        if f.dtype == np.uint64:  # as int64, the way they were reported before: wrapped to negative
            lo, hi = int(f.astype(np.int64).min()), int(f.astype(np.int64).max())
        raise InputError(
            f"{name}: {bad} face indices out of range (valid 0..{len(v) - 1}, found {lo}..{hi})",
            hint="the file is corrupt or was written with a wrong index base",
            code="bad_indices",
        )
    if v.dtype != np.float32 and v.dtype != np.float64:
        v = v.astype(np.float64)  # ints, float16, long double: measured as float64, as always
    with np.errstate(invalid="ignore"):
        all_finite = bool(np.isfinite(v).all())
        vlo = np.array([v[:, i].min() for i in range(3)], np.float64)
        vhi = np.array([v[:, i].max() for i in range(3)], np.float64)
    if len(f) > 200_000 and all_finite:
        _early_overdraw_check(v, f, name, vlo, vhi)
    if not all_finite:
        nbad = int(np.count_nonzero(~np.isfinite(v).all(axis=1)))
        raise InputError(f"{name}: {nbad} vertices have NaN or Inf coordinates", hint="fix or delete those vertices in your DCC tool", code="non_finite")
    if max(float(np.abs(vlo).max()), float(np.abs(vhi).max())) > 1e15:
        raise InputError(f"{name}: vertex coordinates are absurdly large (|x| > 1e15)", code="non_finite")
    ext = float(np.linalg.norm(vhi - vlo))
    if ext == 0.0:
        raise InputError(f"{name}: all vertices are at one point (zero size)", code="degenerate")
    # degenerate: repeated index or (near) zero area
    used = np.zeros(len(v), bool) if want_used else None
    keep, area2_sum = _face_areas(v, f, (ext * 1e-10) ** 2, used)
    all_kept = bool(keep.all())
    if not all_kept and not keep.any():
        raise InputError(f"{name}: all {len(f)} faces are degenerate (zero area)", code="degenerate")
    if stats is not None:
        stats["surface_area"] = area2_sum * 0.5
        if all_kept and used is not None and used.all():
            stats["_bounds"] = (vlo, vhi)  # the used vertices' bounds are all vertices' bounds
    v32 = np.array(v, dtype=np.float32, order="C", copy=True)
    f32 = np.array(f, dtype=np.int32, order="C", copy=True) if all_kept else np.ascontiguousarray(f[keep], dtype=np.int32)
    return v32, f32, keep, used


def validate_source(src: SourceMesh, max_faces: int = 5_000_000) -> tuple[SourceMesh, dict]:
    n_in = int(len(src.faces)) if hasattr(src.faces, "__len__") else 0
    stats: dict = {}
    v, f, keep, used = _validate(src.vertices, src.faces, max_faces=max_faces, name=src.name, stats=stats, want_used=True)
    radius = _bounding_radius(v, used, stats.pop("_bounds", None))
    overdraw = raster_overdraw(stats["surface_area"], radius)
    if overdraw > MAX_OVERDRAW:
        raise _absurd(src.name, len(f), stats["surface_area"], radius, overdraw)
    uv = vc = None
    notes = []
    if src.uv is not None:
        uv = np.asarray(src.uv, np.float32)
        if uv.shape != (len(v), 2):
            raise InputError(f"{src.name}: UVs have shape {uv.shape}, expected ({len(v)}, 2)", code="bad_input")
        if not np.isfinite(uv).all():
            notes.append("non-finite UVs set to 0")
            uv = np.nan_to_num(uv, nan=0.0, posinf=0.0, neginf=0.0)
        uv = np.ascontiguousarray(uv)
    if src.vertex_color is not None:
        vc = np.asarray(src.vertex_color, np.float32)
        if vc.ndim != 2 or len(vc) != len(v) or vc.shape[1] < 3:
            raise InputError(f"{src.name}: vertex colours have shape {vc.shape}, expected ({len(v)}, 3)", code="bad_input")
        vc = vc[:, :4]
        if not np.isfinite(vc).all():
            notes.append("non-finite vertex colours set to 0")
            vc = np.nan_to_num(vc)
        vc = np.ascontiguousarray(np.clip(vc, 0.0, 1.0))
    fm = None
    if src.face_material is not None:
        fm = np.asarray(src.face_material, np.int32)
        fm = fm.copy() if len(fm) == len(keep) and keep.all() else fm[keep]
        if len(fm) and (fm.min() < 0 or fm.max() >= max(len(src.materials), 1)):
            raise InputError(f"{src.name}: face material index out of range", code="bad_input")
    normals = _optional_vectors(src, "normals", 3, len(v), notes, "normals", "recomputed from the geometry")
    tangents = _optional_vectors(src, "tangents", 4, len(v), notes, "tangents", "recomputed with MikkTSpace")
    extra = {}
    for k, a in (src.extra_uvs or {}).items():
        a = np.asarray(a, np.float32)
        if a.shape == (len(v), 2):
            extra[int(k)] = np.ascontiguousarray(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0))
    ignored = list(src.ignored_features) + [n for n in notes if n.startswith(("NaN", "non-finite"))]
    out = SourceMesh(v, f, uv, vc, fm, list(src.materials), src.name, normals=normals, tangents=tangents, extra_uvs=extra,
                     ignored_features=ignored)
    return out, {"faces_in": n_in, "faces_dropped": int(n_in - len(f)), "notes": notes, "raster_overdraw": round(overdraw, 2)}


def _bounding_radius(v: np.ndarray, used: np.ndarray, bounds) -> float:
    """Radius of the used vertices' sphere about their bounding box's centre, in float64 per column (no
    (N, 3) float64 copy); ``bounds``: (lo, hi) when every vertex is used (known already)."""
    vu = v if bounds is not None or used.all() else v[used]
    if bounds is None:
        bounds = ([float(vu[:, i].min()) for i in range(3)], [float(vu[:, i].max()) for i in range(3)])
    lo, hi = bounds
    d2 = None
    for i in range(3):
        d = np.subtract(vu[:, i], (float(lo[i]) + float(hi[i])) / 2, dtype=np.float64)
        d *= d
        d2 = d if d2 is None else np.add(d2, d, out=d2)
    return float(np.sqrt(d2.max()))


def _optional_vectors(src, attr: str, width: int, n: int, notes: list, what: str, fallback: str):
    """Normals / tangents: kept when well-formed, else dropped with a named fallback (never an error)."""
    a = getattr(src, attr, None)
    if a is None:
        return None
    a = np.asarray(a, np.float32)
    if a.shape != (n, width):
        notes.append(f"{what} of shape {a.shape} ignored ({fallback})")
        return None
    if not np.isfinite(a).all() or (np.linalg.norm(a[:, :3], axis=1) < 1e-6).any():
        notes.append(f"NaN or zero {what} in the source: {fallback}")
        return None
    return np.ascontiguousarray(a)
