"""Tests of model loading: the contract's metadata and tensors are checked at load time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import sine
from onnx import TensorProto, helper

from asd_edge.detector import Detector
from asd_edge.errors import ModelError
from training.level import build_level_model, build_waveform_level_model, save_model


def with_metadata(model: onnx.ModelProto, meta: Any) -> onnx.ModelProto:
    del model.metadata_props[:]
    if meta is not None:
        helper.set_model_props(
            model, {"asd_edge": meta if isinstance(meta, str) else json.dumps(meta)}
        )
    return model


def level_meta(**changes: Any) -> dict[str, Any]:
    meta = json.loads(build_level_model().metadata_props[0].value)
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return meta


class TestLoad:
    def test_level_model_scores_in_dbfs(self, level_model: Path) -> None:
        """A full-scale 1 kHz sine scores 0 dBFS, and -20 dB per tenth of amplitude."""
        det = Detector(level_model)
        scores = det.score(
            np.stack(
                [sine(1000, amplitude=1.0), sine(1000, amplitude=0.1), sine(1000, amplitude=0.01)]
            )
        )
        np.testing.assert_allclose(scores, [0.0, -20.0, -40.0], atol=0.01)
        assert det.threshold == -30.0
        assert det.spec.n_frames == 30
        assert len(det.sha256) == 64

    def test_waveform_model(self, waveform_model: Path) -> None:
        """A waveform model gets the raw window; its pre-filter spec is parsed."""
        det = Detector(waveform_model)
        assert det.spec.input == "waveform"
        assert det.spec.prefilter is not None and det.spec.prefilter.order == 4
        assert det.score(sine(1000, amplitude=0.1))[0] == pytest.approx(-20.0, abs=0.01)


class TestRefusals:
    """A model the daemon cannot serve is a ModelError naming the file and the field."""

    def check(self, tmp_path: Path, model: onnx.ModelProto, field: str, match: str) -> None:
        path = save_model(model, tmp_path / "bad.onnx")
        with pytest.raises(ModelError, match=match) as info:
            Detector(path)
        assert info.value.field == field
        assert str(path) in str(info.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file names the file."""
        with pytest.raises(ModelError, match="cannot read"):
            Detector(tmp_path / "nope.onnx")

    def test_not_onnx(self, tmp_path: Path) -> None:
        """Random bytes are not a loadable model."""
        path = tmp_path / "junk.onnx"
        path.write_bytes(b"\x00garbage" * 100)
        with pytest.raises(ModelError, match="not a loadable ONNX model"):
            Detector(path)

    @pytest.mark.parametrize(
        ("meta", "field", "match"),
        [
            (None, "metadata.asd_edge", "not an asd-edge model"),
            ("{not json", "metadata.asd_edge", "not valid JSON"),
            (level_meta(schema=2), "metadata.schema", "unknown schema"),
            (level_meta(schema=None), "metadata.schema", "required"),
            (level_meta(sample_rate=4000), "metadata.sample_rate", "8000-192000"),
            (level_meta(sample_rate="16k"), "metadata.sample_rate", "integer"),
            (level_meta(threshold=None), "metadata.threshold", "required"),
            (level_meta(threshold="high"), "metadata.threshold", "finite number"),
            (level_meta(input="spectrogram"), "metadata.input", "one of"),
            (level_meta(name=""), "metadata.name", "non-empty string"),
            (level_meta(features=None), "metadata.features", "required for input 'logmel'"),
        ],
    )
    def test_bad_metadata(self, tmp_path: Path, meta: Any, field: str, match: str) -> None:
        """Each metadata problem names its field."""
        self.check(tmp_path, with_metadata(build_level_model(), meta), field, match)

    def test_bad_feature_fields(self, tmp_path: Path) -> None:
        """Feature parameters the daemon cannot serve name the nested field."""
        base = level_meta()
        cases = [
            ({"n_fft": 32000}, "metadata.features.n_fft", "longer than the window"),
            ({"fmax": 9000.0}, "metadata.features.fmax", r"\[0, 8000\]"),
            ({"power": 3.0}, "metadata.features.power", r"\[1, 2\]"),
            ({"log": "ln"}, "metadata.features.log", "one of 'db'"),
        ]
        for change, field, match in cases:
            meta = {**base, "features": {**base["features"], **change}}
            self.check(tmp_path, with_metadata(build_level_model(), meta), field, match)

    def test_feature_shape_mismatch(self, tmp_path: Path) -> None:
        """A graph built for 64 mels with metadata saying 128 is refused at load, not at a tick."""
        base = level_meta()
        meta = {**base, "features": {**base["features"], "n_mels": 128}}
        self.check(
            tmp_path,
            with_metadata(build_level_model(), meta),
            "graph.inputs[0].shape[2]",
            "expected 128",
        )

    def test_window_mismatch_for_waveform(self, tmp_path: Path) -> None:
        """A waveform graph of 16000 samples with window_s 2.0 in the metadata is refused."""
        model = build_waveform_level_model(metadata_overrides={"window_s": 2.0})
        self.check(tmp_path, model, "graph.inputs[0].shape[1]", "expected 32000")

    def test_wrong_output_name(self, tmp_path: Path) -> None:
        """The output must be one tensor named 'score'."""
        model = build_level_model()
        model.graph.output[0].name = "anomaly"
        model.graph.node[-1].output[0] = "anomaly"
        self.check(tmp_path, model, "graph.outputs", "'score'")

    def test_two_inputs(self, tmp_path: Path) -> None:
        """A graph with two inputs is refused."""
        model = build_level_model()
        model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
        self.check(tmp_path, model, "graph.inputs", "expected 1 input")
