"""Exceptions onnxprune raises, each carrying the CLI exit code it maps to.

Exit codes (documented in the README):
  0  success
  1  internal error (a bug: please report it)
  2  bad usage or bad input (model, data, paths, options)
  3  the pruned model failed validation; nothing was written
  4  --quantize: the original model quantized alone breaks the budget; nothing was pruned or written
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_VALIDATION_FAILED = 3
EXIT_QUANTIZED_OVER_BUDGET = 4


class OnnxPruneError(Exception):
    """Base class: a problem onnxprune can explain in one line."""

    exit_code = EXIT_INTERNAL


class InputError(OnnxPruneError):
    """The model, the data, a path or an option is unusable.

    `path` is the file at fault and `field` the part of it (an array key, a model input or
    output, an attribute, an option name), so that callers can act on an error without
    parsing its message; the message names the file when there is one.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path=None, field: str | None = None):
        path = None if path is None else str(path)
        if path and path not in message:
            message = f"{path}: {message}"
        super().__init__(message)
        self.path = path
        self.field = field


class ValidationFailed(OnnxPruneError):
    """The pruned model did not pass validation, so it was not written."""

    exit_code = EXIT_VALIDATION_FAILED

    def __init__(self, message, result=None, report=None):
        super().__init__(message)
        self.result = result
        self.report = report


class QuantizationOverBudget(OnnxPruneError):
    """The original model quantized alone breaks the budget: no pruned and quantized model can be certified
    within it, so the search does not start. `figures` are the quantized original's."""

    exit_code = EXIT_QUANTIZED_OVER_BUDGET

    def __init__(self, message, figures=None):
        super().__init__(message)
        self.figures = figures or []
