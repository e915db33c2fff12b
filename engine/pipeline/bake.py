"""The bake pipeline: load -> validate -> simplify -> unwrap -> bake -> dilate -> export (-> evaluate)."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from engine import __version__
from engine.mesh.source import SourceMesh
from engine.options import BakeOptions
from engine.progress import CancelCheck, Progress, ProgressCallback

STAGES = {"load": 5, "validate": 1, "simplify": 8, "unwrap": 15, "bake": 50, "dilate": 5, "export": 5, "evaluate": 11}
# "dilate" covers the least-squares texture fit (supersample > 1) and the fill/dilation


@dataclass
class BakeResult:
    output: Optional[Path]
    report: dict
    vertices: np.ndarray = field(repr=False, default=None)  # (n, 3) float32, source frame
    faces: np.ndarray = field(repr=False, default=None)  # (m, 3) int32
    uv: np.ndarray = field(repr=False, default=None)  # (n, 2) float32, glTF convention
    texture: np.ndarray = field(repr=False, default=None)  # (S, S, 3) uint8 sRGB
    coverage: np.ndarray = field(repr=False, default=None)  # (S, S) bool, texels the bake saw


def bake(
    source: Union[str, os.PathLike, SourceMesh],
    output: Union[str, os.PathLike, None] = None,
    options: Optional[BakeOptions] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
) -> BakeResult:
    """Bake ``source`` (a path or a SourceMesh) into a low-poly textured GLB at ``output``.

    Raises InputError (bad file/arrays/options), BackendError, CancelledError.
    """
    from engine.io.load import load_source

    options = (options or BakeOptions()).validate()
    if output is not None:
        from engine.io import require_writable

        require_writable(output)
    stages = dict(STAGES)
    if not options.evaluate:
        stages.pop("evaluate")
    prog = Progress(stages, progress, cancel)
    prog.begin("load")
    splats = None
    if isinstance(source, SourceMesh):
        src = source
        source_name = src.name
    elif type(source).__name__ == "SplatBakeSource":
        splats, src, source_name = source.splats, source.mesh, source.name
    else:
        src = load_source(source, options=options)
        source_name = Path(source).name
    prog.end()
    return bake_mesh(src, output, options, prog, source_name=source_name, splats=splats)


def bake_mesh(src, output, options: BakeOptions, prog: Progress, source_name: str = "source", splats=None) -> BakeResult:
    from engine import backend as backend_mod
    from engine.bake import bake_texture
    from engine.bake.dilate import fill_and_dilate
    from engine.io.export import write_glb
    from engine.mesh.simplify import orient_outward, simplify
    from engine.mesh.validate import validate_source
    from engine.uv.unwrap import unwrap

    t_start = time.perf_counter()
    prog.begin("validate")
    src, vreport = validate_source(src, max_faces=options.max_faces)
    be = backend_mod.resolve(options.device)
    if splats is not None and be.name != "cuda":
        from engine.errors import BackendError

        raise BackendError(
            "splat sources are rendered with gsplat and need the CUDA backend",
            hint="run on a machine with an NVIDIA GPU, torch with CUDA, nvdiffrast and gsplat (see `kiln doctor`)",
            code="cuda_unavailable",
        )
    prog.end()

    prog.begin("simplify", f"{src.n_faces} -> {options.faces} faces")
    low_v, low_f = simplify(src.vertices, src.faces, options.faces, aggression=options.simplify_aggression, progress=prog)
    low_f, flipped = orient_outward(low_v, low_f)
    prog.end()

    prog.begin("unwrap", f"xatlas on {len(low_f)} faces")
    uv_v, uv_f, uv, vmap = unwrap(low_v, low_f, texture_size=options.texture_size, padding=options.padding)
    prog.end()

    prog.begin("bake", f"{be.name} backend")
    k = options.supersample if options.texture_size * options.supersample <= 8192 else 1  # 8K textures: point sampling
    sample_opts = dataclasses.replace(options, texture_size=options.texture_size * k)
    if splats is not None:
        from engine.bake.cuda import bake_cuda
        from engine.pipeline.splat import splat_renderer_for

        texture, coverage, bake_info = bake_cuda(src, uv_v, uv_f, uv, sample_opts, prog, view_renderer=splat_renderer_for(splats, options))
        bake_info["source"] = f"gaussian splats ({splats.n:,})"
    else:
        texture, coverage, bake_info = bake_texture(src, uv_v, uv_f, uv, sample_opts, be, prog)
    bake_info["supersample"] = k
    prog.end()

    prog.begin("dilate")
    if k > 1:
        from engine.bake.fit import fit_texture

        t_fit = time.perf_counter()
        with torch.no_grad():
            texture, coverage = fit_texture(torch.as_tensor(texture).to(be.device), torch.as_tensor(coverage).to(be.device), k)
        bake_info["fit_seconds"] = round(time.perf_counter() - t_fit, 4)
        coverage_frac = float(coverage.float().mean())
    else:
        coverage_frac = float(np.asarray(coverage).mean())
    texture_u8 = fill_and_dilate(texture, coverage, padding=options.padding, device=be.device)
    prog.end()

    prog.begin("export")
    out_path = None
    if output is not None:
        out_path = Path(output)
        try:
            write_glb(out_path, uv_v, uv_f, uv, texture_u8, name=Path(source_name).stem or "kiln")
        except OSError as e:
            from engine.errors import KilnError

            raise KilnError(f"cannot write '{out_path}': {e.strerror or e}", hint="check free disk space and permissions of the output folder", code="write_failed")
    prog.end()

    report = {
        "kiln_version": __version__,
        "source": source_name,
        "backend": be.name,
        "backend_reason": be.reason,
        "texture_size": options.texture_size,
        "faces_in": int(vreport["faces_in"]),
        "faces_valid": int(src.n_faces),
        "faces_dropped": int(vreport["faces_dropped"]),
        "faces_out": int(len(uv_f)),
        "vertices_out": int(len(uv_v)),
        "appearance": src.appearance_kind(),
        "winding_flipped": bool(flipped),
        "coverage": coverage_frac,
        "bake": bake_info,
        "options": options.to_dict(),
    }
    if options.evaluate:
        from engine.evaluate import heldout_psnr

        prog.begin("evaluate")
        report["evaluate"] = heldout_psnr(src, uv_v, uv_f, uv, texture_u8, options, be, prog, splats=splats)
        report["psnr"] = report["evaluate"]["psnr"]
        prog.end()
    report["timings"] = {k: round(v, 4) for k, v in prog.finish().items()}
    report["total_seconds"] = round(time.perf_counter() - t_start + report["timings"].get("load", 0.0), 4)
    return BakeResult(out_path, report, uv_v, uv_f, uv, texture_u8, np.asarray(coverage.cpu() if torch.is_tensor(coverage) else coverage))
