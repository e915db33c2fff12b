"""Gaussian splats as a bake source: `kiln bake splat.ply --mesh mesh.glb`.

The mesh gives the geometry (it is validated, simplified and unwrapped like
any source); the splats give the appearance: they are rendered with gsplat
from Kiln's bake views and baked by the CUDA texel gather (engine.bake.cuda).
This is how SAM 3D / TRELLIS Gaussians reach a textured mesh without
TRELLIS' fill_holes / to_glb.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.mesh.source import SourceMesh


@dataclass
class SplatBakeSource:
    splats: object  # engine.splat.types.Splats
    mesh: SourceMesh
    name: str = "splat"


def splat_source(splat_path, mesh_path) -> SplatBakeSource:
    from engine.io.load import load_source
    from engine.splat.ply import is_splat_ply, load_splat_ply

    sp = Path(splat_path)
    if not sp.exists():
        raise InputError(f"file not found: {sp}", code="missing_file")
    if not is_splat_ply(sp):
        raise InputError(f"'{sp.name}' is not a Gaussian-splat PLY", hint="--mesh is only for splat sources; bake a mesh directly", code="bad_input")
    splats = load_splat_ply(sp)
    mesh = load_source(mesh_path)
    return SplatBakeSource(splats, mesh, sp.name)


def splat_renderer_for(splats, options, device="cuda"):
    from engine.render.cameras import sphere_cameras
    from engine.splat.render import splat_view_renderer

    K = sphere_cameras([0, 0, 0], 1.0, 1, options.view_resolution)[0].K()  # intrinsics depend only on resolution and fov
    return splat_view_renderer(splats, K, device)
