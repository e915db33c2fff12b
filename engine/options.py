"""Options of a bake, shared by the CLI, the library API and the service.

``BakeOptions.from_dict`` rejects unknown keys and wrong types with an
InputError, so the service can answer 422 with the same message the CLI
prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from engine.errors import InputError

DEVICES = ("auto", "cuda", "cpu")
VERTEX_COLOR_INTERPOLATION = ("linear", "srgb")


@dataclass
class BakeOptions:
    faces: int = 20000
    """Target triangle count of the low-poly mesh (no simplification if the source has fewer)."""
    texture_size: int = 1024
    """Side of the square base-colour texture, in texels."""
    device: str = "auto"
    """auto | cuda | cpu. auto takes cuda when torch sees a GPU and nvdiffrast imports."""
    views: int = 100
    """Camera views around the bounding sphere (cuda gather bake and splat sources)."""
    view_resolution: int = 1024
    """Side of each bake view in pixels (cuda)."""
    supersample: int = 2
    """Source samples per texel side; > 1 fits the texture by least squares (engine.bake.fit), 1 = point sampling."""
    padding: int = 4
    """Charts are dilated by at least this many texels (no seams under mip-mapping)."""
    cage: float = 0.02
    """Ray search distance, as a fraction of the bounding-box diagonal (cpu: 'selected to active' cage)."""
    evaluate: bool = False
    """Also measure held-out PSNR (renders from views never used for baking)."""
    eval_views: int = 8
    eval_resolution: int = 512
    max_faces: int = 8_000_000
    """Inputs with more faces are refused before any GPU call (8M: a 5.2M-face scan is accepted; see benchmarks/bake.py's big section for its memory)."""
    maps: str = "auto"
    """Channels to bake: auto (every channel the source has, plus normal when the geometry changes), all, or a comma list of base,normal,orm,emissive."""
    uv_set: int = 0
    """Target mode: which UV set (TEXCOORD_n) of the target to bake into."""
    unwrap: bool = False
    """Target mode: ignore the target's UVs and make a new atlas (xatlas)."""
    vertex_color_interpolation: str = "linear"
    """How the source's vertex colours blend across a triangle: linear (glTF, Blender: COLOR_0 is linear) or
    srgb (the sRGB-encoded colours are interpolated, as TRELLIS', SAM 3D's and Hunyuan3D's own renders do).
    Choose the one the source was made to be seen with; it changes colours between the vertices only."""
    view_fit: bool = True
    """cuda: refine the base colour (and ORM) so that renders of the low-poly match renders of the source in
    the bake views, by least squares (engine.bake.viewfit); off = texel-space fit only (as the cpu backend)."""
    simplify_aggression: int = 5
    """Aggressiveness (0..10) of simplify's finishing pass, fast-simplification, which takes meshoptimizer's result
    (2x the target) the rest of the way (all of it without meshoptimizer): 5 keeps closed meshes closed (7 left
    non-manifold edges on ~40% of closed test shapes) at the same speed."""

    def validate(self) -> "BakeOptions":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise InputError(f"invalid option: {msg}", hint="see `kiln bake --help` for allowed values", code="bad_option")

        need(isinstance(self.faces, int) and 4 <= self.faces <= 10_000_000, f"faces={self.faces!r} must be an integer in 4..10000000")
        need(isinstance(self.texture_size, int) and 16 <= self.texture_size <= 8192, f"texture_size={self.texture_size!r} must be an integer in 16..8192")
        need(self.device in DEVICES, f"device={self.device!r} must be one of {', '.join(DEVICES)}")
        need(isinstance(self.views, int) and 1 <= self.views <= 1000, f"views={self.views!r} must be an integer in 1..1000")
        need(isinstance(self.view_resolution, int) and 64 <= self.view_resolution <= 4096, f"view_resolution={self.view_resolution!r} must be in 64..4096")
        need(self.supersample in (1, 2) and not isinstance(self.supersample, bool), f"supersample={self.supersample!r} must be 1 (point sampling) or 2 (least-squares fit)")
        need(self.texture_size * self.supersample <= 16384, f"texture_size x supersample = {self.texture_size * self.supersample} exceeds 16384")
        need(isinstance(self.padding, int) and 0 <= self.padding <= 64, f"padding={self.padding!r} must be an integer in 0..64")
        need(isinstance(self.cage, (int, float)) and 0.0 < float(self.cage) <= 1.0, f"cage={self.cage!r} must be in (0, 1]")
        need(isinstance(self.evaluate, bool), f"evaluate={self.evaluate!r} must be true or false")
        need(isinstance(self.eval_views, int) and 1 <= self.eval_views <= 64, f"eval_views={self.eval_views!r} must be in 1..64")
        need(isinstance(self.eval_resolution, int) and 32 <= self.eval_resolution <= 2048, f"eval_resolution={self.eval_resolution!r} must be in 32..2048")
        need(isinstance(self.max_faces, int) and self.max_faces >= 4, f"max_faces={self.max_faces!r} must be an integer >= 4")
        if isinstance(self.maps, str):
            from engine.bake.channels import parse_maps

            parse_maps(self.maps)  # raises InputError naming the bad map
        need(isinstance(self.maps, str), f"maps={self.maps!r} must be a string such as 'auto', 'all' or 'base,normal'")
        need(isinstance(self.uv_set, int) and not isinstance(self.uv_set, bool) and 0 <= self.uv_set <= 7, f"uv_set={self.uv_set!r} must be an integer in 0..7")
        need(isinstance(self.unwrap, bool), f"unwrap={self.unwrap!r} must be true or false")
        need(self.vertex_color_interpolation in VERTEX_COLOR_INTERPOLATION,
             f"vertex_color_interpolation={self.vertex_color_interpolation!r} must be one of {', '.join(VERTEX_COLOR_INTERPOLATION)}")
        need(isinstance(self.view_fit, bool), f"view_fit={self.view_fit!r} must be true or false")
        need(isinstance(self.simplify_aggression, int) and 0 <= self.simplify_aggression <= 10, "simplify_aggression must be in 0..10")
        return self

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, ignore: tuple[str, ...] = ()) -> "BakeOptions":
        data = dict(data or {})
        for k in ignore:
            data.pop(k, None)
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InputError(
                f"unknown option(s): {', '.join(unknown)}",
                hint=f"allowed: {', '.join(sorted(names))}",
                code="bad_option",
            )
        kwargs = {}
        for k, v in data.items():
            default = names[k].default
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    raise InputError(f"invalid option: {k}={v!r} must be true or false", code="bad_option")
            elif isinstance(default, int):
                if isinstance(v, bool) or not isinstance(v, int):
                    if isinstance(v, float) and v.is_integer():
                        v = int(v)
                    else:
                        raise InputError(f"invalid option: {k}={v!r} must be an integer", code="bad_option")
            elif isinstance(default, float):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise InputError(f"invalid option: {k}={v!r} must be a number", code="bad_option")
                v = float(v)
            elif isinstance(default, str):
                if not isinstance(v, str):
                    raise InputError(f"invalid option: {k}={v!r} must be a string", code="bad_option")
                v = v.lower()
            kwargs[k] = v
        return cls(**kwargs).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
