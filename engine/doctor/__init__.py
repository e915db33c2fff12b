"""`kiln doctor`: diagnose the engine's environment before it crashes.

    kiln doctor [--json] [--data-dir D] [--smoke-timeout S] [--no-smoke]

Every check ends ok / warn / fail with a one-line detail and a fix. Exit code:
0 all ok, 1 warnings, 2 a failure. Anything that loads CUDA code (nvdiffrast's
extension, the GPU smoke test) runs in a child process with a timeout, so a
segfault there is reported (with the signal's name), not suffered.

Library use (the service's GET /v1/doctor and the add-on's "Check engine"):

    from engine.doctor import run_checks, exit_code, format_text
    report = run_checks(data_dir=None, smoke=True, smoke_timeout=60)
    report == {"schema": 2, "kiln_version": "...", "status": "ok|warn|fail",
               "checks": [{"id", "name", "status", "detail", "fix"}, ...]}
"""

from __future__ import annotations

import argparse
import json
import shlex
import os
import sys
from typing import Callable, Mapping, Optional, Sequence

from engine import __version__

SCHEMA_VERSION = 2  # 2: the meshoptimizer check
EXIT_CODES = {"ok": 0, "warn": 1, "fail": 2}

__all__ = ["run_checks", "exit_code", "format_text", "add_arguments", "run", "SCHEMA_VERSION", "CHECK_IDS"]


def _checks():
    from engine.doctor import checks

    return checks


CHECK_IDS: tuple[str, ...] = tuple(_checks().CHECKS)


def run_checks(
    data_dir: Optional[str] = None,
    smoke: bool = True,
    smoke_timeout: float = 60.0,
    *,
    env: Optional[Mapping[str, str]] = None,
    smoke_cmd: Optional[Sequence[str]] = None,
    torch_info: Optional[dict] = None,
    progress: Optional[Callable[[str, float, str], None]] = None,
) -> dict:
    """Run every check and return the report dict (schema 1, see docs/doctor.md).

    ``env`` replaces os.environ for what the checks inspect (and the children get);
    ``smoke_cmd`` replaces the GPU smoke child (tests; so does env KILN_DOCTOR_SMOKE_CMD)
    and makes the smoke test run even without a GPU; ``torch_info`` replaces what is
    collected from torch (tests); ``progress(stage, fraction, message)`` is told
    before each step.
    """
    from engine.doctor import smoke as smoke_mod

    c = _checks()
    env = dict(os.environ) if env is None else dict(env)
    results: dict[str, "c.Check"] = {}
    steps = 8
    done = [0]

    def step(name: str, message: str) -> None:
        if progress is not None:
            progress(name, done[0] / steps, message)
        done[0] += 1

    def guarded(check_id: str, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - a broken check must not hide the others
            return c.Check(check_id, c.FAIL, f"the check itself failed: {e.__class__.__name__}: {e}", "report this as a kiln bug (with `kiln doctor --json` output)")

    def put(check) -> None:
        results[check.id] = check

    step("python", "checking Python and its environment")
    put(guarded("python", c.check_python))
    put(guarded("python_env", c.check_python_env, env))
    put(guarded("conda_run", c.check_conda_run, env))

    step("torch", "checking torch, CUDA and the GPUs")
    ti = torch_info
    if ti is None:
        try:
            ti = c.collect_torch_info(env)
        except Exception as e:  # noqa: BLE001
            ti = {"imported": False, "error": f"{e.__class__.__name__}: {e}"}
    put(guarded("torch", c.check_torch, ti))
    put(guarded("cuda", c.check_cuda, ti, env))
    put(guarded("torch_arch", c.check_torch_arch, ti))

    step("nvdiffrast", "checking nvdiffrast")
    try:
        nv = c.nvdiffrast_info(ti)
    except Exception as e:  # noqa: BLE001
        nv = {"installed": False, "error": str(e)}
    put(guarded("nvdiffrast", c.check_nvdiffrast, nv, ti))

    step("nvcc", "checking nvcc and CUDA_HOME")
    put(guarded("nvcc", c.check_nvcc, ti.get("cuda"), env, nv.get("version") if nv.get("installed") else None))

    # Child processes: the full GPU smoke test when it can run, else an import-only probe.
    custom = list(smoke_cmd) if smoke_cmd else None
    if custom is None and env.get(smoke_mod.CMD_ENV, "").strip():
        custom, _ = smoke_mod.child_command(env=env)
    gpu = bool(ti.get("cuda_available"))
    full_run = probe_run = None
    if smoke and (custom or (gpu and nv.get("installed"))):
        cmd = custom or smoke_mod.child_command(env={})[0]
        step("smoke", f"running the GPU smoke test in a child process (timeout {smoke_timeout:g} s)")
        full_run = smoke_mod.run_child(cmd, smoke_timeout, env)
    elif nv.get("installed"):
        step("probe", f"importing nvdiffrast.torch in a child process (timeout {smoke_timeout:g} s)")
        probe_run = smoke_mod.run_child(smoke_mod.child_command(import_only=True, env={})[0], smoke_timeout, env)
    else:
        step("no_child", "no child process needed")

    put(guarded("nvdiffrast_ext", c.check_nvdiffrast_ext, nv, full_run or probe_run, full_run is not None))
    put(guarded("nvdiffrast_arch", c.check_nvdiffrast_arch, nv, full_run or probe_run, ti, env))
    put(guarded("smoke", _smoke_check, c, full_run, smoke, smoke_timeout, gpu, nv, ti, custom is not None))

    step("dependencies", "checking " + ", ".join(d[2] for d in c.DEPENDENCIES))
    for cid, module, dist, without in c.DEPENDENCIES:
        put(guarded(cid, c.check_module, cid, module, dist, without))

    step("disk", "checking disk space")
    put(guarded("disk", c.check_disk, data_dir or c.default_data_dir(env)))
    step("done", "done")

    ordered = [results[i].to_dict() for i in c.CHECKS if i in results]
    statuses = {ch["status"] for ch in ordered}
    status = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"
    return {"schema": SCHEMA_VERSION, "kiln_version": __version__, "status": status, "checks": ordered}


def _smoke_check(c, run, smoke: bool, timeout: float, gpu: bool, nv: Mapping, ti: Mapping, custom: bool):
    if not smoke:
        return c.Check("smoke", c.OK, "skipped (--no-smoke)")
    if run is None:
        if not gpu:
            return c.Check("smoke", c.WARN, "skipped: no CUDA GPU, the CPU backend is used", "nothing to do for CPU baking; for GPU baking fix the cuda check")
        return c.Check("smoke", c.WARN, "skipped: nvdiffrast is not installed, the CPU backend is used", "install nvdiffrast (see the nvdiffrast check)")
    what = "custom smoke command" if custom else "GPU smoke test (rasterize + interpolate + texture, child process)"
    if run.outcome == "ok":
        dev = run.result.get("device")
        return c.Check("smoke", c.OK, f"{what} passed" + (f" on {dev}" if dev else "") + f" in {run.seconds:.1f} s")
    jit_dir = nv.get("jit_dir")
    old = (c._version_tuple(nv.get("version")) or (9,)) < (0, 4)
    detail = f"{what} {run.describe()}"
    rerun = f"to see the whole output run: {shlex.join(run.cmd)}"
    if run.outcome == "signal":
        if run.signal_name in ("SIGKILL",):
            fix = "the child was killed (out of memory? see `dmesg`); close other GPU jobs and rerun"
        else:
            fix = (
                "a crash in CUDA code usually means a mismatched build: fix the nvcc / torch_arch / nvdiffrast_arch checks, "
                f"then rebuild nvdiffrast: {c.NVDIFFRAST_PIP}" + (f" (and rm -rf {jit_dir})" if old and jit_dir else "")
            )
        return c.Check("smoke", c.FAIL, detail, fix)
    if run.outcome == "timeout":
        if run.last_stage == "context" and old:
            fix = f"nvdiffrast {nv.get('version')} JIT-compiles on first use: rerun with --smoke-timeout 900; if it still hangs, remove a stale lock: rm -rf {jit_dir}"
        else:
            fix = f"rerun with a longer --smoke-timeout (now {timeout:g} s); if it still hangs, check `nvidia-smi` for a stuck GPU or process; {rerun}"
        return c.Check("smoke", c.FAIL, detail, fix)
    if run.outcome == "wrong":
        return c.Check("smoke", c.FAIL, detail, f"nvdiffrast computes wrong values on this GPU: rebuild it for it: TORCH_CUDA_ARCH_LIST='{c._arch_env(ti)}' {c.NVDIFFRAST_PIP}")
    return c.Check("smoke", c.FAIL, detail, rerun)


def exit_code(report: Mapping) -> int:
    return EXIT_CODES.get(report.get("status"), 2)


def format_text(report: Mapping) -> str:
    """Human-readable report: one line per check, its fix indented under it."""
    marks = {"ok": " ok ", "warn": "WARN", "fail": "FAIL"}
    lines = [f"kiln doctor (kiln {report.get('kiln_version')})"]
    for ch in report.get("checks", []):
        lines.append(f"[{marks.get(ch['status'], ch['status'])}] {ch['name']}: {ch['detail']}")
        if ch.get("fix") and ch["status"] != "ok":
            fix_lines = str(ch["fix"]).splitlines()
            lines.append(f"       fix: {fix_lines[0]}")
            lines.extend(f"            {fl}" for fl in fix_lines[1:])
    n_warn = sum(ch["status"] == "warn" for ch in report.get("checks", []))
    n_fail = sum(ch["status"] == "fail" for ch in report.get("checks", []))
    lines.append(f"status: {report.get('status')} ({n_fail} failure(s), {n_warn} warning(s)); exit code {exit_code(report)}")
    return "\n".join(lines)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON (schema 1, see docs/doctor.md)")
    parser.add_argument("--data-dir", metavar="D", default=None, help="data folder whose free disk space is checked (default: $KILN_DATA_DIR or ~/.local/share/kiln)")
    parser.add_argument("--smoke-timeout", metavar="S", type=_positive_float, default=60.0, help="seconds the GPU smoke test child may take (default 60)")
    parser.add_argument("--no-smoke", action="store_true", help="skip the GPU smoke test")


def run(args: argparse.Namespace) -> int:
    def progress(stage: str, fraction: float, message: str) -> None:
        if stage in ("smoke", "probe"):
            print(f"kiln doctor: {message}", file=sys.stderr, flush=True)

    report = run_checks(data_dir=args.data_dir, smoke=not args.no_smoke, smoke_timeout=args.smoke_timeout, progress=progress)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_text(report))
    return exit_code(report)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="kiln doctor", description="diagnose the engine's environment")
    add_arguments(p)
    return run(p.parse_args(argv))
