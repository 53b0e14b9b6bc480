"""Tests of model loading: the contract's metadata and tensors are checked at load time,
with its optional ``bands`` output and ``level`` metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.audio import sine
from support.bands import build_bands_model
from support.files import REJECTED_KINDS, rejected_file

from asd_edge.detector import Detector
from asd_edge.errors import ModelError
from asd_edge.modelspec import LevelSpec
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

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("kind", REJECTED_KINDS)
    def test_not_a_regular_file_or_too_large_is_refused_unread(
        self, tmp_path: Path, kind: str
    ) -> None:
        """A FIFO (the loader used to wait for a writer), /dev/zero and a 2 GB sparse file
        (it used to read them until memory ran out) are refused at once, unread, naming
        the file."""
        path, problem = rejected_file(tmp_path, kind)
        with pytest.raises(ModelError) as info:
            Detector(path)
        assert info.value.field == "file" and problem in info.value.problem
        assert str(info.value).startswith(f"{path}: file: ")

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


class TestBandsOutput:
    """The optional ``bands`` output: served when it and its metadata agree, refused when not."""

    check = TestRefusals.check

    def test_scores_and_bands_from_one_inference(self, tmp_path: Path) -> None:
        """A model with ``bands`` gives per-band dB from normal beside each score; the score
        alone is the same number, and a model without ``bands`` gives None."""
        normal = np.linspace(-40.0, -75.0, 8)
        spread = np.full(8, 2.0)
        path = save_model(
            build_bands_model(normal_db=normal, spread_db=spread), tmp_path / "b.onnx"
        )
        det = Detector(path)
        assert det.spec.bands is not None and det.spec.bands.n_bands == 8
        assert det.spec.bands.edges_hz[0] == (50.0, 499.5)
        windows = np.stack([sine(300, amplitude=0.1), sine(3000, amplitude=0.1)])
        scores, bands = det.score_bands(windows)
        assert bands is not None and bands.shape == (2, 8) and bands.dtype == np.float32
        logmel = det.model_input(windows)
        means = logmel.mean(axis=1).reshape(2, 8, 4).mean(axis=2)
        np.testing.assert_allclose(bands, means - normal, atol=1e-3)
        np.testing.assert_allclose(scores, np.abs(bands / spread).max(axis=1), rtol=1e-5)
        np.testing.assert_array_equal(det.score(windows), scores)
        assert int(np.argmax(bands[0])) == 0 and int(np.argmax(bands[1])) == 5

    def test_model_without_bands_gives_none(self, level_model: Path) -> None:
        """Existing models have no ``bands``: score_bands says so, nothing else changes."""
        det = Detector(level_model)
        scores, bands = det.score_bands(sine(1000, amplitude=0.1))
        assert bands is None and det.spec.bands is None
        assert scores[0] == pytest.approx(-20.0, abs=0.01)

    def test_output_without_metadata(self, tmp_path: Path) -> None:
        """A ``bands`` output whose metadata is missing is refused, naming metadata.bands."""
        model = build_bands_model(metadata_overrides={"bands": None})
        self.check(tmp_path, model, "metadata.bands", "graph has 'bands'")

    def test_metadata_without_output(self, tmp_path: Path) -> None:
        """Metadata describing a ``bands`` output the graph lacks is refused."""
        model = build_bands_model(bands_output=False)
        self.check(tmp_path, model, "graph.outputs", "does not have")

    def test_fixed_width_mismatch(self, tmp_path: Path) -> None:
        """A graph whose ``bands`` has 8 columns against 7 bands in the metadata is refused
        from its shapes."""
        meta = json.loads(build_bands_model().metadata_props[0].value)["bands"]
        short = {**meta, "edges_hz": meta["edges_hz"][:7], "spread_db": meta["spread_db"][:7]}
        model = build_bands_model(metadata_overrides={"bands": short})
        self.check(tmp_path, model, "graph.outputs[1].shape[1]", "expected 7 bands.*got 8")

    def test_actual_width_mismatch(self, tmp_path: Path) -> None:
        """A dynamic width that turns out to differ is caught by the load-time inference."""
        model = build_bands_model(band_outputs="n_bands", runtime_width=7)
        self.check(tmp_path, model, "graph.outputs.bands", r"expected shape \[1, 8\].*got \[1, 7\]")

    def test_bands_must_be_two_dimensional(self, tmp_path: Path) -> None:
        """A ``bands`` output of rank 3 is refused."""
        model = build_bands_model()
        next(n for n in model.graph.node if "bands" in n.output).output[0] = "bands_2d"
        model.graph.initializer.append(numpy_helper.from_array(np.array([2]), "axis2"))
        model.graph.node.append(helper.make_node("Unsqueeze", ["bands_2d", "axis2"], ["bands"]))
        del model.graph.output[1]
        model.graph.output.append(
            helper.make_tensor_value_info("bands", TensorProto.FLOAT, ["batch", 8, 1])
        )
        self.check(tmp_path, model, "graph.outputs[1].shape", r"bands\[batch, n_bands\]")

    def test_bad_bands_metadata(self, tmp_path: Path) -> None:
        """Malformed ``bands`` metadata names the field: edges out of order, beyond Nyquist,
        empty, spreads not positive or not one per band, a unit other than dB."""
        meta = json.loads(build_bands_model().metadata_props[0].value)["bands"]
        edges, spread = meta["edges_hz"], meta["spread_db"]
        cases = [
            ({"edges_hz": [edges[1], edges[0], *edges[2:]]}, "edges_hz[1]", "increasing"),
            ({"edges_hz": [*edges[:7], [5032.6, 9000.0]]}, "edges_hz[7].hi", r"\[0, 8000\]"),
            ({"edges_hz": [[500.0, 400.0], *edges[1:]]}, "edges_hz[0]", "lo < hi"),
            ({"edges_hz": [[50.0], *edges[1:]]}, "edges_hz[0]", r"\[lo, hi\]"),
            ({"edges_hz": []}, "edges_hz", "non-empty list"),
            ({"spread_db": [*spread[:2], 0.0, *spread[3:]]}, "spread_db[2]", "expected a number"),
            ({"spread_db": [*spread[:2], "NaN", *spread[3:]]}, "spread_db[2]", "finite"),
            ({"spread_db": spread[:7]}, "spread_db", "expected 8 values"),
            ({"unit": "dBFS"}, "unit", "one of 'dB'"),
        ]
        for change, field, match in cases:
            model = build_bands_model(metadata_overrides={"bands": {**meta, **change}})
            self.check(tmp_path, model, f"metadata.bands.{field}", match)
        model = build_bands_model(metadata_overrides={"bands": [1, 2]})
        self.check(tmp_path, model, "metadata.bands", "expected an object")


class TestLevelMetadata:
    """The optional ``level`` metadata: the normal level range and the stopped level."""

    check = TestRefusals.check
    LEVEL: ClassVar[dict[str, Any]] = {
        "unit": "dBFS",
        "measure": "window_mean_square",
        "p01": -41.2,
        "p50": -35.0,
        "p99": -30.1,
        "stopped_below_dbfs": -53.2,
    }

    def test_parsed(self, tmp_path: Path) -> None:
        """The level range is read into ``spec.level``; a model without it has None."""
        model = build_level_model(metadata_overrides={"level": self.LEVEL})
        det = Detector(save_model(model, tmp_path / "l.onnx"))
        assert det.spec.level == LevelSpec(-53.2, -41.2, -35.0, -30.1)
        only = build_level_model(metadata_overrides={"level": {"stopped_below_dbfs": -60}})
        assert Detector(save_model(only, tmp_path / "o.onnx")).spec.level == LevelSpec(-60.0)
        assert Detector(save_model(build_level_model(), tmp_path / "n.onnx")).spec.level is None

    @pytest.mark.parametrize(
        ("change", "field", "match"),
        [
            ({"stopped_below_dbfs": None}, "stopped_below_dbfs", "required"),
            ({"stopped_below_dbfs": -41.2}, "stopped_below_dbfs", r"below p01 \(-41.2"),
            ({"stopped_below_dbfs": 3.0}, "stopped_below_dbfs", r"\[-200, 0\]"),
            ({"p50": -45.0}, "p50", "at least p01"),
            ({"p99": "loud"}, "p99", "finite number"),
            ({"unit": "dB"}, "unit", "one of 'dBFS'"),
            ({"measure": "rms"}, "measure", "one of 'window_mean_square'"),
        ],
    )
    def test_bad_level(
        self, tmp_path: Path, change: dict[str, Any], field: str, match: str
    ) -> None:
        """Each malformed ``level`` field is named."""
        level = {k: v for k, v in {**self.LEVEL, **change}.items() if v is not None}
        model = build_level_model(metadata_overrides={"level": level})
        self.check(tmp_path, model, f"metadata.level.{field}", match)

    def test_level_not_an_object(self, tmp_path: Path) -> None:
        """``level`` must be an object."""
        model = build_level_model(metadata_overrides={"level": -50})
        self.check(tmp_path, model, "metadata.level", "expected an object")
