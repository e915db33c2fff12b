"""`kiln` command line. Subcommands are loaded lazily so `kiln --help` and
`kiln serve` never import torch.

Exit codes: 0 ok, 1 internal error, 2 bad input (one line naming the problem),
3 backend unavailable, 130 cancelled/interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine import __version__

# name -> (module, help). Each module defines add_arguments(parser) and run(args) -> int.
SUBCOMMANDS = {
    "bake": ("engine.pipeline.cli", "bake a mesh (GLB/glTF/OBJ/PLY) or splat PLY into a low-poly textured GLB"),
    "reconstruct": ("engine.reconstruct.cli", "single image (+ mask) -> textured 3D object GLB"),
    "batch": ("engine.batch.cli", "bake every model of a folder or a manifest, on this machine or on a Ray cluster"),
    "serve": ("engine.service.cli", "run the engine service (HTTP jobs API, supervised GPU workers)"),
    "doctor": ("engine.doctor", "diagnose the engine's environment (CUDA, nvcc, nvdiffrast, ...)"),
    "demo": ("engine.demo", "bake the bundled sample on the CPU and write a GLB + preview PNG"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description="Kiln engine: low-poly, UV-unwrapped, texture-baked assets.")
    p.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if only is None or only == name:
            try:
                module = importlib.import_module(mod)
            except ModuleNotFoundError as e:
                if e.name and mod.startswith(e.name):
                    sp.set_defaults(_missing=mod)
                    continue
                raise
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"kiln: error: `{args.command}` is not available in this build", file=sys.stderr)
        return 1
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
