"""Bake stage: transfer the source's base colour onto the low-poly mesh's UV atlas.

Two backends, one contract:
    bake_texture(src, vertices, faces, uv, options, backend, progress)
        -> texture (S, S, 3) float32 sRGB in [0, 1] (row 0 = v 0),
           coverage (S, S) bool (texels that received a colour),
           info dict (method, counts, timings)
  * cuda (engine.bake.cuda): texel-space gather from rendered views (nvdiffrast).
  * cpu  (engine.bake.cpu):  rays from the target surface along its normal
    (Blender's "selected to active" with a cage) against the source (Embree).
Texels a backend did not see are left for engine.bake.dilate to fill.
"""

from __future__ import annotations


def bake_texture(src, vertices, faces, uv, options, backend, progress):
    if backend.name == "cuda":
        from engine.bake.cuda import bake_cuda

        return bake_cuda(src, vertices, faces, uv, options, progress)
    from engine.bake.cpu import bake_cpu

    return bake_cpu(src, vertices, faces, uv, options, progress)
