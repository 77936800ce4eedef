"""Where onnxprune keeps its temporary files: one directory per process, swept of dead processes' leftovers.

Offloaded Gram matrices, recorded activations, staged and quantized models go to temporary files that
finalizers and context managers remove, but a process killed hard (SIGKILL, the out-of-memory killer)
runs neither, and its files stay: gigabytes, after a few killed runs on a large model. So every process
works in a directory of its own under the system's temporary directory, and holds an exclusive lock on a
file in it for as long as it lives (the operating system releases the lock however the process ends).
The first time a process needs scratch space it removes the directories whose lock it can take: those of
processes that are gone. Where file locks are not available (Windows), nothing is swept.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

PREFIX = "onnxprune-scratch-"
LOCK = ".lock"
_state: dict = {"pid": None, "path": None, "handle": None}


def directory() -> str:
    """This process's scratch directory (made, and the dead processes' swept, on first use)."""
    pid = os.getpid()
    if _state["pid"] == pid and os.path.isdir(_state["path"]):
        return _state["path"]
    base = tempfile.gettempdir()
    sweep(base)
    # made under another name and renamed once locked, so that a sweep never sees it unlocked
    fresh = tempfile.mkdtemp(prefix="onnxprune-new-", dir=base)
    handle = open(os.path.join(fresh, LOCK), "a")
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a filesystem without locks: no sweep can take it either (see sweep)
            pass
    path = os.path.join(base, f"{PREFIX}{pid}-{os.path.basename(fresh)[len('onnxprune-new-'):]}")
    os.rename(fresh, path)
    _state.update(pid=pid, path=path, handle=handle)
    atexit.register(_remove, pid, path, handle)
    return path


def sweep(base: str | None = None) -> list[str]:
    """Remove the scratch directories in `base` (the temporary directory) whose owner is gone; the removed."""
    if fcntl is None:
        return []
    base = base or tempfile.gettempdir()
    removed = []
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(PREFIX)]
    except OSError:
        return []
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            with open(os.path.join(entry.path, LOCK), "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # held: its process is alive
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
        except OSError:
            continue
    return removed


def _remove(pid: int, path: str, handle) -> None:
    if os.getpid() != pid:  # a forked child exiting: the directory is its parent's
        return
    shutil.rmtree(path, ignore_errors=True)
    try:
        handle.close()
    except OSError:
        pass
