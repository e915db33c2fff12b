"""Blender side of a job: export the source, import and place the result.

Main thread only (this is the one module besides the UI that touches bpy data).

Coordinate frames: the source is exported in its LOCAL space (a temporary
object with the evaluated mesh and an identity transform). glTF export turns
Blender's Z-up into glTF's Y-up, the engine keeps the frame of its input, and
glTF import turns Y-up back into Z-up, so the result's vertices are in the
source's local frame; giving the result ``source.matrix_world`` reproduces the
source's exact placement (location, rotation, scale, shear, parenting).
"""

from __future__ import annotations

import os
import re

import bpy

from .core.client import EngineError

COLLECTION_NAME = "Kiln"
EXPORTABLE_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT"}


def _op_props(op) -> set:
    try:
        return {p.identifier for p in op.get_rna_type().properties}
    except Exception:
        return set()


def _supported(op, kwargs: dict) -> dict:
    names = _op_props(op)
    return {k: v for k, v in kwargs.items() if k in names} if names else kwargs


def safe_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return s[:60] or "object"


def window_override(scene=None) -> dict:
    """Context members for calling operators from a timer (where there is no window)."""
    ctx = bpy.context
    out = {}
    win = getattr(ctx, "window", None)
    wm = ctx.window_manager
    if win is None and wm is not None and len(wm.windows):
        win = wm.windows[0]
    if win is not None:
        out["window"] = win
        out["screen"] = win.screen
    if scene is not None:
        out["scene"] = scene
        vl = None
        if win is not None and win.scene == scene:
            vl = win.view_layer
        out["view_layer"] = vl or scene.view_layers[0]
    return out


def _mesh_has_color_attributes(mesh) -> bool:
    attrs = getattr(mesh, "color_attributes", None)
    return bool(attrs is not None and len(attrs))


# --------------------------------------------------------------------------- export


def export_source(obj, scene, view_layer, depsgraph, path: str) -> dict:
    """Write ``obj`` (modifiers applied, materials, UVs, colour attributes) to
    the GLB ``path`` in its local frame. Returns {"faces": n, "vertices": n}."""
    if obj is None or obj.type not in EXPORTABLE_TYPES:
        raise EngineError("select a mesh object to bake", hint="click a mesh in the viewport so it is the active object", code="no_mesh")
    eval_obj = obj.evaluated_get(depsgraph)
    try:
        mesh = bpy.data.meshes.new_from_object(eval_obj, preserve_all_data_layers=True, depsgraph=depsgraph)
    except RuntimeError as e:
        raise EngineError(f"could not evaluate {obj.name!r}: {e}", hint="apply or fix its modifiers", code="bad_source") from None
    tmp = None
    selected = [o for o in view_layer.objects if o is not None and o.select_get(view_layer=view_layer)]
    active = view_layer.objects.active
    try:
        n_faces = len(mesh.polygons)
        if n_faces == 0:
            raise EngineError(f"{obj.name!r} has no faces after its modifiers", hint="bake a mesh with faces (not only edges or points)", code="no_faces")
        mesh.materials.clear()
        for slot in obj.material_slots:
            mesh.materials.append(slot.material)
        has_material = any(slot.material is not None for slot in obj.material_slots)
        tmp = bpy.data.objects.new("kiln_export_" + obj.name, mesh)  # identity transform: local frame
        scene.collection.objects.link(tmp)
        for o in selected:
            o.select_set(False, view_layer=view_layer)
        tmp.select_set(True, view_layer=view_layer)
        view_layer.objects.active = tmp
        op = bpy.ops.export_scene.gltf
        kwargs = dict(
            filepath=path,
            check_existing=False,
            export_format="GLB",
            use_selection=True,
            export_apply=False,  # already evaluated above
            export_yup=True,
            export_materials="EXPORT",
            export_image_format="AUTO",
            export_texcoords=True,
            export_normals=True,
            export_vertex_color="ACTIVE" if (not has_material and _mesh_has_color_attributes(mesh)) else "MATERIAL",
            export_active_vertex_color_when_no_material=True,
            export_animations=False,
            export_skins=False,
            export_morph=False,
            export_cameras=False,
            export_lights=False,
            export_extras=False,
            will_save_settings=False,
        )
        if "export_vertex_color" not in _op_props(op):  # Blender < 4.2
            kwargs["export_colors"] = True
        with bpy.context.temp_override(**window_override(scene), active_object=tmp, object=tmp, selected_objects=[tmp]):
            res = op(**_supported(op, kwargs))
        if "FINISHED" not in res or not os.path.isfile(path):
            raise EngineError(f"glTF export of {obj.name!r} failed", hint="see the system console for the exporter's message", code="export_failed")
        return {"faces": n_faces, "vertices": len(mesh.vertices)}
    finally:
        if tmp is not None:
            bpy.data.objects.remove(tmp, do_unlink=True)
        bpy.data.meshes.remove(mesh)
        for o in selected:
            try:
                o.select_set(True, view_layer=view_layer)
            except ReferenceError:
                pass
        try:
            view_layer.objects.active = active
        except ReferenceError:
            pass


# --------------------------------------------------------------------------- import


def kiln_collection(scene):
    coll = bpy.data.collections.get(COLLECTION_NAME)
    if coll is None or coll.library is not None:
        coll = bpy.data.collections.new(COLLECTION_NAME)
    if coll.name not in scene.collection.children and not any(coll.name in c.children for c in _all_children(scene.collection)):
        scene.collection.children.link(coll)
    return coll


def _all_children(coll):
    for c in coll.children:
        yield c
        yield from _all_children(c)


def _unexclude(view_layer, coll) -> None:
    def walk(lc):
        if lc.collection == coll:
            lc.exclude = False
            lc.hide_viewport = False
            return True
        return any(walk(ch) for ch in lc.children)

    walk(view_layer.layer_collection)


def find_base_color_image(mat):
    """The image node linked (directly or through simple nodes) to the Principled BSDF's Base Color."""
    if mat is None or not mat.use_nodes or mat.node_tree is None:
        return None
    for node in mat.node_tree.nodes:
        if node.type == "BSDF_PRINCIPLED":
            sock = node.inputs.get("Base Color")
            seen = set()
            stack = [l.from_node for l in sock.links] if sock is not None else []
            while stack:
                n = stack.pop()
                if n in seen:
                    continue
                seen.add(n)
                if n.type == "TEX_IMAGE" and n.image is not None:
                    return n.image
                for inp in n.inputs:
                    stack.extend(l.from_node for l in inp.links)
    return None


def _ensure_material(obj, name: str):
    """Make sure the result has a material whose Principled Base Color is the
    baked image (the glTF importer normally builds exactly that)."""
    mats = [s.material for s in obj.material_slots if s.material is not None]
    for m in mats:
        img = find_base_color_image(m)
        if img is not None:
            m.name = name
            return m, img
    # Importer produced something else: build the standard material from the first image we can find.
    img = None
    for m in mats:
        if m.use_nodes and m.node_tree:
            for n in m.node_tree.nodes:
                if n.type == "TEX_IMAGE" and n.image is not None:
                    img = n.image
                    break
    if img is None:
        raise EngineError("the engine's result has no base-colour texture", hint="update the engine; the result GLB is kept in the job folder", code="bad_result")
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next(n for n in nt.nodes if n.type == "BSDF_PRINCIPLED")
    tex = nt.nodes.new("ShaderNodeTexImage")
    tex.image = img
    tex.location = (bsdf.location.x - 350, bsdf.location.y)
    nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    obj.data.materials.clear()
    obj.data.materials.append(mat)
    return mat, img


def import_result(glb_path: str, scene, view_layer, name: str, matrix_world, report: dict | None = None):
    """Import the engine's GLB as one new mesh object named ``<name>_kiln`` in
    the "Kiln" collection, with ``matrix_world`` applied on top of the file's
    own node transforms. Returns the object (selected and active)."""
    before = set(bpy.data.objects)
    before_images = set(bpy.data.images)
    op = bpy.ops.import_scene.gltf
    kwargs = _supported(op, dict(filepath=glb_path, import_pack_images=True, merge_vertices=False, import_shading="NORMALS"))
    with bpy.context.temp_override(**window_override(scene)):
        res = op(**kwargs)
    new = [o for o in bpy.data.objects if o not in before]
    meshes = [o for o in new if o.type == "MESH"]
    if "FINISHED" not in res or not meshes:
        for o in new:
            bpy.data.objects.remove(o, do_unlink=True)
        raise EngineError("the engine's result GLB could not be imported", hint=f"see the system console; the file is {glb_path}", code="bad_result")
    local = {o: o.matrix_world.copy() for o in meshes}  # after the importer's Y-up -> Z-up and any parent empties
    for o in meshes:
        o.parent = None
    for o in new:
        if o.type != "MESH":
            bpy.data.objects.remove(o, do_unlink=True)
    obj = meshes[0]
    if len(meshes) > 1:  # the engine writes one mesh; merge defensively
        for o in meshes:
            o.matrix_world = local[o]
        with bpy.context.temp_override(**window_override(scene), active_object=obj, object=obj, selected_objects=meshes, selected_editable_objects=meshes):
            bpy.ops.object.join()
        local = {obj: obj.matrix_world.copy()}
    obj.matrix_world = matrix_world @ local[obj]
    obj.name = f"{name}_kiln"
    obj.data.name = f"{name}_kiln"
    coll = kiln_collection(scene)
    for c in list(obj.users_collection):
        c.objects.unlink(obj)
    coll.objects.link(obj)
    _unexclude(view_layer, coll)
    mat, img = _ensure_material(obj, f"{name}_kiln")
    img.name = f"{name}_kiln_basecolor"
    for im in set(bpy.data.images) - before_images:
        if im.packed_file is None and im.source == "FILE":
            try:
                im.pack()  # the job folder is temporary
            except RuntimeError:
                pass
    if report:
        for key in ("faces_out", "faces_in", "texture_size", "backend", "total_seconds"):
            if key in report and isinstance(report[key], (int, float, str)):
                obj[f"kiln_{key}"] = report[key]
    obj["kiln_source"] = name
    for o in view_layer.objects:
        if o is not None and o.select_get(view_layer=view_layer):
            o.select_set(False, view_layer=view_layer)
    obj.select_set(True, view_layer=view_layer)
    view_layer.objects.active = obj
    view_layer.update()
    return obj


# --------------------------------------------------------------------------- images (Image -> 3D)

_EXT = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "OPEN_EXR": ".exr", "TARGA": ".tga", "WEBP": ".webp"}
_CTYPE = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff", ".webp": "image/webp", ".exr": "image/x-exr", ".tga": "image/x-tga"}


def content_type_for(path: str) -> str:
    return _CTYPE.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


def image_file_for_upload(image, workdir: str, stem: str) -> str:
    """A file holding ``image``'s pixels: its own file, its packed bytes, or a PNG copy."""
    if image is None:
        raise EngineError("no image chosen", hint="pick an image file or an image in the Kiln panel", code="no_image")
    if image.packed_file is not None:
        ext = _EXT.get(image.file_format, os.path.splitext(image.filepath)[1] or ".png")
        out = os.path.join(workdir, stem + ext)
        with open(out, "wb") as fh:
            fh.write(image.packed_file.data)
        return out
    if image.source == "FILE" and not image.is_dirty:
        src = bpy.path.abspath(image.filepath, library=image.library)
        if os.path.isfile(src):
            return src
    if image.size[0] == 0 or image.size[1] == 0:
        raise EngineError(f"image {image.name!r} has no pixels", hint="load or paint the image first", code="no_image")
    out = os.path.join(workdir, stem + ".png")
    copy = image.copy()
    try:
        copy.file_format = "PNG"
        copy.filepath_raw = out
        copy.save()
    finally:
        bpy.data.images.remove(copy)
    return out

