"""Load a bake source from a file: .glb .gltf .obj (+mtl+textures) .ply, or a .zip holding one.

Returns an engine.mesh.source.SourceMesh. Every problem (missing, empty,
unsupported, corrupt, truncated) raises InputError with one line naming it.
Gaussian-splat PLYs are recognised and refused here with a pointer to the
splat path (they are not meshes; engine.splat handles them).
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from engine.errors import InputError
from engine.io import require_file
from engine.mesh.source import Material, SourceMesh, srgb_to_linear

from engine.io.formats import MESH_SUFFIXES, MODEL_SUFFIXES, detect_file  # noqa: E402,F401  (the one format table)


def sniff_format(path: Path) -> str:
    """Format from content (engine.io.formats, the table the service's upload check uses too)."""
    return detect_file(path) or "unknown"


def load_source(path, options=None) -> SourceMesh:
    from engine.io.formats import FORMATS, loader

    p = require_file(path)
    fmt = sniff_format(p)
    if fmt not in FORMATS or FORMATS[fmt].loader is None:
        what = f"a {fmt.upper()} image, not a 3D model" if fmt in FORMATS else "not a format Kiln reads"
        raise InputError(
            f"unsupported format: '{p.name}' is {what}",
            hint="use .glb, .gltf, .obj (+.mtl and textures, or all zipped) or .ply",
            code="unsupported_format",
        )
    return loader(fmt)(p) if fmt != "zip" else load_zip(p, options)


def load_obj(p: Path) -> SourceMesh:
    return _load_trimesh(p, "obj")


def load_ply(p: Path) -> SourceMesh:
    if _is_splat_ply(p):
        raise InputError(
            f"'{p.name}' is a Gaussian-splat PLY, not a mesh",
            hint="bake splats on CUDA with `kiln bake splat.ply --mesh MESH` (engine.splat)",
            code="splat_source",
        )
    return _load_trimesh(p, "ply")


def _is_splat_ply(p: Path) -> bool:
    try:
        from engine.splat.ply import is_splat_ply

        return bool(is_splat_ply(p))
    except ImportError:
        with open(p, "rb") as f:
            head = f.read(4096)
        return b"f_dc_0" in head and b"opacity" in head


def load_zip(p: Path, options=None) -> SourceMesh:
    try:
        zf = zipfile.ZipFile(p)
    except zipfile.BadZipFile:
        raise InputError(f"corrupt zip archive: {p.name}", code="corrupt_file")
    with zf, tempfile.TemporaryDirectory(prefix="kiln_zip_") as tmp:
        root = Path(tmp).resolve()
        total = 0
        members = []
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename.replace("\\", "/")
            target = (root / name).resolve()
            try:
                target.relative_to(root)
            except ValueError:
                raise InputError(f"zip member escapes the archive: '{info.filename}'", code="bad_input")
            total += info.file_size
            if total > 4 * 1024**3:
                raise InputError("zip archive expands to more than 4 GB", code="too_large")
            members.append((info, target))
        models = sorted(
            [t for _, t in members if t.suffix.lower() in MODEL_SUFFIXES],
            key=lambda t: (MODEL_SUFFIXES.index(t.suffix.lower()), len(t.parts)),
        )
        if not models:
            raise InputError(f"zip '{p.name}' holds no .obj/.glb/.gltf/.ply model", code="unsupported_format")
        try:
            for info, target in members:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise InputError(f"corrupt zip archive {p.name}: {e}", code="corrupt_file")
        mesh = load_source(models[0], options)
        mesh.name = p.stem
        return mesh


def _load_trimesh(p: Path, fmt: str) -> SourceMesh:
    import logging

    import trimesh

    logging.getLogger("trimesh").setLevel(logging.ERROR)
    try:
        loaded = trimesh.load(str(p), file_type=fmt, process=False, force="scene")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot read {fmt.upper()} '{p.name}': corrupt or truncated ({e.__class__.__name__}: {str(e)[:120]})", hint="re-export the file", code="corrupt_file")
    geoms = []
    try:
        for name, g in loaded.geometry.items():
            pass
        for node in loaded.graph.nodes_geometry:
            tf, gname = loaded.graph[node]
            g = loaded.geometry[gname]
            if isinstance(g, trimesh.Trimesh) and len(g.faces):
                geoms.append((g, np.asarray(tf, np.float64)))
    except Exception as e:
        raise InputError(f"cannot read {fmt.upper()} '{p.name}': {e}", code="corrupt_file")
    if not geoms:
        raise InputError(f"'{p.name}' contains no triangles", hint="a point cloud or an empty file cannot be baked", code="empty_mesh")
    mtl_mats: dict = {}
    ignored: list = []
    if fmt == "obj":
        mtl_mats = _obj_materials(p, ignored)
    V, F, UV, VC, FM, mats = [], [], [], [], [], []
    any_uv = any_vc = False
    nv = 0
    for g, tf in geoms:
        v = np.asarray(g.vertices, np.float64) @ tf[:3, :3].T + tf[:3, 3]
        f = np.asarray(g.faces, np.int64)
        if np.linalg.det(tf[:3, :3]) < 0:
            f = f[:, [0, 2, 1]]
        vis = g.visual
        uv = None
        vc = None
        mat = Material(name=f"{p.stem}_{len(mats)}", base_color_factor=np.array([0.8, 0.8, 0.8, 1.0], np.float32))
        kind = getattr(vis, "kind", None)
        tm_mat = getattr(vis, "material", None)
        own = mtl_mats.get(getattr(tm_mat, "name", None)) if tm_mat is not None else None
        vis_uv = getattr(vis, "uv", None)
        if vis_uv is not None and len(vis_uv) == len(v):
            uv = np.asarray(vis_uv, np.float32)[:, :2].copy()
            uv[:, 1] = 1.0 - uv[:, 1]  # trimesh: v up; Kiln (glTF): v down
            any_uv = True
        if own is not None:
            import copy

            mat = copy.copy(own)
        elif kind == "texture":
            m = tm_mat
            img = getattr(m, "baseColorTexture", None) or getattr(m, "image", None)
            fac = getattr(m, "baseColorFactor", None)
            if fac is None:
                fac = getattr(m, "diffuse", None)
            if fac is not None:
                fac = np.asarray(fac, np.float32).reshape(-1)
                if fac.max() > 1.0:
                    fac = fac / 255.0
                mat.base_color_factor = np.concatenate([fac[:3], [fac[3] if len(fac) > 3 else 1.0]]).astype(np.float32)
            if img is not None and uv is not None:
                arr = np.asarray(img.convert("RGBA" if "A" in img.getbands() else "RGB"), np.uint8)
                mat.texture = arr
        elif kind == "vertex":
            c = np.asarray(vis.vertex_colors, np.float32) / 255.0
            vc = np.concatenate([srgb_to_linear(c[:, :3]), c[:, 3:4] if c.shape[1] > 3 else np.ones((len(c), 1), np.float32)], 1)
            mat.base_color_factor = np.ones(4, np.float32)  # 8-bit PLY/OBJ colours are display (sRGB) colours
            if (vc[:, 3] < 0.999).any():
                mat.alpha_mode = "BLEND"
            any_vc = True
        elif kind == "face":
            c = np.asarray(vis.face_colors, np.float32) / 255.0
            fc = np.concatenate([srgb_to_linear(c[:, :3]), c[:, 3:4] if c.shape[1] > 3 else np.ones((len(c), 1), np.float32)], 1)
            v = v[f].reshape(-1, 3)
            if uv is not None:
                uv = uv[f].reshape(-1, 2)
            vc = np.repeat(fc, 3, axis=0)
            f = np.arange(len(v), dtype=np.int64).reshape(-1, 3)
            mat.base_color_factor = np.ones(4, np.float32)
            if (vc[:, 3] < 0.999).any():
                mat.alpha_mode = "BLEND"
            any_vc = True
        V.append(v)
        F.append(f + nv)
        UV.append(uv if uv is not None else np.zeros((len(v), 2), np.float32))
        VC.append(vc)
        FM.append(np.full(len(f), len(mats), np.int32))
        mats.append(mat)
        nv += len(v)
    normals = None
    if fmt == "obj" and all(_has_normals(g) for g, _ in geoms) and len(V) == len(geoms) and all(len(x) == len(g.vertices) for x, (g, _) in zip(V, geoms)):
        normals = np.concatenate([np.asarray(g.vertex_normals, np.float64) @ np.linalg.inv(tf[:3, :3]).T for g, tf in geoms])
        normals = (normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)).astype(np.float32)
    return SourceMesh(
        vertices=np.concatenate(V).astype(np.float32) if all(np.isfinite(x).all() for x in V) else np.concatenate(V),
        faces=np.concatenate(F),
        uv=np.concatenate(UV).astype(np.float32) if any_uv else None,
        vertex_color=np.concatenate([c if c is not None else np.ones((len(v), 4), np.float32) for c, v in zip(VC, V)]) if any_vc else None,
        face_material=np.concatenate(FM),
        materials=mats,
        name=p.name,
        normals=normals,
        ignored_features=sorted(set(ignored)),
    )


def _has_normals(g) -> bool:
    """OBJ files with `vn`: trimesh keeps them (process=False) as vertex normals in its cache."""
    try:
        return "vertex_normals" in g._cache.cache
    except Exception:
        return False


def _obj_materials(p: Path, ignored: list) -> dict:
    """Every material of the OBJ's mtllib files, read in full (engine.io.mtl)."""
    from engine.io.mtl import parse_mtl

    out: dict = {}
    try:
        with open(p, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("mtllib"):
                    for name in line.split(None, 1)[1:]:
                        q = (p.parent / name.strip()).resolve()
                        try:
                            q.relative_to(p.parent.resolve())
                        except ValueError:
                            ignored.append(f"material library outside the model's folder: {name.strip()}")
                            continue
                        if q.is_file():
                            out.update(parse_mtl(q, ignored))
                        else:
                            ignored.append(f"material library not found: {name.strip()}")
    except OSError:
        pass
    return out
