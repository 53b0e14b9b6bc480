"""Offline scoring through the daemon's own pipeline: ring, monitor, decision."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from .audiofile import check_channel, open_audio, to_mono
from .config import MonitorConfig
from .decision import Event
from .detector import Detector
from .modelspec import band_evidence
from .monitor import Monitor
from .ring import RingBuffer

__all__ = ["score_blocks", "score_file", "score_samples"]

FloatArray = npt.NDArray[np.float32]


def score_samples(
    samples: npt.ArrayLike,
    sample_rate: int,
    detector: Detector,
    settings: MonitorConfig,
    *,
    threshold: float | None = None,
    hop_s: float | None = None,
) -> dict[str, Any]:
    """Score a mono recording exactly as the daemon would, faster than real time.

    Returns ``{"sample_rate", "threshold", "windows": [{start_s, end_s, score}],
    "events": [{start_s, end_s, peak_score, alert_s}]}``; times are seconds from the
    first sample, ``alert_s`` is when the daemon would have raised the alert.
    A model with a ``bands`` output adds ``evidence`` to each event (its peak window's,
    as the end alert carries it); a model with ``level`` metadata adds ``level_dbfs``
    to each window and ``"machine": [{state, at_s, since_s, level_dbfs}]``, the
    machine's state changes (it starts ``running``).
    """
    mono = _mono(samples)
    return score_blocks([mono], sample_rate, detector, settings, threshold=threshold, hop_s=hop_s)


def score_blocks(
    blocks: Iterable[npt.ArrayLike],
    sample_rate: int,
    detector: Detector,
    settings: MonitorConfig,
    *,
    threshold: float | None = None,
    hop_s: float | None = None,
) -> dict[str, Any]:
    """``score_samples`` of a mono recording that arrives in consecutive blocks of any
    length: the same report, while memory holds only the ring, a block and the report
    (however long the recording)."""
    ring = RingBuffer(round(2 * (hop_s or settings.hop_s) * sample_rate) + 4096)
    monitor = Monitor.from_config(
        settings, detector, ring, sample_rate, threshold=threshold, hop_s=hop_s, start_index=0
    )
    step = max(1, round(monitor.hop_s * sample_rate))
    spec = detector.spec
    window_s = spec.window_s
    windows: list[dict[str, float]] = []
    events: list[dict[str, Any]] = []
    machine: list[dict[str, Any]] = []

    def add(event: Event) -> None:
        if event.phase == "start":
            events.append({"alert_s": round(event.at_s, 4)})
            return
        events[-1].update(
            start_s=round(max(0.0, event.onset_s - window_s), 4),
            end_s=round(event.last_anomalous_s, 4),
            peak_score=event.peak_score,
        )
        if spec.bands is not None:
            events[-1]["evidence"] = band_evidence(spec.bands, event.peak_bands)

    for piece, final in _hops(blocks, step):
        ring.write(piece)
        result = monitor.tick(catch_up=True, final=final)
        for w in result.scores:
            window = {"start_s": round(w.start_s, 4), "end_s": round(w.end_s, 4), "score": w.score}
            if w.level_dbfs is not None:
                window["level_dbfs"] = round(w.level_dbfs, 2)
            windows.append(window)
        machine.extend(
            {
                "state": change.state,
                "at_s": round(change.at_s, 4),
                "since_s": round(change.since_s, 4),
                "level_dbfs": round(change.level_dbfs, 2),
            }
            for change in result.machine
        )
        for event in result.events:
            add(event)
    last = monitor.close(monitor.now_s())
    if last is not None:
        add(last)
    keys = ("start_s", "end_s", "peak_score", "alert_s", "evidence")
    report: dict[str, Any] = {
        "sample_rate": sample_rate,
        "threshold": monitor.decision.policy.threshold,
        "windows": windows,
        "events": [{k: e[k] for k in keys if k in e} for e in events],
    }
    if spec.level is not None:
        report["machine"] = machine
    return report


def _hops(blocks: Iterable[npt.ArrayLike], step: int) -> Iterator[tuple[FloatArray, bool]]:
    """The samples of ``blocks`` in consecutive pieces of ``step`` (the last may be
    shorter), each with whether it is the last one."""
    pending = np.empty(0, dtype=np.float32)
    held: FloatArray | None = None  # a piece, yielded once it is known not to be the last
    for block in blocks:
        mono = _mono(block)
        pending = np.concatenate([pending, mono]) if pending.size else mono
        whole = pending.shape[0] - pending.shape[0] % step
        for begin in range(0, whole, step):
            if held is not None:
                yield held, False
            held = pending[begin : begin + step]
        pending = pending[whole:]
    if pending.size:
        if held is not None:
            yield held, False
        held = pending
    if held is not None:
        yield held, True


def _mono(samples: npt.ArrayLike) -> FloatArray:
    mono = np.asarray(samples, dtype=np.float32)
    if mono.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {mono.shape}")
    return mono


def score_file(
    path: str,
    detector: Detector,
    settings: MonitorConfig,
    *,
    channel: int | None = None,
    threshold: float | None = None,
    hop_s: float | None = None,
) -> dict[str, Any]:
    """Read one file (any format ``open_audio`` takes) and score it with ``score_blocks``:
    a WAV block by block, in bounded memory however long it is; another format decoded
    whole by ffmpeg first. AudioDecodeError naming the file when it cannot be read, is a
    truncated WAV, or holds a NaN or infinite sample.

    ``channel`` picks one channel of a multichannel file; ``None`` mixes down.
    """
    with open_audio(path) as audio:
        check_channel(channel, audio.channels)
        report = score_blocks(
            (to_mono(block, channel) for block in audio.blocks(finite=True)),
            audio.sample_rate,
            detector,
            settings,
            threshold=threshold,
            hop_s=hop_s,
        )
    return {"file": path, **report}
