"""Executors: where jobs run. A registry, so ``kiln serve`` and ``kiln batch`` share one seam.

    local   supervised worker processes on this machine (spawn, one per GPU or --workers/--jobs),
            crash isolation: a crashed worker fails its one job and is replaced
    ray     one long-lived actor per GPU (or per CPU slot) of a Ray cluster; inputs and results
            travel as bytes through Ray's object store, a crashed actor fails (or retries) its job

Every executor makes ``Slot`` s (see ``base``) that pull jobs from a ``JobQueue`` and run the
same engine function: the service worker's job runner (``engine.service.worker``) around
``engine.pipeline.bake`` / ``reconstruct``. Modules are imported only when their executor is
used (``ray`` is an optional dependency: ``pip install "kiln-engine[ray]"``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from engine.errors import KilnError


@dataclass(frozen=True)
class ExecutorKind:
    name: str
    module: str
    help: str
    requires: str | None = None
    """The pip extra that provides its dependency, for the error when it is missing."""


EXECUTORS: dict[str, ExecutorKind] = {
    k.name: k
    for k in (
        ExecutorKind("local", "engine.service.executors.local", "worker processes on this machine (one per GPU, else --workers/--jobs)"),
        ExecutorKind("ray", "engine.service.executors.ray", "a Ray cluster: one actor per GPU (or CPU slot)", requires="ray"),
    )
}


class ExecutorUnavailable(KilnError):
    """The executor cannot run here: its package is missing, or its cluster cannot be reached (exit 3, like a missing backend)."""

    code = "executor_unavailable"
    exit_code = 3


def names() -> list[str]:
    return list(EXECUTORS)


def load(name: str):
    """The executor module of ``name`` (with ``make_slots(queue, config)``); ExecutorUnavailable when it cannot run here."""
    kind = EXECUTORS.get(name)
    if kind is None:
        raise ExecutorUnavailable(f"unknown executor {name!r}", hint=f"choose one of: {', '.join(EXECUTORS)}")
    try:
        return importlib.import_module(kind.module)
    except ModuleNotFoundError as e:
        if kind.requires and e.name and e.name.split(".")[0] == kind.requires:
            raise ExecutorUnavailable(
                f"the {name} executor needs the '{kind.requires}' package, which is not installed",
                hint=f'pip install "kiln-engine[{kind.requires}]"',
            ) from None
        raise


def make_slots(name: str, queue, config) -> list:
    """The slots of executor ``name`` for ``queue`` (not started: the caller starts their threads)."""
    return load(name).make_slots(queue, config)
