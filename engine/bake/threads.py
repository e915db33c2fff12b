"""Torch's intra-op threads on the CPU bake's many mid-sized ops.

Each parallel torch op ends in a barrier of its OpenMP team; when another
process keeps a core busy (a shared 2-core machine, other bakes, a test run),
every barrier waits for a descheduled thread, and code made of thousands of
such ops (the fit's banded stencil: ~2,500 per channel) slowed down 20x in a
measured run (a 1024^2 channel fit 0.6 s -> 24 s). Work that is split into
large independent pieces (Embree ray batches in engine.bake.cpu, bands of
texture rows in the fit: ``run_split``) runs on all cores instead, a few
barriers per pass rather than one per op; the torch ops around it run on one
thread, which degrades gracefully under load.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch


@contextmanager
def single_thread(device="cpu"):
    """Run the block's torch ops on one intra-op thread when ``device`` is the CPU (restored afterwards).

    Yields the intra-op threads there were (the block may split its work over that many Python threads)."""
    old = torch.get_num_threads()
    if torch.device(device).type != "cpu" or old <= 1:
        yield old
        return
    torch.set_num_threads(1)
    try:
        yield old
    finally:
        torch.set_num_threads(old)


_POOL = None
_BACKGROUND = None


def _after_fork() -> None:  # a forked child has none of the parent's pool threads
    global _POOL, _BACKGROUND
    _POOL = _BACKGROUND = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def run_split(fn, items: list, parts: int) -> list:
    """fn(group) for ``parts`` contiguous groups of ``items``, on Python threads (torch releases the GIL in
    its kernels); one group runs inline. -> the results, in order."""
    parts = max(1, min(int(parts), len(items)))
    if parts == 1:
        return [fn(items)]
    global _POOL
    if _POOL is None or _POOL._max_workers < parts:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max(parts, 2), thread_name_prefix="kiln-split")
    k, m = divmod(len(items), parts)
    bounds = [i * k + min(i, m) for i in range(parts + 1)]
    return list(_POOL.map(fn, [items[bounds[i] : bounds[i + 1]] for i in range(parts)]))


def background():
    """The one-thread executor of work given a head start while the pipeline is busy elsewhere (a
    backend's ``prepare``: the CPU's ray scene, the CUDA bake views); one thread, so two bakes' head
    starts take turns instead of competing with the stages they overlap."""
    global _BACKGROUND
    if _BACKGROUND is None:
        from concurrent.futures import ThreadPoolExecutor

        _BACKGROUND = ThreadPoolExecutor(1, thread_name_prefix="kiln-prepare")
    return _BACKGROUND
