"""Torch's intra-op threads on the CPU bake's many mid-sized ops.

Each parallel torch op ends in a barrier of its OpenMP team; when another
process keeps a core busy (a shared 2-core machine, other bakes, a test run),
every barrier waits for a descheduled thread, and code made of thousands of
such ops (the fit's banded stencil: ~2,500 per channel) slowed down 20x in a
measured run (a 1024^2 channel fit 0.6 s -> 24 s). Work that is split into
large independent pieces (Embree ray batches in engine.bake.cpu) runs on all
cores instead; the torch ops around it run on one thread, which degrades
gracefully under load.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def single_thread(device="cpu"):
    """Run the block's torch ops on one intra-op thread when ``device`` is the CPU (restored afterwards)."""
    if torch.device(device).type != "cpu" or torch.get_num_threads() <= 1:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
