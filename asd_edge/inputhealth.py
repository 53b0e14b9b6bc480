"""Input-health supervision: a lost stream, silence, clipping and overruns, raised and cleared."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .capture import AudioSource
from .config import HealthConfig
from .meters import DB_FLOOR, ChannelLevel, LevelMeter
from .ring import RingBuffer

__all__ = [
    "BLOCK_S",
    "CONDITIONS",
    "RECOVER_S",
    "InputChange",
    "InputCondition",
    "InputHealth",
]

Phase = Literal["start", "end"]

CONDITIONS = ("input_lost", "overrun", "silence", "clipping")
"""Every condition, in the order a single ``update()`` reports them."""
BLOCK_S = 0.5
"""Silence and clipping are judged on blocks of about this much audio (less for a short
``health.hold_s``); "sustained for hold_s" means every block in hold_s was silent."""
RECOVER_S = 1.0
"""A lost input clears once samples have flowed again for this long."""


@dataclass(frozen=True, slots=True)
class InputCondition:
    """A condition that is active now."""

    condition: str
    """One of ``CONDITIONS``."""
    channel: int | None
    """The input channel for silence and clipping; None for the whole input."""
    since_s: float
    """Monotonic time the problem began (before it was raised, for the held conditions)."""
    details: dict[str, Any]
    """What was found: reason and counts, or the level that raised it."""

    def as_dict(self, now_s: float) -> dict[str, Any]:
        """JSON-ready, with how long it has lasted instead of a monotonic time."""
        return {
            "condition": self.condition,
            "channel": self.channel,
            "for_s": round(max(0.0, now_s - self.since_s), 1),
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class InputChange:
    """A condition raised (``start``) or cleared (``end``); each is reported once."""

    condition: str
    """One of ``CONDITIONS``."""
    channel: int | None
    """The input channel for silence and clipping; None for the whole input."""
    phase: Phase
    since_s: float
    """Monotonic time the problem began (also on ``end``)."""
    at_s: float
    """Monotonic time of this change."""
    details: dict[str, Any]
    """On ``start`` what raised it; on ``end`` the counts over the whole episode."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for a log line or an alert's body)."""
        return {
            "condition": self.condition,
            "channel": self.channel,
            "phase": self.phase,
            "duration_s": round(max(0.0, self.at_s - self.since_s), 1),
            "details": self.details,
        }


class _Held:
    """Raised once bad blocks add up to ``hold`` samples with no good one between; cleared
    once good blocks do. A block that agrees with the current state breaks the other run,
    so a level hovering at the threshold changes nothing."""

    __slots__ = ("active", "details", "run_samples", "run_start_s", "since_s")

    def __init__(self) -> None:
        self.active = False
        self.since_s = 0.0
        self.details: dict[str, Any] = {}
        self.run_samples = 0
        self.run_start_s = 0.0

    def feed(self, bad: bool, samples: int, now_s: float, hold_samples: int, rate: int) -> bool:
        """Fold in one block; True when the condition turns on or off."""
        if bad == self.active:
            self.run_samples = 0
            return False
        if self.run_samples == 0:
            self.run_start_s = now_s - samples / rate
        self.run_samples += samples
        if self.run_samples < hold_samples:
            return False
        self.run_samples = 0
        self.active = bad
        if bad:
            self.since_s = self.run_start_s
        return True


class _Channel:
    """One input channel's block meter and its silence and clipping states."""

    __slots__ = ("block_samples", "clipping", "meter", "ring", "silence", "taken")

    def __init__(self, ring: RingBuffer, rate: int, config: HealthConfig) -> None:
        self.ring = ring
        self.meter = LevelMeter(ring, rate, config)  # its own cursor: telemetry's is untouched
        self.block_samples = max(1, round(min(BLOCK_S, config.hold_s / 2) * rate))
        self.taken = ring.written
        self.silence = _Held()
        self.clipping = _Held()

    def next_block(self) -> ChannelLevel | None:
        """The level of the audio since the last block, once there is a block's worth."""
        written = self.ring.written
        if written - self.taken < self.block_samples:
            return None
        self.taken = written
        self.meter.update()
        level = self.meter.take()
        return level if level.samples else None  # all non-finite: no verdict


class InputHealth:
    """Watches a source's rings and counters and reports when a condition starts or ends.

    - ``input_lost`` (whole input): the source is not ``alive`` or no samples arrived
      for ``stall_timeout_s``; raised at once, cleared once samples have flowed for
      ``RECOVER_S`` while alive.
    - ``silence`` / ``clipping`` (per channel): every block of ``health.hold_s`` of audio
      silent (below ``health.silence_dbfs``) / clipping (more than
      ``health.clipping_ratio`` at full scale); cleared after ``hold_s`` of good audio.
    - ``overrun`` (whole input): the driver dropped samples (``stats.overflows``), a
      reader lost samples from a ring (``RingBuffer.lost_samples``, watched here), or
      ``note_lost()`` reported some; raised at once, cleared after ``hold_s`` without.

    Pure logic on the tick thread: ``update()`` costs a few µs when no new block of audio
    is due and a block's meter reading (tens of µs) every ``BLOCK_S``.
    """

    def __init__(
        self,
        source: AudioSource,
        channels: Sequence[int],
        config: HealthConfig,
        stall_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``source`` must be started (its rings exist); ``channels`` are the ones in use."""
        if not channels:
            raise ValueError("InputHealth needs at least one channel to watch")
        self._source = source
        self._config = config
        self._clock = clock
        self._rate = source.sample_rate
        self._hold_samples = max(1, round(config.hold_s * self._rate))
        self._stall_timeout_s = stall_timeout_s
        self._channels = {ch: _Channel(source.ring(ch), self._rate, config) for ch in channels}
        self._flow_ring = self._channels[min(channels)].ring
        now_s = clock()
        # input_lost
        self._lost: InputCondition | None = None
        self._last_written = self._flow_ring.written
        self._last_flow_s = now_s
        self._recover_start_s: float | None = None
        self._recover_written = 0
        # overrun
        self._overrun: InputCondition | None = None
        self._noted_lost = 0
        self._seen_overflows = source.stats.overflows
        self._seen_lost = self._lost_total()
        self._overrun_base = (self._seen_overflows, self._seen_lost)
        self._last_overrun_s = now_s

    def configure(
        self,
        channels: Sequence[int],
        config: HealthConfig,
        stall_timeout_s: float | None = None,
        now_s: float | None = None,
    ) -> list[InputChange]:
        """After a reload: watch these channels with these settings from now on.

        Active conditions carry over (they clear by the new settings' rules); those of a
        channel no longer watched end now (reason ``channel_unwatched``) and are returned
        for the caller to report. ``stall_timeout_s`` None keeps the current one.
        """
        if not channels:
            raise ValueError("InputHealth needs at least one channel to watch")
        now = self._clock() if now_s is None else now_s
        ended: list[InputChange] = []
        for channel, state in self._channels.items():
            if channel in channels:
                continue
            for name, held in (("silence", state.silence), ("clipping", state.clipping)):
                if held.active:
                    details = {**held.details, "reason": "channel_unwatched"}
                    ended.append(InputChange(name, channel, "end", held.since_s, now, details))
        before = self._lost_total()
        kept = self._channels
        self._channels = {}
        for channel in channels:
            state = _Channel(self._source.ring(channel), self._rate, config)
            if channel in kept:
                state.silence, state.clipping = kept[channel].silence, kept[channel].clipping
                state.silence.run_samples = state.clipping.run_samples = 0
            self._channels[channel] = state
        self._config = config
        self._hold_samples = max(1, round(config.hold_s * self._rate))
        if stall_timeout_s is not None:
            self._stall_timeout_s = stall_timeout_s
        self._flow_ring = self._channels[min(channels)].ring  # every ring is written together
        self._last_written = self._flow_ring.written
        shift = self._lost_total() - before  # other rings' old losses are not new ones
        self._seen_lost += shift
        self._overrun_base = (self._overrun_base[0], self._overrun_base[1] + shift)
        return ended

    def note_lost(self, samples: int) -> None:
        """Report samples lost outside the rings' own counters (ring losses are seen here)."""
        if samples > 0:
            self._noted_lost += samples

    def update(self, now_s: float | None = None) -> list[InputChange]:
        """Check everything (every loop wake); the conditions that started or ended."""
        now = self._clock() if now_s is None else now_s
        changes: list[InputChange] = []
        self._check_flow(now, changes)
        self._check_overrun(now, changes)
        for channel, state in self._channels.items():
            level = state.next_block()
            if level is not None:
                self._judge(channel, state, level, now, changes)
        return changes

    def active(self) -> list[InputCondition]:
        """The conditions active now (input_lost with its current restart count)."""
        found: list[InputCondition] = []
        if self._lost is not None:
            stats = self._source.stats
            live = {
                **self._lost.details,
                "restarting": not self._source.alive,
                "restarts": stats.restarts,
                "stalls": stats.stalls,
            }
            found.append(InputCondition("input_lost", None, self._lost.since_s, live))
        if self._overrun is not None:
            found.append(
                InputCondition("overrun", None, self._overrun.since_s, self._overrun_counts())
            )
        for channel, state in self._channels.items():
            for name, held in (("silence", state.silence), ("clipping", state.clipping)):
                if held.active:
                    found.append(InputCondition(name, channel, held.since_s, held.details))
        return found

    def active_names(self) -> list[str]:
        """Short names of the active conditions (``silence ch1``), for a status line."""
        return [
            c.condition if c.channel is None else f"{c.condition} ch{c.channel}"
            for c in self.active()
        ]

    def as_dict(self, now_s: float | None = None) -> list[dict[str, Any]]:
        """The active conditions, JSON-ready, for the health payload (empty when healthy)."""
        now = self._clock() if now_s is None else now_s
        return [condition.as_dict(now) for condition in self.active()]

    def _check_flow(self, now_s: float, changes: list[InputChange]) -> None:
        written = previous = self._flow_ring.written
        arrived = written != self._last_written
        if arrived:
            previous = self._last_written
            self._last_written = written
            self._last_flow_s = now_s
        alive = self._source.alive
        quiet_s = now_s - self._last_flow_s
        stalled = quiet_s >= self._stall_timeout_s
        lost = self._lost
        if lost is None:
            if alive and not stalled:
                return
            reason = "stream_stalled" if stalled else "stream_finished"
            since_s = self._last_flow_s if stalled else now_s
            stats = self._source.stats
            details = {
                "reason": reason,
                "restarting": not alive,
                "restarts": stats.restarts,
                "stalls": stats.stalls,
                "silent_s": round(quiet_s, 3),
            }
            self._lost = InputCondition("input_lost", None, since_s, details)
            self._recover_start_s = None
            for state in self._channels.values():  # no run of audio spans the outage
                state.silence.run_samples = state.clipping.run_samples = 0
            changes.append(InputChange("input_lost", None, "start", since_s, now_s, details))
            return
        if not alive or stalled:
            self._recover_start_s = None
            return
        if self._recover_start_s is None:
            if arrived:
                self._recover_start_s = now_s
                self._recover_written = previous  # what just arrived counts as flow
            return
        flowed = written - self._recover_written
        if now_s - self._recover_start_s >= RECOVER_S and flowed >= RECOVER_S * self._rate:
            self._lost = None
            stats = self._source.stats
            details = {**lost.details, "restarts": stats.restarts, "stalls": stats.stalls}
            changes.append(InputChange("input_lost", None, "end", lost.since_s, now_s, details))

    def _lost_total(self) -> int:
        return sum(state.ring.lost_samples for state in self._channels.values()) + self._noted_lost

    def _overrun_counts(self) -> dict[str, int]:
        base_overflows, base_lost = self._overrun_base
        return {
            "overflows": self._seen_overflows - base_overflows,
            "lost_samples": self._seen_lost - base_lost,
            "overflows_total": self._seen_overflows,
            "lost_samples_total": self._seen_lost,
        }

    def _check_overrun(self, now_s: float, changes: list[InputChange]) -> None:
        overflows = self._source.stats.overflows
        lost = self._lost_total()
        if overflows != self._seen_overflows or lost != self._seen_lost:
            if self._overrun is None:
                self._overrun_base = (self._seen_overflows, self._seen_lost)
            self._seen_overflows, self._seen_lost = overflows, lost
            self._last_overrun_s = now_s
            if self._overrun is None:
                details = self._overrun_counts()
                self._overrun = InputCondition("overrun", None, now_s, details)
                changes.append(InputChange("overrun", None, "start", now_s, now_s, details))
            return
        if self._overrun is not None and now_s - self._last_overrun_s >= self._config.hold_s:
            since_s, self._overrun = self._overrun.since_s, None
            changes.append(
                InputChange("overrun", None, "end", since_s, now_s, self._overrun_counts())
            )

    def _judge(
        self,
        channel: int,
        state: _Channel,
        level: ChannelLevel,
        now_s: float,
        changes: list[InputChange],
    ) -> None:
        cfg = self._config
        for name, held, bad in (
            ("silence", state.silence, level.silent),
            ("clipping", state.clipping, level.clipping),
        ):
            if not held.feed(bad, level.samples, now_s, self._hold_samples, self._rate):
                continue
            details: dict[str, Any] = {
                "level_dbfs": round(level.level_dbfs, 1),
                "peak_dbfs": round(level.peak_dbfs, 1),
            }
            if name == "silence":
                details["silence_dbfs"] = cfg.silence_dbfs
                details["digital"] = level.peak_dbfs <= DB_FLOOR
            else:
                details["clipped_ratio"] = round(level.clipped_ratio, 6)
                details["clipping_ratio"] = cfg.clipping_ratio
            if held.active:
                held.details = details
            phase: Phase = "start" if held.active else "end"
            changes.append(InputChange(name, channel, phase, held.since_s, now_s, details))
