"""UV-unwrap a low-poly mesh with xatlas.

Options, chosen deliberately:
  * PackOptions.resolution = texture size and padding = --padding texels, so
    charts are packed for the texture we bake and never touch each other;
  * bilinear = True leaves a 1-texel border so bilinear filtering never mixes charts;
  * blockAlign = True packs faster with a negligible loss of space;
  * bruteForce = False (its packing gain is small, its cost large);
  * ChartOptions.max_iterations = 1 (xatlas' default; more iterations buy
    slightly rounder charts for several times the time);
  * fix_winding = True keeps chart orientation consistent on meshes with flipped faces.
Returns UVs in Kiln's convention (glTF: v down, row = v * H).
"""

from __future__ import annotations

import numpy as np


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int = 1024, padding: int = 4):
    """-> (vertices (n,3) f32 split at seams, faces (m,3) i32, uv (n,2) f32 in [0,1], vmap (n,) into input vertices)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    co = xatlas.ChartOptions()
    co.max_iterations = 1
    co.fix_winding = True
    po = xatlas.PackOptions()
    po.resolution = int(texture_size)
    po.padding = int(max(1, padding))
    po.bilinear = True
    po.blockAlign = True
    po.bruteForce = False
    atlas.generate(co, po)
    vmap, idx, uv = atlas[0]
    uv = np.asarray(uv, np.float32)
    # xatlas' v grows with the atlas row index already: that is Kiln's (glTF) convention.
    uv = np.clip(uv, 0.0, 1.0)
    return (
        np.ascontiguousarray(vertices[vmap], np.float32),
        np.ascontiguousarray(idx, np.int32),
        np.ascontiguousarray(uv),
        np.asarray(vmap, np.int64),
    )
