"""Held-out sources baked on the CPU and judged the way an artist sees them: inside Blender.

Each source (tests/pbr_sources.py, written by the tests, never by Kiln) and
its Kiln result are imported with Blender's own glTF importer; every material
input is rewired into an Emission shader and rendered with Cycles from six
views that are not the bake's (tests/blender_judge.py). The figures are the
issue's targets at 3,000-4,000 faces and 1024^2.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.io.load import load_source
from engine.options import BakeOptions
from engine.pipeline import bake
from tests import pbr_sources
from tests.blender_judge import channel_psnr, judge, normal_error_deg, view_cameras

pytestmark = [pytest.mark.blender, pytest.mark.slow]


def _judge_pair(src_path, out_path, channels, res=160):
    m = load_source(src_path)
    lo, hi = m.vertices.min(0), m.vertices.max(0)
    c = (lo + hi) / 2
    r = float(np.linalg.norm(hi - lo)) / 2
    cams = view_cameras(c, r, 6, seed=11)
    a = judge(src_path, channels, cams, c, 2.1 * r, res)
    b = judge(out_path, channels, cams, c, 2.1 * r, res)
    return a, b


@pytest.mark.parametrize("name,limit", [("ridged_blob", 8.0), ("grooved_box", 6.0), ("hard_cube", 5.0), ("normal_mapped", 4.0)])
def test_shading_normals_in_blender(name, limit, tmp_path):
    src = pbr_sources.make(name, tmp_path / f"{name}.glb")
    out = tmp_path / "out.glb"
    r = bake(src, out, BakeOptions(faces=3000, texture_size=1024, device="cpu"))
    assert "normal" in r.report["maps"]
    a, b = _judge_pair(src, out, ["normal"])
    err = normal_error_deg(a, b)
    assert err.size > 5000
    print(f"{name}: mean normal error {err.mean():.2f} deg, p90 {np.percentile(err, 90):.2f}")
    assert err.mean() <= limit, (err.mean(), np.percentile(err, 90))
    if name == "normal_mapped":
        # the map matters: without it Blender sees the source's detail gone
        base = bake(src, tmp_path / "base.glb", BakeOptions(faces=3000, texture_size=256, device="cpu", maps="base"))
        assert base.report["maps"] == {"base": "texture"}
        _, c = _judge_pair(src, tmp_path / "base.glb", ["normal"])
        assert normal_error_deg(a, c).mean() > 3 * err.mean()


def test_two_material_pbr_in_blender(tmp_path):
    src = pbr_sources.make("two_material", tmp_path / "two.glb")
    out = tmp_path / "out.glb"
    r = bake(src, out, BakeOptions(faces=4000, texture_size=1024, device="cpu"))
    assert r.report["maps"] == {"base": "texture", "normal": "texture", "orm": "texture", "emissive": "texture"}
    chans = ["base", "alpha", "metallic", "roughness", "emission", "normal"]
    a, b = _judge_pair(src, out, chans)
    got = {ch: channel_psnr(a, b, ch, peak=1.0 if ch != "emission" else None, srgb=ch == "base") for ch in chans if ch != "normal"}
    err = normal_error_deg(a, b)
    print({k: round(v, 2) for k, v in got.items()}, f"normal {err.mean():.2f} deg")
    assert got["metallic"] >= 28 and got["roughness"] >= 28 and got["emission"] >= 28, got
    assert got["alpha"] >= 22, got
    assert got["base"] >= 35, got
    assert err.mean() <= 4.0
