"""training.synth: deterministic machine sound whose anomalies show in the way they say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import signal, stats

from asd_edge.audiofile import read_audio
from training.synth import (
    ANOMALY_KINDS,
    Anomaly,
    Machine,
    make_stream,
    parse_anomalies,
    write_dataset,
)

RATE = 16000
SECONDS = 4.0


def rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2))))


def band(x: np.ndarray, lo_hz: float, hi_hz: float, rate: int = RATE) -> np.ndarray:
    sos = signal.butter(4, [lo_hz, hi_hz], "band", fs=rate, output="sos")
    return signal.sosfilt(sos, np.asarray(x, np.float64))


def strongest_hz(x: np.ndarray, lo_hz: float = 30.0, hi_hz: float = 200.0) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    freqs = np.fft.rfftfreq(x.shape[0], 1 / RATE)
    sel = (freqs > lo_hz) & (freqs < hi_hz)
    return float(freqs[sel][np.argmax(spec[sel])])


def envelope_line(x: np.ndarray, freq_hz: float) -> float:
    """Height of the envelope spectrum at ``freq_hz`` over its median (20-200 Hz)."""
    env = np.abs(signal.hilbert(x))
    spec = np.abs(np.fft.rfft(env - env.mean()))
    freqs = np.fft.rfftfreq(env.shape[0], 1 / RATE)
    i = int(np.argmin(np.abs(freqs - freq_hz)))
    return float(spec[i - 2 : i + 3].max() / np.median(spec[(freqs > 2) & (freqs < 200)]))


@pytest.fixture(scope="module", params=[0, 1], ids=["machine0", "machine1"])
def machine(request: pytest.FixtureRequest) -> Machine:
    return Machine(machine_id=request.param, seed=3, sample_rate=RATE)


@pytest.fixture(scope="module")
def normals(machine: Machine) -> list[np.ndarray]:
    return [machine.normal(SECONDS, np.random.default_rng(i)) for i in range(3)]


class TestMachine:
    def test_deterministic_and_varied(self, machine: Machine) -> None:
        """Same machine + same rng seed → identical samples; another seed → another file."""
        a = machine.normal(1.0, np.random.default_rng(7))
        b = Machine(machine.machine_id, machine.seed, RATE).normal(1.0, np.random.default_rng(7))
        c = machine.normal(1.0, np.random.default_rng(8))
        assert a.dtype == np.float32 and a.shape == (RATE,)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c, atol=1e-3)
        assert abs(rms_db(a) - rms_db(c)) <= 4.0  # ±2 dB per file

    def test_machines_sound_different(self) -> None:
        """Two machine ids have different fundamentals (different hum)."""
        x0 = Machine(0, seed=3).normal(SECONDS, np.random.default_rng(0))
        x1 = Machine(1, seed=3).normal(SECONDS, np.random.default_rng(0))
        assert abs(strongest_hz(x0) - strongest_hz(x1)) > 2.0

    def test_normal_is_a_hum_at_the_fundamental(
        self, machine: Machine, normals: list[np.ndarray]
    ) -> None:
        """The strongest low line of a normal file is the machine's fundamental (±1 %)."""
        for x in normals:
            assert strongest_hz(x) == pytest.approx(machine.voice.f0_hz, rel=0.01)

    @pytest.mark.parametrize("kind", [k for k in ANOMALY_KINDS if k != "impact"])
    def test_anomaly_level_stays_near_normal(
        self, machine: Machine, normals: list[np.ndarray], kind: str
    ) -> None:
        """A level meter alone cannot catch them: RMS within 3 dB of normal, peak < 1."""
        x = machine.anomaly(kind, SECONDS, np.random.default_rng(11))
        assert np.max(np.abs(x)) < 1.0
        assert abs(rms_db(x) - np.mean([rms_db(n) for n in normals])) < 3.0

    def test_shift_moves_the_fundamental(self, machine: Machine, normals: list[np.ndarray]) -> None:
        """`shift` raises the hum's strongest line by ~6 % at severity 1, ~3 % at 0.5."""
        base = np.mean([strongest_hz(n) for n in normals])
        full = strongest_hz(machine.anomaly("shift", SECONDS, np.random.default_rng(1)))
        half = strongest_hz(machine.anomaly("shift", SECONDS, np.random.default_rng(1), 0.5))
        assert full / base == pytest.approx(1.06, abs=0.01)
        assert half / base == pytest.approx(1.03, abs=0.01)

    def test_bearing_is_impulsive_in_its_band(
        self, machine: Machine, normals: list[np.ndarray]
    ) -> None:
        """`bearing`: the resonance band turns impulsive (kurtosis) at the fault rate."""
        v = machine.voice
        x = machine.anomaly("bearing", SECONDS, np.random.default_rng(1))
        lo, hi = v.bearing_hz - 400, v.bearing_hz + 400
        assert stats.kurtosis(band(x, lo, hi)) > 10.0
        assert max(stats.kurtosis(band(n, lo, hi)) for n in normals) < 5.0
        assert envelope_line(band(x, lo, hi), v.bearing_rate_hz) > 10.0

    def test_impact_is_loud_and_impulsive(
        self, machine: Machine, normals: list[np.ndarray]
    ) -> None:
        """`impact`: knocks at least twice the normal peak; crest factor up."""
        x = machine.anomaly("impact", SECONDS, np.random.default_rng(1))
        normal_peak = max(np.max(np.abs(n)) for n in normals)
        assert np.max(np.abs(x)) > 2.0 * normal_peak
        assert np.max(np.abs(x)) < 1.0
        hp = band(x, 500, 6000)
        assert stats.kurtosis(hp) > 5.0 * max(
            1.0, *(stats.kurtosis(band(n, 500, 6000)) for n in normals)
        )

    def test_imbalance_modulates_at_the_rotation_rate(
        self, machine: Machine, normals: list[np.ndarray]
    ) -> None:
        """`imbalance`: the envelope gets a strong line at the rotation rate."""
        rot = machine.voice.rotation_hz
        x = machine.anomaly("imbalance", SECONDS, np.random.default_rng(1))
        assert envelope_line(x, rot) > 5.0 * max(envelope_line(n, rot) for n in normals)

    def test_squeal_adds_band_energy(self, machine: Machine, normals: list[np.ndarray]) -> None:
        """`squeal`: +10 dB or more in a narrow band around the squeal tone."""
        f = machine.voice.squeal_hz
        x = machine.anomaly("squeal", SECONDS, np.random.default_rng(1))
        gain = rms_db(band(x, 0.95 * f, 1.05 * f)) - max(
            rms_db(band(n, 0.95 * f, 1.05 * f)) for n in normals
        )
        assert gain > 10.0

    def test_bad_arguments(self, machine: Machine) -> None:
        """Unknown kinds, negative severities and empty durations are refused by name."""
        with pytest.raises(ValueError, match="unknown anomaly kind 'rattle'"):
            machine.anomaly("rattle", 1.0, np.random.default_rng(0))
        with pytest.raises(ValueError, match="severity"):
            machine.anomaly("shift", 1.0, np.random.default_rng(0), severity=-1.0)
        with pytest.raises(ValueError, match="duration_s"):
            machine.normal(0.0, np.random.default_rng(0))

    def test_low_sample_rate(self) -> None:
        """At 8 kHz every kind still renders finite samples below full scale."""
        m = Machine(0, sample_rate=8000)
        for kind in ANOMALY_KINDS:
            x = m.anomaly(kind, 1.0, np.random.default_rng(0))
            assert x.shape == (8000,) and np.all(np.isfinite(x)) and np.max(np.abs(x)) < 1.0


class TestStream:
    def test_events_are_where_they_are_said_to_be(self) -> None:
        """Squeal energy and bearing impulsiveness rise inside their events only."""
        m = Machine(0, seed=1)
        v = m.voice
        x = make_stream(12.0, [(3.0, 2.0, "squeal"), (8.0, 2.0, "bearing")], machine=m, seed=5)
        assert x.shape == (12 * RATE,) and x.dtype == np.float32
        sq = band(x, 0.95 * v.squeal_hz, 1.05 * v.squeal_hz)
        br = band(x, v.bearing_hz - 400, v.bearing_hz + 400)
        frames = np.arange(0.0, 12.0, 0.25)
        sq_db = np.array([rms_db(sq[int(t * RATE) : int((t + 0.25) * RATE)]) for t in frames])
        br_k = np.array(
            [stats.kurtosis(br[int(t * RATE) : int((t + 0.25) * RATE)]) for t in frames]
        )
        in_sq = (frames >= 3.0) & (frames < 5.0)
        in_br = (frames >= 8.0) & (frames < 10.0)
        # frames straddling no boundary (band filters ring for a few ms)
        out_sq = (frames < 2.75) | (frames >= 5.25)
        out_br = (frames < 7.75) | (frames >= 10.25)
        assert sq_db[in_sq].min() > sq_db[out_sq].max() + 10.0
        assert br_k[in_br].min() > 3.0 * max(1.0, br_k[out_br].max())

    def test_shift_inside_a_stream(self) -> None:
        """The fundamental is shifted inside the event and back to normal after it."""
        m = Machine(2, seed=0)
        x = make_stream(9.0, [(3.0, 3.0, "shift")], machine=m, seed=1)
        before = strongest_hz(x[: 3 * RATE])
        during = strongest_hz(x[int(3.1 * RATE) : int(5.9 * RATE)])
        after = strongest_hz(x[6 * RATE :])
        assert during / before == pytest.approx(1.06, abs=0.015)
        assert after == pytest.approx(before, rel=0.012)

    def test_stream_is_deterministic_and_checks_events(self) -> None:
        """Same seed → same stream; an event past the end is refused."""
        m = Machine(0)
        a = make_stream(2.0, [(0.5, 1.0, "impact")], machine=m, seed=2)
        np.testing.assert_array_equal(
            a, make_stream(2.0, [(0.5, 1.0, "impact")], machine=m, seed=2)
        )
        with pytest.raises(ValueError, match="does not fit"):
            make_stream(2.0, [(1.5, 1.0, "impact")], machine=m)

    def test_parse_anomalies(self) -> None:
        """``start:duration:kind`` lists parse; a bad item is named."""
        assert parse_anomalies("1:2:bearing, 4.5:1:squeal") == (
            Anomaly("bearing", 1.0, 2.0),
            Anomaly("squeal", 4.5, 1.0),
        )
        with pytest.raises(ValueError, match="'1:x:bearing'"):
            parse_anomalies("1:x:bearing")


class TestWriteDataset:
    def test_layout_and_byte_identical_repeats(self, tmp_path: Path) -> None:
        """DCASE layout, kinds cycled, and the same arguments give the same bytes."""
        kwargs = dict(
            machines=2, train_files=2, test_normal=1, test_anomaly=6, duration_s=0.5, progress=False
        )
        a = write_dataset(tmp_path / "a", **kwargs)  # type: ignore[arg-type]
        b = write_dataset(tmp_path / "b", **kwargs)  # type: ignore[arg-type]
        rel = sorted(str(p.relative_to(tmp_path / "a")) for p in a)
        assert len(rel) == 18
        assert "machine_01/train/normal_id_01_00000001.wav" in rel
        assert "machine_00/test/normal_id_00_00000000.wav" in rel
        kinds = [p.stem.rsplit("_", 1)[1] for p in a if p.name.startswith("anomaly_id_00")]
        assert kinds == [*ANOMALY_KINDS, ANOMALY_KINDS[0]]
        for pa, pb in zip(a, b, strict=True):
            assert pa.read_bytes() == pb.read_bytes()
        audio = read_audio(a[0])
        assert audio.sample_rate == RATE and audio.frames == RATE // 2
        # train files are not copies of each other
        assert a[0].read_bytes() != a[1].read_bytes()


class TestCommand:
    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "training", "synth", *args], capture_output=True, text=True
        )

    def test_dataset_command(self, tmp_path: Path) -> None:
        """`asd-train synth --out DIR ...` writes the dataset at the asked rate."""
        r = self.run(
            "--out", str(tmp_path), "--train-files", "2", "--test-normal", "1",
            "--test-anomaly", "1", "--duration-s", "0.5", "--rate", "8000", "--quiet",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        files = sorted(tmp_path.rglob("*.wav"))
        assert len(files) == 4
        assert read_audio(files[0]).sample_rate == 8000

    def test_stream_command(self, tmp_path: Path) -> None:
        """`--stream 4 --anomalies 1:1:squeal` writes stream.wav and stream.json."""
        r = self.run(
            "--out", str(tmp_path), "--stream", "4", "--anomalies", "1:1:squeal", "--quiet"
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert read_audio(tmp_path / "stream.wav").frames == 4 * RATE
        meta = json.loads((tmp_path / "stream.json").read_text())
        assert meta["anomalies"] == [{"kind": "squeal", "start_s": 1.0, "duration_s": 1.0}]

    def test_the_demos_stream_is_a_synth_stream(self, tmp_path: Path) -> None:
        """The demo's stream, asked of `asd-train synth --stream` with the anomalies its
        stream.json lists, is the same sound described by the same stream.json."""
        from devkit.scenario import plan

        demo = plan(2, kinds=["impact", "squeal"])
        demo.write(tmp_path / "demo")
        meta = json.loads((tmp_path / "demo" / "stream.json").read_text())
        spec = ",".join(f"{a['start_s']}:{a['duration_s']}:{a['kind']}" for a in meta["anomalies"])
        r = self.run(
            "--out", str(tmp_path / "synth"), "--stream", str(meta["duration_s"]),
            "--anomalies", spec, "--seed", str(meta["seed"]), "--quiet",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        for name in ("stream.json", "stream.wav"):
            synth, played = tmp_path / "synth" / name, tmp_path / "demo" / name
            assert synth.read_bytes() == played.read_bytes(), name

    def test_bad_anomaly_is_a_usage_error(self, tmp_path: Path) -> None:
        """An unknown kind exits 2 and names it."""
        r = self.run("--out", str(tmp_path), "--stream", "4", "--anomalies", "1:1:rattle")
        assert r.returncode == 2 and "rattle" in r.stderr


class TestLight:
    def test_imports_with_the_daemons_dependencies_only(self) -> None:
        """synth runs with torch, librosa, sklearn, matplotlib and onnx barred (demo player)."""
        from support.importguard import GUARD

        code = GUARD + (
            "import numpy as np\n"
            "from training.synth import Machine\n"
            "print(Machine().normal(0.1, np.random.default_rng(0)).shape)\n"
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "(1600,)"
