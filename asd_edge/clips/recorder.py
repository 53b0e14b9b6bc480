"""The tick side of clips: the audio around each event, copied from the ring, handed to a store."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..config import ClipsConfig
from ..decision import Event
from ..ring import RingBuffer
from .types import ClipRequest

if TYPE_CHECKING:
    from .writer import ClipStore

__all__ = ["ClipRecorder"]


@dataclass(slots=True)
class _OpenClip:
    """A clip the recorder is following: where it starts, where it stops, what is copied."""

    alert_id: str
    monitor: str
    ring: RingBuffer
    sample_rate: int
    window_s: float
    start_index: int
    """Ring index of the first sample (pre-roll included)."""
    anomaly_index: int
    """Ring index where the anomalous audio begins (``onset_s - window_s``)."""
    limit_index: int
    """``start_index`` + ``clips.max_clip_s``: the clip is cut here at the latest."""
    started_at: datetime
    start_event: Event
    model: Mapping[str, Any]
    path: Path
    buffer: npt.NDArray[np.float32]
    """Room for the longest clip; ``buffer[i]`` is ring sample ``start_index + i``."""
    filled: int = 0
    """Samples of ``buffer`` copied from the ring so far."""
    head: int = 0
    """Samples at the front the ring had already overwritten (the clip starts after them)."""
    lost: int = 0
    """Samples missing from the clip (``head`` plus any gap, which is silence)."""
    scores: list[tuple[float, float]] = field(default_factory=list)
    stop_index: int | None = None
    """Ring index after the last sample, once the event has ended; None while it runs."""
    end_event: Event | None = None
    evidence: list[dict[str, Any]] | None = None
    """The latest evidence (the start's, then the end's); None: the model has no bands."""
    submitted: bool = False

    def due_index(self) -> int:
        """Ring index the clip ends at, as far as known now."""
        if self.stop_index is None:
            return self.limit_index
        return max(self.start_index, min(self.stop_index, self.limit_index))

    def drain(self) -> None:
        """Copy what the ring has gained of the clip since the last call (a tick's worth:
        the ring never has to hold a whole clip, and no tick copies one at once)."""
        begin = self.start_index + self.filled
        end = min(self.ring.written, self.due_index())
        if end <= begin:
            return
        view = self.buffer[self.filled : end - self.start_index]
        chunk = self.ring.read(begin, end, out=view)
        missing = chunk.start - begin
        if missing:  # overwritten before we copied it: place the rest where it belongs
            view[missing:] = chunk.data
            view[:missing] = 0.0
            self.lost += missing
            if self.filled == 0:
                self.head = missing
        self.filled = end - self.start_index


class ClipRecorder:
    """The tick side of clips: which clips are open, when each is cut.

    Every method runs on the tick thread and does no disk I/O. An open clip's
    audio is copied out of the ring a tick at a time, once (pre-roll at the start);
    a finished clip is handed to ``ClipStore.submit``.
    """

    def __init__(
        self,
        store: ClipStore,
        config: ClipsConfig,
        *,
        device_id: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self.device_id = device_id
        self._wall_clock = wall_clock
        self._open: list[_OpenClip] = []  # not yet submitted
        self._active: dict[str, _OpenClip] = {}  # monitor -> clip of its event in progress
        self._history: dict[str, deque[tuple[float, float]]] = {}
        max_clip_s = config.max_clip_s if config.max_clip_s is not None else 3600.0
        self._max_clip_s = max_clip_s
        self._history_s = max_clip_s + config.pre_s + 10.0

    @property
    def pending(self) -> int:
        """Clips being recorded (opened, not yet submitted)."""
        return len(self._open)

    def start(
        self,
        *,
        alert_id: str,
        monitor: str,
        event: Event,
        ring: RingBuffer,
        sample_rate: int,
        window_s: float,
        model: Mapping[str, Any],
        evidence: list[dict[str, Any]] | None = None,
    ) -> Path | None:
        """Open the clip of an event that just started; returns its planned path
        (None when clips are disabled). The clip begins ``pre_s`` before the
        anomalous audio (``onset_s - window_s``), or at the oldest sample the ring holds.
        ``evidence``: the start alert's (``modelspec.band_evidence``), for the sidecar."""
        if not self.config.enabled:
            return None
        previous = self._active.pop(monitor, None)
        if previous is not None and previous.stop_index is None:  # a start without an end
            previous.stop_index = ring.written
        anomaly_index = max(0, round((event.onset_s - window_s) * sample_rate))
        wanted = anomaly_index - round(self.config.pre_s * sample_rate)
        start_index = min(max(wanted, ring.oldest, 0), anomaly_index)
        age_s = (ring.written - start_index) / sample_rate
        started_at = datetime.fromtimestamp(self._wall_clock() - age_s, tz=UTC)
        path = self.store.planned_path(monitor, alert_id, started_at)
        limit = round(self._max_clip_s * sample_rate)
        clip = _OpenClip(
            alert_id=alert_id,
            monitor=monitor,
            ring=ring,
            sample_rate=sample_rate,
            window_s=window_s,
            start_index=start_index,
            anomaly_index=anomaly_index,
            limit_index=start_index + limit,
            started_at=started_at,
            start_event=event,
            model=dict(model),
            path=path,
            buffer=np.empty(limit, dtype=np.float32),  # its pages are touched as it fills
            evidence=evidence,
        )
        start_s = start_index / sample_rate
        clip.scores = [(t, s) for t, s in self._history.get(monitor, ()) if t > start_s]
        clip.drain()  # the pre-roll, before the ring overwrites it
        self._open.append(clip)
        self._active[monitor] = clip
        return path

    def score(self, monitor: str, at_s: float, score: float) -> None:
        """Record a window score (``at_s``: stream time of the window's end) for the
        timeline of the monitor's open clips and of clips that start soon."""
        if not self.config.enabled:
            return
        history = self._history.setdefault(monitor, deque())
        history.append((at_s, score))
        while history[0][0] < at_s - self._history_s:
            history.popleft()
        for clip in self._open:
            if clip.monitor == monitor and (
                clip.stop_index is None or at_s * clip.sample_rate <= clip.stop_index
            ):
                clip.scores.append((at_s, score))

    def end(
        self, *, monitor: str, event: Event, evidence: list[dict[str, Any]] | None = None
    ) -> None:
        """The monitor's event ended: its clip closes at ``last_anomalous_s + post_s``
        (unless it was already cut at ``max_clip_s``: then nothing more is recorded).
        ``evidence``: the end alert's, which replaces the start's in the sidecar."""
        clip = self._active.pop(monitor, None)
        if clip is None:
            return
        clip.end_event = event
        if evidence is not None:
            clip.evidence = evidence
        if not clip.submitted:
            stop_s = event.last_anomalous_s + self.config.post_s
            clip.stop_index = max(clip.anomaly_index, round(stop_s * clip.sample_rate))

    def poll(self) -> list[str]:
        """Copy the new audio of every open clip; submit those whose end the ring now
        holds, or that reached ``max_clip_s`` (cut there, marked truncated). Returns
        the alert ids queued."""
        queued = []
        for clip in list(self._open):
            clip.drain()
            due = clip.due_index()
            if clip.start_index + clip.filled >= due:
                cut = "end" if due == clip.stop_index else "max_clip_s"
                if self._submit(clip, due, cut):
                    queued.append(clip.alert_id)
        return queued

    def flush(self) -> list[str]:
        """At shutdown: submit every open clip with what the ring holds now."""
        queued = []
        for clip in list(self._open):
            clip.drain()
            due = clip.due_index()
            stop = min(due, clip.start_index + clip.filled)
            cut = "end" if stop == clip.stop_index else "shutdown"
            if self._submit(clip, stop, cut):
                queued.append(clip.alert_id)
        self._active.clear()
        return queued

    def _submit(self, clip: _OpenClip, stop: int, cut: str) -> bool:
        self._open.remove(clip)
        clip.submitted = True
        rate = clip.sample_rate
        first = clip.start_index + clip.head  # ring index of the clip's first sample
        samples = clip.buffer[clip.head : max(clip.head, stop - clip.start_index)]
        start, end = clip.start_event, clip.end_event
        duration_s = samples.shape[0] / rate
        anomaly_offset_s = (clip.anomaly_index - first) / rate
        end_offset_s = None if end is None else end.last_anomalous_s - first / rate
        markers = [t for t in (anomaly_offset_s, end_offset_s) if t is not None and t >= 0.0]
        facts: dict[str, Any] = {
            "onset_s": start.onset_s,
            "started_s": start.at_s,
            "anomaly_start_s": clip.anomaly_index / rate,
            "anomaly_start_offset_s": anomaly_offset_s,
            "last_anomalous_s": None if end is None else end.last_anomalous_s,
            "anomaly_end_offset_s": end_offset_s,
            "ended_s": None if end is None else end.at_s,
            "score": start.score,
            "peak_score": max([start.peak_score, *(s for _, s in clip.scores if math.isfinite(s))]),
            "threshold": start.threshold,
            "window_s": clip.window_s,
            "truncated": cut == "max_clip_s",
            "cut": cut,
            "lost_samples": clip.lost,
        }
        band_hz = None
        if clip.evidence is not None:
            facts["evidence"] = clip.evidence
            if clip.evidence:
                lo, hi = clip.evidence[0]["band_hz"]
                band_hz = (float(lo), float(hi))
        request = ClipRequest(
            alert_id=clip.alert_id,
            monitor=clip.monitor,
            device_id=self.device_id,
            samples=samples,
            sample_rate=rate,
            started_at=clip.started_at + timedelta(seconds=clip.head / rate),
            stream_start_s=first / rate,
            pre_s=max(0, clip.anomaly_index - first) / rate,
            event=facts,
            model=clip.model,
            scores=list(clip.scores),
            path=clip.path,
            markers_s=tuple(t for t in markers if t <= duration_s),
            band_hz=band_hz,
        )
        return self.store.submit(request)
