"""Messages and progress bars on stderr: bars only on a terminal, nothing at all when quiet."""

from __future__ import annotations

import sys
import time


class Console:
    """Where the library reports what it is doing. The base class says nothing."""

    def log(self, message: str) -> None:
        pass

    def progress(self, label: str, done: int, total: int) -> None:
        pass


class StderrConsole(Console):
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bars = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open = False
        self._last = 0.0

    def log(self, message: str) -> None:
        self._close()
        print(message, file=self.stream, flush=True)

    def progress(self, label: str, done: int, total: int) -> None:
        if not self.bars:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / total) if total else width
        print(f"\r{label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="",
              file=self.stream, flush=True)
        self._open = done < total
        if done >= total:
            print(file=self.stream, flush=True)

    def _close(self) -> None:
        if self._open:
            print(file=self.stream, flush=True)
            self._open = False
