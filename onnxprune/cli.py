"""The `onnxprune` command: a thin layer over the library API.

Exit codes: 0 success, 1 internal error, 2 bad usage or input,
3 the pruned model failed validation (nothing written).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from . import __version__
from .errors import EXIT_INTERNAL, OnnxPruneError, ValidationFailed
from .modelio import atomic_write_text
from .pipeline import DEFAULT_BATCH_SIZE, default_output, inspect, prune


class DefaultGroup(click.Group):
    """`onnxprune model.onnx ...` means `onnxprune prune model.onnx ...`."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        # Click's own usage errors, like ours, are one line on stderr (no usage banner).
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `onnxprune`: show the help
                click.echo(e.format_message(), err=True)
                sys.exit(e.exit_code)
            fail(e.format_message(), e.exit_code)
        except click.Abort:
            fail("aborted", 1)
        sys.exit(code if isinstance(code, int) else 0)

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


def fail(message: str, code: int):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def reports_errors(fn):
    """Turn the library's exceptions into one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OnnxPruneError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as e:
            if os.environ.get("ONNXPRUNE_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            fail(f"internal error: {type(e).__name__}: {first} (set ONNXPRUNE_DEBUG=1 for the traceback)",
                 EXIT_INTERNAL)

    return wrapper


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune")
def main():
    """Remove near-constant neurons from a trained ONNX model, validated against the original.

    \b
      onnxprune model.onnx --data val.npz            prune (same as `onnxprune prune ...`)
      onnxprune inspect model.onnx                   show the neuron groups found
    """


@main.command("prune")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-d", "--data", required=True, type=click.Path(dir_okay=False),
              help=".npz with one array per model input (and optionally labels).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the pruned model [default: MODEL.pruned.onnx].")
@click.option("--mean-threshold", type=click.FloatRange(min=0),
              help="Remove neurons whose |mean activation| is below this (and whose std is below --std-threshold).")
@click.option("--std-threshold", type=click.FloatRange(min=0),
              help="Remove neurons whose activation std is below this (and whose |mean| is below --mean-threshold).")
@click.option("--labels", "labels_key", default="labels", show_default=True,
              help="Key of the labels array in the .npz (for accuracy).")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0, help="onnxruntime threads (0: its default).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("-f", "--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages and no table.")
@reports_errors
def prune_command(model, data, output, mean_threshold, std_threshold, labels_key, batch_size, threads,
                  report_path, as_json, force, quiet):
    """Prune MODEL with statistics measured on --data; write a smaller, validated model."""
    output = output or str(default_output(model))
    log = None if quiet else (lambda message: click.echo(message, err=True))
    try:
        result = prune(model, data, output=output, mean_threshold=mean_threshold, std_threshold=std_threshold,
                       batch_size=batch_size, labels=labels_key, force=force, threads=threads, log=log)
    except ValidationFailed as e:
        if e.report is not None and report_path:
            atomic_write_text(report_path, e.report.to_json())
        raise
    if report_path:
        atomic_write_text(report_path, result.report.to_json())
    if as_json:
        click.echo(result.report.to_json(), nl=False)
    elif not quiet:
        click.echo(result.report.format_table(), nl=False)


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@reports_errors
def inspect_command(model, as_json):
    """List MODEL's neuron groups: sizes, where they are measured, and why any is skipped."""
    groups = inspect(model)
    if as_json:
        click.echo(json.dumps([g.to_dict() for g in groups], indent=2))
        return
    if not groups:
        click.echo("no Gemm/MatMul layers found")
        return
    width = max(len(g.name) for g in groups)
    for g in groups:
        size = "?" if g.size is None else str(g.size)
        if g.prunable:
            path = " -> ".join([g.producer_op, *g.region_ops, f"[{', '.join(g.consumers)}]"])
            click.echo(f"{g.name:<{width}}  {size:>6} neurons  prunable  tap {g.tap!r}: {path}")
        else:
            click.echo(f"{g.name:<{width}}  {size:>6} neurons  skipped   {g.reason}")
    n = sum(g.prunable for g in groups)
    click.echo(f"{n} of {len(groups)} group(s) prunable, {sum(g.size for g in groups if g.prunable)} neurons")
