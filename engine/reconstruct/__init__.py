"""Single image (+ mask) -> textured 3D object.

    from engine.reconstruct.pipeline import reconstruct       # photo -> baked GLB
    from engine.reconstruct import get_backend                 # photo arrays -> SourceMesh / Gaussians

Backends (registered by name, imported lazily): ``inflate`` (embedded,
weight-free, CPU) and ``sam3d`` (facebookresearch/sam-3d-objects, GPU,
needs its checkpoints).
"""

from engine.reconstruct.base import (  # noqa: F401
    FrontView,
    ReconBackend,
    ReconResult,
    backend_names,
    get_backend,
    register_backend,
)
