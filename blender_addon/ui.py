"""View3D → Sidebar → Kiln."""

from __future__ import annotations

import textwrap

import bpy

from . import state


def _wrapped(layout, text: str, context, icon: str = "NONE", width_px: int | None = None) -> None:
    region = getattr(context, "region", None)
    width = width_px or (region.width if region is not None else 300)
    chars = max(20, int(width / 7.0))
    lines = textwrap.wrap(text, chars) or [""]
    col = layout.column(align=True)
    for i, line in enumerate(lines):
        col.label(text=line, icon=icon if i == 0 else "BLANK1" if icon != "NONE" else "NONE")


def _progress(layout, factor: float, text: str) -> None:
    if hasattr(layout, "progress"):  # Blender 4.0+
        layout.progress(factor=factor, type="BAR", text=text)
    else:
        layout.label(text=f"{text} ({factor * 100:.0f}%)")


def draw_job(layout, context) -> None:
    rt = state.rt
    job = rt.job
    if job is not None:
        box = layout.box()
        box.label(text=f"{job.label}: {job.phase}", icon="TIME")
        stage = job.stage or job.phase
        text = f"{stage} {job.progress * 100:.0f}%" + (f" — {job.message}" if job.message else "")
        _progress(box, job.progress, text)
        box.operator("kiln.cancel", icon="CANCEL")
    for note in rt.notes[-2:]:
        _wrapped(layout.box(), note, context, icon="INFO")
    if rt.last_error is not None:
        box = layout.box()
        _wrapped(box, rt.last_error.message, context, icon="ERROR")
        if rt.last_error.hint:
            _wrapped(box, rt.last_error.hint, context, icon="QUESTION")
    elif rt.last_info:
        _wrapped(layout, rt.last_info, context, icon="CHECKMARK")


def draw_engine_status(layout, context) -> None:
    rt = state.rt
    box = layout.box()
    row = box.row()
    row.operator("kiln.check_engine", icon="FILE_REFRESH")
    if rt.check is not None:
        row.label(text="checking…")
    if rt.engine_error is not None:
        _wrapped(box, rt.engine_error.message, context, icon="ERROR")
        if rt.engine_error.hint:
            _wrapped(box, rt.engine_error.hint, context, icon="QUESTION")
    elif rt.engine_info is not None:
        h = rt.engine_info.get("health") or {}
        _wrapped(box, state.engine_summary(rt.engine_info), context, icon="CHECKMARK")
        workers = h.get("workers")
        if isinstance(workers, list):
            states = [str(w.get("state", "?")) if isinstance(w, dict) else str(w) for w in workers]
            box.label(text=f"workers: {', '.join(states) or 'none'} · queue: {h.get('queue', h.get('queue_length', 0))}")
        kinds = rt.engine_info.get("kinds")
        if kinds:
            box.label(text="jobs: " + ", ".join(kinds))
        doc = rt.engine_info.get("doctor")
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            _wrapped(box, "doctor: " + str(doc["error"].get("message", "")), context, icon="INFO")
        if isinstance(doc, dict) and isinstance(doc.get("checks"), list):
            box.label(text=f"kiln doctor: {doc.get('status', '?')}")
            for c in doc["checks"]:
                if not isinstance(c, dict):
                    continue
                st = str(c.get("status", "")).lower()
                icon = {"ok": "CHECKMARK", "warn": "ERROR", "fail": "CANCEL"}.get(st, "DOT")
                line = f"{c.get('name', '?')}: {c.get('message', c.get('detail', ''))}"
                _wrapped(box, line, context, icon=icon)
                if st in ("warn", "fail") and c.get("fix"):
                    _wrapped(box, str(c["fix"]), context, icon="BLANK1")
    pid = rt.manager.local_pid
    if pid is not None:
        box.label(text=f"local engine running (pid {pid})")


def draw_target(layout, context, s) -> None:
    """Target: New / Active, with what the current selection means for it."""
    from . import scene_io
    from .core.client import EngineError

    box = layout.box()
    box.label(text="Target")
    box.row().prop(s, "target_mode", expand=True)
    try:
        sel = scene_io.resolve_selection(context, s.target_mode)
    except EngineError as e:
        _wrapped(box, e.hint or e.message, context, icon="INFO")
        return
    if sel.target is not None:
        n = len(sel.sources)
        _wrapped(box, f"{n} source{'s' if n != 1 else ''} → {sel.target.name} (UV map {sel.uv_map}; its mesh, modifiers and rig are kept)", context, icon="MOD_SHRINKWRAP")
    elif len(sel.sources) > 1:
        _wrapped(box, f"{len(sel.sources)} objects → one new low-poly", context, icon="OBJECT_DATA")
    posed = [o.name for o in sel.sources + ([sel.target] if sel.target else []) if scene_io.is_deformed(o)]
    if posed:
        _wrapped(box, f"Skinned/animated: the posed mesh of frame {context.scene.frame_current} is baked ({', '.join(posed[:3])}{'…' if len(posed) > 3 else ''})", context, icon="ARMATURE_DATA")


def draw_maps(layout, s) -> None:
    row = layout.row(align=True)
    row.prop(s, "maps_auto", text="Auto maps", toggle=True)
    sub = row.row(align=True)
    sub.enabled = not s.maps_auto
    sub.prop(s, "maps", expand=True)


class _KilnSidebar:
    """Where every Kiln panel lives: View3D > Sidebar > Kiln."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Kiln"


class KILN_PT_main(_KilnSidebar, bpy.types.Panel):
    bl_label = "Kiln"

    def draw(self, context):
        layout = self.layout
        s = context.scene.kiln
        col = layout.column(align=True)
        col.prop(s, "faces")
        col.prop(s, "texture_size")
        col.prop(s, "views")
        layout.row().prop(s, "device", expand=True)
        draw_target(layout, context, s)
        draw_maps(layout, s)
        layout.row().prop(s, "vertex_colors", expand=True)
        layout.prop(s, "hide_source")
        row = layout.row()
        row.scale_y = 1.5
        row.operator("kiln.bake_selected", icon="RENDER_STILL")
        draw_job(layout, context)


class KILN_PT_image(_KilnSidebar, bpy.types.Panel):
    bl_label = "Image → 3D"
    bl_parent_id = "KILN_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        s = context.scene.kiln
        layout.row().prop(s, "image_source", expand=True)
        if s.image_source == "FILE":
            layout.prop(s, "image_path", text="")
        else:
            layout.template_ID(s, "image", open="image.open")
        layout.prop(s, "mask_source")
        if s.mask_source == "FILE":
            layout.prop(s, "mask_path", text="")
        elif s.mask_source == "IMAGE":
            layout.template_ID(s, "mask_image", open="image.open")
        if state.offers("reconstruct") is False:
            layout.label(text="This engine has no Image → 3D", icon="INFO")
        layout.operator("kiln.image_to_3d", icon="IMAGE_DATA")


class KILN_PT_engine(_KilnSidebar, bpy.types.Panel):
    bl_label = "Engine"
    bl_parent_id = "KILN_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        p = state.prefs()
        if p is not None:
            self.layout.row().prop(p, "engine_mode", expand=True)
            if p.engine_mode == "REMOTE":
                self.layout.prop(p, "engine_url", text="URL")
        draw_engine_status(self.layout, context)


classes = (KILN_PT_main, KILN_PT_image, KILN_PT_engine)


register, unregister = bpy.utils.register_classes_factory(classes)
