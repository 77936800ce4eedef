"""The `onnxprune` command: a thin layer over the library API.

Exit codes: 0 success, 1 internal error, 2 bad usage or input,
3 the pruned model failed validation (nothing written).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings

import click

from . import __version__, plots
from .api import block_scores, default_output, head_scores, inspect_blocks, inspect_split, prune, sweep
from .bench import bench
from .criteria import CRITERIA
from .errors import EXIT_INTERNAL, InputError, OnnxPruneError, ValidationFailed
from .metrics import METRICS, SCORE_SHARE
from .modelio import atomic_write_text, check_output_path, load_model
from .options import DEFAULT_BATCH_SIZE, DEFAULT_FOLDS, DEFAULT_HOLDOUT, KEYWORDS, DataSpec, OutputOptions, resolve
from .progress import Console, StderrConsole
from .quantize import FLOAT_STEM_CHANNELS, QUANTIZE_MODES, modes_check, quantized_copies, save_model_file
from .report import (block_records, format_bench, format_inspect, format_signature, format_stats,
                     inspect_block_lines, inspect_records, stats_summary)
from .run import measure_groups
from .selection import DEFAULT_CRITERION, OBJECTIVES, SelectionConfig
from .session import GRAPH_OPTIMIZATION, RuntimeOptions, available_providers


# numpy's overflow and invalid-value warnings (weights or data near the float limits) would print
# source lines on stderr; whatever they spoil, validation judges on the outputs.
warnings.filterwarnings("ignore", category=RuntimeWarning)


class DefaultGroup(click.Group):
    """`onnxprune model.onnx ...` means `onnxprune prune model.onnx ...`."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        prog_name = prog_name or "onnxprune"  # also under `python -m onnxprune`
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


# The headings of every command's --help, and which options each lists, in this order; an option
# not named here would be listed under "Other options".
SECTIONS = (
    ("Input and output", ("data", "output", "labels_key", "eval_data", "force", "mask_input", "batch_axis",
                          "constant_input")),
    ("Budget and metrics", ("max_drop", "confidence", "metric", "outputs", "min_cosine", "max_class_drop",
                            "max_channel_error", "max_score_change", "decision_threshold", "channel_axis", "folds",
                            "holdout")),
    ("Method", ("criterion", "fraction", "mean_threshold", "std_threshold", "relative", "no_refit", "no_fold",
                "independent_refit", "objective", "align", "quantize", "quantize_stem", "structures", "grid")),
    ("Runtime", ("batch_size", "threads", "provider", "graph_opt", "workers", "dask_address", "batch_sizes",
                 "min_seconds")),
    ("Reporting", ("as_json", "report_path", "plot_path", "with_bench", "quiet", "version", "help")),
)


class SectionedCommand(click.Command):
    """A command whose --help lists its options under the headings of SECTIONS."""

    def format_options(self, ctx, formatter):
        help_option = self.get_help_option(ctx)
        records = {"help" if p is help_option else p.name: p.get_help_record(ctx) for p in self.get_params(ctx)
                   if isinstance(p, click.Option)}
        listed = set()
        for title, names in SECTIONS:
            rows = [records[n] for n in names if records.get(n)]
            listed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [r for n, r in records.items() if r and n not in listed]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)


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
        except click.ClickException:
            raise  # usage errors: shown by DefaultGroup.main
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except MemoryError:
            # The input asked for more memory than there is (huge data, a corrupt size field).
            fail("not enough memory for this model or data (MemoryError)", 2)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as a process killed by SIGPIPE would.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)
        except Exception as e:
            if os.environ.get("ONNXPRUNE_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            fail(f"internal error: {type(e).__name__}: {first} (set ONNXPRUNE_DEBUG=1 for the traceback)",
                 EXIT_INTERNAL)

    return wrapper


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxprune")
def main():
    """Prune neurons from a trained ONNX model, certified against a budget on your data.

    \b
    The data is a .npz file with one array per model input, keyed by input name, samples
    along the first axis, and optionally `labels` (integer class ids; -1: no label):
        np.savez("val.npz", input=x_val, labels=y_val)
    \b
    Examples:
      onnxprune model.onnx --data val.npz --max-drop 1
            the smallest model whose accuracy drop is within 1 percentage point at 95 %
            confidence (`onnxprune prune ...`); 1 pp needs about 300 samples, 0.5 pp about 600
      onnxprune inspect model.onnx
            the neuron groups found, and why any is skipped
      onnxprune stats model.onnx --data val.npz --plot stats.png
            per-layer neuron statistics
      onnxprune sweep model.onnx --data val.npz --plot tradeoff.png
            size against accuracy drop over a grid of amounts
      onnxprune bench model.onnx model.pruned.onnx
            latency and size side by side
    """


def option_group(*options):
    """A reusable decorator adding click options to a command."""

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


ONNXRUNTIME_OPTIONS = [
    click.option("--threads", type=click.IntRange(min=0), default=0, help="onnxruntime threads (0: its default)."),
    click.option("--provider", type=click.Choice(available_providers()), default="CPUExecutionProvider",
                 metavar="NAME", show_default=True,
                 help="onnxruntime execution provider, one it has here (onnxruntime.get_available_providers())."),
    click.option("--graph-opt", type=click.Choice(list(GRAPH_OPTIMIZATION)), default="all", show_default=True,
                 help="onnxruntime graph optimisation level."),
]


# --threads, --provider and --graph-opt, for commands that run models without data options
onnxruntime_options = option_group(*ONNXRUNTIME_OPTIONS)

# the commands that run data through the model: where it comes from and how it is fed, how models run
data_options = option_group(
    click.option("-d", "--data", required=True, type=click.Path(),
                 help=".npz with one array per model input (keyed by input name) and optionally labels; a "
                      ".npy for a single-input model; or a directory of .npz shards (streamed)."),
    click.option("--labels", "labels_key", default="labels", show_default=True, metavar="KEY",
                 help="The labels array in the .npz (integer class ids or one-hot; -1: no label). A KEY "
                      "other than the default must exist."),
    click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
                 help="Samples per onnxruntime run."),
    click.option("--mask", "mask_input", metavar="INPUT",
                 help="Model input (e.g. attention_mask) whose zeros mark padding positions to leave out of "
                      "the statistics."),
    click.option("--batch-axis", "batch_axis", multiple=True, metavar="INPUT=AXIS",
                 help="The axis INPUT holds its samples along, when not 0 (a state [2, N, 128]: state=1); "
                      "repeatable, or comma-separated [default: where the model's symbolic batch dim is]."),
    click.option("--constant-input", "constant_input", multiple=True, metavar="INPUT",
                 help="An input given once for all samples (no sample axis), fed unchanged with every batch; "
                      "repeatable, or comma-separated. Scalar inputs are constant without it."),
    *ONNXRUNTIME_OPTIONS,
    click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Measure the statistics in this many processes, each on a contiguous shard of the "
                      "data (--threads, or all cores, shared among them); the result is the same."),
    click.option("--dask", "dask_address", metavar="ADDRESS",
                 help="Measure the statistics on this Dask scheduler's workers (tcp://host:8786; needs "
                      "onnxprune[cluster], and the model and data at the same paths there)."),
    click.option("-q", "--quiet", is_flag=True,
                 help="Nothing on stderr but errors (prune: no table either). Progress bars appear only "
                      "when stderr is a terminal."),
)

# `prune`'s and `sweep`'s: what ranks neurons, how consumers compensate, the budget (and the held-out data)
STEM_HELP = (f"With --quantize static, quantize the convolutions of at most {FLOAT_STEM_CHANNELS} input channels "
             "(an image model's first layer) too; without it they stay float, where int8 runs them no faster "
             "(docs/quantize.md).")

selection_options = option_group(
    click.option("--criterion", type=click.Choice(sorted(CRITERIA)), default=None,
                 help=f"How neurons are ranked [default: {DEFAULT_CRITERION}: contribution or sensitivity, whichever "
                      "saves more at equal output damage on calibration samples (with --fraction: does less damage "
                      "there); seed with thresholds]."),
    click.option("--relative", is_flag=True,
                 help="Thresholds are multiples of each layer's activation RMS, not absolute values."),
    click.option("--no-fold", is_flag=True,
                 help="No compensation: drop removed neurons as the seed does (implies --no-refit)."),
    click.option("--no-refit", is_flag=True,
                 help="Fold removed neurons' means into the next bias, but do not refit weights."),
    click.option("--metric", type=click.Choice(["auto", *METRICS]), default="auto", show_default=True,
                 metavar="NAME",
                 help="What judges the pruned model. auto: accuracy with labels (and balanced accuracy for "
                      "imbalanced classes), else decision agreement, plus the score guard, on classifier "
                      "outputs; per-channel error on other outputs. Or one of: " + ", ".join(METRICS) + "."),
    click.option("--outputs", "outputs", metavar="A,B", help="Comma-separated model outputs to compare "
                                                             "[default: all]."),
    click.option("--max-drop", type=click.FloatRange(min=0), default=0.5, show_default=True, metavar="PP",
                 help="Budget: accuracy (or decision agreement, detections) may drop this many percentage "
                      "points, at --confidence. About 300 samples can certify 1 pp, 600 0.5 pp."),
    click.option("--min-cosine", type=click.FloatRange(min=0, max=1), default=0.99, show_default=True,
                 help="Budget for --metric cosine: mean cosine similarity to the original outputs."),
    click.option("--max-class-drop", type=click.FloatRange(min=0), default=5.0, show_default=True, metavar="PP",
                 help="Guard for imbalanced labels: balanced accuracy (mean per-class recall) may drop this "
                      "many percentage points."),
    click.option("--max-channel-error", type=click.FloatRange(min=0), default=0.01, show_default=True,
                 help="Budget for per-channel error: squared error over the channel's variance, worst channel."),
    click.option("--channel-axis", type=int, default=None,
                 help="Per-channel error: the output axis holding channels [default: 1, or for rank-3 outputs "
                      "the axis that is not a sequence]."),
    click.option("--max-score-change", type=click.FloatRange(min=0), default=0.2, show_default=True,
                 help=f"Guard: at most {SCORE_SHARE:g} % of samples may move a probability by more than this "
                      "without their decision changing."),
    click.option("--decision-threshold", type=float, default=0.5, show_default=True,
                 help="Single-score outputs ([batch, 1]) are compared as decisions at this score."),
    click.option("--confidence", type=click.FloatRange(min=0.5, max=1, max_open=True), default=0.95,
                 show_default=True, help="A candidate passes when the upper bound of its loss at this "
                                         "confidence is within the budget."),
    click.option("--eval-data", type=click.Path(),
                 help="Held-out .npz that judges the candidates and the written model, apart from --data "
                      "[default: cross-fitting on --data]."),
    click.option("--folds", type=click.IntRange(min=2), default=None,
                 help=f"Cross-fitting folds of --data: each judges the candidates the others' statistics "
                      f"build, so every sample is evidence [default: {DEFAULT_FOLDS}]."),
    click.option("--holdout", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
                 help=f"Judge on one held-out share of --data instead of cross-fitting (e.g. {DEFAULT_HOLDOUT:g}; "
                      "0: on the statistics' own samples)."),
    click.option("--objective", type=click.Choice(OBJECTIVES), default="parameters", show_default=True,
                 help="What the ranking saves first: parameters (size), macs (compute: rank neurons by "
                      "score per multiply-add they cost) or both (score per share of the parameters plus share "
                      "of the multiply-adds)."),
    click.option("--align", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Keep a multiple of this many neurons per layer (0: 8 for Conv channels, 1 otherwise; "
                      "with --quantize, what docs/quantize.md measured for int8 layers)."),
    click.option("--quantize", type=click.Choice(QUANTIZE_MODES), default="none", show_default=True,
                 help="Quantize every candidate with onnxruntime's quantizer before the budget judges it, and "
                      "write the pruned model quantized: static (QDQ int8, calibrated on --data) or dynamic "
                      "(int8 weights, for MatMul-heavy models). Exit 4 when the original quantized alone "
                      "breaks the budget."),
    click.option("--quantize-stem", is_flag=True,
                 help=STEM_HELP),
    click.option("--structures", default="neurons,heads", show_default=True,
                 help="What may be removed, comma-separated: neurons (features, channels), heads (whole "
                      "attention heads), blocks (whole residual branches: attention, FFN, ResNet blocks)."),
)

force_option = click.option("-f", "--force", is_flag=True, help="Overwrite output files (-o, --report, --plot) "
                                                                 "that exist.")


def plot_option(what: str):
    return click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
                        help=f"Also draw {what} to this PNG (needs matplotlib; without it, a warning).")


def builds(**builders):
    """Hand a command the objects its options describe, each built once: every builder takes (pops) the
    parsed values it reads, and the command gets its object under the builder's name, with the values
    no builder took."""

    def decorate(command):
        @functools.wraps(command)
        def build_then_run(**values):
            objects = {name: build(values) for name, build in builders.items()}
            return command(**values, **objects)

        return build_then_run

    return decorate


def data_spec(values: dict) -> DataSpec:
    """--data and how it is fed; for `prune` and `sweep`, also --eval-data and --holdout."""
    return DataSpec(values.pop("data"), eval_data=values.pop("eval_data", None),
                    holdout=values.pop("holdout", None), folds=values.pop("folds", None),
                    labels=values.pop("labels_key", None),
                    mask=values.pop("mask_input", None), batch_axes=parse_batch_axes(values.pop("batch_axis")),
                    constant_inputs=parse_names(values.pop("constant_input")),
                    batch_size=values.pop("batch_size", DEFAULT_BATCH_SIZE))


def runtime_spec(values: dict) -> RuntimeOptions:
    """--threads, --provider and --graph-opt; for the statistics pass, also --workers and --dask."""
    return RuntimeOptions(threads=values.pop("threads"), providers=(values.pop("provider"),),
                          graph_optimization=values.pop("graph_opt"), workers=values.pop("workers", 1),
                          cluster=values.pop("dask_address", None))


def selection_spec(values: dict) -> SelectionConfig:
    """The selection options as one config: those named like its fields (or its budget's) as given,
    --no-fold/--no-refit as the compensation, --independent-refit as the refit's order, --grid parsed.
    Checked by the library, which checks a config from any caller."""
    given = {name: values.pop(name) for name in list(values) if name in KEYWORDS["selection"]}
    no_fold, no_refit = values.pop("no_fold"), values.pop("no_refit")
    given["compensation"] = "none" if no_fold else "fold" if no_refit else "refit"
    independent = values.pop("independent_refit", None)
    given["sequential"] = None if independent is None else not independent
    if given.get("grid") is not None:
        given["grid"] = parse_list(given["grid"], float, "numbers", "--grid", lambda v: 0 <= v < 1,
                                   "fractions must be in [0, 1)")
    return SelectionConfig.from_options(**given)


def output_spec(values: dict) -> OutputOptions:
    """-o (default: beside the model) and --force."""
    return OutputOptions(values.pop("output") or str(default_output(values["model"])), force=values.pop("force"))


def bench_sizes(values: dict) -> list[int] | None:
    """With --bench, the batch sizes to time the models at (None without)."""
    sizes = values.pop("batch_sizes")
    return parse_batch_sizes(sizes) if values.pop("with_bench") else None


def parse_batch_axes(values) -> dict[str, int]:
    """--batch-axis state=1 (repeated or comma-separated) -> {"state": 1}."""
    axes = {}
    for item in (v.strip() for value in values for v in value.split(",")):
        if not item:
            continue
        name, sep, axis = item.rpartition("=")
        try:
            number = int(axis)
        except ValueError:
            number = None
        if not sep or not name or number is None:
            raise click.BadParameter(f"{item!r} is not INPUT=AXIS (an input name and an integer axis)",
                                     param_hint="--batch-axis")
        axes[name] = number
    return axes


def parse_names(values) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def batch_sizes_option(fn):
    return click.option("--batch-sizes", "batch_sizes", default="1,64", show_default=True,
                        help="Comma-separated batch sizes to time.")(fn)


def parse_list(text: str, convert, noun: str, hint: str, valid, rule: str) -> list:
    """A comma-separated option value, every item converted and checked."""
    try:
        values = [convert(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of {noun}", param_hint=hint) from None
    if not values or not all(valid(v) for v in values):
        raise click.BadParameter(rule, param_hint=hint)
    return values


def parse_batch_sizes(text: str) -> list[int]:
    return parse_list(text, int, "integers", "--batch-sizes", lambda s: s >= 1,
                      "batch sizes must be positive integers")


def console_for(quiet: bool) -> Console:
    return Console() if quiet else StderrConsole()


def check_outputs(outputs: dict, taken: dict, *, force: bool) -> None:
    """The files a command will write ({option: path}, None when not asked for), checked before any work:
    the directory exists and is writable, the path is none of the files in `taken` ({what: path}: the
    inputs, -o) nor another output's, and an existing file is replaced only with --force."""
    seen = {os.path.realpath(p): what for what, p in taken.items() if isinstance(p, (str, os.PathLike))}
    for option, path in outputs.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f"{option} {path} is also {seen[real]} (choose another path)", path=path, field=option)
        seen[real] = option
        check_output_path(path, force=force)


def plot_wanted(plot_path, console: Console) -> bool:
    """Whether --plot can be drawn: without matplotlib it is a warning, and the rest of the command runs."""
    if not plot_path:
        return False
    if plots.has_matplotlib():
        return True
    console.log(f"warning: --plot needs matplotlib (pip install 'onnxprune[plot]'); {plot_path} is not drawn")
    return False


@main.command("prune", cls=SectionedCommand,
              short_help="Prune a model within a budget (the default command): write a smaller, validated model.")
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@selection_options
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the pruned model [default: MODEL.pruned.onnx].")
@click.option("--mean-threshold", type=click.FloatRange(min=0),
              help="Seed rule: remove neurons with |mean| below this (and std below --std-threshold).")
@click.option("--std-threshold", type=click.FloatRange(min=0),
              help="Seed rule: remove neurons with std below this (and |mean| below --mean-threshold).")
@click.option("--fraction", type=click.FloatRange(min=0, max=1, max_open=True),
              help="Remove this fraction of all prunable neurons (lowest scores first), no budget search.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@force_option
@click.option("--independent-refit/--sequential-refit", default=None,
              help="Refit each layer from the original activations only, or layer by layer on the pruned "
                   "model's own activations (a pass per layer and candidate over as many calibration samples as "
                   "give the layer 256 rows per weight) [default: "
                   "sequential for models of at most 5 M parameters].")
@click.option("--bench", "with_bench", is_flag=True, help="Also time the original and pruned models (see `bench`).")
@batch_sizes_option
@reports_errors
@builds(bench_sizes=bench_sizes, data=data_spec, runtime=runtime_spec, selection=selection_spec, output=output_spec)
def prune_command(model, data, runtime, selection, output, bench_sizes, quiet, report_path, as_json):
    """Prune MODEL with statistics measured on --data and write a smaller model, validated against
    the original.

    By default the smallest model is chosen whose metrics stay within the budget (--max-drop) at
    95 % confidence, judged by cross-fitting on --data (or on --eval-data). --fraction and the
    thresholds prune a fixed amount instead; --criterion dead removes only neurons that never
    fire (outputs unchanged).

    \b
      onnxprune model.onnx --data val.npz --max-drop 1 -o small.onnx
    """
    check_outputs({"--report": report_path},
                  {"MODEL": model, "--data": data.data, "--eval-data": data.eval_data, "-o": output.path},
                  force=output.force)
    console = console_for(quiet)
    try:
        result = prune(model, data, selection=selection, runtime=runtime, output=output, console=console)
    except ValidationFailed as e:
        if e.report is not None and report_path:
            atomic_write_text(report_path, e.report.to_json())
        raise
    timer = time_variants if result.variants else time_both
    rows = timer(model, output.path, data, runtime, bench_sizes, result, console) if bench_sizes else None
    if report_path:
        atomic_write_text(report_path, result.report.to_json())
    if as_json:
        click.echo(result.report.to_json(), nl=False)
    elif not quiet:
        click.echo(result.report.format_table(), nl=False)
        if rows:
            click.echo(format_bench(rows), nl=False)


def time_both(model, pruned, data: DataSpec, runtime: RuntimeOptions, sizes, result, console,
              models=None) -> list | None:
    """`bench` of the original and the pruned model (or of `models`), into the report; a failure is a warning
    (the pruned model is written and valid, and timings only inform)."""
    report = result.report
    console.log("timing the original and the pruned model")
    try:
        rows = bench(models or [model, pruned], data=data.data, batch_sizes=sizes, options=runtime,
                     labels=data.labels, batch_axes=data.batch_axes, constant_inputs=data.constant_inputs)
    except Exception as e:
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        report.bench = None
        console.log(f"warning: timing failed, reported as unknown: {first_line(e)}")
        return None
    report.bench = [r.to_dict() for r in rows]
    return rows


def time_variants(model, pruned, data: DataSpec, runtime: RuntimeOptions, sizes, result, console) -> list | None:
    """With --quantize: `bench` of the original, quantized only, pruned only and the written pruned + quantized
    model, side by side in one run (the two in-between models written to a scratch directory)."""
    import tempfile
    from pathlib import Path

    from .scratch import directory as scratch_directory

    stem = Path(pruned).name.removesuffix(".onnx")
    with tempfile.TemporaryDirectory(prefix="onnxprune-variants-", dir=scratch_directory()) as scratch:
        paths = []
        for name in ("quantized only", "pruned only"):
            path = Path(scratch) / f"{stem}.{name.replace(' ', '-')}.onnx"
            save_model_file(result.variants[name], path)
            paths.append(str(path))
        return time_both(model, pruned, data, runtime, sizes, result, console, models=[model, *paths, pruned])


@main.command("sweep", cls=SectionedCommand,
              short_help="Size against accuracy over a grid of amounts: the trade-off, as a table or plot.")
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@selection_options
@click.option("--grid", help="Comma-separated fractions of neurons to remove [default: 0,0.025,...,0.975].")
@plot_option("parameters removed against the budget's metric, failures marked by check")
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@reports_errors
@builds(selection=selection_spec, data=data_spec, runtime=runtime_spec)
def sweep_command(model, data, runtime, selection, quiet, plot_path, force, as_json):
    """Evaluate a grid of pruning amounts with the same figures `prune` gives: the size/accuracy
    trade-off, and which check fails where.

    Statistics are gathered once; each candidate costs one pass of the pruned model.
    """
    console = console_for(quiet)
    draw_it = plot_wanted(plot_path, console)
    check_outputs({"--plot": plot_path if draw_it else None},
                  {"MODEL": model, "--data": data.data, "--eval-data": data.eval_data}, force=force)
    result = sweep(model, data, selection=selection, runtime=runtime, console=console)
    if draw_it:
        draw(plots.tradeoff_plot, result, plot_path, console)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.format_table(), nl=False)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def draw(plot, what, path, console: Console, **extra) -> None:
    """Draw a plot and say where it went; a failure is a warning, since the figures it shows are printed
    anyway."""
    try:
        plot(what, path, **extra)
    except Exception as e:
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        console.log(f"warning: could not draw {path}: {first_line(e)}")
        return
    console.log(f"plot written to {path}")


@main.command("stats", cls=SectionedCommand,
              short_help="Per-layer neuron statistics: dead neurons, quantiles of mean and std.")
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@plot_option("each neuron's |mean| against its std, a panel per layer")
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@reports_errors
@builds(data=data_spec, runtime=runtime_spec)
def stats_command(model, data, runtime, quiet, plot_path, force, as_json):
    """Per-layer neuron statistics of MODEL on --data: how many neurons are dead (zero on every sample),
    and the quantiles of their means and standard deviations."""
    console = console_for(quiet)
    draw_it = plot_wanted(plot_path, console)
    check_outputs({"--plot": plot_path if draw_it else None}, {"MODEL": model, "--data": data.data}, force=force)
    options = resolve("statistics", data, {}, kinds=("data", "runtime"), runtime=runtime)
    passed, prepared = measure_groups(model, options, console)
    stats = passed.stats if passed is not None else {}
    if not stats:
        raise InputError("the model has no prunable neuron group (see `onnxprune inspect`)", path=model)
    if draw_it:
        title = f"{os.path.basename(model)} on {os.path.basename(str(data.data))} ({prepared.data.n_samples:,} samples)"
        draw(plots.stats_plot, stats, plot_path, console, title=title, groups=prepared.groups)
    if as_json:
        click.echo(json.dumps(stats_summary(stats), indent=2))
    else:
        click.echo(format_stats(stats), nl=False)


@main.command("bench", cls=SectionedCommand,
              short_help="Latency, throughput, parameters, MACs and file size of models side by side.")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-d", "--data", type=click.Path(),
              help="Inputs to time with (.npz, .npy or shard directory) [default: random data of the right shapes].")
@batch_sizes_option
@onnxruntime_options
@click.option("--batch-axis", "batch_axis", multiple=True, metavar="INPUT=AXIS",
              help="The axis INPUT of --data holds its samples along, when not 0.")
@click.option("--constant-input", "constant_input", multiple=True, metavar="INPUT",
              help="An input of --data given once for all samples.")
@click.option("--min-seconds", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Time each model and batch size for at least this long (after warm-up), and at least 20 runs.")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES[1:]), default=None,
              help="Also time each model quantized by onnxruntime's quantizer (static: calibrated on --data, or on "
                   "random inputs without it: for timing only), right after it, as `prune --quantize` does.")
@click.option("--quantize-stem", is_flag=True, help=STEM_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@reports_errors
@builds(data=data_spec, runtime=runtime_spec)
def bench_command(models, data, runtime, batch_sizes, min_seconds, quantize, quantize_stem, as_json):
    """Time MODELS side by side: median (p50) and p90 latency per run, throughput at the median,
    speed-up over the first model, parameters, multiply-adds per sample and file size (with --quantize,
    each model followed by its int8 copy)."""
    modes_check(quantize, quantize_stem)
    with quantized_copies(list(models), quantize, data, quantize_stem=quantize_stem) as timed:
        rows = bench(timed, data=data.data, batch_sizes=parse_batch_sizes(batch_sizes), options=runtime,
                     min_seconds=min_seconds, batch_axes=data.batch_axes, constant_inputs=data.constant_inputs)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        click.echo(format_bench(rows), nl=False)


@main.command("inspect", cls=SectionedCommand,
              short_help="The neuron groups of a model: sizes, taps, and why any is skipped.")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.option("-d", "--data", type=click.Path(),
              help="Also score every attention head on this .npz (its share of the out-projection's input "
                   "variance), and every removable residual block (its branch's share of the stream's variance).")
@click.option("--mask", "mask_input", metavar="INPUT",
              help="Model input whose zeros mark padding positions (with --data).")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Samples per onnxruntime run (with --data).")
@reports_errors
def inspect_command(model, as_json, data, mask_input, batch_size):
    """List MODEL's neuron groups: sizes, where they are measured, and why any is skipped (with the
    kind of reason, as `inspect --json` gives it in `skip`).

    Attention heads are listed per layer, then the residual blocks (branches removable as a whole with
    --structures ...,blocks); with --data each head's and each block's score is shown."""
    proto = load_model(model)
    groups, split = inspect_split(proto)
    spec = DataSpec(data, mask=mask_input, batch_size=batch_size)
    scores = head_scores(model, spec, console=console_for(as_json)) if data else {}
    blocks, shares = block_scores(model, spec, console=console_for(as_json)) if data else (inspect_blocks(proto), {})
    if as_json:
        click.echo(json.dumps(inspect_records(groups, scores) + block_records(blocks, shares), indent=2))
    else:
        text = format_signature(proto) + format_inspect(groups, split, scores) + inspect_block_lines(blocks, shares)
        click.echo(text, nl=False)
