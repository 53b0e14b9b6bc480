"""The live feed: each monitor's level, spectrum and score four times a second, only while
someone watches (``cmd/live`` leases it).

A watcher (the web dashboard) sends ``<prefix>/cmd/live {"seconds": N}`` and repeats it
before the lease runs out; until it does, the tick loop publishes one frame per monitor on
``<prefix>/live/<monitor>`` every ``FRAME_INTERVAL_S`` (QoS 0, not retained, dropped while
the broker is away). Without a lease the tick pays one comparison: nothing is read,
computed or woken for.

The spectrum (``LiveSpectrum``) is the power of the newest ``SPAN_S`` of the monitor's
channel: Hann-windowed FFT frames (half overlapping, averaged), summed into ``N_BANDS``
bands whose edges are equally spaced on the mel scale (``features.hz_to_mel``, Slaney,
the scale of the models' log-mel) from ``LOW_HZ`` to Nyquist (``band_edges_hz``), in dB
relative to a full-scale sine (a full-scale sine inside one band reads 0 dB), floored at
``FLOOR_DB``. Each bin belongs to exactly one band (rectangular, not the models'
overlapping triangles, whose area normalisation has no level meaning). ``level_dbfs``
is the RMS level of the same audio as ``meters.dbfs`` measures it everywhere (relative to
a full-scale square wave: a full-scale sine is -3.01 dBFS).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from .capture import AudioSource
from .errors import CommandError
from .features import hz_to_mel, mel_to_hz, periodic_hann
from .jsonvalues import iso_utc
from .meters import dbfs
from .mqtt.commands import Command
from .telemetry import MonitorState

__all__ = [
    "FLOOR_DB",
    "FRAME_INTERVAL_S",
    "LIVE_DEFAULT_S",
    "LIVE_MAX_S",
    "LIVE_MIN_S",
    "N_BANDS",
    "LiveFeed",
    "LiveSpectrum",
    "band_edges_hz",
]

log = structlog.get_logger()

LIVE_DEFAULT_S: Final = 30.0
"""A ``cmd/live`` without ``seconds`` leases the feed this long."""
LIVE_MIN_S: Final = 1.0
LIVE_MAX_S: Final = 300.0
"""``seconds`` must lie in [LIVE_MIN_S, LIVE_MAX_S]: a forgotten watcher costs 5 minutes."""
FRAME_INTERVAL_S: Final = 0.25
"""One frame per monitor this often while leased."""
EARLY_S: Final = 0.05
"""A wake this close before a frame is due publishes it (sharing the monitors' wakes)."""
SPAN_S: Final = 0.25
"""Audio a frame's level and spectrum cover (the newest of the channel)."""
N_BANDS: Final = 64
LOW_HZ: Final = 20.0
"""Lowest band edge; the highest is Nyquist."""
FLOOR_DB: Final = -120.0
"""Lowest value of ``spectrum_db`` (digital silence)."""
FFT_BIN_HZ: Final = 25.0
"""Widest FFT bin: ``n_fft`` is the smallest power of two with bins this narrow or less."""


def band_edges_hz(sample_rate: int) -> npt.NDArray[np.float64]:
    """The ``N_BANDS + 1`` band edges: equally spaced mels from ``LOW_HZ`` to Nyquist."""
    nyquist = sample_rate / 2.0
    mels = np.linspace(hz_to_mel(LOW_HZ), hz_to_mel(nyquist), N_BANDS + 1)
    edges = np.asarray(mel_to_hz(mels), dtype=np.float64)
    edges[0], edges[-1] = LOW_HZ, nyquist
    return edges


class LiveSpectrum:
    """Level and band spectrum of the newest ``SPAN_S`` of audio at one sample rate; the
    window and the bin-to-band matrix are computed once here."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.n_fft = 1 << max(8, math.ceil(math.log2(sample_rate / FFT_BIN_HZ)))
        self.hop = self.n_fft // 2
        self.span_samples = max(self.n_fft, round(SPAN_S * sample_rate))
        self.edges_hz = band_edges_hz(sample_rate)
        window = periodic_hann(self.n_fft)
        self._window = window.astype(np.float32)
        # A full-scale sine's one-sided power, summed over its bins: n_fft * sum(w^2) / 4.
        full_scale = self.n_fft * float(np.sum(window**2)) / 4.0
        bins_hz = np.arange(self.n_fft // 2 + 1) * sample_rate / self.n_fft
        band = np.searchsorted(self.edges_hz, bins_hz, side="right") - 1
        band[bins_hz == self.edges_hz[-1]] = N_BANDS - 1  # Nyquist belongs to the last band
        matrix = np.zeros((bins_hz.size, N_BANDS), dtype=np.float32)
        inside = (band >= 0) & (band < N_BANDS)
        matrix[np.flatnonzero(inside), band[inside]] = 1.0
        for b in np.flatnonzero(matrix.sum(axis=0) == 0):  # a band narrower than one bin
            centre = math.sqrt(self.edges_hz[b] * self.edges_hz[b + 1])
            matrix[int(np.argmin(np.abs(bins_hz - centre))), b] = 1.0
        self._bands = matrix / np.float32(full_scale)
        self.buffer = np.zeros(self.span_samples, dtype=np.float32)
        """Where a frame's audio is copied out of the ring (no allocation per frame)."""

    def measure(self, samples: npt.ArrayLike) -> tuple[float, npt.NDArray[np.float32]]:
        """``(level_dbfs, spectrum_db[N_BANDS])`` of ``samples`` (the newest audio; shorter
        than one FFT frame is zero-padded). Non-finite samples count as silence."""
        x = np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        level = dbfs(float(np.dot(x, x)) / x.size) if x.size else dbfs(0.0)
        if x.size < self.n_fft:
            x = np.concatenate([np.zeros(self.n_fft - x.size, np.float32), x])
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop]
        spectrum = np.fft.rfft(frames * self._window, axis=-1)
        power = (spectrum.real**2 + spectrum.imag**2).mean(axis=0, dtype=np.float32)
        bands = power.astype(np.float32) @ self._bands
        db = 10.0 * np.log10(np.maximum(bands, 1e-30))
        return level, np.maximum(db, FLOOR_DB).astype(np.float32)


class LiveFeed:
    """The lease and the frames (see the module doc).

    ``command`` (``cmd/live``) runs on the MQTT thread and only moves the lease's end;
    ``poll`` and ``due_in_s`` run on the tick thread with the daemon's monotonic ``now``,
    which must come from the same clock as ``clock``. ``publish`` gets
    ``(monitor, payload)`` (``MqttLink.publish_live``); None: nothing is published.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        publish: Callable[[str, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self._clock = clock
        self._wall = wall_clock
        self.publish = publish
        self._until_s = -math.inf
        self._next_s = -math.inf
        self._described: set[str] = set()  # monitors whose band edges this lease sent
        self._spectra: dict[int, LiveSpectrum] = {}
        self.frames = 0
        """Frames published since start."""

    # --- the lease (MQTT thread) ---------------------------------------------------------

    def renew(self, seconds: float) -> float:
        """Keep the feed running for at least ``seconds`` from now (a shorter renewal never
        cuts another watcher's longer lease); returns the seconds it now has left."""
        if not (LIVE_MIN_S <= seconds <= LIVE_MAX_S):
            raise ValueError(f"seconds must be {LIVE_MIN_S:g}-{LIVE_MAX_S:g}, got {seconds}")
        now = self._clock()
        self._until_s = max(self._until_s, now + seconds)
        return self._until_s - now

    def command(self, cmd: Command) -> dict[str, Any]:
        """``cmd/live {"seconds": N}`` (1-300, default 30): renew the lease; the reply says
        how long it runs and how often frames come."""
        seconds = cmd.args.get("seconds", LIVE_DEFAULT_S)
        if seconds is None:
            seconds = LIVE_DEFAULT_S
        if not (isinstance(seconds, int | float) and math.isfinite(seconds)):
            raise CommandError(f"seconds: expected a number, got {seconds!r}")
        if not (LIVE_MIN_S <= seconds <= LIVE_MAX_S):
            raise CommandError(
                f"seconds: expected {LIVE_MIN_S:g}-{LIVE_MAX_S:g} (the lease; renew it "
                f"before it ends), got {seconds:g}"
            )
        left_s = self.renew(float(seconds))
        return {"seconds": round(left_s, 3), "interval_s": FRAME_INTERVAL_S}

    # --- the frames (tick thread) --------------------------------------------------------

    def active(self, now: float) -> bool:
        """Whether a lease runs at ``now``."""
        return now < self._until_s

    def due_in_s(self, now: float) -> float | None:
        """Seconds until the next frame is due; None without a lease (the loop sleeps as
        it would without the feed)."""
        if now >= self._until_s:
            return None
        return max(0.0, self._next_s - now)

    def poll(self, now: float, states: Mapping[str, MonitorState], source: AudioSource) -> int:
        """Publish a frame of every monitor if one is due; returns how many were published."""
        if now >= self._until_s:
            if self._next_s != -math.inf:  # the lease just ended
                self._next_s = -math.inf
                self._described.clear()
                log.info("live_ended", frames=self.frames)
            return 0
        if now < self._next_s - EARLY_S:
            return 0
        self._next_s = now + FRAME_INTERVAL_S
        wall_now = self._wall()
        for state in list(states.values()):
            payload = self.frame(state, source, wall_now)
            if self.publish is not None:
                self.publish(state.name, payload)
            self.frames += 1
        return len(states)

    def frame(self, state: MonitorState, source: AudioSource, wall_now: float) -> dict[str, Any]:
        """One monitor's frame: its channel's newest audio, its latest score (see README).
        Reads the ring with ``latest``: no reader's cursor moves."""
        rate = source.sample_rate
        spectrum = self._spectra.get(rate)
        if spectrum is None:
            spectrum = self._spectra[rate] = LiveSpectrum(rate)
        chunk = source.ring(state.channel).latest(spectrum.span_samples, out=spectrum.buffer)
        level, bands_db = spectrum.measure(chunk.data)
        score = state.last_score
        payload: dict[str, Any] = {
            "monitor": state.name,
            "at": iso_utc(wall_now),
            "t": round(wall_now, 3),
            "level_dbfs": round(level, 2),
            "spectrum_db": np.round(bands_db.astype(np.float64), 1).tolist(),
            "score": score if score is not None and math.isfinite(score) else None,
            "threshold": state.threshold,
            "index": state.index(),
            "anomaly": state.anomaly,
            "machine": state.machine,
        }
        if state.name not in self._described:  # the first frame of a lease
            self._described.add(state.name)
            payload["sample_rate_hz"] = rate
            payload["band_edges_hz"] = np.round(spectrum.edges_hz, 1).tolist()
        return payload
