"""See a GLB the way Blender shades it: render each material input with Cycles (CPU) as an emission.

Run as a script in a fresh process (bpy keeps global state):
    python tests/blender_judge.py CONFIG.json
CONFIG: {"glb": path, "out": path.npz, "channels": [...], "cameras": [[x,y,z], ...], "target": [x,y,z],
         "lens_ortho_scale": float, "resolution": int}
The GLB is imported with Blender's own glTF importer; for each channel every
material's Principled BSDF input is rewired into an Emission shader and the
scene is rendered from each camera (orthographic, 1 sample at the pixel
centre, linear float output). Channels:
  normal     the shading normal Blender computes (Normal Map node output, else the
             geometry's smooth / custom split normal), world space, stored as is
  base       Base Color (linear), alpha: Alpha, metallic, roughness: those inputs
  emission   Emission Color x Emission Strength (linear)
The npz holds, per channel, an array (views, H, W, C) and a coverage mask (views, H, W).

``judge(glb, channels, cams, ...)`` runs that subprocess from a test and returns the arrays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHANNELS = ("normal", "base", "alpha", "metallic", "roughness", "emission")


# ------------------------------------------------------------------------------------------- test side
def view_cameras(center, radius, n: int = 6, seed: int = 0):
    """n camera positions on a sphere around the object (a fixed random set, not the bake's views)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return [list(map(float, np.asarray(center) + 3.0 * radius * x)) for x in d]


def judge(glb, channels, cameras, target, ortho_scale, resolution=192, timeout=900) -> dict:
    with tempfile.TemporaryDirectory(prefix="kiln_judge_") as tmp:
        cfg = {"glb": str(glb), "out": str(Path(tmp) / "out.npz"), "channels": list(channels), "cameras": cameras,
               "target": list(map(float, target)), "ortho_scale": float(ortho_scale), "resolution": int(resolution)}
        cp = Path(tmp) / "cfg.json"
        cp.write_text(json.dumps(cfg))
        env = dict(os.environ)
        env.setdefault("BLENDER_USER_RESOURCES", tmp)
        r = subprocess.run([sys.executable, __file__, str(cp)], capture_output=True, text=True, timeout=timeout, env=env)
        if r.returncode != 0 or not Path(cfg["out"]).exists():
            raise RuntimeError(f"blender judge failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        with np.load(cfg["out"]) as z:
            return {k: z[k] for k in z.files}


def normal_error_deg(a: dict, b: dict, erode: int = 1) -> np.ndarray:
    """Angles (degrees) between the shading normals of two judge results, over pixels both cover."""
    m = _both(a["normal_mask"], b["normal_mask"], erode)
    na = a["normal"][m][:, :3]
    nb = b["normal"][m][:, :3]
    na /= np.maximum(np.linalg.norm(na, axis=1, keepdims=True), 1e-12)
    nb /= np.maximum(np.linalg.norm(nb, axis=1, keepdims=True), 1e-12)
    return np.degrees(np.arccos(np.clip((na * nb).sum(1), -1.0, 1.0)))


def channel_psnr(a: dict, b: dict, ch: str, erode: int = 1, peak: float | None = None, srgb: bool = False) -> float:
    m = _both(a[ch + "_mask"], b[ch + "_mask"], erode)
    x = a[ch][m][..., :3].astype(np.float64)
    y = b[ch][m][..., :3].astype(np.float64)
    if srgb:
        x, y = _srgb(x), _srgb(y)
    if peak is None:
        peak = max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)
    mse = float(np.mean((x - y) ** 2)) if x.size else float("nan")
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def _srgb(c):
    c = np.clip(c, 0, 1)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def _both(ma, mb, erode):
    m = ma & mb
    if erode:
        from scipy.ndimage import binary_erosion

        m = np.stack([binary_erosion(x, iterations=erode) for x in m])
    return m


# ---------------------------------------------------------------------------------------- Blender side
def _emission_for(nt, bsdf, channel):
    """The output socket that feeds the Emission colour for ``channel`` (None: skip this material)."""
    links = {l.to_socket.as_pointer(): l.from_socket for l in nt.links}

    def src(name, default_node_maker=None):
        sock = bsdf.inputs.get(name)
        if sock is None:
            return None, None
        return links.get(sock.as_pointer()), sock

    if channel == "normal":
        s, _ = src("Normal")
        if s is None:
            geo = nt.nodes.new("ShaderNodeNewGeometry")
            s = geo.outputs["Normal"]
        return s
    name = {"base": "Base Color", "alpha": "Alpha", "metallic": "Metallic", "roughness": "Roughness"}.get(channel)
    if channel == "emission":
        col, csock = src("Emission Color") if bsdf.inputs.get("Emission Color") else src("Emission")
        strength, ssock = src("Emission Strength")
        rgb = nt.nodes.new("ShaderNodeRGB")
        rgb.outputs[0].default_value = tuple(csock.default_value) if col is None else (0, 0, 0, 1)
        c = col or rgb.outputs[0]
        mul = nt.nodes.new("ShaderNodeVectorMath")
        mul.operation = "SCALE"
        nt.links.new(c, mul.inputs[0])
        if strength is not None:
            nt.links.new(strength, mul.inputs["Scale"])
        else:
            mul.inputs["Scale"].default_value = float(ssock.default_value) if ssock is not None else 1.0
        return mul.outputs[0]
    s, sock = src(name)
    if s is not None:
        return s
    if sock is None:
        return None
    if channel == "base":
        rgb = nt.nodes.new("ShaderNodeRGB")
        rgb.outputs[0].default_value = tuple(sock.default_value)
        return rgb.outputs[0]
    val = nt.nodes.new("ShaderNodeValue")
    val.outputs[0].default_value = float(sock.default_value)
    return val.outputs[0]


def _blender_main(cfg):
    import bpy
    from mathutils import Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=cfg["glb"])
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 0.01
    scene.cycles.max_bounces = 0
    scene.render.film_transparent = True
    scene.render.resolution_x = scene.render.resolution_y = int(cfg["resolution"])
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    scene.display_settings.display_device = "sRGB"
    try:
        scene.view_settings.view_transform = "Raw"
    except TypeError:
        pass
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.image_settings.color_depth = "32"
    scene.render.image_settings.color_mode = "RGBA"
    cam_data = bpy.data.cameras.new("judge")
    cam_data.type = "ORTHO"
    cam_data.ortho_scale = float(cfg["ortho_scale"])
    cam = bpy.data.objects.new("judge", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    target = Vector(cfg["target"])
    mats = [m for m in bpy.data.materials if m.use_nodes]
    originals = {}
    for m in mats:
        out = next((n for n in m.node_tree.nodes if n.type == "OUTPUT_MATERIAL" and n.is_active_output), None)
        if out is None:
            out = next((n for n in m.node_tree.nodes if n.type == "OUTPUT_MATERIAL"), None)
        originals[m.name] = out
        m.blend_method = "OPAQUE" if hasattr(m, "blend_method") else None
    result = {}
    tmp = Path(cfg["out"]).parent
    for ch in cfg["channels"]:
        for m in mats:
            nt = m.node_tree
            bsdf = next((n for n in nt.nodes if n.type == "BSDF_PRINCIPLED"), None)
            out = originals[m.name]
            if bsdf is None or out is None:
                continue
            sock = _emission_for(nt, bsdf, ch)
            em = nt.nodes.new("ShaderNodeEmission")
            em.inputs["Strength"].default_value = 1.0
            if sock is not None:
                nt.links.new(sock, em.inputs["Color"])
            nt.links.new(em.outputs[0], out.inputs["Surface"])
        imgs, masks = [], []
        for i, pos in enumerate(cfg["cameras"]):
            cam.location = Vector(pos)
            d = target - cam.location
            cam.rotation_euler = d.to_track_quat("-Z", "Y").to_euler()
            path = str(tmp / f"{ch}_{i}.exr")
            scene.render.filepath = path
            bpy.ops.render.render(write_still=True)
            im = bpy.data.images.load(path)
            a = np.array(im.pixels[:], np.float32).reshape(im.size[1], im.size[0], 4)[::-1]
            bpy.data.images.remove(im)
            imgs.append(a[..., :3])
            masks.append(a[..., 3] > 0.999)
        result[ch] = np.stack(imgs)
        result[ch + "_mask"] = np.stack(masks)
    np.savez_compressed(cfg["out"], **result)


if __name__ == "__main__":
    _blender_main(json.loads(Path(sys.argv[1]).read_text()))
