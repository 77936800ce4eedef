"""The documentation says what the code does: README.md is a first page whose commands run and print what
it shows, docs/*.md likewise, and the command-line reference is generated from the commands."""

import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from doc_commands import matches, run, scratch, steps

sys.path.insert(0, str(ROOT / "docs"))
import generate_cli  # noqa: E402

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
HISTORY = re.compile(r"onnxprune 0\.\d|round before|the earlier round|latest round|before this round", re.I)


def test_cli_reference_is_generated_from_the_commands():
    assert (ROOT / "docs" / "cli.md").read_text() == generate_cli.reference(), \
        "docs/cli.md is stale: run python docs/generate_cli.py"
    for name in generate_cli.cli.commands:
        assert f"## onnxprune {name}\n" in generate_cli.reference()


def test_readme_is_a_first_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    blocks = re.findall(r"```(\w*)\n(.*?)\n```", text, flags=re.S)
    (lang1, first), (lang2, second) = blocks[:2]
    assert lang1 == lang2 == "bash" and "pip install" in first and "pip install" in second
    assert text.index("```") < text.index("## ")  # the two commands come before anything else
    for heading in ("## What it does", "## Quick start", "## Your own model", "## What it prunes",
                    "## Library", "## Documentation"):
        assert heading in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).exists(), link


def test_user_documentation_has_no_history_or_dangling_links():
    for path in [README, *DOCS]:
        text = path.read_text()
        assert not HISTORY.search(text), (path.name, HISTORY.search(text).group(0))
        for link in re.findall(r"\]\(([\w./-]+\.(?:md|png))\)", text):
            assert (path.parent / link).exists(), (path.name, link)


def quick_start_command() -> str:
    console = [s for s in steps(README.read_text()) if s.kind == "console"]
    return console[0].command


def test_the_quick_start_runs_the_first_command():
    first = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)[0]
    assert first.endswith("&& " + quick_start_command())


def run_document(path, tmp_path) -> dict:
    """Run every command of a document in order; the output of each console command, by command."""
    where = scratch(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    printed = {}
    for step in steps(path.read_text()):
        done = run(step, where)
        if step.kind == "console":
            actual = done.stdout.splitlines()
            assert matches(step.expected, actual), (
                f"{path.name}: `{step.command}` printed\n" + done.stdout + "\nbut the document shows\n"
                + "\n".join(step.expected))
            printed[step.command] = done.stdout
        assert done.returncode == 0, (path.name, step.command, done.stdout, done.stderr)
    made = sorted(p.name for p in tmp_path.iterdir() if p.name not in before and p.name != "docs")
    if shutil.which("git") and (ROOT / ".git").exists():  # what the commands write is not committed by mistake
        for name in made:
            ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", name])
            assert ignored.returncode == 0, f"{name}, written by {path.name}'s commands, is not in .gitignore"
    return printed


@pytest.mark.slow
def test_readme_commands_run_and_print_what_it_shows(tmp_path):
    printed = run_document(README, tmp_path)
    text, output = " ".join(README.read_text().split()), printed[quick_start_command()]
    # the figures the prose quotes from the quick start
    for quoted, shown in (("broke 8 digits and fixed 4", "8 broken, 4 fixed"),
                          ("at most 1.76 pp", "95% upper bound 1.76 pp"),
                          ("bound (2.63 pp)", "bound 2.63 pp > 2 pp"),
                          ('each amount tried ("remove 70.0%"', "chosen     remove 70.0%")):
        assert quoted in text and shown in output, quoted


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_docs_commands_run_and_print_what_they_show(path, tmp_path):
    printed = run_document(path, tmp_path)
    if path.name == "benchmarks.md":  # the README quotes the first command's figures on unseen digits
        output = printed["python benchmarks/first_command.py"]
        text = " ".join(README.read_text().split())
        before, after, drop = re.search(r"(\d+\.\d+) % -> (\d+\.\d+) %, drop (\d+\.\d+) pp", output).groups()
        assert f"scores {after} % against the original's {before} % (a {drop} pp drop" in text
        assert "keeps 98 % of the reduction an oracle" in text and "default / oracle 0.98" in output
