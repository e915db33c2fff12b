"""Bake channels: what is transferred from the source to the target's texture.

A backend finds *hits* (source face + barycentrics) for the target's texels;
a channel turns hits into values (``sample``), turns the blended values of
each texel into what its texture stores (``finalize``, e.g. world normals into
tangent space), and says how its texture or constant enters the glTF material
(``gltf``). Adding a channel (AO, curvature, thickness, ID) is one module
with a ``Channel`` subclass and one line in ``REGISTRY`` below (name ->
"module:Class", imported on first use, so option checking in the torch-free
service process can list the channels without importing torch).

Channels:
  base      RGBA: sRGB colour (factor x texture x vertex colour), alpha.
  normal    tangent-space normal map of the source's shading normal (its
            geometry and its own normal map) in the target's MikkTSpace frame.
  orm       occlusion, roughness, metallic packed as glTF expects (R, G, B).
  emissive  emission colour x strength; strengths above 1 go to
            KHR_materials_emissive_strength.
"""

from __future__ import annotations

import importlib

from engine.errors import InputError

REGISTRY: dict[str, str] = {
    "base": "engine.bake.channels.base:BaseChannel",
    "normal": "engine.bake.channels.normal:NormalChannel",
    "orm": "engine.bake.channels.orm:OrmChannel",
    "emissive": "engine.bake.channels.emissive:EmissiveChannel",
}
ALL = tuple(REGISTRY)

__all__ = ["REGISTRY", "ALL", "channel_class", "ChannelSet", "parse_maps", "select", "evaluate_points"]


def channel_class(name: str):
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def parse_maps(spec: str | None) -> tuple[str, ...] | None:
    """'auto' (or empty) -> None; 'all' -> every channel; 'base,normal' -> those, in registry order."""
    s = (spec or "auto").strip().lower()
    if s == "auto":
        return None
    if s == "all":
        return ALL
    names = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in names if x not in REGISTRY]
    if bad or not names:
        raise InputError(
            f"invalid option: maps={spec!r}: unknown map(s) {', '.join(bad) or '(none given)'}",
            hint=f"use auto, all, or a comma list of {', '.join(ALL)}",
            code="bad_option",
        )
    if "base" not in names:
        names.insert(0, "base")  # the base colour (and alpha) is always baked: the material needs it
    return tuple(n for n in ALL if n in names)


def select(spec: str | None, src, *, new_geometry: bool) -> tuple[str, ...]:
    """Channels to bake: those asked for, or (auto) every channel the source has, plus normal whenever the
    target's geometry differs from the source (simplified, or the artist's own low-poly)."""
    chosen = parse_maps(spec)
    if chosen is not None:
        return chosen
    return tuple(n for n in REGISTRY if channel_class(n).present(src) or (n == "normal" and new_geometry))


class ChannelSet:
    """Several channels evaluated together: one (K, sum of sizes) array per hit batch."""

    def __init__(self, channels, surface):
        """``channels``: names or Channel instances."""
        self.channels = [channel_class(c)(surface) if isinstance(c, str) else c for c in channels]
        self.surface = surface
        self.slices = {}
        o = 0
        for c in self.channels:
            self.slices[c.name] = slice(o, o + c.size)
            o += c.size
        self.size = o

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]

    def sample(self, face, bary):
        import torch

        return torch.cat([c.sample(face, bary) for c in self.channels], 1)


def evaluate_points(src, name: str, face_idx, bary):
    """One channel's raw values at hits, on the CPU (numpy in, numpy out): the renderers' and checks' shading."""
    import numpy as np
    import torch

    from engine.bake.surface import surface_for

    surf = surface_for(src, "cpu")
    with torch.no_grad():
        f = torch.as_tensor(np.asarray(face_idx, np.int64))
        b = torch.as_tensor(np.asarray(bary, np.float32))
        if f.numel() == 0:
            return np.zeros((0, channel_class(name).size), np.float32)
        return channel_class(name)(surf).sample(f, b).numpy()
