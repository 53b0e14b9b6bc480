"""Tests of input-health supervision on real rings written by the test, with a fake clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from asd_edge.capture import CaptureStats
from asd_edge.config import HealthConfig
from asd_edge.inputhealth import RECOVER_S, InputChange, InputHealth
from asd_edge.ring import RingBuffer

RATE = 8000
WAKE_S = 0.05  # the daemon's tick loop wakes 20 times a second
WAKE = round(RATE * WAKE_S)
HOLD_S = 5.0
STALL_S = 2.0

Signal = Callable[[int], np.ndarray]


def noise(dbfs: float = -20.0, seed: int = 0) -> Signal:
    """Gaussian noise at an RMS level of ``dbfs``."""
    rng = np.random.default_rng(seed)
    scale = 10 ** (dbfs / 20)
    return lambda n: (rng.standard_normal(n) * scale).astype(np.float32)


def zeros(n: int) -> np.ndarray:
    """Digital silence."""
    return np.zeros(n, np.float32)


def clipped(n: int) -> np.ndarray:
    """A square wave at full scale: every sample clipped."""
    return np.where(np.arange(n) % 40 < 20, 1.0, -1.0).astype(np.float32)


class FakeSource:
    """The source's supervision surface (alive, stats) around real rings the test writes."""

    def __init__(self, channels: int, ring_s: float = 60.0) -> None:
        self.sample_rate = RATE
        self.channels = channels
        self.stats = CaptureStats()
        self.alive = True
        self.rings = [RingBuffer(round(ring_s * RATE)) for _ in range(channels)]

    def ring(self, channel: int) -> RingBuffer:
        return self.rings[channel]

    def start(self) -> None:
        self.alive = True

    def stop(self) -> None:
        self.alive = False

    def poll(self, now_s: float) -> None:
        pass


class Rig:
    """Plays signals into the rings wake by wake and collects every change reported."""

    def __init__(
        self,
        channels: int = 1,
        ring_s: float = 60.0,
        watch: list[int] | None = None,
        **health: float,
    ) -> None:
        self.wakes = 0
        self.source = FakeSource(channels, ring_s)
        config = HealthConfig(hold_s=HOLD_S, **health)
        self.health = InputHealth(
            self.source,
            list(range(channels)) if watch is None else watch,
            config,
            STALL_S,
            clock=lambda: self.now_s,
        )
        self.changes: list[InputChange] = []

    @property
    def now_s(self) -> float:
        return self.wakes * WAKE_S

    def run(self, seconds: float, *signals: Signal | None) -> list[InputChange]:
        """``seconds`` of wakes, each channel fed by its signal (None: nothing arrives).

        One signal for all channels, or one per channel. Returns the changes seen."""
        per_channel = signals if len(signals) > 1 else signals * self.source.channels
        seen: list[InputChange] = []
        for _ in range(round(seconds / WAKE_S)):
            self.wakes += 1
            for ring, signal in zip(self.source.rings, per_channel, strict=True):
                if signal is not None:
                    ring.write(signal(WAKE))
            seen += self.health.update(self.now_s)
        self.changes += seen
        return seen


def summary(changes: list[InputChange]) -> list[tuple[str, int | None, str]]:
    return [(c.condition, c.channel, c.phase) for c in changes]


class TestSilence:
    """Silence is raised after hold_s of silent audio and cleared after hold_s of sound."""

    def test_raised_after_hold_and_not_before(self) -> None:
        """Digital silence from t=3 s: one start, between 5 and 5.55 s later, dated t=3."""
        rig = Rig()
        assert rig.run(3.0, noise()) == []
        assert rig.run(HOLD_S - 0.1, zeros) == []
        rig.run(10.0, zeros)
        assert summary(rig.changes) == [("silence", 0, "start")]
        start = rig.changes[0]
        assert 3.0 + HOLD_S <= start.at_s <= 3.0 + HOLD_S + 0.55
        assert start.since_s == pytest.approx(3.0, abs=WAKE_S)
        assert start.details["digital"] is True
        assert start.details["level_dbfs"] == -200.0

    def test_quiet_below_the_threshold_is_silence(self) -> None:
        """Noise below health.silence_dbfs is silent (not digital); above it is not."""
        rig = Rig(silence_dbfs=-60.0)
        assert rig.run(10.0, noise(-55.0)) == []
        rig.run(6.0, noise(-65.0))
        assert summary(rig.changes) == [("silence", 0, "start")]
        assert rig.changes[0].details["digital"] is False
        assert rig.changes[0].details["level_dbfs"] == pytest.approx(-65.0, abs=0.5)

    def test_a_dip_shorter_than_hold_raises_nothing(self) -> None:
        """Repeated 4.5 s silences between short bursts of sound never raise silence."""
        rig = Rig()
        for _ in range(4):
            rig.run(HOLD_S - 0.5, zeros)
            rig.run(1.0, noise())
        assert rig.changes == []

    def test_cleared_after_hold_of_sound(self) -> None:
        """Once raised, 2 s of sound does not clear it; 5 s of sound does, once."""
        rig = Rig()
        rig.run(6.0, zeros)
        rig.run(2.0, noise())
        rig.run(3.0, zeros)
        assert summary(rig.changes) == [("silence", 0, "start")]
        sound_from = rig.now_s
        assert rig.run(HOLD_S - 0.1, noise()) == []
        end = rig.run(10.0, noise())
        assert summary(end) == [("silence", 0, "end")]
        assert sound_from + HOLD_S <= end[0].at_s <= sound_from + HOLD_S + 0.55
        assert end[0].since_s == rig.changes[0].since_s

    def test_no_flapping_at_the_threshold(self) -> None:
        """A level alternating just above and below the threshold every half second changes
        nothing, whether silence is off or on."""
        loud, quiet = noise(-79.0, seed=1), noise(-81.0, seed=2)

        def hover(seconds: float) -> list[InputChange]:
            seen: list[InputChange] = []
            for _ in range(round(seconds)):
                seen += rig.run(0.5, loud) + rig.run(0.5, quiet)
            return seen

        rig = Rig()
        assert hover(30) == []
        rig.run(HOLD_S + 0.5, zeros)
        assert summary(rig.changes) == [("silence", 0, "start")]
        assert hover(30) == []


class TestClipping:
    """Clipping is raised after hold_s of clipping audio and cleared after hold_s without."""

    def test_raised_after_hold_and_cleared(self) -> None:
        """Full-scale audio from t=2 s: start 5-5.55 s later; clean audio clears it 5 s on."""
        rig = Rig()
        rig.run(2.0, noise())
        assert rig.run(HOLD_S - 0.1, clipped) == []
        start = rig.run(1.0, clipped)
        assert summary(start) == [("clipping", 0, "start")]
        assert start[0].details["clipped_ratio"] == 1.0
        assert start[0].since_s == pytest.approx(2.0, abs=WAKE_S)
        rig.run(4.0, clipped)
        assert rig.run(HOLD_S - 0.1, noise()) == []
        assert summary(rig.run(1.0, noise())) == [("clipping", 0, "end")]
        assert summary(rig.changes) == [("clipping", 0, "start"), ("clipping", 0, "end")]

    def test_a_burst_shorter_than_hold_raises_nothing(self) -> None:
        """Loud bursts of 4 s, clean in between, never raise clipping."""
        rig = Rig()
        for _ in range(3):
            rig.run(4.0, clipped)
            rig.run(1.0, noise())
        assert rig.changes == []

    def test_a_few_clipped_samples_are_not_clipping(self) -> None:
        """Below health.clipping_ratio of samples at full scale is not clipping."""
        base = noise(-20.0)
        written = [0]

        def sparse(n: int) -> np.ndarray:
            block = base(n)
            index = np.arange(written[0], written[0] + n)
            block[index % 2000 == 0] = 1.0  # 0.05 % of samples, under the 0.1 % default
            written[0] += n
            return block

        rig = Rig()
        assert rig.run(20.0, sparse) == []


class TestOverrun:
    """Overruns are raised at the first lost sample and cleared after hold_s without any."""

    def test_driver_overflows(self) -> None:
        """An overflow at t=2 raises at once; another at t=4 extends it; cleared at t=9."""
        rig = Rig()
        rig.run(2.0, noise())
        rig.source.stats.overflows += 1
        start = rig.run(WAKE_S, noise())
        assert summary(start) == [("overrun", None, "start")]
        assert start[0].at_s == start[0].since_s == pytest.approx(2.05)
        assert start[0].details["overflows"] == 1
        rig.run(2.0, noise())
        rig.source.stats.overflows += 2
        assert rig.run(HOLD_S - 0.1, noise()) == []
        end = rig.run(1.0, noise())
        assert summary(end) == [("overrun", None, "end")]
        assert 4.1 + HOLD_S - 1e-9 <= end[0].at_s <= 4.1 + HOLD_S + WAKE_S + 1e-9
        assert end[0].details["overflows"] == 3
        assert summary(rig.changes) == [("overrun", None, "start"), ("overrun", None, "end")]

    def test_a_reader_losing_samples_from_the_ring(self) -> None:
        """A reader that finds its range overwritten (a late monitor) raises overrun with the
        number of samples it lost, without the daemon reporting anything."""
        rig = Rig(ring_s=5.0)
        rig.run(6.0, noise())
        chunk = rig.source.rings[0].read(0, rig.source.rings[0].written)
        assert chunk.lost == RATE  # the first second was overwritten
        start = rig.run(WAKE_S, noise())
        assert summary(start) == [("overrun", None, "start")]
        assert start[0].details["lost_samples"] == RATE

    def test_noted_losses(self) -> None:
        """Losses the daemon reports with note_lost() raise it too."""
        rig = Rig()
        rig.run(1.0, noise())
        rig.health.note_lost(123)
        rig.health.note_lost(0)
        start = rig.run(WAKE_S, noise())
        assert summary(start) == [("overrun", None, "start")]
        assert start[0].details["lost_samples"] == 123


class TestInputLost:
    """A dead or stalled input is raised at once and cleared after 1 s of flowing samples."""

    def test_source_not_alive(self) -> None:
        """alive turns False: raised in the same wake; cleared 1 s after samples return."""
        rig = Rig()
        rig.run(3.0, noise())
        rig.source.alive = False
        start = rig.run(WAKE_S, None)
        assert summary(start) == [("input_lost", None, "start")]
        assert start[0].details["reason"] == "stream_finished"
        assert start[0].details["restarting"] is True
        assert rig.run(10.0, None) == []
        rig.source.alive = True
        rig.source.stats.restarts += 1
        back_at = rig.now_s
        assert rig.run(RECOVER_S - WAKE_S, noise()) == []
        end = rig.run(1.0, noise())
        assert summary(end) == [("input_lost", None, "end")]
        assert back_at + RECOVER_S <= end[0].at_s <= back_at + RECOVER_S + 2 * WAKE_S
        assert end[0].details["restarts"] == 1
        assert end[0].since_s == pytest.approx(3.05)

    def test_samples_stop(self) -> None:
        """No samples for stall_timeout_s while the source claims to be alive: raised at
        that moment, dated from the last sample, reason stream_stalled."""
        rig = Rig()
        rig.run(3.0, noise())
        assert rig.run(STALL_S - 2 * WAKE_S, None) == []
        start = rig.run(1.0, None)
        assert summary(start) == [("input_lost", None, "start")]
        assert start[0].details["reason"] == "stream_stalled"
        assert start[0].since_s == pytest.approx(3.0)
        assert start[0].at_s == pytest.approx(3.0 + STALL_S)

    def test_a_trickle_does_not_clear_it(self) -> None:
        """One block then nothing again, or samples while not alive, do not clear it."""
        rig = Rig()
        rig.run(1.0, noise())
        rig.run(STALL_S + 1.0, None)
        for _ in range(3):
            rig.run(WAKE_S, noise())
            rig.run(STALL_S + 0.5, None)
        rig.source.alive = False
        rig.run(3.0, noise())
        assert summary(rig.changes) == [("input_lost", None, "start")]
        rig.source.alive = True
        rig.run(2.0, noise())
        assert summary(rig.changes) == [("input_lost", None, "start"), ("input_lost", None, "end")]

    def test_silence_does_not_span_an_outage(self) -> None:
        """3 s of silence, an outage, 3 s of silence: not 5 s of silent audio in a row."""
        rig = Rig()
        rig.run(3.0, zeros)
        rig.run(STALL_S + 1.0, None)
        rig.run(3.0, zeros)
        assert summary(rig.changes) == [("input_lost", None, "start"), ("input_lost", None, "end")]
        rig.run(HOLD_S, zeros)
        assert summary(rig.changes)[-1] == ("silence", 0, "start")


class TestChannels:
    """Silence and clipping name the channel; the active list feeds the health payload."""

    def test_each_channel_is_judged_alone(self) -> None:
        """Channel 1 silent and channel 0 clipping: one change each, naming its channel."""
        rig = Rig(channels=3)
        rig.run(2.0, noise(seed=1), noise(seed=2), noise(seed=3))
        rig.run(HOLD_S + 1.0, clipped, zeros, noise(seed=3))
        assert sorted(summary(rig.changes), key=str) == [
            ("clipping", 0, "start"),
            ("silence", 1, "start"),
        ]

    def test_active_conditions_as_dict(self) -> None:
        """as_dict() lists what is active now with how long it has lasted; [] when healthy."""
        rig = Rig(channels=2)
        rig.run(2.0, noise())
        assert rig.health.as_dict() == []
        rig.run(HOLD_S + 1.0, noise(seed=4), zeros)
        rig.source.stats.overflows += 1
        rig.run(WAKE_S, noise(seed=4), zeros)
        active = {(d["condition"], d["channel"]): d for d in rig.health.as_dict()}
        assert set(active) == {("silence", 1), ("overrun", None)}
        assert rig.health.active_names() == ["overrun", "silence ch1"]
        assert active["silence", 1]["for_s"] == pytest.approx(HOLD_S + 1.05, abs=0.1)
        assert active["silence", 1]["details"]["digital"] is True
        assert active["overrun", None]["details"]["overflows_total"] == 1
        rig.source.alive = False
        rig.run(WAKE_S, None)
        lost = [d for d in rig.health.as_dict() if d["condition"] == "input_lost"]
        assert lost[0]["details"]["restarting"] is True
        assert lost[0]["for_s"] == pytest.approx(0.0)

    def test_every_change_once_over_a_long_run(self) -> None:
        """Two minutes of alternating troubles: starts and ends strictly alternate per key."""
        rig = Rig(channels=2)
        troubles = itertools.cycle([zeros, clipped, noise(seed=5)])
        for _ in range(8):
            bad = next(troubles)
            rig.run(HOLD_S + 2.0, bad, noise(seed=6))
            rig.run(HOLD_S + 2.0, noise(seed=7), noise(seed=6))
        by_key: dict[tuple[str, int | None], list[str]] = {}
        for condition, channel, phase in summary(rig.changes):
            by_key.setdefault((condition, channel), []).append(phase)
        assert set(by_key) == {("silence", 0), ("clipping", 0)}
        for phases in by_key.values():
            assert phases == ["start", "end"] * (len(phases) // 2)
            assert len(phases) >= 4


class TestReload:
    """configure() after a reload keeps what is still true and ends what is not watched."""

    def test_channels_and_settings_change(self) -> None:
        """Channel 1 stops being watched (its silence ends now); channel 0's silence carries
        over; losses counted on the newly watched ring before are not a new overrun; the
        new hold_s decides when channel 0's silence clears."""
        rig = Rig(channels=3, ring_s=5.0, watch=[0, 1])
        rig.run(HOLD_S + 1.0, zeros, zeros, noise())
        assert sorted(summary(rig.changes), key=str) == [
            ("silence", 0, "start"),
            ("silence", 1, "start"),
        ]
        assert rig.source.rings[2].read(0, rig.source.rings[2].written).lost > 0
        ended = rig.health.configure([0, 2], HealthConfig(hold_s=1.0), now_s=rig.now_s)
        assert summary(ended) == [("silence", 1, "end")]
        assert ended[0].details["reason"] == "channel_unwatched"
        assert rig.health.update(rig.now_s) == []
        assert [(d["condition"], d["channel"]) for d in rig.health.as_dict()] == [("silence", 0)]
        assert rig.run(0.9, noise(), noise(), noise()) == []
        assert summary(rig.run(0.6, noise(), noise(), noise())) == [("silence", 0, "end")]
        rig.source.rings[2].read(0, rig.source.rings[2].written)  # a loss on it now counts
        assert summary(rig.run(WAKE_S, noise())) == [("overrun", None, "start")]
