#!/usr/bin/env python3
"""Build the Kiln Blender extension: ``python build_addon.py`` -> dist/kiln-<version>.zip.

Pure standard library. The zip holds ``blender_addon/`` at its root (manifest
first), without caches, so it installs with Preferences -> Get Extensions ->
Install from Disk, or
``bpy.ops.extensions.package_install_files(filepath=ZIP, repo='user_default', enable_on_install=True)``.
The archive is reproducible: sorted entries, fixed timestamps.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "blender_addon"
MANIFEST = "blender_manifest.toml"
REQUIRED = ("schema_version", "id", "version", "name", "tagline", "maintainer", "type", "blender_version_min", "license")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
EXCLUDE_SUFFIXES = (".pyc", ".pyo", ".orig", ".rej", "~")
FIXED_TIME = (2024, 1, 1, 0, 0, 0)


def load_manifest(path: Path = SRC / MANIFEST) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = None
    if tomllib is not None:
        data = tomllib.loads(text)
    else:
        data = {}
        for line in text.splitlines():
            m = re.match(r'^\s*([A-Za-z_]+)\s*=\s*"([^"]*)"\s*$', line)
            if m and m.group(1) not in data:
                data[m.group(1)] = m.group(2)
        data.setdefault("license", ["?"])
    return data


def check_manifest(m: dict) -> None:
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise SystemExit(f"build_addon: {MANIFEST} lacks {', '.join(missing)}")
    if m["id"] != "kiln":
        raise SystemExit(f"build_addon: manifest id is {m['id']!r}, expected 'kiln'")
    if not SEMVER.match(str(m["version"])):
        raise SystemExit(f"build_addon: version {m['version']!r} is not semantic (MAJOR.MINOR.PATCH)")
    if len(str(m["tagline"])) > 64 or str(m["tagline"]).endswith((".", "!", "?")):
        raise SystemExit("build_addon: tagline must be at most 64 characters and not end with punctuation")
    if not SEMVER.match(str(m["blender_version_min"])):
        raise SystemExit("build_addon: blender_version_min must be MAJOR.MINOR.PATCH")


def collect(src: Path = SRC) -> list[Path]:
    files = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if any(part in EXCLUDE_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and not p.name.endswith(EXCLUDE_SUFFIXES):
            files.append(p)
    return files


def build(out_dir: Path = ROOT / "dist") -> Path:
    manifest = load_manifest()
    check_manifest(manifest)
    files = collect()
    names = {p.relative_to(SRC).as_posix() for p in files}
    for needed in (MANIFEST, "__init__.py"):
        if needed not in names:
            raise SystemExit(f"build_addon: blender_addon/{needed} is missing")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = out.with_suffix(".zip.tmp")
    files.sort(key=lambda p: (p.name != MANIFEST, p.relative_to(SRC).as_posix()))
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for p in files:
            info = zipfile.ZipInfo(p.relative_to(SRC).as_posix(), date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, p.read_bytes())
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out-dir", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = ap.parse_args(argv)
    out = build(args.out_dir)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
