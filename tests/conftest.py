import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT.parent / "shared" / "assets").resolve()
MESHES = SHARED / "meshes"
IMAGES = SHARED / "images"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cuda_ok() -> bool:
    try:
        from engine.backend import cuda_status

        return cuda_status()[0]
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    cuda = _cuda_ok()
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU with nvdiffrast")
    try:
        import bpy  # noqa: F401

        has_bpy = True
    except Exception:
        has_bpy = False
    skip_bpy = pytest.mark.skip(reason="needs bpy (pip install bpy)")
    for item in items:
        if "cuda" in item.keywords and not cuda:
            item.add_marker(skip_cuda)
        if "blender" in item.keywords and not has_bpy:
            item.add_marker(skip_bpy)


@pytest.fixture(scope="session")
def meshes_dir() -> Path:
    if not MESHES.is_dir():
        pytest.skip(f"shared assets not found at {MESHES}")
    return MESHES


@pytest.fixture(scope="session")
def images_dir() -> Path:
    if not IMAGES.is_dir():
        pytest.skip(f"shared assets not found at {IMAGES}")
    return IMAGES


@pytest.fixture
def kiln_env():
    """Environment for subprocesses running `python -m engine` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
