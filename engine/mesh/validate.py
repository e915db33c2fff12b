"""Check a bake source before any GPU call.

Guarantees on return: vertices finite float32 (N, 3) C-contiguous, faces int32
(M, 3) in range, no degenerate faces, M >= 1 and <= max_faces, UVs and colours
finite float32. Anything else raises InputError naming the problem.
"""

from __future__ import annotations

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


def _early_overdraw_check(v: np.ndarray, fi: np.ndarray, name: str, sample: int = 65_536) -> None:
    """Large inputs: the surface area estimated from an evenly strided sample of faces, before the full
    (seconds-long) validation of millions of faces. The radius is half the bounding box's diagonal (never
    smaller than the bounding sphere's), so the estimate errs towards accepting; the exact check follows."""
    with np.errstate(invalid="ignore", over="ignore"):
        t = v[fi[:: max(1, len(fi) // sample)]].astype(np.float64)
        if not np.isfinite(t).all():
            return  # the full validation names the NaN/Inf vertices
        lo, hi = np.nanmin(v, axis=0).astype(np.float64), np.nanmax(v, axis=0).astype(np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return
    area = float(np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).mean()) * 0.5 * len(fi)
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    overdraw = raster_overdraw(area, radius)
    if overdraw > MAX_OVERDRAW:
        raise _absurd(name, len(fi), area, radius, overdraw)


def validate_arrays(vertices, faces, *, max_faces: int = 5_000_000, name: str = "mesh", stats: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (vertices float32, faces int32 without degenerates, kept-face mask). ``stats`` (optional) receives
    the kept faces' total ``surface_area``."""
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
    fi = f.astype(np.int64, copy=False)
    lo, hi = int(fi.min()), int(fi.max())
    if lo < 0 or hi >= len(v):
        bad = int(np.count_nonzero((fi < 0) | (fi >= len(v))))
        raise InputError(
            f"{name}: {bad} face indices out of range (valid 0..{len(v) - 1}, found {lo}..{hi})",
            hint="the file is corrupt or was written with a wrong index base",
            code="bad_indices",
        )
    if len(fi) > 200_000:
        _early_overdraw_check(v, fi, name)
    vf = v.astype(np.float64, copy=False)
    finite = np.isfinite(vf).all(axis=1)
    if not finite.all():
        nbad = int((~finite).sum())
        raise InputError(f"{name}: {nbad} vertices have NaN or Inf coordinates", hint="fix or delete those vertices in your DCC tool", code="non_finite")
    if np.abs(vf).max() > 1e15:
        raise InputError(f"{name}: vertex coordinates are absurdly large (|x| > 1e15)", code="non_finite")
    v32 = np.ascontiguousarray(vf, dtype=np.float32)
    # degenerate: repeated index or (near) zero area
    rep = (fi[:, 0] == fi[:, 1]) | (fi[:, 1] == fi[:, 2]) | (fi[:, 0] == fi[:, 2])
    tri = vf[fi]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(cross, axis=1)
    ext = float(np.linalg.norm(vf.max(0) - vf.min(0)))
    if ext == 0.0:
        raise InputError(f"{name}: all vertices are at one point (zero size)", code="degenerate")
    keep = ~rep & (area2 > (ext * 1e-10) ** 2)
    if not keep.any():
        raise InputError(f"{name}: all {len(f)} faces are degenerate (zero area)", code="degenerate")
    if stats is not None:
        stats["surface_area"] = float(area2[keep].sum()) * 0.5
    return v32, np.ascontiguousarray(fi[keep], dtype=np.int32), keep


def validate_source(src: SourceMesh, max_faces: int = 5_000_000) -> tuple[SourceMesh, dict]:
    n_in = int(len(src.faces)) if hasattr(src.faces, "__len__") else 0
    stats: dict = {}
    v, f, keep = validate_arrays(src.vertices, src.faces, max_faces=max_faces, name=src.name, stats=stats)
    used = np.zeros(len(v), bool)
    used[f.reshape(-1)] = True
    vu = v[used].astype(np.float64)
    center = (vu.min(0) + vu.max(0)) / 2
    radius = float(np.sqrt(((vu - center) ** 2).sum(1).max()))
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
        if not np.isfinite(vc).all():
            notes.append("non-finite vertex colours set to 0")
        vc = np.ascontiguousarray(np.clip(np.nan_to_num(vc[:, :4]), 0.0, 1.0))
    fm = None
    if src.face_material is not None:
        fm = np.asarray(src.face_material, np.int32)[keep]
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
