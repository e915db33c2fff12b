"""The individual `kiln doctor` checks. Each returns a ``Check`` (ok / warn /
fail, a one-line detail, a fix). They take what they inspect as arguments
(environment mapping, collected torch facts, the torch CUDA version) so tests
can drive them without a GPU.
"""

from __future__ import annotations

import ctypes
import glob
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from engine.doctor import toolkit
from engine.doctor.smoke import CHILD, ChildRun

OK, WARN, FAIL = "ok", "warn", "fail"
STATUSES = (OK, WARN, FAIL)
NVDIFFRAST_PIP = "pip install --no-build-isolation --force-reinstall 'nvdiffrast @ git+https://github.com/NVlabs/nvdiffrast'"
TORCH_CUDA_PIP = "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu128"
GIB = 1024**3

# id -> display name, in report order. The ids are part of the --json schema.
CHECKS: dict[str, str] = {
    "python": "Python",
    "python_env": "Python environment",
    "conda_run": "conda run",
    "torch": "PyTorch",
    "cuda": "CUDA GPU",
    "torch_arch": "PyTorch built for the GPU",
    "nvdiffrast": "nvdiffrast",
    "nvdiffrast_ext": "nvdiffrast extension loads",
    "nvdiffrast_arch": "nvdiffrast built for the GPU",
    "nvcc": "nvcc / CUDA_HOME vs torch CUDA",
    "smoke": "GPU smoke test",
    "xatlas": "xatlas",
    "fast_simplification": "fast-simplification",
    "meshoptimizer": "meshoptimizer",
    "embreex": "embreex",
    "trimesh": "trimesh",
    "disk": "disk space (data dir)",
}


@dataclass
class Check:
    id: str
    status: str
    detail: str
    fix: Optional[str] = None

    @property
    def name(self) -> str:
        return CHECKS.get(self.id, self.id)

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _real(p: str) -> str:
    try:
        return os.path.realpath(os.path.expanduser(p))
    except (OSError, ValueError):
        return p


def _version_tuple(v: Optional[str]) -> Optional[tuple[int, ...]]:
    if not v:
        return None
    m = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(v))
    if not m:
        return None
    return tuple(int(x or 0) for x in m.groups())


# ---------------------------------------------------------------------------------------------
# Python and its environment
# ---------------------------------------------------------------------------------------------


def check_python() -> Check:
    v = sys.version_info
    text = f"Python {v.major}.{v.minor}.{v.micro} at {sys.executable}"
    if (v.major, v.minor) < (3, 10):
        return Check("python", FAIL, text + ": kiln needs Python >= 3.10", "create a Python 3.10+ environment (python3.11 -m venv .venv) and install kiln there")
    return Check("python", OK, text)


def _conda_name(prefix: str, env: Mapping[str, str]) -> str:
    if env.get("CONDA_DEFAULT_ENV") and _real(env.get("CONDA_PREFIX", "")) == _real(prefix):
        return env["CONDA_DEFAULT_ENV"]
    return os.path.basename(prefix.rstrip("/\\")) or prefix


def check_python_env(env: Mapping[str, str]) -> Check:
    prefix, base = sys.prefix, getattr(sys, "base_prefix", sys.prefix)
    in_venv = _real(prefix) != _real(base)
    is_conda = (Path(prefix) / "conda-meta").is_dir()
    conda_prefix = env.get("CONDA_PREFIX")
    venv_var = env.get("VIRTUAL_ENV")
    if in_venv:
        where = f"venv {prefix} (base Python {base})"
    elif is_conda:
        where = f"conda env '{_conda_name(prefix, env)}' ({prefix})"
    else:
        where = f"system Python ({prefix}), no venv or conda env"
    if venv_var and _real(venv_var) != _real(prefix):
        return Check(
            "python_env",
            WARN,
            f"VIRTUAL_ENV={venv_var} is activated but kiln runs on {where}: packages installed in the activated venv are not the ones used",
            f"run kiln with the venv's own Python ({os.path.join(venv_var, 'bin', 'python')} -m engine ...) or activate the venv kiln is installed in",
        )
    if conda_prefix and not in_venv and _real(conda_prefix) != _real(prefix):
        return Check(
            "python_env",
            WARN,
            f"conda env '{_conda_name(conda_prefix, env)}' ({conda_prefix}) is active but kiln runs on {where}",
            f"run kiln with the env's Python ({os.path.join(conda_prefix, 'bin', 'python')} -m engine ...) or `conda activate` the env kiln is installed in",
        )
    return Check("python_env", OK, where)


def check_conda_run(env: Mapping[str, str]) -> Check:
    cp = env.get("CONDA_PREFIX")
    if not cp:
        return Check("conda_run", OK, "no conda env active (CONDA_PREFIX not set)")
    if os.name == "nt":  # pragma: no cover - windows
        bins = [cp, os.path.join(cp, "Scripts"), os.path.join(cp, "Library", "bin")]
    else:
        bins = [os.path.join(cp, "bin")]
    path_entries = {_real(p) for p in env.get("PATH", "").split(os.pathsep) if p}
    if any(_real(b) in path_entries for b in bins):
        return Check("conda_run", OK, f"conda env '{_conda_name(cp, env)}' is activated normally ({bins[0]} is on PATH)")
    return Check(
        "conda_run",
        WARN,
        f"CONDA_PREFIX={cp} is set but {bins[0]} is not on PATH: signs of `conda run` (or a half-activated env); "
        "programs from the env (nvcc, ninja) are not found and variables exported in your shell may not reach kiln",
        f"activate the env in your shell instead (`conda activate {_conda_name(cp, env)}`, then run kiln), or: export PATH={bins[0]}:$PATH",
    )


# ---------------------------------------------------------------------------------------------
# torch, GPUs, driver
# ---------------------------------------------------------------------------------------------


def driver_cuda_version() -> Optional[str]:
    """Highest CUDA version the installed NVIDIA driver supports ('12.8'), from libcuda; None without a driver."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            v = ctypes.c_int(0)
            if lib.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value > 0:
                return f"{v.value // 1000}.{(v.value % 1000) // 10}"
        except (AttributeError, OSError):
            pass
    return None


def nvidia_smi(env: Mapping[str, str], timeout: float = 15.0) -> dict:
    """{'path', 'driver_version', 'gpus': [names], 'error'} from nvidia-smi (when installed)."""
    out = {"path": toolkit.which("nvidia-smi", env), "driver_version": None, "gpus": [], "error": None}
    if not out["path"]:
        return out
    try:
        r = subprocess.run(
            [out["path"], "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        out["error"] = f"nvidia-smi did not answer within {timeout:g} s (a hung driver?)"
        return out
    except OSError as e:
        out["error"] = f"nvidia-smi could not run: {e}"
        return out
    if r.returncode != 0:
        out["error"] = (r.stdout + r.stderr).strip().splitlines()[-1:] or [f"exit code {r.returncode}"]
        out["error"] = f"nvidia-smi failed: {out['error'][0]}"
        return out
    for line in r.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            out["gpus"].append(parts[0])
            out["driver_version"] = out["driver_version"] or parts[1]
    return out


def collect_torch_info(env: Optional[Mapping[str, str]] = None) -> dict:
    """Facts about torch and the GPUs it sees. Keys: imported, error, version, cuda, cuda_available,
    cuda_warnings, arch_list, gpus [{index, name, cc, mem_free, mem_total}], driver_version,
    driver_cuda, smi_gpus, smi_error, extensions_dir."""
    env = os.environ if env is None else env
    info: dict = {
        "imported": False,
        "error": None,
        "version": None,
        "cuda": None,
        "cuda_available": False,
        "cuda_warnings": [],
        "arch_list": [],
        "gpus": [],
        "driver_version": None,
        "driver_cuda": driver_cuda_version(),
        "smi_gpus": [],
        "smi_error": None,
        "extensions_dir": None,
    }
    smi = nvidia_smi(env)
    info["driver_version"] = smi["driver_version"]
    info["smi_gpus"] = smi["gpus"]
    info["smi_error"] = smi["error"]
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure is the finding
        info["error"] = f"{e.__class__.__name__}: {e}"
        return info
    info["imported"] = True
    info["version"] = torch.__version__
    info["cuda"] = torch.version.cuda
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            info["cuda_available"] = bool(torch.cuda.is_available())
            if info["cuda_available"]:
                for i in range(torch.cuda.device_count()):
                    p = torch.cuda.get_device_properties(i)
                    g = {"index": i, "name": p.name, "cc": [p.major, p.minor], "mem_total": int(p.total_memory), "mem_free": None}
                    try:
                        free, total = torch.cuda.mem_get_info(i)
                        g["mem_free"], g["mem_total"] = int(free), int(total)
                    except Exception:  # noqa: BLE001
                        pass
                    info["gpus"].append(g)
                info["arch_list"] = list(torch.cuda.get_arch_list())
        except Exception as e:  # noqa: BLE001
            info["cuda_available"] = False
            info["cuda_warnings"].append(f"{e.__class__.__name__}: {e}")
    info["cuda_warnings"].extend(str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip())
    info["extensions_dir"] = torch_extensions_dir(info, env)
    return info


def torch_extensions_dir(info: Mapping, env: Mapping[str, str]) -> str:
    """Where torch.utils.cpp_extension.load() JIT-builds extensions (nvdiffrast < 0.4 builds there)."""
    root = env.get("TORCH_EXTENSIONS_DIR")
    if root:
        return root
    cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    acc = f"cu{info['cuda'].replace('.', '')}" if info.get("cuda") else "cpu"
    py = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return os.path.join(_real(os.path.join(cache, "torch_extensions")), f"{py}_{acc}")


def _gib(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / GIB:.1f}"


def _cc(g: Mapping) -> str:
    return f"sm_{g['cc'][0]}{g['cc'][1]}"


def check_torch(info: Mapping) -> Check:
    if not info.get("imported"):
        return Check("torch", FAIL, f"torch does not import: {info.get('error')}", f"install torch: {TORCH_CUDA_PIP} (or plain `pip install torch` for the CPU backend)")
    build = f"built for CUDA {info['cuda']}" if info.get("cuda") else "a CPU-only build"
    return Check("torch", OK, f"torch {info['version']}, {build}")


def check_cuda(info: Mapping, env: Mapping[str, str]) -> Check:
    drv = []
    if info.get("driver_version"):
        drv.append(f"driver {info['driver_version']}")
    if info.get("driver_cuda"):
        drv.append(f"driver supports CUDA {info['driver_cuda']}")
    drv_text = ", ".join(drv) if drv else "no NVIDIA driver found"
    if not info.get("imported"):
        return Check("cuda", WARN, f"cannot tell: torch does not import ({drv_text})", "fix the torch check first")
    if info.get("cuda_available") and info.get("gpus"):
        gpus = "; ".join(f"{g['index']}: {g['name']} ({_cc(g)}, {_gib(g.get('mem_free'))}/{_gib(g.get('mem_total'))} GiB free)" for g in info["gpus"])
        return Check("cuda", OK, f"{len(info['gpus'])} GPU(s): {gpus}; {drv_text}")
    smi = f"; nvidia-smi sees {', '.join(info['smi_gpus'])}" if info.get("smi_gpus") else ""
    if info.get("smi_error"):
        smi += f"; {info['smi_error']}"
    if not info.get("cuda"):
        fix = f"to bake on an NVIDIA GPU install a CUDA build of torch: {TORCH_CUDA_PIP} (pick the cuXYZ your driver supports, see nvidia-smi)"
        if not info.get("smi_gpus") and not info.get("driver_cuda"):
            fix = "nothing to do for CPU baking; for GPU baking you need an NVIDIA GPU + driver and a CUDA build of torch (" + TORCH_CUDA_PIP + ")"
        return Check("cuda", WARN, f"torch {info['version']} is a CPU-only build, so no CUDA: the CPU backend is used{smi}", fix)
    # A CUDA build of torch that sees no GPU: say why, as well as we can.
    t = info["cuda"]
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    warn_txt = f" ({info['cuda_warnings'][0]})" if info.get("cuda_warnings") else ""
    if cvd is not None and cvd.strip() in ("", "-1", "none", "NoDevFiles"):
        reason, fix = f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU", "unset CUDA_VISIBLE_DEVICES (or set it to the GPU index to use, e.g. 0)"
    elif not info.get("driver_cuda") and not info.get("smi_gpus"):
        reason, fix = "no NVIDIA driver found", "install the NVIDIA driver (nvidia-smi must list the GPU), or keep using the CPU backend"
    elif info.get("driver_cuda") and (toolkit.major_minor(info["driver_cuda"]) or (0, 0))[0] < (toolkit.major_minor(t) or (0, 0))[0]:
        d = toolkit.major_minor(info["driver_cuda"])
        reason = f"the driver supports CUDA {info['driver_cuda']} but torch needs CUDA {t}"
        fix = f"update the NVIDIA driver, or install a torch built for CUDA {d[0]}.x: pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu{d[0]}{d[1]}"
    else:
        reason, fix = "torch cannot initialise CUDA", "check `nvidia-smi` works, that /dev/nvidia* are accessible (containers: --gpus all), then rerun `kiln doctor`"
    return Check("cuda", WARN, f"torch {info['version']} (CUDA {t}) sees no GPU: {reason}{warn_txt}; the CPU backend is used{smi}; {drv_text}", fix)


def check_torch_arch(info: Mapping) -> Check:
    if not info.get("cuda_available") or not info.get("gpus"):
        return Check("torch_arch", OK, "not applicable: no CUDA GPU")
    sass, ptx = toolkit.parse_arch_list(info.get("arch_list") or [])
    if not sass and not ptx:
        return Check("torch_arch", WARN, "torch reports no compiled GPU architectures (torch.cuda.get_arch_list() is empty): cannot tell whether it supports this GPU", "if the smoke test passes, ignore this")
    bad, notes = [], []
    for g in info["gpus"]:
        kind, arch = toolkit.arch_compatible(tuple(g["cc"]), sass, ptx)
        if kind == "none":
            bad.append(f"{g['name']} ({_cc(g)})")
        else:
            notes.append(f"{g['name']} ({_cc(g)}) runs {arch}" + (" via PTX JIT" if kind == "ptx" else ""))
    built = toolkit.fmt_archs(sass, ptx)
    if bad:
        return Check("torch_arch", FAIL, f"torch {info['version']} has no code for {', '.join(bad)}; it was built for {built}", f"install a torch build that supports this GPU (newer CUDA builds cover newer GPUs): {TORCH_CUDA_PIP}")
    return Check("torch_arch", OK, f"{'; '.join(notes)} (torch built for {built})")


# ---------------------------------------------------------------------------------------------
# nvdiffrast (never imported here: its compiled code is loaded in a child process)
# ---------------------------------------------------------------------------------------------


def nvdiffrast_info(torch_info: Mapping) -> dict:
    """{'installed', 'version', 'location', 'ext_candidates', 'jit_dir', 'lock_file'} without importing nvdiffrast.torch."""
    out = {"installed": False, "version": None, "location": None, "ext_candidates": [], "jit_dir": None, "lock_file": None}
    try:
        spec = importlib.util.find_spec("nvdiffrast")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return out
    out["installed"] = True
    locs = list(spec.submodule_search_locations or []) or ([os.path.dirname(spec.origin)] if spec.origin else [])
    out["location"] = locs[0] if locs else None
    try:
        out["version"] = importlib.metadata.version("nvdiffrast")
    except importlib.metadata.PackageNotFoundError:
        try:  # the package's __init__ only sets __version__ (no compiled code is loaded)
            out["version"] = getattr(importlib.import_module("nvdiffrast"), "__version__", None)
        except Exception:  # noqa: BLE001
            out["version"] = None
    cands: list[str] = []
    try:
        ext = importlib.util.find_spec("_nvdiffrast_c")
        if ext is not None and ext.origin:
            cands.append(ext.origin)
    except (ImportError, ValueError):
        pass
    for loc in locs:  # the package folder and site-packages next to it
        for d in (loc, os.path.dirname(loc)):
            for pat in ("*nvdiffrast*.so", "*nvdiffrast*.pyd"):
                cands.extend(glob.glob(os.path.join(d, pat)))
    if torch_info.get("extensions_dir"):
        jit = os.path.join(torch_info["extensions_dir"], "nvdiffrast_plugin")
        out["jit_dir"] = jit
        cands.extend(glob.glob(os.path.join(jit, "nvdiffrast_plugin*.so")) + glob.glob(os.path.join(jit, "nvdiffrast_plugin*.pyd")))
        if os.path.exists(os.path.join(jit, "lock")):
            out["lock_file"] = os.path.join(jit, "lock")
    seen: list[str] = []
    for c in cands:
        r = _real(c)
        if r not in seen and os.path.isfile(r):
            seen.append(r)
    out["ext_candidates"] = seen
    return out


def _arch_env(torch_info: Mapping) -> str:
    gpus = torch_info.get("gpus") or []
    return ";".join(sorted({f"{g['cc'][0]}.{g['cc'][1]}" for g in gpus})) or "<your GPU's compute capability, e.g. 8.6>"


def check_nvdiffrast(nv: Mapping, torch_info: Mapping) -> Check:
    gpu = bool(torch_info.get("cuda_available"))
    if not nv.get("installed"):
        if gpu:
            return Check("nvdiffrast", WARN, "not installed: the CUDA backend is unavailable, the CPU backend is used", f"install it with the nvcc matching torch's CUDA {torch_info.get('cuda')}: {NVDIFFRAST_PIP}")
        return Check("nvdiffrast", OK, "not installed (only used with a CUDA GPU; the CPU backend does not need it)")
    v = nv.get("version")
    vt = _version_tuple(v)
    if vt is None:
        return Check("nvdiffrast", WARN, f"installed at {nv.get('location')} but its version is unknown", f"reinstall it: {NVDIFFRAST_PIP}")
    if vt < (0, 4):
        lock = f"; a lock file from an interrupted build is left at {nv['lock_file']} (it blocks the next build)" if nv.get("lock_file") else ""
        return Check(
            "nvdiffrast",
            WARN,
            f"nvdiffrast {v} JIT-builds its CUDA plugin on first use into {nv.get('jit_dir')} (needs nvcc matching torch's CUDA; a stale build there crashes){lock}",
            f"upgrade to 0.4+ (built at install time): {NVDIFFRAST_PIP}; or, to rebuild the 0.3 plugin: rm -rf {nv.get('jit_dir')} && export TORCH_CUDA_ARCH_LIST='{_arch_env(torch_info)}'",
        )
    return Check("nvdiffrast", OK, f"nvdiffrast {v} (built at install time) at {nv.get('location')}")


def _ext_fix(nv: Mapping, run: ChildRun) -> str:
    text = " ".join(run.stderr_tail[-5:])
    if "undefined symbol" in text or "ABI" in text:
        return f"nvdiffrast was built against another torch: rebuild it against this one: {NVDIFFRAST_PIP}"
    if (_version_tuple(nv.get("version")) or (9,)) < (0, 4):
        return f"clear the JIT cache and rebuild: rm -rf {nv.get('jit_dir')}, or upgrade: {NVDIFFRAST_PIP}"
    return f"reinstall nvdiffrast against this torch: {NVDIFFRAST_PIP}; to see the full error run: {sys.executable} {CHILD} --import-only"


def check_nvdiffrast_ext(nv: Mapping, run: Optional[ChildRun], full: bool) -> Check:
    """``run`` is the smoke child (``full``) or the --import-only child."""
    if not nv.get("installed"):
        return Check("nvdiffrast_ext", OK, "not applicable: nvdiffrast is not installed")
    if run is None:
        return Check("nvdiffrast_ext", WARN, "not checked", "rerun `kiln doctor` without --no-smoke")
    files = run.result.get("extension_files") or []
    loaded = f"; loaded {', '.join(files)}" if files else ""
    if not full:
        if run.outcome == "ok":
            old = (_version_tuple(nv.get("version")) or (9,)) < (0, 4)
            note = " (0.3 loads its JIT plugin only when a CUDA context is made, which needs a GPU)" if old else ""
            return Check("nvdiffrast_ext", OK, f"`import nvdiffrast.torch` works in a child process{loaded}{note}")
        return Check("nvdiffrast_ext", FAIL, f"`import nvdiffrast.torch` {run.describe()}", _ext_fix(nv, run))
    # Full smoke child: the extension is loaded by the import (0.4) and the RasterizeCudaContext (0.3 JIT).
    ext_stages = ("import_nvdiffrast", "context")
    passed = [s for s in run.stages_started if s not in ("import_torch", "import_nvdiffrast", "cuda_init", "context")]
    if run.outcome in ("ok", "wrong") or passed:
        return Check("nvdiffrast_ext", OK, f"imports and creates a RasterizeCudaContext in a child process{loaded}")
    if run.last_stage in ext_stages:
        return Check("nvdiffrast_ext", FAIL, f"loading nvdiffrast's compiled extension {run.describe()}", _ext_fix(nv, run))
    return Check("nvdiffrast_ext", WARN, f"not reached: the smoke child {run.describe()} before loading nvdiffrast", "fix the smoke check first")


def check_nvdiffrast_arch(nv: Mapping, run: Optional[ChildRun], torch_info: Mapping, env: Mapping[str, str]) -> Check:
    if not nv.get("installed"):
        return Check("nvdiffrast_arch", OK, "not applicable: nvdiffrast is not installed")
    gpus = torch_info.get("gpus") or []
    if not torch_info.get("cuda_available") or not gpus:
        return Check("nvdiffrast_arch", OK, "not applicable: no CUDA GPU")
    files = list((run.result.get("extension_files") if run else None) or []) or list(nv.get("ext_candidates") or [])
    rebuild = f"rebuild it for this GPU: TORCH_CUDA_ARCH_LIST='{_arch_env(torch_info)}' {NVDIFFRAST_PIP}"
    if not files:
        old = (_version_tuple(nv.get("version")) or (9,)) < (0, 4)
        why = "its JIT plugin is not built yet (0.3 builds it at first use)" if old else "found no compiled nvdiffrast extension to inspect"
        return Check("nvdiffrast_arch", WARN, f"undeterminable: {why}", "if the smoke test passes this is fine; otherwise " + rebuild)
    sass: set[int] = set()
    ptx: set[int] = set()
    methods = set()
    for f in files:
        a = toolkit.binary_archs(f, env)
        sass |= a.sass
        ptx |= a.ptx
        if a.method:
            methods.add(a.method)
    names = ", ".join(files)
    if not sass and not ptx:
        return Check("nvdiffrast_arch", WARN, f"undeterminable: no GPU architectures readable in {names} (no fat binary headers, no cuobjdump, no sm_XY strings)", "if the smoke test passes this is fine; otherwise " + rebuild)
    built = toolkit.fmt_archs(sass, ptx)
    bad, notes = [], []
    for g in gpus:
        kind, arch = toolkit.arch_compatible(tuple(g["cc"]), sass, ptx)
        if kind == "none":
            bad.append(f"{g['name']} ({_cc(g)})")
        else:
            notes.append(f"{g['name']} ({_cc(g)}) runs {arch}" + (" via PTX JIT at load" if kind == "ptx" else ""))
    if bad:
        return Check("nvdiffrast_arch", FAIL, f"{names} is built for {built}, not for {', '.join(bad)}", rebuild)
    return Check("nvdiffrast_arch", OK, f"{'; '.join(notes)} ({os.path.basename(files[0])} built for {built}, read from {'/'.join(sorted(methods))})")


# ---------------------------------------------------------------------------------------------
# nvcc / CUDA_HOME vs torch's CUDA
# ---------------------------------------------------------------------------------------------


def check_nvcc(torch_cuda: Optional[str], env: Mapping[str, str], nvdiffrast_version: Optional[str] = None, timeout: float = 20.0) -> Check:
    """Compare the CUDA release of ``nvcc`` on PATH and of ``$CUDA_HOME`` with torch's CUDA (``torch_cuda``)."""
    path_nvcc = toolkit.which("nvcc", env)
    path_rel, path_raw = toolkit.nvcc_release(path_nvcc, timeout) if path_nvcc else (None, "")
    home = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    home_var = "CUDA_HOME" if env.get("CUDA_HOME") else "CUDA_PATH"
    home_nvcc = toolkit.nvcc_in(Path(home)) if home else None
    home_rel = toolkit.toolkit_release(Path(home), timeout) if home_nvcc else None
    parts = [f"nvcc on PATH: {path_nvcc} (CUDA {path_rel or 'release unknown'})" if path_nvcc else "no nvcc on PATH"]
    if home:
        parts.append(f"{home_var}={home} (CUDA {home_rel})" if home_nvcc else f"{home_var}={home} has no bin/nvcc")
    else:
        parts.append("CUDA_HOME not set")
    seen = "; ".join(parts)
    if not torch_cuda:
        return Check("nvcc", OK, f"{seen}; torch is CPU-only, so nvcc is not used")
    if toolkit.major_minor(torch_cuda) is None:
        return Check("nvcc", WARN, f"{seen}; cannot compare: torch reports CUDA version {torch_cuda!r}", "reinstall torch")
    t = "%d.%d" % toolkit.major_minor(torch_cuda)
    nv_ver = _version_tuple(nvdiffrast_version)

    def locate() -> tuple[Optional[toolkit.Toolkit], str]:
        kits = toolkit.find_toolkits(env, timeout)
        match = next((k for k in kits if toolkit.same_release(k.release, t)), None)
        if match:
            return match, f"a CUDA {t} toolkit is installed at {match.root}"
        others = ", ".join(f"{k.root} ({k.release})" for k in kits)
        return None, f"no CUDA {t} toolkit found under {os.pathsep.join(toolkit.search_patterns(env))}" + (f" (found: {others})" if others else "")

    def fix_for(match: Optional[toolkit.Toolkit]) -> str:
        if match:
            return f"use the CUDA {t} toolkit at {match.root}:\n" + toolkit.export_lines(match.root)
        return (
            f"install the CUDA {t} toolkit (https://developer.nvidia.com/cuda-toolkit-archive, or `conda install -c nvidia cuda-toolkit={t}`), then:\n"
            + toolkit.export_lines(f"/usr/local/cuda-{t}")
        )

    problems = []
    if path_nvcc and path_rel and not toolkit.same_release(path_rel, t):
        problems.append(f"nvcc on PATH ({path_nvcc}) is CUDA {path_rel}")
    if home and not home_nvcc:
        problems.append(f"{home_var}={home} has no bin/nvcc (builds use {home_var} first)")
    elif home_rel and not toolkit.same_release(home_rel, t):
        problems.append(f"{home_var}={home} is CUDA {home_rel} (builds use {home_var} first)")
    if problems:
        match, where = locate()
        return Check("nvcc", FAIL, f"torch uses CUDA {t} but {' and '.join(problems)}: CUDA extensions built now would mismatch torch (the classic cause of segfaults); {where}", fix_for(match))
    if path_nvcc and not path_rel:
        return Check("nvcc", WARN, f"{seen}; could not read its release from `nvcc --version`: {path_raw[:200]}", "check that `nvcc --version` works")
    if path_nvcc or home_nvcc:
        return Check("nvcc", OK, f"{seen}: matches torch's CUDA {t}")
    # No nvcc at all.
    if nv_ver is not None and nv_ver >= (0, 4):
        return Check("nvcc", OK, f"no nvcc: fine, nvdiffrast {nvdiffrast_version} is already built (nvcc is only needed to build CUDA extensions)")
    match, where = locate()
    if nv_ver is not None:
        return Check("nvcc", FAIL, f"no nvcc, but nvdiffrast {nvdiffrast_version} JIT-compiles its plugin with nvcc {t} on first use; {where}", fix_for(match))
    return Check("nvcc", WARN, f"no nvcc: needed only to build nvdiffrast for torch's CUDA {t}; {where}", fix_for(match))


# ---------------------------------------------------------------------------------------------
# Python dependencies, disk
# ---------------------------------------------------------------------------------------------

DEPENDENCIES = (
    # (check id, import name, distribution name, what is lost without it: None = the engine cannot run)
    ("xatlas", "xatlas", "xatlas", None),
    ("fast_simplification", "fast_simplification", "fast-simplification", None),
    ("meshoptimizer", "meshoptimizer", "meshoptimizer",
     "simplify runs on fast-simplification alone: 3-6x slower on large sources (its result lies a little closer to the "
     "source); meshoptimizer installs from an sdist (a C++ compiler, ~20 s)"),
    ("embreex", "embreex", "embreex", None),
    ("trimesh", "trimesh", "trimesh", None),
)


def check_module(check_id: str, module: str, dist: str, without: Optional[str] = None) -> Check:
    """``module`` imports (its version); a failure is a warning naming what is lost when ``without`` says so."""
    try:
        m = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001
        detail = f"{module} does not import: {e.__class__.__name__}: {e}"
        if without:
            return Check(check_id, WARN, f"{detail}; {without}", f"pip install {dist}")
        return Check(check_id, FAIL, detail, f"pip install {dist}")
    try:
        v = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        v = getattr(m, "__version__", None) or "version unknown"
    where = os.path.dirname(getattr(m, "__file__", "") or "") or "?"
    return Check(check_id, OK, f"{module} {v} ({where})")


def default_data_dir(env: Optional[Mapping[str, str]] = None) -> str:
    env = os.environ if env is None else env
    if env.get("KILN_DATA_DIR"):
        return env["KILN_DATA_DIR"]
    if os.name == "nt" and env.get("LOCALAPPDATA"):  # pragma: no cover - windows
        return os.path.join(env["LOCALAPPDATA"], "kiln")
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "kiln")


WARN_BYTES = 5 * 1000**3
FAIL_BYTES = 500 * 1000**2


def check_disk(
    data_dir: str,
    usage: Callable[[str], "shutil._ntuple_diskusage"] = shutil.disk_usage,
    warn_bytes: int = WARN_BYTES,
    fail_bytes: int = FAIL_BYTES,
) -> Check:
    p = Path(os.path.expanduser(data_dir)).absolute()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        u = usage(str(probe))
    except OSError as e:
        return Check("disk", FAIL, f"cannot read free space of {probe}: {e}", "point --data-dir / KILN_DATA_DIR at a writable folder")
    note = "" if probe == p else f" (data dir {p} does not exist yet; measured {probe})"
    text = f"{u.free / 1000**3:.1f} GB free of {u.total / 1000**3:.1f} GB at {p}{note}"
    fix = "free some space on that disk, or point --data-dir / KILN_DATA_DIR at a disk with more room"
    if u.free < fail_bytes:
        return Check("disk", FAIL, f"{text}: under {fail_bytes / 1000**2:.0f} MB, jobs will fail to write", fix)
    if u.free < warn_bytes:
        return Check("disk", WARN, f"{text}: under {warn_bytes / 1000**3:.0f} GB, large bakes may run out", fix)
    return Check("disk", OK, text)
