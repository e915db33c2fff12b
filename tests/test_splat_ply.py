"""Gaussian-splat PLY loading and validation (CPU). PLY files are written here
byte by byte with numpy, independently of engine.splat's own writer."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import BackendError, InputError
from engine.splat import SH_C0, Splats, is_splat_ply, load_splat_ply, save_splat_ply
from engine.splat.types import quat_to_matrix

BASE = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def write_ply(path, rows: dict, fmt="binary_little_endian", extra_header="", dtype="f4", truncate=0, extra_elements=""):
    names = list(rows)
    n = len(next(iter(rows.values())))
    head = f"ply\nformat {fmt} 1.0\ncomment written by the Kiln test\n{extra_elements}element vertex {n}\n"
    head += "".join(f"property {'float' if dtype == 'f4' else 'double'} {k}\n" for k in names) + extra_header + "end_header\n"
    if fmt == "ascii":
        body = "".join(" ".join(repr(float(rows[k][i])) for k in names) + "\n" for i in range(n)).encode()
    else:
        e = "<" if fmt == "binary_little_endian" else ">"
        arr = np.zeros(n, dtype=[(k, e + dtype) for k in names])
        for k in names:
            arr[k] = rows[k]
        body = arr.tobytes()
    data = head.encode() + body
    if truncate:
        data = data[:-truncate]
    path.write_bytes(data)
    return path


def sample_rows(n=5, rest=0, seed=0):
    rng = np.random.default_rng(seed)
    rows = {k: rng.normal(size=n) for k in ("x", "y", "z")}
    rows.update(nx=np.zeros(n), ny=np.zeros(n), nz=np.zeros(n))
    for i in range(3):
        rows[f"f_dc_{i}"] = rng.normal(size=n)
    for i in range(rest):
        rows[f"f_rest_{i}"] = rng.normal(size=n) * 0.1
    rows["opacity"] = rng.normal(size=n) * 2
    for i in range(3):
        rows[f"scale_{i}"] = rng.uniform(-5, -1, size=n)
    q = rng.normal(size=(n, 4)) * 2
    for i in range(4):
        rows[f"rot_{i}"] = q[:, i]
    return rows


@pytest.mark.parametrize("fmt", ["binary_little_endian", "binary_big_endian", "ascii"])
def test_load_activates_parameters(tmp_path, fmt):
    rows = sample_rows(6)
    p = write_ply(tmp_path / "s.ply", rows, fmt=fmt)
    assert is_splat_ply(p)
    s = load_splat_ply(p)
    assert s.n == 6 and s.sh_degree == 0 and s.sh.shape == (6, 1, 3)
    assert s.means.dtype == np.float32 and s.quats.dtype == np.float32
    assert np.allclose(s.means[:, 0], rows["x"], atol=1e-6)
    assert np.allclose(s.scales[:, 1], np.exp(rows["scale_1"]), rtol=1e-5)
    assert np.allclose(s.opacities, 1 / (1 + np.exp(-rows["opacity"])), atol=1e-6)
    q = np.stack([rows[f"rot_{i}"] for i in range(4)], 1)
    assert np.allclose(s.quats, q / np.linalg.norm(q, axis=1, keepdims=True), atol=1e-6)  # wxyz kept, normalised
    assert np.allclose(s.sh[:, 0, 2], rows["f_dc_2"], atol=1e-6)
    assert np.allclose(s.base_colors(), np.clip(SH_C0 * s.sh[:, 0] + 0.5, 0, 1))
    assert s.info["gaussians_in"] == 6 and s.info["gaussians_dropped"] == 0


def test_sh_rest_is_channel_major(tmp_path):
    rows = sample_rows(3, rest=9)  # degree 1: 3 coefficients per channel
    # f_rest_0..2 = R's coefficients, 3..5 = G's, 6..8 = B's
    for i in range(9):
        rows[f"f_rest_{i}"] = np.full(3, float(i))
    s = load_splat_ply(write_ply(tmp_path / "s.ply", rows))
    assert s.sh_degree == 1 and s.sh.shape == (3, 4, 3)
    assert np.allclose(s.sh[0, 1:, 0], [0, 1, 2]) and np.allclose(s.sh[0, 1:, 1], [3, 4, 5]) and np.allclose(s.sh[0, 1:, 2], [6, 7, 8])


def test_roundtrip_writer(tmp_path):
    s = load_splat_ply(write_ply(tmp_path / "a.ply", sample_rows(7, rest=24)))
    p = save_splat_ply(tmp_path / "b.ply", s)
    t = load_splat_ply(p)
    for a in ("means", "scales", "quats", "opacities", "sh"):
        assert np.allclose(getattr(s, a), getattr(t, a), rtol=1e-4, atol=1e-5), a


def test_invalid_gaussians_dropped(tmp_path):
    rows = sample_rows(5)
    rows["x"][1] = np.nan
    for i in range(4):
        rows[f"rot_{i}"][3] = 0.0
    s = load_splat_ply(write_ply(tmp_path / "s.ply", rows))
    assert s.n == 3 and s.info["gaussians_dropped"] == 2
    rows = sample_rows(5)
    rows["opacity"] = np.array([-3.0, -1.0, 0.5, 2.0, 4.0])  # sigmoid: .05 .27 .62 .88 .98
    s = load_splat_ply(write_ply(tmp_path / "t.ply", rows), min_opacity=0.5)
    assert s.n == 3 and s.opacities.min() > 0.5


def _err(path, **k) -> InputError:
    with pytest.raises(InputError) as e:
        load_splat_ply(path, **k)
    assert e.value.exit_code == 2 and e.value.message
    return e.value


def test_errors(tmp_path):
    rows = sample_rows(4)
    mesh_like = {k: rows[k] for k in ("x", "y", "z")}
    p = write_ply(tmp_path / "mesh.ply", mesh_like, extra_header="element face 0\nproperty list uchar int vertex_indices\n")
    assert not is_splat_ply(p)
    e = _err(p)
    assert "missing" in e.message and "f_dc_0" in e.message
    assert "ply" in _err(write_ply(tmp_path / "trunc.ply", rows, truncate=10)).message.lower()
    assert "truncated" in _err(write_ply(tmp_path / "trunc.ply", rows, truncate=10)).message
    bad = dict(rows)
    bad["f_rest_0"] = np.zeros(4)
    bad["f_rest_1"] = np.zeros(4)
    assert "f_rest" in _err(write_ply(tmp_path / "rest.ply", bad)).message
    allnan = {k: (np.full(4, np.nan) if k == "x" else v) for k, v in rows.items()}
    assert "none of its 4" in _err(write_ply(tmp_path / "nan.ply", allnan)).message
    zero = {k: v[:0] for k, v in rows.items()}
    assert _err(write_ply(tmp_path / "zero.ply", zero)).code == "empty_file"
    (tmp_path / "txt.ply").write_text("hello")
    assert not is_splat_ply(tmp_path / "txt.ply")
    assert _err(tmp_path / "txt.ply").code == "unsupported_format"
    assert _err(tmp_path / "missing.ply").code == "missing_file"
    (tmp_path / "empty.ply").write_bytes(b"")
    assert _err(tmp_path / "empty.ply").code == "empty_file"
    comp = write_ply(
        tmp_path / "comp.ply",
        {"packed_position": np.zeros(2), "packed_rotation": np.zeros(2), "packed_scale": np.zeros(2), "packed_color": np.zeros(2)},
        extra_elements="element chunk 1\nproperty float min_x\n",
    )
    assert is_splat_ply(comp)
    assert "compressed" in _err(comp).message


def test_double_precision_and_preceding_element(tmp_path):
    rows = sample_rows(3)
    s = load_splat_ply(write_ply(tmp_path / "d.ply", rows, dtype="f8"))
    assert np.allclose(s.means[:, 2], rows["z"], atol=1e-6)
    # a fixed-size element before the vertices: its bytes are skipped
    p = write_ply(tmp_path / "pre.ply", rows, extra_elements="element meta 2\nproperty float a\nproperty uchar b\n")
    data = p.read_bytes()
    cut = data.index(b"end_header\n") + len(b"end_header\n")
    meta = np.array([(7.0, 1), (8.0, 2)], dtype=[("a", "<f4"), ("b", "u1")]).tobytes()
    p.write_bytes(data[:cut] + meta + data[cut:])
    s = load_splat_ply(p)
    assert s.n == 3 and np.allclose(s.means[:, 0], rows["x"], atol=1e-6)


def test_transformed_rotates_covariance():
    rng = np.random.default_rng(3)
    n = 4
    q = rng.normal(size=(n, 4))
    s = Splats(rng.normal(size=(n, 3)).astype(np.float32), rng.uniform(0.1, 1, (n, 3)).astype(np.float32),
               (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), np.full(n, 0.5, np.float32),
               rng.normal(size=(n, 1, 3)).astype(np.float32))  # fmt: skip
    ang = 0.7
    R = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
    t = np.array([1.0, 2.0, 3.0])
    u = s.transformed(R, t, 2.0)
    assert np.allclose(u.means, 2.0 * s.means @ R.T + t, atol=1e-5)
    for i in range(n):
        R0 = quat_to_matrix(s.quats[i : i + 1].astype(np.float64))[0]
        R1 = quat_to_matrix(u.quats[i : i + 1].astype(np.float64))[0]
        c0 = R0 @ np.diag(s.scales[i].astype(np.float64) ** 2) @ R0.T
        c1 = R1 @ np.diag(u.scales[i].astype(np.float64) ** 2) @ R1.T
        assert np.allclose(c1, 4.0 * R @ c0 @ R.T, atol=1e-5)


def test_lead_loader_routes_splats(tmp_path):
    """engine.io.load.load_source recognises a splat PLY (through is_splat_ply) and points to the splat path."""
    from engine.io.load import load_source

    p = write_ply(tmp_path / "s.ply", sample_rows(3))
    with pytest.raises(InputError) as e:
        load_source(p)
    assert e.value.code == "splat_source"


def test_render_without_cuda_is_a_clear_backend_error():
    from engine.splat.render import render_splat_views, splat_backend_status

    if splat_backend_status()[0]:
        pytest.skip("CUDA + gsplat present: covered by test_splat_render_cuda.py")
    s = Splats(np.zeros((1, 3), np.float32), np.ones((1, 3), np.float32), np.array([[1, 0, 0, 0]], np.float32),
               np.ones(1, np.float32), np.zeros((1, 1, 3), np.float32))  # fmt: skip
    with pytest.raises(BackendError) as e:
        render_splat_views(s, np.eye(4)[None], np.eye(3)[None], 8, 8)
    assert e.value.message.startswith("splat sources need CUDA + gsplat")
    assert e.value.exit_code == 3
