"""The whole-material bake: channels, the material read from glTF/OBJ/PLY, MikkTSpace, hard edges, target mode.

Blender's own view of these results (Cycles renders of each material input) is
checked in tests/test_material_blender.py.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.io.load import load_source
from engine.options import BakeOptions
from engine.pipeline import bake
from tests import pbr_sources


def glb_json(path) -> dict:
    d = open(path, "rb").read()
    n = struct.unpack("<I", d[12:16])[0]
    return json.loads(d[20 : 20 + n])


@pytest.fixture(scope="module")
def two_material(tmp_path_factory):
    return pbr_sources.make("two_material", tmp_path_factory.mktemp("src") / "two_material.glb")


# ------------------------------------------------------------------------------------------ options
def test_maps_option():
    from engine.bake.channels import ALL, parse_maps

    assert parse_maps("auto") is None and parse_maps("all") == ALL
    assert parse_maps("normal") == ("base", "normal")  # base (and alpha) always
    assert parse_maps("emissive, orm") == ("base", "orm", "emissive")
    with pytest.raises(InputError, match="unknown map"):
        BakeOptions(maps="base,specular").validate()
    with pytest.raises(InputError):
        BakeOptions.from_dict({"maps": 3})


def test_channel_module_registry_is_complete():
    from engine.bake.channels import REGISTRY, channel_class
    from engine.bake.channels.base import Channel

    for name in REGISTRY:
        cls = channel_class(name)
        assert issubclass(cls, Channel) and cls.name == name and cls.out_size <= cls.size <= 4


# ------------------------------------------------------------------------------------- reading material
def test_gltf_reads_the_whole_material(two_material):
    src = load_source(two_material)
    body, fin = src.materials
    assert body.texture is not None and body.metallic_roughness is not None and body.normal is not None
    assert body.emissive is not None and body.emissive_strength == pytest.approx(3.0)
    assert body.metallic_factor == 1.0 and body.roughness_factor == 1.0
    assert fin.alpha_mode == "MASK" and fin.alpha_cutoff == pytest.approx(0.5) and fin.texture.shape[2] == 4
    assert src.normals is not None and src.normals.shape == src.vertices.shape
    assert src.uv is not None


def test_obj_mtl_material_is_read_in_full(tmp_path):
    from PIL import Image

    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    (tmp_path / "m.obj").write_text(
        "mtllib m.mtl\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in v) + "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\n"
        "usemtl paint\nf 1/1/1 2/2/1 3/3/1\nf 1/1/1 3/3/1 4/4/1\n"
    )
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "kd.png")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "d.png")
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path / "pm.png")
    (tmp_path / "m.mtl").write_text(
        "newmtl paint\nKd 0.5 0.4 0.3\nmap_Kd kd.png\nmap_d d.png\nKe 2 1 0\nNs 250\nPm 0.2\nmap_Pm pm.png\nbump -bm 2 missing.png\n"
    )
    src = load_source(tmp_path / "m.obj")
    m = src.materials[0]
    assert np.allclose(m.base_color_factor[:3], [0.5, 0.4, 0.3])
    assert m.texture.shape == (8, 8, 4) and m.alpha_mode == "BLEND" and int(m.texture[0, 0, 3]) == 128
    assert np.allclose(m.emissive_factor, [2, 1, 0])
    assert m.roughness_factor == pytest.approx(1 - np.sqrt(0.25))
    assert m.metallic_roughness is not None and m.metallic_factor == pytest.approx(0.2)
    assert any("missing.png" in x for x in src.ignored_features)  # a named fallback, never a crash


def test_uncoloured_ply_bakes_light_grey(meshes_dir):
    r = bake(meshes_dir / "bunny.ply", None, BakeOptions(faces=500, texture_size=64, device="cpu", maps="base"))
    assert int(np.median(r.texture[r.coverage][:, :3])) >= 200  # Blender's default 0.8 (linear) -> 231 sRGB


# --------------------------------------------------------------------------------------- the result GLB
@pytest.fixture(scope="module")
def baked_two_material(two_material, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "two.glb"
    stages = []
    r = bake(two_material, out, BakeOptions(faces=1500, texture_size=128, device="cpu"),
             progress=lambda stage, f, msg: stages.append((stage, msg)))
    return r, out, stages


def test_full_material_glb(baked_two_material):
    r, out, _ = baked_two_material
    assert r.report["maps"] == {"base": "texture", "normal": "texture", "orm": "texture", "emissive": "texture"}
    j = glb_json(out)
    m = j["materials"][0]
    pbr = m["pbrMetallicRoughness"]
    assert {"baseColorTexture", "metallicRoughnessTexture"} <= set(pbr)
    assert {"normalTexture", "emissiveTexture"} <= set(m)
    assert m["alphaMode"] == "MASK" and m["alphaCutoff"] == pytest.approx(0.5)
    assert m["extensions"]["KHR_materials_emissive_strength"]["emissiveStrength"] == pytest.approx(3.0, rel=0.05)
    assert "KHR_materials_emissive_strength" in j["extensionsUsed"]
    assert "TANGENT" in j["meshes"][0]["primitives"][0]["attributes"]
    names = {im["name"].rsplit("_", 1)[-1] for im in j["images"]}
    assert names == {"basecolor", "normal", "orm", "emissive"}
    # read back by Kiln's own reader: the whole material survives
    back = load_source(out)
    bm = back.materials[0]
    assert bm.texture.shape[2] == 4 and bm.normal is not None and bm.metallic_roughness is not None and bm.emissive is not None
    assert back.tangents is not None and np.allclose(np.linalg.norm(back.tangents[:, :3], axis=1), 1, atol=1e-3)
    assert set(np.unique(back.tangents[:, 3])) <= {-1.0, 1.0}


def test_fit_stage_reports_progress_per_channel(baked_two_material):
    _, _, stages = baked_two_material
    msgs = [m for s, m in stages if s == "dilate"]
    for ch in ("base", "normal", "orm", "emissive"):
        assert any(m.startswith(f"{ch}:") for m in msgs), msgs


def test_constant_channels_become_factors(tmp_path):
    v, f = pbr_sources.ridged_blob(4)
    src = pbr_sources.write_glb(tmp_path / "s.glb", [{"v": v, "f": f, "n": pbr_sources.smooth_normals(v, f)}],
                                [pbr_sources.plain(metallic=0.3, roughness=0.7)])
    r = bake(src, tmp_path / "o.glb", BakeOptions(faces=400, texture_size=64, device="cpu", maps="all"))
    assert r.report["maps"]["orm"] == "factor" and r.report["maps"]["emissive"] == "factor"
    m = glb_json(tmp_path / "o.glb")["materials"][0]
    assert m["pbrMetallicRoughness"]["metallicFactor"] == pytest.approx(0.3, abs=0.01)
    assert m["pbrMetallicRoughness"]["roughnessFactor"] == pytest.approx(0.7, abs=0.01)
    assert "metallicRoughnessTexture" not in m["pbrMetallicRoughness"] and "emissiveTexture" not in m and "emissiveFactor" not in m


def test_base_only_when_asked(two_material, tmp_path):
    r = bake(two_material, tmp_path / "b.glb", BakeOptions(faces=600, texture_size=64, device="cpu", maps="base"))
    assert list(r.report["maps"]) == ["base"]
    m = glb_json(tmp_path / "b.glb")["materials"][0]
    assert "normalTexture" not in m and "emissiveTexture" not in m


# ------------------------------------------------------------------------------------ frames & normals
def test_tangent_space_round_trip():
    from engine.bake.channels.normal import tangent_from_world, world_from_tangent

    g = torch.Generator().manual_seed(0)
    N = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=1)
    T = torch.nn.functional.normalize(torch.cross(N, torch.randn(500, 3, generator=g), dim=1), dim=1) * (0.8 + 0.4 * torch.rand(500, 1, generator=g))
    T = T + 0.1 * N  # interpolated tangents are neither unit nor orthogonal: the decode handles that
    w = torch.where(torch.rand(500, generator=g) > 0.5, 1.0, -1.0)
    c = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=1)
    c[:, 2] = c[:, 2].abs() + 0.1
    c = torch.nn.functional.normalize(c, dim=1)
    n = world_from_tangent(c, T, w, N)
    c2 = tangent_from_world(n, T, w, N)
    assert torch.allclose(world_from_tangent(c2, T, w, N), n, atol=1e-4)


def test_cube_keeps_its_hard_edges(tmp_path):
    v, f, n = pbr_sources.hard_cube(20)
    src = pbr_sources.write_glb(tmp_path / "cube.glb", [{"v": v, "f": f, "n": n}], [pbr_sources.plain()])
    r = bake(src, None, BakeOptions(faces=600, texture_size=128, device="cpu"))
    fn = np.cross(r.vertices[r.faces[:, 1]] - r.vertices[r.faces[:, 0]], r.vertices[r.faces[:, 2]] - r.vertices[r.faces[:, 0]])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    ang = np.degrees(np.arccos(np.clip(np.einsum("fkc,fc->fk", r.normals[r.faces], fn), -1, 1)))
    assert np.percentile(ang, 99) < 2.0, np.percentile(ang, 99)  # flat faces, split at the cube's edges
    assert r.report["bake"]["hard_edge_count"] > 0


def test_hard_edges_without_normals_map_use_the_angle(tmp_path):
    v, f, n = pbr_sources.hard_cube(8)
    src = pbr_sources.write_glb(tmp_path / "cube.glb", [{"v": v, "f": f, "n": n}], [pbr_sources.plain()])
    r = bake(src, None, BakeOptions(faces=200, texture_size=64, device="cpu", maps="base"))
    assert "dihedral" in r.report["bake"]["hard_edges"]
    assert len(r.vertices) >= 24


MIKK_SCRIPT = r"""
import bpy, json, sys, numpy as np
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=sys.argv[1])
ob = [o for o in bpy.data.objects if o.type == "MESH"][0]
me = ob.data
uv = me.uv_layers[0].name
me.calc_tangents(uvmap=uv)
n = len(me.loops)
t = np.zeros(n * 3); s = np.zeros(n); co = np.zeros(len(me.vertices) * 3); luv = np.zeros(n * 2); lv = np.zeros(n, int)
me.loops.foreach_get("tangent", t); me.loops.foreach_get("bitangent_sign", s); me.loops.foreach_get("vertex_index", lv)
me.vertices.foreach_get("co", co); me.uv_layers[0].data.foreach_get("uv", luv)
np.savez(sys.argv[2], t=t.reshape(-1, 3), s=s, co=co.reshape(-1, 3)[lv], uv=luv.reshape(-1, 2))
"""


@pytest.mark.blender
def test_mikktspace_tangents_match_blender(baked_two_material, tmp_path):
    """The TANGENTs Kiln writes are the ones Blender's MikkTSpace computes for the same mesh and UVs."""
    r, out, _ = baked_two_material
    script = tmp_path / "mikk.py"
    script.write_text(MIKK_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "t.npz")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    z = np.load(tmp_path / "t.npz")
    # Blender is Z-up (x, -z, y of glTF); match loops to Kiln's vertices by position + UV
    co = z["co"][:, [0, 2, 1]] * np.array([1, 1, -1])
    uvb = np.stack([z["uv"][:, 0], 1 - z["uv"][:, 1]], 1)
    tb = z["t"][:, [0, 2, 1]] * np.array([1, 1, -1])
    from scipy.spatial import cKDTree

    key = np.concatenate([r.vertices, r.uv * 10], 1)
    d, idx = cKDTree(key).query(np.concatenate([co, uvb * 10], 1))
    ok = d < 1e-4
    assert ok.mean() > 0.99
    tk = r.tangents[idx[ok]]
    cos = np.einsum("kc,kc->k", tk[:, :3], tb[ok]) / np.maximum(np.linalg.norm(tb[ok], axis=1), 1e-9)
    assert np.mean(cos > np.cos(np.radians(2))) > 0.98, np.percentile(np.degrees(np.arccos(np.clip(cos, -1, 1))), [50, 99])
    assert np.mean(tk[:, 3] == z["s"][ok]) > 0.99


# ------------------------------------------------------------------------------------ bad input
def test_material_problems_are_one_line_errors_or_named_fallbacks(tmp_path):
    v, f, uv, n = pbr_sources.sphere_uv(8, 16)
    bad_png = {"image": np.zeros((4, 4, 3), np.uint8)}
    path = pbr_sources.write_glb(tmp_path / "m.glb", [{"v": v, "f": f, "n": n, "uv": uv}],
                                 [{"name": "x", "pbrMetallicRoughness": {"baseColorTexture": bad_png}}])
    data = bytearray(open(path, "rb").read())
    i = data.find(b"\x89PNG")
    data[i : i + 8] = b"NOTAPNG!"  # a texture that fails to decode
    (tmp_path / "bad.glb").write_bytes(bytes(data))
    with pytest.raises(InputError, match="cannot be decoded"):
        load_source(tmp_path / "bad.glb")
    # a material pointing at a missing texture
    j = glb_json(path)
    j["materials"][0]["normalTexture"] = {"index": 7}
    with pytest.raises(InputError, match="missing texture"):
        from engine.io.gltf import parse

        js = json.dumps(j).encode()
        js += b" " * ((4 - len(js) % 4) % 4)
        raw = open(path, "rb").read()
        n0 = struct.unpack("<I", raw[12:16])[0]
        binc = raw[20 + n0 :]
        parse(struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js) + len(binc)) + struct.pack("<II", len(js), 0x4E4F534A) + js + binc, "m.glb", None)
    # NaN tangents: dropped with a note, recomputed
    t = np.full((len(v), 4), np.nan, np.float32)
    nm = {"image": pbr_sources.height_normal_map(pbr_sources.bumps(64, 3), 1.0)}
    p2 = pbr_sources.write_glb(tmp_path / "nan.glb", [{"v": v, "f": f, "n": n, "uv": uv, "t": t}],
                               [{"name": "x", "pbrMetallicRoughness": {"baseColorTexture": {"image": np.full((32, 16, 3), 90, np.uint8)}},
                                 "normalTexture": nm}])  # a normal map of another size than its base colour
    r = bake(p2, None, BakeOptions(faces=200, texture_size=64, device="cpu"))
    assert any("tangents" in x for x in r.report.get("notes", []) + r.report["ignored_features"])
    assert r.report["maps"]["normal"] == "texture"


def test_unsupported_features_are_named_once(tmp_path):
    v, f, uv, n = pbr_sources.sphere_uv(8, 16)
    path = pbr_sources.write_glb(tmp_path / "m.glb", [{"v": v, "f": f, "n": n, "uv": uv}],
                                 [{"name": "glass", "extensions": {"KHR_materials_transmission": {"transmissionFactor": 1.0},
                                                                   "KHR_materials_clearcoat": {"clearcoatFactor": 1.0}}}])
    r = bake(path, None, BakeOptions(faces=100, texture_size=32, device="cpu"))
    assert r.report["ignored_features"] == ["clearcoat", "transmission"]


# ------------------------------------------------------------------------------------ target mode
def _target(tmp_path, lat=12, lon=24, uv_scale=1.0, uv_shift=0.0):
    v, f, uv, n = pbr_sources.sphere_uv(lat, lon)
    uv = uv * uv_scale + uv_shift
    return pbr_sources.write_glb(tmp_path / "low.glb", [{"v": v * 1.01, "f": f, "n": n, "uv": uv}], [pbr_sources.plain()]), v * 1.01, f, uv


def test_target_keeps_geometry_and_uvs_exactly(two_material, tmp_path, kiln_env):
    low, v, f, uv = _target(tmp_path)
    out = tmp_path / "res.glb"
    cp = subprocess.run([sys.executable, "-m", "engine", "bake", str(two_material), "--target", str(low), "-o", str(out),
                         "--texture-size", "128", "--device", "cpu", "--json", "-q"], capture_output=True, text=True, env=kiln_env, timeout=900)
    assert cp.returncode == 0, cp.stderr
    rep = json.loads(cp.stdout)
    assert rep["mode"] == "target" and rep["triangles_out"] == len(f)
    assert rep["maps"]["normal"] == "texture"
    res = load_source(out)
    tgt = load_source(low)
    assert len(res.vertices) == len(tgt.vertices)
    assert np.array_equal(res.faces, tgt.faces)
    assert np.array_equal(res.vertices, tgt.vertices)
    assert np.array_equal(res.uv, tgt.uv)
    assert np.allclose(res.normals, tgt.normals, atol=1e-6)


def test_target_uvs_outside_the_square_are_refused(two_material, tmp_path, kiln_env):
    low, *_ = _target(tmp_path, uv_scale=1.0, uv_shift=0.5)
    cp = subprocess.run([sys.executable, "-m", "engine", "bake", str(two_material), "--target", str(low), "-o", str(tmp_path / "x.glb"),
                         "--device", "cpu", "--texture-size", "64"], capture_output=True, text=True, env=kiln_env, timeout=600)
    assert cp.returncode == 2 and "leave the 0..1 square" in cp.stderr and "--unwrap" in cp.stderr
    assert "Traceback" not in cp.stderr


def test_target_overlap_is_reported_and_unwrap_replaces_uvs(two_material, tmp_path):
    low, v, f, uv = _target(tmp_path, uv_scale=0.5)  # squeeze, then fold: overlapping (mirrored) halves
    uv2 = uv.copy()
    uv2[:, 0] = np.where(uv2[:, 0] > 0.25, 0.5 - uv2[:, 0], uv2[:, 0])
    pbr_sources.write_glb(low, [{"v": v, "f": f, "n": pbr_sources.sphere_uv(12, 24)[3], "uv": uv2}], [pbr_sources.plain()])
    r = bake(two_material, None, BakeOptions(texture_size=64, device="cpu", maps="base"), target=low)
    assert r.report["uv_overlap_fraction"] > 0.3 and "overlapping" in r.report["warnings"][0]
    r2 = bake(two_material, None, BakeOptions(texture_size=64, device="cpu", maps="base", unwrap=True), target=low)
    assert r2.report["uv"].startswith("new atlas") and r2.report["triangles_out"] == len(f)


def test_several_sources_into_one_target_and_cage_mesh(tmp_path):
    # two halves of a sphere, each its own file and colour, baked onto one low-poly sphere
    v, f, uv, n = pbr_sources.sphere_uv(32, 64)
    c = v[f].mean(1)
    parts = []
    for i, (sel, col) in enumerate(((c[:, 1] >= 0, (1, 0, 0, 1)), (c[:, 1] < 0, (0, 0, 1, 1)))):
        parts.append(pbr_sources.write_glb(tmp_path / f"p{i}.glb", [{"v": v, "f": f[sel], "n": n}], [pbr_sources.plain(base=col)]))
    low, lv, lf, luv = _target(tmp_path)
    cage = pbr_sources.write_glb(tmp_path / "cage.glb", [{"v": lv * 1.05, "f": lf, "n": lv, "uv": luv}], [pbr_sources.plain()])
    r = bake([str(p) for p in parts], None, BakeOptions(texture_size=64, device="cpu", maps="base"), target=low, cage=cage)
    assert r.report["cage_mesh"] == "cage.glb"
    top = r.vertices[r.faces].mean(1)[:, 1]
    from engine.mesh.source import shade, SourceMesh, Material

    res = SourceMesh(r.vertices, r.faces, r.uv, materials=[Material(texture=r.texture, wrap="clamp")], face_material=np.zeros(len(r.faces), np.int32))
    col = shade(res, np.arange(len(r.faces)), np.full((len(r.faces), 3), 1 / 3, np.float32))
    assert np.median(col[top > 0.3, 0]) > 0.8 and np.median(col[top < -0.3, 2]) > 0.8
    ov, of, _, on = pbr_sources.sphere_uv(8, 16)  # a valid mesh, but not the target's topology
    bad = pbr_sources.write_glb(tmp_path / "badcage.glb", [{"v": ov * 1.05, "f": of, "n": on}], [pbr_sources.plain()])
    with pytest.raises(InputError, match="topology"):
        bake(parts[0], None, BakeOptions(texture_size=32, device="cpu"), target=low, cage=bad)
