"""Registry of detector kinds: each lives in its own module exposing ``INFO: KindInfo``."""

from __future__ import annotations

import importlib

from .base import InputStats, KindInfo, ScoreModel

__all__ = ["DEFAULT_KIND", "KIND_NAMES", "InputStats", "KindInfo", "ScoreModel", "get_kind"]

KIND_NAMES: tuple[str, ...] = ("dense_ae", "cnn_ae", "lstm_ae", "gmm", "ocsvm", "cnn_attention")
"""Every kind ``asd-train fit --model`` accepts."""

DEFAULT_KIND = "dense_ae"
"""The kind ``asd-train fit`` uses without ``--model`` (chosen by measurement; see README)."""


def get_kind(name: str) -> KindInfo:
    """The kind called ``name``; ValueError listing the known kinds otherwise."""
    if name not in KIND_NAMES:
        raise ValueError(f"unknown detector kind {name!r}; expected one of {', '.join(KIND_NAMES)}")
    info: KindInfo = importlib.import_module(f"training.kinds.{name}").INFO
    return info
