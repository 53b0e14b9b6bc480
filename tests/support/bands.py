"""Tiny real ONNX models with a ``bands`` output, built with ``onnx.helper`` for the tests.

The graph: the log-mel window ``[batch, frames, n_mels]`` is averaged over its frames,
groups of ``mels_per_band`` adjacent mel bands are averaged into one band, the normal
level is subtracted (``bands``, dB from normal), and the score is the largest
``|bands / spread_db|``: how many normal spreads the furthest band is off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from asd_edge.detector import Detector
from asd_edge.features import LogMelParams, hz_to_mel, mel_to_hz
from asd_edge.meters import window_level_dbfs
from asd_edge.modelspec import METADATA_KEY, SCHEMA_VERSION
from training.level import save_model

__all__ = [
    "BandsModel",
    "band_edges_hz",
    "boost_band",
    "build_bands_model",
    "calibrated_bands_model",
    "room_tone",
    "window_levels",
    "windows_of",
]

RATE = 16000
N_FFT = 1024
HOP = 512
N_MELS = 32
FMIN = 50.0
FMAX = 8000.0


def band_edges_hz(mels_per_band: int = 4, n_mels: int = N_MELS) -> list[list[float]]:
    """``[lo, hi]`` of each band: from the first mel filter's lower foot to the last
    one's upper foot (neighbouring bands overlap by half a mel filter)."""
    points = mel_to_hz(np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), n_mels + 2))
    return [
        [round(float(points[i]), 1), round(float(points[i + mels_per_band + 1]), 1)]
        for i in range(0, n_mels, mels_per_band)
    ]


def build_bands_model(
    *,
    normal_db: np.ndarray | None = None,
    spread_db: np.ndarray | None = None,
    threshold: float = 5.0,
    mels_per_band: int = 4,
    level: Mapping[str, Any] | None = None,
    metadata_overrides: Mapping[str, Any] | None = None,
    band_outputs: int | str | None = None,
    bands_output: bool = True,
    runtime_width: int | None = None,
) -> onnx.ModelProto:
    """The model (16 kHz, 1 s windows, 32 mels, ``32 / mels_per_band`` bands).

    ``level``: the ``level`` metadata to add. ``metadata_overrides``: top-level metadata
    fields replaced (None deletes). ``band_outputs``: the declared width of the
    ``bands`` output (default the real one; a name for a dynamic width).
    ``bands_output``: False leaves the output out of the graph (the metadata still
    describes it). ``runtime_width``: the
    ``bands`` output is cut to this many columns by a width computed from the input's
    values, which no shape inference can foresee.
    """
    n_bands = N_MELS // mels_per_band
    normal = np.zeros(n_bands) if normal_db is None else np.asarray(normal_db)
    spread = np.ones(n_bands) if spread_db is None else np.asarray(spread_db)
    params = LogMelParams(RATE, N_FFT, HOP, N_MELS, FMIN, FMAX)
    n_frames = params.n_frames(RATE)
    group = np.zeros((N_MELS, n_bands), np.float32)
    for b in range(n_bands):
        group[b * mels_per_band : (b + 1) * mels_per_band, b] = 1.0 / mels_per_band
    inits = [
        numpy_helper.from_array(group, "group"),
        numpy_helper.from_array(normal.astype(np.float32), "normal"),
        numpy_helper.from_array(spread.astype(np.float32), "spread"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["logmel"], ["mel_mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mel_mean", "group"], ["band_db"]),
        helper.make_node("Sub", ["band_db", "normal"], ["deltas"]),
        helper.make_node("Div", ["deltas", "spread"], ["z"]),
        helper.make_node("Abs", ["z"], ["abs_z"]),
        helper.make_node("ReduceMax", ["abs_z"], ["score"], axes=[1], keepdims=0),
    ]
    if runtime_width is None:
        nodes.append(helper.make_node("Identity", ["deltas"], ["bands"]))
    else:  # width = runtime_width * (min(logmel) > -1e9): always runtime_width, known late
        inits += [
            numpy_helper.from_array(np.array(-1e9, np.float32), "very_low"),
            numpy_helper.from_array(np.array([runtime_width], np.int64), "width"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ]
        nodes += [
            helper.make_node("ReduceMin", ["logmel"], ["lowest"], keepdims=0),
            helper.make_node("Greater", ["lowest", "very_low"], ["always"]),
            helper.make_node("Cast", ["always"], ["one"], to=TensorProto.INT64),
            helper.make_node("Mul", ["width", "one"], ["end"]),
            helper.make_node("Slice", ["deltas", "zero", "end", "axis1"], ["bands"]),
        ]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])]
    if bands_output:
        width = n_bands if band_outputs is None else band_outputs
        outputs.append(helper.make_tensor_value_info("bands", TensorProto.FLOAT, ["batch", width]))
    graph = helper.make_graph(
        nodes,
        "bands",
        [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, ["batch", n_frames, N_MELS])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "name": "bands-test",
        "version": "1",
        "kind": "bands_test",
        "sample_rate": RATE,
        "window_s": 1.0,
        "input": "logmel",
        "features": {
            "n_fft": N_FFT,
            "hop_length": HOP,
            "n_mels": N_MELS,
            "fmin": FMIN,
            "fmax": FMAX,
            "power": 2.0,
            "log": "db",
        },
        "threshold": threshold,
        "bands": {
            "unit": "dB",
            "edges_hz": band_edges_hz(mels_per_band),
            "spread_db": [round(float(s), 3) for s in spread],
        },
    }
    if level is not None:
        meta["level"] = dict(level)
    for key, value in (metadata_overrides or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.checker.check_model(model, full_check=True)
    return model


class BandsModel:
    """A bands model calibrated on normal audio, saved, with what the tests need of it."""

    def __init__(self, path: Path, normal_db: np.ndarray, spread_db: np.ndarray) -> None:
        self.path = path
        self.normal_db = normal_db
        self.spread_db = spread_db
        self.edges_hz = band_edges_hz()

    def core_hz(self, band: int) -> tuple[float, float]:
        """The part of ``band`` no neighbour's mel filters reach: raising the sound there
        raises this band only."""
        previous_hi = self.edges_hz[band - 1][1] if band > 0 else self.edges_hz[band][0]
        next_lo = self.edges_hz[band + 1][0] if band + 1 < len(self.edges_hz) else FMAX
        return previous_hi, next_lo


def calibrated_bands_model(
    path: Path,
    normal: np.ndarray,
    *,
    threshold: float = 5.0,
    min_spread_db: float = 0.5,
    level: Mapping[str, Any] | None = None,
) -> BandsModel:
    """A bands model whose normal level and spread per band are those of ``normal``
    (16 kHz audio, 1 s windows every 0.5 s): median and 1.4826 × MAD, at least
    ``min_spread_db``."""
    raw = save_model(build_bands_model(), path.with_name(path.stem + "-raw.onnx"))
    _, bands = Detector(raw).score_bands(windows_of(normal))
    assert bands is not None
    median = np.median(bands, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(bands - median), axis=0), min_spread_db)
    model = build_bands_model(normal_db=median, spread_db=spread, threshold=threshold, level=level)
    return BandsModel(save_model(model, path), median, spread)


def windows_of(audio: np.ndarray) -> np.ndarray:
    """1 s windows every 0.5 s, as a monitor with the default hop scores them."""
    return np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(audio, RATE)[:: RATE // 2])


def window_levels(audio: np.ndarray) -> np.ndarray:
    """``health.window_level_dbfs`` of each window of ``audio`` (what training would use)."""
    return window_level_dbfs(windows_of(audio))


def room_tone(seconds: float, rms: float, seed: int = 1) -> np.ndarray:
    """Quiet broadband noise: the room with the machine stopped."""
    rng = np.random.default_rng(seed)
    return (rms * rng.standard_normal(round(seconds * RATE))).astype(np.float32)


def boost_band(
    audio: np.ndarray, band_hz: tuple[float, float], db: float, span_s: tuple[float, float]
) -> np.ndarray:
    """``audio`` with the frequencies in ``band_hz`` raised by ``db`` during ``span_s``."""
    spectrum = np.fft.rfft(audio)
    freqs = np.fft.rfftfreq(audio.size, 1.0 / RATE)
    inside = (freqs >= band_hz[0]) & (freqs < band_hz[1])
    band = np.fft.irfft(np.where(inside, spectrum, 0.0), audio.size)
    gate = np.zeros(audio.size)
    gate[round(span_s[0] * RATE) : round(span_s[1] * RATE)] = 1.0
    return (audio + (10.0 ** (db / 20.0) - 1.0) * band * gate).astype(np.float32)
