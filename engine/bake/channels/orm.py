"""The ``orm`` channel: occlusion (R), roughness (G), metallic (B), linear, packed as glTF expects.

Occlusion comes from the source's occlusion map (1 + strength * (map - 1));
roughness and metallic are the factors times the metallic-roughness map's
G and B. One image serves both glTF slots (metallicRoughnessTexture and
occlusionTexture); when occlusion is 1 everywhere the occlusion slot is left
out, and a channel that is constant becomes plain factors.
"""

from __future__ import annotations

import numpy as np

from engine.bake.channels.base import Channel


class OrmChannel(Channel):
    name = "orm"
    size = 3
    out_size = 3
    fill = (1.0, 0.5, 0.0)
    view_fit = True

    @classmethod
    def present(cls, src) -> bool:
        # every material has roughness and metallic (factors at least); a uniform source costs no bake (constant())
        return True

    def constant(self):
        mats = self.surface.materials
        if any(m.metallic_roughness is not None or m.occlusion is not None for m in mats):
            return None
        used = np.unique(self.surface.src.face_material) if self.surface.src.face_material is not None else [0]
        vals = {(float(mats[i].roughness_factor), float(mats[i].metallic_factor)) for i in used if i < len(mats)}
        if len(vals) != 1:
            return None
        r, m = vals.pop()
        return np.array([1.0, r, m], np.float32)

    def sample(self, face, bary):
        s = self.surface
        fac = s.material_table("rm_factor", lambda m: [1.0, m.roughness_factor, m.metallic_factor])
        out = fac[s.face_mat[face]].clone()

        def apply_mr(mi, m, sel):
            t = s.sample(m.metallic_roughness, face[sel], bary[sel], srgb=False)
            if t is not None and t.shape[1] >= 3:
                out[sel, 1] *= t[:, 1]
                out[sel, 2] *= t[:, 2]

        def apply_occ(mi, m, sel):
            t = s.sample(m.occlusion, face[sel], bary[sel], srgb=False)
            if t is not None:
                out[sel, 0] = 1.0 + float(m.occlusion_strength) * (t[:, 0] - 1.0)

        s.per_material(face, lambda m: m.metallic_roughness, apply_mr)
        s.per_material(face, lambda m: m.occlusion, apply_occ)
        return out.clamp(0.0, 1.0)

    @classmethod
    def gltf(cls, res, material, add_texture):
        pbr = material.setdefault("pbrMetallicRoughness", {})
        if res.image is None:
            o, r, m = (float(x) for x in res.constant)
            pbr["roughnessFactor"] = round(r, 4)
            pbr["metallicFactor"] = round(m, 4)
            return
        idx = add_texture(res.image, "orm")
        pbr["metallicRoughnessTexture"] = {"index": idx}
        pbr["metallicFactor"] = 1.0
        pbr["roughnessFactor"] = 1.0
        if int(res.image[..., 0].min()) < 254:
            material["occlusionTexture"] = {"index": idx}
