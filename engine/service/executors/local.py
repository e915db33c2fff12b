"""The ``local`` executor: supervised worker processes on this machine.

One ``WorkerSlot`` per worker (``config.workers``), spread round robin over ``config.gpus``
(each worker pinned to its GPU); no GPU = CPU workers. The slot and the worker are the
service's (``engine.service.supervisor.WorkerSlot``, ``engine.service.worker``): spawn-started,
typed JSON messages, a crashed worker fails its job alone and is replaced.
"""

from __future__ import annotations


def make_slots(queue, config) -> list:
    from engine.service.supervisor import WorkerSlot

    gpus = list(config.gpus)
    return [WorkerSlot(queue, i, gpus[i % len(gpus)] if gpus else None) for i in range(max(1, config.workers))]
