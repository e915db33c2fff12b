"""Kiln for Blender: bake any mesh, or turn a photo, into a low-poly,
UV-unwrapped, texture-baked object through the Kiln engine.

Layout (like glTF-Blender-IO: logic apart from Blender):
  core/        HTTP client, job runner, local engine launcher: no bpy
  state.py     transient runtime state and the main-thread timer
  scene_io.py  export the source, import and place the result
  operators.py, ui.py, props.py   the thin Blender layer

This module imports nothing from Blender at import time, so ``core`` can be
imported (and tested) outside Blender; ``register()`` loads the Blender layer.
"""

_modules = ()


def _atexit() -> None:
    try:
        from . import state

        state.shutdown(join_timeout=5.0)
    except Exception:
        pass


def _load_pre(*_args) -> None:
    # A job's source and target scene belong to the file being closed.
    from . import state

    if state.rt.job is not None:
        state.rt.job.task.cancel()


def register():
    import atexit

    import bpy

    from . import operators, props, state, ui

    state.rt = state.Runtime()  # fresh runtime state (and engine manager) on every enable
    global _modules
    _modules = (props, operators, ui)
    for m in _modules:
        m.register()
    _load_pre.__dict__["_bpy_persistent"] = True  # same as @bpy.app.handlers.persistent
    bpy.app.handlers.load_pre.append(_load_pre)
    atexit.register(_atexit)


def unregister():
    import atexit

    import bpy

    from . import state

    atexit.unregister(_atexit)
    if _load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_load_pre)
    state.shutdown()
    for m in reversed(_modules):
        m.unregister()
