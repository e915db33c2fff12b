"""Progress of a batch: one overall bar (assets done / total, ETA) and the assets running now.

On a terminal the bar line is redrawn in place and every finished asset prints one line above
it; otherwise (a log file, CI) only plain lines are written: one per started and per finished
asset, and a progress line every ~10 % of the batch.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import Optional

from engine.batch.summary import AssetResult, AssetStatus


def _fmt_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "--:--"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class BatchProgress:
    def __init__(self, total: int, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = total
        self.done = 0
        self.ran = 0  # finished assets that ran (not skipped): the rate for the ETA
        self.running: dict[str, tuple[str, float]] = {}  # name -> (stage, fraction)
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self._last_tenth = -1
        self._last_draw = 0.0

    # -- events -----------------------------------------------------------------------------------
    def started(self, name: str, where: str = "") -> None:
        with self.lock:
            self.running[name] = ("start", 0.0)
            if not self.tty:
                self._line(f"kiln batch: started {name}" + (f" on {where}" if where else ""))
            self._draw()

    def stage(self, name: str, stage: str, fraction: float) -> None:
        with self.lock:
            if name in self.running:
                self.running[name] = (stage, fraction)
                now = time.monotonic()
                if now - self._last_draw > 0.1:
                    self._draw()

    def finished(self, r: AssetResult) -> None:
        with self.lock:
            self.running.pop(r.name, None)
            self.done += 1
            if r.status is not AssetStatus.SKIPPED:
                self.ran += 1
            if r.status is AssetStatus.SUCCEEDED:
                text = f"ok      {r.name} ({r.seconds or 0:.1f} s, {r.faces_in} -> {r.faces_out} faces"
                text += f", {r.node}" if r.node else ""
                text += ")"
            elif r.status is AssetStatus.SKIPPED:
                text = f"skipped {r.name} (up to date)"
            else:
                err = r.error or {}
                text = f"FAILED  {r.name}: {err.get('message') or 'failed'}"
                if err.get("hint"):
                    text += f" (hint: {err['hint']})"
            self._line(f"kiln batch: [{self.done}/{self.total}] {text}")
            self._draw(force=True)

    def close(self) -> None:
        with self.lock:
            if self.tty and not self.quiet:
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    # -- drawing ----------------------------------------------------------------------------------
    def eta(self) -> Optional[float]:
        left = self.total - self.done
        if left <= 0:
            return 0.0
        if not self.ran:
            return None
        return (time.monotonic() - self.t0) / self.ran * left

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\x1b[K" + text + "\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if self.quiet:
            return
        self._last_draw = time.monotonic()
        pct = self.done / self.total if self.total else 1.0
        if not self.tty:
            tenth = int(pct * 10)
            if tenth != self._last_tenth and self.done:
                self._last_tenth = tenth
                self.stream.write(f"kiln batch: {self.done}/{self.total} done ({pct:.0%}), ETA {_fmt_eta(self.eta())}\n")
                self.stream.flush()
            return
        width = shutil.get_terminal_size((100, 20)).columns
        bar = "#" * int(pct * 20) + "-" * (20 - int(pct * 20))
        now = ", ".join(f"{n} ({s} {f:.0%})" for n, (s, f) in list(self.running.items())[:4])
        more = len(self.running) - 4
        if more > 0:
            now += f" +{more}"
        text = f"[{bar}] {self.done}/{self.total} ETA {_fmt_eta(self.eta())}" + (f" | {now}" if now else "")
        self.stream.write("\r\x1b[K" + text[: max(20, width - 1)])
        self.stream.flush()
