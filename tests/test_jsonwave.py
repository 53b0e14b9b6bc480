"""training.jsonwave: the seed's JSON waveform files, streamed record by record."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from training.jsonwave import JsonWaveError, read_json_waves


def waves(count: int, samples: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [np.round(rng.uniform(-0.9, 0.9, samples), 6).tolist() for _ in range(count)]


class TestShapes:
    def test_list_of_records(self, tmp_path: Path) -> None:
        """[{"Waveform", "Labels"}]: samples, 0/1 labels, 44.1 kHz unless the record says."""
        data = waves(3, 500)
        records = [{"Waveform": w, "Labels": i % 2} for i, w in enumerate(data)]
        records[2]["fs"] = 8000
        path = tmp_path / "a.json"
        path.write_text(json.dumps(records))
        out = list(read_json_waves(path))
        assert [r.record_index for r in out] == [0, 1, 2]
        assert [r.label for r in out] == ["normal", "anomaly", "normal"]
        assert [r.sample_rate for r in out] == [44100, 44100, 8000]
        for r, w in zip(out, data, strict=True):
            assert r.samples.dtype == np.float32
            np.testing.assert_allclose(r.samples, w, atol=1e-7)
        assert {r.sample_rate for r in read_json_waves(path, default_rate=22050)} == {22050, 8000}

    @pytest.mark.parametrize("labels_first", [True, False])
    def test_object_of_columns(self, tmp_path: Path, labels_first: bool) -> None:
        """{"waveforms", "labels": OK/NG, "fs"} with the keys in either order."""
        data = waves(4, 300)
        labels = ["OK", "NG", "NG", "OK"]
        doc = (
            {"fs": 16000, "labels": labels, "waveforms": data}
            if labels_first
            else {"waveforms": data, "labels": labels, "fs": 16000}
        )
        path = tmp_path / "b.json"
        path.write_text(json.dumps(doc, indent=1))
        out = list(read_json_waves(path, chunk_bytes=256))
        assert [r.label for r in out] == ["normal", "anomaly", "anomaly", "normal"]
        assert {r.sample_rate for r in out} == {16000}
        np.testing.assert_allclose(out[3].samples, data[3], atol=1e-7)

    def test_numbers_cut_by_chunk_boundaries(self, tmp_path: Path) -> None:
        """Tiny chunks split numbers and keys anywhere; values still come out exact."""
        data = [[0.123456, -0.5, 1e-05, 0.25], [0.75, -0.0625]]
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"labels": [0, 1], "waveforms": data}))
        for chunk in (1, 3, 7):
            out = list(read_json_waves(path, chunk_bytes=chunk))
            assert [r.samples.tolist() for r in out] == [
                np.asarray(w, np.float32).tolist() for w in data
            ]
            assert [r.label for r in out] == ["normal", "anomaly"]

    def test_int16_values_are_scaled(self, tmp_path: Path) -> None:
        """Integer samples in int16 range are PCM: divided by 32768."""
        path = tmp_path / "i.json"
        path.write_text(json.dumps([{"Waveform": [16384, -32768, 0], "Labels": 0}]))
        (rec,) = read_json_waves(path)
        assert rec.samples.tolist() == [0.5, -1.0, 0.0]


class TestErrors:
    def test_malformed_json_names_file_offset_and_record(self, tmp_path: Path) -> None:
        """A syntax error stops the file with its byte offset and record; earlier records came."""
        good = json.dumps([{"Waveform": [0.1, 0.2], "Labels": 0}] * 3)
        cut = good.index("{", 10) + 1  # inside the second record
        text = good[:cut] + '"Waveform": [0.1,, 0.2]' + good[cut:]
        path = tmp_path / "bad.json"
        path.write_text(text)
        seen = []
        with pytest.raises(JsonWaveError) as info:
            for rec in read_json_waves(path):
                seen.append(rec.record_index)
        assert seen == [0]
        err = info.value
        assert err.record == 1 and str(path) in str(err)
        assert text[err.offset] == "," and text[err.offset - 1] == ","
        assert f"byte {err.offset} (record 1)" in str(err)

    def test_bad_records_are_skipped_and_reported(self, tmp_path: Path) -> None:
        """A record with text samples, no waveform, or samples beyond full scale is skipped."""
        path = tmp_path / "mixed.json"
        path.write_text(
            json.dumps(
                [
                    {"Waveform": [0.1, 0.2], "Labels": 1},
                    {"Waveform": ["a", "b"], "Labels": 0},
                    {"Labels": 0},
                    {"Waveform": [3.5, 0.1], "Labels": 0},
                    {"Waveform": [0.3], "Labels": "maybe"},
                ]
            )
        )
        problems: list[str] = []
        out = list(read_json_waves(path, on_problem=problems.append))
        assert [(r.record_index, r.label) for r in out] == [(0, "anomaly"), (4, None)]
        assert len(problems) == 4
        assert "record 1" in problems[0] and "other than numbers" in problems[0]
        assert "record 2" in problems[1] and "no Waveform" in problems[1]
        assert "record 3" in problems[2] and "3.5" in problems[2]
        assert "record 4" in problems[3] and "'maybe'" in problems[3]

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b"", "empty file"),
            (b"42", "expected a list"),
            (b'{"labels": [0]}', 'no "waveforms"'),
            (b'[{"Waveform": [0.1]}', "expected ',' or ']', found end of file"),
            (b'[{"Waveform": [0.1]}] trailing', None),
            (b'\xff\xfe[{"Waveform": [0.1]}]', "not UTF-8"),
        ],
    )
    def test_shape_errors(self, tmp_path: Path, content: bytes, message: str | None) -> None:
        """Files of another shape are errors naming the file (trailing junk is ignored)."""
        path = tmp_path / "x.json"
        path.write_bytes(content)
        if message is None:
            assert len(list(read_json_waves(path))) == 1
            return
        with pytest.raises(JsonWaveError, match=message) as info:
            list(read_json_waves(path))
        assert str(path) in str(info.value)

    @pytest.mark.parametrize(
        "text",
        [
            "[" * 5000 + "]" * 5000,
            "[" * 100 + "]" * 100,  # decodes in Python, but no waveform is nested so deep
            '[{"Waveform": ' + "[" * 5000 + "0.1" + "]" * 5000 + "}]",
            '{"fs": 16000, "waveforms": ' + "[" * 5000 + "]" * 5000 + "}",
        ],
    )
    def test_deep_nesting_is_an_error_naming_the_file(self, tmp_path: Path, text: str) -> None:
        """JSON nested deeper than MAX_DEPTH (5000 deep made the decoder recurse until
        RecursionError, which took ``prepare`` down with a traceback) is a JsonWaveError
        naming the file, whatever the Python's recursion limit."""
        path = tmp_path / "deep.json"
        path.write_text(text)
        with pytest.raises(JsonWaveError, match="nested more than 32 deep") as info:
            list(read_json_waves(path))
        assert str(path) in str(info.value)

    def test_non_finite_samples_and_a_rate_below_1000_hz_skip_the_record(
        self, tmp_path: Path
    ) -> None:
        """NaN and Infinity (which Python's JSON reads) and a 1 Hz rate are named and the
        record skipped; the good records around them come."""
        path = tmp_path / "odd.json"
        path.write_text(
            '[{"Waveform": [0.1, NaN], "Labels": 0}, {"Waveform": [Infinity], "Labels": 0},'
            ' {"Waveform": [0.1], "fs": 1, "Labels": 0}, {"Waveform": [0.2], "Labels": 1}]'
        )
        problems: list[str] = []
        out = list(read_json_waves(path, on_problem=problems.append))
        assert [r.record_index for r in out] == [3]
        assert len(problems) == 3
        assert "record 0" in problems[0] and "NaN or infinite" in problems[0]
        assert "record 1" in problems[1] and "NaN or infinite" in problems[1]
        assert "record 2" in problems[2] and "1 Hz is below 1000 Hz" in problems[2]


class TestMemory:
    def test_peak_memory_far_below_file_size(self, tmp_path: Path) -> None:
        """A ~6 MB file is read with a peak allocation under 1/10 of its size."""
        path = tmp_path / "big.json"
        with path.open("w") as f:
            f.write("[")
            for i, w in enumerate(waves(150, 4000, seed=1)):
                f.write(("," if i else "") + json.dumps({"Waveform": w, "Labels": i % 2}))
            f.write("]")
        size = path.stat().st_size
        assert size > 5_000_000
        tracemalloc.start()
        try:
            count = sum(1 for _ in read_json_waves(path, chunk_bytes=1 << 16))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert count == 150
        assert peak < size / 10, f"peak {peak} bytes for a {size}-byte file"


def test_byte_order_mark_is_skipped_and_counted(tmp_path: Path) -> None:
    """A UTF-8 BOM is allowed; error offsets still count it."""
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf[{"Waveform": [0.5], "Labels": 0}, x]')
    with pytest.raises(JsonWaveError) as info:
        list(read_json_waves(path))
    assert info.value.offset == path.read_bytes().index(b"x")
