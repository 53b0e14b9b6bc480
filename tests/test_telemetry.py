"""Tests of the health report and the monitor state the daemon publishes."""

from __future__ import annotations

import numpy as np
import pytest

from asd_edge.capture import CaptureStats
from asd_edge.config import HealthConfig
from asd_edge.ring import RingBuffer
from asd_edge.telemetry import MonitorState, Telemetry, sorted_quantile, tick_summary

RATE = 16000


class FakeSource:
    """Just enough of an AudioSource: rings and counters (pure logic under test)."""

    sample_rate = RATE
    channels = 2

    def __init__(self) -> None:
        self.stats = CaptureStats(overflows=2, restarts=1)
        self.rings = [RingBuffer(RATE * 4), RingBuffer(RATE * 4)]

    def ring(self, channel: int) -> RingBuffer:
        return self.rings[channel]


def telemetry(source: FakeSource) -> Telemetry:
    clock = iter(np.arange(0.0, 1000.0, 10.0))
    t = Telemetry(
        device_id="dev",
        source=source,  # type: ignore[arg-type]
        channels=[1, 0],
        health=HealthConfig(),
        clock=lambda: float(next(clock)),
        wall_clock=lambda: 1_790_000_000.0,
    )
    t.monitors["pump"] = MonitorState(name="pump", channel=1, model={"name": "m"}, threshold=3.0)
    return t


class TestTelemetry:
    def test_health_report_carries_audio_ticks_process_and_monitors(self) -> None:
        """The report has every section the contract lists, with the interval's figures."""
        source = FakeSource()
        t = telemetry(source)
        source.rings[0].write(np.zeros(RATE, np.float32))
        source.rings[1].write(np.full(RATE, 0.1, np.float32))
        t.update()
        t.durations_s += [0.001, 0.002, 0.003]
        t.monitors["pump"].scored(2.0)
        t.monitors["pump"].scored(5.0)
        t.monitors["pump"].scored(float("nan"))
        report = t.report({"clips": {"bytes": 0}})
        audio = report["audio"]
        assert [c["channel"] for c in audio["channels"]] == [0, 1]
        assert audio["channels"][0]["silent"] and not audio["channels"][1]["silent"]
        assert audio["channels"][1]["level_dbfs"] == pytest.approx(-20.0, abs=0.01)
        assert audio["silent"] and not audio["clipping"]
        assert audio["overflows"] == 2 and audio["restarts"] == 1
        assert report["ticks"]["tick_max_ms"] == 3.0 and report["ticks"]["skipped_wakes"] == 0
        assert report["process"]["rss_mb"] > 1
        (pump,) = report["monitors"]
        assert pump["last_score"] == 5.0 and pump["max_score"] == 5.0 and pump["windows"] == 3
        assert report["clips"] == {"bytes": 0} and report["device_id"] == "dev"

    def test_a_report_starts_a_new_interval(self) -> None:
        """Tick timings, maximum score and window counts restart after each report."""
        source = FakeSource()
        t = telemetry(source)
        t.durations_s.append(0.004)
        t.monitors["pump"].scored(7.0)
        t.report({})
        again = t.report({})
        assert "tick_p50_ms" not in again["ticks"]
        assert again["monitors"][0]["max_score"] is None
        assert again["monitors"][0]["last_score"] == 7.0  # the latest score stays known
        assert again["monitors"][0]["windows"] == 0

    def test_monitor_payload_for_home_assistant(self) -> None:
        """The retained monitor state: anomaly flag, last score, threshold, channel level."""
        source = FakeSource()
        t = telemetry(source)
        assert t.monitor_payload("pump")["level_dbfs"] is None  # no audio yet
        source.rings[1].write(np.full(RATE, 0.1, np.float32))
        t.update()
        t.monitors["pump"].anomaly = True
        t.monitors["pump"].scored(4.0)
        state = t.monitor_payload("pump")
        assert state["anomaly"] is True and state["score"] == 4.0 and state["threshold"] == 3.0
        assert state["level_dbfs"] == pytest.approx(-20.0, abs=0.01)
        assert state["at"].endswith("Z")
        t.report({})  # starts a new interval: the state keeps the last level, not null
        assert t.monitor_payload("pump")["level_dbfs"] == pytest.approx(-20.0, abs=0.01)

    def test_machine_state_in_monitor_payload_and_health(self) -> None:
        """A model without ``level``: ``machine`` and ``window_level_dbfs`` are null; with
        it, the state and the latest window's level are in both the monitor topic and
        the health report's monitor section."""
        t = telemetry(FakeSource())
        t.monitors["pump"].scored(1.0)
        plain = t.monitor_payload("pump")
        assert plain["machine"] is None and plain["window_level_dbfs"] is None
        t.monitors["pump"].machine = "stopped"
        t.monitors["pump"].scored(9.0, -61.234)
        state = t.monitor_payload("pump")
        assert state["machine"] == "stopped" and state["window_level_dbfs"] == -61.23
        (pump,) = t.report({})["monitors"]
        assert pump["machine"] == "stopped" and pump["window_level_dbfs"] == -61.23


def test_tick_summary() -> None:
    """p50, p95 and max in milliseconds; nothing when there were no ticks."""
    assert tick_summary([]) == {}
    summary = tick_summary([0.001] * 99 + [0.010])
    assert summary["tick_p50_ms"] == 1.0 and summary["tick_max_ms"] == 10.0


@pytest.mark.parametrize("size", [1, 2, 3, 10, 101, 1000])
def test_sorted_quantile_is_numpys_linear_percentile(size: int) -> None:
    """The health report's quantiles equal ``np.percentile``'s default (linear) method,
    which the daemon no longer calls (it imports ``numpy.ma``)."""
    values = np.sort(np.random.default_rng(size).gamma(2.0, 0.3, size))
    for q in (0.0, 0.05, 0.5, 0.95, 0.99, 1.0):
        assert sorted_quantile(values, q) == pytest.approx(np.percentile(values, 100 * q))


class TestScoreIndexInReports:
    def test_index_in_the_monitor_topic_and_health(self) -> None:
        """Both the retained monitor state and the health entry carry the latest score's
        index against the threshold in force (1 at the threshold, 0 at the reference);
        null before any score."""
        t = telemetry(FakeSource())
        assert t.monitor_payload("pump")["index"] is None
        state = t.monitors["pump"]
        state.reference = 1.0  # threshold 3.0
        state.scored(5.0)
        assert t.monitor_payload("pump")["index"] == 2.0
        state.threshold = 5.0  # a config override in force
        assert t.monitor_payload("pump")["index"] == 1.0
        state.scored(1.0)
        assert t.report({})["monitors"][0]["index"] == 0.0
