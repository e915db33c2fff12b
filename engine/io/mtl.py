"""Wavefront MTL materials, read in full (trimesh keeps only the diffuse colour and texture).

Mapping to Kiln's glTF-style Material (as Blender's OBJ importer reads MTL):
  Kd / map_Kd       base colour factor (linear) / texture (sRGB)
  d, Tr / map_d     alpha (d = 1 - Tr); a map_d becomes the base texture's alpha; alphaMode BLEND
  Ke / map_Ke       emissive factor / texture
  Ns                roughness = 1 - sqrt(Ns / 1000) (unless Pr is given)
  Pr / map_Pr       roughness factor / map (into the metallic-roughness image's G)
  Pm / map_Pm       metallic factor / map (its B)
  norm, map_Bump, bump   tangent-space normal map; a grey height map is turned into one (-bm scales it)
Texture options -o (offset) and -s (scale) become a UV transform; -clamp on -> clamp wrap.
Unreadable or missing texture files fall back to the factor and are named in ``ignored``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from engine.mesh.source import Material, TextureRef


def _parse_map(args: list[str]) -> tuple[str | None, dict]:
    """'-o 0 0 -s 2 2 -bm 0.5 file name.png' -> ('file name.png', {'o': [...], 's': [...], 'bm': 0.5, 'clamp': bool})."""
    opts: dict = {}
    i = 0
    nargs = {"-o": 3, "-s": 3, "-t": 3, "-bm": 1, "-clamp": 1, "-blendu": 1, "-blendv": 1, "-boost": 1, "-mm": 2,
             "-texres": 1, "-imfchan": 1, "-cc": 1, "-type": 1}
    while i < len(args) and args[i].startswith("-") and args[i] in nargs:
        key = args[i]
        n = nargs[key]
        vals = []
        j = i + 1
        while j < len(args) and len(vals) < n:
            try:
                vals.append(float(args[j]))
            except ValueError:
                if key in ("-clamp", "-blendu", "-blendv", "-cc", "-imfchan", "-type"):
                    vals.append(args[j])
                else:
                    break
            j += 1
        opts[key[1:]] = vals
        i = j
    name = " ".join(args[i:]).strip() or None
    return name, opts


def _read_image(path: Path, ignored: list, what: str):
    from engine.errors import InputError

    if not path.is_file():
        ignored.append(f"{what}: texture file not found ({path.name})")
        return None
    try:
        from engine.io.safety import check_image_pixels

        im = check_image_pixels(path.read_bytes(), f"texture '{path.name}'")
        im.load()
    except InputError as e:
        ignored.append(f"{what}: {e.message}")
        return None
    except Exception as e:
        ignored.append(f"{what}: texture '{path.name}' cannot be decoded ({e.__class__.__name__})")
        return None
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    return np.asarray(im, np.uint8)


def _transform(opts: dict):
    """-o / -s (in OBJ's v-up UVs) as a transform of Kiln's (glTF, v-down) UVs."""
    o = list(opts.get("o") or [])
    s = list(opts.get("s") or [])
    if not o and not s:
        return None
    su, sv = (s + [1.0, 1.0])[:2] if s else (1.0, 1.0)
    ou, ov = (o + [0.0, 0.0])[:2] if o else (0.0, 0.0)
    m = np.zeros((3, 2), np.float32)
    m[0, 0], m[1, 1] = su, sv
    m[2] = (ou, 1.0 - sv - ov)  # v_obj' = sv v_obj + ov with v_obj = 1 - v
    return m


def _grey(img: np.ndarray) -> np.ndarray:
    a = img.astype(np.float32) / 255.0
    if a.ndim == 2:
        return a
    return a[..., :3].mean(-1) if a.shape[-1] >= 3 else a[..., 0]


def _resize(a: np.ndarray, shape) -> np.ndarray:
    if a.shape[:2] == tuple(shape):
        return a
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize((shape[1], shape[0]), Image.BILINEAR))


def height_to_normal(height: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """A grey height map (H,W) in [0,1] -> tangent-space normal map uint8 (+Y up the image)."""
    h = height.astype(np.float32) * float(strength) * max(height.shape) / 64.0
    dx = (np.roll(h, -1, 1) - np.roll(h, 1, 1)) * 0.5
    dy = (np.roll(h, -1, 0) - np.roll(h, 1, 0)) * 0.5
    n = np.stack([-dx, dy, np.ones_like(h)], -1)  # image rows go down, +Y goes up
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return np.round((n * 0.5 + 0.5) * 255).astype(np.uint8)


def _looks_like_normal_map(img: np.ndarray) -> bool:
    if img.ndim != 3 or img.shape[-1] < 3:
        return False
    m = img[..., :3].reshape(-1, 3).astype(np.float32).mean(0) / 255.0
    return m[2] > 0.65 and abs(m[0] - 0.5) < 0.15 and abs(m[1] - 0.5) < 0.15


def parse_mtl(path: Path, ignored: list) -> dict[str, Material]:
    """name -> Material for every material of an MTL file (textures relative to the file's folder)."""
    base = path.parent
    mats: dict[str, dict] = {}
    cur = None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        ignored.append(f"material library not readable: {path.name}")
        return {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            parts = shlex.split(line, posix=True)
        except ValueError:
            parts = line.split()
        key, args = parts[0], parts[1:]
        if key == "newmtl":
            cur = " ".join(args)
            mats[cur] = {}
        elif cur is not None:
            mats[cur][key.lower() if key.lower().startswith(("map_", "bump", "norm", "disp", "refl")) else key] = args
    return {name: _material(name, props, base, ignored) for name, props in mats.items()}


def _floats(args, n, default):
    try:
        v = [float(x) for x in args[:n]]
    except (TypeError, ValueError):
        return default
    if len(v) == 1 and n == 3:
        v = v * 3
    return v if len(v) == n else default


def _material(name: str, p: dict, base: Path, ignored: list) -> Material:
    m = Material(name=name, base_color_factor=np.array([0.8, 0.8, 0.8, 1.0], np.float32))

    def tex(key: str, what: str):
        if key not in p:
            return None, {}
        fname, opts = _parse_map(p[key])
        if not fname:
            return None, opts
        img = _read_image(base / fname, ignored, f"{name} {what}")
        return img, opts

    if "Kd" in p:
        m.base_color_factor[:3] = _floats(p["Kd"], 3, [0.8, 0.8, 0.8])
    alpha = 1.0
    if "d" in p:
        alpha = _floats(p["d"], 1, [1.0])[0]
    elif "Tr" in p:
        alpha = 1.0 - _floats(p["Tr"], 1, [0.0])[0]
    m.base_color_factor[3] = float(np.clip(alpha, 0.0, 1.0))
    kd, kd_opts = tex("map_kd", "map_Kd")
    if kd is not None:
        m.texture = kd
        m.transform = _transform(kd_opts)
        m.wrap = "clamp" if kd_opts.get("clamp") == ["on"] else "repeat"
    md, _ = tex("map_d", "map_d")
    if md is not None:
        g = _grey(md)
        if m.texture is None:
            rgb = np.broadcast_to(np.full(3, 255, np.uint8), g.shape + (3,))
            m.texture = np.concatenate([rgb, np.round(g * 255).astype(np.uint8)[..., None]], -1)
        else:
            rgb = m.texture[..., :3] if m.texture.ndim == 3 else np.repeat(m.texture[..., None], 3, -1)
            a = _resize(np.round(g * 255).astype(np.uint8), rgb.shape[:2])
            m.texture = np.concatenate([rgb, a[..., None]], -1)
    if alpha < 1.0 or md is not None:
        m.alpha_mode = "BLEND"
    if "Ke" in p:
        m.emissive_factor = np.asarray(_floats(p["Ke"], 3, [0.0, 0.0, 0.0]), np.float32)
    ke, ke_opts = tex("map_ke", "map_Ke")
    if ke is not None:
        m.emissive = TextureRef(ke, 0, "repeat", _transform(ke_opts))
        if float(m.emissive_factor.max()) <= 0:
            m.emissive_factor = np.ones(3, np.float32)
    if "Pr" in p:
        m.roughness_factor = float(np.clip(_floats(p["Pr"], 1, [0.5])[0], 0, 1))
    elif "Ns" in p:
        ns = float(np.clip(_floats(p["Ns"], 1, [250.0])[0], 0.0, 1000.0))
        m.roughness_factor = float(1.0 - np.sqrt(ns / 1000.0))
    if "Pm" in p:
        m.metallic_factor = float(np.clip(_floats(p["Pm"], 1, [0.0])[0], 0, 1))
    pr, pr_opts = tex("map_pr", "map_Pr")
    pm, pm_opts = tex("map_pm", "map_Pm")
    if pr is not None or pm is not None:
        shape = max([x.shape[:2] for x in (pr, pm) if x is not None])
        g = np.round(_grey(_resize(pr, shape)) * 255).astype(np.uint8) if pr is not None else np.full(shape, 255, np.uint8)
        b = np.round(_grey(_resize(pm, shape)) * 255).astype(np.uint8) if pm is not None else np.full(shape, 255, np.uint8)
        m.metallic_roughness = TextureRef(np.stack([np.zeros_like(g), g, b], -1), 0, "repeat", _transform(pr_opts or pm_opts))
        if pr is not None:
            m.roughness_factor = 1.0 if "Pr" not in p else m.roughness_factor
        else:
            m.roughness_factor = m.roughness_factor  # the G channel is 1: roughness stays the factor
        if pm is not None:
            m.metallic_factor = 1.0 if "Pm" not in p else m.metallic_factor
    for key in ("norm", "map_bump", "bump"):
        img, opts = tex(key, key)
        if img is None:
            continue
        strength = float((opts.get("bm") or [1.0])[0])
        if key == "norm" or _looks_like_normal_map(img):
            nm = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, -1)
            m.normal = TextureRef(np.ascontiguousarray(nm), 0, "repeat", _transform(opts))
            m.normal_scale = strength if key != "norm" else 1.0
        else:
            m.normal = TextureRef(height_to_normal(_grey(img), strength), 0, "repeat", _transform(opts))
            ignored.append(f"{name}: bump (height) map converted to a normal map")
        break
    for key in ("disp", "refl", "map_ks", "map_ns", "map_ka"):
        if key in p:
            ignored.append(f"{key} of material '{name}'")
    return m
