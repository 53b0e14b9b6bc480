"""The ``level`` detector: peak band level in dBFS, an ONNX model built without training.

It is the simplest honest detector: the score of a window is the loudest frame's
energy in a frequency band, in dB relative to a full-scale sine, and the threshold
is a level you choose. It needs no recordings, so it is what the default
configuration runs until you train a model of your machine's normal sound; it is
also how the tests make small real models that follow the contract.

    python -m training.level --out models/level.onnx --threshold-dbfs -20
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from asd_edge.features import LogMel, LogMelParams
from asd_edge.modelspec import METADATA_KEY, SCHEMA_VERSION

__all__ = ["build_level_model", "build_waveform_level_model", "main", "save_model"]

OPSET = 17
LN10 = math.log(10.0)


def _full_scale_band_db(params: LogMelParams, window_samples: int, freq_hz: float) -> float:
    """Band level (dB, fixed reference) of a full-scale sine: the 0 dBFS point."""
    t = np.arange(window_samples) / params.sample_rate
    frames = LogMel(params)(np.sin(2 * np.pi * freq_hz * t).astype(np.float32))
    power = np.sum(10.0 ** (frames.astype(np.float64) / 10.0), axis=-1)
    return float(10.0 * np.log10(np.median(power)))


def _metadata(base: dict[str, Any], overrides: Mapping[str, Any] | None) -> str:
    meta = dict(base)
    for key, value in (overrides or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return json.dumps(meta, sort_keys=True)


def _assemble(
    *,
    name: str,
    version: str,
    sample_rate: int,
    window_s: float,
    graph_input: onnx.ValueInfoProto,
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    metadata: dict[str, Any],
    overrides: Mapping[str, Any] | None,
) -> onnx.ModelProto:
    """A checked ONNX model with one ``score[batch]`` output and the contract's metadata."""
    graph = helper.make_graph(
        nodes,
        name,
        [graph_input],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="asd-edge"
    )
    model.ir_version = 8
    meta = {
        "schema": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "kind": "level",
        "sample_rate": sample_rate,
        "window_s": window_s,
        **metadata,
    }
    helper.set_model_props(model, {METADATA_KEY: _metadata(meta, overrides)})
    onnx.checker.check_model(model, full_check=True)
    return model


def build_level_model(
    *,
    sample_rate: int = 16000,
    window_s: float = 1.0,
    n_fft: int = 1024,
    hop_length: int = 512,
    n_mels: int = 64,
    fmin: float = 50.0,
    fmax: float | None = None,
    threshold_dbfs: float = -20.0,
    name: str = "level",
    version: str = "1",
    metadata_overrides: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """A log-mel model whose score is the loudest frame's band level in dBFS.

    ``metadata_overrides`` replaces top-level metadata fields (None deletes one),
    for tests of the daemon's checks.
    """
    params = LogMelParams(sample_rate, n_fft, hop_length, n_mels, fmin, fmax)
    window_samples = round(window_s * sample_rate)
    n_frames = params.n_frames(window_samples)
    ref_db = _full_scale_band_db(params, window_samples, freq_hz=1000.0)
    inits = [
        numpy_helper.from_array(np.array(LN10 / 10.0, np.float32), "db_to_ln"),
        numpy_helper.from_array(np.array(10.0 / LN10, np.float32), "ln_to_db"),
        numpy_helper.from_array(np.array(ref_db, np.float32), "ref_db"),
        numpy_helper.from_array(np.array([2], np.int64), "mel_axis"),
    ]
    nodes = [
        helper.make_node("Mul", ["logmel", "db_to_ln"], ["ln_power"]),
        helper.make_node("Exp", ["ln_power"], ["power"]),
        helper.make_node("ReduceSum", ["power", "mel_axis"], ["band_power"], keepdims=0),
        helper.make_node("Log", ["band_power"], ["ln_band"]),
        helper.make_node("Mul", ["ln_band", "ln_to_db"], ["band_db"]),
        helper.make_node("ReduceMax", ["band_db"], ["peak_db"], axes=[1], keepdims=0),
        helper.make_node("Sub", ["peak_db", "ref_db"], ["score"]),
    ]
    return _assemble(
        name=name,
        version=version,
        sample_rate=sample_rate,
        window_s=window_s,
        graph_input=helper.make_tensor_value_info(
            "logmel", TensorProto.FLOAT, ["batch", n_frames, n_mels]
        ),
        nodes=nodes,
        initializers=inits,
        metadata={
            "input": "logmel",
            "features": {
                "n_fft": n_fft,
                "hop_length": hop_length,
                "n_mels": n_mels,
                "fmin": fmin,
                "fmax": params.fmax_hz,
                "power": 2.0,
                "log": "db",
                "frames": 1,
            },
            "threshold": threshold_dbfs,
            "calibration": {"method": "fixed", "unit": "dBFS (peak frame band level)"},
        },
        overrides=metadata_overrides,
    )


def build_waveform_level_model(
    *,
    sample_rate: int = 16000,
    window_s: float = 1.0,
    threshold_dbfs: float = -20.0,
    prefilter: Mapping[str, Any] | None = None,
    name: str = "level-waveform",
    version: str = "1",
    metadata_overrides: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """A waveform model whose score is the window's RMS level in dBFS (sine = 0 dBFS)."""
    window_samples = round(window_s * sample_rate)
    inits = [
        numpy_helper.from_array(np.array(1e-10, np.float32), "floor"),
        numpy_helper.from_array(np.array(10.0 / LN10, np.float32), "ln_to_db"),
        numpy_helper.from_array(np.array(10.0 * math.log10(0.5), np.float32), "ref_db"),
    ]
    nodes = [
        helper.make_node("Mul", ["waveform", "waveform"], ["square"]),
        helper.make_node("ReduceMean", ["square"], ["mean_square"], axes=[1], keepdims=0),
        helper.make_node("Max", ["mean_square", "floor"], ["clipped"]),
        helper.make_node("Log", ["clipped"], ["ln_power"]),
        helper.make_node("Mul", ["ln_power", "ln_to_db"], ["power_db"]),
        helper.make_node("Sub", ["power_db", "ref_db"], ["score"]),
    ]
    metadata: dict[str, Any] = {
        "input": "waveform",
        "normalize": "none",
        "threshold": threshold_dbfs,
        "calibration": {"method": "fixed", "unit": "dBFS (window RMS)"},
    }
    if prefilter is not None:
        metadata["prefilter"] = dict(prefilter)
    return _assemble(
        name=name,
        version=version,
        sample_rate=sample_rate,
        window_s=window_s,
        graph_input=helper.make_tensor_value_info(
            "waveform", TensorProto.FLOAT, ["batch", window_samples]
        ),
        nodes=nodes,
        initializers=inits,
        metadata=metadata,
        overrides=metadata_overrides,
    )


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (creating the folder); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the level model."""
    parser = argparse.ArgumentParser(
        prog="python -m training.level",
        description="Build the 'level' detector: peak band level in dBFS against a fixed "
        "threshold. No training data needed.",
    )
    parser.add_argument("--out", required=True, type=Path, help="where to write the .onnx")
    parser.add_argument(
        "--threshold-dbfs",
        type=float,
        default=-20.0,
        help="alert above this band level (default: %(default)s dBFS)",
    )
    parser.add_argument("--sample-rate", type=int, default=16000, help="Hz (default: %(default)s)")
    parser.add_argument(
        "--fmin", type=float, default=50.0, help="band low edge, Hz (default: %(default)s)"
    )
    parser.add_argument(
        "--fmax", type=float, default=None, help="band high edge, Hz (default: Nyquist)"
    )
    parser.add_argument("--name", default="level", help="model name (default: %(default)s)")
    args = parser.parse_args(argv)
    model = build_level_model(
        sample_rate=args.sample_rate,
        fmin=args.fmin,
        fmax=args.fmax,
        threshold_dbfs=args.threshold_dbfs,
        name=args.name,
    )
    print(save_model(model, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
