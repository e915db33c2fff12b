"""blender_addon/core/glb.py: the baked material read from a real engine result (no bpy)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_addon.core.client import EngineError  # noqa: E402
from blender_addon.core.glb import Channel, read_baked_material  # noqa: E402


def _baked(tmp_path, maps=None) -> Path:
    import trimesh

    from engine.options import BakeOptions
    from engine.pipeline import bake

    m = trimesh.creation.icosphere(subdivisions=3)
    col = np.where(m.vertices[:, 2:3] > 0, [[230, 20, 20, 255]], [[20, 20, 230, 255]]).astype(np.uint8)
    m.visual.vertex_colors = col
    src = tmp_path / "src.glb"
    src.write_bytes(m.export(file_type="glb"))
    out = tmp_path / "out.glb"
    kw = {"maps": maps} if maps and "maps" in BakeOptions.field_names() else {}
    bake(str(src), str(out), BakeOptions(faces=200, texture_size=64, device="cpu", **kw))
    return out


def test_reads_the_engines_base_colour(tmp_path):
    from PIL import Image

    out = _baked(tmp_path)
    mat = read_baked_material(str(out))
    assert mat.base_color is not None and mat.base_color.mime == "image/png"
    img = np.asarray(Image.open(io.BytesIO(mat.base_color.data)).convert("RGB"))
    assert img.shape[:2] == (64, 64)
    red = ((img[..., 0] > 150) & (img[..., 2] < 100)).mean()
    blue = ((img[..., 2] > 150) & (img[..., 0] < 100)).mean()
    assert red > 0.15 and blue > 0.15, (red, blue)
    ch = mat.channels()
    assert ch[Channel.BASE] == "texture" and Channel.ORM in ch


def test_reads_every_map_when_asked(tmp_path):
    from engine.options import BakeOptions

    if "maps" not in BakeOptions.field_names():
        pytest.skip("this engine bakes base colour only")
    mat = read_baked_material(str(_baked(tmp_path, maps="base,normal,orm")))
    assert mat.normal is not None and mat.normal.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert mat.channels()[Channel.NORMAL] == "texture"


@pytest.mark.parametrize("data", [b"", b"glTF\x02\x00\x00\x00\x0c\x00\x00\x00", b"not a glb file at all, really"])
def test_broken_results_are_engine_errors(tmp_path, data):
    p = tmp_path / "bad.glb"
    p.write_bytes(data)
    with pytest.raises(EngineError) as e:
        read_baked_material(str(p))
    assert e.value.code == "bad_result"
