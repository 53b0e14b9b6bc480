"""One normal recording (or a piece of one) as the fit sees it (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MARKED_PREFIX", "MAX_INJECTED_S", "MIN_PIECE_S", "Recording"]

MIN_PIECE_S = 10.0
"""A single long recording (or a live stream) is cut into pieces of at least this many
seconds that serve as the cross-fitting's sources."""
MARKED_PREFIX = "marked-"
"""Sources named so hold sound an operator marked normal (a false alarm's clip): the fit
keeps them apart from the normal recordings (``fitting.fit_recordings``'s ``marked``)."""
MAX_INJECTED_S = 30.0
"""Only the first seconds of a recording are used for injected faults (cost)."""

FloatArray = npt.NDArray[np.float32]


@dataclass
class Recording:
    """One normal recording (or piece of one) at the model's rate, cut into windows."""

    source: str
    """The source recording; folds never split a source."""
    sample_rate: int
    """The model's rate, Hz."""
    stream: FloatArray
    """Model-rate samples (pre-filtered as the model needs); faults are injected into its
    first :data:`MAX_INJECTED_S` seconds, which is all a ``Collector`` keeps."""
    logmel: FloatArray
    """Model input ``[n, n_frames, n_mels]`` of the windows (all of them from a whole
    stream; those of the kept audio from a ``Collector``): the export's parity check."""
    stats: npt.NDArray[np.float64]
    """``bandstat.statistics`` of each window ``[n, 3 n_mels + 1]``, computed once."""
    end_s: npt.NDArray[np.float64]
    """Each window's end, seconds from the recording's start."""
    levels_dbfs: npt.NDArray[np.float64]
    """Each window's level (mean square, dBFS)."""

    @property
    def duration_s(self) -> float:
        """Length in seconds, from the window grid."""
        return float(self.end_s[-1]) if self.end_s.size else 0.0
