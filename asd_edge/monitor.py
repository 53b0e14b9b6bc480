"""A monitor: one input channel, one model, one decision policy, ticked by the daemon."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import structlog

from .config import MonitorConfig
from .decision import Decision, DecisionPolicy, Event
from .detector import Detector
from .features import StreamingFilter
from .machine import STOPPED_HOLD_S, MachineChange, MachineState
from .meters import window_level_dbfs
from .resample import StreamResampler
from .ring import Chunk, RingBuffer

__all__ = ["Monitor", "TickResult", "WindowScore", "decision_policy"]

log = structlog.get_logger()

STREAM_SLACK_S = 4.0
"""Model-rate audio a monitor keeps beyond one window and one hop."""


@dataclass(frozen=True, slots=True)
class WindowScore:
    """The score of one window; times are stream seconds (capture samples / capture rate)."""

    start_s: float
    """Stream time of the window's first sample."""
    end_s: float
    """Stream time just after the window's last sample."""
    score: float
    """The model's anomaly score."""
    bands: npt.NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    """The window's ``bands`` output (dB from normal per band); None without one."""
    level_dbfs: float | None = None
    """The window's level (``meters.window_level_dbfs``), for a model with ``level``."""
    suppressed: bool = False
    """The machine is stopped (or this window sounds stopped): the score was published
    but not fed to the decision as anomalous."""


@dataclass(slots=True)
class TickResult:
    """What one tick of one monitor produced."""

    scores: list[WindowScore] = field(default_factory=list)
    """Windows scored in this tick (usually one)."""
    events: list[Event] = field(default_factory=list)
    """Event phases decided in this tick."""
    machine: list[MachineChange] = field(default_factory=list)
    """Machine state changes decided in this tick (models with ``level`` only)."""
    skipped_windows: int = 0
    """Windows passed over because the tick came late (only the latest is scored)."""
    lost_samples: int = 0
    """Capture samples lost to a ring overrun before this monitor read them."""
    nonfinite_samples: int = 0
    """NaN or infinite input samples, replaced by silence before processing."""
    nonfinite_scores: int = 0
    """Windows whose score was NaN or infinite (never counted as anomalous)."""
    gap: bool = False
    """The capture was reopened: windows restart after the gap instead of spanning it."""

    def log_trouble(self, monitor: str) -> None:
        """Log ``monitor_degraded`` when the tick lost, skipped or could not score audio."""
        trouble = {
            "skipped_windows": self.skipped_windows,
            "lost_samples": self.lost_samples,
            "nonfinite_samples": self.nonfinite_samples,
            "nonfinite_scores": self.nonfinite_scores,
        }
        if self.gap or any(trouble.values()):
            log.warning("monitor_degraded", monitor=monitor, gap=self.gap, **trouble)


def decision_policy(
    cfg: MonitorConfig, model_threshold: float, threshold: float | None = None
) -> DecisionPolicy:
    """A monitor's decision rule: ``threshold`` if given, else the configured
    ``monitors[].threshold``, else the model's calibrated one."""
    if threshold is None:
        threshold = model_threshold if cfg.threshold is None else cfg.threshold
    return DecisionPolicy(
        threshold=threshold,
        onset_k=cfg.onset_k,
        onset_n=cfg.onset_n,
        hold_s=cfg.hold_s,
        refractory_s=cfg.refractory_s,
    )


class Monitor:
    """Turns one capture channel into scores and events, one tick at a time.

    Each tick pulls the samples captured since the last one from the channel's
    ring, resamples them to the model's rate (exactly as resampling the whole
    stream would), applies the model's streaming pre-filter, and scores every
    window that has completed on the hop grid. ``asd-edge score`` runs files
    through this very class, so files and live audio give the same numbers.
    """

    def __init__(
        self,
        name: str,
        detector: Detector,
        policy: DecisionPolicy,
        source: RingBuffer,
        source_rate: int,
        hop_s: float,
        *,
        start_index: int | None = None,
        score_after: int | None = None,
        stopped_hold_s: float = STOPPED_HOLD_S,
        machine_stopped: bool = False,
    ) -> None:
        """``start_index``: the capture index to begin reading at (default: now).
        ``score_after``: windows ending at or before this capture index are neither
        scored nor counted as skipped (a monitor taking over from another one, fed some
        audio the other already scored so that its first window is complete).
        ``stopped_hold_s``: the machine state's hold (``MachineState``);
        ``machine_stopped``: begin in the ``stopped`` state (a monitor taking over)."""
        spec = detector.spec
        self.name = name
        self.detector = detector
        self.decision = Decision(policy)
        self.source = source
        self.source_rate = source_rate
        self.model_rate = spec.sample_rate
        self.window_samples = spec.window_samples
        self.hop_samples = max(1, round(hop_s * spec.sample_rate))
        self.hop_s = self.hop_samples / spec.sample_rate
        self._resampler = StreamResampler(source_rate, spec.sample_rate)
        self._filter = (
            StreamingFilter(spec.prefilter.sos(spec.sample_rate)) if spec.prefilter else None
        )
        slack = round(STREAM_SLACK_S * spec.sample_rate)
        self._stream = RingBuffer(self.window_samples + self.hop_samples + slack)
        self._cursor = source.written if start_index is None else start_index
        self._gap_seen = source.last_gap
        self._restart(self._cursor)
        self.machine: MachineState | None = None
        """The machine's state; None when the model has no ``level`` metadata."""
        if spec.level is not None:
            self.machine = MachineState(
                spec.level.stopped_below_dbfs,
                stopped_hold_s,
                stopped=machine_stopped,
                quiet_below_dbfs=spec.level.p01_dbfs,
            )
        self._quiet_until = -1
        if score_after is not None:
            self._quiet_until = self._model_base + math.floor(
                (score_after - self._cursor) * self.model_rate / source_rate
            )

    @classmethod
    def from_config(
        cls,
        cfg: MonitorConfig,
        detector: Detector,
        source: RingBuffer,
        source_rate: int,
        *,
        threshold: float | None = None,
        hop_s: float | None = None,
        start_index: int | None = None,
        score_after: int | None = None,
        machine_stopped: bool = False,
    ) -> Monitor:
        """The monitor a ``monitors[]`` entry describes (optionally overridden)."""
        return cls(
            cfg.name,
            detector,
            decision_policy(cfg, detector.threshold, threshold),
            source,
            source_rate,
            cfg.hop_s if hop_s is None else hop_s,
            start_index=start_index,
            score_after=score_after,
            stopped_hold_s=cfg.stopped_hold_s,
            machine_stopped=machine_stopped,
        )

    def _restart(self, capture_index: int) -> None:
        """(Re)anchor the model-rate stream at ``capture_index`` (at start and after a gap)."""
        self._resampler.reset()
        if self._filter is not None:
            self._filter.reset()
        self._capture_base = capture_index
        self._model_base = self._stream.written
        self._next_end = self._model_base + self.window_samples

    def capture_index(self, model_index: int) -> float:
        """The capture-ring position of a model-rate stream position."""
        model_offset = model_index - self._model_base
        return self._capture_base + model_offset * self.source_rate / self.model_rate

    def stream_time(self, model_index: int) -> float:
        """Stream seconds (since capture began) of a model-rate stream position."""
        return self.capture_index(model_index) / self.source_rate

    def _consume(self, chunk: Chunk, result: TickResult, *, final: bool) -> None:
        """Resample, pre-filter and store a chunk of capture audio."""
        if chunk.lost:
            result.lost_samples += chunk.lost
            self._restart(chunk.start)
        self._cursor = chunk.start + chunk.data.shape[0]
        data = chunk.data
        finite = np.isfinite(data)
        if not finite.all():  # one NaN would poison the filter state for good
            result.nonfinite_samples += int(data.shape[0] - np.count_nonzero(finite))
            data = np.where(finite, data, np.float32(0.0))
        block = self._resampler(data)
        if final:
            block = np.concatenate([block, self._resampler.flush()])
        if self._filter is not None and block.shape[0]:
            block = self._filter(block)
        self._stream.write(block)

    @property
    def cursor(self) -> int:
        """Capture-ring index of the next sample this monitor will consume."""
        return self._cursor

    def due_in_s(self) -> float:
        """Seconds until the capture ring holds all the audio of this monitor's next
        window (the resampler's look-ahead included); 0 when it already does."""
        missing = self._next_end - self._stream.written
        if missing <= 0:
            return 0.0
        needed = missing * self.source_rate / self.model_rate + self._resampler.delay_in
        waiting = self.source.written - self._cursor  # in the ring, not consumed yet
        return max(0.0, (needed - waiting) / self.source_rate)

    def now_s(self) -> float:
        """Stream time of the newest audio this monitor has consumed."""
        return self.stream_time(self._stream.written)

    def tick(self, *, catch_up: bool = False, final: bool = False) -> TickResult:
        """Consume new audio and score the windows it completes.

        When more than one window is due (the tick came late) only the latest is
        scored and the others are counted as skipped, unless ``catch_up`` (files).
        ``final`` marks the end of the input: the resampler's held-back tail is
        flushed so the last window of a file is scored too.
        """
        result = TickResult()
        gap = self.source.last_gap
        if gap > self._gap_seen:
            self._gap_seen = gap
            if gap >= self._cursor:  # audio up to the gap, then start afresh at it
                self._consume(self.source.read(self._cursor, gap), result, final=False)
                self._restart(gap)
                self._cursor = gap
                result.gap = True
        self._consume(self.source.since(self._cursor), result, final=final)
        ends: list[int] = []
        while self._next_end <= self._stream.written:
            if self._next_end > self._quiet_until:
                ends.append(self._next_end)
            self._next_end += self.hop_samples
        due = len(ends)
        if not catch_up and len(ends) > 1:
            ends = ends[-1:]
        # Windows whose audio this monitor no longer holds cannot be scored.
        oldest = self._stream.oldest
        ends = [end for end in ends if end - self.window_samples >= oldest]
        result.skipped_windows = due - len(ends)
        if not ends:
            return result
        windows = np.stack([self._stream.read(end - self.window_samples, end).data for end in ends])
        scores, bands = self.detector.score_bands(windows)
        machine = self.machine
        levels = window_level_dbfs(windows).tolist() if machine is not None else None
        for i, (end, score) in enumerate(zip(ends, scores.tolist(), strict=True)):
            end_s = self.stream_time(end)
            row = bands[i] if bands is not None else None
            fed = score
            if not math.isfinite(score):
                result.nonfinite_scores += 1
                fed = math.nan
            level: float | None = None
            suppressed = False
            if machine is not None and levels is not None:
                level = levels[i]
                change = machine.update(level, end_s)
                if change is not None:
                    result.machine.append(change)
                    closed = self.decision.close(end_s) if change.state == "stopped" else None
                    if closed is not None:
                        result.events.append(closed)
                suppressed = machine.suppresses(level)
                if suppressed:
                    fed = math.nan
            result.scores.append(
                WindowScore(
                    start_s=self.stream_time(end - self.window_samples),
                    end_s=end_s,
                    score=score,
                    bands=row,
                    level_dbfs=level,
                    suppressed=suppressed,
                )
            )
            event = self.decision.update(fed, end_s, row)
            if event is not None:
                result.events.append(event)
        return result

    def close(self, now_s: float) -> Event | None:
        """End an event in progress (end of input or shutdown)."""
        return self.decision.close(now_s)
