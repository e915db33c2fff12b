"""CPU renderer: Embree primary rays, flat unlit base colour (what the bake transfers)."""

from __future__ import annotations

import numpy as np

from engine.mesh.source import SourceMesh, shade
from engine.render.cameras import Camera


class CpuRenderer:
    def __init__(self, mesh: SourceMesh):
        from engine.bake.cpu import _scene

        self.mesh = mesh
        self.scene = _scene(mesh)

    def render(self, cam: Camera):
        """-> colour (H,W,3) f32 sRGB, mask (H,W) bool, depth (H,W) f32 (distance along the ray)."""
        from engine.bake.cpu import cast

        o, d = cam.rays()
        prim, bary, t = cast(self.scene, o, d, 1e30)
        ok = prim >= 0
        col = np.zeros((len(o), 3), np.float32)
        if ok.any():
            col[ok] = shade(self.mesh, prim[ok], bary[ok])
        H, W = cam.height, cam.width
        return col.reshape(H, W, 3), ok.reshape(H, W), np.where(ok, t, np.inf).reshape(H, W)
