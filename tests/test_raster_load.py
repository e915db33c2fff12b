"""Absurd geometry (a triangle soup that would overflow the rasteriser) is refused during validation, on the CPU,
before simplify, unwrap or any GPU call (issue 12's GPU safety)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError
from engine.mesh.source import SourceMesh
from engine.mesh.validate import MAX_OVERDRAW, raster_overdraw, validate_source
from engine.options import BakeOptions
from engine.samples import pebble


def soup(n_faces: int, seed: int = 0) -> SourceMesh:
    rng = np.random.default_rng(seed)
    v = rng.uniform(-1, 1, (3 * n_faces, 3)).astype(np.float32)
    return SourceMesh(v, np.arange(3 * n_faces, dtype=np.int32).reshape(n_faces, 3), name="soup")


def test_closed_shape_has_about_two_layers():
    _, rep = validate_source(pebble(4))
    assert 1.5 < rep["raster_overdraw"] < 2.5  # front and back of a closed blob


def test_sphere_overdraw_formula():
    # a sphere of radius 1 has 4 pi of surface; seen from the bake distance it shows about 2 layers on its disc
    assert 1.0 < raster_overdraw(4 * np.pi, 1.0) < 4.0


@pytest.mark.parametrize("n_faces", [200_000, 2_000_000])
def test_triangle_soup_is_refused_before_simplify(n_faces):
    """200K faces: the exact check after validation; 2M: the sampled early check, before the full validation."""
    from engine.pipeline import bake

    stages = []
    with pytest.raises(InputError) as e:
        bake(soup(n_faces), None, BakeOptions(faces=1000, texture_size=64, device="cpu"),
             progress=lambda stage, fraction, message: stages.append(stage))
    assert e.value.code == "absurd_geometry"
    assert "absurd geometry" in e.value.message and f"{n_faces:,} faces" in e.value.message
    assert e.value.hint
    assert "simplify" not in stages and "bake" not in stages
    assert stages and stages[-1] == "validate"


def test_dense_but_real_geometry_passes():
    """Many stacked shells (a 16-layer onion of 328K faces) is heavy but real: accepted, with its overdraw reported."""
    base = pebble(5)
    vs, fs = [], []
    for k in range(16):
        vs.append(base.vertices * (1.0 + 0.02 * k))
        fs.append(base.faces + k * len(base.vertices))
    onion = SourceMesh(np.concatenate(vs), np.concatenate(fs).astype(np.int32), name="onion")
    _, rep = validate_source(onion)
    assert 16 < rep["raster_overdraw"] < MAX_OVERDRAW
