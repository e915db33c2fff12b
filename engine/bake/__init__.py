"""Bake stage: transfer the source's material onto the target's UV atlas.

Backends find hits, channels sample attributes at them:
  * engine.backend.resolve(device) -> the Backend strategy (cuda: nvdiffrast texel-space gather from
    rendered views, engine.bake.cuda; cpu: Embree rays along the target's normals, engine.bake.cpu);
  * engine.bake.channels: base, normal, orm, emissive (one module each, a registry);
  * engine.bake.material.bake_material: every channel in one pass, the target's frame
    (engine.bake.frames), the least-squares fit (engine.bake.fit) and the fill (engine.bake.dilate).

``bake_texture`` is the base colour alone at the texture's own resolution (point sampling), the contract
both backends share: texture (S,S,3) float sRGB in [0,1] (row 0 = v 0), coverage (S,S) bool, info dict.
"""

from __future__ import annotations


def bake_texture(src, vertices, faces, uv, options, backend, progress):
    import numpy as np
    import torch

    from engine.bake.channels import ChannelSet
    from engine.bake.surface import surface_for
    from engine.mesh.normals import corner_normals

    S = options.texture_size
    with torch.no_grad():
        surface = surface_for(src, backend.device)
        chset = ChannelSet(["base"], surface)
        texels = backend.texels(uv, faces, S)
        P = texels.interp(np.asarray(vertices, np.float32))
        N = texels.interp(corner_normals(vertices, faces, hard=None))
        N = N / N.norm(dim=1, keepdim=True).clamp_min(1e-12)
        diag = float(np.linalg.norm(src.vertices.max(0) - src.vertices.min(0)))
        vals, hit, info = backend.gather(surface, chset.sample, P, N, float(options.cage) * diag, options, progress)
        tex = texels.scatter(vals[:, :3].to(texels.face.device), (0.0, 0.0, 0.0))
        cov = texels.scatter(hit[:, None].float().to(texels.face.device), (0.0,))[..., 0] > 0.5
    info["texels_in_charts"] = texels.inside
    return tex.cpu().numpy(), cov.cpu().numpy(), info
