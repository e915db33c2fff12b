"""Held-out quality metric: PSNR between renders of the source and of the baked
result from views never used for baking, over pixels both cover.

Both are rendered unlit (base colour only, sRGB), the result with its baked
texture sampled bilinearly as a viewer would. The renderer is the backend's
(``Backend.render_pairs``: nvdiffrast on cuda, Embree rays on cpu); both
implement the same camera model and shade through the ``base`` channel.
"""

from __future__ import annotations

import numpy as np

from engine.mesh.source import Material, SourceMesh
from engine.render.cameras import HELDOUT_OFFSET, bounding_sphere, sphere_cameras


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    if a.size == 0:
        return float("nan")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def result_mesh(vertices, faces, uv, texture_u8, name="result") -> SourceMesh:
    return SourceMesh(
        vertices=np.asarray(vertices, np.float32),
        faces=np.asarray(faces, np.int32),
        uv=np.asarray(uv, np.float32),
        face_material=np.zeros(len(faces), np.int32),
        materials=[Material(name="baked", texture=np.asarray(texture_u8, np.uint8), wrap="clamp")],
        name=name,
    )


def heldout_cameras(src_vertices, n: int, resolution: int):
    c, r = bounding_sphere(src_vertices)
    return sphere_cameras(c, r, n, resolution, offset=HELDOUT_OFFSET)


def heldout_psnr(src, vertices, faces, uv, texture_u8, options, backend, progress=None, return_images: bool = False, splats=None) -> dict:
    res = result_mesh(vertices, faces, uv, texture_u8)
    cams = heldout_cameras(src.vertices, options.eval_views, options.eval_resolution)
    if splats is not None:
        pairs = _splat_pairs(splats, res, cams)
    else:
        pairs = backend.render_pairs(src, res, cams, progress)
    se, cnt, per_view, ious = 0.0, 0, [], []
    for ca, ma, cb, mb in pairs:
        both = ma & mb
        d = (ca[both].astype(np.float64) - cb[both]) ** 2
        se += float(d.sum())
        cnt += int(both.sum()) * 3
        per_view.append(round(psnr(ca, cb, both), 3))
        union = int((ma | mb).sum())
        ious.append(float(both.sum()) / union if union else 1.0)
    mse = se / max(cnt, 1)
    out = {
        "psnr": round(float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"), 3),
        "views": len(cams),
        "resolution": options.eval_resolution,
        "per_view_psnr": per_view,
        "silhouette_iou": round(float(np.mean(ious)), 4),
        "renderer": "gsplat + nvdiffrast" if splats is not None else backend.renderer_name,
    }
    if return_images:
        out["images"] = pairs
    return out


def _splat_pairs(splats, res, cams):
    """Source = gsplat renders of the splats, result = nvdiffrast renders of the baked mesh."""
    import torch

    from engine.render.nvdr import GpuMesh, cams_to_tensors
    from engine.splat.render import splat_view_renderer

    rend = splat_view_renderer(splats, cams[0].K(), "cuda")
    gm = GpuMesh(res, "cuda")
    out = []
    with torch.no_grad():
        for s in range(0, len(cams), 4):
            cc = cams[s : s + 4]
            mvp, R, t = cams_to_tensors(cc, "cuda")
            ca, ma, _ = rend(mvp, R, t, cc[0].width)
            cb, mb, _ = gm.render(mvp, cc[0].width)
            for i in range(len(cc)):
                out.append((ca[i].cpu().numpy(), ma[i].cpu().numpy(), cb[i].cpu().numpy(), mb[i].cpu().numpy()))
    return out
