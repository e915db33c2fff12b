"""What a batch bakes: a folder (every supported source inside, recursively) or a manifest.

Folder: every file whose suffix the loader takes (``engine.io.load.MESH_SUFFIXES``), hidden
files and folders and the output folder excepted. ``chair.glb`` with ``chair_low.glb`` beside it
(``--target-suffix _low``) is one asset: the source and the artist's own low-poly target. The
output name is the path relative to the folder without its suffix (``props/chair`` ->
``OUTDIR/props/chair.glb``), so nothing collides across sub-folders.

Manifest (paths relative to the manifest's folder):
  * CSV with a header: ``source`` (required), ``output`` (name of the GLB, optional), ``target``
    (optional low-poly), ``options`` (a JSON object, optional) and any bake option as its own
    column (``faces``, ``texture_size``, ...; an empty cell keeps the command line's value).
  * JSON lines (``.jsonl`` / ``.ndjson``, or a ``.json`` array): one object per asset with the
    same keys, ``options`` an object.

A manifest that cannot be read, or has an unknown column, is a bad command line (exit 2). A row
that names a bad option value or a clashing output name is one failed asset: the rest still bake.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional
from urllib.parse import unquote

from engine.errors import InputError, KilnError
from engine.options import BakeOptions

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")
ASSET_KEYS = ("source", "output", "target", "options")
OBJ_TEXTURE_KEYS = ("map_ka", "map_kd", "map_ks", "map_ke", "map_ns", "map_d", "map_bump", "bump", "disp", "decal", "norm", "map_pr", "map_pm")


class ManifestError(InputError):
    """The manifest or the input folder as a whole is unusable (a bad command line: exit 2)."""

    code = "bad_manifest"


@dataclass
class Asset:
    """One asset of a batch: where it comes from, where it goes, with which options."""

    name: str
    """Output name relative to OUTDIR, without '.glb' (posix separators)."""
    source: Path
    target: Optional[Path] = None
    options: dict = field(default_factory=dict)
    """The full, validated BakeOptions of this asset (command line + per-asset overrides)."""
    error: Optional[dict] = None
    """Known bad before any work (bad option value, clashing output name): {code, message, hint}."""
    row: Optional[int] = None
    """Manifest line (1-based, header = 1), for messages."""
    fault: Optional[str] = None
    """Test-only fault injection (``kind@stage``, see engine.service.worker)."""

    def output_path(self, outdir: Path) -> Path:
        return outdir / (self.name + ".glb")

    def files(self) -> list[Path]:
        """Every file the bake reads: the source, its sidecar files, the target and its sidecars."""
        out = [self.source, *dependencies(self.source)]
        if self.target is not None:
            out += [self.target, *dependencies(self.target)]
        return out


# -- sidecar files ---------------------------------------------------------------------------------
def _mtl_textures(mtl: Path) -> list[Path]:
    found = []
    try:
        text = mtl.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) < 2 or parts[0].lower() not in OBJ_TEXTURE_KEYS:
            continue
        # options (-s 1 1 1, -bm 0.5, ...) come first and the file name may hold spaces: the longest
        # tail of the line that names an existing file is it
        for cand in (" ".join(parts[i:]) for i in range(1, len(parts))):
            p = _near(mtl.parent, cand)
            if p is not None:
                found.append(p)
                break
    return found


def _near(folder: Path, name: str) -> Optional[Path]:
    name = name.strip().strip('"').replace("\\", "/")
    if not name:
        return None
    for cand in (folder / name, folder / Path(name).name):
        if cand.is_file():
            return cand
    return None


def dependencies(path: Path) -> list[Path]:
    """Files beside ``path`` that its loader also reads: an OBJ's .mtl and textures, a glTF's buffers and images."""
    suffix = path.suffix.lower()
    found: list[Path] = []
    try:
        if suffix == ".obj":
            with open(path, "r", errors="replace") as f:
                for line in f:
                    if line.startswith("mtllib"):
                        for cand in (line[6:].strip(), *line[6:].split()):
                            mtl = _near(path.parent, cand)
                            if mtl is not None:
                                found += [mtl, *_mtl_textures(mtl)]
                                break
        elif suffix == ".gltf":
            doc = json.loads(path.read_text(errors="replace"))
            for item in (doc.get("buffers") or []) + (doc.get("images") or []):
                uri = item.get("uri") if isinstance(item, dict) else None
                if isinstance(uri, str) and uri and not uri.startswith("data:"):
                    p = _near(path.parent, unquote(uri))
                    if p is not None:
                        found.append(p)
    except (OSError, ValueError, AttributeError):
        pass  # an unreadable source fails in the loader with its own clear message
    seen, out = set(), []
    for p in found:
        r = p.resolve()
        if r not in seen and r != path.resolve():
            seen.add(r)
            out.append(p)
    return out


# -- options ---------------------------------------------------------------------------------------
def resolve_options(base: dict, overrides: dict) -> tuple[dict, Optional[dict]]:
    """(full options, error): the command line's options with one asset's overrides, validated."""
    merged = dict(base)
    merged.update(overrides)
    try:
        return BakeOptions.from_dict(merged).to_dict(), None
    except KilnError as e:
        return dict(base), {"code": e.code, "message": e.message, "hint": e.hint}


def _cell_value(key: str, text: str) -> Any:
    """A CSV cell as the type of the bake option ``key`` (the check of its range is BakeOptions')."""
    default = BakeOptions.__dataclass_fields__[key].default
    t = text.strip()
    if isinstance(default, bool):
        low = t.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise InputError(f"invalid option: {key}={t!r} must be true or false", code="bad_option")
    if isinstance(default, int):
        try:
            return int(t)
        except ValueError:
            try:
                f = float(t)
            except ValueError:
                raise InputError(f"invalid option: {key}={t!r} must be an integer", code="bad_option") from None
            return int(f) if f.is_integer() else f
    if isinstance(default, float):
        try:
            return float(t)
        except ValueError:
            raise InputError(f"invalid option: {key}={t!r} must be a number", code="bad_option") from None
    return t


def _clean_name(text: str) -> str:
    """An output name from a manifest: relative, no '..', no '.glb' suffix."""
    t = text.strip().replace("\\", "/")
    if t.lower().endswith(".glb"):
        t = t[:-4]
    p = PurePosixPath(t)
    if not t or p.is_absolute() or any(part in ("..", "") for part in p.parts) or t.endswith("/"):
        raise InputError(f"output name {text!r} must be a relative file name inside OUTDIR", hint="e.g. props/chair or chair.glb", code="bad_output")
    return str(p)


def _name_of(path: Path) -> str:
    return path.stem


def _unique(assets: list[Asset]) -> list[Asset]:
    """A second asset with an output name already taken fails (nothing is silently overwritten)."""
    taken: dict[str, Asset] = {}
    for a in assets:
        key = a.name.lower()  # case-insensitive file systems would merge them
        first = taken.get(key)
        if first is None:
            taken[key] = a
        elif a.error is None:
            a.error = {
                "code": "duplicate_output",
                "message": f"output name '{a.name}.glb' is already used by {first.source.name}",
                "hint": "rename one of the sources, or give each its own `output` in a manifest",
            }
    return assets


# -- folder ----------------------------------------------------------------------------------------
def discover_folder(root: Path, base_options: dict, target_suffix: str = "_low", exclude: tuple[Path, ...] = ()) -> list[Asset]:
    from engine.io.load import MESH_SUFFIXES

    root = Path(root)
    excluded = {p.resolve() for p in exclude}
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and (d / n).resolve() not in excluded)
        for n in sorted(filenames):
            if not n.startswith(".") and Path(n).suffix.lower() in MESH_SUFFIXES:
                files.append(d / n)
    by_stem: dict[tuple[Path, str], Path] = {}
    for f in files:
        by_stem.setdefault((f.parent, f.stem), f)
    targets: dict[Path, Path] = {}  # source -> target
    used_as_target: set[Path] = set()
    if target_suffix:
        for f in files:
            if f.stem.endswith(target_suffix) and len(f.stem) > len(target_suffix):
                base = by_stem.get((f.parent, f.stem[: -len(target_suffix)]))
                if base is not None and base != f:
                    targets[base] = f
                    used_as_target.add(f)
    opts, err = resolve_options(base_options, {})
    assets = []
    for f in files:
        if f in used_as_target:
            continue
        name = f.relative_to(root).with_suffix("").as_posix()
        assets.append(Asset(name=name, source=f.resolve(), target=targets[f].resolve() if f in targets else None, options=opts, error=err))
    return _unique(assets)


# -- manifest --------------------------------------------------------------------------------------
def _manifest_rows(path: Path) -> list[tuple[int, dict]]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {path.name} is not UTF-8 text", hint="save it as UTF-8 CSV or JSON lines")
    except OSError as e:
        raise ManifestError(f"cannot read the manifest {path}: {e.strerror or e}")
    rows: list[tuple[int, dict]] = []
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "source" not in header:
            raise ManifestError(f"manifest {path.name} has no 'source' column", hint="the first line is a header: source,output,target,faces,...")
        known = set(ASSET_KEYS) | set(BakeOptions.field_names())
        unknown = [h for h in header if h and h not in known]
        if unknown:
            raise ManifestError(f"manifest {path.name}: unknown column(s) {', '.join(unknown)}",
                                hint=f"columns: {', '.join(ASSET_KEYS)} and the bake options {', '.join(BakeOptions.field_names())}")
        for i, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v if isinstance(v, str) else "") for k, v in raw.items() if k}
            if not any(v.strip() for v in row.values()):
                continue  # blank line
            rows.append((i, row))
        return rows
    stripped = text.lstrip()
    if suffix == ".json" and stripped.startswith("["):
        try:
            items = json.loads(text)
        except ValueError as e:
            raise ManifestError(f"manifest {path.name} is not valid JSON: {e}")
        numbered = list(enumerate(items, start=1))
    else:
        numbered = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                numbered.append((i, json.loads(line)))
            except ValueError as e:
                raise ManifestError(f"manifest {path.name} line {i} is not a JSON object: {e}", hint="one JSON object per line")
    for i, item in numbered:
        if not isinstance(item, dict):
            raise ManifestError(f"manifest {path.name} line {i} is not a JSON object")
        unknown = sorted(set(item) - set(ASSET_KEYS))
        if unknown:
            raise ManifestError(f"manifest {path.name} line {i}: unknown key(s) {', '.join(unknown)}", hint=f"keys: {', '.join(ASSET_KEYS)} (bake options go in \"options\")")
        rows.append((i, item))
    return rows


def read_manifest(path: Path, base_options: dict) -> list[Asset]:
    path = Path(path)
    here = path.resolve().parent
    assets = []

    def resolve(p: str) -> Path:
        q = Path(os.path.expanduser(str(p).strip()))
        return (q if q.is_absolute() else here / q).resolve()

    for i, row in _manifest_rows(path):
        source = row.get("source")
        if not isinstance(source, str) or not source.strip():
            raise ManifestError(f"manifest {path.name} line {i}: no source", hint="every row names its source file")
        src = resolve(source)
        asset = Asset(name=_name_of(src), source=src, row=i, options=dict(base_options))
        try:
            target = row.get("target")
            if target not in (None, "") and not (isinstance(target, str) and not target.strip()):
                if not isinstance(target, str):
                    raise InputError(f"target must be a path, got {target!r}", code="bad_input")
                asset.target = resolve(target)
            output = row.get("output")
            if output not in (None, "") and not (isinstance(output, str) and not output.strip()):
                if not isinstance(output, str):
                    raise InputError(f"output must be a name, got {output!r}", code="bad_output")
                asset.name = _clean_name(output)
            overrides: dict = {}
            opt = row.get("options")
            if isinstance(opt, str):
                opt = json.loads(opt) if opt.strip() else None
            if opt is not None:
                if not isinstance(opt, dict):
                    raise InputError("options must be a JSON object", code="bad_option")
                overrides.update(opt)
            for k, v in row.items():
                if k in ASSET_KEYS or v is None or (isinstance(v, str) and not v.strip()):
                    continue
                overrides[k] = _cell_value(k, v) if isinstance(v, str) else v
            asset.options, asset.error = resolve_options(base_options, overrides)
        except ValueError as e:  # options column that is not JSON
            asset.error = {"code": "bad_option", "message": f"options of line {i} are not a JSON object: {e}", "hint": None}
        except KilnError as e:
            asset.error = {"code": e.code, "message": e.message, "hint": e.hint}
        if asset.error is not None:
            asset.error["message"] = f"{path.name} line {i}: {asset.error['message']}"
        assets.append(asset)
    if not assets:
        raise ManifestError(f"manifest {path.name} lists no assets")
    return _unique(assets)


def is_manifest(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in MANIFEST_SUFFIXES


def collect(input_path: Path, base_options: dict, target_suffix: str = "_low", exclude: tuple[Path, ...] = ()) -> list[Asset]:
    """The assets of a folder or a manifest; ManifestError (exit 2) when there is nothing usable."""
    p = Path(input_path)
    if not p.exists():
        raise ManifestError(f"input not found: {p}", hint="give a folder of models or a manifest (.csv, .jsonl)")
    if p.is_dir():
        assets = discover_folder(p, base_options, target_suffix, exclude)
        if not assets:
            from engine.io.load import MESH_SUFFIXES

            raise ManifestError(f"no models found in {p}", hint=f"the folder (and its sub-folders) holds no {' '.join(MESH_SUFFIXES)} file")
        return assets
    if is_manifest(p):
        return read_manifest(p, base_options)
    raise ManifestError(f"{p.name} is neither a folder nor a manifest", hint="give a folder of models, or a manifest .csv / .jsonl / .json (to bake one file use `kiln bake`)")
