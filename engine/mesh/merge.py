"""Merge several bake sources into one (many high-poly parts -> one low-poly target)."""

from __future__ import annotations

import numpy as np

from engine.mesh.source import SourceMesh


def merge_sources(meshes: list[SourceMesh], name: str | None = None) -> SourceMesh:
    """One SourceMesh holding every face, material and attribute of ``meshes`` (attributes one part lacks
    are filled with neutral values: UV 0, white opaque colour, normals computed for that part)."""
    if len(meshes) == 1:
        return meshes[0]
    V, F, FM, mats = [], [], [], []
    nv = 0
    for m in meshes:
        V.append(np.asarray(m.vertices, np.float32))
        F.append(np.asarray(m.faces, np.int64) + nv)
        fm = m.face_material if m.face_material is not None else np.zeros(len(m.faces), np.int32)
        FM.append(np.asarray(fm, np.int32) + len(mats))
        mats.extend(m.materials or [_default_material()])
        nv += len(m.vertices)

    def cat(get, width, fill):
        if all(get(m) is None for m in meshes):
            return None
        out = []
        for m in meshes:
            a = get(m)
            if a is None:
                a = np.broadcast_to(np.asarray(fill, np.float32), (len(m.vertices), width))
            out.append(np.asarray(a, np.float32)[:, :width] if np.asarray(a).shape[1] >= width else _pad(np.asarray(a, np.float32), width, fill))
        return np.ascontiguousarray(np.concatenate(out))

    uv = cat(lambda m: m.uv, 2, (0.0, 0.0))
    vc = cat(lambda m: m.vertex_color, 4, (1.0, 1.0, 1.0, 1.0))
    normals = None
    if any(m.normals is not None for m in meshes):
        from engine.bake.texel import vertex_normals

        normals = np.concatenate([np.asarray(m.normals if m.normals is not None else vertex_normals(m.vertices, m.faces), np.float32) for m in meshes])
    tangents = cat(lambda m: m.tangents, 4, (1.0, 0.0, 0.0, 1.0)) if all(m.tangents is not None for m in meshes) else None
    keys = sorted({k for m in meshes for k in (m.extra_uvs or {})})
    extra = {k: cat(lambda m, k=k: (m.extra_uvs or {}).get(k), 2, (0.0, 0.0)) for k in keys}
    ignored = sorted({x for m in meshes for x in m.ignored_features})
    return SourceMesh(
        vertices=np.concatenate(V),
        faces=np.concatenate(F),
        uv=uv,
        vertex_color=vc,
        face_material=np.concatenate(FM),
        materials=mats,
        name=name or "+".join(m.name for m in meshes),
        normals=normals,
        tangents=tangents,
        extra_uvs=extra,
        ignored_features=ignored,
    )


def _pad(a: np.ndarray, width: int, fill) -> np.ndarray:
    out = np.broadcast_to(np.asarray(fill, np.float32), (len(a), width)).copy()
    out[:, : a.shape[1]] = a
    return out


def _default_material():
    from engine.mesh.source import Material

    return Material(name="default")
