"""The demo's scenario: a synthetic machine stream with anomalies spaced so none merge."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from asd_edge.audiofile import write_wav
from asd_edge.config import MonitorConfig
from asd_edge.detector import Detector
from asd_edge.scoring import score_samples
from training.synth import ANOMALY_KINDS, Machine, make_stream

__all__ = ["Anomaly", "Scenario", "lead_in_threshold"]

SAMPLE_RATE_HZ = 16000
LEAD_S = 8.0
"""Normal sound before the first anomaly: the daemon starts while it plays (a few
seconds at most) and its first windows are all normal."""
ANOMALY_S = 4.0
GAP_S = 10.0
"""Normal sound after each anomaly. An event ends about window (1 s) + hold (1 s) after
its sound; then come the clip post-roll (2 s) and the refractory period (5 s): 10 s
keep the events, their clips and their alerts apart with 3 s to spare."""
TAIL_S = 8.0
"""Normal sound after the last anomaly: its end alert (after window, hold and the clip's
post-roll, about 4.5 s) comes within it, and the daemon is stopped before it ends."""


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


@dataclass(frozen=True)
class Scenario:
    """A deterministic stream of machine ``machine_id`` (``training.synth``) with anomalies."""

    duration_s: float
    anomalies: tuple[Anomaly, ...]
    seed: int = 0
    machine_id: int = 0
    sample_rate: int = SAMPLE_RATE_HZ

    @classmethod
    def plan(
        cls,
        events: int = len(ANOMALY_KINDS),
        *,
        kinds: Sequence[str] = ANOMALY_KINDS,
        seed: int = 0,
    ) -> Scenario:
        """``events`` anomalies of ``kinds`` (cycled), ``ANOMALY_S`` long, one every
        ``ANOMALY_S + GAP_S`` seconds after a ``LEAD_S`` lead-in; ``TAIL_S`` after the last."""
        if events < 1:
            raise ValueError(f"events: expected at least 1, got {events}")
        if not kinds:
            raise ValueError("kinds: expected at least one anomaly kind")
        unknown = [k for k in kinds if k not in ANOMALY_KINDS]
        if unknown:
            raise ValueError(
                f"kinds: unknown {', '.join(unknown)}; expected some of {', '.join(ANOMALY_KINDS)}"
            )
        period_s = ANOMALY_S + GAP_S
        anomalies = tuple(
            Anomaly(kinds[i % len(kinds)], LEAD_S + i * period_s, ANOMALY_S) for i in range(events)
        )
        duration_s = anomalies[-1].end_s + TAIL_S
        return cls(duration_s=duration_s, anomalies=anomalies, seed=seed)

    @property
    def lead_s(self) -> float:
        """Seconds of normal sound before the first anomaly."""
        return self.anomalies[0].start_s if self.anomalies else self.duration_s

    def render(self) -> npt.NDArray[np.float32]:
        """The stream: float32 mono at ``sample_rate`` (the same for the same scenario)."""
        # The machine's voice is fixed (the one models/demo.onnx learnt: seed 0); the demo's
        # --seed varies only the stream's own randomness.
        machine = Machine(machine_id=self.machine_id, seed=0, sample_rate=self.sample_rate)
        events = [(a.start_s, a.duration_s, a.kind) for a in self.anomalies]
        return make_stream(self.duration_s, events, machine=machine, seed=self.seed)

    def as_dict(self) -> dict[str, Any]:
        """What the scenario is, for ``stream.json`` and the summary."""
        return {
            "sample_rate": self.sample_rate,
            "duration_s": self.duration_s,
            "machine_id": self.machine_id,
            "seed": self.seed,
            "anomalies": [
                {"kind": a.kind, "start_s": a.start_s, "duration_s": a.duration_s}
                for a in self.anomalies
            ],
        }

    def write(self, folder: Path, samples: npt.NDArray[np.float32]) -> Path:
        """Write ``samples`` as ``folder/stream.wav`` (16-bit) and the plan as
        ``folder/stream.json``; return the WAV's path."""
        folder.mkdir(parents=True, exist_ok=True)
        wav = folder / "stream.wav"
        write_wav(wav, samples, self.sample_rate)
        meta = {"wav": wav.name, **self.as_dict()}
        (folder / "stream.json").write_text(json.dumps(meta, indent=2) + "\n")
        return wav


def lead_in_threshold(
    detector: Detector,
    samples: npt.NDArray[np.float32],
    sample_rate: int,
    lead_s: float,
    margin: float,
) -> float:
    """The loudest score of the stream's normal lead-in, plus ``margin``.

    For a model that learned nothing (``level``): its threshold is set once, from the
    sound this machine makes when it is normal, before the daemon starts."""
    lead = samples[: round(lead_s * sample_rate)]
    settings = MonitorConfig(name="lead-in", model=detector.path)
    scored = score_samples(lead, sample_rate, detector, settings)
    scores = [w["score"] for w in scored["windows"]]
    if not scores:
        raise ValueError(f"a lead-in of {lead_s} s is shorter than one window")
    return float(max(scores) + margin)
