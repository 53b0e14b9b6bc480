"""Export: contract names and metadata, parity on real inputs, the daemon's own load check."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from asd_edge.detector import Detector
from asd_edge.errors import LearnError
from asd_edge.learning.contract import (
    SOURCE_DATE_EPOCH,
    build_time,
    contract_metadata,
    make_version,
)
from asd_edge.modelspec import parse_model_spec
from training.errors import ExportError
from training.export import (
    OPSET,
    export_model,
    quantize_model,
    read_metadata,
    update_metadata,
)
from training.fit import FitConfig, fit
from training.kinds import InputStats, ScoreModel, get_kind
from training.synth import write_dataset
from training.windows import WindowSpec


def windows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (-50.0 + 10.0 * rng.standard_normal((n, 30, 128))).astype(np.float32)


def metadata(kind: str = "dense_ae", **extra: object) -> dict[str, object]:
    spec = WindowSpec.for_kind(get_kind(kind))
    meta: dict[str, object] = {
        "schema": 1,
        "name": "pump-a",
        "version": "20261121T101500Z-3f2a9c1",
        "kind": kind,
        **spec.metadata(frames=5),
        "threshold": 1.5,
        "calibration": {"method": "fixed"},
        "training": {"data_sha256": "0" * 64, "files": 3},
    }
    meta.update(extra)
    return meta


@pytest.fixture(scope="module")
def dense() -> ScoreModel:
    info = get_kind("dense_ae")
    torch.manual_seed(0)
    return info.build((30, 128), InputStats.of(windows(16, 0)), info.defaults).eval()


class TracedBranch(ScoreModel):
    """Data-dependent control flow: the tracer records one branch, torch takes both."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > -50.0:
            return x.mean(dim=(1, 2))
        return -x.mean(dim=(1, 2))


class TestExport:
    def test_contract_model_the_daemon_loads(self, tmp_path: Path, dense: ScoreModel) -> None:
        """The file has the contract's names, opset, metadata and loads in the Detector."""
        report = export_model(
            dense, tmp_path / "model.onnx", metadata=metadata(), parity_inputs=windows(20, 1)
        )
        model = onnx.load(str(report.path))
        assert [i.name for i in model.graph.input] == ["logmel"]
        assert [o.name for o in model.graph.output] == ["score"]
        assert {o.domain: o.version for o in model.opset_import}[""] == OPSET
        spec = parse_model_spec(str(report.path), {p.key: p.value for p in model.metadata_props})
        assert spec.features is not None and spec.n_frames == 30
        assert spec.raw["features"]["frames"] == 5
        detector = Detector(report.path)
        assert detector.threshold == 1.5
        assert report.parity["windows"] == 20 and report.parity["max_abs_diff"] < 1e-4

    def test_dynamic_batch(self, tmp_path: Path, dense: ScoreModel) -> None:
        """Any batch size runs and equals torch, window by window."""
        path = export_model(
            dense, tmp_path / "m.onnx", metadata=metadata(), parity_inputs=windows(4, 2)
        ).path
        detector = Detector(path)
        x = windows(7, 3)
        with torch.no_grad():
            expected = dense(torch.from_numpy(x)).numpy()
        got = detector._session.run(["score"], {"logmel": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)

    def test_parity_failure_writes_nothing(self, tmp_path: Path) -> None:
        """A graph that disagrees with torch on real inputs is an ExportError and no file."""
        x = np.concatenate([windows(3, 4) + 30.0, windows(3, 5) - 60.0])  # traced: the first
        with pytest.raises(ExportError, match="disagrees with torch"):
            export_model(
                TracedBranch(), tmp_path / "model.onnx", metadata=metadata(), parity_inputs=x
            )
        assert list(tmp_path.iterdir()) == []

    def test_daemon_refusal_writes_nothing(self, tmp_path: Path, dense: ScoreModel) -> None:
        """Metadata the daemon cannot serve (wrong n_mels for the graph) stops the export."""
        meta = metadata()
        meta["features"] = {**meta["features"], "n_mels": 64}  # type: ignore[dict-item]
        with pytest.raises(ExportError, match="daemon would refuse"):
            export_model(dense, tmp_path / "m.onnx", metadata=meta, parity_inputs=windows(2, 6))
        assert list(tmp_path.iterdir()) == []

    def test_update_metadata_keeps_a_valid_model(self, tmp_path: Path, dense: ScoreModel) -> None:
        """Re-saving with the calibrated threshold changes only what was asked."""
        path = export_model(
            dense, tmp_path / "m.onnx", metadata=metadata(), parity_inputs=windows(2, 7)
        ).path
        update_metadata(path, {"threshold": 7.25, "calibration": {"method": "quantile"}})
        assert Detector(path).threshold == 7.25
        meta = read_metadata(path)
        assert meta["calibration"] == {"method": "quantile"} and meta["name"] == "pump-a"

    def test_int8_copy(self, tmp_path: Path, dense: ScoreModel) -> None:
        """Dynamic int8 quantisation gives a smaller model the daemon loads, scores close."""
        path = export_model(
            dense, tmp_path / "m.onnx", metadata=metadata(), parity_inputs=windows(2, 8)
        ).path
        q = tmp_path / "m.int8.onnx"
        quantize_model(path, q, read_metadata(path))
        assert q.stat().st_size < path.stat().st_size / 2
        x = windows(5, 9)
        with torch.no_grad():
            ref = dense(torch.from_numpy(x)).numpy()
        got = Detector(q)._session.run(["score"], {"logmel": x})[0]
        np.testing.assert_allclose(got, ref, rtol=0.1)


class TestVersion:
    def test_format_and_identity(self) -> None:
        """<UTC time>-<7 hex>; the hash changes with data, kind, params and seed only."""
        t = datetime(2026, 11, 21, 10, 15, tzinfo=UTC)
        v = make_version(t, "ab" * 32, "gmm", {"pca": 16}, 0)
        assert re.fullmatch(r"20261121T101500Z-[0-9a-f]{7}", v)
        assert make_version(t, "ab" * 32, "gmm", {"pca": 16}, 0) == v
        others = {
            make_version(t, "cd" * 32, "gmm", {"pca": 16}, 0),
            make_version(t, "ab" * 32, "dense_ae", {"pca": 16}, 0),
            make_version(t, "ab" * 32, "gmm", {"pca": 8}, 0),
            make_version(t, "ab" * 32, "gmm", {"pca": 16}, 1),
        }
        assert v not in others and len(others) == 4
        assert json.dumps(v)


class TestSourceDateEpoch:
    EPOCH = 1_790_000_000  # 2026-09-21T14:13:20Z

    def test_it_is_the_build_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With SOURCE_DATE_EPOCH set, the version's time and training.created are it,
        whatever time the caller passes; without it, the caller's time is kept."""
        later = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert make_version(later, "ab" * 32, "gmm", {}, 0).startswith("20300102T030405Z-")
        monkeypatch.setenv(SOURCE_DATE_EPOCH, str(self.EPOCH))
        assert build_time(later) == datetime(2026, 9, 21, 14, 13, 20, tzinfo=UTC)
        assert make_version(later, "ab" * 32, "gmm", {}, 0).startswith("20260921T141320Z-")
        meta = contract_metadata(
            name="m", version="v", kind="gmm", spec_fields={}, threshold=1.0,
            calibration={}, training={"created": "2030-01-02T03:04:05Z", "files": 3},
        )  # fmt: skip
        assert meta["training"] == {"created": "2026-09-21T14:13:20Z", "files": 3}

    def test_a_bad_value_names_the_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A value that is not whole seconds is a LearnError naming SOURCE_DATE_EPOCH."""
        monkeypatch.setenv(SOURCE_DATE_EPOCH, "yesterday")
        with pytest.raises(LearnError, match=r"SOURCE_DATE_EPOCH.*'yesterday'"):
            build_time()

    def test_same_command_same_bytes(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Two trainings on the same data with the same seed, a clock second apart, write
        byte-identical model files when SOURCE_DATE_EPOCH is set."""
        monkeypatch.setenv(SOURCE_DATE_EPOCH, str(self.EPOCH))
        write_dataset(
            tmp_path / "data", train_files=5, test_normal=1, test_anomaly=1, duration_s=2.0,
            progress=False,
        )  # fmt: skip
        blobs = []
        for run in ("a", "b"):
            config = FitConfig(
                data=tmp_path / "data" / "machine_00", out=tmp_path / run, kind="dense_ae",
                epochs=2, batch_size=16, threads=1, quiet=True,
            )  # fmt: skip
            blobs.append(fit(config).model_path.read_bytes())
            time.sleep(1.0)  # so that the clock's time stamps of the two runs differ
        assert blobs[0] == blobs[1]
        meta = read_metadata(tmp_path / "a" / "model.onnx")
        assert meta["training"]["created"] == "2026-09-21T14:13:20Z"
        assert meta["version"].startswith("20260921T141320Z-")
