"""A kind's module to a self-describing ONNX model: export, check, parity, daemon load, save.

The export pins the opset, names the input after the contract (``logmel`` or
``waveform``) and the output ``score``, makes the batch axis dynamic, runs the ONNX
checker, compares onnxruntime with torch on real inputs (held-out windows), and
loads the result in the daemon's own ``Detector``. Only a model that passes all of
it is written, atomically; otherwise ``ExportError`` and no file. The contract's
metadata, versions and reproducible build times are ``asd_edge.learning.contract``'s
(the device makes models too).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from asd_edge.detector import Detector
from asd_edge.durable import write_atomic
from asd_edge.errors import ModelError
from asd_edge.learning.contract import ATOL, RTOL, spread_windows
from asd_edge.modelspec import METADATA_KEY
from asd_edge.onnxrt import ort

from .errors import ExportError

if TYPE_CHECKING:  # torch is imported where a torch module is exported: numpy kinds need none
    from .kinds.base import ScoreModel

__all__ = [
    "OPSET",
    "ExportReport",
    "check_parity",
    "export_model",
    "quantize_model",
    "read_metadata",
    "save_checked",
    "to_onnx",
    "update_metadata",
]

OPSET = 17


def to_onnx(module: ScoreModel, example: np.ndarray, input_name: str) -> onnx.ModelProto:
    """Export ``module`` (eval mode) with the contract's names, opset 17, a dynamic batch."""
    import torch

    module.eval()
    buf = io.BytesIO()
    x = torch.from_numpy(np.ascontiguousarray(example[:2], dtype=np.float32))
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one;
        # it is kept on purpose (pinned torch, opset 17, plain graphs).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # nn.MultiheadAttention's inference fast path is a fused kernel the exporter
        # cannot express; the regular path computes the same thing in plain ops.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module,
                    (x,),
                    buf,
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=[input_name],
                    output_names=["score"],
                    dynamic_axes={input_name: {0: "batch"}, "score": {0: "batch"}},
                    do_constant_folding=True,
                )
        except torch.onnx.OnnxExporterError as exc:
            raise ExportError(
                f"torch cannot export the model to ONNX opset {OPSET}: {exc}"
            ) from None
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    return onnx.load_from_string(buf.getvalue())


def _set_metadata(model: onnx.ModelProto, metadata: Mapping[str, Any]) -> None:
    text = json.dumps(dict(metadata), sort_keys=True, allow_nan=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = text
            return
    onnx.helper.set_model_props(
        model, {**{p.key: p.value for p in model.metadata_props}, METADATA_KEY: text}
    )


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``asd_edge`` metadata of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            data: dict[str, Any] = json.loads(prop.value)
            return data
    raise ExportError(f"{path}: no {METADATA_KEY} metadata")


def _session(blob: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])


def check_parity(
    module: ScoreModel,
    blob: bytes,
    inputs: np.ndarray,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> dict[str, Any]:
    """torch vs onnxruntime on real windows; ExportError when any differs beyond tolerance."""
    import torch

    if inputs.shape[0] == 0:
        raise ExportError("parity check needs real input windows; none were given")
    x = np.ascontiguousarray(spread_windows(inputs), dtype=np.float32)
    module.eval()
    with torch.no_grad():
        ref = np.concatenate(
            [module(torch.from_numpy(x[i : i + 64])).numpy() for i in range(0, x.shape[0], 64)]
        ).astype(np.float64)
    session = _session(blob)
    (got,) = session.run(["score"], {session.get_inputs()[0].name: x})
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    if got.shape != ref.shape:
        raise ExportError(f"ONNX gave {got.shape[0]} scores for {ref.shape[0]} windows")
    diff = np.abs(got - ref)
    allowed = atol + rtol * np.abs(ref)
    worst = int(np.argmax(diff - allowed))
    report = {
        "windows": int(x.shape[0]),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / np.maximum(np.abs(ref), 1e-12)).max()),
        "atol": atol,
        "rtol": rtol,
    }
    if not np.all(np.isfinite(got)) or diff[worst] > allowed[worst]:
        raise ExportError(
            f"ONNX disagrees with torch: window {worst}: onnx {got[worst]:.6g} vs torch "
            f"{ref[worst]:.6g} (|diff| {diff[worst]:.3g} > {atol:g} + {rtol:g}*|torch|)"
        )
    return report


@dataclass(frozen=True)
class ExportReport:
    """Where the model went and how well ONNX matched torch."""

    path: Path
    sha256: str
    parity: dict[str, Any]


def save_checked(model: onnx.ModelProto | bytes, path: Path) -> str:
    """Check, write atomically only once the daemon's Detector loads it; return its sha256."""
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the ONNX checker rejects the model: {exc}") from None
    blob = model.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check.onnx", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        try:
            Detector(tmp)
        except ModelError as exc:
            raise ExportError(
                f"the daemon would refuse the model: {exc.field}: {exc.problem}"
            ) from None
        write_atomic(path, blob, mode=0o644)  # 0644 whatever the umask, like the run records
    finally:
        Path(tmp).unlink(missing_ok=True)
    return hashlib.sha256(blob).hexdigest()


def export_model(
    module: ScoreModel,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any],
    parity_inputs: np.ndarray,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> ExportReport:
    """Export, check parity on ``parity_inputs`` (real windows) and save ``path`` atomically."""
    model = to_onnx(module, parity_inputs, str(metadata["input"]))
    _set_metadata(model, metadata)
    parity = check_parity(module, model.SerializeToString(), parity_inputs, atol=atol, rtol=rtol)
    target = Path(path)
    sha = save_checked(model, target)
    return ExportReport(target, sha, parity)


def update_metadata(path: str | os.PathLike[str], updates: Mapping[str, Any]) -> str:
    """Replace top-level metadata fields (threshold, calibration, ...) in place; return sha256."""
    target = Path(path)
    model = onnx.load(str(target))
    meta = read_metadata(target)
    meta.update(updates)
    _set_metadata(model, meta)
    return save_checked(model, target)


def quantize_model(
    path: str | os.PathLike[str], out: str | os.PathLike[str], metadata: Mapping[str, Any]
) -> str:
    """onnxruntime dynamic int8 quantisation of ``path`` into ``out``; return its sha256."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(out)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        raw = Path(tmp) / "int8.onnx"
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # its advice to pre-process goes to the root logger
        try:
            quantize_dynamic(str(path), str(raw), weight_type=QuantType.QInt8)
        except Exception as exc:  # onnxruntime.quantization raises untyped errors
            raise ExportError(f"int8 quantisation failed: {exc}") from None
        finally:
            logging.disable(previous)
        model = onnx.load(str(raw))
    _set_metadata(model, dict(metadata))
    return save_checked(model, target)
