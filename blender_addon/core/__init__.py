"""Kiln add-on logic that does not need Blender.

Nothing in this package imports ``bpy``: the HTTP client, the job runner and
the local engine launcher run (and are tested) in any Python 3.10+, and the
job runner's worker threads can therefore never touch Blender data by
accident. The thin Blender layer lives in the modules one level up.
"""
