"""Loading bake sources: formats, transforms, colour spaces, and every bad input -> exit 2 + one line."""

import subprocess
import sys

import numpy as np
import pytest

from engine.errors import InputError
from engine.io.load import load_source
from engine.mesh.source import linear_to_srgb, shade
from tests.gltf_builder import make_glb, uv_sphere

ASSETS = ["Duck.glb", "BoxTextured.glb", "monkey.glb", "bunny.ply"]


@pytest.mark.parametrize("name", ASSETS)
def test_load_shared_assets(meshes_dir, name):
    import trimesh

    src = load_source(meshes_dir / name)
    assert src.vertices.dtype == np.float32 and src.vertices.shape[1] == 3
    assert src.faces.shape[1] == 3 and len(src.faces) > 0
    # node transforms applied: same world bounds as trimesh's scene graph gives
    ref = trimesh.load(str(meshes_dir / name), force="scene")
    np.testing.assert_allclose(src.bounds(), ref.bounds, atol=1e-4 * np.ptp(ref.bounds))


def test_textured_assets_keep_texture(meshes_dir):
    duck = load_source(meshes_dir / "Duck.glb")
    assert duck.appearance_kind() == "texture"
    assert duck.uv is not None and duck.materials[0].texture.shape[:2] == (512, 512)
    # the duck is yellow: shade a few surface points
    rng = np.random.default_rng(0)
    fi = rng.integers(0, len(duck.faces), 200)
    col = shade(duck, fi, np.full((200, 3), 1 / 3, np.float32))
    med = np.median(col, 0)
    assert med[0] > 0.8 and med[1] > 0.6 and med[2] < 0.3


def test_color0_is_linear_and_converted_to_srgb(tmp_path):
    v, f = uv_sphere(8, 16)
    lin = np.full((len(v), 3), 0.214, np.float32)  # linear 0.214 == sRGB ~0.5
    p = tmp_path / "c.glb"
    p.write_bytes(make_glb(v, f, colors=lin))
    src = load_source(p)
    assert src.appearance_kind() == "vertex_color"
    col = shade(src, np.arange(10), np.full((10, 3), 1 / 3, np.float32))
    np.testing.assert_allclose(col, 0.5, atol=0.01)  # not washed out (0.214 would be wrong, so would 0.73)


def test_normalized_u8_colors_and_factor(tmp_path):
    v, f = uv_sphere(8, 16)
    c = np.tile(np.array([[255, 0, 0, 255]], np.uint8), (len(v), 1))
    p = tmp_path / "c8.glb"
    p.write_bytes(make_glb(v, f, colors_u8=c, factor=[0.5, 1, 1, 1]))
    src = load_source(p)
    col = shade(src, np.arange(5), np.full((5, 3), 1 / 3, np.float32))
    np.testing.assert_allclose(col[:, 0], linear_to_srgb(np.float32(0.5)), atol=0.01)
    np.testing.assert_allclose(col[:, 1:], 0.0, atol=0.01)


def test_node_matrix_applied(tmp_path):
    v, f = uv_sphere(6, 12)
    m = np.eye(4)
    m[:3, 3] = [10, 20, 30]
    m[0, 0] = 2.0
    p = tmp_path / "m.glb"
    p.write_bytes(make_glb(v, f, matrix=m))
    src = load_source(p)
    np.testing.assert_allclose(src.bounds(), [[8, 19, 29], [12, 21, 31]], atol=1e-4)


def test_obj_with_mtl_texture_and_zip(tmp_path):
    import zipfile

    from PIL import Image

    img = np.zeros((8, 8, 3), np.uint8)
    img[:4] = [255, 0, 0]  # top half red (v near 1 in OBJ's v-up convention)
    img[4:] = [0, 0, 255]
    Image.fromarray(img).save(tmp_path / "tex.png")
    (tmp_path / "m.mtl").write_text("newmtl mat\nKd 1 1 1\nmap_Kd tex.png\n")
    (tmp_path / "m.obj").write_text(
        "mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0.9\nvt 1 0.9\nvt 1 0.95\nvt 0 0.95\nusemtl mat\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n"
    )
    src = load_source(tmp_path / "m.obj")
    assert src.appearance_kind() == "texture"
    col = shade(src, np.array([0]), np.array([[1 / 3, 1 / 3, 1 / 3]], np.float32))
    assert col[0, 0] > 0.9 and col[0, 2] < 0.1  # OBJ v=0.9 is near the image top: red
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for n in ("m.obj", "m.mtl", "tex.png"):
            zf.write(tmp_path / n, f"model/{n}")
    src2 = load_source(z)
    np.testing.assert_allclose(src2.vertices, src.vertices)


def _kiln(*args, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env, timeout=300)


def _bad_inputs(tmp_path, meshes_dir):
    v, f = uv_sphere(6, 12)
    cases = {}
    cases["missing"] = (tmp_path / "nope.glb", "file not found")
    (tmp_path / "empty.glb").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.glb", "empty")
    (tmp_path / "garbage.glb").write_bytes(b"glTF\x02\x00\x00\x00" + b"\xff" * 100)
    cases["garbage"] = (tmp_path / "garbage.glb", "corrupt")
    duck = (meshes_dir / "Duck.glb").read_bytes()
    (tmp_path / "trunc.glb").write_bytes(duck[: len(duck) // 2])
    cases["truncated"] = (tmp_path / "trunc.glb", "truncated")
    (tmp_path / "x.stl").write_bytes(b"\x00\x01binary stuff" * 10)
    cases["unsupported"] = (tmp_path / "x.stl", "unsupported format")
    (tmp_path / "nofaces.glb").write_bytes(make_glb(v, np.zeros((0, 3), np.int64), mode=0))
    cases["no_faces"] = (tmp_path / "nofaces.glb", "no triangle")
    vn = v.copy()
    vn[3] = np.nan
    (tmp_path / "nan.glb").write_bytes(make_glb(vn, f))
    cases["nan"] = (tmp_path / "nan.glb", "NaN")
    fo = f.copy()
    fo[0, 0] = 10_000
    (tmp_path / "oob.glb").write_bytes(make_glb(v, fo))
    cases["out_of_range"] = (tmp_path / "oob.glb", "out of range")
    (tmp_path / "degen.glb").write_bytes(make_glb(np.zeros((3, 3), np.float32) + [[0, 0, 0], [1, 0, 0], [2, 0, 0]], np.array([[0, 1, 2]])))
    cases["degenerate"] = (tmp_path / "degen.glb", "degenerate")
    (tmp_path / "bad.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1\n")
    cases["bad_ply"] = (tmp_path / "bad.ply", "")
    (tmp_path / "json.gltf").write_text("{not json")
    cases["bad_json"] = (tmp_path / "json.gltf", "JSON")
    return cases


def test_bad_inputs_library(tmp_path, meshes_dir):
    for name, (path, needle) in _bad_inputs(tmp_path, meshes_dir).items():
        with pytest.raises(InputError) as ei:
            src = load_source(path)
            from engine.mesh.validate import validate_source

            validate_source(src)
        assert needle.lower() in str(ei.value).lower(), (name, str(ei.value))


def test_bad_inputs_cli_exit_2_one_line(tmp_path, meshes_dir, kiln_env):
    cases = _bad_inputs(tmp_path, meshes_dir)
    duck = meshes_dir / "Duck.glb"
    procs = {}
    for name, (path, needle) in cases.items():
        procs[name] = (subprocess.Popen([sys.executable, "-m", "engine", "bake", str(path), "-o", str(tmp_path / f"{name}.out.glb"), "--device", "cpu", "-q"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kiln_env), needle)
    procs["too_large"] = (subprocess.Popen([sys.executable, "-m", "engine", "bake", str(duck), "-o", str(tmp_path / "tl.glb"), "--max-faces", "100", "-q"],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kiln_env), "too large")
    procs["bad_option"] = (subprocess.Popen([sys.executable, "-m", "engine", "bake", str(duck), "-o", str(tmp_path / "bo.glb"), "--texture-size", "3", "-q"],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kiln_env), "texture_size")
    for name, (p, needle) in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, (name, p.returncode, err)
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert len(lines) == 1, (name, err)
        assert "Traceback" not in err and lines[0].startswith("kiln: error:"), (name, err)
        assert needle.lower() in lines[0].lower(), (name, lines[0])
        assert not (tmp_path / f"{name}.out.glb").exists()


def test_float64_and_int64_arrays_are_accepted(tmp_path):
    from engine.mesh.source import Material, SourceMesh
    from engine.mesh.validate import validate_source

    v, f = uv_sphere(8, 16)
    src = SourceMesh(v.astype(np.float64), f.astype(np.int64), materials=[Material()])
    out, rep = validate_source(src)
    assert out.vertices.dtype == np.float32 and out.faces.dtype == np.int32
    assert out.vertices.flags["C_CONTIGUOUS"] and out.faces.flags["C_CONTIGUOUS"]


def test_unwritable_output_fails_before_any_work(tmp_path, meshes_dir, kiln_env):
    (tmp_path / "adir").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out, needle in ((tmp_path / "adir", "is a folder"), (blocker / "sub" / "o.glb", "cannot create the output folder")):
        p = subprocess.run([sys.executable, "-m", "engine", "bake", str(meshes_dir / "BoxTextured.glb"), "-o", str(out), "--device", "cpu", "-q"],
                           capture_output=True, text=True, env=kiln_env, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_corrupt_embedded_texture_is_named(tmp_path, meshes_dir):
    import json as _json
    import struct

    b = bytearray((meshes_dir / "BoxTextured.glb").read_bytes())
    n = struct.unpack("<I", b[12:16])[0]
    j = _json.loads(bytes(b[20 : 20 + n]))
    bv = j["bufferViews"][j["images"][0]["bufferView"]]
    off = 20 + n + 8 + bv.get("byteOffset", 0)
    b[off : off + bv["byteLength"]] = b"\x00" * bv["byteLength"]
    (tmp_path / "t.glb").write_bytes(bytes(b))
    with pytest.raises(InputError, match="texture image 0 .* cannot be decoded"):
        load_source(tmp_path / "t.glb")
