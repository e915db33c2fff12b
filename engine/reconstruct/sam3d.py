"""`sam3d`: adapter to facebookresearch/sam-3d-objects (SAM 3D Objects).

It runs SAM 3D the way its README does::

    sys.path.append("notebook"); from inference import Inference
    inference = Inference("checkpoints/hf/pipeline.yaml", compile=False)
    output = inference(image, mask, seed=42)

and converts ``output`` for Kiln's own stages (validation, simplify, unwrap,
bake): no TRELLIS ``to_glb``, no ``fill_holes``. The keys used:

  * ``output["mesh"][0]``: FlexiCubes ``MeshExtractResult`` (torch ``vertices``
    (V, 3), ``faces`` (F, 3), ``vertex_attrs`` (V, >=3) colour first), in the
    object's local Z-up frame; else ``output["glb"]`` (trimesh, already Y-up,
    vertex colours) when the raw mesh is absent.
  * ``output["gaussian"][0]`` (or ``output["gs"]``): TRELLIS ``Gaussian`` with
    ``get_xyz``, ``get_scaling``, ``get_rotation`` (wxyz), ``get_opacity``,
    ``_features_dc`` (N, 1, 3), ``_features_rest``; same local frame as the mesh.
  * ``output["rotation"]`` (1, 4) wxyz, layout pose local -> PyTorch3D camera
    (x left, y up, z forward), applied PyTorch3D-style as ``p @ R(q)``.

Frames (``frame`` option): ``camera`` (default) turns the object the way the
photo sees it: +Y up, the side facing the camera towards +Z, like ``inflate``;
``canonical`` keeps SAM 3D's own orientation (Z-up -> Y-up as its GLB export
does). Either way the object is scaled to unit height, bottom at Y = 0,
centred in X and Z. Vertex colours are taken as sRGB and stored linear.

Configuration: ``config`` option or ``KILN_SAM3D_CONFIG`` (path to
``checkpoints/<tag>/pipeline.yaml``); ``repo`` option or ``KILN_SAM3D_REPO``
(the sam-3d-objects checkout holding ``notebook/inference.py``; default: two
folders above the config, i.e. the checkout the checkpoints were downloaded
into). SAM 3D is imported lazily, in the process that runs the job, with the
environment guarded: its inference.py sets CUDA_HOME from CONDA_PREFIX and
imports gradio, kaolin and pytorch3d at import time; Kiln supplies a
CONDA_PREFIX if there is none, turns import failures into a BackendError
naming the missing package, and restores the environment afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from engine.errors import BackendError, InputError
from engine.mesh.source import SourceMesh, srgb_to_linear
from engine.reconstruct.base import ReconBackend, ReconResult, validate_inputs
from engine.splat.types import Splats, quat_to_matrix

ENV_CONFIG = "KILN_SAM3D_CONFIG"
ENV_REPO = "KILN_SAM3D_REPO"
INSTALL_HINT = (
    "install SAM 3D Objects (https://github.com/facebookresearch/sam-3d-objects, doc/setup.md: "
    "pip install -e '.[dev]' '.[p3d]' '.[inference]'), download its checkpoints, then set "
    f"{ENV_CONFIG}=/path/to/sam-3d-objects/checkpoints/hf/pipeline.yaml; or use --backend inflate"
)

# local Z-up -> Y-up, as SAM 3D / TRELLIS's GLB export: (x, y, z) -> (x, z, -y)
ZUP_TO_YUP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
# PyTorch3D camera (x left, y up, z forward) -> glTF view frame (x right, y up, z towards the viewer)
P3D_TO_VIEW = np.diag([-1.0, 1.0, -1.0])

_CACHE: dict = {}
_LOCK = threading.Lock()


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "numpy"):
        try:
            return np.asarray(x.numpy())
        except Exception:
            return np.asarray(x.float().numpy())
    return np.asarray(x)


@contextlib.contextmanager
def guarded_env():
    """Run SAM 3D's import/inference with CONDA_PREFIX present, then restore os.environ."""
    saved = dict(os.environ)
    try:
        if not os.environ.get("CONDA_PREFIX"):
            cuda_home = os.environ.get("CUDA_HOME")
            if not cuda_home:
                try:
                    from torch.utils.cpp_extension import CUDA_HOME as cuda_home  # may be None
                except Exception:
                    cuda_home = None
            os.environ["CONDA_PREFIX"] = cuda_home or sys.prefix
        yield
    finally:
        for k in list(os.environ):
            if k not in saved:
                del os.environ[k]
        for k, v in saved.items():
            if os.environ.get(k) != v:
                os.environ[k] = v


def resolve_paths(config: Optional[str], repo: Optional[str]) -> tuple[Path, Path]:
    cfg = config or os.environ.get(ENV_CONFIG)
    if not cfg:
        raise BackendError(
            "the sam3d backend is not configured: no SAM 3D checkpoint config given",
            hint=INSTALL_HINT,
            code="sam3d_unavailable",
        )
    cfg_p = Path(cfg).expanduser()
    if cfg_p.is_dir():
        cfg_p = cfg_p / "pipeline.yaml"
    if not cfg_p.is_file():
        raise BackendError(f"SAM 3D config not found: {cfg_p}", hint=f"point {ENV_CONFIG} at checkpoints/<tag>/pipeline.yaml", code="sam3d_unavailable")
    r = repo or os.environ.get(ENV_REPO)
    repo_p = Path(r).expanduser() if r else cfg_p.resolve().parents[2]
    if not (repo_p / "notebook" / "inference.py").is_file():
        raise BackendError(
            f"SAM 3D's notebook/inference.py not found under {repo_p}",
            hint=f"set {ENV_REPO} to the sam-3d-objects checkout (the folder holding notebook/inference.py)",
            code="sam3d_unavailable",
        )
    return cfg_p, repo_p


def load_inference(config: Optional[str] = None, repo: Optional[str] = None, compile: bool = False):
    """Import SAM 3D's notebook/inference.py and build ``Inference(config)``, cached per config."""
    cfg_p, repo_p = resolve_paths(config, repo)
    key = (str(cfg_p.resolve()), str(repo_p.resolve()), bool(compile))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        path = repo_p / "notebook" / "inference.py"
        added = []
        for d in (str(repo_p / "notebook"), str(repo_p)):
            if d not in sys.path:
                sys.path.insert(0, d)
                added.append(d)
        try:
            with guarded_env():
                spec = importlib.util.spec_from_file_location("kiln_sam3d_inference", path)
                mod = importlib.util.module_from_spec(spec)
                try:
                    spec.loader.exec_module(mod)
                except ModuleNotFoundError as e:
                    raise BackendError(
                        f"SAM 3D cannot be imported: Python package '{e.name}' is not installed",
                        hint=INSTALL_HINT,
                        code="sam3d_unavailable",
                    ) from None
                except (ImportError, OSError, KeyError, RuntimeError, AttributeError) as e:
                    raise BackendError(
                        f"SAM 3D cannot be imported ({e.__class__.__name__}: {e})",
                        hint=INSTALL_HINT,
                        code="sam3d_unavailable",
                    ) from None
                if not hasattr(mod, "Inference"):
                    raise BackendError(f"{path} defines no Inference class: not a SAM 3D Objects checkout", hint=INSTALL_HINT, code="sam3d_unavailable")
                try:
                    inf = mod.Inference(str(cfg_p), compile=compile)
                except BackendError:
                    raise
                except Exception as e:
                    raise BackendError(
                        f"SAM 3D failed to load its checkpoints from {cfg_p.parent} ({e.__class__.__name__}: {e})",
                        hint="check that the checkpoints are complete (doc/setup.md, 'Getting Checkpoints') and the GPU has enough memory",
                        code="sam3d_load_failed",
                    ) from None
        finally:
            for d in added:
                with contextlib.suppress(ValueError):
                    sys.path.remove(d)
        _CACHE[key] = inf
        return inf


# ---------------------------------------------------------------------------------- output conversion


def _mesh_arrays(output: dict) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], str]:
    """-> (vertices in the LOCAL Z-up frame, faces, sRGB colours (V, 3) or None, which key)."""
    meshes = output.get("mesh")
    m = meshes[0] if isinstance(meshes, (list, tuple)) and meshes else meshes
    if m is not None and hasattr(m, "vertices") and hasattr(m, "faces"):
        v = _np(m.vertices).astype(np.float64)
        f = _np(m.faces).astype(np.int64)
        attrs = getattr(m, "vertex_attrs", None)
        col = _np(attrs)[:, :3].astype(np.float64) if attrs is not None else None
        return v, f, col, "mesh"
    glb = output.get("glb")
    if glb is not None and hasattr(glb, "vertices"):
        vy = np.asarray(glb.vertices, np.float64)
        v = vy @ ZUP_TO_YUP  # inverse of the Y-up rotation (orthogonal: inverse = transpose)
        f = np.asarray(glb.faces, np.int64)
        col = None
        vc = getattr(getattr(glb, "visual", None), "vertex_colors", None)
        if vc is not None and len(vc) == len(vy):
            col = np.asarray(vc, np.float64)[:, :3] / 255.0
        return v, f, col, "glb"
    raise BackendError("SAM 3D returned no mesh (neither output['mesh'] nor output['glb'])", code="sam3d_failed")


def _gaussians(output: dict) -> Optional[Splats]:
    g = output.get("gaussian")
    g = g[0] if isinstance(g, (list, tuple)) and g else g
    if g is None:
        g = output.get("gs")
    if g is None or not hasattr(g, "get_xyz"):
        return None
    means = _np(g.get_xyz).astype(np.float32).reshape(-1, 3)
    scales = _np(g.get_scaling).astype(np.float32).reshape(-1, 3)
    quats = _np(g.get_rotation).astype(np.float32).reshape(-1, 4)
    opac = _np(g.get_opacity).astype(np.float32).reshape(-1)
    dc = _np(g._features_dc).astype(np.float32).reshape(len(means), -1, 3)
    rest = getattr(g, "_features_rest", None)
    sh = dc if rest is None else np.concatenate([dc, _np(rest).astype(np.float32).reshape(len(means), -1, 3)], axis=1)
    k = sh.shape[1]
    if int(round(np.sqrt(k))) ** 2 != k:
        sh = sh[:, :1]
    qn = np.linalg.norm(quats, axis=1, keepdims=True)
    ok = np.isfinite(means).all(1) & np.isfinite(scales).all(1) & (qn[:, 0] > 0) & np.isfinite(opac)
    s = Splats(means, scales, quats / np.maximum(qn, 1e-12), opac, sh, name="sam3d", info={"gaussians_in": int(len(means))})
    return s.subset(ok) if not ok.all() else s


def frame_rotation(output: dict, frame: str) -> tuple[np.ndarray, str]:
    """Rotation (3, 3), column convention, from SAM 3D's local frame to Kiln's output frame."""
    if frame == "camera":
        q = output.get("rotation")
        if q is not None:
            qv = _np(q).astype(np.float64).reshape(-1)[:4]
            if qv.shape == (4,) and np.all(np.isfinite(qv)) and np.linalg.norm(qv) > 0:
                Rq = quat_to_matrix(qv[None])[0]
                return P3D_TO_VIEW @ Rq.T, "camera"
        return ZUP_TO_YUP, "canonical (no layout pose in the output)"
    return ZUP_TO_YUP, "canonical"


def convert_output(output: dict, frame: str = "camera") -> tuple[SourceMesh, Optional[Splats], dict]:
    """SAM 3D's output dict -> (SourceMesh, Splats or None, info), both in Kiln's frame."""
    if not isinstance(output, dict):
        raise BackendError(f"SAM 3D returned {type(output).__name__}, expected a dict", code="sam3d_failed")
    v, f, col, mesh_key = _mesh_arrays(output)
    if len(v) == 0 or len(f) == 0:
        raise BackendError("SAM 3D produced an empty mesh", hint="try another seed or a cleaner mask", code="sam3d_failed")
    if f.ndim != 2 or f.shape[1] != 3 or f.min() < 0 or f.max() >= len(v):
        raise BackendError(f"SAM 3D mesh has invalid faces (shape {f.shape}, index range {f.min()}..{f.max()} for {len(v)} vertices)", code="sam3d_failed")
    A, frame_used = frame_rotation(output, frame)
    vw = v @ A.T
    lo, hi = vw.min(0), vw.max(0)
    height = float(hi[1] - lo[1])
    if not np.isfinite(height) or height <= 0:
        raise BackendError("SAM 3D mesh is degenerate (zero height)", code="sam3d_failed")
    s = 1.0 / height
    t = -s * np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])
    verts = (s * vw + t).astype(np.float32)
    vcol = None
    if col is not None:
        vcol = srgb_to_linear(np.clip(col, 0.0, 1.0)).astype(np.float32)
    mesh = SourceMesh(vertices=verts, faces=f.astype(np.int32), vertex_color=vcol, name="sam3d")
    splats = _gaussians(output)
    if splats is not None:
        splats = splats.transformed(A, t, s)
        splats.name = "sam3d"
    info = {
        "mesh_from": f"output['{mesh_key}']",
        "frame": frame_used,
        "mesh_vertices": int(len(verts)),
        "mesh_faces": int(len(f)),
        "vertex_colors": vcol is not None,
        "gaussians": None if splats is None else splats.n,
        "normalise_scale": float(s),
    }
    for k in ("rotation", "translation", "scale"):
        if output.get(k) is not None:
            info[f"pose_{k}"] = [round(float(x), 6) for x in _np(output[k]).reshape(-1)]
    return mesh, splats, info


class Sam3DBackend(ReconBackend):
    name = "sam3d"
    option_defaults = {
        "config": None,  # checkpoints/<tag>/pipeline.yaml (else $KILN_SAM3D_CONFIG)
        "repo": None,  # sam-3d-objects checkout (else $KILN_SAM3D_REPO, else derived from config)
        "seed": 42,
        "frame": "camera",  # camera | canonical
        "compile": False,
        "use_gaussians": True,  # bake appearance from the Gaussians (CUDA) rather than vertex colours
    }

    def check_options(self, options):
        o = super().check_options(options)
        if o["frame"] not in ("camera", "canonical"):
            raise InputError(f"invalid sam3d option: frame={o['frame']!r} must be camera or canonical", code="bad_option")
        if not isinstance(o["seed"], int) or isinstance(o["seed"], bool):
            raise InputError(f"invalid sam3d option: seed={o['seed']!r} must be an integer", code="bad_option")
        return o

    def reconstruct(self, rgb, mask, options=None, progress=None) -> ReconResult:
        o = self.check_options(options)
        validate_inputs(rgb, mask)
        resolve_paths(o["config"], o["repo"])  # configuration errors first, before any GPU check
        if not cuda_available():
            raise BackendError(
                "the sam3d backend needs an NVIDIA GPU (SAM 3D Objects asks for 32 GB of VRAM); torch sees none",
                hint="run the reconstruction on a GPU worker, or use --backend inflate",
                code="sam3d_unavailable",
            )
        t0 = time.perf_counter()
        if progress:
            progress(0.02, "loading SAM 3D")
        inf = load_inference(o["config"], o["repo"], compile=bool(o["compile"]))
        t_load = time.perf_counter() - t0
        if progress:
            progress(0.2, "SAM 3D inference")
        t0 = time.perf_counter()
        image = np.ascontiguousarray(rgb[:, :, :3], dtype=np.uint8)
        m = np.ascontiguousarray(mask.astype(bool))
        try:
            with guarded_env():
                output = inf(image, m, seed=o["seed"])
        except BackendError:
            raise
        except Exception as e:
            msg = str(e)
            if "out of memory" in msg.lower():
                raise BackendError("SAM 3D ran out of GPU memory", hint="SAM 3D needs about 32 GB of VRAM; free the GPU or use --backend inflate", code="gpu_oom") from None
            raise BackendError(f"SAM 3D inference failed ({e.__class__.__name__}: {msg})", code="sam3d_failed") from None
        t_inf = time.perf_counter() - t0
        if progress:
            progress(0.9, "converting SAM 3D output")
        mesh, splats, info = convert_output(output, o["frame"])
        if not o["use_gaussians"]:
            splats = None
        info["seed"] = o["seed"]
        info["timings"] = {"load": round(t_load, 4), "inference": round(t_inf, 4)}
        if progress:
            progress(1.0, f"{info['mesh_faces']} faces, {info['gaussians']} gaussians")
        return ReconResult(mesh=mesh, splats=splats, front_view=None, info=info)
