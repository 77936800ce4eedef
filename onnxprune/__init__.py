"""onnxprune: remove near-constant neurons from trained ONNX models, validated against the original."""

__version__ = "0.1.0"

from .criteria import CRITERIA, keep_masks  # noqa: E402
from .data import Dataset, load_data  # noqa: E402
from .errors import InputError, OnnxPruneError, ValidationFailed  # noqa: E402
from .groups import NeuronGroup, find_groups  # noqa: E402
from .metrics import METRICS, Budget, Figure  # noqa: E402
from .modelio import load_model  # noqa: E402
from .pipeline import PruneResult, SweepResult, default_output, inspect, prune, statistics, sweep  # noqa: E402
from .rewrite import apply_masks  # noqa: E402
from .selection import SelectionConfig  # noqa: E402
from .stats import ActivationStats  # noqa: E402
from .validate import Tolerances, ValidationResult, validate  # noqa: E402

__all__ = [
    "ActivationStats", "Budget", "CRITERIA", "Dataset", "Figure", "METRICS", "SelectionConfig", "InputError", "NeuronGroup", "OnnxPruneError",
    "PruneResult", "Tolerances", "ValidationFailed", "ValidationResult", "__version__", "apply_masks",
    "default_output", "find_groups", "inspect", "keep_masks", "load_data", "load_model", "prune",
    "statistics", "sweep", "SweepResult", "validate",
]
