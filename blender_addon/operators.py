"""Operators: kiln.bake_selected, kiln.image_to_3d, kiln.cancel, kiln.check_engine.

Interactive Blender: the operator exports the source (main thread), starts
the job on a worker thread and returns at once; a timer imports the result.
Background mode (``blender -b``, bpy as a module; no timers fire): the
operator blocks until the job ends and returns {'FINISHED'} with the new
object active, or {'CANCELLED'} with a warning report (see _reporter).
"""

from __future__ import annotations

import os
import shutil

import bpy
from bpy.props import EnumProperty, StringProperty

from . import scene_io, state
from .core.client import EngineError
from .core.jobs import DONE, JobSpec

RUN_MODES = [
    ("AUTO", "Auto", "Block in background mode (scripts), run in the background otherwise"),
    ("BLOCKING", "Blocking", "Wait for the job to end"),
    ("ASYNC", "Asynchronous", "Return at once; a timer imports the result"),
]


def _reporter(op, blocking: bool):
    """Operator reports. Blocking (script) runs report failures as warnings
    ("Kiln error: ..."), because an ERROR report makes ``bpy.ops`` raise
    RuntimeError in the calling script: scripts get {'CANCELLED'} instead and
    find the error in ``bpy.context.window_manager.kiln_error``."""

    def report(level: str, text: str) -> None:
        if blocking and level == "ERROR":
            level, text = "WARNING", text.replace("Kiln: ", "Kiln error: ", 1)
        op.report({level}, text)

    return report


def _poll_fail(cls, msg: str) -> bool:
    if hasattr(cls, "poll_message_set"):
        cls.poll_message_set(msg)
    return False


def _settings(context):
    return getattr(context.scene, "kiln", None)


class _JobOperator:
    run_mode: EnumProperty(name="Run mode", items=RUN_MODES, default="AUTO", options={"HIDDEN", "SKIP_SAVE"})
    fault: StringProperty(
        name="Fault (testing)",
        description="Passed to the engine as the job's 'fault' option; only an engine started with --allow-fault-injection accepts it",
        default="",
        options={"HIDDEN", "SKIP_SAVE"},
    )

    def _reporter(self):
        return _reporter(self, state.blocking_wanted(self.run_mode))

    def _fail(self, e: EngineError) -> set:
        state.set_error(e)
        self._reporter()("ERROR", f"Kiln: {e.full_text()}")
        return {"CANCELLED"}

    def _run(self, context, spec: JobSpec, label: str, on_done) -> set:
        blocking = state.blocking_wanted(self.run_mode)
        kind = state.start_job(spec, label, on_done, blocking, self._reporter())
        if not blocking:
            self.report({"INFO"}, f"Kiln: {label} started (progress in the Kiln panel)")
            return {"FINISHED"}
        return {"FINISHED"} if kind == DONE else {"CANCELLED"}

    def _options(self, settings, kind: str = "bake") -> dict:
        opts = settings.bake_options() if kind == "bake" else settings.reconstruct_options()
        if self.fault:
            opts["fault"] = self.fault
        return opts


def _maps_text(report: dict) -> str:
    maps = report.get("maps")
    if isinstance(maps, dict) and maps:
        tex = [k for k, v in maps.items() if v == "texture"]
        fac = [k for k, v in maps.items() if v != "texture"]
        return ", ".join(tex) + (f" (+ {', '.join(fac)} as factors)" if fac else "")
    return "base colour"


def bake_summary(label: str, result_name: str, tris_in, tris_out, report: dict, seconds, ignored: list) -> str:
    """The artist's units: triangles in -> out, texture size and maps, time, what was ignored."""
    parts = [f"{tris_in:,} → {tris_out:,} triangles" if isinstance(tris_in, int) and isinstance(tris_out, int) else ""]
    size = report.get("texture_size")
    if isinstance(size, int):
        parts.append(f"{size}×{size} px {_maps_text(report)}")
    if isinstance(seconds, (int, float)):
        parts.append(f"{seconds:.1f} s")
    missed = report.get("texels_missed")
    if isinstance(missed, int) and missed > 0:
        parts.append(f"{missed:,} texels missed by the rays (raise the cage)")
    overlap = report.get("uv_overlap_fraction")
    if isinstance(overlap, (int, float)) and overlap > 0:
        parts.append(f"{overlap * 100:.1f}% of the texels have overlapping UVs")
    text = f"{label} → {result_name} (" + ", ".join(p for p in parts if p) + ")"
    if ignored:
        text += "; ignored: " + "; ".join(str(x) for x in ignored)
    return text


class KILN_OT_bake_selected(_JobOperator, bpy.types.Operator):
    """Bake the selected objects (modifiers applied): into a new low-poly, UV-unwrapped copy (Target: New), or onto the active low-poly's own UVs (Target: Active)"""

    bl_idname = "kiln.bake_selected"
    bl_label = "Bake Selected"
    bl_options = {"REGISTER"}  # the undo step is pushed when the result lands

    @classmethod
    def poll(cls, context):
        if state.rt.busy:
            return _poll_fail(cls, "A Kiln job is running: wait for it or cancel it")
        if context.mode != "OBJECT":
            return _poll_fail(cls, "Switch to Object Mode to bake")
        s = _settings(context)
        mode = s.target_mode if s is not None else "NEW"
        try:
            scene_io.resolve_selection(context, mode)
        except EngineError as e:
            return _poll_fail(cls, e.message[0].upper() + e.message[1:] + (f": {e.hint}" if e.hint else ""))
        if s is not None and not s.maps_auto and not s.maps:
            return _poll_fail(cls, "Choose at least one map to bake (or turn Auto on)")
        return True

    def execute(self, context):
        settings = _settings(context)
        scene, view_layer = context.scene, context.view_layer
        workdir = state.new_workdir()
        src = os.path.join(workdir, "source.glb")
        extra = []
        requires = []
        try:
            sel = scene_io.resolve_selection(context, settings.target_mode)
            depsgraph = context.evaluated_depsgraph_get()
            info = scene_io.export_objects(sel.sources, sel.frame.matrix_world, scene, view_layer, depsgraph, src)
            tinfo = None
            if sel.target is not None:
                tgt = os.path.join(workdir, "target.glb")
                tinfo = scene_io.export_objects([sel.target], sel.frame.matrix_world, scene, view_layer, depsgraph, tgt, uv_map=sel.uv_map, materials=False, what="target")
                extra.append(("target", "target.glb", tgt, "model/gltf-binary"))
                requires.append("bake_target")
        except EngineError as e:
            shutil.rmtree(workdir, ignore_errors=True)
            return self._fail(e)
        label = sel.name
        frame_name = sel.frame.name
        target_name = sel.target.name if sel.target is not None else None
        source_names = [o.name for o in sel.sources]
        matrix_at_start = sel.frame.matrix_world.copy()  # used if the frame object is renamed or deleted meanwhile
        uv_map = sel.uv_map
        scene_name = scene.name
        hide = settings.hide_source
        tris_in = info.triangles
        ignored = list(info.ignored)
        deformed = info.deformed + (tinfo.deformed if tinfo else [])
        spec = JobSpec("bake", src, scene_io.safe_name(label) + ".glb", self._options(settings), workdir, "model/gltf-binary",
                       extra_files=extra, label=label, requires=tuple(requires))
        posed = f"posed (evaluated) mesh of {', '.join(deformed)} at frame {scene.frame_current} baked" if deformed else ""

        def on_done(result: dict) -> str:
            sc = bpy.data.scenes.get(scene_name)
            if sc is None:
                raise EngineError(f"scene {scene_name!r} is gone", hint="bake again", code="scene_gone")
            vl = _view_layer_for(sc)
            rep = result.get("report") or {}
            if target_name is not None:
                target = bpy.data.objects.get(target_name)
                if target is None or target.type != "MESH":
                    raise EngineError(f"the target {target_name!r} is gone", hint="bake again", code="target_gone")
                new = scene_io.make_target_result(target, result["result"], sc, vl, uv_map, workdir, rep)
                if target.name in vl.objects:
                    target.hide_set(True, view_layer=vl)  # the copy sits exactly over it:
                target.hide_render = True  # hidden in renders too, or the two would z-fight
            else:
                frame = bpy.data.objects.get(frame_name)
                matrix = frame.matrix_world.copy() if frame is not None else matrix_at_start
                new = scene_io.import_result(result["result"], sc, vl, label, matrix, rep)
            if hide:
                for n in source_names:
                    o = bpy.data.objects.get(n)
                    if o is not None and o.name in vl.objects:
                        o.hide_set(True, view_layer=vl)
            _undo_push(f"Kiln: bake {label}")
            tris_out = rep.get("triangles_out") if target_name is None and isinstance(rep.get("triangles_out"), int) else scene_io.result_triangles(new)
            t_in = rep.get("triangles_in") if isinstance(rep.get("triangles_in"), int) else tris_in
            new["kiln_triangles_in"] = t_in
            new["kiln_triangles_out"] = tris_out
            gone = ignored + [str(x) for x in (rep.get("ignored_features") or []) if str(x) not in ignored]
            if gone:
                new["kiln_ignored"] = "; ".join(gone)
            text = bake_summary(label, new.name, t_in, tris_out, rep, rep.get("total_seconds"), gone)
            return text + (f"; {posed}" if posed else "")

        return self._run(context, spec, label, on_done)


def mask_parts_text(report: dict) -> str:
    """'kept the largest of 3 mask parts (62% of the mask)' when reconstruction dropped parts."""
    mp = report.get("mask_parts")
    if not isinstance(mp, dict):
        mp = (report.get("reconstruct") or {}).get("mask_parts") if isinstance(report.get("reconstruct"), dict) else None
    if not isinstance(mp, dict):
        return ""
    found, kept, frac = mp.get("found"), mp.get("kept"), mp.get("kept_fraction")
    if not isinstance(found, int) or not isinstance(kept, int) or found <= kept:
        return ""
    what = "the largest" if kept == 1 else f"the {kept} largest"
    return f"kept {what} of {found} mask parts" + (f" ({frac * 100:.0f}% of the mask)" if isinstance(frac, (int, float)) else "")


class KILN_OT_image_to_3d(_JobOperator, bpy.types.Operator):
    """Turn a photo of an object into a textured 3D object at the 3D cursor"""

    bl_idname = "kiln.image_to_3d"
    bl_label = "Image to 3D"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if state.rt.busy:
            return _poll_fail(cls, "A Kiln job is running: wait for it or cancel it")
        s = _settings(context)
        if s is None:
            return False
        if context.mode != "OBJECT":
            return _poll_fail(cls, "Switch to Object Mode")
        if state.offers("reconstruct") is False:
            return _poll_fail(cls, "The engine does not offer Image to 3D (update the engine, then Check Engine)")
        if s.image_source == "FILE" and not s.image_path:
            return _poll_fail(cls, "Choose an image file")
        if s.image_source == "IMAGE" and s.image is None:
            return _poll_fail(cls, "Choose an image")
        if s.mask_source == "FILE" and not s.mask_path:
            return _poll_fail(cls, "Choose a mask file (or set Mask to Alpha / Auto)")
        if s.mask_source == "IMAGE" and s.mask_image is None:
            return _poll_fail(cls, "Choose a mask image (or set Mask to Alpha / Auto)")
        return True

    def execute(self, context):
        s = _settings(context)
        workdir = state.new_workdir()
        try:
            if s.image_source == "FILE":
                img_path = bpy.path.abspath(s.image_path)
                if not os.path.isfile(img_path):
                    raise EngineError(f"image file {img_path!r} not found", hint="choose an existing image file", code="no_image")
                label = os.path.splitext(os.path.basename(img_path))[0] or "image"
            else:
                img_path = scene_io.image_file_for_upload(s.image, workdir, "image")
                label = os.path.splitext(s.image.name)[0] or "image"
            mask_path = None
            if s.mask_source == "FILE":
                mask_path = bpy.path.abspath(s.mask_path)
                if not os.path.isfile(mask_path):
                    raise EngineError(f"mask file {mask_path!r} not found", hint="choose an existing mask image or set Mask to Alpha / Auto", code="no_mask")
            elif s.mask_source == "IMAGE":
                mask_path = scene_io.image_file_for_upload(s.mask_image, workdir, "mask")
            extra = []
            if mask_path:
                extra.append(("mask", "mask" + (os.path.splitext(mask_path)[1].lower() or ".png"), mask_path, scene_io.content_type_for(mask_path)))
        except EngineError as e:
            shutil.rmtree(workdir, ignore_errors=True)
            return self._fail(e)
        label = scene_io.safe_name(label)
        scene_name = context.scene.name
        cursor = context.scene.cursor.matrix.copy()
        spec = JobSpec(
            "reconstruct",
            img_path,
            label + os.path.splitext(img_path)[1].lower(),
            self._options(s, "reconstruct"),
            workdir,
            scene_io.content_type_for(img_path),
            extra_files=extra,
            label=label,
        )

        def on_done(result: dict) -> str:
            sc = bpy.data.scenes.get(scene_name)
            if sc is None:
                raise EngineError(f"scene {scene_name!r} is gone", hint="run Image to 3D again", code="scene_gone")
            vl = _view_layer_for(sc)
            new = scene_io.import_result(result["result"], sc, vl, label, cursor, result.get("report"))
            _undo_push(f"Kiln: image to 3D {label}")
            rep = result.get("report") or {}
            text = f"{label} → {new.name} ({scene_io.result_triangles(new):,} triangles)"
            note = mask_parts_text(rep)
            return text + (f"; {note}" if note else "")

        return self._run(context, spec, label, on_done)


class KILN_OT_cancel(bpy.types.Operator):
    """Cancel the running Kiln job"""

    bl_idname = "kiln.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        job = state.rt.job
        if job is None:
            return _poll_fail(cls, "No Kiln job is running")
        if job.task.cancel_requested:
            return _poll_fail(cls, "Already cancelling")
        return True

    def execute(self, context):
        state.rt.job.task.cancel()
        self.report({"INFO"}, "Kiln: cancelling…")
        return {"FINISHED"}


class KILN_OT_check_engine(bpy.types.Operator):
    """Connect to the engine (starting the local one if needed) and show its version, backends and GPU"""

    bl_idname = "kiln.check_engine"
    bl_label = "Check Engine"
    bl_options = {"REGISTER"}

    run_mode: EnumProperty(name="Run mode", items=RUN_MODES, default="AUTO", options={"HIDDEN", "SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        if state.rt.check is not None:
            return _poll_fail(cls, "Checking the engine…")
        return True

    def execute(self, context):
        blocking = state.blocking_wanted(self.run_mode)
        kind = state.start_check(blocking, _reporter(self, blocking))
        if not blocking:
            return {"FINISHED"}
        return {"FINISHED"} if kind == DONE else {"CANCELLED"}


class KILN_OT_report(bpy.types.Operator):
    """Show a Kiln message in the status bar and Info log"""

    bl_idname = "kiln.report"
    bl_label = "Kiln Message"
    bl_options = {"INTERNAL"}

    level: EnumProperty(items=[("INFO", "Info", ""), ("WARNING", "Warning", ""), ("ERROR", "Error", "")], default="INFO")
    message: StringProperty()

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


def _view_layer_for(scene):
    win = bpy.context.window
    if win is not None and win.scene == scene:
        return win.view_layer
    wm = bpy.context.window_manager
    for w in (wm.windows if wm else []):
        if w.scene == scene:
            return w.view_layer
    if bpy.context.scene == scene and bpy.context.view_layer is not None:
        return bpy.context.view_layer
    return scene.view_layers[0]


def _undo_push(message: str) -> None:
    try:
        with bpy.context.temp_override(**state._window_ctx()):
            bpy.ops.ed.undo_push(message=message)
    except Exception:
        pass


classes = (KILN_OT_bake_selected, KILN_OT_image_to_3d, KILN_OT_cancel, KILN_OT_check_engine, KILN_OT_report)


register, unregister = bpy.utils.register_classes_factory(classes)
