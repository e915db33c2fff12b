"""CONTRACT TEST of the sam3d adapter against a FAKE SAM 3D Objects.

SAM 3D cannot run here (gated multi-GB checkpoints, a 32 GB GPU). This test
builds a fake sam-3d-objects checkout whose ``notebook/inference.py`` mimics
the real one's import-time behaviour (``os.environ["CUDA_HOME"] =
os.environ["CONDA_PREFIX"]``, heavy imports) and its ``Inference(config)`` /
``inference(image, mask, seed=...)`` API, returning the real output structure:
``mesh`` (list of FlexiCubes MeshExtractResult: torch vertices/faces/
vertex_attrs, local Z-up frame), ``gaussian`` (list of TRELLIS Gaussian:
get_xyz/get_scaling/get_rotation/get_opacity/_features_dc/_features_rest),
``gs``, ``glb`` (trimesh, Y-up, vertex colours), ``rotation``/``translation``/
``scale`` (layout pose) and ``pointmap``. It checks how Kiln feeds the model
and converts what comes back; it does NOT show that SAM 3D itself runs.
"""

from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import pytest

from engine.errors import BackendError
from engine.mesh.source import srgb_to_linear
from engine.reconstruct import sam3d
from engine.splat.types import SH_C0, quat_to_matrix

FAKE_INFERENCE = textwrap.dedent(
    '''
    # Fake of facebookresearch/sam-3d-objects notebook/inference.py (structure only).
    import os

    os.environ["CUDA_HOME"] = os.environ["CONDA_PREFIX"]  # as the real file does, at import time
    os.environ["LIDRA_SKIP_INIT"] = "true"

    import numpy as np
    import torch
    import trimesh
    {extra_import}

    QUAT = {quat!r}  # layout rotation, wxyz (PyTorch3D convention)
    DENSE = {dense!r}


    class MeshExtractResult:
        def __init__(self, vertices, faces, vertex_attrs=None, res=64):
            self.vertices = vertices
            self.faces = faces.long()
            self.vertex_attrs = vertex_attrs
            self.res = res
            self.success = vertices.shape[0] != 0 and faces.shape[0] != 0


    class Gaussian:
        """TRELLIS-style storage: normalised xyz in an aabb, biased/activated parameters."""

        def __init__(self, xyz, scales, rots, opacities, dc):
            self.aabb = torch.tensor([-0.5, -0.5, -0.5, 1.0, 1.0, 1.0])
            self.scale_bias = 0.01
            self._xyz = (xyz - self.aabb[None, :3]) / self.aabb[None, 3:]
            self._scaling = torch.log(scales) - np.log(self.scale_bias)
            self._rotation = rots * 3.0  # not normalised, as stored
            self._opacity = torch.log(opacities / (1 - opacities))
            self._features_dc = dc[:, None, :]
            self._features_rest = None

        @property
        def get_xyz(self):
            return self._xyz * self.aabb[None, 3:] + self.aabb[None, :3]

        @property
        def get_scaling(self):
            return torch.exp(self._scaling + np.log(self.scale_bias))

        @property
        def get_rotation(self):
            return torch.nn.functional.normalize(self._rotation)

        @property
        def get_opacity(self):
            return torch.sigmoid(self._opacity)[:, None]


    class Inference:
        def __init__(self, config_file, compile=False):
            if not os.path.isfile(config_file):
                raise FileNotFoundError(config_file)
            self.config_file = config_file
            self.calls = []

        def __call__(self, image, mask, seed=None, pointmap=None):
            self.calls.append(dict(image=image, mask=mask, seed=seed, env_conda=os.environ.get("CONDA_PREFIX")))
            box = trimesh.creation.box(extents=(0.4, 0.2, 0.8))  # tall along local +Z (SAM 3D is Z-up)
            v = torch.tensor(box.vertices, dtype=torch.float32)
            f = torch.tensor(box.faces, dtype=torch.int64)
            col = torch.stack([0.2 + 0.6 * (v[:, 2] + 0.4) / 0.8, 0.3 + 0 * v[:, 0], 0.9 - 0.5 * (v[:, 2] + 0.4) / 0.8], 1)
            attrs = torch.cat([col, torch.zeros_like(col)], 1)  # colour + normal channels
            mesh = MeshExtractResult(v, f, attrs)
            if DENSE:  # a Gaussian surface: small opaque Gaussians on a grid over every box face
                g = (torch.arange(40, dtype=torch.float32) + 0.5) / 40 - 0.5
                a, b = torch.meshgrid(g, g, indexing="ij")
                a, b = a.reshape(-1), b.reshape(-1)
                ext = torch.tensor([0.4, 0.2, 0.8])
                pts = []
                for axis in range(3):
                    o = [i for i in range(3) if i != axis]
                    for sign in (-0.5, 0.5):
                        q = torch.zeros(len(a), 3)
                        q[:, axis] = sign * ext[axis]
                        q[:, o[0]] = a * ext[o[0]]
                        q[:, o[1]] = b * ext[o[1]]
                        pts.append(q)
                gp = torch.cat(pts)
                gcol = torch.stack([0.2 + 0.6 * (gp[:, 2] + 0.4) / 0.8, 0.3 + 0 * gp[:, 0], 0.9 - 0.5 * (gp[:, 2] + 0.4) / 0.8], 1)
                n = len(gp)
                gs = Gaussian(gp, torch.full((n, 3), 0.012), torch.tensor([[1.0, 0, 0, 0]] * n), torch.full((n,), 0.99), (gcol - 0.5) / {c0!r})
            else:  # one Gaussian per mesh vertex, turned and stretched, to check the conversion
                n = len(v)
                rots = torch.tensor([[0.9238795, 0.0, 0.3826834, 0.0]] * n)  # 45 deg about local y
                scales = torch.tensor([[0.05, 0.02, 0.01]] * n)
                gs = Gaussian(v.clone(), scales, rots, torch.full((n,), 0.9), (col - 0.5) / {c0!r})
            glb = trimesh.Trimesh(v.numpy() @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]), f.numpy(), process=False)
            glb.visual.vertex_colors = (col.numpy() * 255).astype(np.uint8)
            return dict(
                mesh=[mesh],
                gaussian=[gs],
                gs=gs,
                glb=glb,
                rotation=torch.tensor([QUAT]),
                translation=torch.tensor([[0.1, -0.2, 2.5]]),
                scale=torch.tensor([[0.7, 0.7, 0.7]]),
                pointmap=torch.zeros(4, 4, 3),
                pointmap_colors=torch.zeros(4, 4, 3),
            )
    '''
)

# a layout rotation: 90 degrees about x (wxyz), so the camera-frame result differs from the canonical one
QUAT = [float(np.cos(np.pi / 4)), float(np.sin(np.pi / 4)), 0.0, 0.0]


def make_fake_repo(root, extra_import: str = "", quat=QUAT, dense: bool = False):
    (root / "notebook").mkdir(parents=True)
    (root / "checkpoints" / "hf").mkdir(parents=True)
    (root / "notebook" / "inference.py").write_text(FAKE_INFERENCE.format(extra_import=extra_import, quat=list(quat), c0=SH_C0, dense=dense))
    cfg = root / "checkpoints" / "hf" / "pipeline.yaml"
    cfg.write_text("# fake\n")
    return cfg


@pytest.fixture(autouse=True)
def _isolate(monkeypatch):
    sam3d._CACHE.clear()
    monkeypatch.delenv(sam3d.ENV_CONFIG, raising=False)
    monkeypatch.delenv(sam3d.ENV_REPO, raising=False)
    monkeypatch.setattr(sam3d, "cuda_available", lambda: True)  # the fake needs no GPU
    yield
    sam3d._CACHE.clear()


def _inputs():
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = 200
    mask = np.zeros((48, 64), bool)
    mask[10:40, 20:50] = True
    return rgb, mask


def test_env_guard_and_inputs(tmp_path, monkeypatch):
    cfg = make_fake_repo(tmp_path / "sam-3d-objects")
    monkeypatch.delenv("CONDA_PREFIX", raising=False)  # the real inference.py would raise KeyError
    monkeypatch.setenv("CUDA_HOME", "/opt/my-cuda")
    monkeypatch.delenv("LIDRA_SKIP_INIT", raising=False)
    before = dict(os.environ)
    path_before = list(sys.path)
    rgb, mask = _inputs()
    res = sam3d.Sam3DBackend().reconstruct(rgb, mask, {"config": str(cfg), "seed": 7})
    assert dict(os.environ) == before, "SAM 3D's environment changes must not leak"
    assert sys.path == path_before
    inf = sam3d.load_inference(str(cfg))
    call = inf.calls[-1]
    assert call["env_conda"] == "/opt/my-cuda"  # CONDA_PREFIX supplied from CUDA_HOME during the call
    assert call["image"].dtype == np.uint8 and call["image"].shape == (48, 64, 3) and np.array_equal(call["image"], rgb)
    assert call["mask"].dtype == bool and call["mask"].shape == (48, 64) and np.array_equal(call["mask"], mask)
    assert call["seed"] == 7
    assert res.front_view is None  # SAM 3D's shape is not pixel-aligned with the photo
    assert res.info["seed"] == 7 and res.info["mesh_from"] == "output['mesh']"


def test_canonical_frame_conversion(tmp_path):
    cfg = make_fake_repo(tmp_path / "repo")
    rgb, mask = _inputs()
    res = sam3d.Sam3DBackend().reconstruct(rgb, mask, {"config": str(cfg), "frame": "canonical"})
    m = res.mesh
    assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int32 and m.vertex_color.dtype == np.float32
    ext = m.vertices.max(0) - m.vertices.min(0)
    # local box (0.4, 0.2, 0.8) Z-up -> Y-up, unit height: (0.5, 1, 0.25)
    assert np.allclose(ext, [0.5, 1.0, 0.25], atol=1e-5)
    assert m.vertices[:, 1].min() == pytest.approx(0.0, abs=1e-6)
    assert np.allclose((m.vertices.max(0) + m.vertices.min(0))[[0, 2]], 0.0, atol=1e-6)
    # the top of the box (local z = +0.4) is reddest: colour channel 0 grows with height, stored linear
    top = m.vertices[:, 1] > 0.5
    assert m.vertex_color[top, 0].min() > m.vertex_color[~top, 0].max()
    assert np.allclose(m.vertex_color[top, 0], srgb_to_linear(np.float32(0.8)), atol=1e-4)
    assert res.info["frame"] == "canonical"


def test_camera_frame_mesh_and_gaussians_move_together(tmp_path):
    cfg = make_fake_repo(tmp_path / "repo")
    rgb, mask = _inputs()
    res = sam3d.Sam3DBackend().reconstruct(rgb, mask, {"config": str(cfg), "frame": "camera"})
    m, s = res.mesh, res.splats
    assert res.info["frame"] == "camera"
    assert res.info["pose_rotation"] == pytest.approx(QUAT, abs=1e-6)
    # independent check of the frame: PyTorch3D applies the layout rotation row-wise (p @ R(q)) into its
    # camera frame (x left, y up, z forward); Kiln's frame flips x and z (glTF: x right, z towards the viewer)
    import trimesh

    local = trimesh.creation.box(extents=(0.4, 0.2, 0.8)).vertices
    cam = np.einsum("ni,ij->nj", local, quat_to_matrix(np.array([QUAT]))[0]) * np.array([-1.0, 1.0, -1.0])
    cam = (cam - [(cam[:, 0].max() + cam[:, 0].min()) / 2, cam[:, 1].min(), (cam[:, 2].max() + cam[:, 2].min()) / 2]) / np.ptp(cam[:, 1])
    assert np.allclose(m.vertices, cam, atol=1e-5)
    # the Gaussians sat on the mesh vertices in the local frame: they still do
    assert s is not None and s.n == len(m.vertices)
    assert np.allclose(s.means, m.vertices, atol=1e-5)
    # colours: SH DC -> sRGB equals the mesh's vertex colours (stored linear)
    assert np.allclose(srgb_to_linear(s.base_colors()), m.vertex_color, atol=1e-3)
    # sizes scale with the unit-height normalisation; orientations turn with the frame
    k = res.info["normalise_scale"]
    assert np.allclose(s.scales, np.array([0.05, 0.02, 0.01]) * k, rtol=1e-5)
    A = np.diag([-1.0, 1.0, -1.0]) @ quat_to_matrix(np.array([QUAT]))[0].T
    R0 = quat_to_matrix(np.array([[0.9238795, 0.0, 0.3826834, 0.0]]))[0]
    cov0 = R0 @ np.diag([0.05, 0.02, 0.01]) ** 2 @ R0.T
    R1 = quat_to_matrix(s.quats[:1].astype(np.float64))[0]
    cov1 = R1 @ np.diag(s.scales[0].astype(np.float64)) ** 2 @ R1.T
    assert np.allclose(cov1, k * k * (A @ cov0 @ A.T), atol=1e-7)
    assert np.allclose(s.opacities, 0.9, atol=1e-5)


def test_glb_fallback_when_raw_mesh_absent(tmp_path):
    cfg = make_fake_repo(tmp_path / "repo")
    inf = sam3d.load_inference(str(cfg))
    out = inf(*_inputs(), seed=1)
    out.pop("mesh")
    mesh, _, info = sam3d.convert_output(out, "canonical")
    assert info["mesh_from"] == "output['glb']"
    assert np.allclose(mesh.vertices.max(0) - mesh.vertices.min(0), [0.5, 1.0, 0.25], atol=1e-5)
    assert mesh.vertex_color is not None


def test_missing_dependency_names_package(tmp_path, monkeypatch):
    cfg = make_fake_repo(tmp_path / "repo", extra_import="import kaolin_for_kiln_contract_test  # not installed")
    before = dict(os.environ)
    with pytest.raises(BackendError) as e:
        sam3d.Sam3DBackend().reconstruct(*_inputs(), {"config": str(cfg)})
    assert "kaolin_for_kiln_contract_test" in e.value.message
    assert "sam-3d-objects" in e.value.hint and e.value.exit_code == 3
    assert dict(os.environ) == before


def test_not_configured_and_bad_paths(tmp_path, monkeypatch):
    with pytest.raises(BackendError) as e:
        sam3d.Sam3DBackend().reconstruct(*_inputs(), {})
    assert "KILN_SAM3D_CONFIG" in e.value.hint
    with pytest.raises(BackendError) as e:
        sam3d.Sam3DBackend().reconstruct(*_inputs(), {"config": str(tmp_path / "nope.yaml")})
    assert "not found" in e.value.message
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("x")
    with pytest.raises(BackendError) as e:
        sam3d.Sam3DBackend().reconstruct(*_inputs(), {"config": str(cfg), "repo": str(tmp_path)})
    assert "notebook/inference.py" in e.value.message
    # the environment variable works as well as the option
    good = make_fake_repo(tmp_path / "r2")
    monkeypatch.setenv(sam3d.ENV_CONFIG, str(good))
    assert sam3d.Sam3DBackend().reconstruct(*_inputs(), {}).mesh is not None


def test_no_gpu_is_a_backend_error(tmp_path, monkeypatch):
    cfg = make_fake_repo(tmp_path / "repo")
    monkeypatch.setattr(sam3d, "cuda_available", lambda: False)
    with pytest.raises(BackendError) as e:
        sam3d.Sam3DBackend().reconstruct(*_inputs(), {"config": str(cfg)})
    assert "GPU" in e.value.message and "inflate" in e.value.hint


def test_pipeline_with_fake_sam3d_on_cpu(tmp_path):
    """reconstruct(): fake SAM 3D mesh -> Kiln's validate/simplify/unwrap/bake on the CPU (vertex colours;
    the Gaussians need CUDA + gsplat and are reported as unused)."""
    from PIL import Image

    from engine.options import BakeOptions
    from engine.reconstruct.pipeline import reconstruct

    cfg = make_fake_repo(tmp_path / "repo")
    rgb, mask = _inputs()
    Image.fromarray(rgb).save(tmp_path / "p.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    out = tmp_path / "o.glb"
    res = reconstruct(
        tmp_path / "p.png",
        out,
        BakeOptions(faces=100, texture_size=64, device="cpu"),
        {"backend": "sam3d", "config": str(cfg), "mask": str(tmp_path / "m.png"), "back": "#ffffff"},
    )
    rec = res.report["reconstruct"]
    assert out.is_file()
    assert rec["backend"] == "sam3d" and "checks" not in rec
    assert rec["ignored_options"] == ["back"]
    assert rec["appearance_source"].startswith("vertex_color") and "gaussians not used" in rec["appearance_source"]
    assert rec["backend_info"]["gaussians"] == 8


@pytest.mark.cuda
def test_pipeline_with_fake_sam3d_gaussians_cuda(tmp_path):
    """On the GPU: the fake's Gaussians (a coloured Gaussian surface on the box) are rendered by gsplat from
    Kiln's bake views and baked onto the converted mesh; the texture must carry the Gaussians' colours."""
    pytest.importorskip("gsplat")
    import trimesh
    from PIL import Image

    from engine.io.load import load_source
    from engine.mesh.source import shade
    from engine.options import BakeOptions
    from engine.reconstruct.pipeline import reconstruct

    cfg = make_fake_repo(tmp_path / "repo", dense=True)
    rgb, mask = _inputs()
    Image.fromarray(rgb).save(tmp_path / "p.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    out = tmp_path / "o.glb"
    opts = BakeOptions(faces=500, texture_size=256, device="cuda", views=60, view_resolution=512)
    res = reconstruct(tmp_path / "p.png", out, opts, {"backend": "sam3d", "config": str(cfg), "mask": str(tmp_path / "m.png"), "frame": "canonical"})
    rec = res.report["reconstruct"]
    assert rec["appearance_source"].startswith("gaussians"), rec["appearance_source"]
    assert res.report["backend"] == "cuda"
    baked = load_source(out)
    tm = trimesh.Trimesh(baked.vertices, baked.faces, process=False)
    bary = np.full((len(tm.faces), 3), 1.0 / 3.0)
    col = shade(baked, np.arange(len(tm.faces)), bary)
    y = tm.triangles_center[:, 1]  # canonical frame: height 0..1 is the fake's local z
    want = np.stack([0.2 + 0.6 * y, np.full_like(y, 0.3), 0.9 - 0.5 * y], 1)
    err = np.abs(col - want).mean()
    assert err < 0.08, err
