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
from onnx_graphsurgeon.logger import G_LOGGER

from . import __version__, plots
from .criteria import CRITERIA
from .errors import EXIT_INTERNAL, InputError, OnnxPruneError, ValidationFailed
from .modelio import atomic_write_text, check_output_path
from .pipeline import (DEFAULT_BATCH_SIZE, DEFAULT_CRITERION, default_output, head_scores, inspect_split, prune,
                       statistics, sweep)
from .bench import bench, format_bench
from .progress import Console, StderrConsole
from .session import GRAPH_OPTIMIZATION, RuntimeOptions, available_providers
from .metrics import METRICS, SCORE_SHARE
from .selection import DEFAULT_GRID, OBJECTIVES


# graphsurgeon logs warnings about the graphs it reads to stderr; the CLI's stderr is its own
# progress and one-line errors.
G_LOGGER.severity = G_LOGGER.CRITICAL
# numpy's overflow and invalid-value warnings (weights or data near the float limits) would print
# source lines on stderr; whatever they spoil, validation judges on the outputs.
warnings.filterwarnings("ignore", category=RuntimeWarning)


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


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune")
def main():
    """Remove near-constant neurons from a trained ONNX model, validated against the original.

    \b
      onnxprune model.onnx --data val.npz            prune (same as `onnxprune prune ...`)
      onnxprune inspect model.onnx                   show the neuron groups found
      onnxprune stats model.onnx --data val.npz      per-layer neuron statistics (--plot)
      onnxprune sweep model.onnx --data val.npz      the size/accuracy trade-off (--plot)
      onnxprune bench a.onnx b.onnx                  latency and size side by side
    """


ONNXRUNTIME_OPTIONS = [
    click.option("--threads", type=click.IntRange(min=0), default=0, help="onnxruntime threads (0: its default)."),
    click.option("--provider", type=click.Choice(available_providers()), default="CPUExecutionProvider",
                 show_default=True, help="onnxruntime execution provider."),
    click.option("--graph-opt", type=click.Choice(list(GRAPH_OPTIMIZATION)), default="all", show_default=True,
                 help="onnxruntime graph optimisation level."),
]


def onnxruntime_options(fn):
    """--threads, --provider and --graph-opt, for commands that run models without data options."""
    for option in reversed(ONNXRUNTIME_OPTIONS):
        fn = option(fn)
    return fn


def data_options(fn):
    """Options shared by the commands that run data through the model."""
    for option in reversed([
        click.option("-d", "--data", required=True, type=click.Path(),
                     help=".npz with one array per model input (and optionally labels), a .npy for a "
                          "single-input model, or a directory of .npz shards (streamed)."),
        click.option("--labels", "labels_key", default="labels", show_default=True,
                     help="Key of the labels array in the .npz (for accuracy)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True),
        click.option("--mask", "mask_input", help="Model input (e.g. attention_mask) whose zeros mark padding "
                                                 "positions to leave out of the statistics."),
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
        click.option("-q", "--quiet", is_flag=True, help="Nothing on stderr but errors (prune: no table either)."),
    ]):
        fn = option(fn)
    return fn


def selection_options(fn):
    """Options shared by `prune` and `sweep`: what ranks neurons, how consumers compensate, the budget."""
    for option in reversed([
        click.option("--criterion", type=click.Choice(sorted(CRITERIA)), default=None,
                     help=f"How neurons are ranked [default: {DEFAULT_CRITERION}; seed with thresholds]."),
        click.option("--relative", is_flag=True,
                     help="Thresholds are multiples of each layer's activation RMS, not absolute values."),
        click.option("--no-fold", is_flag=True,
                     help="No compensation: drop removed neurons as the seed does (implies --no-refit)."),
        click.option("--no-refit", is_flag=True,
                     help="Fold removed neurons' means into the next bias, but do not refit weights."),
        click.option("--metric", type=click.Choice(["auto", *METRICS]), default="auto", show_default=True,
                     help="What judges the pruned model. auto: accuracy with labels (and balanced accuracy for "
                          "imbalanced classes), else decision agreement, plus score change, for classifier "
                          "outputs; per-channel error for other outputs. "
                          + "; ".join(f"{n}: {m.description}" for n, m in METRICS.items()) + "."),
        click.option("--outputs", "outputs", help="Comma-separated model outputs to compare [default: all]."),
        click.option("--max-drop", type=click.FloatRange(min=0), default=0.5, show_default=True,
                     help="Budget: accuracy, agreement, decisions or detections may drop this many "
                          "percentage points."),
        click.option("--min-cosine", type=click.FloatRange(min=0, max=1), default=0.99, show_default=True,
                     help="Budget for --metric cosine: mean cosine similarity to the original outputs."),
        click.option("--max-class-drop", type=click.FloatRange(min=0), default=5.0, show_default=True,
                     help="Guard for imbalanced labels: balanced accuracy (mean per-class recall) may drop this "
                          "many percentage points."),
        click.option("--max-channel-error", type=click.FloatRange(min=0), default=0.01, show_default=True,
                     help="Budget for per-channel error: squared error over the channel's variance, worst channel."),
        click.option("--channel-axis", type=int, default=None,
                     help="Per-channel error: the output axis holding channels [default: 1, or for rank-3 outputs "
                          "the axis that is not a sequence]."),
        click.option("--max-score-change", type=click.FloatRange(min=0), default=0.1, show_default=True,
                     help=f"Guard: at most {SCORE_SHARE:g} %% of samples may move a probability by more than this."),
        click.option("--decision-threshold", type=float, default=0.5, show_default=True,
                     help="Single-score outputs ([batch, 1]) are compared as decisions at this score."),
        click.option("--confidence", type=click.FloatRange(min=0.5, max=1, max_open=True), default=0.95,
                     show_default=True, help="A candidate passes when the upper bound of its loss at this "
                                             "confidence is within the budget."),
        click.option("--eval-data", type=click.Path(),
                     help="Held-out .npz for choosing and validating [default: a split of --data]."),
        click.option("--holdout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.5,
                     show_default=True, help="Fraction of --data held out for choosing, without --eval-data."),
        click.option("--objective", type=click.Choice(OBJECTIVES), default="parameters", show_default=True,
                     help="What the ranking saves first: parameters (size) or macs (compute: rank neurons by "
                          "score per multiply-add they cost)."),
        click.option("--align", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Keep a multiple of this many neurons per layer (0: 8 for Conv channels, 1 otherwise)."),
        click.option("--structures", default="neurons,heads", show_default=True,
                     help="What may be removed, comma-separated: neurons (features, channels), heads (whole "
                          "attention heads)."),
    ]):
        fn = option(fn)
    return fn


def budget_options(metric, outputs, max_drop, min_cosine, max_class_drop, max_channel_error, max_score_change,
                   decision_threshold, confidence, channel_axis=None) -> dict:
    """The selection options' keyword arguments for prune and sweep."""
    return dict(metric=metric, outputs=[o.strip() for o in outputs.split(",") if o.strip()] if outputs else None,
                max_drop=max_drop, min_cosine=min_cosine, max_class_drop=max_class_drop,
                max_channel_error=max_channel_error,
                max_score_change=max_score_change, decision_threshold=decision_threshold, confidence=confidence,
                channel_axis=channel_axis)


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


def layout_of(batch_axis, constant_input) -> dict:
    return {"batch_axes": parse_batch_axes(batch_axis), "constant_inputs": parse_names(constant_input)}


def runtime_options(threads: int, provider: str, graph_opt: str) -> RuntimeOptions:
    return RuntimeOptions(threads=threads, providers=(provider,), graph_optimization=graph_opt)


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


def compensation_of(no_fold: bool, no_refit: bool) -> str:
    return "none" if no_fold else "fold" if no_refit else "refit"


def console_for(quiet: bool) -> Console:
    return Console() if quiet else StderrConsole()


@main.command("prune")
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
@click.option("-f", "--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("--independent-refit/--sequential-refit", default=None,
              help="Refit each layer from the original activations only, or layer by layer on the pruned "
                   "model's own activations (two calibration passes per layer and candidate) [default: "
                   "sequential for models of at most 5 M parameters].")
@click.option("--bench", "with_bench", is_flag=True, help="Also time the original and pruned models (see `bench`).")
@batch_sizes_option
@reports_errors
def prune_command(model, data, labels_key, batch_size, mask_input, batch_axis, constant_input, threads, provider,
                  graph_opt, workers, dask_address, quiet, criterion, relative, no_fold, no_refit, metric, outputs,
                  max_drop, min_cosine, max_class_drop, max_channel_error, channel_axis, max_score_change,
                  decision_threshold, confidence, eval_data, holdout, objective, align, structures, output,
                  mean_threshold, std_threshold, fraction, report_path, as_json, force, independent_refit, with_bench,
                  batch_sizes):
    """Prune MODEL with statistics measured on --data; write a smaller, validated model.

    With no threshold, the smallest model whose metric stays within the budget on held-out
    data is chosen. --criterion dead removes only neurons that never fire (outputs unchanged).
    """
    output = output or str(default_output(model))
    sizes = parse_batch_sizes(batch_sizes) if with_bench else None
    layout = layout_of(batch_axis, constant_input)
    options = runtime_options(threads, provider, graph_opt)
    console = console_for(quiet)
    try:
        result = prune(model, data, output=output, eval_data=eval_data, holdout=holdout, criterion=criterion,
                       mean_threshold=mean_threshold, std_threshold=std_threshold, relative=relative,
                       fraction=fraction, **budget_options(metric, outputs, max_drop, min_cosine, max_class_drop,
                                                           max_channel_error, max_score_change, decision_threshold,
                                                           confidence, channel_axis),
                       compensation=compensation_of(no_fold, no_refit), batch_size=batch_size,
                       labels=labels_key, force=force, mask=mask_input, align=align, objective=objective,
                       structures=structures, console=console,
                       sequential=None if independent_refit is None else not independent_refit,
                       options=options, workers=workers, cluster=dask_address, **layout)
    except ValidationFailed as e:
        if e.report is not None and report_path:
            atomic_write_text(report_path, e.report.to_json())
        raise
    rows = None
    if sizes:
        console.log("timing the original and the pruned model")
        try:
            rows = bench([model, output], data=data, batch_sizes=sizes, options=options, labels=labels_key,
                         **layout)
            result.report.bench = [r.to_dict() for r in rows]
        except Exception as e:  # timings only inform: the pruned model is written and valid
            if os.environ.get("ONNXPRUNE_DEBUG"):
                raise
            result.report.bench = None
            console.log(f"warning: timing failed, reported as unknown: {first_line(e)}")
    if report_path:
        atomic_write_text(report_path, result.report.to_json())
    if as_json:
        click.echo(result.report.to_json(), nl=False)
    elif not quiet:
        click.echo(result.report.format_table(), nl=False)
        if rows:
            click.echo(format_bench(rows), nl=False)


@main.command("sweep")
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@selection_options
@click.option("--grid", help="Comma-separated fractions of neurons to remove [default: 0,0.05,...,0.95].")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Draw size reduction against the metric to this PNG (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@reports_errors
def sweep_command(model, data, labels_key, batch_size, mask_input, batch_axis, constant_input, threads, provider,
                  graph_opt, workers, dask_address, quiet, criterion, relative, no_fold, no_refit, metric, outputs,
                  max_drop, min_cosine, max_class_drop, max_channel_error, channel_axis, max_score_change,
                  decision_threshold, confidence, eval_data, holdout, objective, align, structures, grid, plot_path,
                  as_json):
    """Evaluate a grid of pruning amounts on held-out data: the size/accuracy trade-off.

    Statistics are gathered once; each candidate costs one pass of the pruned model.
    """
    fractions = DEFAULT_GRID if grid is None else _parse_grid(grid)
    layout = layout_of(batch_axis, constant_input)
    if plot_path:
        plots.require_matplotlib()
        check_output_path(plot_path, force=True)
    result = sweep(model, data, eval_data=eval_data, holdout=holdout, criterion=criterion or DEFAULT_CRITERION,
                   relative=relative, compensation=compensation_of(no_fold, no_refit), grid=fractions,
                   **budget_options(metric, outputs, max_drop, min_cosine, max_class_drop, max_channel_error,
                                    max_score_change, decision_threshold, confidence, channel_axis),
                   batch_size=batch_size,
                   labels=labels_key, mask=mask_input, align=align, objective=objective, structures=structures,
                   console=console_for(quiet),
                   options=runtime_options(threads, provider, graph_opt), workers=workers, cluster=dask_address,
                   **layout)
    if plot_path:
        draw(plots.tradeoff_plot, result, plot_path)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(format_sweep(result), nl=False)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def draw(plot, what, path) -> None:
    """Draw a plot; a failure is a warning, since the figures it shows are printed anyway."""
    try:
        plot(what, path)
    except Exception as e:
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        click.echo(f"warning: could not draw {path}: {first_line(e)}", err=True)


def _parse_grid(text: str) -> list[float]:
    return parse_list(text, float, "numbers", "--grid", lambda v: 0 <= v < 1, "fractions must be in [0, 1)")


def format_sweep(result) -> str:
    names = [g.id for g in result.groups if g.id in result.stats]
    head_dim = {g.id: g.head_dim for g in result.groups if g.kind == "heads"}  # heads are counted as heads
    first = result.candidates[0].primary if result.candidates else None
    unit = f" ({first.unit})" if first is not None and first.unit else ""
    label = (first.label if first is not None else "loss") + unit
    lines = [f"criterion {result.criterion}, {result.compensation}; {result.config.confidence:.0%} upper bounds",
             *result.explanation, *(f"warning: {w}" for w in result.warnings),
             f"statistics: {result.provenance['statistics']}", f"evaluation: {result.provenance['evaluation']}",
             f"samples: {first.samples if first is not None else 0} held-out; a candidate passes when every "
             "metric's bound is within its budget", "",
             f"{'candidate':<14} {'kept per layer (h=heads)':<24} {'parameters':>11} {'reduction':>9} "
             f"{label:>24} {'bound':>8}  budget"]
    for c in result.candidates:
        kept = "/".join(f"{c.kept[n] // head_dim[n]}h" if n in head_dim else str(c.kept[n]) for n in names)
        failing = [f.metric for f in c.figures if not f.passed]
        mark = "ok" if c.within_budget else "- (" + ", ".join(dict.fromkeys(failing)) + ")"
        if result.chosen is c:
            mark = "ok  <- chosen"
        lines.append(f"{c.label:<14} {kept:<24} {c.parameters:>11,} {1 - c.parameters / result.parameters_before:>9.1%} "
                     f"{c.drop:>24.3g} {c.bound:>8.3g}  {mark}")
    return "\n".join(lines) + "\n"


@main.command("stats")
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Draw mean against std per layer to this PNG (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@reports_errors
def stats_command(model, data, labels_key, batch_size, mask_input, batch_axis, constant_input, threads, provider,
                  graph_opt, workers, dask_address, quiet, plot_path, as_json):
    """Per-layer neuron statistics: how many are dead, quantiles of mean and std."""
    layout = layout_of(batch_axis, constant_input)
    if plot_path:
        plots.require_matplotlib()
        check_output_path(plot_path, force=True)
    stats = statistics(model, data, batch_size=batch_size, labels=labels_key, mask=mask_input,
                       options=runtime_options(threads, provider, graph_opt), console=console_for(quiet),
                       workers=workers, cluster=dask_address, **layout)
    if not stats:
        raise InputError("the model has no prunable neuron group (see `onnxprune inspect`)", path=model)
    if plot_path:
        draw(plots.stats_plot, stats, plot_path)
    table = {name: s.summary() for name, s in stats.items()}
    if as_json:
        click.echo(json.dumps(table, indent=2))
    else:
        width = max(len(n) for n in table)
        click.echo(f"{'layer':<{width}}  {'neurons':>7}  {'dead':>5}  {'mean: min / median / max':>28}  "
                   f"{'std: min / median / max':>28}")
        for name, t in table.items():
            m, sd = t["mean_quantiles"], t["std_quantiles"]
            click.echo(f"{name:<{width}}  {t['neurons']:>7}  {t['dead']:>5}  "
                       f"{m[0]:>8.3g} / {m[2]:>8.3g} / {m[4]:>8.3g}  {sd[0]:>8.3g} / {sd[2]:>8.3g} / {sd[4]:>8.3g}")


@main.command("bench")
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
              help="Time each model and batch size for at least this long (after warm-up).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@reports_errors
def bench_command(models, data, batch_sizes, threads, provider, graph_opt, batch_axis, constant_input, min_seconds,
                  as_json):
    """Time MODELS side by side: latency p50/p90, throughput, speed-up over the first, parameters, MACs, size."""
    rows = bench(list(models), data=data, batch_sizes=parse_batch_sizes(batch_sizes),
                 options=runtime_options(threads, provider, graph_opt), min_seconds=min_seconds,
                 **layout_of(batch_axis, constant_input))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        click.echo(format_bench(rows), nl=False)


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.option("-d", "--data", type=click.Path(),
              help="Also score every attention head on this .npz (its share of the out-projection's input "
                   "variance).")
@click.option("--mask", "mask_input", help="Model input whose zeros mark padding positions (with --data).")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@reports_errors
def inspect_command(model, as_json, data, mask_input, batch_size):
    """List MODEL's neuron groups: sizes, where they are measured, and why any is skipped.

    Attention heads are listed per layer; with --data each head's score is shown."""
    groups, split = inspect_split(model)
    scores = head_scores(model, data, mask=mask_input, batch_size=batch_size,
                         console=console_for(as_json)) if data else {}
    if as_json:
        out = []
        for g in groups:
            d = g.to_dict()
            if g.kind == "heads":
                d["heads"], d["kv_heads"] = g.size // g.head_dim, (g.size // g.unit if g.unit != g.head_dim
                                                                   else None)
                d["head_scores"] = scores[g.id].tolist() if g.id in scores else None
            out.append(d)
        click.echo(json.dumps(out, indent=2))
        return
    if not groups:
        click.echo("no Gemm/MatMul layers found")
        return
    width = max(len(g.id) for g in groups)
    for g in groups:
        size = "?" if g.size is None else str(g.size)
        if g.prunable:
            path = " -> ".join([g.producer_op, *g.region_ops, f"[{', '.join(g.consumers)}]"])
            if g.balanced:  # grouped Convs: say that blocks keep equal counts
                path += "; equal kept counts in " + ", ".join(f"{len(b)} blocks of {b[0][1] - b[0][0]}"
                                                              for b in g.balanced)
            if len(g.producers) > 1 or len(g.taps) > 1:  # coupled: say what shares the neurons
                path = f"coupled: producers {', '.join(g.producer_names)}; taps {', '.join(g.taps)}; {path}"
                click.echo(f"{g.id:<{width}}  {size:>6} neurons  prunable  {path}")
                continue
            click.echo(f"{g.id:<{width}}  {size:>6} neurons  prunable  tap {g.tap!r}: {path}")
        else:
            click.echo(f"{g.id:<{width}}  {size:>6} neurons  skipped   {g.reason}")
    heads = [g for g in groups if g.kind == "heads"]
    for line in split:
        click.echo(f"split for its heads: {line}")
    if heads:
        click.echo("\nattention heads per layer" + (" (score: share of the out-projection's input variance)"
                                                   if scores else ""))
        for g in heads:
            count = f"{g.size // g.head_dim} heads of {g.head_dim}"
            if g.unit != g.head_dim:
                count += f", {g.size // g.unit} key/value heads"
            line = f"  {g.id:<{width}}  {count}  {'prunable' if g.prunable else 'skipped'}"
            if g.id in scores:
                unit = "key/value group" if g.unit != g.head_dim else "head"
                line += f"; per {unit}: " + " ".join(f"{v:.3f}" for v in scores[g.id])
            click.echo(line)
    n = sum(g.prunable for g in groups)
    click.echo(f"{n} of {len(groups)} group(s) prunable, {sum(g.size for g in groups if g.prunable)} neurons")
