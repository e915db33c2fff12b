"""3D Gaussian splats as a bake source.

    from engine.splat import Splats, load_splat_ply, is_splat_ply
    from engine.splat.render import render_splat_views   # CUDA + gsplat

``Splats`` holds activated parameters (linear scales, unit wxyz quaternions,
opacities in (0, 1), SH coefficients with the DC term first); colours
evaluate to sRGB in [0, 1] as in 3D Gaussian Splatting (C0 * dc + 0.5 + ...).
Loading and validation run anywhere (numpy); rendering needs CUDA and gsplat.
"""

from engine.splat.ply import is_splat_ply, load_splat_ply, save_splat_ply  # noqa: F401
from engine.splat.types import SH_C0, Splats  # noqa: F401
