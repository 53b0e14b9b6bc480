"""``asd-train fit`` end to end: data → training → ONNX → calibration → evaluation → records.

The helpers here (``synthetic_manifest``, ``fit_fast``, ``check_run``) are meant to be
reused by the tests of every detector kind: ``test_every_kind_end_to_end`` runs them
for each kind in ``training.kinds.KIND_NAMES`` whose module exists.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from asd_edge.detector import Detector
from asd_edge.learning.contract import ATOL, RTOL
from asd_edge.modelspec import parse_model_spec
from training.cli import main as asd_train
from training.dataset import MANIFEST_COLUMNS, file_sha256
from training.export import read_metadata
from training.fit import FitConfig, FitResult, fit
from training.kinds import KIND_NAMES, get_kind
from training.synth import write_dataset, write_labelled_dataset

RECORDS = (
    "config.json",
    "metrics.json",
    "history.csv",
    "learning_curve.png",
    "roc.png",
    "score_hist.png",
    "model.onnx",
    "checkpoint.pt",
    "train.log",
)
"""What every run directory holds."""


def synthetic_manifest(
    root: Path,
    *,
    train: int = 8,
    valid: int = 2,
    test_normal: int = 4,
    test_anomaly: int = 4,
    train_anomaly: int = 0,
    valid_anomaly: int = 0,
    duration_s: float = 2.0,
    seed: int = 0,
) -> Path:
    """A small prepared dataset of one synthetic machine (``root/manifest.csv``).

    ``train_anomaly``/``valid_anomaly`` put labelled anomalies into train/valid, as
    supervised kinds need. Anomaly kinds cycle through ``training.synth.ANOMALY_KINDS``.
    """
    plan = [
        ("train", "normal", train),
        ("train", "anomaly", train_anomaly),
        ("valid", "normal", valid),
        ("valid", "anomaly", valid_anomaly),
        ("test", "normal", test_normal),
        ("test", "anomaly", test_anomaly),
    ]
    return write_labelled_dataset(root, plan, duration_s=duration_s, seed=seed)


def fit_fast(kind: str, data: Path, out: Path, **overrides: Any) -> FitResult:
    """``fit`` with settings small enough for the test suite (few epochs, one thread)."""
    settings: dict[str, Any] = {"epochs": 3, "batch_size": 16, "threads": 1, "quiet": True}
    settings.update(overrides)
    return fit(FitConfig(data=data, out=out, kind=kind, **settings))


def check_run(result: FitResult, kind: str, *, min_auc: float = 0.75) -> dict[str, Any]:
    """What every run must show; returns the model's metadata."""
    run = result.run_dir
    missing = [name for name in RECORDS if not (run / name).is_file()]
    assert not missing, f"run directory lacks {missing}"
    assert not (run / ".model.uncalibrated.onnx").exists()
    # The contract: the daemon's parser accepts it and the Detector loads it.
    meta = read_metadata(result.model_path)
    spec = parse_model_spec(str(result.model_path), {"asd_edge": json.dumps(meta)})
    detector = Detector(result.model_path)
    assert detector.spec.kind == spec.kind == kind
    assert detector.threshold == pytest.approx(result.metrics["threshold"])
    for key in ("schema", "name", "version", "sample_rate", "window_s", "input", "threshold"):
        assert key in meta, key
    assert {"method", "target_fa_per_day", "hop_s", "onset_k", "onset_n"} <= set(
        meta["calibration"]
    )
    assert {"held_out_windows", "held_out_hours", "empirical_events", "tail"} <= set(
        meta["calibration"]
    )
    assert {"data_sha256", "files", "windows", "created", "seed", "params", "epochs_run"} <= set(
        meta["training"]
    )
    assert meta["calibration"]["empirical_events"] == 0
    # Parity of the exported graph with torch, within the stated tolerance.
    parity = result.metrics["parity"]
    assert parity["atol"] == ATOL and parity["rtol"] == RTOL and parity["windows"] > 0
    # On the synthetic machine, anomalies score higher than normal sound.
    test = result.metrics["test"]
    assert test["files"] == {"normal": 4, "anomaly": 4}
    assert test["auc"] >= min_auc, f"{kind}: test AUC {test['auc']}"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["auc"] == test["auc"]
    return meta


@pytest.fixture(scope="module")
def unsupervised_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_manifest(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def supervised_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_manifest(
        tmp_path_factory.mktemp("synthetic_labelled"), train_anomaly=6, valid_anomaly=2
    )


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_kind_end_to_end(
    kind: str, unsupervised_data: Path, supervised_data: Path, tmp_path: Path
) -> None:
    """Each kind trains on the synthetic machine, exports a contract model the daemon
    loads, calibrates it and separates anomalies from normal sound."""
    info = get_kind(kind)
    data = supervised_data if info.supervised else unsupervised_data
    result = fit_fast(kind, data, tmp_path / "run")
    meta = check_run(result, kind)
    if kind == "dense_ae":
        assert meta["features"]["frames"] == 5
        history = (tmp_path / "run" / "history.csv").read_text().splitlines()
        assert history[0] == "epoch,train_loss,valid_loss,seconds" and len(history) >= 2


class TestDeterminism:
    def test_same_seed_same_model(self, unsupervised_data: Path, tmp_path: Path) -> None:
        """Two runs with one seed give the same weights and the same test scores; the
        version differs only in its time stamp. Augmentation changes what is learnt."""
        a = fit_fast("dense_ae", unsupervised_data, tmp_path / "a", epochs=2, seed=5)
        b = fit_fast("dense_ae", unsupervised_data, tmp_path / "b", epochs=2, seed=5)
        aug = fit_fast(
            "dense_ae",
            unsupervised_data,
            tmp_path / "c",
            epochs=2,
            seed=5,
            augment={"gain_db": [-12, 12], "p": 1.0},
        )
        state_a, state_b = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
        rows = [(r.run_dir / "files.csv").read_text() for r in (a, b)]
        assert rows[0] == rows[1]
        assert a.metrics["version"].split("-")[1] == b.metrics["version"].split("-")[1]
        state_c = aug.model.state_dict()
        assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a)
        assert json.loads((tmp_path / "c" / "config.json").read_text())["augment"]["p"] == 1.0


class TestCommandLine:
    def test_fit_then_evaluate(self, tmp_path: Path) -> None:
        """`python -m training fit` on a DCASE folder, then `asd-train evaluate` on it."""
        write_dataset(
            tmp_path / "data", train_files=8, test_normal=3, test_anomaly=3, duration_s=2.0,
            progress=False,
        )  # fmt: skip
        data = tmp_path / "data" / "machine_00"
        run = tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "training", "fit", "--data", str(data), "--model", "gmm",
             "--out", str(run), "--quiet", "--threads", "1", "--calibration", "quantile",
             "--quantile", "0.95", "--name", "pump-a"],
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(run / "model.onnx")
        assert all((run / name).is_file() for name in RECORDS)
        meta = read_metadata(run / "model.onnx")
        assert meta["name"] == "pump-a" and meta["calibration"]["method"] == "quantile"
        assert "data: 7 train files" in (run / "train.log").read_text()
        out = tmp_path / "eval"
        copies = tmp_path / "judged"
        code = asd_train(
            ["evaluate", "--model", str(run / "model.onnx"), "--data", str(data),
             "--out", str(out), "--quiet", "--copy-anomalies", str(copies)]
        )  # fmt: skip
        assert code == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["files"] == {"normal": 3, "anomaly": 3}
        judged = sorted(p.name for p in copies.iterdir()) if copies.exists() else []
        assert len(judged) == metrics["tp"] + metrics["fp"]

    def test_unknown_param_is_a_usage_error(
        self, unsupervised_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A --param the kind does not have: exit 2 naming it and the known ones."""
        code = asd_train(
            ["fit", "--data", str(unsupervised_data), "--model", "gmm", "--out",
             str(tmp_path / "r"), "--param", "n_layers=3"]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "'n_layers'" in err and "covariance" in err

    def test_missing_data_is_exit_66(self, tmp_path: Path) -> None:
        """A data folder that does not exist: EX_NOINPUT."""
        code = asd_train(["fit", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
        assert code == 66

    def test_supervised_kind_without_anomalies_is_exit_65(
        self, unsupervised_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A supervised kind on normal-only training data: EX_DATAERR saying why."""
        supervised = [k for k in KIND_NAMES if get_kind(k).supervised]
        code = asd_train(
            ["fit", "--data", str(unsupervised_data), "--model", supervised[0], "--out",
             str(tmp_path / "r"), "--quiet"]
        )  # fmt: skip
        assert code == 65
        assert "supervised" in capsys.readouterr().err
        assert not (tmp_path / "r" / "model.onnx").exists()

    def test_clearml_missing_is_exit_69(
        self, unsupervised_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--tracker clearml without ClearML installed: exit 69 with the install hint."""
        if importlib.util.find_spec("clearml") is not None:
            pytest.skip("ClearML is installed here (its offline mode is tested below)")
        code = asd_train(
            ["fit", "--data", str(unsupervised_data), "--model", "gmm", "--out",
             str(tmp_path / "r"), "--quiet", "--tracker", "clearml"]
        )  # fmt: skip
        assert code == 69
        assert "pip install 'asd-edge[clearml]'" in capsys.readouterr().err
        assert not (tmp_path / "r").exists()

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ClearML's pyparsing use
    def test_clearml_offline_session(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a server, the ClearML tracker records offline: the session folder holds
        the configuration, the scalars and the uploaded files."""
        pytest.importorskip("clearml")
        from training.runs import ClearMLTracker

        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.delenv("CLEARML_API_HOST", raising=False)
        monkeypatch.delenv("CLEARML_CONFIG_FILE", raising=False)
        record = tmp_path / "metrics.json"
        record.write_text('{"auc": 0.9}')
        tracker = ClearMLTracker("asd-edge-tests", "offline")
        assert tracker.offline
        tracker.log_config({"kind": "gmm", "params": {"pca": 16}})
        tracker.log_scalar("loss", "train", 0.25, 1)
        tracker.log_metrics({"test": {"auc": 0.9}})
        tracker.log_file(record)
        tracker.close()
        sessions = list((tmp_path / ".clearml" / "cache" / "offline").glob("offline-*.zip"))
        assert len(sessions) == 1
        folder = sessions[0].with_suffix("")
        assert '"loss"' in (folder / "metrics.jsonl").read_text()


def test_pump_recordings_gmm(shared_data: Path, tmp_path: Path) -> None:
    """Real MIMII pump recordings: gmm trained on part of the normal clips, tested on the
    rest and on the anomalous clips (a manifest pointing at ../shared/data, no copies)."""
    pump = shared_data / "machines" / "pump"
    normal = sorted((pump / "normal").glob("*.wav"))
    anomaly = sorted((pump / "anomaly").glob("*.wav"))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(normal))
    splits = {int(i): "train" for i in order[:7]}
    splits.update({int(i): "valid" for i in order[7:9]})
    rows = [[str(p), "normal", splits.get(i, "test"), p.name] for i, p in enumerate(normal)]
    rows += [[str(p), "anomaly", "test", p.name] for p in anomaly]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows([*row, file_sha256(Path(row[0]))] for row in rows)
    result = fit_fast("gmm", manifest, tmp_path / "run")
    test = result.metrics["test"]
    assert test["files"] == {"normal": len(normal) - 9, "anomaly": len(anomaly)}
    assert Detector(result.model_path).spec.kind == "gmm"
    print(f"pump gmm: auc={test['auc']:.3f} pauc={test['pauc']:.3f} auc_max={test['auc_max']:.3f}")
    assert test["auc"] > 0.5
