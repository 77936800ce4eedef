"""onnxprune: remove near-constant neurons from trained ONNX models, validated against the original."""

__version__ = "0.1.0"

# The public names are imported on first use (PEP 562): `import onnxprune`, and the CLI's
# start-up, do not pay for onnx, onnxruntime and numpy until a command needs them.
_EXPORTS = {
    "CRITERIA": "criteria", "keep_masks": "criteria",
    "Dataset": "data", "load_data": "data",
    "InputError": "errors", "OnnxPruneError": "errors", "ValidationFailed": "errors",
    "NeuronGroup": "groups", "find_groups": "groups",
    "load_model": "modelio",
    "METRICS": "metrics", "Budget": "metrics", "Figure": "metrics",
    "DataSpec": "options", "OutputOptions": "options",
    "SelectionConfig": "selection",
    "RuntimeOptions": "session",
    "PruneResult": "api", "block_scores": "api", "default_output": "api", "head_scores": "api", "inspect": "api",
    "inspect_blocks": "api",
    "prune": "api", "statistics": "api", "sweep": "api",
    "SweepResult": "report",
    "apply_masks": "rewrite",
    "ActivationStats": "stats",
    "Tolerances": "validate", "ValidationResult": "validate", "validate": "validate",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return __all__
