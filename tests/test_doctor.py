"""`kiln doctor`: checks, child-process smoke test, JSON schema, CLI exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest

import engine
from engine import doctor
from engine.doctor import checks as C
from engine.doctor import smoke, toolkit

ROOT = Path(__file__).resolve().parents[1]
EXPORT_TAIL = "export PATH=$CUDA_HOME/bin:$PATH\nexport LD_LIBRARY_PATH=$CUDA_HOME/lib64:$LD_LIBRARY_PATH"


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def fake_nvcc(folder: Path, release: str | None, name: str = "nvcc") -> Path:
    """A shell script answering `--version` like nvcc of ``release``."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    line = f"Cuda compilation tools, release {release}, V{release}.85" if release else "something else entirely"
    p.write_text(f"#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\necho '{line}'\n")
    p.chmod(0o755)
    return p


def fake_toolkit(root: Path, release: str) -> Path:
    fake_nvcc(root / "bin", release)
    (root / "lib64").mkdir(parents=True, exist_ok=True)
    return root


def base_env(tmp_path: Path, path_dirs=(), **extra) -> dict:
    """An environment with only our folders (+ /bin for sh) on PATH and an empty toolkit search."""
    empty = tmp_path / "no-toolkits"
    empty.mkdir(exist_ok=True)
    env = {"PATH": os.pathsep.join([str(d) for d in path_dirs] + ["/bin", "/usr/bin"] if os.name != "nt" else []), toolkit.SEARCH_ENV: str(empty)}
    env.update(extra)
    return env


def by_id(report: dict) -> dict:
    return {c["id"]: c for c in report["checks"]}


# ---------------------------------------------------------------------------------------------
# nvcc / CUDA_HOME vs torch.version.cuda
# ---------------------------------------------------------------------------------------------

needs_sh = pytest.mark.skipif(os.name == "nt" or not Path("/bin/sh").exists(), reason="fake nvcc scripts need /bin/sh")


def test_parse_release_and_versions():
    assert toolkit.parse_release("Cuda compilation tools, release 11.8, V11.8.89") == "11.8"
    assert toolkit.parse_release("Cuda compilation tools, release 9.1, V9.1.85") == "9.1"
    assert toolkit.parse_release("no version here") is None
    assert toolkit.same_release("12.8", "12.8.1")
    assert not toolkit.same_release("12.8", "12.1")
    assert not toolkit.same_release("11.8", None)


@needs_sh
def test_fake_nvcc_on_path_mismatch_fails_with_export_lines(tmp_path):
    bin_dir = tmp_path / "bin"
    nvcc = fake_nvcc(bin_dir, "9.1")
    if shutil.which("nvcc", path=f"{bin_dir}:/bin:/usr/bin") != str(nvcc):
        pytest.skip("a real nvcc in /bin or /usr/bin shadows the fake")
    c = C.check_nvcc("11.8", base_env(tmp_path, [bin_dir]))
    assert c.status == "fail"
    assert "9.1" in c.detail and "11.8" in c.detail and str(nvcc) in c.detail
    assert "no CUDA 11.8 toolkit found" in c.detail
    assert c.fix.splitlines()[-3:] == ["export CUDA_HOME=/usr/local/cuda-11.8"] + EXPORT_TAIL.splitlines()


@needs_sh
def test_matching_toolkit_found_is_named_in_the_fix(tmp_path):
    bin_dir = tmp_path / "bin"
    fake_nvcc(bin_dir, "9.1")
    fake_toolkit(tmp_path / "cuda-12.1", "12.1")
    good = fake_toolkit(tmp_path / "cuda-11.8", "11.8")
    env = base_env(tmp_path, [bin_dir])
    env[toolkit.SEARCH_ENV] = str(tmp_path / "cuda-*")
    c = C.check_nvcc("11.8", env)
    assert c.status == "fail"
    assert f"a CUDA 11.8 toolkit is installed at {good}" in c.detail
    assert c.fix.splitlines() == [f"use the CUDA 11.8 toolkit at {good}:", f"export CUDA_HOME={good}"] + EXPORT_TAIL.splitlines()
    # Following the fix makes the check pass.
    env2 = dict(env, CUDA_HOME=str(good), PATH=f"{good / 'bin'}:{env['PATH']}")
    assert C.check_nvcc("11.8", env2).status == "ok"


@needs_sh
def test_toolkit_release_from_version_json(tmp_path):
    root = tmp_path / "cuda-12.4"
    fake_nvcc(root / "bin", None)  # nvcc --version says nothing useful
    (root / "version.json").write_text(json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.4.1"}}))
    assert toolkit.toolkit_release(root) == "12.4"
    env = base_env(tmp_path, [])
    env[toolkit.SEARCH_ENV] = str(tmp_path / "cuda-*")
    assert toolkit.find_toolkits(env) == [toolkit.Toolkit(str(root), "12.4")]


@needs_sh
def test_cuda_home_mismatch_fails_even_when_path_nvcc_matches(tmp_path):
    fake_nvcc(tmp_path / "bin", "11.8")
    old = fake_toolkit(tmp_path / "cuda-10.2", "10.2")
    c = C.check_nvcc("11.8", base_env(tmp_path, [tmp_path / "bin"], CUDA_HOME=str(old)))
    assert c.status == "fail"
    assert f"CUDA_HOME={old} is CUDA 10.2" in c.detail
    assert "export CUDA_HOME=" in c.fix


@needs_sh
def test_cuda_home_without_nvcc_fails(tmp_path):
    fake_nvcc(tmp_path / "bin", "11.8")
    c = C.check_nvcc("11.8", base_env(tmp_path, [tmp_path / "bin"], CUDA_HOME=str(tmp_path / "nowhere")))
    assert c.status == "fail" and "has no bin/nvcc" in c.detail


@needs_sh
def test_matching_nvcc_is_ok(tmp_path):
    fake_nvcc(tmp_path / "bin", "12.8")
    c = C.check_nvcc("12.8", base_env(tmp_path, [tmp_path / "bin"]))
    assert c.status == "ok" and "matches torch's CUDA 12.8" in c.detail and c.fix is None


def test_no_nvcc_depends_on_nvdiffrast_version(tmp_path):
    env = base_env(tmp_path, [])
    env["PATH"] = str(tmp_path / "empty-bin")  # nothing at all on PATH
    assert toolkit.which("nvcc", env) is None
    assert C.check_nvcc("12.8", env, nvdiffrast_version="0.4.0").status == "ok"  # only needed to build
    c = C.check_nvcc("12.8", env, nvdiffrast_version="0.3.3")  # JIT build needs nvcc
    assert c.status == "fail" and "export CUDA_HOME=/usr/local/cuda-12.8" in c.fix
    c = C.check_nvcc("12.8", env, nvdiffrast_version=None)  # not installed yet: needed to build it
    assert c.status == "warn"
    assert C.check_nvcc(None, env).status == "ok"  # CPU-only torch never uses nvcc


@needs_sh
def test_cpu_only_torch_ignores_any_nvcc(tmp_path):
    fake_nvcc(tmp_path / "bin", "9.1")
    c = C.check_nvcc(None, base_env(tmp_path, [tmp_path / "bin"]))
    assert c.status == "ok" and "CPU-only" in c.detail


@needs_sh
def test_cli_reports_mismatch_with_torch_cuda_patched(tmp_path, monkeypatch, capsys):
    """End to end through `kiln doctor --json` (in process, torch.version.cuda patched on this CPU build)."""
    import torch

    from engine.cli import main

    if torch.cuda.is_available():
        pytest.skip("patching torch.version.cuda is for CPU-only machines")
    bin_dir = tmp_path / "bin"
    fake_nvcc(bin_dir, "9.1")
    good = fake_toolkit(tmp_path / "cuda-11.8", "11.8")
    monkeypatch.setattr(torch.version, "cuda", "11.8")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(toolkit.SEARCH_ENV, str(tmp_path / "cuda-*"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv(smoke.CMD_ENV, raising=False)
    rc = main(["doctor", "--json", "--no-smoke", "--data-dir", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert rc == 2 and report["status"] == "fail"
    nvcc = by_id(report)["nvcc"]
    assert nvcc["status"] == "fail" and "9.1" in nvcc["detail"]
    assert f"export CUDA_HOME={good}" in nvcc["fix"] and EXPORT_TAIL in nvcc["fix"]


# ---------------------------------------------------------------------------------------------
# CUDA / GPU / driver
# ---------------------------------------------------------------------------------------------


def torch_info(**kw) -> dict:
    info = {
        "imported": True,
        "error": None,
        "version": "2.5.1+cu121",
        "cuda": "12.1",
        "cuda_available": False,
        "cuda_warnings": [],
        "arch_list": [],
        "gpus": [],
        "driver_version": None,
        "driver_cuda": None,
        "smi_gpus": [],
        "smi_error": None,
        "extensions_dir": "/tmp/torch_extensions/py311_cu121",
    }
    info.update(kw)
    return info


GPU = {"index": 0, "name": "NVIDIA RTX A6000", "cc": [8, 6], "mem_free": 40 * 2**30, "mem_total": 48 * 2**30}


@pytest.mark.skipif(_cuda_available(), reason="checks the CPU-only path")
def test_no_cuda_is_a_warning_with_cpu_fallback(tmp_path):
    report = doctor.run_checks(data_dir=str(tmp_path), smoke=True, env=base_env(tmp_path, []))
    ch = by_id(report)
    assert ch["cuda"]["status"] == "warn" and "CPU backend is used" in ch["cuda"]["detail"]
    assert ch["smoke"]["status"] == "warn" and "skipped: no CUDA GPU" in ch["smoke"]["detail"]
    assert ch["torch"]["status"] == "ok"
    assert report["status"] in ("warn", "fail") and "fail" not in {ch["cuda"]["status"], ch["smoke"]["status"]}


def test_cuda_build_without_gpu_explains_why():
    c = C.check_cuda(torch_info(), {"CUDA_VISIBLE_DEVICES": ""})
    assert c.status == "warn" and "CUDA_VISIBLE_DEVICES" in c.detail and "CPU backend" in c.detail
    c = C.check_cuda(torch_info(driver_cuda="11.4", driver_version="470.82"), {})
    assert c.status == "warn" and "driver supports CUDA 11.4 but torch needs CUDA 12.1" in c.detail
    assert "whl/cu114" in c.fix
    c = C.check_cuda(torch_info(), {})
    assert c.status == "warn" and "no NVIDIA driver found" in c.detail


def test_gpu_present_is_ok_and_lists_the_gpu():
    c = C.check_cuda(torch_info(cuda_available=True, gpus=[GPU], driver_version="550.54"), {})
    assert c.status == "ok"
    assert "NVIDIA RTX A6000 (sm_86, 40.0/48.0 GiB free)" in c.detail and "driver 550.54" in c.detail


def test_torch_arch_check():
    ok = C.check_torch_arch(torch_info(cuda_available=True, gpus=[GPU], arch_list=["sm_80", "sm_86", "sm_90"]))
    assert ok.status == "ok" and "runs sm_86" in ok.detail
    minor = C.check_torch_arch(torch_info(cuda_available=True, gpus=[GPU], arch_list=["sm_80"]))
    assert minor.status == "ok" and "runs sm_80" in minor.detail  # same major, lower minor runs
    bad = C.check_torch_arch(torch_info(cuda_available=True, gpus=[dict(GPU, cc=[12, 0], name="RTX 5090")], arch_list=["sm_80", "sm_90"]))
    assert bad.status == "fail" and "sm_120" in bad.detail
    assert C.check_torch_arch(torch_info()).status == "ok"  # no GPU: not applicable


def test_arch_compatibility_rules():
    assert toolkit.arch_compatible((8, 6), {80, 86}, set()) == ("sass", "sm_86")
    assert toolkit.arch_compatible((8, 9), {80, 86}, set()) == ("sass", "sm_86")
    assert toolkit.arch_compatible((9, 0), {80, 86}, set()) == ("none", "")
    assert toolkit.arch_compatible((9, 0), {80, 86}, {80}) == ("ptx", "compute_80")
    assert toolkit.arch_compatible((7, 5), {80}, {80}) == ("none", "")


# ---------------------------------------------------------------------------------------------
# Architectures inside binaries
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_object(tmp_path_factory):
    """A real CUDA object with sm_80 + sm_86 machine code and compute_90 PTX (needs nvcc, not a GPU)."""
    nvcc = shutil.which("nvcc")
    if not nvcc or not shutil.which("gcc") and not shutil.which("g++"):
        pytest.skip("needs nvcc and a host compiler to build a test binary")
    d = tmp_path_factory.mktemp("cu")
    (d / "k.cu").write_text("__global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }\nvoid launch(float* x) { k<<<1, 32>>>(x); }\n")
    cmd = [nvcc, "-c", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_86,code=sm_86",
           "-gencode", "arch=compute_90,code=compute_90", str(d / "k.cu"), "-o", str(d / "k.o")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    if r.returncode != 0:
        pytest.skip(f"nvcc could not build the test binary: {r.stderr[-300:]}")
    return d / "k.o"


def test_fatbin_archs_of_a_real_cuda_binary(cuda_object):
    a = toolkit.binary_archs(str(cuda_object))
    assert (a.sass, a.ptx, a.method) == ({80, 86}, {90}, "fatbin")


def test_binary_archs_fallbacks(tmp_path):
    s = tmp_path / "strings.so"
    s.write_bytes(b"\x7fELF" + b"\0" * 64 + b"code for sm_75 here\0" + b"\0" * 32)
    a = toolkit.binary_archs(str(s), env={"PATH": ""})
    assert (a.sass, a.method) == ({75}, "strings")
    n = tmp_path / "none.so"
    n.write_bytes(b"\x7fELF" + b"\0" * 200)
    assert not toolkit.binary_archs(str(n), env={"PATH": ""}).found
    assert not toolkit.binary_archs(str(tmp_path / "missing.so")).found


def test_nvdiffrast_arch_check_against_a_binary(cuda_object):
    nv = {"installed": True, "version": "0.4.0", "ext_candidates": [str(cuda_object)]}
    ok = C.check_nvdiffrast_arch(nv, None, torch_info(cuda_available=True, gpus=[GPU]), {})
    assert ok.status == "ok" and "runs sm_86" in ok.detail
    hopper = dict(GPU, cc=[9, 0], name="H100")
    jit = C.check_nvdiffrast_arch(nv, None, torch_info(cuda_available=True, gpus=[hopper]), {})
    assert jit.status == "ok" and "compute_90 via PTX JIT" in jit.detail
    turing = dict(GPU, cc=[7, 5], name="RTX 2080")
    bad = C.check_nvdiffrast_arch(nv, None, torch_info(cuda_available=True, gpus=[turing]), {})
    assert bad.status == "fail" and "sm_75" in bad.detail and "TORCH_CUDA_ARCH_LIST='7.5'" in bad.fix


def test_nvdiffrast_arch_undeterminable_is_a_warning(tmp_path):
    blob = tmp_path / "_nvdiffrast_c.so"
    blob.write_bytes(b"\x7fELF" + b"\0" * 100)
    nv = {"installed": True, "version": "0.4.0", "ext_candidates": [str(blob)]}
    c = C.check_nvdiffrast_arch(nv, None, torch_info(cuda_available=True, gpus=[GPU]), {"PATH": ""})
    assert c.status == "warn" and "undeterminable" in c.detail
    c = C.check_nvdiffrast_arch(dict(nv, ext_candidates=[]), None, torch_info(cuda_available=True, gpus=[GPU]), {})
    assert c.status == "warn" and "undeterminable" in c.detail


# ---------------------------------------------------------------------------------------------
# The smoke child: crash, hang, errors
# ---------------------------------------------------------------------------------------------

CRASH = "import os, signal; print('KILN-SMOKE stage rasterize', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"


@pytest.mark.skipif(not hasattr(signal, "SIGSEGV") or os.name == "nt", reason="POSIX signals")
def test_crashing_child_fails_naming_the_signal(tmp_path):
    report = doctor.run_checks(data_dir=str(tmp_path), smoke_cmd=[sys.executable, "-c", CRASH], smoke_timeout=60)
    s = by_id(report)["smoke"]
    assert s["status"] == "fail" and report["status"] == "fail" and doctor.exit_code(report) == 2
    assert "crashed with SIGSEGV" in s["detail"] and "during stage 'rasterize'" in s["detail"]
    assert "rebuild nvdiffrast" in s["fix"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_signal_through_a_shell_is_still_named():
    run = smoke.run_child(["/bin/sh", "-c", "/bin/sh -c 'kill -ABRT $$'; exit $?"], 30)
    assert run.outcome == "signal" and run.signal_name == "SIGABRT" and "134" in run.describe()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a killed process may linger as a zombie until its new parent reaps it
        return " Z" not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]
    except OSError:
        return True


@pytest.mark.skipif(os.name == "nt", reason="process groups")
def test_hanging_child_fails_naming_the_timeout_and_is_killed_with_its_children(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    hang = textwrap.dedent(
        f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pidfile)!r}, "w").write(str(p.pid))
        print("KILN-SMOKE stage context", flush=True)
        time.sleep(120)
        """
    )
    t0 = time.monotonic()
    report = doctor.run_checks(data_dir=str(tmp_path), smoke_cmd=[sys.executable, "-c", hang], smoke_timeout=3)
    assert time.monotonic() - t0 < 60
    s = by_id(report)["smoke"]
    assert s["status"] == "fail"
    assert "did not finish within the 3 s timeout" in s["detail"] and "stage 'context'" in s["detail"]
    assert "--smoke-timeout" in s["fix"]
    gpid = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(gpid):
            break
        time.sleep(0.1)
    assert not _alive(gpid), "the timed-out child's own child was left running"


def test_child_python_error_is_reported_with_its_message(tmp_path):
    code = "print('KILN-SMOKE stage import_nvdiffrast', flush=True); raise ImportError('No module named _nvdiffrast_c')"
    run = smoke.run_child([sys.executable, "-c", code], 30)
    assert run.outcome == "error" and run.returncode == 1
    assert "ImportError: No module named _nvdiffrast_c" in run.describe() and "import_nvdiffrast" in run.describe()


def test_missing_child_executable_is_reported():
    run = smoke.run_child(["/nonexistent/kiln-python"], 5)
    assert run.outcome == "not_started" and "could not start" in run.describe()


def test_smoke_cmd_env_override_is_used(tmp_path):
    env = dict(os.environ, **{smoke.CMD_ENV: f"{sys.executable} -c \"{CRASH}\""})
    report = doctor.run_checks(data_dir=str(tmp_path), env=env, smoke_timeout=60)
    assert "SIGSEGV" in by_id(report)["smoke"]["detail"]
    assert "custom smoke command" in by_id(report)["smoke"]["detail"]


def test_no_smoke_skips_the_child(tmp_path):
    report = doctor.run_checks(data_dir=str(tmp_path), smoke=False, smoke_cmd=[sys.executable, "-c", CRASH])
    assert by_id(report)["smoke"] == {"id": "smoke", "name": "GPU smoke test", "status": "ok", "detail": "skipped (--no-smoke)", "fix": None}


# A CPU stand-in for nvdiffrast.torch (OpenGL conventions: row 0 is the bottom) to drive smoke_child.py.
FAKE_NVDIFFRAST = '''
import os
import torch

FLIP = os.environ.get("FAKE_NVDR_FLIP") == "1"


class RasterizeCudaContext:
    def __init__(self, device=None):
        self.device = device


def rasterize(ctx, pos, tri, resolution, ranges=None, grad_db=True):
    H, W = resolution
    p = pos[0]
    ndc = p[:, :2] / p[:, 3:4]
    ys = (torch.arange(H, dtype=torch.float32) + 0.5) / H * 2 - 1
    xs = (torch.arange(W, dtype=torch.float32) + 0.5) / W * 2 - 1
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    out = torch.zeros(1, H, W, 4)
    for t, (a, b, c) in enumerate(tri.tolist()):
        A, B, Cc = ndc[a], ndc[b], ndc[c]
        den = (B[1] - Cc[1]) * (A[0] - Cc[0]) + (Cc[0] - B[0]) * (A[1] - Cc[1])
        l0 = ((B[1] - Cc[1]) * (X - Cc[0]) + (Cc[0] - B[0]) * (Y - Cc[1])) / den
        l1 = ((Cc[1] - A[1]) * (X - Cc[0]) + (A[0] - Cc[0]) * (Y - Cc[1])) / den
        l2 = 1 - l0 - l1
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (out[0, ..., 3] == 0)
        vals = torch.stack([l0, l1, torch.zeros_like(l0), torch.full_like(l0, t + 1.0)], -1)
        out[0][inside] = vals[inside]
    if FLIP:
        out = out.flip(1)
    return out, None


def interpolate(attr, rast, tri, rast_db=None, diff_attrs=None):
    a = attr[0] if attr.dim() == 3 else attr
    tid = rast[..., 3].long() - 1
    t = tri.long()[tid.clamp(min=0)]
    u, v = rast[..., 0:1], rast[..., 1:2]
    out = u * a[t[..., 0]] + v * a[t[..., 1]] + (1 - u - v) * a[t[..., 2]]
    return out * (tid >= 0)[..., None], None


def texture(tex, uv, uv_da=None, mip_level_bias=None, mip=None, filter_mode="auto", boundary_mode="wrap", max_mip_level=None):
    H, W = tex.shape[1:3]
    x = (uv[..., 0] * W).floor().long() % W
    y = (uv[..., 1] * H).floor().long() % H
    return tex[0][y, x]
'''


@pytest.fixture
def fake_nvdiffrast(tmp_path):
    """A fake nvdiffrast package; returns (PYTHONPATH folder, writer(version, torch_init_source))."""
    root = tmp_path / "fakepkgs"

    def write(version: str, torch_init: str = FAKE_NVDIFFRAST) -> Path:
        pkg = root / "nvdiffrast"
        (pkg / "torch").mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n")
        (pkg / "torch" / "__init__.py").write_text(torch_init)
        return root

    return write


def _env_with(path: Path, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop(smoke.CMD_ENV, None)
    env.update(extra)
    return env


def test_smoke_child_runs_all_stages_against_a_cpu_stand_in(fake_nvdiffrast, tmp_path):
    pp = fake_nvdiffrast("0.4.0")
    cmd = [sys.executable, str(smoke.CHILD), "--device", "cpu"]
    run = smoke.run_child(cmd, 120, _env_with(pp))
    assert run.outcome == "ok", (run.describe(), run.stderr_tail)
    assert run.stages_started == ["import_torch", "import_nvdiffrast", "cuda_init", "context", "rasterize", "interpolate", "texture"]
    assert run.result["covered_pixels"] == 32 * 32
    assert run.result["interpolate_max_error"] < 1e-4 and run.result["texture_max_error"] == 0


def test_smoke_child_detects_wrong_results(fake_nvdiffrast, tmp_path):
    pp = fake_nvdiffrast("0.4.0")
    env = _env_with(pp, FAKE_NVDR_FLIP="1")
    run = smoke.run_child([sys.executable, str(smoke.CHILD), "--device", "cpu"], 120, env)
    assert run.outcome == "wrong" and run.returncode == 3
    assert any("interpolate" in e for e in run.result["errors"])
    report = doctor.run_checks(data_dir=str(tmp_path), env=env, smoke_cmd=[sys.executable, str(smoke.CHILD), "--device", "cpu"])
    s = by_id(report)["smoke"]
    assert s["status"] == "fail" and "wrong results" in s["detail"] and "TORCH_CUDA_ARCH_LIST" in s["fix"]


# ---------------------------------------------------------------------------------------------
# nvdiffrast: version, extension load (real subprocess runs of `python -m engine doctor`)
# ---------------------------------------------------------------------------------------------


def run_doctor(*args, env=None, timeout=300):
    r = subprocess.run([sys.executable, "-m", "engine", "doctor", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT))
    return r


@pytest.mark.skipif(_cuda_available(), reason="fake nvdiffrast is for GPU-less machines")
def test_old_nvdiffrast_warns_and_a_crashing_extension_fails(fake_nvdiffrast, tmp_path):
    pp = fake_nvdiffrast("0.3.2", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    env = _env_with(pp, TORCH_EXTENSIONS_DIR=str(tmp_path / "text"))
    r = run_doctor("--json", "--data-dir", str(tmp_path), env=env)
    report = json.loads(r.stdout)
    ch = by_id(report)
    assert ch["nvdiffrast"]["status"] == "warn" and "0.3.2 JIT-builds" in ch["nvdiffrast"]["detail"]
    jit = str(tmp_path / "text" / "nvdiffrast_plugin")
    assert jit in ch["nvdiffrast"]["detail"] and f"rm -rf {jit}" in ch["nvdiffrast"]["fix"]
    assert "TORCH_CUDA_ARCH_LIST" in ch["nvdiffrast"]["fix"]
    assert ch["nvdiffrast_ext"]["status"] == "fail" and "SIGSEGV" in ch["nvdiffrast_ext"]["detail"]
    assert r.returncode == 2 and report["status"] == "fail"


@pytest.mark.skipif(_cuda_available(), reason="fake nvdiffrast is for GPU-less machines")
def test_extension_built_against_another_torch(fake_nvdiffrast, tmp_path, monkeypatch):
    pp = fake_nvdiffrast("0.4.0", "raise ImportError('/x/_nvdiffrast_c.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n")
    monkeypatch.syspath_prepend(str(pp))  # the parent finds the package, the child imports it
    try:
        report = doctor.run_checks(data_dir=str(tmp_path), env=_env_with(pp))
    finally:
        sys.modules.pop("nvdiffrast", None)
    assert by_id(report)["nvdiffrast"]["status"] == "ok" and "0.4.0" in by_id(report)["nvdiffrast"]["detail"]
    ext = by_id(report)["nvdiffrast_ext"]
    assert ext["status"] == "fail" and "undefined symbol" in ext["detail"] and "another torch" in ext["fix"]


def test_nvdiffrast_missing_with_gpu_is_a_warning():
    c = C.check_nvdiffrast({"installed": False}, torch_info(cuda_available=True, gpus=[GPU]))
    assert c.status == "warn" and "CPU backend" in c.detail and "--no-build-isolation" in c.fix
    assert C.check_nvdiffrast({"installed": False}, torch_info()).status == "ok"
    c = C.check_nvdiffrast({"installed": True, "version": "0.3.3", "jit_dir": "/c/nvdiffrast_plugin", "lock_file": "/c/nvdiffrast_plugin/lock"}, torch_info(cuda_available=True, gpus=[GPU]))
    assert c.status == "warn" and "lock file" in c.detail and "TORCH_CUDA_ARCH_LIST='8.6'" in c.fix


# ---------------------------------------------------------------------------------------------
# Python environment, conda run
# ---------------------------------------------------------------------------------------------


def test_conda_run_signs_detected(tmp_path):
    prefix = tmp_path / "envs" / "kiln"
    (prefix / "bin").mkdir(parents=True)
    c = C.check_conda_run({"CONDA_PREFIX": str(prefix), "CONDA_DEFAULT_ENV": "kiln", "PATH": "/usr/bin:/bin"})
    assert c.status == "warn" and "conda run" in c.detail and f"{prefix}/bin is not on PATH" in c.detail
    assert "conda activate kiln" in c.fix
    ok = C.check_conda_run({"CONDA_PREFIX": str(prefix), "PATH": f"{prefix}/bin:/usr/bin"})
    assert ok.status == "ok"
    assert C.check_conda_run({"PATH": "/usr/bin"}).status == "ok"


def test_python_env_mismatches(tmp_path):
    c = C.check_python_env({"VIRTUAL_ENV": str(tmp_path / "other-venv")})
    assert c.status == "warn" and "other-venv" in c.detail
    assert C.check_python_env({}).status == "ok"
    assert C.check_python().status == "ok"


# ---------------------------------------------------------------------------------------------
# Dependencies, disk
# ---------------------------------------------------------------------------------------------


def test_dependency_checks():
    for cid, module, dist, without in C.DEPENDENCIES:
        c = C.check_module(cid, module, dist, without)
        assert c.status == "ok", c.detail
    missing = C.check_module("xatlas", "kiln_no_such_module_xyz", "kiln-no-such-dist")
    assert missing.status == "fail" and missing.fix == "pip install kiln-no-such-dist"
    # an optional accelerator (meshoptimizer): missing is a warning that says what is lost
    (_, _, dist, without), = [d for d in C.DEPENDENCIES if d[0] == "meshoptimizer"]
    soft = C.check_module("meshoptimizer", "kiln_no_such_module_xyz", dist, without)
    assert soft.status == "warn" and soft.fix.startswith("pip install meshoptimizer") and "fast-simplification alone" in soft.detail


Usage = namedtuple("Usage", "total used free")


def test_disk_thresholds(tmp_path):
    def usage(free):
        return lambda p: Usage(100 * 10**9, 100 * 10**9 - free, free)

    assert C.check_disk(str(tmp_path), usage(50 * 10**9)).status == "ok"
    w = C.check_disk(str(tmp_path), usage(4 * 10**9))
    assert w.status == "warn" and "under 5 GB" in w.detail
    f = C.check_disk(str(tmp_path), usage(400 * 10**6))
    assert f.status == "fail" and "under 500 MB" in f.detail and "--data-dir" in f.fix
    real = C.check_disk(str(tmp_path / "not" / "yet"))
    assert "does not exist yet" in real.detail and real.status in ("ok", "warn", "fail")


# ---------------------------------------------------------------------------------------------
# --json schema and CLI exit codes (real subprocess runs)
# ---------------------------------------------------------------------------------------------

TOP_KEYS = {"schema", "kiln_version", "status", "checks"}
CHECK_KEYS = {"id", "name", "status", "detail", "fix"}
IDS = [
    "python", "python_env", "conda_run", "torch", "cuda", "torch_arch", "nvdiffrast", "nvdiffrast_ext",
    "nvdiffrast_arch", "nvcc", "smoke", "xatlas", "fast_simplification", "meshoptimizer", "embreex", "trimesh", "disk",
]


def assert_schema(report: dict) -> None:
    assert set(report) == TOP_KEYS
    assert report["schema"] == 2 and report["kiln_version"] == engine.__version__
    assert [c["id"] for c in report["checks"]] == IDS
    for c in report["checks"]:
        assert set(c) == CHECK_KEYS
        assert c["status"] in ("ok", "warn", "fail")
        assert isinstance(c["name"], str) and isinstance(c["detail"], str) and c["detail"]
        assert (c["fix"] is None) == (c["status"] == "ok"), c
    worst = max((c["status"] for c in report["checks"]), key=["ok", "warn", "fail"].index)
    assert report["status"] == worst


def test_json_schema_is_stable(tmp_path, kiln_env):
    kiln_env.pop(smoke.CMD_ENV, None)
    r = run_doctor("--json", "--data-dir", str(tmp_path), env=kiln_env)
    report = json.loads(r.stdout)  # stdout holds the JSON and nothing else
    assert_schema(report)
    assert doctor.CHECK_IDS == tuple(IDS)
    assert r.returncode == {"ok": 0, "warn": 1, "fail": 2}[report["status"]]
    if not _cuda_available():
        assert r.returncode == 1, r.stdout  # CPU-only: warnings, not failures


def test_cli_exit_code_2_on_crash_and_text_output(tmp_path, kiln_env):
    kiln_env[smoke.CMD_ENV] = f"{sys.executable} -c \"{CRASH}\""
    r = run_doctor("--data-dir", str(tmp_path), env=kiln_env)
    assert r.returncode == 2
    assert "[FAIL] GPU smoke test:" in r.stdout and "SIGSEGV" in r.stdout and "       fix: " in r.stdout
    assert r.stdout.rstrip().endswith("exit code 2")
    assert "running the GPU smoke test in a child process" in r.stderr


def test_exit_code_mapping_and_run(monkeypatch, capsys):
    for status, code in (("ok", 0), ("warn", 1), ("fail", 2)):
        fake = {"schema": 1, "kiln_version": engine.__version__, "status": status, "checks": []}
        monkeypatch.setattr(doctor, "run_checks", lambda **kw: fake)
        args = doctor.argparse.Namespace(json=True, data_dir=None, smoke_timeout=5.0, no_smoke=True)
        assert doctor.run(args) == code
        assert json.loads(capsys.readouterr().out)["status"] == status


def test_bad_smoke_timeout_is_rejected(kiln_env):
    r = run_doctor("--smoke-timeout", "0", env=kiln_env, timeout=60)
    assert r.returncode == 2 and "--smoke-timeout" in r.stderr


# ---------------------------------------------------------------------------------------------
# On a GPU machine with nvdiffrast (run by the lead on the device)
# ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_real_gpu_smoke_passes(tmp_path):
    report = doctor.run_checks(data_dir=str(tmp_path), smoke_timeout=600, env={k: v for k, v in os.environ.items() if k != smoke.CMD_ENV})
    ch = by_id(report)
    print(doctor.format_text(report))
    assert ch["cuda"]["status"] == "ok"
    assert ch["smoke"]["status"] == "ok", ch["smoke"]
    assert ch["nvdiffrast_ext"]["status"] == "ok", ch["nvdiffrast_ext"]
    assert ch["nvdiffrast_arch"]["status"] != "fail", ch["nvdiffrast_arch"]
    assert ch["torch_arch"]["status"] == "ok", ch["torch_arch"]
