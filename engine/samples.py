"""Procedural, license-clean sample sources (no downloads): the demo and the benchmark bake these.

``pebble(subdivisions)``: a bumpy, glazed-pottery-like blob -- an icosphere
displaced by smooth 3D noise, with vertex colours from a procedural pattern
(bands, spots and fine stripes, so blur and misregistration show in PSNR).
Subdivisions 7 gives 327,680 faces (the benchmark's ~300K source), 5 gives
20,480 (the CPU demo).
"""

from __future__ import annotations

import numpy as np

from engine.mesh.source import Material, SourceMesh, srgb_to_linear


def _icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    t = (1.0 + 5**0.5) / 2.0
    v = np.array(
        [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]],
        np.float64,
    )
    f = np.array(
        [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
         [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]],
        np.int64,
    )
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for _ in range(subdivisions):
        e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        e.sort(axis=1)
        uniq, inv = np.unique(e, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        mid = v[uniq].mean(1)
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        m = len(f)
        a, b, c = (inv[:m] + len(v)), (inv[m : 2 * m] + len(v)), (inv[2 * m :] + len(v))
        v = np.concatenate([v, mid])
        f = np.concatenate([np.stack([f[:, 0], a, c], 1), np.stack([f[:, 1], b, a], 1), np.stack([f[:, 2], c, b], 1), np.stack([a, b, c], 1)])
    return v, f


def _noise(p: np.ndarray, seed: int, octaves: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(len(p))
    amp = 1.0
    for o in range(octaves):
        k = rng.normal(size=(6, 3)) * (1.5 * 2**o)
        ph = rng.uniform(0, 2 * np.pi, 6)
        out += amp * np.sin(p @ k.T + ph).sum(1) / 6
        amp *= 0.5
    return out


def pebble(subdivisions: int = 7, seed: int = 3) -> SourceMesh:
    v, f = _icosphere(subdivisions)
    d = 1.0 + 0.18 * _noise(v, seed) + 0.015 * np.sin(40 * v[:, 1])
    pos = v * d[:, None] * np.array([1.0, 1.25, 0.9])
    lat = np.arcsin(np.clip(v[:, 1], -1, 1))
    lon = np.arctan2(v[:, 2], v[:, 0])
    base = np.array([0.78, 0.42, 0.22])  # terracotta
    glaze = np.array([0.12, 0.38, 0.52])  # blue glaze
    band = (np.sin(lat * 9.0) > 0.35).astype(np.float64)
    spots = (np.sin(lon * 14) * np.sin(lat * 14) > 0.55).astype(np.float64)
    fine = 0.5 + 0.5 * np.sin(lon * 60 + 6 * _noise(v, seed + 1, 2))
    col = base[None] * (1 - band[:, None]) + glaze[None] * band[:, None]
    col = col * (1 - 0.6 * spots[:, None]) + np.array([0.95, 0.9, 0.7])[None] * 0.6 * spots[:, None]
    col *= (0.8 + 0.2 * fine)[:, None]
    col = np.clip(col, 0, 1)
    return SourceMesh(
        vertices=pos.astype(np.float32),
        faces=f.astype(np.int32),
        vertex_color=srgb_to_linear(col.astype(np.float32)),  # authored in sRGB, stored linear as glTF COLOR_0
        face_material=np.zeros(len(f), np.int32),
        materials=[Material(name="pebble")],
        name=f"pebble_s{subdivisions}",
    )
