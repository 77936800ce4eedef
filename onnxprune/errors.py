"""Exceptions onnxprune raises, each carrying the CLI exit code it maps to.

Exit codes (documented in the README):
  0  success
  1  internal error (a bug: please report it)
  2  bad usage or bad input (model, data, paths, options)
  3  the pruned model failed validation; nothing was written
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_VALIDATION_FAILED = 3


class OnnxPruneError(Exception):
    """Base class: a problem onnxprune can explain in one line."""

    exit_code = EXIT_INTERNAL


class InputError(OnnxPruneError):
    """The model, the data, a path or an option is unusable."""

    exit_code = EXIT_BAD_INPUT


class ValidationFailed(OnnxPruneError):
    """The pruned model did not pass validation, so it was not written."""

    exit_code = EXIT_VALIDATION_FAILED

    def __init__(self, message, result=None, report=None):
        super().__init__(message)
        self.result = result
        self.report = report
