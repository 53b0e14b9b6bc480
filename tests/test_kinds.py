"""The torch-trained detector kinds: dense_ae (the DCASE baseline's shape) and gmm (equal to
scikit-learn's) on synthetic log-mel windows; cnn_ae, lstm_ae, ocsvm and cnn_attention on
real inputs: log-mel and band-passed waveforms of synthetic machine sound, exported ONNX
run by onnxruntime."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from asd_edge.audiofile import read_audio, to_mono
from asd_edge.features import LogMel, LogMelParams, StreamingFilter, normalize_window
from training.export import check_parity, to_onnx
from training.kinds import InputStats, ScoreModel, get_kind
from training.kinds.base import read_params
from training.kinds.cnn_attention import WarmBatchNorm1d
from training.kinds.gmm import GaussianMixtureScore, window_features
from training.kinds.gmm import fit_pipeline as fit_gmm_pipeline
from training.kinds.ocsvm import band_features, fit_pipeline
from training.synth import Machine

RATE = 16000
LOGMEL = LogMel(LogMelParams(sample_rate=RATE))
GRADIENT_LOGMEL = ("cnn_ae", "lstm_ae")
NO_LABELS = torch.zeros(0)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train on one thread (the machine is shared; two threads were slower); restore after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frames_of(x: np.ndarray, size: int, hop: int) -> np.ndarray:
    """Windows of ``size`` samples every ``hop`` samples, ``[n, size]``."""
    return np.stack([x[i : i + size] for i in range(0, len(x) - size + 1, hop)])


def logmel(x: np.ndarray) -> np.ndarray:
    """Log-mel model input of 1 s windows every 0.5 s of a 16 kHz signal."""
    return LOGMEL(frames_of(x, RATE, RATE // 2))


@pytest.fixture(scope="module")
def sound() -> dict[str, np.ndarray]:
    """Log-mel windows [n, 30, 128] of one synthetic machine: normal training windows,
    held-out normal windows, and windows with a squeal or a bearing fault."""
    machine = Machine(machine_id=0, seed=0, sample_rate=RATE)
    rng = np.random.default_rng(7)
    return {
        "train": logmel(machine.normal(16.0, rng)),
        "normal": logmel(machine.normal(6.0, rng)),
        "squeal": logmel(machine.anomaly("squeal", 4.0, rng)),
        "bearing": logmel(machine.anomaly("bearing", 4.0, rng)),
    }


@pytest.fixture(scope="module")
def machines() -> dict[str, np.ndarray]:
    """Log-mel windows of four different synthetic machines (training and held out):
    normal sound with structure to learn, since one set of band statistics
    standardises them all."""
    rng = np.random.default_rng(11)
    voices = [Machine(machine_id=i, seed=0, sample_rate=RATE) for i in range(4)]
    return {
        "train": np.concatenate([logmel(m.normal(4.0, rng)) for m in voices]),
        "held_out": np.concatenate([logmel(m.normal(3.0, rng)) for m in voices]),
    }


def build(kind: str, x: np.ndarray, **params: object) -> ScoreModel:
    """An untrained model of a gradient kind for inputs like ``x`` (seeded)."""
    torch.manual_seed(0)
    info = get_kind(kind)
    assert info.build is not None
    return info.build(x.shape[1:], InputStats.of(x), params)


def train(
    model: ScoreModel, x: np.ndarray, y: np.ndarray, steps: int, batch: int = 16
) -> list[float]:
    """Adam (lr 1e-3) on seeded mini-batches; the loss of every step; eval mode after."""
    rng = np.random.default_rng(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    model.train()
    for _ in range(steps):
        idx = rng.choice(len(x), size=min(batch, len(x)), replace=False)
        loss = model.loss(torch.as_tensor(x[idx]), torch.as_tensor(y[idx]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def scores(model: ScoreModel, x: np.ndarray) -> np.ndarray:
    """Torch scores of ``x`` in eval mode."""
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def export(model: ScoreModel, x: np.ndarray, input_name: str, path: Path) -> ort.InferenceSession:
    """Export as ``asd-train`` does (opset 17, dynamic batch), run the ONNX checker on
    the file, and open it in onnxruntime (CPU, one thread)."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.as_tensor(x[:3]),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[input_name],
            output_names=["score"],
            dynamic_axes={input_name: {0: "batch"}, "score": {0: "batch"}},
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_onnx_matches(model: ScoreModel, x: np.ndarray, path: Path) -> None:
    """onnxruntime equals torch within atol 1e-4 + rtol 1e-3 at batch 1 and 7."""
    session = export(model, x, session_input(model, x), path)
    for batch in (1, 7):
        xb = np.ascontiguousarray(x[:batch])
        (got,) = session.run(["score"], {session.get_inputs()[0].name: xb})
        assert got.shape == (batch,) and got.dtype == np.float32
        np.testing.assert_allclose(got, scores(model, xb), atol=1e-4, rtol=1e-3)


def session_input(model: ScoreModel, x: np.ndarray) -> str:
    """The contract's input name for ``x``."""
    return "logmel" if x.ndim == 3 else "waveform"


class TestParams:
    def test_strings_take_the_defaults_types(self) -> None:
        """`--param` strings become the types of the defaults (int, float, bool)."""
        defaults = {"channels": 16, "nu": 0.1, "flag": False, "gamma": "scale"}
        got = read_params(defaults, {"channels": "8", "nu": "0.5", "flag": "true"})
        assert got == {"channels": 8, "nu": 0.5, "flag": True, "gamma": "scale"}

    def test_unknown_key_names_the_known_ones(self) -> None:
        """A parameter the kind lacks: ValueError naming it and the known ones."""
        with pytest.raises(ValueError, match=r"'chanels'.*bottleneck, channels, depth"):
            get_kind("cnn_ae").build(
                (30, 128), InputStats.of(np.zeros((1, 30, 128))), {"chanels": 8}
            )

    @pytest.mark.parametrize(
        ("kind", "params", "field"),
        [
            ("cnn_ae", {"depth": "2.5"}, "depth"),
            ("lstm_ae", {"hidden": 0}, "hidden"),
            ("cnn_attention", {"heads": 3}, "heads"),
            ("cnn_attention", {"dropout": 1.0}, "dropout"),
        ],
    )
    def test_bad_value_names_the_field(
        self, kind: str, params: dict[str, object], field: str
    ) -> None:
        """A value of the wrong type or range: ValueError naming the parameter."""
        shape = (16000,) if kind == "cnn_attention" else (30, 128)
        stats = InputStats.of(np.zeros((1, *shape), dtype=np.float32))
        build_fn = get_kind(kind).build
        assert build_fn is not None
        with pytest.raises(ValueError, match=f"parameter {field}"):
            build_fn(shape, stats, params)


def logmel_like(n: int, seed: int, shift_db: float = 0.0) -> np.ndarray:
    """Windows [n, 30, 128] of dB values with band structure and two operating modes."""
    rng = np.random.default_rng(seed)
    bands = -60.0 + 20.0 * np.cos(np.linspace(0, 6, 128))
    mode = rng.integers(0, 2, size=(n, 1, 1)) * 6.0
    noise = rng.normal(0.0, 2.0, size=(n, 30, 128))
    return (bands + mode + noise + shift_db).astype(np.float32)


class TestDenseAutoencoder:
    def test_dcase_baseline_layout(self) -> None:
        """640-128-128-128-128-8-128-128-128-128-640 dense layers, BatchNorm+ReLU on hidden ones."""
        info = get_kind("dense_ae")
        x = logmel_like(8, 0)
        model = info.build((30, 128), InputStats.of(x), info.defaults)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        sizes = [linears[0].in_features] + [m.out_features for m in linears]
        assert sizes == [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
        assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 9
        assert info.input == "logmel" and not info.supervised

    def test_score_is_mean_squared_error_of_stacked_frames(self) -> None:
        """The score is the MSE over the 26 stacked 5-frame vectors; the loss is its mean."""
        info = get_kind("dense_ae")
        x = logmel_like(4, 1)
        model = info.build((30, 128), InputStats.of(x), info.defaults).eval()
        xt = torch.from_numpy(x)
        stacked = model.stack(xt)
        z = (x - model.mean.numpy()) / model.std.numpy()
        assert stacked.shape == (4, 26, 640)
        # vector t holds frames t..t+4 one after another (DCASE's order)
        np.testing.assert_allclose(stacked[2, 7].numpy(), z[2, 7:12].reshape(-1), rtol=1e-6)
        with torch.no_grad():
            recon = model.decoder(model.encoder(stacked.reshape(-1, 640))).reshape(4, 26, 640)
            expected = ((recon - stacked) ** 2).mean(dim=(1, 2))
            np.testing.assert_allclose(model(xt).numpy(), expected.numpy(), rtol=1e-6)
            assert float(model.loss(xt, torch.zeros(4))) == pytest.approx(float(expected.mean()))


class TestGaussianMixture:
    @pytest.mark.parametrize(
        ("covariance", "features"), [("full", "mean"), ("diag", "mean"), ("full", "mean_std")]
    )
    def test_matches_sklearn_score_samples(self, covariance: str, features: str) -> None:
        """The torch module's score is -score_samples of the sklearn pipeline (1e-4 relative)."""
        x = logmel_like(200, 2)
        stats = InputStats.of(x)
        params = {**get_kind("gmm").defaults, "covariance": covariance}
        pipeline = fit_gmm_pipeline(window_features(x, stats, features), params, seed=0)
        module = GaussianMixtureScore(stats, pipeline, features).eval()
        test = np.concatenate([logmel_like(20, 3), logmel_like(20, 4, shift_db=4.0)])
        expected = -pipeline.score_samples(window_features(test, stats, features))
        with torch.no_grad():
            got = module(torch.from_numpy(test)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4)

    def test_bic_finds_the_operating_modes(self) -> None:
        """BIC picks more than one component for a machine with two modes; n_components pins it."""
        x = logmel_like(300, 5)
        stats = InputStats.of(x)
        params = dict(get_kind("gmm").defaults)
        chosen = fit_gmm_pipeline(window_features(x, stats), params, 0).named_steps["gmm"]
        assert chosen.n_components >= 2
        pinned = fit_gmm_pipeline(window_features(x, stats), {**params, "n_components": 3}, 0)
        assert pinned.named_steps["gmm"].n_components == 3

    def test_shifted_sound_scores_higher(self) -> None:
        """Windows 4 dB louder than anything trained on get a higher negative log-likelihood."""
        info = get_kind("gmm")
        x = logmel_like(200, 6)
        model = info.fit(x, InputStats.of(x), info.defaults, 0)
        with torch.no_grad():
            normal = model(torch.from_numpy(logmel_like(30, 7))).numpy()
            louder = model(torch.from_numpy(logmel_like(30, 7, shift_db=4.0))).numpy()
        assert louder.min() > normal.max()

    def test_exports_to_onnx_within_tolerance(self) -> None:
        """The fitted mixture runs in onnxruntime with the same scores as torch."""
        info = get_kind("gmm")
        x = logmel_like(120, 8)
        model = info.fit(x, InputStats.of(x), info.defaults, 0)
        onnx_model = to_onnx(model, x, "logmel")
        report = check_parity(model, onnx_model.SerializeToString(), logmel_like(40, 9))
        assert report["windows"] == 40 and report["max_rel_diff"] < 1e-5


@pytest.mark.parametrize("kind", GRADIENT_LOGMEL)
class TestLogMelAutoencoders:
    def test_one_finite_score_per_window(self, kind: str, sound: dict[str, np.ndarray]) -> None:
        """A batch of 5 windows gives 5 finite float32 scores, the same on every call."""
        model = build(kind, sound["train"]).eval()
        first, second = scores(model, sound["train"][:5]), scores(model, sound["train"][:5])
        assert first.shape == (5,) and first.dtype == np.float32
        assert np.all(np.isfinite(first)) and np.all(first >= 0)
        np.testing.assert_array_equal(first, second)

    @pytest.mark.parametrize("shape", [(13, 40), (62, 64)])
    def test_other_window_shapes(self, kind: str, shape: tuple[int, int]) -> None:
        """Other frame and band counts (not multiples of the strides) work as well."""
        x = np.random.default_rng(0).normal(-40, 5, size=(4, *shape)).astype(np.float32)
        model = build(kind, x).eval()
        assert scores(model, x).shape == (4,)

    def test_training_learns_the_normal_sound(
        self, kind: str, machines: dict[str, np.ndarray]
    ) -> None:
        """30 Adam steps on the normal windows of four machines lower the training loss
        and the scores of held-out normal windows of the same machines."""
        x, held_out = machines["train"], machines["held_out"]
        model = build(kind, x)
        before = scores(model, held_out).mean()
        losses = train(model, x, np.zeros(len(x), np.float32), steps=30)
        assert np.mean(losses[-3:]) < 0.7 * losses[0]
        assert scores(model, held_out).mean() < 0.7 * before

    def test_onnx_matches_torch(
        self, kind: str, sound: dict[str, np.ndarray], tmp_path: Path
    ) -> None:
        """The exported graph passes the checker and equals torch at batch 1 and 7."""
        x = sound["train"]
        model = build(kind, x)
        train(model, x, np.zeros(len(x), np.float32), steps=3)  # running stats not trivial
        assert_onnx_matches(
            model, np.concatenate([sound["squeal"], sound["normal"]]), tmp_path / "m.onnx"
        )

    def test_anomalies_score_above_normal(self, kind: str, sound: dict[str, np.ndarray]) -> None:
        """After a short fit on normal windows, every squeal and bearing window scores
        above every held-out normal window."""
        x = sound["train"]
        model = build(kind, x)
        train(model, x, np.zeros(len(x), np.float32), steps=20)
        normal = scores(model, sound["normal"])
        for anomaly in ("squeal", "bearing"):
            assert scores(model, sound[anomaly]).min() > normal.max(), anomaly


def fit_ocsvm(x: np.ndarray, seed: int = 0, **params: object) -> ScoreModel:
    """The ocsvm kind fitted on ``x``."""
    fit = get_kind("ocsvm").fit
    assert fit is not None
    return fit(x, InputStats.of(x), params, seed)


class TestOneClassSvm:
    def test_scores_equal_sklearn(self, sound: dict[str, np.ndarray]) -> None:
        """The torch module's score is scikit-learn's -decision_function (1e-4 relative)."""
        x = sound["train"]
        stats = InputStats.of(x)
        model = fit_ocsvm(x)
        pipeline = fit_pipeline(band_features(x, stats), {}, seed=0)
        parts = ("train", "normal", "squeal", "bearing")
        ref = {p: -pipeline.decision_function(band_features(sound[p], stats)) for p in parts}
        scale = max(np.abs(r).max() for r in ref.values())  # training windows score about 0
        for part in parts:
            got = scores(model, sound[part])
            assert got.shape == ref[part].shape
            np.testing.assert_allclose(got, ref[part], rtol=1e-4, atol=1e-4 * scale)

    def test_features_are_the_gmm_kinds(self, sound: dict[str, np.ndarray]) -> None:
        """Band mean and std per window, exactly as the gmm kind summarises a window."""
        x = sound["train"]
        stats = InputStats.of(x)
        np.testing.assert_allclose(
            band_features(sound["squeal"], stats),
            window_features(sound["squeal"], stats, "mean_std"),
            rtol=1e-5,
            atol=1e-5,
        )

    def test_many_windows_are_subsampled(self, sound: dict[str, np.ndarray]) -> None:
        """Beyond max_windows, a seeded subset of that size is fitted."""
        x = sound["train"]
        feats = band_features(x, InputStats.of(x))
        a = fit_pipeline(feats, {"max_windows": 12}, seed=1)
        b = fit_pipeline(feats, {"max_windows": "12"}, seed=1)
        c = fit_pipeline(feats, {"max_windows": 12}, seed=2)
        assert a.named_steps["scaler"].n_samples_seen_ == 12
        np.testing.assert_array_equal(a.decision_function(feats), b.decision_function(feats))
        assert not np.array_equal(a.decision_function(feats), c.decision_function(feats))

    @pytest.mark.parametrize(
        ("params", "field"),
        [({"nu": 0}, "nu"), ({"gamma": "wide"}, "gamma"), ({"pca_components": -1}, "pca")],
    )
    def test_bad_value_names_the_field(
        self, sound: dict[str, np.ndarray], params: dict[str, object], field: str
    ) -> None:
        """A bad hyper-parameter: ValueError naming it."""
        with pytest.raises(ValueError, match=f"parameter {field}"):
            fit_ocsvm(sound["train"], **params)

    def test_onnx_matches_torch(self, sound: dict[str, np.ndarray], tmp_path: Path) -> None:
        """The exported graph passes the checker and equals torch at batch 1 and 7."""
        model = fit_ocsvm(sound["train"])
        x = np.concatenate([sound["bearing"][:3], sound["normal"]])
        assert_onnx_matches(model, x, tmp_path / "ocsvm.onnx")

    def test_anomalies_score_above_normal(self, sound: dict[str, np.ndarray]) -> None:
        """Fitted on normal windows, every squeal and bearing window scores above every
        held-out normal window."""
        model = fit_ocsvm(sound["train"])
        normal = scores(model, sound["normal"])
        for anomaly in ("squeal", "bearing"):
            assert scores(model, sound[anomaly]).min() > normal.max(), anomaly

    def test_pump_recordings(self, shared_data: Path) -> None:
        """Real MIMII pump clips: fitted on every other normal clip, the windows of the
        other normal clips score below those of the anomalous clips (AUC > 0.7)."""
        pump = shared_data / "machines" / "pump"

        def windows(paths: list[Path]) -> np.ndarray:
            out = []
            for path in paths:
                audio = read_audio(path)
                assert audio.sample_rate == RATE, path
                out.append(logmel(to_mono(audio.samples, None)))
            return np.concatenate(out)

        normal = sorted((pump / "normal").glob("*.wav"))
        model = fit_ocsvm(windows(normal[::2]))
        held_out = scores(model, windows(normal[1::2]))
        anomalous = scores(model, windows(sorted((pump / "anomaly").glob("*.wav"))))
        labels = np.r_[np.zeros(len(held_out)), np.ones(len(anomalous))]
        auc = roc_auc_score(labels, np.r_[held_out, anomalous])
        print(f"ocsvm on pump windows: AUC {auc:.3f}")
        assert auc > 0.7


WAVE_RATE = 8000
"""The classifier's training test runs at 8 kHz (1 s = 8000 samples) to stay fast."""


def waveforms(x: np.ndarray, rate: int) -> np.ndarray:
    """1 s windows every 0.5 s, pre-filtered and normalised as the daemon does for cnn_attention."""
    info = get_kind("cnn_attention")
    assert info.prefilter is not None
    filtered = StreamingFilter(info.prefilter.sos(rate))(x)
    return normalize_window(frames_of(filtered, rate, rate // 2), info.normalize)


@pytest.fixture(scope="module")
def labelled() -> dict[str, np.ndarray]:
    """Waveform windows at 8 kHz with labels: normal, squeal and bearing faults; a
    training part and a held-out part recorded with other random draws."""
    machine = Machine(machine_id=1, seed=0, sample_rate=WAVE_RATE)
    out: dict[str, np.ndarray] = {}
    for part, seed in (("train", 1), ("test", 2)):
        rng = np.random.default_rng(seed)
        normal = waveforms(machine.normal(16.0, rng), WAVE_RATE)
        faults = [waveforms(machine.anomaly(k, 8.0, rng), WAVE_RATE) for k in ("squeal", "bearing")]
        out[part] = np.concatenate([normal, *faults])
        out[f"{part}_y"] = np.r_[np.zeros(len(normal)), np.ones(sum(map(len, faults)))].astype(
            np.float32
        )
    return out


class TestCnnAttention:
    def test_probabilities_per_window(self, labelled: dict[str, np.ndarray]) -> None:
        """One probability in (0, 1) per window, the same on every call in eval mode."""
        model = build("cnn_attention", labelled["train"]).eval()
        first = scores(model, labelled["train"][:5])
        assert first.shape == (5,) and np.all((first > 0) & (first < 1))
        np.testing.assert_array_equal(first, scores(model, labelled["train"][:5]))

    def test_training_lowers_the_loss(self, labelled: dict[str, np.ndarray]) -> None:
        """A few Adam steps on labelled windows lower the cross-entropy."""
        x, y = labelled["train"], labelled["train_y"]
        losses = train(build("cnn_attention", x), x, y, steps=12)
        assert np.mean(losses[-3:]) < 0.7 * losses[0]

    def test_pos_weight_weighs_the_anomalies(self, labelled: dict[str, np.ndarray]) -> None:
        """pos_weight=4 makes the loss of anomalous windows 4 times as large; normal ones
        unchanged."""
        x, y = labelled["train"], labelled["train_y"]
        plain = build("cnn_attention", x, dropout=0.0).eval()
        weighted = build("cnn_attention", x, dropout=0.0, pos_weight="4").eval()
        with torch.no_grad():
            for label, factor in ((1.0, 4.0), (0.0, 1.0)):
                xb = torch.as_tensor(x[y == label][:6])
                yb = torch.full((len(xb),), label)
                assert float(weighted.loss(xb, yb)) == pytest.approx(
                    factor * float(plain.loss(xb, yb))
                )

    def test_onnx_matches_torch(self, tmp_path: Path) -> None:
        """At the default 16 kHz, 1 s window: the checker passes and onnxruntime equals
        torch at batch 1 and 7."""
        machine = Machine(machine_id=0, seed=0, sample_rate=RATE)
        rng = np.random.default_rng(3)
        x = np.concatenate(
            [
                waveforms(machine.normal(3.0, rng), RATE),
                waveforms(machine.anomaly("impact", 2.0, rng), RATE),
            ]
        )
        assert x.shape == (8, RATE)
        model = build("cnn_attention", x)
        train(model, x, np.r_[np.zeros(5), np.ones(3)].astype(np.float32), steps=2, batch=8)
        assert_onnx_matches(model, x, tmp_path / "cnn_attention.onnx")

    def test_separates_held_out_windows(self, labelled: dict[str, np.ndarray]) -> None:
        """After a short training, held-out windows are classified (probability > 0.5)
        far better than chance, and anomalies rank above normal windows."""
        x, y = labelled["train"], labelled["train_y"]
        model = build("cnn_attention", x)
        train(model, x, y, steps=40)
        p = scores(model, labelled["test"])
        accuracy = float(np.mean((p > 0.5) == (labelled["test_y"] == 1)))
        auc = roc_auc_score(labelled["test_y"], p)
        print(f"cnn_attention held out: accuracy {accuracy:.3f}, AUC {auc:.3f}")
        assert accuracy > 0.8 and auc > 0.9

    def test_running_statistics_start_as_an_average(self) -> None:
        """The conv blocks' BatchNorm starts its running statistics as the plain average
        of the first batches (not 90 % of a made-up 0/1), so a short training is
        already normalised right in eval mode, as the daemon runs it."""
        norm = WarmBatchNorm1d(2)
        batches = [torch.randn(8, 2, 50) * s + m for s, m in ((1.0, 3.0), (2.0, -1.0))]
        norm.train()
        for batch in batches:
            norm(batch)
        expected = torch.stack([b.mean(dim=(0, 2)) for b in batches]).mean(dim=0)
        torch.testing.assert_close(norm.running_mean, expected)
