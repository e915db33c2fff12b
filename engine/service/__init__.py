"""The engine service: `kiln serve`, jobs over HTTP run by supervised worker processes.

Process model (see docs/service.md):
  * The HTTP process (FastAPI on uvicorn) never imports torch or nvdiffrast and
    never touches CUDA. It parses uploads, keeps the job table and the queue.
  * Jobs run in worker child processes started with the multiprocessing
    *spawn* context (never fork), one per GPU by default. A worker does all of
    its GPU work on one thread, with its own CUDA context.
  * A supervisor thread per worker watches it: a worker that dies (signal,
    OOM kill, fatal error, timeout, cancel that does not stop) fails only the
    job it was running; a fresh worker is started and the queue goes on.

Nothing in this package may import torch at module level: ``engine.service.worker``
imports the pipeline inside ``worker_main`` only.
"""

from engine import API_VERSION, __version__  # noqa: F401
