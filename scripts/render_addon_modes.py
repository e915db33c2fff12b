"""Render docs/images/addon_modes.png: the add-on's two target modes, baked for real.

    .venv/bin/python scripts/render_addon_modes.py [OUT.png]

Needs bpy (the test extra) and the engine in the same environment. Installs the add-on zip
into a temporary Blender user folder, lets it start its local engine, bakes
* Target New: a four-material sphere (two colour factors, a packed and an external image),
* Target Active: a displaced high-poly onto the artist's decimated, Smart-UV-projected low-poly,
then renders sources and results side by side with Cycles on the CPU (small, a minute or two).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(out: str) -> None:
    home = tempfile.mkdtemp(prefix="kiln-render-")
    os.environ["BLENDER_USER_RESOURCES"] = os.path.join(home, "user")
    z = subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "-o", home], capture_output=True, text=True, check=True).stdout.strip()
    import bpy
    from mathutils import Vector

    import test_addon_blender as base
    import test_addon_blender_modes as modes

    bpy.ops.extensions.package_install_files(filepath=z, repo="user_default", enable_on_install=True)
    p = base._prefs()
    p.engine_mode, p.python_path, p.extra_env = "LOCAL", sys.executable, f"PYTHONPATH={ROOT}"
    base._clear_scene()
    s = base._scene_defaults()
    s.faces, s.texture_size, s.hide_source = 600, 512, False

    # Target Active: high-poly + the artist's low-poly -> a copy of the low-poly with the baked maps
    high, low, arm = modes._make_high_low()
    for o in bpy.context.scene.objects:
        o.select_set(False)
    high.select_set(True)
    low.select_set(True)
    bpy.context.view_layer.objects.active = low
    s.target_mode = "ACTIVE"
    assert bpy.ops.kiln.bake_selected() == {"FINISHED"}, bpy.context.window_manager.kiln_error
    active_result = bpy.data.objects["Low_kiln"]
    low.hide_set(False)
    low_view = low.copy()  # the artist's low-poly as it was, shown flat grey with its wireframe
    low_view.data = low.data.copy()
    bpy.context.scene.collection.objects.link(low_view)
    low_view.modifiers.new("Wire", "WIREFRAME").use_replace = False
    low.hide_set(True)
    assert low.hide_render  # the add-on hides the original in renders too

    # Target New: every material of a multi-material object survives
    patch, _ = modes._make_multi_material(home)
    base._select_only(patch)
    s.target_mode = "NEW"
    assert bpy.ops.kiln.bake_selected() == {"FINISHED"}, bpy.context.window_manager.kiln_error
    new_result = bpy.data.objects["Patchwork_kiln"]

    row = [(high, "high-poly"), (low_view, "your low-poly"), (active_result, "Target: Active"), (patch, "4 materials"), (new_result, "Target: New")]
    for i, (o, label) in enumerate(row):
        x = (i - 2) * 2.6
        if o.parent is not None:  # the rig is shared by the low-poly and its result: place them on their own
            o.parent = None
            o.matrix_parent_inverse.identity()
        o.location = (x, 0.0, 0.0)
        o.rotation_euler = (0.0, 0.0, 0.5)
        o.hide_set(False)
        o.hide_render = False
        cu = bpy.data.curves.new(label, "FONT")
        cu.body, cu.align_x, cu.size = label, "CENTER", 0.32
        t = bpy.data.objects.new("label_" + label, cu)
        t.location = (x, 0.0, -1.55)
        t.rotation_euler = (1.5708, 0.0, 0.0)
        bpy.context.scene.collection.objects.link(t)
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    cam.data.type, cam.data.ortho_scale = "ORTHO", 13.5
    cam.location = (0.0, -12.0, 1.2)
    cam.rotation_euler = (Vector((0.0, 12.0, -1.2))).to_track_quat("-Z", "Y").to_euler()
    bpy.context.scene.collection.objects.link(cam)
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 4.0
    sun.rotation_euler = (0.9, 0.2, -0.6)
    bpy.context.scene.collection.objects.link(sun)
    sc = bpy.context.scene
    sc.camera = cam
    if sc.world is None:
        sc.world = bpy.data.worlds.new("World")
    sc.world.use_nodes = True
    sc.world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.12, 0.13, 0.15, 1.0)
    sc.render.engine = "CYCLES"
    sc.cycles.device, sc.cycles.samples = "CPU", 24
    sc.render.resolution_x, sc.render.resolution_y = 1200, 330
    sc.render.filepath = out
    bpy.ops.render.render(write_still=True)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "images" / "addon_modes.png"))
