"""The errors training raises on purpose; ``asd-train`` maps each to an exit code."""

from __future__ import annotations

__all__ = ["DataError", "ExportError", "TrainingError"]


class TrainingError(Exception):
    """Base class of every error training raises on purpose."""


class DataError(TrainingError):
    """The data cannot make a model: no usable files, no normal training windows,
    labels missing for a supervised kind, a manifest that does not parse (exit 65)."""


class ExportError(TrainingError):
    """The exported ONNX is invalid or disagrees with the framework beyond the stated
    tolerance (exit 70): the model is not written as ``model.onnx``."""
