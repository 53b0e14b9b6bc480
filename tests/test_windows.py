"""Training windows are exactly what the daemon's monitor feeds the detector."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from support.audio import tone_burst, write_wav

from asd_edge.config import MonitorConfig
from asd_edge.detector import Detector
from asd_edge.features import PrefilterSpec
from asd_edge.scoring import score_file
from training.kinds import get_kind
from training.level import build_level_model, build_waveform_level_model, save_model
from training.synth import Machine
from training.windows import WindowSpec, load_windows


@dataclass(frozen=True)
class File:
    path: Path
    label: str


class RecordingDetector(Detector):
    """The real Detector, keeping a copy of every model input the monitor made it score."""

    def __init__(self, path: Path) -> None:
        self.fed: list[np.ndarray] = []
        super().__init__(path)
        self.fed.clear()  # drop the load-time check on a silent window

    def score_bands(self, windows: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray | None]:
        self.fed.append(self.model_input(windows))
        return super().score_bands(windows)


def daemon_inputs(model: Path, wav: Path, hop_s: float) -> np.ndarray:
    detector = RecordingDetector(model)
    score_file(str(wav), detector, MonitorConfig(name="t", model=str(model)), hop_s=hop_s)
    return np.concatenate(detector.fed)


def machine_sound(rate: int, seconds: float, seed: int = 3) -> np.ndarray:
    machine = Machine(machine_id=0, seed=seed, sample_rate=rate)
    return machine.normal(seconds, np.random.default_rng(seed)).astype(np.float32)


@pytest.fixture(scope="module")
def contract_logmel_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real log-mel model with the contract's default features (128 mels, 0-8000 Hz)."""
    model = build_level_model(n_mels=128, fmin=0.0, fmax=8000.0)
    return save_model(model, tmp_path_factory.mktemp("m") / "logmel.onnx")


class TestSameAsDaemon:
    @pytest.mark.parametrize("file_rate", [16000, 48000, 44100])
    def test_logmel_windows_equal_monitor_input(
        self, tmp_path: Path, contract_logmel_model: Path, file_rate: int
    ) -> None:
        """Every log-mel window equals what the monitor feeds the detector, resampled or not."""
        wav = write_wav(tmp_path / "m.wav", machine_sound(file_rate, 3.3), file_rate)
        spec = WindowSpec.for_kind(get_kind("dense_ae"), hop_s=0.5)
        windows, skipped = load_windows([File(wav, "normal")], spec, progress=False)
        fed = daemon_inputs(contract_logmel_model, wav, hop_s=0.5)
        assert not skipped
        assert windows.x.shape == fed.shape == (5, 30, 128)
        atol = 0.0 if file_rate == 16000 else 2e-3  # dB; float rounding of the resampler
        np.testing.assert_allclose(windows.x, fed, rtol=0, atol=atol)

    def test_waveform_windows_equal_monitor_input(self, tmp_path: Path, model_dir: Path) -> None:
        """A waveform model's windows are pre-filtered over the stream as the daemon does."""
        pre = {"type": "butter_bandpass", "low_hz": 50.0, "high_hz": 3000.0, "order": 4}
        model = save_model(build_waveform_level_model(prefilter=pre), model_dir / "wave_band.onnx")
        wav = write_wav(tmp_path / "m.wav", machine_sound(48000, 2.6), 48000)
        spec = WindowSpec(
            input="waveform",
            prefilter=PrefilterSpec("butter_bandpass", 4, 50.0, 3000.0),
            hop_s=0.25,
        )
        windows, _ = load_windows([File(wav, "anomaly")], spec, progress=False)
        fed = daemon_inputs(model, wav, hop_s=0.25)
        assert windows.x.shape == fed.shape == (7, 16000)
        np.testing.assert_allclose(windows.x, fed, rtol=0, atol=1e-5)
        assert set(windows.label.tolist()) == {1}


class TestLoading:
    def test_grid_and_tags(self, tmp_path: Path) -> None:
        """Windows sit on the hop grid from the first sample and carry file and label."""
        a = write_wav(tmp_path / "a.wav", tone_burst(16000, 2.0, (0.5, 1.0)), 16000)
        b = write_wav(tmp_path / "b.wav", tone_burst(16000, 1.6, (0.2, 0.4)), 16000)
        spec = WindowSpec.for_kind(get_kind("gmm"), hop_s=0.3)
        w, _ = load_windows([File(a, "normal"), File(b, "anomaly")], spec, progress=False)
        assert w.start.tolist() == [0, 4800, 9600, 14400, 0, 4800, 9600]  # 1.6 s holds 3
        assert w.file_index.tolist() == [0, 0, 0, 0, 1, 1, 1]
        assert w.label.tolist() == [0, 0, 0, 0, 1, 1, 1]
        assert w.files == (a, b)

    def test_bad_files_are_skipped_with_a_reason(self, tmp_path: Path) -> None:
        """An unreadable file and a file shorter than a window are named; the rest is used."""
        good = write_wav(tmp_path / "good.wav", tone_burst(16000, 1.5, (0.1, 0.2)), 16000)
        short = write_wav(tmp_path / "short.wav", tone_burst(16000, 0.5, (0.1, 0.2)), 16000)
        broken = tmp_path / "broken.wav"
        broken.write_bytes(b"this is not audio at all")
        spec = WindowSpec.for_kind(get_kind("dense_ae"))
        files = [File(broken, "normal"), File(short, "normal"), File(good, "normal")]
        w, skipped = load_windows(files, spec, progress=False)
        assert len(w) == 2 and w.files == (good,)
        reasons = {s.path.name: s.reason for s in skipped}
        assert set(reasons) == {"broken.wav", "short.wav"}
        assert "shorter than one window" in reasons["short.wav"]

    def test_kept_streams_give_the_windows_back(self, tmp_path: Path) -> None:
        """With streams kept, a window's waveform turns into exactly its model input."""
        wav = write_wav(tmp_path / "a.wav", machine_sound(16000, 2.0), 16000)
        spec = WindowSpec.for_kind(get_kind("dense_ae"))
        w, _ = load_windows([File(wav, "normal")], spec, keep_streams=True, progress=False)
        np.testing.assert_array_equal(spec.model_input(w.waveforms([2, 0])), w.x[[2, 0]])

    def test_contract_defaults(self) -> None:
        """A 1 s window at 16 kHz is 30 frames x 128 mels with the contract's parameters."""
        spec = WindowSpec.for_kind(get_kind("dense_ae"))
        assert spec.input_shape == (30, 128)
        meta = spec.metadata(frames=5)
        assert meta["features"] == {
            "n_fft": 1024,
            "hop_length": 512,
            "n_mels": 128,
            "fmin": 0.0,
            "fmax": 8000.0,
            "power": 2.0,
            "log": "db",
            "frames": 5,
        }
