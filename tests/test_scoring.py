"""Offline scoring (``asd-edge score``): a recording fed in blocks is scored exactly as the
whole recording is, so a long file can be read piece by piece."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from support.audio import tone_burst

from asd_edge.config import MonitorConfig
from asd_edge.detector import Detector
from asd_edge.scoring import score_blocks, score_samples

SECONDS = 6.0


@cache
def recording(rate: int) -> np.ndarray:
    """Quiet noise with a loud burst at 2-3.5 s: windows, one event and its end."""
    return tone_burst(rate, SECONDS, (2.0, 3.5))


@cache
def detector(path: Path) -> Detector:
    return Detector(path)


class TestScoreBlocks:
    @settings(max_examples=25, deadline=None)
    @given(
        cuts=st.lists(st.floats(0.0, 1.0), max_size=8),
        hop_s=st.sampled_from([0.25, 0.5, 0.7]),
        rate=st.sampled_from([16000, 44100, 48000]),
    )
    def test_blocks_of_any_size_give_the_whole_recordings_report(
        self, level_model: Path, cuts: list[float], hop_s: float, rate: int
    ) -> None:
        """Cut anywhere (empty blocks, blocks shorter or longer than a hop), at the model's
        rate or resampled, the report is the one of the whole recording, every window of
        which is scored."""
        mono = recording(rate)
        at = sorted({round(c * mono.shape[0]) for c in cuts})
        blocks = np.split(mono, at)
        settings_ = MonitorConfig(name="m", model=str(level_model))
        model = detector(level_model)
        whole = score_samples(mono, rate, model, settings_, hop_s=hop_s)
        assert whole["events"]
        # The last window ends with the recording: the resampler's tail was flushed.
        assert len(whole["windows"]) == int((SECONDS - 1.0) / hop_s + 1e-9) + 1
        assert score_blocks(blocks, rate, model, settings_, hop_s=hop_s) == whole
