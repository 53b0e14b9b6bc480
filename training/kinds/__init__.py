"""Registry of the torch-trained detector kinds: each lives in its own module exposing
``INFO: KindInfo``. The numpy-fitted kind (``bandstat``, and ``auto`` which chooses its
scorer by measurement) lives in ``asd_edge.learning.bandstat`` / ``training.bandfit``."""

from __future__ import annotations

import importlib

from .base import InputStats, KindInfo, ScoreModel

__all__ = ["DEFAULT_KIND", "KIND_NAMES", "InputStats", "KindInfo", "ScoreModel", "get_kind"]

KIND_NAMES: tuple[str, ...] = ("dense_ae", "cnn_ae", "lstm_ae", "gmm", "ocsvm", "cnn_attention")
"""Every torch-trained kind ``asd-train fit --model`` accepts (besides ``auto`` and
``bandstat``, see ``training.bandfit.NUMPY_KINDS``)."""

# Chosen by measurement (benchmarks/eval_shared_data.py, benchmarks/results/shared_data.jsonl,
# 2026-11-21): real MIMII pump / ToyADMOS toycar / toyconveyor clips, split by file, each kind
# with its defaults (<= 50 epochs, patience 8). File-score (mean) AUC / pAUC, mean over the
# three machines, 3 splits (seeds 0-2):   cnn_ae 0.641 / 0.743, gmm 0.640 / 0.721,
#   ocsvm 0.592 / 0.660, dense_ae 0.578 / 0.695, lstm_ae 0.552 / 0.693.
# 10 splits (seeds 0-9): cnn_ae 0.621 / 0.732, gmm 0.583 / 0.638, lstm_ae 0.583 / 0.680,
#   dense_ae 0.578 / 0.673, ocsvm 0.556 / 0.634.
# cnn_ae ties gmm on AUC over 3 splits and wins the pAUC tie-break; over 10 splits it leads on
# both, and it is the steadiest where anything works (pump: AUC 0.815 +- 0.062 over 10 splits,
# gmm 0.689 +- 0.192, dense_ae 0.728 +- 0.195). Its cost is acceptable: ~10 s to fit these
# clips on 2 cores (gmm ~1 s), 270 kB, ~0.6 ms per 1 s window in the daemon (gmm ~0.35 ms).
# No kind beats chance on toyconveyor (3 training files from 3 machine ids): the margins are
# within the split-to-split spread, so retrain and compare (gmm first) on your own data.
#
# Superseded (issue 10): on the same recordings the numpy-fitted ``bandstat`` kind, chosen
# per machine by ``auto`` on faults injected into the user's own normal audio, beats every
# kind above and the loudness reference; see benchmarks/results/real_data.jsonl and README.
DEFAULT_KIND = "auto"
"""The kind ``asd-train fit`` uses without ``--model`` (chosen by measurement, see above)."""


def get_kind(name: str) -> KindInfo:
    """The kind called ``name``; ValueError listing the known kinds otherwise."""
    if name not in KIND_NAMES:
        raise ValueError(f"unknown detector kind {name!r}; expected one of {', '.join(KIND_NAMES)}")
    info: KindInfo = importlib.import_module(f"training.kinds.{name}").INFO
    return info
