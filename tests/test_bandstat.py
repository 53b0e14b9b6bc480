"""The numpy-fitted ``bandstat`` kind: statistics, scorers, ONNX parity, evidence, the
cross-fitted calibration and ``asd-train fit --model auto`` (synthetic machines, and the
real recordings in ../shared/data where present)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from scipy import signal
from sklearn.metrics import roc_auc_score

from asd_edge.audiofile import write_wav
from asd_edge.config import MonitorConfig
from asd_edge.detector import Detector
from asd_edge.learning import bandstat
from asd_edge.learning.crossfit import auc, pauc
from asd_edge.learning.inject import FAULTS, SEVERITIES, inject
from asd_edge.learning.windows import Featurizer
from asd_edge.modelspec import band_evidence
from asd_edge.scoring import score_samples
from training.bandfit import spec_for
from training.dataset import file_sha256, write_manifest
from training.export import read_metadata
from training.fit import FitConfig, fit
from training.synth import Machine, write_labelled_dataset

RATE = 16000
SPEC = spec_for(RATE, 1.0, 0.5, 64)
FEATURIZE = Featurizer(SPEC.features, SPEC.window_s, SPEC.hop_s)


def _normal_logmel(seconds: float = 40.0, seed: int = 0) -> np.ndarray:
    machine = Machine(machine_id=1, seed=0, sample_rate=RATE)
    stream = machine.normal(seconds, np.random.default_rng(seed))
    return FEATURIZE(stream)[0]


def _session(proto: object) -> ort.InferenceSession:
    return ort.InferenceSession(
        proto.SerializeToString(),  # type: ignore[attr-defined]
        providers=["CPUExecutionProvider"],
    )


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``fit --model auto`` on a small synthetic machine (two recordings per split)."""
    root = tmp_path_factory.mktemp("bandstat")
    plan = [("train", "normal", 6), ("valid", "normal", 2), ("test", "normal", 3),
            ("test", "anomaly", 5)]  # fmt: skip
    data = write_labelled_dataset(root / "data", plan, duration_s=8.0, seed=3)
    result = fit(FitConfig(data=data, out=root / "run", kind="auto", seed=0, quiet=True))
    return result.model_path, result.metrics


class TestStatistics:
    """The window statistics the kind is built on."""

    def test_shapes_and_level(self) -> None:
        """3 * n_mels + 1 statistics; a 6 dB louder window has every band mean and the
        broadband level 6 dB up and the spreads and flux unchanged."""
        x = _normal_logmel(4.0)
        s = bandstat.statistics(x)
        louder = bandstat.statistics(x + 6.0)
        m = x.shape[2]
        assert s.shape == (x.shape[0], 3 * m + 1)
        np.testing.assert_allclose(louder[:, :m] - s[:, :m], 6.0, atol=1e-5)
        np.testing.assert_allclose(louder[:, m : 3 * m], s[:, m : 3 * m], atol=1e-5)
        np.testing.assert_allclose(louder[:, -1] - s[:, -1], 6.0, atol=1e-5)

    def test_refuses_bad_input(self) -> None:
        """A bad shape, scorer, parameter or too few windows is a ValueError naming it."""
        with pytest.raises(ValueError, match="log-mel windows"):
            bandstat.statistics(np.zeros((3, 64)))
        x = _normal_logmel(6.0)
        with pytest.raises(ValueError, match="scorer"):
            bandstat.fit(x, {"scorer": "magic"})
        with pytest.raises(ValueError, match="no parameter 'depth'"):
            bandstat.fit(x, {"depth": 3})
        with pytest.raises(ValueError, match="at least 8 normal windows"):
            bandstat.fit(x[:4], {})


@pytest.mark.parametrize("scorer", bandstat.SCORERS)
class TestScorers:
    """Each scorer: the ONNX graph equals numpy, faults score higher than normal sound."""

    def test_onnx_matches_numpy(self, scorer: str) -> None:
        """score and bands of the exported graph equal the numpy scoring on real-shaped
        windows (normal and faulty) within 1e-4 + 1e-3 relative."""
        train = _normal_logmel(40.0)
        plain = bandstat.fit(train, {"scorer": scorer}, groups=np.arange(len(train)) // 10)
        machine = Machine(machine_id=1, seed=0, sample_rate=RATE)
        bad = FEATURIZE(machine.anomaly("squeal", 4.0, np.random.default_rng(5)))[0]
        x = np.concatenate([_normal_logmel(4.0, seed=9), bad, train[:5] - 8.0])
        x = x.astype(np.float32)
        for model in (plain, plain.with_taus(2.0, 3.0)):
            proto = bandstat.to_onnx(model, train.shape[1], {"note": "test"})
            got_s, got_b = _session(proto).run(["score", "bands"], {"logmel": x})
            ref_s, ref_b = model.score(x)
            np.testing.assert_allclose(got_s, ref_s, atol=1e-4, rtol=1e-3)
            np.testing.assert_allclose(got_b, ref_b, atol=1e-4, rtol=1e-3)

    def test_fused_score_is_the_larger_channel(self, scorer: str) -> None:
        """With thresholds, the score is max(distance / its threshold, loudness / its
        threshold): a window 8 dB quieter than normal scores by its loudness."""
        train = _normal_logmel(40.0)
        model = bandstat.fit(train, {"scorer": scorer}, groups=np.arange(len(train)) // 10)
        fused = model.with_taus(2.0, 3.0)
        quiet = train[:6] - 8.0
        distance, loudness, _ = model.components(quiet)
        np.testing.assert_allclose(
            fused.score(quiet)[0], np.maximum(distance / 2.0, loudness / 3.0)
        )
        assert np.all(loudness >= 6.0)  # 8 dB at a spread of at most ~1.3 dB
        with pytest.raises(ValueError, match="positive"):
            model.with_taus(0.0, 1.0)

    def test_faults_score_higher(self, scorer: str) -> None:
        """Every synthetic fault kind scores above held-out normal windows (window AUC
        >= 0.9 for each)."""
        train = _normal_logmel(60.0)
        model = bandstat.fit(train, {"scorer": scorer}, groups=np.arange(len(train)) // 20)
        normal = model.score(_normal_logmel(20.0, seed=7))[0]
        machine = Machine(machine_id=1, seed=0, sample_rate=RATE)
        for kind in ("bearing", "shift", "imbalance", "impact", "squeal"):
            faulty = FEATURIZE(machine.anomaly(kind, 10.0, np.random.default_rng(11)))[0]
            got = auc(normal, model.score(faulty)[0])
            assert got is not None and got >= 0.9, f"{scorer} {kind}: AUC {got}"


class TestEvidence:
    """The ``bands`` output names the band that changed."""

    def test_plus_6_db_band_is_named(self, auto_run: tuple[Path, dict]) -> None:
        """A +6 dB change in 2.0-2.6 kHz of normal sound: the daemon's evidence names a band
        inside that range first, about 6 dB up, and the detector scores it above threshold."""
        path, _ = auto_run
        detector = Detector(path)
        assert detector.spec.bands is not None
        machine = Machine(machine_id=0, seed=3, sample_rate=RATE)
        x = machine.normal(6.0, np.random.default_rng(42)).astype(np.float64)
        sos = signal.butter(6, [2000.0, 2600.0], btype="bandpass", fs=RATE, output="sos")
        changed = (x + (10 ** (6 / 20) - 1) * signal.sosfiltfilt(sos, x)).astype(np.float32)
        windows = SPEC  # window grid of the model
        starts = np.arange(0, changed.size - windows.window_samples + 1, RATE // 2)
        waves = np.stack([changed[s : s + windows.window_samples] for s in starts])
        scores, bands = detector.score_bands(waves)
        assert np.median(scores) > detector.threshold
        peak = int(np.argmax(scores))
        evidence = band_evidence(detector.spec.bands, bands[peak])
        assert evidence, "no band qualified as evidence"
        lo, hi = evidence[0]["band_hz"]
        centre = (lo + hi) / 2
        assert 1900.0 <= centre <= 2700.0, evidence
        assert 3.0 <= evidence[0]["delta_db"] <= 9.0, evidence

    def test_events_carry_evidence_offline(self, auto_run: tuple[Path, dict]) -> None:
        """``asd-edge score``'s pipeline puts the evidence on each event of a stream with a
        squeal: a band around the squeal's frequency comes first."""
        path, _ = auto_run
        detector = Detector(path)
        machine = Machine(machine_id=0, seed=3, sample_rate=RATE)
        from training.synth import make_stream

        stream = make_stream(30.0, [(10.0, 6.0, "squeal")], machine=machine, seed=1)
        report = score_samples(stream, RATE, detector, MonitorConfig(name="t", model=str(path)))
        assert report["events"], "the squeal was not detected"
        evidence = report["events"][0]["evidence"]
        lo, hi = evidence[0]["band_hz"]
        assert lo <= machine.voice.squeal_hz * 1.02 and hi >= machine.voice.squeal_hz * 0.98


class TestAutoFit:
    """``asd-train fit --model auto``: candidates, cross-fitted calibration, the records."""

    def test_records_every_candidate(self, auto_run: tuple[Path, dict]) -> None:
        """metrics.json lists every candidate with its threshold, predicted false alarms and
        injected-fault recall per fault and severity; the chosen one is among them."""
        path, metrics = auto_run
        names = [c["name"] for c in metrics["candidates"]]
        assert names == [f"bandstat/{s}" for s in ("topk", "knn", "knn_topk", "maha")]
        assert metrics["chosen"] in names
        for cand in metrics["candidates"]:
            assert set(cand["injected_recall"]) == set(FAULTS)
            assert cand["predicted_fa_per_day"] is not None
        assert metrics["model"]["distance_threshold"] > 0
        assert metrics["model"]["loudness_threshold"] > 0
        meta = read_metadata(path)
        cal = meta["calibration"]
        assert cal["cross_fitted"]["sources"] == 8
        assert set(cal["injected_recall"]) == set(FAULTS)
        assert meta["kind"] == "bandstat" and meta["threshold"] == metrics["threshold"]
        assert len(meta["bands"]["edges_hz"]) == len(meta["bands"]["spread_db"]) == 64
        assert meta["level"]["stopped_below_dbfs"] < meta["level"]["p01"] - 10
        run = path.parent
        for name in ("metrics.json", "model_card.md", "injected_recall.png", "config.json"):
            assert (run / name).is_file(), name
        assert "warning" in cal and "min more normal sound" in cal["warning"]
        assert metrics["test"]["auc"] >= 0.9

    def test_threshold_holds_on_new_normal_audio(self, auto_run: tuple[Path, dict]) -> None:
        """Ten minutes of new normal sound of the same machine, through the daemon's
        pipeline at the calibrated threshold: no false alarm (the target is 1 a day)."""
        path, _ = auto_run
        detector = Detector(path)
        machine = Machine(machine_id=0, seed=3, sample_rate=RATE)
        stream = machine.normal(600.0, np.random.default_rng(1234))
        report = score_samples(stream, RATE, detector, MonitorConfig(name="t", model=str(path)))
        assert report["events"] == []

    def test_single_recording_is_cut_into_folds(self, tmp_path: Path) -> None:
        """One 40 s recording: cross-fitting uses pieces of it as sources and says so."""
        plan = [("train", "normal", 1)]
        data = write_labelled_dataset(tmp_path / "one", plan, duration_s=40.0, seed=1)
        result = fit(FitConfig(data=data, out=tmp_path / "run", kind="bandstat", quiet=True))
        cal = read_metadata(result.model_path)["calibration"]
        assert cal["cross_fitted"]["sources"] >= 2
        assert cal["cross_fitted"]["pieces_of_one_recording"] is True
        assert cal["final_model"]["events_at_crossfitted_threshold"] == 0
        assert result.metrics["chosen"] == "bandstat/topk"

    def test_segments_of_one_recording_are_cut_into_folds(self, tmp_path: Path) -> None:
        """Six 10 s segments of one source (what ``asd-train prepare`` makes of one long
        recording) are pieces of that source for the folds, numbered across the files."""
        folder = tmp_path / "segments"
        machine = Machine(machine_id=0, seed=1, sample_rate=RATE)
        rows = []
        for i in range(6):
            rel = Path("normal") / f"seg{i}.wav"
            (folder / "normal").mkdir(parents=True, exist_ok=True)
            write_wav(folder / rel, machine.normal(10.0, np.random.default_rng(i)), RATE)
            rows.append([rel.as_posix(), "normal", "train", "long.wav", file_sha256(folder / rel)])
        write_manifest(folder, rows)
        result = fit(FitConfig(data=folder, out=tmp_path / "run", kind="auto", quiet=True))
        cal = read_metadata(result.model_path)["calibration"]
        assert cal["cross_fitted"] == {"folds": 5, "sources": 6, "pieces_of_one_recording": True}

    def test_only_false_alarms_per_day(self, tmp_path: Path) -> None:
        """The fused score is calibrated on false alarms per day: another method is a usage
        error (exit 2) naming it."""
        from training.cli import main as asd_train

        plan = [("train", "normal", 3)]
        data = write_labelled_dataset(tmp_path / "d", plan, duration_s=6.0, seed=2)
        code = asd_train(["fit", "--data", str(data), "--out", str(tmp_path / "r"), "--quiet",
                          "--calibration", "quantile"])  # fmt: skip
        assert code == 2

    def test_cli_fit_auto(self, tmp_path: Path) -> None:
        """The CLI's default kind is auto, fitted on one BLAS thread unless --threads says
        otherwise (config.json records it); a scorer with auto is a usage error (exit 2)."""
        from training.cli import main as asd_train

        plan = [("train", "normal", 3), ("valid", "normal", 1)]
        data = write_labelled_dataset(tmp_path / "d", plan, duration_s=6.0, seed=2)
        code = asd_train(["fit", "--data", str(data), "--out", str(tmp_path / "r"), "--quiet"])
        assert code == 0
        assert json.loads((tmp_path / "r" / "metrics.json").read_text())["kind"] == "bandstat"
        assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == 1
        code = asd_train(["fit", "--data", str(data), "--out", str(tmp_path / "r2"), "--quiet",
                          "--param", "scorer=knn"])  # fmt: skip
        assert code == 2


class TestInject:
    """Faults injected into recordings."""

    def test_every_fault_changes_the_sound_deterministically(self) -> None:
        """Each fault and severity changes the samples, the same way for the same seed."""
        x = Machine(machine_id=2, sample_rate=RATE).normal(3.0, np.random.default_rng(0))
        for fault in FAULTS:
            for sev in SEVERITIES:
                y = inject(x, RATE, fault, sev, seed=4)
                assert y.shape == x.shape and y.dtype == np.float32
                assert np.max(np.abs(y - x)) > 1e-3, (fault, sev)
                np.testing.assert_array_equal(y, inject(x, RATE, fault, sev, seed=4))
        with pytest.raises(ValueError, match="unknown fault"):
            inject(x, RATE, "rust")

    def test_band_level_adds_its_decibels(self) -> None:
        """``band_level`` at severity 2 raises one band by about 6 dB and leaves the overall
        level within 6 dB."""
        x = np.random.default_rng(0).standard_normal(RATE * 4).astype(np.float32) * 0.1
        y = inject(x, RATE, "band_level", 2.0, seed=1)
        fx = np.abs(np.fft.rfft(x)) ** 2
        fy = np.abs(np.fft.rfft(y)) ** 2
        ratio_db = 10 * np.log10(np.convolve(fy, np.ones(400), "same") /
                                 np.convolve(fx, np.ones(400), "same"))  # fmt: skip
        assert 5.0 <= ratio_db.max() <= 7.0
        assert np.median(ratio_db) < 0.5


class TestRankingMetrics:
    """AUC and pAUC computed with numpy equal scikit-learn's."""

    def test_equal_to_sklearn(self) -> None:
        """On random scores with ties, both match ``roc_auc_score`` (pAUC: max_fpr 0.1)."""
        rng = np.random.default_rng(0)
        neg = np.round(rng.normal(0, 1, 200), 1)
        pos = np.round(rng.normal(1, 1, 50), 1)
        y = np.r_[np.zeros(200), np.ones(50)]
        s = np.r_[neg, pos]
        assert auc(neg, pos) == pytest.approx(roc_auc_score(y, s))
        assert pauc(neg, pos) == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))


def test_fitting_needs_no_torch_or_sklearn() -> None:
    """The kind fits, cross-fits and exports with numpy, scipy and onnx only: importing
    and running it loads neither torch nor scikit-learn (the device will fit it)."""
    code = (
        "import sys, numpy as np\n"
        "from asd_edge.learning import bandstat, crossfit, inject, fitting\n"
        "from training import bandfit\n"
        "x = np.random.default_rng(0).normal(-40, 1, (40, 30, 64))\n"
        "m = bandstat.fit(x, {'scorer': 'maha'})\n"
        "bandstat.to_onnx(m, 30, {})\n"
        "bad = [n for n in ('torch', 'sklearn', 'librosa') if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_real_recordings_parity_and_level(shared_data: Path) -> None:
    """On real MIMII pump recordings: every scorer's ONNX equals numpy, and the recorded
    level range puts the stop threshold more than 10 dB under the quietest normal window."""
    files = sorted((shared_data / "machines" / "pump" / "normal").glob("*.wav"))[:6]
    from training.windows import file_stream

    recs = [FEATURIZE.recording(p.name, file_stream(p, SPEC)) for p in files]
    x = np.concatenate([r.logmel for r in recs])
    groups = np.concatenate([np.full(len(r.logmel), i) for i, r in enumerate(recs)])
    for scorer in bandstat.SCORERS:
        model = bandstat.fit(x, {"scorer": scorer}, groups=groups)
        got_s, got_b = _session(bandstat.to_onnx(model, x.shape[1], {})).run(
            ["score", "bands"], {"logmel": x.astype(np.float32)}
        )
        ref_s, ref_b = model.score(x)
        np.testing.assert_allclose(got_s, ref_s, atol=1e-4, rtol=1e-3)
        np.testing.assert_allclose(got_b, ref_b, atol=1e-4, rtol=1e-3)
    levels = np.concatenate([r.levels_dbfs for r in recs])
    stats = bandstat.level_stats(levels)
    assert stats["stopped_below_dbfs"] < levels.min() - 10.0
