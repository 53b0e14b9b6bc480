"""The dense_ae and gmm kinds: the DCASE baseline's shape, and a GMM equal to scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.export import check_parity, to_onnx
from training.kinds import InputStats, get_kind
from training.kinds.gmm import GaussianMixtureScore, fit_pipeline, window_features


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
        pipeline = fit_pipeline(window_features(x, stats, features), params, seed=0)
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
        chosen = fit_pipeline(window_features(x, stats), params, 0).named_steps["gmm"]
        assert chosen.n_components >= 2
        pinned = fit_pipeline(window_features(x, stats), {**params, "n_components": 3}, 0)
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
