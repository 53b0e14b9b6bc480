"""The shipped models/demo.onnx: the contract, its size, and it hears the synthetic faults."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from asd_edge.config import MonitorConfig
from asd_edge.detector import Detector
from asd_edge.scoring import score_samples
from training.export import read_metadata
from training.synth import ANOMALY_KINDS, Machine

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo.onnx"
DEMO_KIND = "bandstat"
"""What models/build_demo.sh fits: the default, ``asd-train fit --model auto``."""
MAX_BYTES = 5_000_000
DURATION_S = 3.0
FRESH_SEED = 20261121
"""Seeds the test recordings; ``asd-train synth`` (what the model saw) uses others."""


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(DEMO)


def auc(normal: list[float], anomalous: list[float]) -> float:
    """Probability that an anomalous file outscores a normal one (ties count half)."""
    wins = sum((a > n) + 0.5 * (a == n) for a in anomalous for n in normal)
    return wins / (len(normal) * len(anomalous))


class TestDemoModel:
    def test_contract_metadata(self, detector: Detector) -> None:
        """The file says what it is: an unsupervised kind, a calibrated threshold (false
        alarms per day at the daemon's hop), and the hash of the data it learnt from."""
        meta = read_metadata(DEMO)
        assert meta["schema"] == 1
        assert meta["kind"] == DEMO_KIND == detector.spec.kind
        assert detector.spec.bands is not None and detector.spec.level is not None
        assert meta["sample_rate"] == 16000 and meta["window_s"] == 1.0
        assert math.isfinite(meta["threshold"])
        assert detector.threshold == pytest.approx(meta["threshold"])
        calibration = meta["calibration"]
        assert calibration["method"] == "fa_per_day"
        assert calibration["target_fa_per_day"] > 0 and calibration["hop_s"] == 0.5
        assert calibration["empirical_events"] == 0
        training = meta["training"]
        assert re.fullmatch(r"[0-9a-f]{64}", training["data_sha256"])
        assert training["files"] > 0 and training["seed"] == 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", training["created"])

    def test_small_enough_to_ship(self) -> None:
        """Under 5 MB, as a model in the repository must be."""
        assert DEMO.stat().st_size < MAX_BYTES

    def test_anomalies_score_above_normal_sound(self, detector: Detector) -> None:
        """On fresh recordings of the demo machine (not the training files), every
        anomaly kind scores above normal sound (AUC > 0.8 on the files' mean scores),
        and normal sound raises no event through the daemon's decision rule."""
        machine = Machine(machine_id=0, seed=0)
        settings = MonitorConfig(name="demo", model=str(DEMO), hop_s=0.5)
        scores: dict[str, list[float]] = {"normal": [], "anomaly": []}
        events: dict[str, list[int]] = {"normal": [], "anomaly": []}
        plan = [("normal", None)] * 4 + [("anomaly", kind) for kind in ANOMALY_KINDS]
        for i, (label, kind) in enumerate(plan):
            rng = np.random.default_rng([FRESH_SEED, i])
            wave = (
                machine.normal(DURATION_S, rng)
                if kind is None
                else machine.anomaly(kind, DURATION_S, rng)
            )
            report = score_samples(wave, machine.sample_rate, detector, settings)
            scores[label].append(float(np.mean([w["score"] for w in report["windows"]])))
            events[label].append(len(report["events"]))
        assert auc(scores["normal"], scores["anomaly"]) > 0.8, scores
        assert events["normal"] == [0, 0, 0, 0], scores
