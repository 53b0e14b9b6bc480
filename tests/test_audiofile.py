"""Tests of audio file reading and writing: WAV flavours, ffmpeg formats, the real recordings."""

from __future__ import annotations

import csv
import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.io import wavfile

from asd_edge.audiofile import (
    MIN_SAMPLE_RATE,
    AudioData,
    open_audio,
    pcm16,
    read_audio,
    to_mono,
    wav_bytes,
    write_wav,
)
from asd_edge.durable import fsync_dir, write_atomic
from asd_edge.errors import AudioDecodeError

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)"
)


def tone(
    sample_rate: int, seconds: float, hz: float = 440.0, amp: float = 0.5
) -> npt.NDArray[np.float64]:
    """A sine tone; distinct enough that a mix-up of channels or rates shows."""
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    return amp * np.sin(2 * np.pi * hz * t)


class TestReadWav:
    """WAV files of every sample type scipy produces come back as float32 in [-1, 1]."""

    def test_int16_round_trip(self, tmp_path: Path) -> None:
        """int16 full scale maps to [-1, 1) exactly: x / 32768."""
        pcm = np.array([0, 1, -1, 16384, -32768, 32767], dtype=np.int16)
        wavfile.write(tmp_path / "a.wav", 16000, pcm)
        audio = read_audio(tmp_path / "a.wav")
        assert audio.sample_rate == 16000
        assert audio.samples.dtype == np.float32
        assert audio.samples.shape == (6, 1)
        np.testing.assert_array_equal(audio.samples[:, 0], pcm / 32768.0)

    def test_uint8_is_centred_on_128(self, tmp_path: Path) -> None:
        """8-bit WAV is unsigned: 128 is silence, 0 is -1, 255 is just under +1."""
        pcm = np.array([128, 0, 255, 192], dtype=np.uint8)
        wavfile.write(tmp_path / "u8.wav", 8000, pcm)
        audio = read_audio(tmp_path / "u8.wav")
        np.testing.assert_array_equal(audio.samples[:, 0], [0.0, -1.0, 127 / 128, 0.5])

    def test_int32_and_float32(self, tmp_path: Path) -> None:
        """int32 is scaled by 2**31; float32 is kept as it is."""
        wavfile.write(tmp_path / "i32.wav", 16000, np.array([2**30, -(2**31)], dtype=np.int32))
        wavfile.write(tmp_path / "f32.wav", 16000, np.array([0.25, -0.75], dtype=np.float32))
        np.testing.assert_array_equal(read_audio(tmp_path / "i32.wav").samples[:, 0], [0.5, -1.0])
        np.testing.assert_array_equal(read_audio(tmp_path / "f32.wav").samples[:, 0], [0.25, -0.75])

    def test_stereo_keeps_channels_apart(self, tmp_path: Path) -> None:
        """A stereo file is (frames, 2), left in column 0, right in column 1."""
        left, right = tone(22050, 0.1, 300), tone(22050, 0.1, 1000, 0.25)
        pcm = (np.stack([left, right], axis=1) * 32767).astype(np.int16)
        wavfile.write(tmp_path / "st.wav", 22050, pcm)
        audio = read_audio(tmp_path / "st.wav")
        assert (audio.channels, audio.frames, audio.sample_rate) == (2, 2205, 22050)
        assert audio.duration_s == pytest.approx(0.1)
        np.testing.assert_allclose(audio.samples[:, 0], left, atol=2 / 32768)
        np.testing.assert_allclose(audio.samples[:, 1], right, atol=2 / 32768)

    @needs_ffmpeg
    def test_24_bit(self, tmp_path: Path) -> None:
        """24-bit PCM (made by ffmpeg) reads at full scale, not 256 times too quiet."""
        src = tmp_path / "src.wav"
        write_wav(src, tone(16000, 0.2), 16000)
        out = tmp_path / "s24.wav"
        subprocess.run(["ffmpeg", "-v", "error", "-i", src, "-c:a", "pcm_s24le", out], check=True)
        np.testing.assert_allclose(read_audio(out).samples[:, 0], tone(16000, 0.2), atol=1e-4)

    def test_big_endian_rifx(self, tmp_path: Path) -> None:
        """A RIFX file (big-endian) reads as its little-endian twin does."""
        pcm = np.array([[0, 16384], [-32768, 32767], [1, -1]], dtype=np.int16)
        wavfile.write(tmp_path / "le.wav", 8000, pcm)
        le = (tmp_path / "le.wav").read_bytes()
        fields = struct.unpack("<4sI4s4sIHHIIHH4sI", le[:44])
        header = struct.pack(">4sI4s4sIHHIIHH4sI", b"RIFX", *fields[1:])
        (tmp_path / "be.wav").write_bytes(header + pcm.astype(">i2").tobytes())
        big = read_audio(tmp_path / "be.wav")
        assert big.sample_rate == 8000
        np.testing.assert_array_equal(big.samples, read_audio(tmp_path / "le.wav").samples)

    @needs_ffmpeg
    def test_rf64_and_chunks_before_the_data(self, tmp_path: Path) -> None:
        """RF64 (its sizes in a ds64 chunk) and a bext chunk before the data read as scipy
        reads the plain file."""
        src = tmp_path / "src.wav"
        pcm = (np.stack([tone(16000, 0.3), tone(16000, 0.3, 1000)], axis=1) * 32767).astype(
            np.int16
        )
        wavfile.write(src, 16000, pcm)
        want = pcm / 32768.0
        for name, extra in (("rf64.wav", ["-rf64", "always"]), ("bext.wav", ["-write_bext", "1"])):
            out = tmp_path / name
            subprocess.run(
                ["ffmpeg", "-v", "error", "-i", src, "-c:a", "pcm_s16le", *extra, out], check=True
            )
            np.testing.assert_array_equal(read_audio(out).samples, want.astype(np.float32))

    def test_blocks_are_the_whole_file_in_pieces(self, tmp_path: Path) -> None:
        """Read block by block (7 frames at a time), a WAV gives exactly what a whole read
        gives, for every sample type."""
        stereo = np.stack([tone(8000, 0.05), tone(8000, 0.05, 300)], axis=1)
        kinds = {
            "u8": (stereo * 127 + 128).astype(np.uint8),
            "i16": (stereo * 32767).astype(np.int16),
            "i32": (stereo * 2**31 * 0.9).astype(np.int32),
            "f32": stereo.astype(np.float32),
            "f64": stereo,
        }
        for name, data in kinds.items():
            wavfile.write(tmp_path / f"{name}.wav", 8000, data)
            whole = read_audio(tmp_path / f"{name}.wav").samples
            with open_audio(tmp_path / f"{name}.wav") as audio:
                assert (audio.frames, audio.channels) == whole.shape
                blocks = list(audio.blocks(max_frames=7))
            assert max(len(b) for b in blocks) == 7, name
            np.testing.assert_array_equal(np.concatenate(blocks), whole, err_msg=name)


class TestWriteWav:
    """write_wav writes 16-bit PCM that reads back the same, atomically."""

    def test_round_trip_within_one_lsb(self, tmp_path: Path) -> None:
        """Content survives write then read to within 1/32768."""
        x = np.random.default_rng(1).uniform(-1, 1, size=(4000, 2))
        write_wav(tmp_path / "out.wav", x, 44100)
        audio = read_audio(tmp_path / "out.wav")
        assert audio.sample_rate == 44100
        assert wavfile.read(tmp_path / "out.wav")[1].dtype == np.int16
        np.testing.assert_allclose(audio.samples, x, atol=1 / 32768)

    def test_clips_instead_of_wrapping(self, tmp_path: Path) -> None:
        """Out-of-range values saturate (a wrap-around would turn +1.5 into a negative click)."""
        write_wav(tmp_path / "c.wav", np.array([1.5, -3.0, np.nan, 1.0]), 8000)
        _, pcm = wavfile.read(tmp_path / "c.wav")
        np.testing.assert_array_equal(pcm, [32767, -32768, 0, 32767])

    def test_replaces_atomically_and_leaves_no_temporary(self, tmp_path: Path) -> None:
        """An existing file is replaced whole, and no temporary file is left in the directory."""
        target = tmp_path / "clip.wav"
        write_wav(target, np.zeros(100), 16000)
        write_wav(target, np.full(50, 0.5), 16000)
        assert [p.name for p in tmp_path.iterdir()] == ["clip.wav"]
        assert read_audio(target).frames == 50

    def test_failed_write_leaves_nothing(self, tmp_path: Path) -> None:
        """A write that fails midway leaves neither a half file nor a temporary."""
        with pytest.raises(ValueError):
            write_wav(tmp_path / "bad.wav", np.zeros((2, 2, 2)), 16000)
        assert list(tmp_path.iterdir()) == []


class TestAtomicWrite:
    """write_atomic and wav_bytes, the pieces write_wav, the clip store and the PNG writer share."""

    def test_wav_bytes_is_what_write_wav_writes(self, tmp_path: Path) -> None:
        """The in-memory WAV and the file are the same bytes, and decode to pcm16's values."""
        x = np.random.default_rng(3).uniform(-1.2, 1.2, size=(3000, 2))
        x[10, 0] = np.nan
        write_wav(tmp_path / "s.wav", x, 22050)
        data = wav_bytes(x, 22050)
        assert (tmp_path / "s.wav").read_bytes() == data
        rate, pcm = wavfile.read(io.BytesIO(data))
        assert rate == 22050 and pcm.dtype == np.int16 and pcm.shape == (3000, 2)
        np.testing.assert_array_equal(pcm, pcm16(x))
        assert pcm[10, 0] == 0 and pcm.max() == 32767 and pcm.min() == -32768

    def test_failed_rename_leaves_no_temporary(self, tmp_path: Path) -> None:
        """When the file cannot be put in place (here: a directory has the name), the error
        comes through, what was there stays, and no temporary file is left."""
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "inside").write_text("kept")
        with pytest.raises(IsADirectoryError):
            write_atomic(tmp_path / "taken", b"new")
        assert [p.name for p in tmp_path.iterdir()] == ["taken"]
        assert (tmp_path / "taken" / "inside").read_text() == "kept"

    def test_permissions_follow_the_umask(self, tmp_path: Path) -> None:
        """The new file gets the usual permissions (0666 less the umask), as a plain open()
        would: other services can read clips and WAVs when the umask allows it."""
        previous = os.umask(0o027)
        try:
            write_atomic(tmp_path / "a.bin", b"a")
            write_wav(tmp_path / "a.wav", np.zeros(10), 8000)
        finally:
            os.umask(previous)
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "a.wav").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "a.bin").read_bytes() == b"a"

    def test_fsync_dir_of_a_missing_directory_is_quiet(self, tmp_path: Path) -> None:
        """fsync_dir is best effort: a directory it cannot open is passed over."""
        fsync_dir(tmp_path / "missing")
        fsync_dir(tmp_path)


class TestReadWithFfmpeg:
    """Formats other than WAV go through ffprobe/ffmpeg at the file's own rate and channels."""

    @needs_ffmpeg
    @pytest.mark.parametrize(("ext", "atol"), [("flac", 1 / 32768), ("mp3", 0.05)])
    def test_compressed_formats_decode(self, tmp_path: Path, ext: str, atol: float) -> None:
        """A stereo 44.1 kHz FLAC (lossless) and MP3 (lossy) come back with the right shape."""
        x = np.stack([tone(44100, 1.0, 440), tone(44100, 1.0, 660, 0.3)], axis=1)
        src = tmp_path / "src.wav"
        write_wav(src, x, 44100)
        out = tmp_path / f"f.{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-i", src, out], check=True)
        audio = read_audio(out)
        assert (audio.sample_rate, audio.channels) == (44100, 2)
        assert audio.samples.dtype == np.float32
        if ext == "flac":
            np.testing.assert_allclose(audio.samples, x, atol=atol)
        else:  # mp3 adds encoder delay; compare levels per channel
            rms = np.sqrt(np.mean(audio.samples[4410:-4410] ** 2, axis=0))
            np.testing.assert_allclose(rms, [0.5 / np.sqrt(2), 0.3 / np.sqrt(2)], atol=atol)

    @needs_ffmpeg
    def test_awkward_names(self, tmp_path: Path) -> None:
        """Names with Japanese, a leading dash and a colon reach ffmpeg as files, not options."""
        src = tmp_path / "src.wav"
        write_wav(src, tone(16000, 0.5), 16000)
        for name in ("机叩く音.flac", "-x.flac", "a:b.flac"):
            subprocess.run(
                ["ffmpeg", "-v", "error", "-i", src, f"file:{tmp_path / name}"], check=True
            )
            cwd = os.getcwd()
            os.chdir(tmp_path)
            try:
                audio = read_audio(name)
            finally:
                os.chdir(cwd)
            np.testing.assert_allclose(audio.samples[:, 0], tone(16000, 0.5), atol=1 / 32768)

    def test_ffmpeg_missing_says_how_to_install(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without ffmpeg on PATH, a non-WAV file fails with the apt-get hint."""
        (tmp_path / "a.flac").write_bytes(b"fLaC" + bytes(100))
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        with pytest.raises(AudioDecodeError, match=r"apt-get install ffmpeg") as info:
            read_audio(tmp_path / "a.flac")
        assert info.value.path == str(tmp_path / "a.flac")


class TestReadErrors:
    """Files that are not audio fail with AudioDecodeError naming the file."""

    def test_missing_file(self, tmp_path: Path) -> None:
        """A path that does not exist says so, with the path."""
        with pytest.raises(AudioDecodeError, match="no such file") as info:
            read_audio(tmp_path / "nope.wav")
        assert str(tmp_path / "nope.wav") in str(info.value)

    @needs_ffmpeg
    def test_text_file(self, tmp_path: Path) -> None:
        """A text file is not audio."""
        path = tmp_path / "notes.mp3"
        path.write_text("these are not the samples you are looking for\n" * 20)
        with pytest.raises(AudioDecodeError, match="not a") as info:
            read_audio(path)
        assert info.value.path == str(path)

    @needs_ffmpeg
    def test_truncated_wav_header(self, tmp_path: Path) -> None:
        """A RIFF header with nothing behind it fails cleanly (scipy, then ffmpeg, both refuse)."""
        path = tmp_path / "cut.wav"
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
        with pytest.raises(AudioDecodeError) as info:
            read_audio(path)
        assert info.value.path == str(path)

    def test_truncated_wav_is_reported_not_read_short(self, tmp_path: Path) -> None:
        """A WAV cut short (its header announces more audio than it holds) is an error
        naming the file and both lengths, not the part that is there."""
        path = tmp_path / "cut.wav"
        whole = wav_bytes(np.zeros(16000, np.float32), 16000)
        path.write_bytes(whole[: 44 + 16000])
        with pytest.raises(AudioDecodeError) as info:
            read_audio(path)
        assert info.value.path == str(path)
        assert info.value.problem == (
            "truncated: the header announces 32,000 bytes of audio (1.000 s), "
            "the file holds 16,000 (0.500 s)"
        )

    def test_a_header_claiming_2_to_the_31_samples_over_1_s_is_reported(
        self, tmp_path: Path
    ) -> None:
        """8-bit mono whose header claims 2**31 samples over 1 s of data: refused at
        once, nothing allocated for the claim."""
        path = tmp_path / "claims.wav"
        wavfile.write(path, 8000, np.full(8000, 128, dtype=np.uint8))
        header = bytearray(path.read_bytes())
        struct.pack_into("<I", header, 40, 2**31)
        path.write_bytes(bytes(header))
        with pytest.raises(AudioDecodeError, match=r"announces 2,147,483,648 bytes") as info:
            read_audio(path)
        assert info.value.path == str(path) and "holds 8,000 (1.000 s)" in info.value.problem

    def test_a_wav_cut_while_it_is_read_is_reported(self, tmp_path: Path) -> None:
        """A file that shrinks after it was opened: the block that is gone is an error
        naming the file, never silence or a short read taken as the end."""
        path = tmp_path / "a.wav"
        write_wav(path, np.zeros(16000, np.float32), 16000)
        with open_audio(path) as audio:
            os.truncate(path, 44 + 8000)
            with pytest.raises(AudioDecodeError, match="truncated while it was read") as info:
                list(audio.blocks(max_frames=1000))
        assert info.value.path == str(path)

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_nan_or_infinite_samples_are_reported_where(self, tmp_path: Path, bad: float) -> None:
        """``blocks(finite=True)`` (score, prepare) refuses a float WAV holding NaN or an
        infinity, naming the file and the first bad sample (frame and time), whatever the
        block size; without it the samples come as they are (the daemon's pipeline zeroes
        them); a finite file reads as before."""
        x = np.zeros((32000, 2), np.float32)
        x[20000, 1] = bad
        path = tmp_path / "a.wav"
        wavfile.write(path, 16000, x)
        for max_frames in (None, 7000):
            with open_audio(path) as audio, pytest.raises(AudioDecodeError) as info:
                list(audio.blocks(max_frames, finite=True))
            assert info.value.path == str(path)
            assert info.value.problem == "sample 20,000 (1.250 s) is NaN or infinite"
        assert not np.isfinite(read_audio(path).samples[20000, 1])
        x[20000, 1] = 0.5
        wavfile.write(path, 16000, x)
        with open_audio(path) as audio:
            assert np.concatenate(list(audio.blocks(finite=True)))[20000, 1] == 0.5

    @pytest.mark.parametrize("rate", [1, 999])
    def test_a_rate_below_1000_hz_is_refused(self, tmp_path: Path, rate: int) -> None:
        """A header saying 1 Hz (or anything under MIN_SAMPLE_RATE) is not audio: refused
        by name, not read as a recording thousands of times longer than it is."""
        path = tmp_path / "a.wav"
        wavfile.write(path, rate, np.zeros(2000, np.int16))
        with pytest.raises(AudioDecodeError) as info:
            open_audio(path)
        assert info.value.path == str(path)
        assert info.value.problem == (
            f"sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz: not an audio recording"
        )
        wavfile.write(path, MIN_SAMPLE_RATE, np.zeros(2000, np.int16))
        assert read_audio(path).sample_rate == MIN_SAMPLE_RATE


class TestToMono:
    """to_mono picks one channel or mixes all of them down."""

    def test_pick_and_mix(self) -> None:
        """channel=1 returns the right channel; None returns the mean of both."""
        x = np.array([[1.0, 0.0], [0.5, -0.5], [0.0, 1.0]], dtype=np.float32)
        np.testing.assert_array_equal(to_mono(x, 1), [0.0, -0.5, 1.0])
        np.testing.assert_array_equal(to_mono(x, None), [0.5, 0.0, 0.5])
        assert to_mono(x, None).dtype == np.float32

    def test_mono_input_and_bad_channel(self) -> None:
        """1-D input is already mono; a channel that does not exist is a ValueError."""
        np.testing.assert_array_equal(to_mono(np.array([0.1, 0.2]), 0), np.float32([0.1, 0.2]))
        with pytest.raises(ValueError, match="channel 2 does not exist"):
            to_mono(np.zeros((4, 2)), 2)


def _manifest(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "MANIFEST.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class TestRealRecordings:
    """Every real recording in ../shared/data decodes as its MANIFEST says."""

    @needs_ffmpeg
    def test_every_file_matches_the_manifest(self, shared_data: Path) -> None:
        """Rate and channels exactly; duration to 1 ms for WAV, 0.1 s for AAC (priming frames)."""
        rows = _manifest(shared_data)
        assert len(rows) > 100
        kinds = set()
        for row in rows:
            audio = read_audio(shared_data / row["path"])
            where = row["path"]
            kinds.add(Path(where).suffix)
            assert audio.sample_rate == int(row["sr"]), where
            assert audio.channels == int(row["ch"]), where
            tolerance = 0.001 if where.endswith(".wav") else 0.1
            assert abs(audio.duration_s - float(row["dur"])) <= tolerance, where
            assert np.isfinite(audio.samples).all(), where
            assert 0 < np.abs(audio.samples).max() <= 1.0, where
        assert kinds == {".wav", ".m4a"}

    @needs_ffmpeg
    def test_japanese_m4a_name(self, shared_data: Path) -> None:
        """机叩く音1.m4a (AAC, 48 kHz) decodes to audible desk knocks."""
        audio = read_audio(shared_data / "background" / "机叩く音1.m4a")
        assert isinstance(audio, AudioData)
        assert (audio.sample_rate, audio.channels) == (48000, 1)
        assert np.abs(audio.samples).max() > 0.1


def test_truncated_riff_header_is_a_decode_error(tmp_path: Path) -> None:
    """A RIFF file cut off before its format chunk is an AudioDecodeError naming the file
    (scipy raises UnboundLocalError on it), never a crash."""
    bad = tmp_path / "cut.wav"
    bad.write_bytes(b"RIFF\0\0\0\0WAVEjunk")
    with pytest.raises(AudioDecodeError, match=r"cut\.wav"):
        read_audio(bad)
