"""GPU smoke test, run by `kiln doctor` as a CHILD process (by file path, with
the same Python), so a segfault in CUDA code kills this process, not the doctor.

    python smoke_child.py                # full test: rasterize + interpolate + texture on cuda:0
    python smoke_child.py --import-only  # only import nvdiffrast.torch (loads its compiled extension)
    python smoke_child.py --device cpu   # tests only: drive a fake nvdiffrast on the CPU

Protocol on stdout (other output is ignored):
    KILN-SMOKE stage <name>       before each stage (the parent names the stage a crash happened in)
    KILN-SMOKE result <json>      at the end: {"ok": bool, "errors": [...], "stages": {name: seconds}, ...}
Exit 0 when every result is right, 3 when a result is wrong, 1 on a Python error.

Only the standard library, torch and nvdiffrast are imported (not the engine),
so it runs from any working directory.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time

PREFIX = "KILN-SMOKE"
RES = 64  # output image side; the quad covers the middle half: 32 x 32 pixels
TEX = 4  # texture side


def _say(kind: str, text: str) -> None:
    sys.stdout.write(f"{PREFIX} {kind} {text}\n")
    sys.stdout.flush()


def _extension_files() -> list[str]:
    """Compiled modules of nvdiffrast that this process has loaded (any name: _nvdiffrast_c in 0.4,
    nvdiffrast_plugin from the 0.3 JIT cache, ...)."""
    files = set()
    mods = list(sys.modules.values())
    ops = sys.modules.get("nvdiffrast.torch.ops")
    cached = getattr(ops, "_cached_plugin", None)
    if isinstance(cached, dict):
        mods.extend(v for v in cached.values() if v is not None)
    for m in mods:
        f = getattr(m, "__file__", None) or ""
        name = getattr(m, "__name__", "") or ""
        if f.endswith((".so", ".pyd", ".dylib")) and "nvdiffrast" in (name + os.path.basename(f)).lower():
            files.add(os.path.realpath(f))
    return sorted(files)


def main(argv: list[str]) -> int:
    faulthandler.enable()  # a crash prints the Python stack to stderr before the signal kills us
    import_only = "--import-only" in argv
    stages: dict[str, float] = {}
    result: dict = {"ok": False, "errors": [], "stages": stages}

    def stage(name: str):
        _say("stage", name)
        stages[name] = time.perf_counter()

    def done(name: str):
        stages[name] = round(time.perf_counter() - stages[name], 4)

    stage("import_torch")
    import torch

    done("import_torch")
    result["torch"] = torch.__version__
    result["torch_cuda"] = torch.version.cuda

    stage("import_nvdiffrast")
    import nvdiffrast
    import nvdiffrast.torch as dr

    done("import_nvdiffrast")
    result["nvdiffrast"] = getattr(nvdiffrast, "__version__", None)
    if import_only:
        result["extension_files"] = _extension_files()
        result["ok"] = True
        _say("result", json.dumps(result))
        return 0

    dev = torch.device(argv[argv.index("--device") + 1] if "--device" in argv else "cuda:0")
    on_gpu = dev.type == "cuda"

    def sync():
        if on_gpu:
            torch.cuda.synchronize(dev)

    stage("cuda_init")
    if on_gpu and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU")
    torch.zeros(1, device=dev).add_(1)
    sync()
    result["device"] = torch.cuda.get_device_name(dev) if on_gpu else str(dev)
    done("cuda_init")

    stage("context")
    glctx = dr.RasterizeCudaContext(device=dev)
    done("context")
    result["extension_files"] = _extension_files()

    # A quad over clip-space [-0.5, 0.5]^2 (two triangles), uv (0,0)..(1,1) across it.
    pos = torch.tensor(
        [[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.5, 0.5, 0.0, 1.0], [-0.5, 0.5, 0.0, 1.0]]],
        dtype=torch.float32,
        device=dev,
    )
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32, device=dev)
    uv_attr = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]], dtype=torch.float32, device=dev)

    # Expected values at pixel centres. Row 0 is the bottom (y = -1) in nvdiffrast (OpenGL order),
    # so both axes map the same way: centre of index i is (i + 0.5) / RES * 2 - 1.
    centres = (torch.arange(RES, dtype=torch.float64) + 0.5) / RES * 2.0 - 1.0
    inside = (centres.abs() < 0.5)
    cov_expect = inside[:, None] & inside[None, :]  # [y, x]
    u_expect = (centres + 0.5)[None, :].expand(RES, RES)
    v_expect = (centres + 0.5)[:, None].expand(RES, RES)

    stage("rasterize")
    rast, _ = dr.rasterize(glctx, pos, tri, resolution=[RES, RES])
    sync()
    done("rasterize")
    covered = (rast[0, :, :, 3] > 0).cpu()
    result["covered_pixels"] = int(covered.sum())
    if not torch.equal(covered, cov_expect):
        result["errors"].append(
            f"rasterize covered {int(covered.sum())} pixels, expected {int(cov_expect.sum())} (the 32x32 centre)"
        )

    stage("interpolate")
    uv, _ = dr.interpolate(uv_attr, rast, tri)
    sync()
    done("interpolate")
    uv_c = uv[0].double().cpu()
    err_u = (uv_c[..., 0] - u_expect)[cov_expect].abs().max().item()
    err_v = (uv_c[..., 1] - v_expect)[cov_expect].abs().max().item()
    result["interpolate_max_error"] = max(err_u, err_v)
    if not max(err_u, err_v) < 1e-4:
        result["errors"].append(f"interpolate: uv differs from the exact value by up to {max(err_u, err_v):.3g}")

    stage("texture")
    # Texel (row r, column c) holds r * TEX + c; nearest sampling must return the texel under each uv.
    tex = torch.arange(TEX * TEX, dtype=torch.float32, device=dev).reshape(1, TEX, TEX, 1).contiguous()
    uv_in = uv.contiguous()
    sampled = dr.texture(tex, uv_in, filter_mode="nearest")
    sync()
    done("texture")
    col = torch.floor(u_expect * TEX).clamp(0, TEX - 1)
    row = torch.floor(v_expect * TEX).clamp(0, TEX - 1)
    tex_expect = row * TEX + col
    err_t = (sampled[0, :, :, 0].double().cpu() - tex_expect)[cov_expect].abs().max().item()
    result["texture_max_error"] = err_t
    if not err_t < 1e-3:
        result["errors"].append(f"texture: nearest samples differ from the expected texels by up to {err_t:.3g}")

    result["ok"] = not result["errors"]
    _say("result", json.dumps(result))
    return 0 if result["ok"] else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
