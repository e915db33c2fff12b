"""Pipelines: ordered stages over plain arrays. The service and the CLI call these.

    from engine.pipeline import bake
    result = bake("in.glb", "out.glb", BakeOptions(faces=20000), progress=cb, cancel=check)
    result.report   # JSON-able dict: timings, face counts, backend, texture size, psnr (evaluate)

``progress(stage, fraction, message)`` gets the overall fraction 0..1 and the
stage name (load, validate, simplify, unwrap, bake, dilate, export, evaluate);
``cancel()`` returning True makes the pipeline raise CancelledError at its
next check (between stages and between view chunks / ray batches).
"""

from engine.pipeline.bake import BakeResult, bake, bake_mesh  # noqa: F401
