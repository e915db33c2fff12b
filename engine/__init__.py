"""Kiln engine: mesh/photo in, low-poly UV-unwrapped texture-baked GLB out.

Layers (data flows one way):
  engine.service   jobs over HTTP, worker supervision (no geometry code)
  engine.pipeline  the stages of a bake / reconstruction, one job each
  engine.mesh, engine.uv, engine.bake, engine.reconstruct, engine.io
                   stage modules with plain-array (numpy) interfaces
  engine.backend   the one place where cuda/cpu is chosen
"""

__version__ = "0.1.0"
API_VERSION = "v1"
