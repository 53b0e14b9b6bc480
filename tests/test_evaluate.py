"""``asd-train evaluate``: files scored through the daemon's pipeline and decision rule."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from support.audio import tone_burst, write_wav

from training.cli import main as asd_train
from training.evaluate import evaluate_files

RATE = 16000


class File:
    def __init__(self, path: Path, label: str) -> None:
        self.path, self.label = path, label


def quiet(seed: int, seconds: float = 4.0) -> np.ndarray:
    """Broadband noise around -50 dBFS: far below the level model's -30 dBFS threshold."""
    return (0.003 * np.random.default_rng(seed).standard_normal(round(seconds * RATE))).astype(
        np.float32
    )


def loud(seed: int) -> np.ndarray:
    """The same noise with a 2 s loud tone: three windows above -30 dBFS, so an event."""
    return tone_burst(RATE, 4.0, (1.0, 3.0), seed=seed)


def dcase_folder(root: Path, normal: list[np.ndarray], anomaly: list[np.ndarray]) -> Path:
    """A DCASE-style dataset: train/ with normal sound, test/ with both labels."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    write_wav(root / "train" / "normal_000.wav", quiet(99), RATE)
    for i, x in enumerate(normal):
        write_wav(root / "test" / f"normal_{i:03d}.wav", x, RATE)
    for i, x in enumerate(anomaly):
        write_wav(root / "test" / f"anomaly_{i:03d}.wav", x, RATE)
    return root


class TestMetrics:
    def test_perfect_separation(self, tmp_path: Path, level_model: Path) -> None:
        """Loud files fire the decision, quiet ones do not: AUC 1, all counts right."""
        files = [write_wav(tmp_path / f"n{i}.wav", quiet(i), RATE) for i in range(3)]
        files += [write_wav(tmp_path / f"a{i}.wav", loud(i), RATE) for i in range(3)]
        labelled = [File(p, "normal" if p.name[0] == "n" else "anomaly") for p in files]
        ev = evaluate_files(level_model, labelled, tmp_path / "out", progress=False)
        m = ev.metrics
        assert (m["auc"], m["pauc"], m["auc_max"], m["pauc_max"]) == (1.0, 1.0, 1.0, 1.0)
        assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 0, 3, 0)
        assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)
        assert m["false_alarms_per_hour"] == 0.0
        assert m["normal_hours"] == pytest.approx(12.0 / 3600)
        assert "decision rule" in m["decision"]["rule"] and m["decision"]["threshold"] == -30.0
        assert json.loads((tmp_path / "out" / "metrics.json").read_text())["tp"] == 3
        with (tmp_path / "out" / "files.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert [r["judged_anomalous"] for r in rows] == ["False"] * 3 + ["True"] * 3
        assert all(r["windows"] == "7" for r in rows)  # 4 s at a 0.5 s hop
        for picture in ("roc.png", "score_hist.png"):
            assert (tmp_path / "out" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # what the README lists, and no empty train.log beside it
        written = sorted(p.name for p in (tmp_path / "out").iterdir())
        assert written == ["files.csv", "metrics.json", "roc.png", "score_hist.png"]

    def test_false_alarms_per_hour_of_normal_audio(self, tmp_path: Path, level_model: Path) -> None:
        """An event on a normal file is a false alarm; the rate is per hour of normal audio."""
        normal = [quiet(0), quiet(1), loud(2)]
        files = [File(write_wav(tmp_path / f"n{i}.wav", x, RATE), "normal") for i, x in
                 enumerate(normal)]  # fmt: skip
        files.append(File(write_wav(tmp_path / "a.wav", loud(3), RATE), "anomaly"))
        m = evaluate_files(level_model, files, tmp_path / "out", progress=False).metrics
        assert m["fp"] == 1 and m["false_alarms"] == 1
        assert m["false_alarms_per_hour"] == pytest.approx(3600 / 12.0)
        assert m["precision"] == 0.5 and m["recall"] == 1.0

    def test_decision_is_not_a_single_window(self, tmp_path: Path, level_model: Path) -> None:
        """One loud window is not an event (2 of 3 are needed): the file is not judged
        anomalous although its max score is far above the threshold."""
        x = tone_burst(RATE, 4.0, (0.1, 0.4))  # only in the first window (the next starts at 0.5)
        f = File(write_wav(tmp_path / "blip.wav", x, RATE), "anomaly")
        row = evaluate_files(level_model, [f], tmp_path / "out", progress=False).rows[0]
        assert row["max_score"] > -20.0 and row["events"] == 0
        assert row["judged_anomalous"] is False


class TestCommand:
    def test_copies_judged_files_and_reports_unreadable_ones(
        self, tmp_path: Path, level_model: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Judged-anomalous files are copied aside; a file that cannot be read is named,
        skipped, and makes the exit code 1 while the rest is evaluated."""
        data = dcase_folder(tmp_path / "data", [quiet(1), quiet(2)], [loud(3), loud(4)])
        (data / "test" / "anomaly_009.wav").write_bytes(b"not audio")
        copies = tmp_path / "judged"
        code = asd_train(
            ["evaluate", "--model", str(level_model), "--data", str(data), "--out",
             str(tmp_path / "out"), "--copy-anomalies", str(copies), "--quiet"]
        )  # fmt: skip
        assert code == 1
        assert "anomaly_009.wav" in capsys.readouterr().err
        assert sorted(p.name for p in copies.iterdir()) == ["anomaly_000.wav", "anomaly_001.wav"]
        m = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert m["files"] == {"normal": 2, "anomaly": 2} and len(m["skipped"]) == 1
        assert m["auc"] == 1.0

    def test_missing_model_is_exit_66(self, tmp_path: Path) -> None:
        """A model path that does not exist: EX_NOINPUT."""
        data = dcase_folder(tmp_path / "data", [quiet(1)], [])
        args = ["evaluate", "--model", str(tmp_path / "none.onnx"), "--data", str(data)]
        assert asd_train([*args, "--out", str(tmp_path / "o")]) == 66

    def test_empty_split_is_exit_65(self, tmp_path: Path, level_model: Path) -> None:
        """Asking for a split with no files: EX_DATAERR."""
        data = dcase_folder(tmp_path / "data", [quiet(1)], [])
        code = asd_train(
            ["evaluate", "--model", str(level_model), "--data", str(data), "--out",
             str(tmp_path / "o"), "--split", "valid", "--quiet"]
        )  # fmt: skip
        assert code == 65
