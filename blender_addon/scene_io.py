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
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

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


# --------------------------------------------------------------------------- selection


class TargetMode(str, Enum):
    NEW = "NEW"  # the selected objects form one source; the engine makes a new low-poly
    ACTIVE = "ACTIVE"  # selected to active: the active mesh is the target, the others the sources


@dataclass
class BakeSelection:
    """What a bake reads: the source objects, the optional target, and the object
    whose frame the export uses (the result is placed with its world matrix)."""

    mode: TargetMode
    sources: list
    target: Optional[object] = None
    frame: Optional[object] = None
    uv_map: str = ""  # ACTIVE: the target's UV map that is baked into

    @property
    def name(self) -> str:
        return (self.target or self.frame).name


def _mesh_like(o) -> bool:
    return o is not None and o.type in EXPORTABLE_TYPES


def bake_uv_map(obj) -> str:
    """The UV map an Active-mode bake writes into: the active render UV map, else the active one."""
    layers = getattr(obj.data, "uv_layers", None)
    if not layers:
        return ""
    for uv in layers:
        if getattr(uv, "active_render", False):
            return uv.name
    return layers.active.name if layers.active is not None else layers[0].name


def resolve_selection(context, mode: str) -> BakeSelection:
    """The objects a bake uses, or EngineError with what is missing (also the poll message)."""
    mode = TargetMode(mode)
    active = getattr(context, "active_object", None)
    chosen = getattr(context, "selected_objects", None)
    if chosen is None:  # an editor whose context has no selection list
        vl = context.view_layer
        chosen = [o for o in vl.objects if o.select_get(view_layer=vl)]
    selected = [o for o in chosen if _mesh_like(o)]
    if mode is TargetMode.NEW:
        sources = list(selected)
        if _mesh_like(active) and active not in sources:
            sources.insert(0, active)
        if not sources:
            if active is not None:
                raise EngineError(f"the active object is a {active.type.lower()}: select a mesh", code="no_mesh")
            raise EngineError("select the mesh objects to bake", hint="click a mesh in the viewport (Shift+click adds more)", code="no_mesh")
        frame = active if active in sources else sources[0]
        sources.sort(key=lambda o: o is not frame)  # the frame object first, the rest in selection order
        return BakeSelection(mode, sources, frame=frame)
    if active is None or active.type != "MESH":
        raise EngineError(
            "Target Active: the active object must be the low-poly mesh" + (f" (it is a {active.type.lower()})" if active is not None else ""),
            hint="select the high-poly objects, then the low-poly last (Ctrl+click makes it active)",
            code="no_target",
        )
    sources = [o for o in selected if o is not active]
    if not sources:
        raise EngineError(
            "Target Active needs the high-poly objects selected as well",
            hint="select the high-poly objects, then the low-poly last",
            code="no_source",
        )
    uv = bake_uv_map(active)
    if not uv:
        raise EngineError(
            f"Target Active: {active.name!r} has no UV map to bake into",
            hint="unwrap it first (UV > Smart UV Project), or set Target to New to let Kiln make a low-poly",
            code="no_uv",
        )
    return BakeSelection(mode, sources, target=active, frame=active, uv_map=uv)


def is_deformed(obj) -> bool:
    """Skinned, shape-keyed or animated: the bake uses the evaluated (posed) mesh of the current frame."""
    if any(m.type in ("ARMATURE", "MESH_DEFORM", "SURFACE_DEFORM", "LATTICE", "HOOK") for m in getattr(obj, "modifiers", ())):
        return True
    data = getattr(obj, "data", None)
    if getattr(data, "shape_keys", None) is not None and len(data.shape_keys.key_blocks) > 1:
        return True
    ad = obj.animation_data
    return bool(ad is not None and (ad.action is not None or len(ad.drivers)))


# --------------------------------------------------------------------------- export


@dataclass
class ExportInfo:
    """What went to the engine, in the artist's units."""

    objects: int = 0
    polygons: int = 0
    triangles: int = 0
    vertices: int = 0
    materials: int = 0
    deformed: list = field(default_factory=list)  # names of skinned/animated objects (baked as posed)
    ignored: list = field(default_factory=list)  # what the glTF export drops, in words


_PROCEDURAL = {"TEX_NOISE", "TEX_VORONOI", "TEX_WAVE", "TEX_MUSGRAVE", "TEX_MAGIC", "TEX_CHECKER", "TEX_BRICK", "TEX_GRADIENT", "TEX_SKY", "TEX_ENVIRONMENT", "TEX_WHITE_NOISE", "TEX_GABOR", "TEX_POINTDENSITY", "TEX_IES"}


def material_notes(mat) -> list:
    """What of ``mat`` the glTF exporter (and so the bake) does not carry, in words."""
    if mat is None:
        return []
    if not mat.use_nodes or mat.node_tree is None:
        return []
    nodes = mat.node_tree.nodes
    notes = []
    out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL" and n.is_active_output), None) or next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None)
    shader = None
    if out is not None and out.inputs["Surface"].links:
        shader = out.inputs["Surface"].links[0].from_node
    if shader is None or shader.type not in ("BSDF_PRINCIPLED", "EMISSION", "BSDF_DIFFUSE", "MIX_SHADER", "GROUP"):
        notes.append(f"material {mat.name!r}: {shader.bl_label if shader is not None else 'no surface shader'} (only the Principled BSDF is exported)")
    procedural = sorted({n.bl_label for n in nodes if n.type in _PROCEDURAL})
    if procedural:
        notes.append(f"material {mat.name!r}: procedural {', '.join(procedural)} (bake it to an image first)")
    for n in nodes:
        if n.type == "TEX_IMAGE" and n.image is not None and n.image.packed_file is None and n.image.source == "FILE":
            path = bpy.path.abspath(n.image.filepath, library=n.image.library)
            if not os.path.isfile(path):
                notes.append(f"material {mat.name!r}: image {n.image.name!r} is missing ({path})")
    return notes


def _evaluated_mesh(obj, depsgraph):
    try:
        mesh = bpy.data.meshes.new_from_object(obj.evaluated_get(depsgraph), preserve_all_data_layers=True, depsgraph=depsgraph)
    except RuntimeError as e:
        raise EngineError(f"could not evaluate {obj.name!r}: {e}", hint="apply or fix its modifiers", code="bad_source") from None
    # Object-linked material slots are not in the mesh. Assign by index: clearing the list
    # would reset every face's material index to 0 (all faces would get the first material).
    for i, slot in enumerate(obj.material_slots):
        if i < len(mesh.materials):
            if mesh.materials[i] != slot.material:
                mesh.materials[i] = slot.material
        else:
            mesh.materials.append(slot.material)
    return mesh


def export_objects(objects, frame_matrix, scene, view_layer, depsgraph, path: str, *, uv_map: Optional[str] = None, materials: bool = True, what: str = "source") -> ExportInfo:
    """Write ``objects`` (evaluated: modifiers, shape keys, pose; their materials and UVs)
    into one GLB at ``path``, in the frame of ``frame_matrix`` (world -> frame applied to
    the vertices, so the engine's result is in that frame). ``uv_map``: keep only that UV
    map (it becomes TEXCOORD_0). ``materials=False``: geometry and UVs only (a target)."""
    for obj in objects:
        if obj is None or obj.type not in EXPORTABLE_TYPES:
            raise EngineError("select a mesh object to bake", hint="click a mesh in the viewport so it is the active object", code="no_mesh")
    info = ExportInfo()
    frame_inv = frame_matrix.inverted_safe()
    made = []  # (object, mesh)
    selected = [o for o in view_layer.objects if o is not None and o.select_get(view_layer=view_layer)]
    active = view_layer.objects.active
    try:
        for obj in objects:
            mesh = _evaluated_mesh(obj, depsgraph)
            made.append((None, mesh))
            if len(mesh.polygons) == 0:
                raise EngineError(f"{obj.name!r} has no faces after its modifiers", hint="bake a mesh with faces (not only edges or points)", code="no_faces")
            m = frame_inv @ obj.matrix_world
            mesh.transform(m)
            if m.to_3x3().determinant() < 0:  # a mirroring transform turns faces inside out
                mesh.flip_normals()
            if uv_map is not None:
                for uv in [u for u in mesh.uv_layers if u.name != uv_map]:
                    mesh.uv_layers.remove(uv)
                if len(mesh.uv_layers) == 0:
                    raise EngineError(f"{obj.name!r} has no UV map {uv_map!r}", hint="pick the UV map to bake into (Object Data > UV Maps)", code="no_uv")
            if not materials:
                mesh.materials.clear()
            mesh.calc_loop_triangles()
            info.objects += 1
            info.polygons += len(mesh.polygons)
            info.triangles += len(mesh.loop_triangles)
            info.vertices += len(mesh.vertices)
            if is_deformed(obj):
                info.deformed.append(obj.name)
            if materials:
                for mat in {s.material for s in obj.material_slots if s.material is not None}:
                    info.materials += 1
                    for note in material_notes(mat):
                        if note not in info.ignored:
                            info.ignored.append(note)
            tmp = bpy.data.objects.new(f"kiln_export_{obj.name}", mesh)  # identity transform: the frame's space
            scene.collection.objects.link(tmp)
            made[-1] = (tmp, mesh)
        tmps = [t for t, _ in made]
        has_material = materials and any(len(me.materials) and any(mm is not None for mm in me.materials) for _, me in made)
        has_colors = any(_mesh_has_color_attributes(me) for _, me in made)
        for o in selected:
            o.select_set(False, view_layer=view_layer)
        for t in tmps:
            t.select_set(True, view_layer=view_layer)
        view_layer.objects.active = tmps[0]
        op = bpy.ops.export_scene.gltf
        kwargs = dict(
            filepath=path,
            check_existing=False,
            export_format="GLB",
            use_selection=True,
            export_apply=False,  # already evaluated above
            export_yup=True,
            export_materials="EXPORT" if materials else "NONE",
            export_image_format="AUTO",
            export_texcoords=True,
            export_normals=True,
            export_tangents=False,
            export_vertex_color=("ACTIVE" if (not has_material and has_colors) else "MATERIAL") if materials else "NONE",
            export_active_vertex_color_when_no_material=bool(materials),
            export_all_vertex_colors=False,
            export_animations=False,
            export_skins=False,
            export_morph=False,
            export_cameras=False,
            export_lights=False,
            export_extras=False,
            will_save_settings=False,
        )
        if "export_vertex_color" not in _op_props(op):  # Blender < 4.2
            kwargs["export_colors"] = bool(materials)
        with bpy.context.temp_override(**window_override(scene), active_object=tmps[0], object=tmps[0], selected_objects=tmps):
            res = op(**_supported(op, kwargs))
        if "FINISHED" not in res or not os.path.isfile(path):
            names = ", ".join(repr(o.name) for o in objects)
            raise EngineError(f"glTF export of the {what} ({names}) failed", hint="see the system console for the exporter's message", code="export_failed")
        return info
    finally:
        for tmp, mesh in made:
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


def export_source(obj, scene, view_layer, depsgraph, path: str) -> dict:
    """One object in its local frame (kept for scripts): {"faces": polygons, "triangles", "vertices"}."""
    info = export_objects([obj], obj.matrix_world if obj is not None else None, scene, view_layer, depsgraph, path)
    return {"faces": info.polygons, "triangles": info.triangles, "vertices": info.vertices}


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
    store_report(obj, report, name)
    return _select_only(obj, view_layer)


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



# --------------------------------------------------------------------------- Active mode: the target's copy

REPORT_PROPS = ("faces_out", "faces_in", "triangles_in", "triangles_out", "texture_size", "backend", "total_seconds", "texels_missed", "uv_overlap_fraction")


def _select_only(obj, view_layer):
    """Make the new result the only selected and the active object (what an artist expects after a bake)."""
    for o in view_layer.objects:
        if o is not None and o.select_get(view_layer=view_layer):
            o.select_set(False, view_layer=view_layer)
    obj.select_set(True, view_layer=view_layer)
    view_layer.objects.active = obj
    view_layer.update()
    return obj


def store_report(obj, report: Optional[dict], source_name: str) -> None:
    """The engine's report figures as custom properties ``kiln_<key>`` on the result."""
    for key in REPORT_PROPS:
        v = (report or {}).get(key)
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            obj[f"kiln_{key}"] = v
    maps = (report or {}).get("maps")
    if isinstance(maps, dict):
        obj["kiln_maps"] = ", ".join(f"{k}: {v}" for k, v in maps.items())
    obj["kiln_source"] = source_name


def _load_image(tex, workdir: str, name: str, non_color: bool):
    path = os.path.join(workdir, safe_name(name) + tex.extension)
    with open(path, "wb") as fh:
        fh.write(tex.data)
    img = bpy.data.images.load(path, check_existing=False)
    img.name = name
    if non_color:
        try:
            img.colorspace_settings.name = "Non-Color"
        except TypeError:  # a colour-management config without that name
            pass
    img.pack()  # the job folder is temporary
    return img


def _set_input(node, names, value) -> None:
    for n in names:
        sock = node.inputs.get(n)
        if sock is not None:
            sock.default_value = value
            return


def _input(node, *names):
    for n in names:
        sock = node.inputs.get(n)
        if sock is not None:
            return sock
    return None


def build_baked_material(baked, name: str, uv_map: str, workdir: str):
    """A new material whose Principled BSDF gets every baked map: Image Texture nodes on
    ``uv_map`` (sRGB base/emissive, Non-Color normal/ORM), the normal map through a Normal
    Map node on the same UV map, ORM split with Separate Color (G roughness, B metallic),
    alpha wired when the bake has it, factors where a channel is constant."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next(n for n in nt.nodes if n.type == "BSDF_PRINCIPLED")
    x0, y = bsdf.location.x - 700, bsdf.location.y + 300
    uv = nt.nodes.new("ShaderNodeUVMap")
    uv.uv_map = uv_map
    uv.location = (x0 - 250, y - 300)
    images = {}

    def tex_node(tex, label, non_color, row):
        img = images.get(id(tex))
        if img is None:
            img = images[id(tex)] = _load_image(tex, workdir, f"{name}_{label}", non_color)
        node = nt.nodes.new("ShaderNodeTexImage")
        node.image = img
        node.label = label
        node.location = (x0, y - 300 * row)
        nt.links.new(uv.outputs["UV"], node.inputs["Vector"])
        return node

    def scaled(sock_out, factor, row):
        """``sock_out`` times a colour factor (skipped when the factor is 1)."""
        if all(abs(f - 1.0) < 1e-6 for f in factor[:3]):
            return sock_out
        mul = nt.nodes.new("ShaderNodeVectorMath")
        mul.operation = "MULTIPLY"
        mul.inputs[1].default_value = tuple(factor[:3])
        mul.location = (x0 + 300, y - 300 * row)
        nt.links.new(sock_out, mul.inputs[0])
        return mul.outputs[0]

    bf = tuple(baked.base_color_factor) + (1.0,) * (4 - len(baked.base_color_factor))
    if baked.base_color is not None:
        node = tex_node(baked.base_color, "basecolor", False, 0)
        nt.links.new(scaled(node.outputs["Color"], bf, 0), bsdf.inputs["Base Color"])
        if baked.alpha_mode != "OPAQUE":
            alpha = node.outputs["Alpha"]
            if abs(bf[3] - 1.0) > 1e-6:
                m = nt.nodes.new("ShaderNodeMath")
                m.operation = "MULTIPLY"
                m.inputs[1].default_value = bf[3]
                nt.links.new(alpha, m.inputs[0])
                alpha = m.outputs[0]
            if baked.alpha_mode == "MASK":
                m = nt.nodes.new("ShaderNodeMath")
                m.operation = "GREATER_THAN"
                m.inputs[1].default_value = baked.alpha_cutoff
                nt.links.new(alpha, m.inputs[0])
                alpha = m.outputs[0]
            nt.links.new(alpha, bsdf.inputs["Alpha"])
    else:
        bsdf.inputs["Base Color"].default_value = bf
        if baked.alpha_mode != "OPAQUE":
            _set_input(bsdf, ("Alpha",), bf[3])
    if baked.alpha_mode != "OPAQUE":
        for attr, value in (("surface_render_method", "DITHERED" if baked.alpha_mode == "MASK" else "BLENDED"), ("blend_method", "CLIP" if baked.alpha_mode == "MASK" else "BLEND")):
            if hasattr(mat, attr):
                try:
                    setattr(mat, attr, value)
                except (TypeError, AttributeError):
                    pass
    if baked.metallic_roughness is not None:
        node = tex_node(baked.metallic_roughness, "orm", True, 1)
        sep = nt.nodes.new("ShaderNodeSeparateColor")
        sep.location = (x0 + 300, y - 300)
        nt.links.new(node.outputs["Color"], sep.inputs[0])
        for out_name, in_name, factor in (("Green", "Roughness", baked.roughness_factor), ("Blue", "Metallic", baked.metallic_factor)):
            sock = sep.outputs[out_name]
            if abs(factor - 1.0) > 1e-6:
                m = nt.nodes.new("ShaderNodeMath")
                m.operation = "MULTIPLY"
                m.inputs[1].default_value = factor
                nt.links.new(sock, m.inputs[0])
                sock = m.outputs[0]
            nt.links.new(sock, bsdf.inputs[in_name])
    else:
        bsdf.inputs["Metallic"].default_value = baked.metallic_factor
        bsdf.inputs["Roughness"].default_value = baked.roughness_factor
    if baked.normal is not None:
        node = tex_node(baked.normal, "normal", True, 2)
        nm = nt.nodes.new("ShaderNodeNormalMap")
        nm.space = "TANGENT"
        nm.uv_map = uv_map
        nm.inputs["Strength"].default_value = baked.normal_scale
        nm.location = (x0 + 300, y - 600)
        nt.links.new(node.outputs["Color"], nm.inputs["Color"])
        nt.links.new(nm.outputs["Normal"], bsdf.inputs["Normal"])
    emission = _input(bsdf, "Emission Color", "Emission")
    ef = tuple(baked.emissive_factor)
    if emission is not None and (baked.emissive is not None or any(c > 0 for c in ef)):
        if baked.emissive is not None:
            node = tex_node(baked.emissive, "emissive", False, 3)
            nt.links.new(scaled(node.outputs["Color"], ef, 3), emission)
        else:
            emission.default_value = ef[:3] + (1.0,)
        _set_input(bsdf, ("Emission Strength",), 1.0)
    return mat


def make_target_result(target, glb_path: str, scene, view_layer, uv_map: str, workdir: str, report: Optional[dict] = None):
    """Active mode: a copy of ``target`` (same vertices, UVs, modifiers, vertex groups, parent
    and rig; its own copy of the mesh data) named ``<target>_kiln`` in the Kiln collection,
    carrying one new material with the baked maps of ``glb_path`` on ``uv_map``."""
    from .core.glb import read_baked_material

    baked = read_baked_material(glb_path)
    if baked.base_color is None and baked.normal is None and baked.metallic_roughness is None and baked.emissive is None:
        raise EngineError("the engine's result carries no baked texture", hint="update the engine; the result GLB is kept in the job folder", code="bad_result")
    if uv_map not in target.data.uv_layers:
        raise EngineError(f"{target.name!r} lost its UV map {uv_map!r} while the engine worked", hint="bake again", code="no_uv")
    name = f"{target.name}_kiln"
    mat = build_baked_material(baked, name, uv_map, workdir)
    obj = target.copy()  # modifiers, constraints, parent (armature), vertex-group names, animation
    obj.data = target.data.copy()  # the original's mesh and materials stay untouched
    obj.name = name
    obj.data.name = name
    obj.data.materials.clear()  # one material for every face
    obj.data.materials.append(mat)
    coll = kiln_collection(scene)
    coll.objects.link(obj)
    _unexclude(view_layer, coll)
    obj.hide_set(False, view_layer=view_layer)
    obj.hide_viewport = False
    obj.hide_render = False
    store_report(obj, report, target.name)
    obj["kiln_uv_map"] = uv_map
    return _select_only(obj, view_layer)


def result_triangles(obj) -> int:
    me = obj.data
    me.calc_loop_triangles()
    return len(me.loop_triangles)
