"""Tests of the health meters: level, silence and clipping per channel; CPU and RSS."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from asd_edge.config import HealthConfig
from asd_edge.meters import DB_FLOOR, LevelMeter, ProcessMeter, dbfs
from asd_edge.ring import RingBuffer

RATE = 16000


def meter(ring: RingBuffer, **overrides: float) -> LevelMeter:
    return LevelMeter(ring, RATE, HealthConfig(**overrides))


class TestLevelMeter:
    """LevelMeter reads each captured sample once and reports the interval's figures."""

    def test_full_scale_sine_is_minus_3_dbfs(self) -> None:
        """The level of a full-scale sine is -3.01 dBFS; its peak is 0 dBFS."""
        ring = RingBuffer(RATE * 4)
        m = meter(ring)
        t = np.arange(RATE) / RATE
        ring.write((0.99 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
        m.update()
        level = m.take()
        assert level.level_dbfs == pytest.approx(-3.01 + 20 * math.log10(0.99), abs=0.01)
        assert level.peak_dbfs == pytest.approx(20 * math.log10(0.99), abs=0.01)
        assert level.samples == RATE
        assert not level.silent and not level.clipping

    def test_only_new_audio_is_measured(self) -> None:
        """Audio written before the meter existed, or already measured, is not counted."""
        ring = RingBuffer(RATE * 4)
        ring.write(np.full(RATE, 0.5, np.float32))
        m = meter(ring)
        ring.write(np.full(RATE // 2, 0.1, np.float32))
        m.update()
        m.update()
        level = m.take()
        assert level.samples == RATE // 2
        assert level.level_dbfs == pytest.approx(-20.0, abs=0.01)

    def test_digital_silence_is_flagged(self) -> None:
        """All-zero input is silent and reported at the floor."""
        ring = RingBuffer(RATE * 4)
        m = meter(ring)
        ring.write(np.zeros(RATE, np.float32))
        m.update()
        level = m.take()
        assert level.silent
        assert level.level_dbfs == DB_FLOOR

    def test_quiet_but_not_silent(self) -> None:
        """A level above health.silence_dbfs is not silent; below it is."""
        ring = RingBuffer(RATE * 4)
        m = meter(ring, silence_dbfs=-60.0)
        ring.write(np.full(RATE, 10 ** (-50 / 20), np.float32))  # -50 dBFS
        m.update()
        assert not m.take().silent
        ring.write(np.full(RATE, 10 ** (-70 / 20), np.float32))
        m.update()
        assert m.take().silent

    def test_clipping_is_flagged_above_the_ratio(self) -> None:
        """More than health.clipping_ratio of samples at full scale is clipping."""
        ring = RingBuffer(RATE * 4)
        m = meter(ring, clipping_ratio=0.01)
        block = np.full(1000, 0.1, np.float32)
        block[:5] = 1.0  # 0.5 %
        ring.write(block)
        m.update()
        assert not m.take().clipping
        block[:50] = -1.0  # 5 %
        ring.write(block)
        m.update()
        level = m.take()
        assert level.clipping
        assert level.clipped_ratio == pytest.approx(0.05)

    def test_no_audio_is_neither_silent_nor_clipping(self) -> None:
        """An interval without samples says so (samples 0) instead of claiming silence."""
        m = meter(RingBuffer(RATE))
        m.update()
        level = m.take()
        assert level.samples == 0
        assert not level.silent and not level.clipping

    def test_non_finite_samples_are_ignored(self) -> None:
        """NaN or inf samples do not poison the level."""
        ring = RingBuffer(RATE)
        m = meter(ring)
        ring.write(np.array([0.5, np.nan, -0.5, np.inf], np.float32))
        m.update()
        level = m.take()
        assert level.samples == 2
        assert level.level_dbfs == pytest.approx(dbfs(0.25))

    def test_a_long_pause_reads_at_most_the_recent_audio(self) -> None:
        """After a long gap between updates, only the last couple of seconds are read."""
        ring = RingBuffer(RATE * 10)
        m = meter(ring)
        ring.write(np.full(RATE * 8, 0.1, np.float32))
        m.update()
        assert m.recent().samples == 2 * RATE

    def test_as_dict_is_json_ready(self) -> None:
        """as_dict gives rounded plain values."""
        ring = RingBuffer(RATE)
        m = meter(ring)
        ring.write(np.full(100, 0.25, np.float32))
        m.update()
        d = m.take().as_dict()
        assert d["level_dbfs"] == pytest.approx(-12.04, abs=0.01)
        assert set(d) == {
            "level_dbfs",
            "peak_dbfs",
            "clipped_ratio",
            "silent",
            "clipping",
            "samples",
        }


class TestProcessMeter:
    """ProcessMeter reports this process's CPU use and memory."""

    def test_cpu_percent_of_busy_work(self) -> None:
        """Burning CPU for a stretch shows as a large share of one core."""
        now = [0.0]
        pm = ProcessMeter(clock=lambda: now[0])

        start = os.times()
        x = 0
        while (os.times().user + os.times().system) - (start.user + start.system) < 0.2:
            x += 1
        now[0] = 0.2
        assert pm.cpu_percent() >= 90.0

    def test_rss_is_plausible(self) -> None:
        """The resident set is between 1 MB and the machine's memory."""
        assert 1.0 < ProcessMeter.rss_mb() < 1e6
