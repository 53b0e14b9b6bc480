"""One continuous recording of a synthetic machine with anomalies, and what describes it.

``asd-train synth --stream`` and the demo (``devkit.demo``) both write a stream this way:
``stream.wav`` and ``stream.json``, whose ``anomalies`` are what was injected where (the
daemon's detections are ``events`` elsewhere: ``asd-edge score``, alerts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asd_edge.audiofile import write_wav

from .faults import check_kind
from .machine import Machine, make_stream

__all__ = ["Anomaly", "Stream", "parse_anomalies"]


@dataclass(frozen=True)
class Anomaly:
    """One injected anomaly: ``kind`` on [start_s, start_s + duration_s) of the stream."""

    kind: str
    start_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        """Where the anomaly's sound stops, in stream seconds."""
        return self.start_s + self.duration_s

    def as_dict(self) -> dict[str, Any]:
        """The anomaly in ``stream.json``."""
        return {"kind": self.kind, "start_s": self.start_s, "duration_s": self.duration_s}


@dataclass(frozen=True)
class Stream:
    """A deterministic stream of one synthetic machine with anomalies."""

    duration_s: float
    anomalies: tuple[Anomaly, ...] = ()
    machine_id: int = 0
    machine_seed: int = 0
    """The machine's voice (``Machine.seed``): the same voice a dataset of this seed has."""
    seed: int = 0
    """The stream's own randomness (its variation and the faults' details)."""
    severity: float = 1.0
    """How strong every anomaly is (``make_stream``)."""
    sample_rate: int = 16000

    @property
    def lead_s(self) -> float:
        """Seconds of normal sound before the first anomaly."""
        return min((a.start_s for a in self.anomalies), default=self.duration_s)

    def render(self) -> np.ndarray:
        """The stream: float32 mono at ``sample_rate`` (the same for the same stream)."""
        machine = Machine(self.machine_id, seed=self.machine_seed, sample_rate=self.sample_rate)
        spans = [(a.start_s, a.duration_s, a.kind) for a in self.anomalies]
        return make_stream(
            self.duration_s, spans, machine=machine, seed=self.seed, severity=self.severity
        )

    def as_dict(self) -> dict[str, Any]:
        """What the stream is: ``stream.json`` without the file name."""
        return {
            "sample_rate": self.sample_rate,
            "duration_s": self.duration_s,
            "machine_id": self.machine_id,
            "machine_seed": self.machine_seed,
            "seed": self.seed,
            "severity": self.severity,
            "anomalies": [a.as_dict() for a in self.anomalies],
        }

    def write(self, folder: Path, samples: np.ndarray | None = None) -> Path:
        """Write ``folder/stream.wav`` (16-bit; ``samples``, else rendered) and
        ``folder/stream.json``; return the WAV's path."""
        folder.mkdir(parents=True, exist_ok=True)
        wav = folder / "stream.wav"
        write_wav(wav, self.render() if samples is None else samples, self.sample_rate)
        meta = {"wav": wav.name, **self.as_dict()}
        (folder / "stream.json").write_text(json.dumps(meta, indent=2) + "\n")
        return wav


def parse_anomalies(text: str) -> tuple[Anomaly, ...]:
    """``"start:duration:kind,..."`` (seconds) as anomalies; ValueError naming a bad one."""
    anomalies: list[Anomaly] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"anomaly {item!r}: expected start:duration:kind, e.g. 12:5:bearing")
        try:
            start_s, duration_s = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(
                f"anomaly {item!r}: start and duration must be numbers (seconds)"
            ) from None
        kind = parts[2].strip()
        check_kind(kind)
        anomalies.append(Anomaly(kind, start_s, duration_s))
    return tuple(anomalies)
