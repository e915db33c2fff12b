"""Progress reporting and cooperative cancellation for long work.

A ``Progress`` maps a stage's local fraction (0..1) onto the overall 0..1 of a
job using per-stage weights, calls the user's callback ``cb(stage, fraction,
message)`` and checks ``cancel()`` at every update, raising CancelledError.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from engine.errors import CancelledError

ProgressCallback = Callable[[str, float, str], None]
CancelCheck = Callable[[], bool]


class Progress:
    def __init__(
        self,
        stages: dict[str, float],
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCheck] = None,
    ):
        total = float(sum(stages.values())) or 1.0
        self._weights = {k: v / total for k, v in stages.items()}
        self._offsets = {}
        acc = 0.0
        for k, w in self._weights.items():
            self._offsets[k] = acc
            acc += w
        self._cb = callback
        self._cancel = cancel
        self.stage = None
        self.timings: dict[str, float] = {}
        self._t0 = None

    def check_cancel(self) -> None:
        if self._cancel is not None and self._cancel():
            raise CancelledError(f"cancelled during {self.stage or 'start'}")

    def begin(self, stage: str, message: str = "") -> None:
        self._close()
        self.stage = stage
        self._t0 = time.perf_counter()
        self.update(0.0, message)

    def update(self, fraction: float, message: str = "") -> None:
        self.check_cancel()
        if self._cb is None or self.stage is None:
            return
        f = min(max(float(fraction), 0.0), 1.0)
        w = self._weights.get(self.stage, 0.0)
        overall = self._offsets.get(self.stage, 0.0) + w * f
        self._cb(self.stage, min(overall, 1.0), message)

    def _close(self) -> None:
        if self.stage is not None and self._t0 is not None:
            self.timings[self.stage] = self.timings.get(self.stage, 0.0) + (time.perf_counter() - self._t0)
            self._t0 = None

    def end(self, stage: str | None = None) -> None:
        if stage is not None and stage != self.stage:
            return
        self.update(1.0)
        self._close()

    def finish(self) -> dict[str, float]:
        self._close()
        if self._cb is not None:
            self._cb("done", 1.0, "")
        return dict(self.timings)
