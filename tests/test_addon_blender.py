"""The Kiln add-on inside real Blender (bpy from PyPI), against a real `kiln serve`.

bpy can be imported once per process and keeps global state, so every
scenario runs in a fresh subprocess: this file, run as a script, is the
Blender-side driver (``python tests/test_addon_blender.py CONFIG.json``). It
builds nothing itself: pytest builds the zip with build_addon.py, starts the
engine, and the driver installs the zip as an extension into a temporary
Blender user folder (BLENDER_USER_RESOURCES), enables it, runs the scenarios
and prints one ``KILN_RESULT {json}`` line per scenario; pytest asserts on
those. Jobs are tiny (a few hundred faces, 128 px textures, CPU).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESHES = (ROOT.parent / "shared" / "assets" / "meshes").resolve()
IMAGES = (ROOT.parent / "shared" / "assets" / "images").resolve()
ADDON = "bl_ext.user_default.kiln"
TEX = 128

# =========================================================================== Blender side (subprocess)


def _kiln():
    return sys.modules[ADDON], sys.modules[ADDON + ".state"]


def _prefs():
    import bpy

    return bpy.context.preferences.addons[ADDON].preferences


def _clear_scene():
    import bpy

    for o in list(bpy.data.objects):
        bpy.data.objects.remove(o, do_unlink=True)
    for coll in (bpy.data.meshes, bpy.data.materials, bpy.data.images, bpy.data.collections):
        for d in list(coll):
            coll.remove(d)
    bpy.context.view_layer.update()
    st = _kiln()[1]
    st.set_error(None)
    st.rt.last_info = ""
    st.rt.notes = []


def _select_only(obj):
    import bpy

    vl = bpy.context.view_layer
    for o in bpy.context.scene.objects:
        o.select_set(False)
    obj.select_set(True)
    vl.objects.active = obj


def _import_asset(name: str):
    """Import a GLB asset and return its single mesh object (joined, unparented)."""
    import bpy

    before = set(bpy.data.objects)
    bpy.ops.import_scene.gltf(filepath=str(MESHES / name))
    new = [o for o in bpy.data.objects if o not in before]
    meshes = [o for o in new if o.type == "MESH"]
    for o in meshes:
        mw = o.matrix_world.copy()
        o.parent = None
        o.matrix_world = mw
    for o in new:
        if o.type != "MESH":
            bpy.data.objects.remove(o, do_unlink=True)
    obj = meshes[0]
    if len(meshes) > 1:
        with bpy.context.temp_override(active_object=obj, selected_editable_objects=meshes):
            bpy.ops.object.join()
    # bake the importer's transform into the mesh so the test's transform is the whole story
    obj.data.transform(obj.matrix_world)
    obj.matrix_world.identity()
    obj.name = name.split(".")[0]
    return obj


def _make_vertex_coloured():
    """An ico sphere with a colour attribute (red top, blue bottom) and no material."""
    import bmesh
    import bpy

    me = bpy.data.meshes.new("Painted")
    bm = bmesh.new()
    bmesh.ops.create_icosphere(bm, subdivisions=4, radius=1.0)
    bm.to_mesh(me)
    bm.free()
    attr = me.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
    for i, v in enumerate(me.vertices):
        attr.data[i].color = (1.0, 0.0, 0.0, 1.0) if v.co.z > 0 else (0.0, 0.0, 1.0, 1.0)
    me.color_attributes.active_color = attr
    obj = bpy.data.objects.new("Painted", me)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _set_transform(obj, loc, rot, scale, parent_loc=None):
    import bpy
    from mathutils import Euler, Matrix, Vector

    obj.matrix_world = Matrix.LocRotScale(Vector(loc), Euler(rot).to_quaternion(), Vector(scale))
    if parent_loc is not None:
        parent = bpy.data.objects.new(obj.name + "_parent", None)
        bpy.context.scene.collection.objects.link(parent)
        parent.matrix_world = Matrix.LocRotScale(Vector(parent_loc), Euler((0.0, 0.0, 0.7)).to_quaternion(), Vector((1.3, 1.3, 1.3)))
        bpy.context.view_layer.update()
        mw = obj.matrix_world.copy()
        obj.parent = parent
        obj.matrix_world = mw
    bpy.context.view_layer.update()


def _world_bbox(obj, evaluated=True):
    import bpy

    dg = bpy.context.evaluated_depsgraph_get()
    ob = obj.evaluated_get(dg) if evaluated else obj
    me = ob.to_mesh()
    mw = obj.matrix_world
    pts = [mw @ v.co for v in me.vertices]
    ob.to_mesh_clear()
    return [min(p[i] for p in pts) for i in range(3)], [max(p[i] for p in pts) for i in range(3)]


def _tri_count(obj):
    import bpy

    dg = bpy.context.evaluated_depsgraph_get()
    ob = obj.evaluated_get(dg)
    me = ob.to_mesh()
    me.calc_loop_triangles()
    n = len(me.loop_triangles)
    ob.to_mesh_clear()
    return n


def _image_stats(img):
    px = list(img.pixels)
    n = len(px) // 4
    rgb = [(px[4 * i], px[4 * i + 1], px[4 * i + 2]) for i in range(n)]
    mean = [sum(c[k] for c in rgb) / n for k in range(3)]
    var = sum((c[0] - mean[0]) ** 2 + (c[1] - mean[1]) ** 2 + (c[2] - mean[2]) ** 2 for c in rgb) / n
    reddish = sum(1 for r, g, b in rgb if r > 0.6 and b < 0.3) / n
    blueish = sum(1 for r, g, b in rgb if b > 0.6 and r < 0.3) / n
    return {"size": list(img.size), "mean": mean, "std": var ** 0.5, "red_frac": reddish, "blue_frac": blueish, "packed": img.packed_file is not None}


def _describe_result(obj, source=None):
    """Facts about a result object for pytest to assert on."""
    import bpy

    st = _kiln()[1]
    scene_io = sys.modules[ADDON + ".scene_io"]
    d = {"name": obj.name, "collections": [c.name for c in obj.users_collection], "uv_layers": len(obj.data.uv_layers),
         "faces": len(obj.data.polygons), "active": bpy.context.view_layer.objects.active == obj, "selected": obj.select_get(),
         "matrix": [list(r) for r in obj.matrix_world], "parent": obj.parent.name if obj.parent else None}
    mats = [s.material for s in obj.material_slots if s.material]
    d["materials"] = [m.name for m in mats]
    img = scene_io.find_base_color_image(mats[0]) if mats else None
    d["principled"] = bool(mats) and any(n.type == "BSDF_PRINCIPLED" for n in mats[0].node_tree.nodes)
    d["image"] = _image_stats(img) if img is not None else None
    d["bbox"] = _world_bbox(obj, evaluated=False)
    d["props"] = {k: obj[k] for k in obj.keys() if k.startswith("kiln_")}
    if source is not None:
        d["source_matrix"] = [list(r) for r in source.matrix_world]
        d["source_bbox"] = _world_bbox(source)
        d["source_tris"] = _tri_count(source)
        d["source_hidden"] = source.hide_get()
    d["info"] = st.rt.last_info
    return d


def _error_state():
    import bpy

    st = _kiln()[1]
    wm = bpy.context.window_manager
    e = st.rt.last_error
    return {"error": e.to_dict() if e else None, "wm": [wm.kiln_error, wm.kiln_error_hint, wm.kiln_error_code], "info": st.rt.last_info}


def _run_op(op, **kw):
    try:
        return {"ret": sorted(op(**kw))}
    except Exception as e:  # the add-on must not raise into scripts
        return {"ret": None, "exception": f"{e.__class__.__name__}: {e}"}


def _kiln_threads():
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("kiln-") and t.is_alive()]


def _descendants(pid):
    """All processes below ``pid`` (children of any of its threads), from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    parent[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _scene_defaults():
    import bpy

    s = bpy.context.scene.kiln
    s.faces, s.texture_size, s.device, s.views, s.hide_source = 300, TEX, "CPU", 8, True
    return s


# --- scenarios --------------------------------------------------------------


def sc_check(cfg):
    import bpy

    st = _kiln()[1]
    r = _run_op(bpy.ops.kiln.check_engine)
    info = st.rt.engine_info or {}
    return {**r, "health": info.get("health"), "kinds": info.get("kinds"), "summary": st.engine_summary(info), "doctor_type": type(info.get("doctor")).__name__,
            "engine_error": st.rt.engine_error.to_dict() if st.rt.engine_error else None}


def sc_bake_textured(cfg):
    import bpy

    _clear_scene()
    _scene_defaults()
    obj = _import_asset("Duck.glb")
    _set_transform(obj, (1.0, -2.0, 0.5), (0.3, -0.5, 1.1), (1.5, 0.7, 1.2), parent_loc=(0.0, 0.0, 1.0))
    _select_only(obj)
    bpy.ops.ed.undo_push(message="before kiln")
    t0 = time.monotonic()
    r = _run_op(bpy.ops.kiln.bake_selected)
    r["seconds"] = time.monotonic() - t0
    r.update(_error_state())
    new = bpy.data.objects.get("Duck_kiln")
    if new is not None:
        r["result"] = _describe_result(new, obj)
        # one undo step takes the whole bake back
        bpy.ops.ed.undo()
        r["after_undo"] = {"result_exists": "Duck_kiln" in bpy.data.objects, "source_hidden": bpy.data.objects["Duck"].hide_get()}
        bpy.ops.ed.redo()
        r["after_redo"] = {"result_exists": "Duck_kiln" in bpy.data.objects}
    return r


def sc_bake_modifier(cfg):
    """BoxTextured (12 triangles) with a Subdivision modifier: the evaluated mesh is baked."""
    import bpy

    _clear_scene()
    _scene_defaults().hide_source = False
    obj = _import_asset("BoxTextured.glb")
    mod = obj.modifiers.new("Subdiv", "SUBSURF")
    mod.levels = 3
    _set_transform(obj, (-3.0, 1.0, 0.0), (0.0, 0.4, -0.8), (2.0, 1.0, 1.0))
    _select_only(obj)
    r = _run_op(bpy.ops.kiln.bake_selected)
    r.update(_error_state())
    new = bpy.data.objects.get(obj.name + "_kiln")
    if new is not None:
        r["result"] = _describe_result(new, obj)
    return r


def sc_bake_vertex_colour(cfg):
    import bpy

    _clear_scene()
    _scene_defaults()
    obj = _make_vertex_coloured()
    _set_transform(obj, (0.0, 4.0, 2.0), (1.0, 0.2, 0.0), (0.5, 0.5, 2.0))
    _select_only(obj)
    r = _run_op(bpy.ops.kiln.bake_selected)
    r.update(_error_state())
    new = bpy.data.objects.get("Painted_kiln")
    if new is not None:
        r["result"] = _describe_result(new, obj)
    return r


def sc_bake_text(cfg):
    """A text object (not a mesh) is converted through its evaluated geometry."""
    import bpy

    _clear_scene()
    _scene_defaults().faces = 100
    cu = bpy.data.curves.new("Title", "FONT")
    cu.body = "Kiln"
    cu.extrude = 0.1
    obj = bpy.data.objects.new("Title", cu)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = (0.0, 0.0, 3.0)
    _select_only(obj)
    r = _run_op(bpy.ops.kiln.bake_selected)
    r.update(_error_state())
    new = bpy.data.objects.get("Title_kiln")
    if new is not None:
        r["result"] = _describe_result(new, obj)
    return r


def sc_poll(cfg):
    import bpy

    _clear_scene()
    r = {"bake_no_object": bpy.ops.kiln.bake_selected.poll(), "cancel_no_job": bpy.ops.kiln.cancel.poll()}
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    bpy.context.scene.collection.objects.link(cam)
    _select_only(cam)
    r["bake_camera"] = bpy.ops.kiln.bake_selected.poll()
    r["bake_camera_call"] = _run_op(bpy.ops.kiln.bake_selected)
    return r


def _tick_until(cond, timeout):
    st = _kiln()[1]
    msgs = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st.process_events(lambda lvl, txt: msgs.append([lvl, txt]))
        if cond():
            return True, msgs
        time.sleep(0.05)
    return False, msgs


def sc_cancel(cfg):
    """Async job (the timer path), hung on purpose in 'bake'; Cancel ends it."""
    import bpy

    _clear_scene()
    _scene_defaults()
    obj = _make_vertex_coloured()
    _select_only(obj)
    st = _kiln()[1]
    r = _run_op(bpy.ops.kiln.bake_selected, run_mode="ASYNC", fault="hang@bake")
    r["timer_registered"] = bpy.app.timers.is_registered(st._tick)
    ok, msgs = _tick_until(lambda: st.rt.job is not None and st.rt.job.stage == "bake", 60)
    r["reached_bake"] = ok
    r["bake_poll_while_running"] = bpy.ops.kiln.bake_selected.poll()
    r["cancel_poll_while_running"] = bpy.ops.kiln.cancel.poll()
    engine_job = st.rt.job.task.engine_job_id if st.rt.job else None
    t0 = time.monotonic()
    r["cancel"] = _run_op(bpy.ops.kiln.cancel)
    r["cancel_poll_after"] = bpy.ops.kiln.cancel.poll()
    ok, msgs2 = _tick_until(lambda: st.rt.job is None, 60)
    r["ended"] = ok
    r["cancel_seconds"] = time.monotonic() - t0
    r["msgs"] = msgs + msgs2
    r["info"] = st.rt.last_info
    r["error"] = st.rt.last_error.to_dict() if st.rt.last_error else None
    r["result_exists"] = "Painted_kiln" in bpy.data.objects
    r["engine_job"] = engine_job
    # the timer unregisters itself once nothing runs
    r["timer_after"] = st._tick()
    r["threads"] = _kiln_threads()
    return r


def sc_async_bake(cfg):
    """The interactive path: job on a worker thread, the timer callback imports the result."""
    import bpy

    _clear_scene()
    _scene_defaults()
    obj = _make_vertex_coloured()
    _set_transform(obj, (5.0, 0.0, 1.0), (0.0, 0.0, 2.0), (1.0, 2.0, 1.0))
    snapshot = [list(row) for row in obj.matrix_world]
    _select_only(obj)
    st = _kiln()[1]
    t0 = time.monotonic()
    r = _run_op(bpy.ops.kiln.bake_selected, run_mode="ASYNC")
    r["op_seconds"] = time.monotonic() - t0
    bpy.data.objects.remove(obj)  # the artist deletes the source while the engine works
    longest = 0.0
    t_end = time.monotonic() + 120
    while st.rt.job is not None and time.monotonic() < t_end:
        t1 = time.monotonic()
        st._tick()
        longest = max(longest, time.monotonic() - t1) if st.rt.job is not None else longest
        time.sleep(0.05)
    r["longest_tick_while_running"] = longest
    r["done"] = st.rt.job is None
    r["result_exists"] = "Painted_kiln" in bpy.data.objects
    if r["result_exists"]:
        r["matrix"] = [list(row) for row in bpy.data.objects["Painted_kiln"].matrix_world]
        r["snapshot"] = snapshot
    r.update(_error_state())
    return r


def sc_fault(cfg):
    """A worker segfault mid-bake is reported, Blender carries on, the next bake works."""
    import bpy

    _clear_scene()
    _scene_defaults()
    obj = _make_vertex_coloured()
    _select_only(obj)
    r = _run_op(bpy.ops.kiln.bake_selected, fault="segfault@bake")
    r.update(_error_state())
    r["result_exists"] = "Painted_kiln" in bpy.data.objects
    r["after"] = _run_op(bpy.ops.kiln.bake_selected)
    r["after_exists"] = "Painted_kiln" in bpy.data.objects
    return r


def sc_bad_option(cfg):
    """An option the engine rejects (fault injection off on that engine, or a bad value) maps to its message."""
    import bpy

    _clear_scene()
    _scene_defaults()
    obj = _make_vertex_coloured()
    _select_only(obj)
    r = _run_op(bpy.ops.kiln.bake_selected, fault="explode@nowhere")
    r.update(_error_state())
    return r


def sc_unreachable(cfg):
    import bpy

    p = _prefs()
    saved = (p.engine_mode, p.engine_url)
    p.engine_mode, p.engine_url = "REMOTE", cfg["dead_url"]
    try:
        _clear_scene()
        _scene_defaults()
        obj = _make_vertex_coloured()
        _select_only(obj)
        t0 = time.monotonic()
        r = _run_op(bpy.ops.kiln.bake_selected)
        r["seconds"] = time.monotonic() - t0
        r.update(_error_state())
        r["check"] = _run_op(bpy.ops.kiln.check_engine)
        st = _kiln()[1]
        r["check_error"] = st.rt.engine_error.to_dict() if st.rt.engine_error else None
        r["objects"] = sorted(o.name for o in bpy.data.objects)
        return r
    finally:
        p.engine_mode, p.engine_url = saved


def sc_image_to_3d(cfg):
    import bpy

    _clear_scene()
    s = _scene_defaults()
    st = _kiln()[1]
    bpy.ops.kiln.check_engine()
    offered = st.offers("reconstruct")
    s.image_source, s.image_path = "FILE", str(IMAGES / "human_object" / "image.png")
    s.mask_source, s.mask_path = "FILE", str(IMAGES / "human_object" / "0.png")
    bpy.context.scene.cursor.location = (2.0, -1.0, 0.5)
    r = {"offered": offered, "poll": bpy.ops.kiln.image_to_3d.poll()}
    if offered is False:
        return r
    r.update(_run_op(bpy.ops.kiln.image_to_3d))
    r.update(_error_state())
    new = bpy.data.objects.get("image_kiln")
    if new is not None:
        r["result"] = _describe_result(new)
        r["foreground"] = ((st.rt.last_report or {}).get("reconstruct") or {}).get("foreground")
    # the mask as an image datablock (uploaded as its file) and a mask of the wrong size
    _clear_scene()
    s = _scene_defaults()
    s.image_source, s.image_path = "FILE", str(IMAGES / "human_object" / "image.png")
    s.mask_source, s.mask_image = "IMAGE", bpy.data.images.load(str(IMAGES / "human_object" / "0.png"))
    r["datablock_mask"] = _run_op(bpy.ops.kiln.image_to_3d)
    r["datablock_mask"]["foreground"] = ((st.rt.last_report or {}).get("reconstruct") or {}).get("foreground")
    tiny = bpy.data.images.new("tiny_mask", 8, 8)
    tiny.generated_color = (1.0, 1.0, 1.0, 1.0)
    s.mask_image = tiny
    r["bad_mask"] = _run_op(bpy.ops.kiln.image_to_3d)
    r["bad_mask"].update(_error_state())
    return r


def sc_image_uploads(cfg):
    """Image datablocks travel as their file, their packed bytes, or a PNG of their pixels (no engine needed)."""
    import bpy

    scene_io = sys.modules[ADDON + ".scene_io"]
    work = tempfile.mkdtemp()
    r = {}
    src = IMAGES / "human_object" / "0.png"
    on_disk = bpy.data.images.load(str(src))
    r["file_upload_is_source"] = scene_io.image_file_for_upload(on_disk, work, "a") == str(src)
    on_disk.pack()
    packed_path = scene_io.image_file_for_upload(on_disk, work, "b")
    r["packed_upload"] = [os.path.basename(packed_path), Path(packed_path).read_bytes() == src.read_bytes()]
    gen = bpy.data.images.new("painted", 32, 16, alpha=True)
    gen.generated_color = (1.0, 0.0, 0.0, 1.0)
    gen_path = scene_io.image_file_for_upload(gen, work, "c")
    back = bpy.data.images.load(gen_path)
    r["generated_upload"] = [os.path.basename(gen_path), list(back.size), [round(x, 3) for x in list(back.pixels)[:4]]]
    return r


def sc_lifecycle(cfg):
    """LOCAL engine started by the add-on; disable/re-enable leaves no threads or processes; a killed engine restarts with a note."""
    import addon_utils
    import bpy

    p = _prefs()
    p.engine_mode, p.python_path, p.extra_env = "LOCAL", sys.executable, f"PYTHONPATH={ROOT};KILN_ADDON_TEST=1"
    r = {}
    _clear_scene()
    _scene_defaults()
    obj = _make_vertex_coloured()
    _select_only(obj)
    r["bake1"] = _run_op(bpy.ops.kiln.bake_selected)
    r["bake1"].update(_error_state())
    st = _kiln()[1]
    pid = st.rt.manager.local_pid
    r["pid"] = pid
    kids = _descendants(pid) if pid else []
    r["engine_children"] = len(kids)
    r["alive_before_disable"] = bool(pid) and _alive(pid)
    addon_utils.disable(ADDON, default_set=True)
    time.sleep(0.5)
    r["alive_after_disable"] = [q for q in [pid] + kids if q and _alive(q)]
    r["threads_after_disable"] = _kiln_threads()
    r["timer_after_disable"] = any(True for _ in [0] if ADDON + ".state" in sys.modules and bpy.app.timers.is_registered(sys.modules[ADDON + ".state"]._tick))
    r["ops_after_disable"] = hasattr(bpy.types, "KILN_OT_bake_selected")
    addon_utils.enable(ADDON, default_set=True)
    p = _prefs()  # disabling an add-on drops its preferences: set them again
    p.engine_mode, p.python_path, p.extra_env = "LOCAL", sys.executable, f"PYTHONPATH={ROOT}"
    _clear_scene()
    _scene_defaults()
    obj = _make_vertex_coloured()
    _select_only(obj)
    r["bake2"] = _run_op(bpy.ops.kiln.bake_selected)
    r["bake2"].update(_error_state())
    st = _kiln()[1]
    pid2 = st.rt.manager.local_pid
    r["pid2"] = pid2
    kids2 = _descendants(pid2) if pid2 else []
    # the engine dies behind the add-on's back: the next use restarts it and says why
    if pid2:
        os.kill(pid2, signal.SIGKILL)
        for _ in range(100):
            if not _alive(pid2):
                break
            time.sleep(0.05)
    _clear_scene()
    _scene_defaults()
    obj = _make_vertex_coloured()
    _select_only(obj)
    r["bake3"] = _run_op(bpy.ops.kiln.bake_selected)
    r["bake3"].update(_error_state())
    r["notes"] = list(st.rt.notes)
    for _ in range(100):  # the killed engine's workers notice their parent is gone and exit
        if not any(_alive(q) for q in kids2):
            break
        time.sleep(0.1)
    r["orphans_of_killed_engine"] = [q for q in kids2 if _alive(q)]
    pid3 = st.rt.manager.local_pid
    r["pid3"] = pid3
    kids3 = _descendants(pid3) if pid3 else []
    addon_utils.disable(ADDON, default_set=True)
    time.sleep(0.5)
    r["alive_after_disable2"] = [q for q in [pid3] + kids3 if q and _alive(q)]
    r["threads_after_disable2"] = _kiln_threads()
    leftover = [q for q in _descendants(os.getpid()) if _alive(q)]
    r["children_of_blender"] = leftover
    return r


class FakeLayout:
    """Records what a panel's draw() asks for (panels never draw in background mode)."""

    def __init__(self, calls, with_progress=True):
        self.calls = calls
        self.with_progress = with_progress
        self.scale_y = 1.0
        self.enabled = True

    def __getattr__(self, name):
        if name == "progress" and not self.with_progress:
            raise AttributeError(name)
        if name in ("box", "column", "row", "split", "column_flow"):
            return lambda *a, **k: FakeLayout(self.calls, self.with_progress)

        def call(*a, **k):
            self.calls.append([name, [str(x) for x in a], {kk: str(v) for kk, v in k.items()}])
            return type("Props", (), {})()

        return call


def _draw(fn, with_progress=True):
    import types

    import bpy

    calls = []
    fn(types.SimpleNamespace(layout=FakeLayout(calls, with_progress)), bpy.context)
    return calls


def sc_draw(cfg):
    import bpy

    _, st = _kiln()
    ui = sys.modules[ADDON + ".ui"]
    props = sys.modules[ADDON + ".props"]
    client = sys.modules[ADDON + ".core.client"]
    _clear_scene()
    _scene_defaults()
    obj = _make_vertex_coloured()
    _select_only(obj)
    r = {}
    st.set_error(client.EngineError("cannot reach the Kiln engine", hint="start it", code="engine_unreachable"))
    r["idle_error"] = _draw(ui.KILN_PT_main.draw)
    st.set_error(None)
    _run_op(bpy.ops.kiln.bake_selected, run_mode="ASYNC", fault="hang@bake")
    ok, _ = _tick_until(lambda: st.rt.job is not None and st.rt.job.stage == "bake", 60)
    r["reached_bake"] = ok
    r["running"] = _draw(ui.KILN_PT_main.draw)
    r["running_no_progress_api"] = _draw(ui.KILN_PT_main.draw, with_progress=False)
    bpy.ops.kiln.cancel()
    _tick_until(lambda: st.rt.job is None, 60)
    bpy.ops.kiln.check_engine()
    r["engine_panel"] = _draw(ui.KILN_PT_engine.draw)
    r["image_panel"] = _draw(ui.KILN_PT_image.draw)
    p = _prefs()
    import types

    ns = types.SimpleNamespace(**{k: getattr(p, k) for k in ("engine_mode", "python_path", "extra_env", "engine_url", "token")})
    calls = []
    ns.layout = FakeLayout(calls)
    props.KilnPreferences.draw(ns, bpy.context)
    r["prefs"] = calls
    return r


def sc_quit_with_engine(cfg):
    """Start the local engine, then let the process end without disabling the add-on (Blender quitting)."""
    import bpy

    p = _prefs()
    p.engine_mode, p.python_path, p.extra_env = "LOCAL", sys.executable, f"PYTHONPATH={ROOT}"
    r = _run_op(bpy.ops.kiln.check_engine)
    st = _kiln()[1]
    pid = st.rt.manager.local_pid
    r["pids"] = [pid] + _descendants(pid) if pid else []
    return r


SCENARIOS = {k[3:]: v for k, v in globals().items() if k.startswith("sc_")}


def blender_main(cfg: dict, scenarios: dict | None = None) -> None:
    """Install the zip, set the preferences, run ``cfg["scenarios"]`` (from ``scenarios``, default this file's)."""
    scenarios = scenarios or SCENARIOS
    import bpy

    res = bpy.ops.extensions.package_install_files(filepath=cfg["zip"], repo="user_default", enable_on_install=True)
    print("KILN_RESULT " + json.dumps({"scenario": "install", "ret": sorted(res), "enabled": ADDON in bpy.context.preferences.addons}), flush=True)
    p = _prefs()
    for k, v in cfg.get("prefs", {}).items():
        setattr(p, k, v)
    for name in cfg["scenarios"]:
        t0 = time.monotonic()
        try:
            out = scenarios[name](cfg)
        except Exception:
            out = {"driver_exception": traceback.format_exc()}
        out["_seconds"] = round(time.monotonic() - t0, 2)
        print("KILN_RESULT " + json.dumps({"scenario": name, **out}, default=str), flush=True)


# =========================================================================== pytest side

if __name__ != "__main__":
    import pytest

    pytestmark = pytest.mark.blender

    from blender_harness import _free_port, _service_available, addon_zip, engine_service, kiln_env_module  # noqa: F401  (fixtures)
    from blender_harness import run_driver as _run_driver

    def run_driver(addon_zip, tmp_path_factory, scenarios, prefs, extra=None, timeout=600) -> dict:
        return _run_driver(__file__, addon_zip, tmp_path_factory, scenarios, prefs, extra, timeout)

    # scenarios that read the shared assets (../shared/assets): left out, and their tests skipped, without them
    ASSET_SCENARIOS = {"bake_textured": MESHES, "bake_modifier": MESHES, "image_uploads": IMAGES, "image_to_3d": IMAGES}

    def _scenario(results: dict, name: str) -> dict:
        if name not in results and not ASSET_SCENARIOS.get(name, ROOT).exists():
            pytest.skip(f"shared assets not found at {ASSET_SCENARIOS[name]}")
        return results[name]

    @pytest.fixture(scope="module")
    def remote(addon_zip, engine_service, tmp_path_factory):
        names = ["check", "poll", "draw", "bake_textured", "bake_modifier", "bake_vertex_colour", "bake_text", "async_bake", "cancel",
                 "fault", "bad_option", "unreachable", "image_uploads", "image_to_3d"]
        return run_driver(
            addon_zip, tmp_path_factory,
            [n for n in names if n not in ASSET_SCENARIOS or ASSET_SCENARIOS[n].exists()],
            {"engine_mode": "REMOTE", "engine_url": engine_service["url"], "token": engine_service["token"], "timeout": 10.0},
            {"dead_url": f"http://127.0.0.1:{_free_port()}"},
        )

    def _close(a, b, tol):
        return all(abs(x - y) <= tol for ra, rb in zip(a, b) for x, y in zip(ra, rb))

    def _assert_good_result(res, tex=TEX):
        r = res["result"]
        assert r["collections"] == ["Kiln"]
        assert r["uv_layers"] >= 1
        assert r["principled"] and r["image"] is not None, r
        assert r["image"]["size"] == [tex, tex] and r["image"]["packed"]
        assert r["active"] and r["selected"] and r["parent"] is None
        assert r["faces"] < r["source_tris"], (r["faces"], r["source_tris"])
        assert _close(r["matrix"], r["source_matrix"], 1e-5), (r["matrix"], r["source_matrix"])
        # same place in the world: the bounding boxes agree (a lost Y-up/Z-up swap or a doubled transform would not)
        (lo, hi), (slo, shi) = r["bbox"], r["source_bbox"]
        diag = sum((b - a) ** 2 for a, b in zip(slo, shi)) ** 0.5
        assert _close([lo, hi], [slo, shi], 0.05 * diag), (r["bbox"], r["source_bbox"])
        assert r["props"]["kiln_source"]

    def test_install_and_check_engine(remote, engine_service):
        assert remote["install"] == {"ret": ["FINISHED"], "enabled": True}
        c = remote["check"]
        assert c["ret"] == ["FINISHED"], c
        assert c["health"]["version"] and "bake" in c["kinds"]
        assert engine_service["url"] in c["summary"] and "cpu" in c["summary"]

    def test_buttons_disabled_with_reason(remote):
        p = remote["poll"]
        assert p["bake_no_object"] is False and p["cancel_no_job"] is False and p["bake_camera"] is False
        assert "exception" in p["bake_camera_call"] and "poll" in p["bake_camera_call"]["exception"]  # Blender refuses a failed poll

    def test_bake_textured_object(remote):
        r = _scenario(remote, "bake_textured")
        assert r["ret"] == ["FINISHED"], r
        assert r["error"] is None and r["wm"] == ["", "", ""]
        _assert_good_result(r)
        res = r["result"]
        assert res["name"] == "Duck_kiln" and res["source_hidden"]
        assert res["image"]["std"] > 0.05  # a real texture, not a flat colour
        assert res["image"]["mean"][0] > res["image"]["mean"][2]  # the duck is yellow: more red than blue
        assert res["props"]["kiln_faces_out"] == res["faces"] and res["props"]["kiln_backend"] == "cpu"
        assert "Duck → Duck_kiln" in res["info"]
        assert r["after_undo"] == {"result_exists": False, "source_hidden": False}  # one undo step
        assert r["after_redo"] == {"result_exists": True}

    def test_bake_applies_modifiers(remote):
        r = _scenario(remote, "bake_modifier")
        assert r["ret"] == ["FINISHED"], r
        _assert_good_result(r)
        assert r["result"]["source_tris"] > 12 * 16  # the Subdivision modifier was evaluated
        assert r["result"]["source_hidden"] is False  # hide_source off

    def test_bake_vertex_coloured_object(remote):
        r = remote["bake_vertex_colour"]
        assert r["ret"] == ["FINISHED"], r
        _assert_good_result(r)
        img = r["result"]["image"]
        assert img["red_frac"] > 0.15 and img["blue_frac"] > 0.15, img  # the colour attribute reached the bake

    def test_bake_text_object(remote):
        r = remote["bake_text"]
        assert r["ret"] == ["FINISHED"], r
        res = r["result"]
        assert res["collections"] == ["Kiln"] and res["uv_layers"] >= 1 and res["image"] is not None
        assert _close(res["matrix"], res["source_matrix"], 1e-5) and res["faces"] < res["source_tris"]

    def test_async_path_never_blocks(remote):
        r = remote["async_bake"]
        assert r["ret"] == ["FINISHED"] and r["done"] and r["result_exists"] and r["error"] is None, r
        assert r["op_seconds"] < 2.0  # export + start only
        assert _close(r["matrix"], r["snapshot"], 1e-5)  # source deleted meanwhile: placed where it was
        assert r["longest_tick_while_running"] < 0.1  # the timer never blocks Blender while the job runs

    def test_cancel(remote):
        r = remote["cancel"]
        assert r["ret"] == ["FINISHED"] and r["timer_registered"] and r["reached_bake"], r
        assert r["bake_poll_while_running"] is False and r["cancel_poll_while_running"] is True
        assert r["cancel"]["ret"] == ["FINISHED"] and r["cancel_poll_after"] is False
        assert r["ended"] and r["cancel_seconds"] < 20, r
        assert "cancelled" in r["info"] and r["error"] is None and not r["result_exists"]
        assert r["timer_after"] is None and r["threads"] == []

    def test_engine_side_failure_is_reported(remote):
        r = remote["fault"]
        assert r["ret"] == ["CANCELLED"] and "exception" not in r, r
        e = r["error"]
        assert "SIGSEGV" in e["message"] and "bake" in e["message"], e
        assert r["wm"][0] == e["message"] and r["wm"][2] == e["code"]
        assert not r["result_exists"]
        assert r["after"]["ret"] == ["FINISHED"] and r["after_exists"]  # the engine survived

    def test_rejected_option_is_reported(remote):
        r = remote["bad_option"]
        assert r["ret"] == ["CANCELLED"] and "exception" not in r, r
        assert r["error"]["status"] == 422 and "fault" in r["error"]["message"] and r["error"]["hint"]

    def test_unreachable_engine(remote):
        r = remote["unreachable"]
        assert r["ret"] == ["CANCELLED"] and "exception" not in r, r
        assert r["error"]["code"] == "engine_unreachable" and "127.0.0.1" in r["error"]["message"] and r["error"]["hint"]
        assert r["seconds"] < 10
        assert r["check"]["ret"] == ["CANCELLED"] and r["check_error"]["code"] == "engine_unreachable"
        assert r["objects"] == ["Painted"]

    def test_image_datablock_uploads(remote):
        r = _scenario(remote, "image_uploads")
        assert r["file_upload_is_source"] and r["packed_upload"] == ["b.png", True]
        assert r["generated_upload"] == ["c.png", [32, 16], [1.0, 0.0, 0.0, 1.0]]

    def test_image_to_3d(remote):
        r = _scenario(remote, "image_to_3d")
        if r["offered"] is False:
            assert r["poll"] is False  # disabled with a reason when the engine lacks the job kind
            pytest.skip("this engine does not offer reconstruct jobs yet")
        assert r["ret"] == ["FINISHED"], r
        res = r["result"]
        assert res["collections"] == ["Kiln"] and res["uv_layers"] >= 1 and res["image"] is not None
        assert _close([res["matrix"][i][3:] for i in range(3)], [[2.0], [-1.0], [0.5]], 1e-5)  # at the 3D cursor
        assert r["foreground"]["source"] == "mask"  # the mask file was uploaded and used
        assert "kept the largest of" in res["info"] and "mask parts" in res["info"], res["info"]  # 0.png has several parts: said, not silent
        assert r["datablock_mask"]["ret"] == ["FINISHED"] and r["datablock_mask"]["foreground"]["source"] == "mask"
        b = r["bad_mask"]
        assert b["ret"] == ["CANCELLED"] and "exception" not in b
        assert "8x8" in b["error"]["message"] and b["error"]["hint"]

    def _labels(calls):
        return " | ".join(" ".join(c[1]) + " " + c[2].get("text", "") for c in calls)

    def test_panels_draw(remote):
        r = remote["draw"]
        text = _labels(r["idle_error"])
        assert "cannot reach the Kiln engine" in text and "start it" in text
        assert ["operator", ["kiln.bake_selected"], {"icon": "RENDER_STILL"}] in r["idle_error"]
        assert r["reached_bake"]
        prog = [c for c in r["running"] if c[0] == "progress"]
        assert len(prog) == 1 and 0.0 < float(prog[0][2]["factor"]) < 1.0 and "bake" in prog[0][2]["text"]
        assert any(c[0] == "operator" and c[1] == ["kiln.cancel"] for c in r["running"])
        assert not any(c[0] == "progress" for c in r["running_no_progress_api"])
        assert "bake" in _labels(r["running_no_progress_api"]) and "%" in _labels(r["running_no_progress_api"])
        assert "engine 0.1" in _labels(r["engine_panel"]) or "engine " in _labels(r["engine_panel"])
        if remote["check"]["doctor_type"] == "dict":  # the engine has /v1/doctor: its checks are listed
            assert "kiln doctor:" in _labels(r["engine_panel"]) and "PyTorch" in _labels(r["engine_panel"])
        assert any(c[0] == "operator" and c[1] == ["kiln.image_to_3d"] for c in r["image_panel"])
        assert any(c[0] == "operator" and c[1] == ["kiln.check_engine"] for c in r["prefs"])

    def test_quitting_blender_stops_the_local_engine(addon_zip, tmp_path_factory):
        if not _service_available():
            pytest.skip("`kiln serve` is not available in this checkout")
        r = run_driver(addon_zip, tmp_path_factory, ["quit_with_engine"], {})["quit_with_engine"]
        assert r["ret"] == ["FINISHED"] and r["pids"], r
        time.sleep(1.0)
        assert [p for p in r["pids"] if _alive(p)] == []  # atexit stopped the engine and its workers

    def test_local_engine_lifecycle(addon_zip, tmp_path_factory):
        if not _service_available():
            pytest.skip("`kiln serve` is not available in this checkout")
        r = run_driver(addon_zip, tmp_path_factory, ["lifecycle"], {"engine_mode": "LOCAL", "start_timeout": 120.0})["lifecycle"]
        assert r["bake1"]["ret"] == ["FINISHED"], r["bake1"]
        assert r["pid"] and r["alive_before_disable"] and r["engine_children"] >= 1
        assert r["alive_after_disable"] == [] and r["threads_after_disable"] == [] and not r["timer_after_disable"]
        assert r["ops_after_disable"] is False
        assert r["bake2"]["ret"] == ["FINISHED"] and r["pid2"] and r["pid2"] != r["pid"], r["bake2"]
        assert r["bake3"]["ret"] == ["FINISHED"], (r["bake3"], r["notes"])
        assert any("had stopped" in n and "SIGKILL" in n for n in r["notes"]), r["notes"]
        assert r["pid3"] != r["pid2"] and r["orphans_of_killed_engine"] == []
        assert r["alive_after_disable2"] == [] and r["threads_after_disable2"] == [] and r["children_of_blender"] == []


if __name__ == "__main__":
    blender_main(json.loads(Path(sys.argv[1]).read_text()))
