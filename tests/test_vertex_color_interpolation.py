"""BakeOptions.vertex_color_interpolation: vertex colours blended in linear (glTF) or in sRGB (AI generators' renders)."""

import dataclasses

import numpy as np
import pytest
import torch

from engine.bake.channels import channel_class
from engine.bake.surface import linear_to_srgb_t, surface_for
from engine.errors import InputError
from engine.mesh.source import SourceMesh
from engine.options import BakeOptions
from engine.pipeline import bake


def _tri():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    c = np.array([[0, 0, 0, 1], [1, 1, 1, 1], [0.2, 0.5, 1.0, 1]], np.float32)  # linear
    return SourceMesh(v, np.array([[0, 1, 2]], np.int32), vertex_color=c, name="tri")


def _base(src, bary):
    ch = channel_class("base")(surface_for(src, "cpu"))
    return ch.sample(torch.zeros(len(bary), dtype=torch.long), torch.as_tensor(bary, dtype=torch.float32))[:, :3]


def test_srgb_interpolation_blends_encoded_colours():
    lin = _tri()
    srgb = dataclasses.replace(lin, vertex_color_interpolation="srgb")
    corners = np.eye(3, dtype=np.float32)
    # at the vertices both conventions give the vertex colours
    np.testing.assert_allclose(_base(lin, corners), _base(srgb, corners), atol=1e-5)
    mid = np.array([[0.5, 0.5, 0.0]], np.float32)  # halfway between black and white
    enc = linear_to_srgb_t(torch.tensor([[0.5, 0.5, 0.5]]))
    np.testing.assert_allclose(_base(lin, mid), enc, atol=1e-4)  # linear blend 0.5, shown sRGB-encoded (~0.735)
    np.testing.assert_allclose(_base(srgb, mid), [[0.5, 0.5, 0.5]], atol=1e-4)  # sRGB blend: 0.5 encoded


def test_option_is_validated_and_reaches_the_bake(tmp_path):
    with pytest.raises(InputError, match="vertex_color_interpolation"):
        BakeOptions(vertex_color_interpolation="gamma").validate()
    with pytest.raises(InputError):
        BakeOptions.from_dict({"vertex_color_interpolation": 2.2})
    from engine.samples import pebble

    src = pebble(3)
    texs = {}
    for conv in ("linear", "srgb"):
        r = bake(src, tmp_path / f"{conv}.glb", BakeOptions(device="cpu", faces=300, texture_size=64, maps="base",
                                                            vertex_color_interpolation=conv))
        assert r.report["options"]["vertex_color_interpolation"] == conv
        texs[conv] = r.maps["base"].image.astype(np.float32)
    # sRGB blending of the pebble's colours gives different (darker between bright and dark vertices) texels
    cov = r.coverage
    assert np.abs(texs["linear"][cov] - texs["srgb"][cov]).mean() > 0.3
    assert src.vertex_color_interpolation == "linear"  # the caller's mesh is not changed


def test_cli_flag(tmp_path):
    from engine.pipeline.cli import add_bake_arguments, options_from_args
    import argparse

    p = argparse.ArgumentParser()
    add_bake_arguments(p)
    o = options_from_args(p.parse_args(["--vertex-colors", "srgb", "--no-view-fit"]))
    assert o.vertex_color_interpolation == "srgb" and o.view_fit is False
    assert options_from_args(p.parse_args([])).view_fit is True
