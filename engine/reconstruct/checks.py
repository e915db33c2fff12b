"""Quality checks of a reconstruction: front-view silhouette IoU, front-view
PSNR, and closedness (watertight, consistent winding, outward normals).

Front-view rendering is CPU orthographic ray casting: one ray per
working-image pixel centre, cast along -Z from in front of the object,
intersected with the mesh by trimesh's Embree (embreex) ray tracer, coloured
by ``engine.mesh.source.shade`` at the hit's face and barycentrics. No
lighting: the render shows the base colour, which is what the photo is
compared with.

  * IoU  = |hit & mask| / |hit | mask| over the working image.
  * PSNR = 10 log10(1 / MSE) over the pixels that are both in the mask and hit
    by the render, colours in sRGB [0, 1] against the working photo; the
    silhouette error is measured by the IoU, the colour error by the PSNR.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from engine.mesh.source import SourceMesh, shade
from engine.reconstruct.base import FrontView

IOU_MIN = 0.95
PSNR_MIN = 25.0
PSNR_CAP = 100.0  # identical images report 100 dB (keeps the report valid JSON: no Infinity)


def _intersector(vertices: np.ndarray, faces: np.ndarray):
    import trimesh

    tm = trimesh.Trimesh(vertices=np.asarray(vertices, np.float64), faces=np.asarray(faces, np.int64), process=False)
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        return tm, RayMeshIntersector(tm)
    except Exception:  # embreex missing: trimesh's pure-python intersector (slow but correct)
        from trimesh.ray.ray_triangle import RayMeshIntersector

        return tm, RayMeshIntersector(tm)


def render_front(mesh: SourceMesh, fv: FrontView, chunk: int = 250_000) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic front view of ``mesh`` on the working-image grid of ``fv``.

    Returns (rgb (h, w, 3) float32 sRGB in [0, 1], hit (h, w) bool). Only the
    pixels in the padded bounding box of mask and mesh are traced.
    """
    import trimesh

    h, w = fv.mask.shape
    rgb = np.zeros((h, w, 3), np.float32)
    hit = np.zeros((h, w), bool)
    v = np.asarray(mesh.vertices, np.float64)
    # region: union of the mask box and the mesh's projection, padded
    px = v[:, 0] / fv.scale + fv.cx
    py = fv.cy - v[:, 1] / fv.scale
    ys, xs = np.nonzero(fv.mask)
    x0 = int(max(0, math.floor(min(px.min(), xs.min())) - 2))
    x1 = int(min(w, math.ceil(max(px.max(), xs.max() + 1)) + 2))
    y0 = int(max(0, math.floor(min(py.min(), ys.min())) - 2))
    y1 = int(min(h, math.ceil(max(py.max(), ys.max() + 1)) + 2))
    if x1 <= x0 or y1 <= y0:
        return rgb, hit
    jj, ii = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1))
    jj = jj.reshape(-1)
    ii = ii.reshape(-1)
    X, Y = fv.pixel_to_world(jj + 0.5, ii + 0.5)
    ztop = float(v[:, 2].max()) + 1.0
    tm, rt = _intersector(v, mesh.faces)
    tris = tm.triangles
    for s in range(0, len(jj), chunk):
        sl = slice(s, s + chunk)
        n = len(jj[sl])
        origins = np.stack([X[sl], Y[sl], np.full(n, ztop)], axis=1)
        dirs = np.tile(np.array([[0.0, 0.0, -1.0]]), (n, 1))
        tri, ray, loc = rt.intersects_id(origins, dirs, multiple_hits=False, return_locations=True)
        if len(tri) == 0:
            continue
        bary = trimesh.triangles.points_to_barycentric(tris[tri], loc)
        col = shade(mesh, tri, np.clip(bary, 0.0, 1.0))
        gi, gj = ii[sl][ray], jj[sl][ray]
        rgb[gi, gj] = col
        hit[gi, gj] = True
    return rgb, hit


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def psnr(render: np.ndarray, photo: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return 0.0
    from engine.evaluate import psnr as masked_psnr

    ref = photo.astype(np.float32) / 255.0 if photo.dtype == np.uint8 else photo.astype(np.float32)
    return min(PSNR_CAP, masked_psnr(render, ref, where))


def closedness(vertices: np.ndarray, faces: np.ndarray) -> dict:
    """Watertight / winding / outward-normal checks, vertices merged by position
    (so a GLB split along UV seams is judged by its geometry)."""
    import trimesh

    tm = trimesh.Trimesh(vertices=np.asarray(vertices, np.float64), faces=np.asarray(faces, np.int64), process=True)
    watertight = bool(tm.is_watertight)
    winding = bool(tm.is_winding_consistent)
    vol = float(tm.volume) if watertight and winding else float("nan")
    try:
        bodies = int(tm.body_count)
    except Exception:
        bodies = -1
    euler = int(tm.euler_number)
    return {
        "watertight": watertight,
        "winding_consistent": winding,
        "outward_normals": bool(watertight and winding and vol > 0),
        "volume": None if math.isnan(vol) else round(vol, 8),
        "bodies": bodies,
        "euler_number": euler,
    }


def front_view_checks(mesh: SourceMesh, fv: FrontView, iou_min: float = IOU_MIN, psnr_min: float = PSNR_MIN, closed: bool = True) -> dict:
    """All checks of one mesh against the photo; JSON-able, with pass/fail."""
    rgb, hit = render_front(mesh, fv)
    m = fv.mask
    out = {
        "iou": round(iou(hit, m), 5),
        "iou_input_mask": round(iou(hit, fv.input_mask), 5),
        "psnr": round(psnr(rgb, fv.rgb, hit & m), 3),
        "render_pixels": int(hit.sum()),
        "mask_pixels": int(m.sum()),
        "iou_min": iou_min,
        "psnr_min": psnr_min,
    }
    ok = out["iou"] >= iou_min and out["psnr"] >= psnr_min
    if closed:
        c = closedness(mesh.vertices, mesh.faces)
        out.update(c)
        ok = ok and c["watertight"] and c["winding_consistent"] and c["outward_normals"]
    out["passed"] = bool(ok)
    return out


def front_view_image(mesh: SourceMesh, fv: FrontView, background: float = 0.0) -> np.ndarray:
    """Front view as an uint8 image (for previews / debugging)."""
    rgb, hit = render_front(mesh, fv)
    rgb[~hit] = background
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def mesh_from_bake_result(result, name: str = "baked") -> Optional[SourceMesh]:
    """A SourceMesh from a BakeResult's arrays (when no GLB was written)."""
    from engine.mesh.source import Material

    if getattr(result, "vertices", None) is None or getattr(result, "texture", None) is None:
        return None
    return SourceMesh(
        vertices=np.asarray(result.vertices, np.float32),
        faces=np.asarray(result.faces, np.int32),
        uv=np.asarray(result.uv, np.float32),
        materials=[Material(name="baked", texture=np.asarray(result.texture), wrap="clamp")],
        name=name,
    )
