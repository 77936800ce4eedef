"""A run's options as objects, each built once: by the CLI's option groups or from the API's keywords.

- `DataSpec`: where the samples come from and how they are fed;
- `SelectionConfig` (selection.py): which neurons go, how consumers compensate, how a candidate is judged;
- `RuntimeOptions` (session.py): onnxruntime's settings, and the processes or cluster of the statistics pass;
- `OutputOptions`: where the pruned model goes, and the tolerances of the exact check.

The API also takes them one keyword at a time (`prune(m, d, max_drop=1, threads=2)`): `resolve`
sorts such keywords into their objects, and names the objects when a keyword is unknown.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .data import DEFAULT_LABELS_KEY, Dataset, load_data
from .errors import InputError
from .metrics import Budget
from .selection import SelectionConfig
from .session import RuntimeOptions
from .validate import Tolerances

DEFAULT_BATCH_SIZE = 256
DEFAULT_HOLDOUT = 0.5  # the held-out share of a single split (folds=1)
# Cross-fitting folds of a budget search without --eval-data or --holdout. The fold models are built from
# (K-1)/K of the data: more folds bring them closer to the written model (built from all of it), so the
# budget certifies more (MNIST MLP, 1,000 samples, 1 pp, 24 splits: median -64.6 % parameters with 2 folds,
# -72.0 % with 6, -73.2 % with 8), at K builds per candidate and K sets of statistics (Gram matrices
# included). Small models take 6, large ones 2.
SMALL_MODEL_FOLDS, LARGE_MODEL_FOLDS = 6, 2
SMALL_MODEL_PARAMETERS = 2_000_000
DEFAULT_FOLDS = f"{SMALL_MODEL_FOLDS} up to {SMALL_MODEL_PARAMETERS:,} parameters, else {LARGE_MODEL_FOLDS}"


@dataclass
class DataSpec:
    """The samples a run reads: `data` feeds the statistics and, without `eval_data`, judges the
    candidates of a budget search too: by cross-fitting on `folds` folds (each fold judges what the
    others' statistics build, so every sample is evidence), or, with `holdout`, by a single split
    that keeps that share apart (0: judge on the statistics' own samples). `labels` is the labels
    array's key (None: no labels), `mask` an input whose zeros mark padding; `batch_axes` ({input:
    axis}) and `constant_inputs` (names) describe inputs whose samples are not along axis 0."""

    data: object = None
    eval_data: object = None
    holdout: float | None = None
    folds: int | None = None
    labels: str | None = DEFAULT_LABELS_KEY
    mask: str | None = None
    batch_axes: dict | None = None
    constant_inputs: tuple = ()
    batch_size: int = DEFAULT_BATCH_SIZE

    def check(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.holdout is not None and not 0 <= self.holdout < 1:
            raise InputError(f"holdout must be in [0, 1), got {self.holdout:g}")
        if self.folds is not None and (not isinstance(self.folds, int) or self.folds < 1):
            raise InputError(f"folds must be a positive integer, got {self.folds!r}")
        if self.folds is not None and self.folds > 1 and (self.holdout is not None or self.eval_data is not None):
            raise InputError("cross-fitting folds judge candidates on --data itself: give --folds, or --holdout, "
                             "or --eval-data, not two of them", field="--folds")

    def crossfit_folds(self, parameters: int) -> int:
        """The folds a budget search on a model of `parameters` cross-fits on (1: none, a single split or
        --eval-data judges)."""
        if self.eval_data is not None or self.holdout is not None:
            return 1
        if self.folds is not None:
            return self.folds
        return SMALL_MODEL_FOLDS if parameters <= SMALL_MODEL_PARAMETERS else LARGE_MODEL_FOLDS

    @property
    def holdout_share(self) -> float:
        """The held-out share of a single split."""
        return DEFAULT_HOLDOUT if self.holdout is None else self.holdout

    def load(self, model, which: str = "data") -> Dataset | None:
        """`data` (or `eval_data`) loaded and checked against the model's inputs; None when not given."""
        source = getattr(self, which)
        if source is None:
            return None
        return load_data(source, model, labels_key=self.labels, batch_axes=self.batch_axes,
                         constant_inputs=self.constant_inputs)

    def to_dict(self, loaded: Dataset | None = None) -> dict:
        """The report's data settings; with the data as loaded, the batch size it is fed at and its source."""
        settings = {"mask": self.mask, "batch_size": self.batch_size}
        if loaded is not None:
            settings.update(batch_size=loaded.batch_size(self.batch_size), data=Path(loaded.source).name,
                            samples=loaded.n_samples)
        return settings


@dataclass
class OutputOptions:
    """Where the pruned model is written (None: nowhere), whether an existing file may be replaced, and
    how far outputs may move when they must not change (only exactly-dead neurons removed)."""

    path: Path | str | None = None
    force: bool = False
    tolerances: Tolerances = field(default_factory=Tolerances)

    def __post_init__(self):
        self.path = None if self.path is None else Path(self.path)
        self.tolerances = self.tolerances or Tolerances()

    def to_dict(self) -> dict:
        return {"output": None if self.path is None else str(self.path), "force": self.force,
                "atol": self.tolerances.atol, "rtol": self.tolerances.rtol}


@dataclass
class Options:
    """The four option objects of one call."""

    data: DataSpec
    selection: SelectionConfig | None = None
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    output: OutputOptions = field(default_factory=OutputOptions)


def _names(cls, *, skip=(), rename=None) -> tuple:
    rename = rename or {}
    return tuple(rename.get(f.name, f.name) for f in fields(cls) if f.name not in skip)


# keyword -> the object it belongs to; each object's own fields, so a new field is a new keyword
KEYWORDS = {
    "data": _names(DataSpec, skip=("data",)),
    "selection": _names(SelectionConfig, skip=("budget",)) + _names(Budget),
    "runtime": _names(RuntimeOptions, skip=("runs",)),
    "output": _names(OutputOptions, skip=("path",)),
}
# the objects' names before they were objects: `config=` a SelectionConfig, `options=` a RuntimeOptions
ALIASES = {"config": "selection", "options": "runtime"}


def resolve(command: str, data, shortcuts: dict, *, kinds=("data", "selection", "runtime", "output"),
            selection=None, runtime=None, output=None) -> Options:
    """The option objects of a call: those given, refined by keyword shortcuts.

    `data` is a DataSpec or what its `data` field takes (a path or arrays); `output` an OutputOptions or a
    path. Keywords of DataSpec, RuntimeOptions and OutputOptions fields override those of a given object;
    selection keywords build a SelectionConfig and cannot be mixed with one."""
    shortcuts = dict(shortcuts)
    for alias, kind in ALIASES.items():
        if alias in shortcuts and kind in kinds:
            given = shortcuts.pop(alias)
            if kind == "selection":
                selection = selection if given is None else given
            else:
                runtime = runtime if given is None else given
    sorted_out = {kind: {} for kind in kinds}
    for name, value in shortcuts.items():
        kind = next((k for k in kinds if name in KEYWORDS[k]), None)
        if kind is None:
            raise TypeError(_unknown(command, name, kinds))
        sorted_out[kind][name] = value

    spec = data if isinstance(data, DataSpec) else DataSpec(data)
    options = Options(replace(spec, **sorted_out.get("data", {})))
    if "selection" in kinds:
        options.selection = _selection(selection, sorted_out["selection"])
    options.runtime = replace(runtime or RuntimeOptions(), **sorted_out.get("runtime", {}))
    if "output" in kinds:
        out = output if isinstance(output, OutputOptions) else OutputOptions(output)
        options.output = replace(out, **sorted_out["output"])
    return options


def _selection(config: SelectionConfig | None, keywords: dict) -> SelectionConfig:
    """The selection config from an explicit one or the keyword options (not both)."""
    given = {k: v for k, v in keywords.items() if v is not None}
    if config is None:
        config = SelectionConfig.from_options(**given)
    elif given:
        raise InputError(f"give either config= or the options {', '.join(sorted(given))}, not both")
    config.check()
    return config


def _unknown(command: str, name: str, kinds) -> str:
    known = [n for k in kinds for n in KEYWORDS[k]] + [a for a, k in ALIASES.items() if k in kinds]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    objects = {"data": "DataSpec(data, ...)", "selection": "selection=SelectionConfig(...)",
               "runtime": "runtime=RuntimeOptions(...)", "output": "output=OutputOptions(...)"}
    form = ", ".join(objects[k] for k in kinds)
    return (f"{command}() got an unexpected keyword argument {name!r}{hint}; options are objects: "
            f"{command}(model, {form}), or keywords named like their fields")
