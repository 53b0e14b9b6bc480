"""asd-train prepare: recordings of any format in, a split, hashed, leak-free dataset out."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile
from support.audio import sparse_wav

from asd_edge.audiofile import read_audio, wav_bytes, write_wav
from training import prepare_cli as prep
from training.dataset import assign_splits, file_sha256, load_dataset
from training.sources import SegmentCutter

RATE = 16000


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq_hz * t)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1 / rate)[np.argmax(spec)])


def run_prepare(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    prep.configure(parser)
    return prep.run(parser.parse_args([*argv, "--quiet"]))


def manifest(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ffmpeg(src: Path, dst: Path) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), str(dst)],
        check=True,
        capture_output=True,
    )
    return dst


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of recordings in every format: uint8, stereo, float, 44.1/22.05/8 kHz, FLAC, MP3."""
    root = tmp_path_factory.mktemp("inputs") / "machine"
    (root / "normal").mkdir(parents=True)
    (root / "anomaly").mkdir()
    u8 = np.round(128 + 120 * tone(300, 3.0, 8000)).astype(np.uint8)
    wavfile.write(root / "normal" / "u8_8k.wav", 8000, u8)
    stereo = np.stack([tone(440, 2.5, 44100), tone(1000, 2.5, 44100)], axis=1)
    wavfile.write(root / "normal" / "stereo_44k.wav", 44100, (stereo * 32767).astype(np.int16))
    wavfile.write(
        root / "normal" / "float_22k.wav", 22050, tone(500, 2.2, 22050).astype(np.float32)
    )
    for i in range(3):
        write_wav(root / "normal" / f"plain_{i}.wav", tone(600 + 50 * i, 2.0, RATE), RATE)
    src = root / "src.wav"
    write_wav(src, tone(2000, 2.0, 48000), 48000)
    ffmpeg(src, root / "anomaly" / "flac_48k.flac")
    ffmpeg(src, root / "anomaly" / "mp3_48k.mp3")
    src.unlink()
    write_wav(root / "anomaly" / "ng_a.wav", tone(3000, 1.0, RATE), RATE)
    write_wav(root / "anomaly" / "ng_b.wav", tone(3100, 1.0, RATE), RATE)
    return root


class TestSegmentsAndSplits:
    @staticmethod
    def bounds(
        n: int, segment: int, min_segment: int, block: int | None = None
    ) -> list[tuple[int, int]]:
        """The cutter's segments of ``n`` samples fed in blocks of ``block``, as
        [start, stop), each checked to hold exactly those samples."""
        x = np.arange(n, dtype=np.float32)
        step = block or max(1, n)
        cutter = SegmentCutter(segment, min_segment)
        out = []
        for start, samples in cutter.cut(x[i : i + step] for i in range(0, n, step)):
            assert np.array_equal(samples, x[start : start + samples.shape[0]])
            out.append((start, start + samples.shape[0]))
        assert cutter.samples == n and cutter.segments == len(out)
        return out

    def test_segment_bounds(self) -> None:
        """Full segments from the start; the remainder kept (shorter) only if long enough."""
        assert self.bounds(27, 10, 5) == [(0, 10), (10, 20), (20, 27)]
        assert self.bounds(27, 10, 8) == [(0, 10), (10, 20)]
        assert self.bounds(4, 10, 5) == []
        assert self.bounds(20, 10, 5) == [(0, 10), (10, 20)]
        assert self.bounds(0, 10, 0) == []

    @pytest.mark.parametrize("block", [1, 3, 7, 10, 11, 64])
    def test_any_block_size_cuts_the_same_segments(self, block: int) -> None:
        """A recording read in blocks of any size is cut as if it were read whole."""
        for n in (0, 9, 10, 27, 100, 103):
            for min_segment in (0, 1, 5, 10):
                assert self.bounds(n, 10, min_segment, block) == self.bounds(n, 10, min_segment)

    def test_assign_splits_follows_fractions_by_segments(self) -> None:
        """Each split gets about its share of the segments; the seed changes who goes where."""
        sizes = {f"rec{i}": 1 + i % 4 for i in range(60)}
        fractions = {"train": 0.7, "valid": 0.15, "test": 0.15}
        chosen = assign_splits(sizes, fractions, np.random.default_rng(0))
        totals: dict[str, int] = defaultdict(int)
        for src, sp in chosen.items():
            totals[sp] += sizes[src]
        total = sum(sizes.values())
        for sp, frac in fractions.items():
            assert abs(totals[sp] / total - frac) < 0.03
        assert chosen == assign_splits(sizes, fractions, np.random.default_rng(0))
        assert chosen != assign_splits(sizes, fractions, np.random.default_rng(1))


class TestPrepare:
    def test_every_format_in_one_dataset(self, mixed_inputs: Path, tmp_path: Path) -> None:
        """uint8/stereo/float WAV, FLAC and MP3 at 8-48 kHz: all segmented at 16 kHz, hashed."""
        out = tmp_path / "ds"
        code = run_prepare(
            str(mixed_inputs), "--out", str(out), "--segment-s", "1", "--min-segment-s", "0.5"
        )
        assert code == 0
        rows = manifest(out)
        assert set(rows[0]) >= {
            "path",
            "label",
            "split",
            "source",
            "sha256",
            "offset_s",
            "augmented",
        }
        sources = {Path(r["source"]).name for r in rows}
        assert sources == {
            "u8_8k.wav", "stereo_44k.wav", "float_22k.wav", "plain_0.wav", "plain_1.wav",
            "plain_2.wav", "flac_48k.flac", "mp3_48k.mp3", "ng_a.wav", "ng_b.wav",
        }  # fmt: skip
        for r in rows:
            path = out / r["path"]
            assert path.is_file() and r["path"].isascii()
            assert file_sha256(path) == r["sha256"]
            audio = read_audio(path)
            assert audio.sample_rate == RATE and audio.channels == 1
            assert round(float(r["duration_s"]) * RATE) == audio.frames
            assert r["path"].startswith(f"{r['split']}/{r['label']}/")
        # u8 at 8 kHz, 3 s → three 1 s segments, each still a 300 Hz tone at -10 dBFS
        u8 = sorted((r for r in rows if r["source"].endswith("u8_8k.wav")), key=lambda r: r["path"])
        assert [float(r["offset_s"]) for r in u8] == [0.0, 1.0, 2.0]
        seg = read_audio(out / u8[1]["path"]).samples[:, 0]
        assert peak_hz(seg, RATE) == pytest.approx(300, abs=2)
        assert np.sqrt(np.mean(seg**2)) == pytest.approx(0.3 * 120 / 128 / np.sqrt(2), rel=0.05)
        # 2.5 s stereo → 1 + 1 + 0.5 s (the remainder is kept, not padded)
        st = [r for r in rows if r["source"].endswith("stereo_44k.wav")]
        assert sorted(float(r["duration_s"]) for r in st) == [0.5, 1.0, 1.0]
        # a 2.2 s float file with --min-segment-s 0.5 drops its 0.2 s remainder
        assert len([r for r in rows if r["source"].endswith("float_22k.wav")]) == 2
        # the dataset loads for fit/evaluate with its rate known
        ds = load_dataset(out)
        assert ds.sample_rate == RATE and len(ds.files) == len(rows)
        report = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
        assert report["data_sha256"] == ds.sha256 and report["skipped"] == []

    def test_no_leakage_and_anomalies_held_out(self, mixed_inputs: Path, tmp_path: Path) -> None:
        """Each recording's segments share one split; anomalies only in valid/test by default,
        also in train with --labelled-train."""
        for seed in range(3):
            out = tmp_path / f"s{seed}"
            assert run_prepare(str(mixed_inputs), "--out", str(out), "--segment-s", "0.5",
                               "--seed", str(seed)) == 0  # fmt: skip
            splits_of: dict[str, set[str]] = defaultdict(set)
            for r in manifest(out):
                splits_of[r["source"]].add(r["split"])
                if r["label"] == "anomaly":
                    assert r["split"] in ("valid", "test")
            assert all(len(s) == 1 for s in splits_of.values())
        out = tmp_path / "sup"
        args = ["--segment-s", "0.5", "--labelled-train", "--split", "0.5,0.25,0.25"]
        assert run_prepare(str(mixed_inputs), "--out", str(out), *args) == 0
        assert any(r["label"] == "anomaly" and r["split"] == "train" for r in manifest(out))

    def test_the_same_recordings_elsewhere_make_the_same_dataset(
        self, mixed_inputs: Path, tmp_path: Path
    ) -> None:
        """The recordings copied to another folder are prepared into the same files with
        the same names, splits and bytes (a fit on them then gives the same model): no
        name depends on where the recordings lie."""
        moved = tmp_path / "elsewhere" / "deeper" / mixed_inputs.name
        shutil.copytree(mixed_inputs, moved)
        datasets = []
        for n, inputs in enumerate((mixed_inputs, moved)):
            out = tmp_path / f"out{n}"
            assert run_prepare(str(inputs), "--out", str(out), "--segment-s", "0.5") == 0
            datasets.append({r["path"]: (r["split"], r["sha256"]) for r in manifest(out)})
        assert datasets[0] == datasets[1] and datasets[0]

    def test_channel_choice(self, mixed_inputs: Path, tmp_path: Path) -> None:
        """--channel 1 takes the right channel (1 kHz); mix holds both tones."""
        stereo = mixed_inputs / "normal" / "stereo_44k.wav"
        for channel, expect_hz in (("0", 440), ("1", 1000)):
            out = tmp_path / f"c{channel}"
            assert run_prepare(str(stereo), "--out", str(out), "--label", "normal",
                               "--segment-s", "1", "--channel", channel) == 0  # fmt: skip
            seg = read_audio(out / manifest(out)[0]["path"]).samples[:, 0]
            assert peak_hz(seg, RATE) == pytest.approx(expect_hz, abs=2)
        out = tmp_path / "c9"
        code = run_prepare(str(stereo), "--out", str(out), "--label", "normal", "--channel", "9")
        assert code == 65
        report = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
        assert "channel 9 does not exist" in report["skipped"][0]["reason"]

    def test_bad_files_are_skipped_by_name(
        self, mixed_inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Corrupt, empty, not-audio and unlabelled files are named and skipped (exit 1)."""
        root = tmp_path / "in"
        shutil.copytree(mixed_inputs, root)
        (root / "normal" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
        (root / "normal" / "empty.flac").write_bytes(b"")
        (root / "normal" / "notes.mp3").write_text("this is not sound")
        write_wav(root / "recording.wav", tone(100, 1.0, RATE), RATE)
        out = tmp_path / "ds"
        assert run_prepare(str(root), "--out", str(out), "--segment-s", "1") == 1
        err = capsys.readouterr().err
        for name in ("corrupt.wav", "empty.flac", "notes.mp3"):
            assert f"skipped {root / 'normal' / name}" in err
        assert f"skipped {root / 'recording.wav'}: no label" in err
        report = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
        assert len(report["skipped"]) == 4
        assert len({r["source"] for r in manifest(out)}) == 10  # the rest went on

    def test_odd_files_are_skipped_by_name_and_the_others_prepared(self, tmp_path: Path) -> None:
        """JSON nested 5000 deep (a RecursionError traceback before), NaN or infinite float
        samples, a 1 Hz rate, a truncated WAV and a header claiming 2^31 samples over 1 s
        of data are each skipped with the reason; the good file is prepared (exit 1)."""
        root = tmp_path / "in" / "normal"
        root.mkdir(parents=True)
        good = tone(440, 4.0, RATE).astype(np.float32)
        wavfile.write(root / "good.wav", RATE, good)
        (root / "deep.json").write_text("[" * 5000 + "]" * 5000)
        for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
            x = good.copy()
            x[40000] = bad  # after two full 1 s segments: the whole file still goes
            wavfile.write(root / name, RATE, x)
        wavfile.write(root / "one_hz.wav", 1, good[:100])
        whole = (root / "good.wav").read_bytes()
        (root / "cut.wav").write_bytes(whole[: len(whole) // 2])
        claim = bytearray(wav_bytes(good[:RATE], RATE))  # 16-bit PCM: 1 s of data
        claim[40:44] = (2**31).to_bytes(4, "little")  # the data chunk's size
        (root / "claim.wav").write_bytes(bytes(claim))
        out = tmp_path / "ds"
        assert run_prepare(str(root.parent), "--out", str(out), "--segment-s", "1") == 1
        report = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
        reasons = {Path(r["path"]).name: r["reason"] for r in report["skipped"]}
        assert "nested more than 32 deep" in reasons.pop("deep.json")
        assert reasons.pop("nan.wav") == "sample 40,000 (2.500 s) is NaN or infinite"
        assert reasons.pop("inf.wav") == "sample 40,000 (2.500 s) is NaN or infinite"
        assert "sample rate 1 Hz is below 1000 Hz" in reasons.pop("one_hz.wav")
        assert "truncated" in reasons.pop("cut.wav")
        assert "truncated" in reasons.pop("claim.wav")
        assert reasons == {}
        assert {Path(r["source"]).name for r in manifest(out)} == {"good.wav"}
        assert len(list(out.rglob("*.wav"))) == len(manifest(out)) == 4  # none left behind

    @pytest.mark.slow
    def test_a_2_gb_wav_is_prepared_in_bounded_memory_beside_the_others(
        self, tmp_path: Path
    ) -> None:
        """A 2 GB WAV (sparse: 32 channels of silence, 35 min) is cut into its segments a
        block at a time with the peak resident memory of the process under 200 MB (it
        used to be decoded whole, several times its size); a truncated file is skipped
        by name and the good file after it is prepared."""
        root = tmp_path / "in" / "normal"
        root.mkdir(parents=True)
        data_bytes = 2**31 - 64
        sparse_wav(root / "big.wav", RATE, 32, data_bytes)
        write_wav(root / "good.wav", tone(700, 12.0, RATE), RATE)  # one 10 s segment
        (root / "cut.wav").write_bytes((root / "good.wav").read_bytes()[:1000])
        out = tmp_path / "ds"
        code = (
            "import sys\n"
            "from training.cli import main\n"
            f"code = main(['prepare', {str(root)!r}, '--out', {str(out)!r}, '--quiet'])\n"
            "status = open('/proc/self/status').read().splitlines()\n"
            "print(next(s for s in status if s.startswith('VmHWM:')), file=sys.stderr)\n"
            "sys.exit(code)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 1, result.stderr  # one file skipped
        peak_kb = int(result.stderr.strip().splitlines()[-1].split()[1])
        assert peak_kb < 200_000, f"peak resident memory {peak_kb} kB"
        rows = manifest(out)
        big_seconds = data_bytes // (32 * 2) / RATE
        big = [r for r in rows if r["source"].endswith("big.wav")]
        assert len(big) == int(big_seconds // 10) + (big_seconds % 10 >= 5)
        assert len([r for r in rows if r["source"].endswith("good.wav")]) == 1
        report = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
        assert [r["path"] for r in report["skipped"]] == [str(root / "cut.wav")]
        assert "truncated" in report["skipped"][0]["reason"]

    def test_exit_codes(self, mixed_inputs: Path, tmp_path: Path) -> None:
        """66 for a missing INPUT, 65 when nothing is usable, 2 for a dataset already there."""
        out = tmp_path / "ds"
        assert run_prepare(str(tmp_path / "missing"), "--out", str(out)) == 66
        assert not (out / "manifest.csv").exists()
        junk = tmp_path / "junk"
        junk.mkdir()
        (junk / "a.wav").write_bytes(b"nothing")
        assert run_prepare(str(junk), "--out", str(out), "--label", "normal") == 65
        ok = mixed_inputs / "normal" / "plain_0.wav"
        assert run_prepare(str(ok), "--out", str(out), "--label", "normal", "--segment-s", "1") == 2
        assert run_prepare(str(ok), "--out", str(out), "--label", "normal", "--segment-s", "1",
                           "--force") == 0  # fmt: skip
        assert len(manifest(out)) == 2

    def test_json_inputs(self, tmp_path: Path) -> None:
        """Both JSON shapes: each record is a recording with its own label, resampled."""
        src = tmp_path / "json"
        src.mkdir()
        recs = [{"Waveform": tone(440, 1.0, 44100).tolist(), "Labels": i % 2} for i in range(4)]
        (src / "seed.json").write_text(json.dumps(recs))
        cols = {"waveforms": [tone(700, 0.5, 8000).tolist()] * 3, "labels": ["OK", "OK", "NG"],
                "fs": 8000}  # fmt: skip
        (src / "cols.json").write_text(json.dumps(cols))
        out = tmp_path / "ds"
        args = ["--out", str(out), "--segment-s", "0.5", "--split", "0.5,0.25,0.25"]
        assert run_prepare(str(src), *args) == 0
        rows = manifest(out)
        assert len(rows) == 4 * 2 + 3
        assert {r["source"].rsplit("#", 1)[1] for r in rows} == {f"record {i}" for i in range(4)}
        by_source = {r["source"]: r["label"] for r in rows}
        assert by_source[f"{src / 'seed.json'}#record 1"] == "anomaly"
        assert by_source[f"{src / 'cols.json'}#record 2"] == "anomaly"
        assert all(read_audio(out / r["path"]).sample_rate == RATE for r in rows)

    def test_augmented_copies(self, mixed_inputs: Path, tmp_path: Path) -> None:
        """--augment 2 adds two marked copies per train segment, same source, not identical."""
        out = tmp_path / "ds"
        noise = tmp_path / "noise.wav"
        write_wav(noise, np.random.default_rng(0).uniform(-0.2, 0.2, 8000), 8000)
        args = ["--segment-s", "1", "--augment", "2", "--noise", str(noise), "--gain-db=-3,3"]
        assert run_prepare(str(mixed_inputs / "normal"), "--out", str(out), *args) == 0
        rows = manifest(out)
        train = [r for r in rows if r["split"] == "train"]
        originals = [r for r in train if r["augmented"] == "0"]
        copies = [r for r in train if r["augmented"] == "1"]
        assert len(copies) == 2 * len(originals) > 0
        assert all(r["augmented"] == "0" for r in rows if r["split"] != "train")
        first = originals[0]
        twins = [r for r in copies if r["path"].startswith(first["path"][:-4] + "_aug")]
        assert len(twins) == 2 and {r["source"] for r in twins} == {first["source"]}
        a = read_audio(out / first["path"]).samples
        b = read_audio(out / twins[0]["path"]).samples
        assert a.shape == b.shape and not np.allclose(a, b, atol=1e-3)

    def test_command_as_subprocess(self, mixed_inputs: Path, tmp_path: Path) -> None:
        """`python -m training prepare` prints a summary and writes the dataset."""
        out = tmp_path / "ds"
        r = subprocess.run(
            [sys.executable, "-m", "training", "prepare", str(mixed_inputs / "anomaly"),
             "--out", str(out), "--segment-s", "1"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "test  anomaly" in r.stdout or "valid anomaly" in r.stdout
        assert len(manifest(out)) == 6


class TestRealRecordings:
    def test_shared_data(self, shared_data: Path, tmp_path: Path) -> None:
        """MIMII pump (labels from folders), 48 kHz compressor, 8 kHz crash WAVs, m4a files."""
        pump = shared_data / "machines" / "pump"
        out = tmp_path / "pump"
        assert run_prepare(str(pump), "--out", str(out)) == 0
        rows = manifest(out)
        normals = {r["source"] for r in rows if r["label"] == "normal"}
        anomalies = {r["source"] for r in rows if r["label"] == "anomaly"}
        assert len(normals) == len(list((pump / "normal").glob("*.wav")))
        assert len(anomalies) == len(list((pump / "anomaly").glob("*.wav")))
        assert all("/normal/" in s for s in normals)
        assert all(r["split"] != "train" for r in rows if r["label"] == "anomaly")

        other = tmp_path / "other"
        inputs = [
            *sorted((shared_data / "compressor" / "run").glob("*.wav"))[:3],
            *sorted((shared_data / "impacts" / "crash").glob("*.wav"))[:3],
            *sorted((shared_data / "background").glob("*.m4a"))[:3],
        ]
        assert run_prepare(*map(str, inputs), "--out", str(other), "--label", "normal",
                           "--segment-s", "0.5") == 0  # fmt: skip
        rows = manifest(other)
        assert {Path(r["source"]).name for r in rows} == {p.name for p in inputs}
        assert all(r["path"].isascii() for r in rows)
        for r in rows[:: max(1, len(rows) // 10)]:
            assert read_audio(other / r["path"]).sample_rate == RATE


class TestInputs:
    def test_a_file_given_by_name_takes_its_folders_label(self, mixed_inputs: Path) -> None:
        """`prepare normal/x.wav` labels x.wav normal; folders further up do not count."""
        from training.sources import find_inputs

        files, missing = find_inputs([mixed_inputs / "anomaly" / "ng_a.wav", mixed_inputs])
        assert not missing
        named = {f.path.name: f.label_name.as_posix() for f in files}
        assert named["ng_a.wav"] == "anomaly/ng_a.wav"
        assert named["plain_0.wav"] == "machine/normal/plain_0.wav"
        assert len(files) == 10  # the file given twice is listed once
