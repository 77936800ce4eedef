"""The commands of README.md and docs/*.md that use the bundled samples, run as a reader would.

A ```console block holds commands (lines starting with `$ `), each followed by the output it prints
(stderr, then stdout, as a terminal shows them); `...` in an expected line stands for any text (timings,
the machine). A ```bash block's lines that use sample_models/ are run too and must exit 0 (install lines
with `pip install` are not: CI runs those). A ```python block that uses sample_models/ is run as a script.
The blocks of one file run in order in one scratch directory holding `sample_models` and `benchmarks`
(links to the repository's) and an empty `docs/`, so a command can use what an earlier one wrote.

    python tests/doc_commands.py README.md    # print what each console command prints now
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)


@dataclass
class Step:
    kind: str                   # "console" (output checked), "bash" (exit 0) or "python" (exit 0)
    command: str
    expected: list[str] = field(default_factory=list)


def steps(markdown: str) -> list[Step]:
    """Every command of a markdown text that uses the bundled samples, in order."""
    out = []
    for language, body in FENCE.findall(markdown):
        if language == "console":
            for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
                command, *expected = chunk.rstrip("\n").split("\n")
                out.append(Step("console", command, expected))
        elif language == "bash":
            out += [Step("bash", line) for line in body.splitlines()
                    if "sample_models/" in line and "pip install" not in line]
        elif language == "python" and "sample_models/" in body:
            out.append(Step("python", body))
    return out


def scratch(directory: Path) -> Path:
    for name in ("sample_models", "benchmarks"):
        link = directory / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    (directory / "docs").mkdir(exist_ok=True)
    return directory


def run(step: Step, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                                          f"{os.environ.get('PATH', '')}",
           "COLUMNS": "100", "PYTHONHASHSEED": "0"}
    env.pop("ONNXPRUNE_DEBUG", None)
    if step.kind == "python":
        return subprocess.run([sys.executable, "-c", step.command], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    # stderr and stdout in one stream, as a terminal shows them: stderr is written as it comes,
    # stdout (a pipe here) when the command ends
    return subprocess.run(["bash", "-o", "pipefail", "-c", f"{{ {step.command}\n}} 2>&1"], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def matches(expected: list[str], actual: list[str]) -> bool:
    if len(expected) != len(actual):
        return False
    for want, got in zip(expected, actual):
        pattern = ".*".join(re.escape(part) for part in want.split("..."))
        if not re.fullmatch(pattern, got):
            return False
    return True


# lines that differ from run to run, as a document shows them
VARIABLE = ((re.compile(r"^time {7}.*"), "time       ..."), (re.compile(r"^.*, Python \d.*$"), "..."))


def as_documented(line: str) -> str:
    for pattern, shown in VARIABLE:
        if pattern.match(line):
            return shown
    return line


def write(name: str) -> None:
    """Run a document's commands and write what its console commands print into it."""
    import tempfile

    path = ROOT / name
    text = path.read_text()
    printed = []
    with tempfile.TemporaryDirectory() as tmp:
        where = scratch(Path(tmp))
        for step in steps(text):
            done = run(step, where)
            if step.kind == "console":
                printed.append([as_documented(line) for line in done.stdout.splitlines()])
    outputs = iter(printed)

    def fill(match) -> str:
        if match.group(1) != "console":
            return match.group(0)
        lines = []
        for chunk in re.split(r"^\$ ", match.group(2), flags=re.M)[1:]:
            lines += [f"$ {chunk.split(chr(10))[0]}", *next(outputs)]
        return "```console\n" + "\n".join(lines) + "\n```"

    path.write_text(FENCE.sub(fill, text))


def main(argv=None) -> int:
    import tempfile

    args = list(argv or sys.argv[1:])
    if args and args[0] == "--write":
        for name in args[1:]:
            write(name)
        return 0
    for name in args:
        with tempfile.TemporaryDirectory() as tmp:
            where = scratch(Path(tmp))
            for step in steps((ROOT / name).read_text()):
                done = run(step, where)
                print(f"$ {step.command}" if step.kind == "console" else f"[{step.kind}] {step.command[:80]}")
                if step.kind == "console" or done.returncode:
                    print(done.stdout, end="")
                print(f"[exit {done.returncode}; {'matches' if matches(step.expected, done.stdout.splitlines()) else 'DIFFERS'}]"
                      if step.kind == "console" else f"[exit {done.returncode}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
