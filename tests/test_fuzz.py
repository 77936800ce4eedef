"""A bounded, seeded slice of benchmarks/fuzz.py: spoiled models and data end in a documented way."""

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import fuzz  # noqa: E402


@pytest.mark.parametrize("start", [0, 20])
def test_fuzz_slice_has_no_internal_error_traceback_or_stray_file(start):
    results = [fuzz.run_case(i, 14, subprocess_every=20) for i in range(start, start + 20)]
    problems = [(r["index"], r["what"], r["problem"]) for r in results if r["problem"]]
    assert not problems
    outcomes = Counter(r["outcome"] for r in results)
    assert set(outcomes) <= {"exit 0", "exit 2", "exit 3", "skipped"}
    assert outcomes["exit 0"] and outcomes["exit 2"]  # the slice exercises both ends


def test_judge_catches_what_it_must(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    case = {"command": "prune", "args": []}
    before = fuzz.digest_tree(tmp_path / "in")
    assert fuzz.judge(case, tmp_path, before, 1, "", "Error: internal error: boom\n")[1].startswith("exit 1")
    assert "traceback" in fuzz.judge(case, tmp_path, before, 2, "", "Traceback (most recent call last):\n")[1]
    assert "exactly one error line" in fuzz.judge(case, tmp_path, before, 2, "", "Error: a\nError: b\n")[1]
    (tmp_path / "out" / "pruned.onnx.tmp").write_text("half")
    assert "output directory holds" in fuzz.judge(case, tmp_path, before, 2, "", "Error: a\n")[1]
    (tmp_path / "in" / "model.onnx").write_text("changed")
    assert "input files changed" in fuzz.judge(case, tmp_path, before, 2, "", "Error: a\n")[1]
