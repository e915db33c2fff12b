"""The CUDA gather's geometry (projection, ray/triangle hit, occlusion, weights) checked on the CPU.

nvdiffrast is replaced by a CPU stand-in that answers the same two questions
(which triangle is in front at each pixel, the colour at a surface point), so
the rest of engine.bake.cuda.gather_exact runs unchanged in torch on the CPU
and must agree with the Embree ray bake.
"""

import numpy as np
import torch

from engine.bake import cuda as cb
from engine.bake.texel import rasterize_uv, vertex_normals
from engine.io.load import load_source
from engine.mesh.source import shade
from engine.mesh.simplify import simplify
from engine.mesh.validate import validate_source
from engine.render.cameras import bounding_sphere, sphere_cameras
from engine.uv.unwrap import unwrap


class CpuStandIn:
    def __init__(self, src):
        from engine.bake.cpu import _scene

        self.src = src
        self.scene = _scene(src)
        self.pos = torch.as_tensor(src.vertices)
        self.tri = torch.as_tensor(src.faces.astype(np.int64))
        self.cams = None

    def rasterize_ids(self, mvps, res):
        from engine.bake.cpu import cast

        out = []
        for cam in self.cams:
            o, d = cam.rays()
            prim, _, _ = cast(self.scene, o, d, 1e30)
            out.append(prim.reshape(res, res))
        return torch.as_tensor(np.stack(out)).long()

    def rasterize(self, mvps, res):
        """nvdiffrast's raster layout (V,H,W,4): triangle id + 1 in the last channel (the gather reads only that)."""
        ids = self.rasterize_ids(mvps, res)
        rast = torch.zeros(ids.shape + (4,))
        rast[..., 3] = (ids + 1).float()
        return rast

    def shade_points(self, fi, bary):
        return torch.as_tensor(shade(self.src, fi.numpy(), bary.numpy()))


def test_gather_exact_matches_cpu_ray_bake(meshes_dir, monkeypatch):
    src, _ = validate_source(load_source(meshes_dir / "Duck.glb"))
    lv, lf = simplify(src.vertices, src.faces, 800)
    v, f, uv, _ = unwrap(lv, lf, 128, 2)
    tri, bary = rasterize_uv(uv, f, 128)
    mask = tri >= 0
    fv = f[tri[mask]]
    P = np.einsum("kj,kjc->kc", bary[mask], v[fv])
    vn = vertex_normals(v, f)
    N = np.einsum("kj,kjc->kc", bary[mask], vn[fv])
    N /= np.linalg.norm(N, axis=1, keepdims=True)
    c, r = bounding_sphere(src.vertices)
    cams = sphere_cameras(c, r, 24, 192)
    gm = CpuStandIn(src)
    acc = torch.zeros((len(P), 3))
    wsum = torch.zeros(len(P))
    diag = float(np.linalg.norm(np.ptp(src.vertices, 0)))
    for s in range(0, len(cams), 6):
        gm.cams = cams[s : s + 6]
        a, w = cb.gather_exact(gm, cams[s : s + 6], torch.as_tensor(P), torch.as_tensor(N), 0.02 * diag, "cpu", chunk=6)
        acc += a
        wsum += w
    hit = (wsum > 0).numpy()
    assert hit.mean() > 0.97
    got = (acc[wsum > 0] / wsum[wsum > 0][:, None]).numpy()
    # reference: the CPU backend's rays along the normal
    from engine.bake.cpu import _scene, transfer

    ref, ok = transfer(_scene(src), src, P.astype(np.float32), N.astype(np.float32), 0.02 * diag)
    both = ok[hit]
    err = np.abs(got[both] - ref[hit][both]).max(1)
    assert np.median(err) < 0.02, np.median(err)
    assert np.mean(err < 0.1) > 0.9
