"""The README's material picture: source | Kiln result with every map | Kiln result, base colour only.

    .venv/bin/python scripts/render_material_picture.py [--out docs/material_bake.png] [--device cpu]

Bakes the held-out two-material object of tests/pbr_sources.py (a painted body with roughness stripes, a
metal disc, emissive spots and a normal map; a gold fin with an alpha cut-out) twice at 3,000 faces
(all maps / base only), then renders the three side by side in Blender (Cycles on the CPU, imported
with Blender's own glTF importer) and writes one PNG.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLENDER_SIDE = r"""
import bpy, json, sys, math
from mathutils import Matrix, Vector
cfg = json.loads(open(sys.argv[-1]).read())
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
for i, path in enumerate(cfg["glbs"]):
    before = set(bpy.data.objects)
    bpy.ops.import_scene.gltf(filepath=path)
    for o in set(bpy.data.objects) - before:
        if o.parent is None:
            o.matrix_world = Matrix.Rotation(math.radians(80), 4, "Z") @ o.matrix_world  # the fin faces the camera
            o.location.x += (i - 1) * 3.2
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = cfg["samples"]
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = 1200, 460
scene.render.film_transparent = False
world = bpy.data.worlds.new("w"); scene.world = world; world.use_nodes = True
world.node_tree.nodes["Background"].inputs[0].default_value = (0.05, 0.05, 0.06, 1)
world.node_tree.nodes["Background"].inputs[1].default_value = 1.0
sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN")); scene.collection.objects.link(sun)
sun.data.energy = 3.5; sun.rotation_euler = (math.radians(50), math.radians(10), math.radians(35))
fill = bpy.data.objects.new("fill", bpy.data.lights.new("fill", "AREA")); scene.collection.objects.link(fill)
fill.data.energy = 300; fill.data.size = 6; fill.location = (-3, -6, 2); fill.rotation_euler = (math.radians(70), 0, math.radians(-30))
cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam")); scene.collection.objects.link(cam); scene.camera = cam
cam.data.type = "ORTHO"; cam.data.ortho_scale = 10.2
cam.location = (0, -12, 3.2)
cam.rotation_euler = (Vector((0, 0, 0.35)) - cam.location).to_track_quat("-Z", "Y").to_euler()
scene.render.filepath = cfg["out"]
bpy.ops.render.render(write_still=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "material_bake.png"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--faces", type=int, default=3000)
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=48)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from engine.options import BakeOptions
    from engine.pipeline import bake
    from tests import pbr_sources

    with tempfile.TemporaryDirectory(prefix="kiln_picture_") as tmp:
        t = Path(tmp)
        src = pbr_sources.make("two_material", t / "source.glb")
        full, base = t / "kiln_all_maps.glb", t / "kiln_base_only.glb"
        r1 = bake(src, full, BakeOptions(faces=args.faces, texture_size=args.texture_size, device=args.device))
        r2 = bake(src, base, BakeOptions(faces=args.faces, texture_size=args.texture_size, device=args.device, maps="base"))
        print(f"all maps: {r1.report['maps']}; base only: {r2.report['maps']}", flush=True)
        cfg = t / "cfg.json"
        cfg.write_text(json.dumps({"glbs": [str(src), str(full), str(base)], "out": str(Path(args.out).resolve()), "samples": args.samples}))
        script = t / "render.py"
        script.write_text(BLENDER_SIDE)
        r = subprocess.run([sys.executable, str(script), str(cfg)], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
            return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
