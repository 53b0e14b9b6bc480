"""The ``bandstat`` detector: per-band statistics of a window's log-mel frames, and a
distance to normal that a change in a few bands cannot hide in. numpy only.

Made for a few minutes of normal sound. Each 1 s window of log-mel frames (fixed dB
reference: absolute level is kept) becomes ``3 * n_mels + 1`` statistics:

- per band, the mean level over the window's frames (dB),
- per band, the spread of the level over the frames (dB, standard deviation),
- per band, the mean absolute frame-to-frame change (dB: impacts, rattle, modulation),
- the broadband level (dB of the mean total mel power).

Fitting standardises each statistic by the normal windows' median and robust spread
(1.4826 x MAD, floored at ``floor_db``, 1 dB by default: recordings of one machine made
at different times differ by about that much in a band even where the windows of one
recording agree more closely) and then scores a window by one of:

- ``topk``: the mean of the ``k`` largest standardised deviations ``|z|``. A fault
  that adds a few dB in one band moves that band's ``z`` by several spreads; averaged
  over all bands (as a reconstruction error is) it would vanish, here it is the score.
- ``knn``: the distance (RMS over statistics, in spreads) to the nearest of a compact
  coreset of normal windows (greedy k-centre, at most ``coreset`` windows): normal
  sound with several modes (loads, speeds) is not forced into one Gaussian.
- ``knn_topk``: the nearest coreset window as above, then the mean of the ``k`` largest
  deviations from it, each in units of the spread of such deviations between normal
  windows of *different* recordings: several modes, and a change in a few bands still
  counts in full;
- ``maha``: a Mahalanobis distance (RMS per statistic) under a Ledoit-Wolf shrunk
  covariance of the standardised statistics.

The distance is one channel; the other is the loudness deviation, ``|z|`` of the
broadband level: what a level meter sees, and on real recordings of several machines or
set-ups the one statistic that agrees across them. The cross-fitted calibration
(``asd_edge.learning.crossfit``) gives each channel its own threshold at half the false-alarm
budget, and the score is ``max(distance / its threshold, loudness / its threshold)``:
a fault is caught by either, and neither hides the other.

Every scorer also gives the per-band deviation of the window's mean level from normal
in dB (from the median, or for ``knn`` from the nearest normal window): the model's
second output ``bands``, from which the daemon says which band changed.

:func:`fit` is numpy only (no torch, no scikit-learn) so that a device can fit it;
:func:`to_onnx` builds the contract graph with the ``onnx`` helper API, and
:meth:`BandStat.score` is the same computation in numpy (the export's parity check
holds the two together).
"""

from .graph import to_onnx
from .model import (
    DEFAULTS,
    SCORERS,
    STOPPED_MARGIN_DB,
    BandStat,
    band_edges_hz,
    fit,
    fit_statistics,
    fuse,
    level_stats,
    statistics,
)

__all__ = [
    "DEFAULTS",
    "SCORERS",
    "STOPPED_MARGIN_DB",
    "BandStat",
    "band_edges_hz",
    "fit",
    "fit_statistics",
    "fuse",
    "level_stats",
    "statistics",
    "to_onnx",
]
