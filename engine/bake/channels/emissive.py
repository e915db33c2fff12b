"""The ``emissive`` channel: emission = emissiveFactor x emissiveTexture x emissive strength (linear).

The stored texture is sRGB (as glTF's emissiveTexture is); emission brighter
than 1 is divided by its maximum and that maximum is written as
KHR_materials_emissive_strength, so nothing is clipped.
"""

from __future__ import annotations

import numpy as np

from engine.bake.channels.base import Channel
from engine.bake.surface import linear_to_srgb_t


class EmissiveChannel(Channel):
    name = "emissive"
    size = 3
    out_size = 3
    fill = (0.0, 0.0, 0.0)

    @classmethod
    def present(cls, src) -> bool:
        return any(m.has_emission() for m in src.materials)

    def constant(self):
        mats = self.surface.materials
        used = np.unique(self.surface.src.face_material) if self.surface.src.face_material is not None else [0]
        if any(mats[i].emissive is not None for i in used if i < len(mats)):
            return None
        vals = {tuple(np.round(np.asarray(mats[i].emissive_factor, np.float64) * mats[i].emissive_strength, 6)) for i in used if i < len(mats)}
        if len(vals) != 1:
            return None
        lin = np.asarray(vals.pop(), np.float32)
        scale = max(1.0, float(lin.max()))
        self.meta["strength"] = scale
        from engine.mesh.source import linear_to_srgb

        return linear_to_srgb(lin / scale)

    def sample(self, face, bary):
        s = self.surface
        fac = s.material_table("emissive", lambda m: np.asarray(m.emissive_factor, np.float32) * float(m.emissive_strength))
        out = fac[s.face_mat[face]].clone()

        def apply(mi, m, sel):
            t = s.sample(m.emissive, face[sel], bary[sel], srgb=True)
            if t is not None:
                out[sel] *= t[:, :3] if t.shape[1] >= 3 else t[:, :1]

        s.per_material(face, lambda m: m.emissive, apply)
        return out.clamp_min(0.0)

    def finalize(self, values, frame=None):
        scale = max(1.0, float(values.max())) if values.numel() else 1.0
        self.meta["strength"] = scale
        return linear_to_srgb_t(values / scale)

    @classmethod
    def gltf(cls, res, material, add_texture):
        strength = float(res.meta.get("strength", 1.0))
        if res.image is None:
            from engine.mesh.source import srgb_to_linear

            lin = srgb_to_linear(res.constant) * strength
            if float(lin.max()) <= 1e-4:
                return
            peak = float(lin.max())
            if peak > 1.0:
                material.setdefault("extensions", {})["KHR_materials_emissive_strength"] = {"emissiveStrength": round(peak, 5)}
                lin = lin / peak
            material["emissiveFactor"] = [round(float(x), 5) for x in lin]
            return
        material["emissiveTexture"] = {"index": add_texture(res.image, "emissive")}
        material["emissiveFactor"] = [1.0, 1.0, 1.0]
        if strength > 1.0:
            material.setdefault("extensions", {})["KHR_materials_emissive_strength"] = {"emissiveStrength": round(strength, 5)}
