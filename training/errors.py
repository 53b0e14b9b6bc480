"""The errors training raises on purpose, and the exit codes ``asd-train`` maps them to."""

from __future__ import annotations

__all__ = [
    "EXIT_CANTCREAT",
    "EXIT_CODES",
    "EXIT_DATA",
    "EXIT_FAILED",
    "EXIT_NOHOST",
    "EXIT_NOINPUT",
    "EXIT_OK",
    "EXIT_SOFTWARE",
    "EXIT_TEMPFAIL",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "DataError",
    "ExportError",
    "TrainingError",
]

EXIT_OK = 0
EXIT_FAILED = 1
"""Finished, but some inputs were skipped (each is reported by name)."""
EXIT_USAGE = 2
EXIT_DATA = 65
"""EX_DATAERR: the data cannot make a model (no usable files, no normal training data,
labels missing for a supervised kind, ...)."""
EXIT_NOINPUT = 66
"""EX_NOINPUT: an input file or folder does not exist or cannot be read."""
EXIT_SOFTWARE = 70
"""EX_SOFTWARE: internal error, or an export whose ONNX disagrees with the framework."""
EXIT_UNAVAILABLE = 69
"""EX_UNAVAILABLE: a service (broker, tracker) could not be reached."""
EXIT_NOHOST = 68
"""EX_NOHOST: no such device on the broker (it never left a retained status there)."""
EXIT_CANTCREAT = 73
"""EX_CANTCREAT: an output file cannot be created (or exists and --force was not given)."""
EXIT_TEMPFAIL = 75
"""EX_TEMPFAIL: no answer in time (a device may be offline); trying later may work."""

EXIT_CODES = """exit codes:
  0   success
  1   finished, but some inputs were skipped (each is reported by name)
  2   bad command-line usage
  65  the data cannot make a model (EX_DATAERR); the message says why
  66  an input does not exist or cannot be read (EX_NOINPUT)
  69  a service (broker, tracker) could not be reached (EX_UNAVAILABLE)
  70  internal error, or the exported ONNX disagrees with the framework (EX_SOFTWARE)
  75  no answer in time: a device may be offline (EX_TEMPFAIL; push, rollback)
"""
"""The exit codes as ``asd-train --help`` and each subcommand's help list them."""


class TrainingError(Exception):
    """Base class of every error training raises on purpose."""


class DataError(TrainingError):
    """The data cannot make a model: no usable files, no normal training windows,
    labels missing for a supervised kind, a manifest that does not parse (exit 65)."""


class ExportError(TrainingError):
    """The exported ONNX is invalid or disagrees with the framework beyond the stated
    tolerance (exit 70): the model is not written as ``model.onnx``."""
