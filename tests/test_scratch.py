"""Temporary files live in a directory per process; a killed process's directory is swept by the next one."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from onnxprune import scratch
from onnxprune.refit import Gram

pytestmark = pytest.mark.skipif(scratch.fcntl is None, reason="no file locks (Windows): nothing is swept")

CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from onnxprune.refit import Gram
    g = Gram(3).update(np.ones((5, 3), np.float32)).offload()  # a file in this process's scratch directory
    print(os.path.dirname(g._stored.path), flush=True)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # no finalizer, no atexit: the directory stays
    sys.stdin.read()  # "wait": alive until its stdin closes
""")


def _child(tmp_path, how):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-c", CHILD, how], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_offloaded_files_go_to_this_process_scratch_directory_which_holds_its_lock():
    g = Gram(2).update(np.ones((4, 2), np.float32)).offload()
    here = scratch.directory()
    assert os.path.dirname(g._stored.path) == here
    assert os.path.basename(here).startswith(f"{scratch.PREFIX}{os.getpid()}-")
    assert os.path.exists(os.path.join(here, scratch.LOCK))
    assert here not in scratch.sweep(os.path.dirname(here))  # its own lock is held: never swept


def test_a_killed_process_directory_is_swept_by_the_next_and_a_live_one_is_kept(tmp_path):
    killed = _child(tmp_path, "kill")
    gone = killed.stdout.readline().strip()
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert os.path.isdir(gone) and os.listdir(gone)  # the killed process left its Gram file behind
    alive = _child(tmp_path, "wait")  # the next process to need scratch space sweeps it
    kept = alive.stdout.readline().strip()
    try:
        assert not os.path.exists(gone)
        assert scratch.sweep(str(tmp_path)) == []  # the living process's directory is not taken
        assert os.path.isdir(kept) and os.listdir(kept)
    finally:
        alive.stdin.close()
        alive.wait(timeout=60)
    assert not os.path.exists(kept)  # removed when its process ended normally
