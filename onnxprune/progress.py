"""Messages and progress bars on stderr: bars (tqdm, with rate and ETA) only on a terminal, nothing at
all when quiet."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Console:
    """Where the library reports what it is doing. The base class says nothing."""

    def log(self, message: str) -> None:
        pass

    def progress(self, label: str, done: int, total: int) -> None:
        pass


class StderrConsole(Console):
    """Messages as lines on `stream` (stderr); progress as one tqdm bar at a time, only when the stream
    is a terminal (a pipe or a log file gets the messages only)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bars = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: tqdm | None = None
        self._label: str | None = None

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.clear()
        print(message, file=self.stream, flush=True)
        if self._bar is not None:
            self._bar.refresh()

    def progress(self, label: str, done: int, total: int) -> None:
        if not self.bars:
            return
        if self._bar is None or label != self._label or total != self._bar.total:
            self._close()
            unit = "candidate" if "candidate" in label else "sample"
            self._bar = tqdm(total=total, desc=label, unit=unit, file=self.stream, leave=False,
                             dynamic_ncols=True, mininterval=0.1)
            self._label = label
        self._bar.update(max(0, done - self._bar.n))
        if done >= total:
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar, self._label = None, None
