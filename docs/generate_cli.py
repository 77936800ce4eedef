"""Write docs/cli.md, the command-line reference, from the click commands themselves.

    python docs/generate_cli.py            # rewrite docs/cli.md
    python docs/generate_cli.py --check    # exit 1 when docs/cli.md is stale (tests/test_docs.py does this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxprune.cli import main as cli  # noqa: E402

TARGET = ROOT / "docs" / "cli.md"
WIDTH = 100
ORDER = ("prune", "inspect", "stats", "sweep", "bench")


def context(command: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    """The context the command line gives the command (its help options), at a fixed width."""
    settings = {**cli.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def help_text(command: click.Command, name: str, parent: click.Context | None = None) -> str:
    return command.get_help(context(command, name, parent)).replace(" \n", "\n")


def reference() -> str:
    top = context(cli, "onnxprune")
    parts = ["# Command-line reference", "",
             "Generated from the click commands by `python docs/generate_cli.py`; `tests/test_docs.py` fails",
             "when this file and the commands disagree. Examples of every command at work: [usage.md](usage.md).",
             "", "## onnxprune", "", "```text", help_text(cli, "onnxprune"), "```"]
    names = [n for n in ORDER if n in cli.commands] + sorted(set(cli.commands) - set(ORDER))
    for name in names:
        parts += ["", f"## onnxprune {name}", "", "```text", help_text(cli.commands[name], name, top), "```"]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = reference()
    if "--check" in args:
        if TARGET.read_text() != text:
            print(f"{TARGET} is stale: run python docs/generate_cli.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
