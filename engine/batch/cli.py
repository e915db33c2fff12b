"""`kiln batch INPUT -o OUTDIR`: bake every asset of a folder or a manifest, locally or on a Ray cluster.

Writes ``OUTDIR/<name>.glb`` per asset, ``OUTDIR/summary.json`` and ``OUTDIR/summary.csv``.
A rerun skips assets whose output is up to date (``--force`` redoes them). One bad asset never
stops the rest. Exit 0: every asset succeeded (or was up to date); 1: some failed; 2: bad
command line (input, manifest, options); 3: the executor cannot run (Ray missing or
unreachable); 130: interrupted (the summary still lists what finished).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.errors import KilnError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from engine.pipeline.cli import add_bake_arguments
    from engine.service.executors import EXECUTORS

    p.add_argument("input", help="a folder of models (searched recursively) or a manifest (.csv, .jsonl, .json)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder: <name>.glb per asset, summary.json, summary.csv")
    p.add_argument("--executor", choices=list(EXECUTORS), default="local",
                   help="where the bakes run: " + "; ".join(f"{k.name} = {k.help}" for k in EXECUTORS.values()) + " (default local)")
    p.add_argument("--ray-address", metavar="HOST:PORT|auto", default=None,
                   help="Ray cluster to use (auto: $RAY_ADDRESS or the cluster started on this machine); default: a private Ray instance for this run")
    p.add_argument("--jobs", "-j", type=int, default=None,
                   help="assets baked at once: worker processes (local) or actors (ray); default one per GPU, else one per 4 CPU cores (local) or per cluster CPU (ray)")
    p.add_argument("--retries", type=int, default=1, help="ray: runs again an asset whose worker process crashed, at most this many times (default 1)")
    p.add_argument("--target-suffix", default="_low",
                   help="folder input: NAME<suffix>.EXT beside NAME.EXT is NAME's own low-poly target (default _low; '' turns it off)")
    p.add_argument("--force", action="store_true", help="bake every asset again, even when its output is up to date")
    p.add_argument("--job-timeout", type=float, default=0.0, help="seconds one asset may run before its worker is killed (default 0: no limit)")
    p.add_argument("--inject-fault", action="append", default=[], metavar="NAME=KIND@STAGE", help=argparse.SUPPRESS)  # tests only
    add_bake_arguments(p)


def _fail(message: str, hint: str | None = None, code: int = 2) -> int:
    print(f"kiln: error: {message}" + (f" (hint: {hint})" if hint else ""), file=sys.stderr)
    return code


def _log_to_stderr() -> None:
    """The workers' supervisors log restarts and crashes (logger 'kiln'): one plain line each on stderr."""
    import logging

    logger = logging.getLogger("kiln")
    if not logger.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("kiln batch: %(message)s"))
        logger.addHandler(h)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _faults(specs: list[str]) -> dict[str, str]:
    from engine.service.worker import FAULT_KINDS

    out = {}
    for spec in specs:
        name, _, fault = spec.partition("=")
        kind, _, stage = fault.partition("@")
        if not name or kind not in FAULT_KINDS or not stage:
            raise KilnError(f"--inject-fault {spec!r} must be NAME=KIND@STAGE with KIND one of {', '.join(FAULT_KINDS)}", code="bad_option")
        out[name] = fault
    return out


def run(args) -> int:
    from engine.batch import inputs as I
    from engine.batch import resume
    from engine.batch.progress import BatchProgress
    from engine.batch.runner import RunSettings, run_assets
    from engine.batch.summary import AssetResult, AssetStatus, write_summary
    from engine.pipeline.cli import options_from_args

    _log_to_stderr()
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        return _fail(f"--jobs {args.jobs} must be in 1..256")
    if not 0 <= args.retries <= 10:
        return _fail(f"--retries {args.retries} must be in 0..10")
    if args.job_timeout < 0:
        return _fail("--job-timeout must be >= 0")
    if args.ray_address and args.executor != "ray":
        return _fail("--ray-address needs --executor ray")
    outdir = Path(args.output).expanduser().resolve()
    try:
        base = options_from_args(args).to_dict()
        faults = _faults(args.inject_fault)
        if outdir.exists() and not outdir.is_dir():
            return _fail(f"output '{outdir}' is a file, not a folder", "give -o a folder name")
        outdir.mkdir(parents=True, exist_ok=True)
        assets = I.collect(Path(args.input).expanduser(), base, target_suffix=args.target_suffix, exclude=(outdir,))
    except KilnError as e:
        return _fail(e.message, e.hint, 2)
    except OSError as e:
        return _fail(f"cannot use the output folder {outdir}: {e.strerror or e}", "choose a writable -o folder")
    for a in assets:
        a.fault = faults.get(a.name) or faults.get(a.source.name)

    t0 = time.monotonic()
    started_at = time.time()
    display = BatchProgress(len(assets), quiet=args.quiet)
    results: list[AssetResult] = []
    to_run = []
    for a in assets:
        common = dict(name=a.name, source=str(a.source), target=str(a.target) if a.target else None, output=str(a.output_path(outdir)))
        if a.error is not None:
            r = AssetResult(status=AssetStatus.FAILED, error=dict(a.error), attempts=0, **common)
        elif not args.force and resume.up_to_date(outdir, a):
            r = AssetResult(status=AssetStatus.SKIPPED, **common)
        else:
            to_run.append(a)
            continue
        results.append(r)
        display.finished(r)

    info: dict = {}
    settings = RunSettings(executor=args.executor, jobs=args.jobs, ray_address=args.ray_address, retries=args.retries,
                           job_timeout=args.job_timeout or None, device=args.device)
    rc_interrupt = None
    if to_run:
        try:
            ran, info = run_assets(outdir, to_run, settings, display)
            results += ran
            if info.get("interrupted"):
                rc_interrupt = 130
                print("kiln: interrupted; the summary lists what finished", file=sys.stderr)
        except KilnError as e:
            display.close()
            return _fail(e.message, e.hint, e.exit_code if e.exit_code in (2, 3) else 1)
    display.close()
    order = {a.name: i for i, a in enumerate(assets)}
    results.sort(key=lambda r: order.get(r.name, len(order)))
    extra = {"input": str(Path(args.input).expanduser().resolve()), "output_dir": str(outdir), "options": base}
    if args.executor == "ray":
        extra["ray_address"] = args.ray_address
    extra["workers"] = info.get("workers")
    extra["slots"] = info.get("slots")
    summary = write_summary(outdir, args.executor, results, started_at, time.monotonic() - t0, extra)
    t = summary["totals"]
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    if not args.quiet:
        print(f"kiln batch: {t['succeeded']} succeeded, {t['failed']} failed, {t['skipped']} skipped of {t['assets']} "
              f"in {t['wall_seconds']:.1f} s ({t['assets_per_minute']} assets/min, executor {args.executor}); "
              f"summary: {outdir / 'summary.json'}", file=sys.stderr)
    if rc_interrupt:
        return rc_interrupt
    return 1 if t["failed"] else 0
