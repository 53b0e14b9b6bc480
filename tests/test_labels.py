"""training.labels: labels from folder and file names, on token boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.labels import label_from_name, parse_label


class TestLabelFromName:
    @pytest.mark.parametrize(
        ("path", "label"),
        [
            ("normal_id_00_00000000.wav", "normal"),
            ("anomaly_id_00_00000000.wav", "anomaly"),
            ("section_00_source_test_anomaly_0001.wav", "anomaly"),
            ("section_00_target_test_normal_0001.wav", "normal"),
            ("pump.00.normal.00000000.wav", "normal"),
            ("pump/OK/rec 1.wav", "normal"),
            ("pump/NG/rec 1.wav", "anomaly"),
            ("data/Abnormal/x.flac", "anomaly"),
            ("anomalous-run.mp3", "anomaly"),
            ("abnormality_report.wav", "anomaly"),
            ("normal1/take.wav", "normal"),
            ("ng02.m4a", "anomaly"),
            ("ポンプ/正常/録音.m4a", "normal"),
            ("ポンプ/異常/録音.m4a", "anomaly"),
        ],
    )
    def test_names_that_carry_a_label(self, path: str, label: str) -> None:
        """DCASE names, OK/NG folders, any case, trailing digits, Japanese folder names."""
        assert label_from_name(path) == label
        assert label_from_name(Path(path)) == label

    @pytest.mark.parametrize(
        "path",
        ["knormalize.wav", "ngram/x.wav", "okay.wav", "pn113.wav", "abnormalities2x", "rec.wav"],
    )
    def test_substrings_inside_words_do_not_count(self, path: str) -> None:
        """A label word inside another word is no label."""
        assert label_from_name(path) is None

    def test_last_component_wins(self) -> None:
        """A file named anomaly inside a folder named normal is an anomaly, and vice versa."""
        assert label_from_name("normal/anomaly_0001.wav") == "anomaly"
        assert label_from_name("anomaly/normal_id_00_0.wav") == "normal"
        assert label_from_name("normal/recording_0001.wav") == "normal"
        assert label_from_name("/data/ng/pump/ok") == "normal"


class TestParseLabel:
    def test_values(self) -> None:
        """0/1 (int, float, string, bool) and OK/NG words map; anything else is None."""
        assert [parse_label(v) for v in (0, 1, 0.0, "1", "OK", "NG", "normal", True)] == [
            "normal", "anomaly", "normal", "anomaly", "normal", "anomaly", "normal", "anomaly",
        ]  # fmt: skip
        assert [parse_label(v) for v in (2, "maybe", None, [0])] == [None, None, None, None]
