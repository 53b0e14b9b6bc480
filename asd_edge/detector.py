"""An ONNX anomaly detector: load, check against the model contract, score windows."""

from __future__ import annotations

import hashlib
import math
import os
from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt

from .config import PUSH_MAX_MB
from .durable import read_regular
from .errors import FileRejected, ModelError
from .features import LogMel, normalize_window
from .modelspec import ModelSpec, parse_model_spec
from .onnxrt import ort

__all__ = ["MODEL_MAX_BYTES", "Detector", "unreadable_model"]

FloatArray = npt.NDArray[np.float32]

MODEL_MAX_BYTES: Final = math.ceil(PUSH_MAX_MB * 1e6)
"""The largest model file loaded (32,000,000 bytes): the largest a push may carry
(``push.max_mb`` at its most), so any model the device may run can be pushed, and one
that could not is refused unread, wherever it is (the config's file, the store)."""


def unreadable_model(path: str, exc: OSError) -> ModelError:
    """The ModelError (field ``file``) for a model file that cannot be read, or that was
    refused unread (``FileRejected``: not a regular file, or over ``MODEL_MAX_BYTES``)."""
    if isinstance(exc, FileRejected):
        return ModelError(path, "file", exc.problem)
    return ModelError(path, "file", f"cannot read ({exc.strerror or exc})")


class Detector:
    """One model in one onnxruntime session (CPU, explicit thread counts).

    Everything that can be checked is checked at load time, so a bad model is a
    clear ``ModelError`` (file and field) before the first tick: the metadata, the
    input and output names, ranks and fixed sizes, and a test inference on a
    silent window. The outputs are ``score`` and, optionally, ``bands`` (with its
    ``bands`` metadata: ``asd_edge.modelspec``). A path that is not a regular file or
    holds more than ``MODEL_MAX_BYTES`` is refused before it is read.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        self.path = str(path)
        try:
            blob = read_regular(path, MODEL_MAX_BYTES)
        except OSError as exc:
            raise unreadable_model(self.path, exc) from None
        self.sha256 = hashlib.sha256(blob).hexdigest()
        self.loaded_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        """When this model was loaded (ISO 8601 UTC)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                blob, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(self.path, "file", f"not a loadable ONNX model ({exc})") from None
        meta = self._session.get_modelmeta().custom_metadata_map
        self.spec: ModelSpec = parse_model_spec(self.path, meta)
        self._logmel = LogMel(self.spec.features) if self.spec.features else None
        self._input_name = self._check_io()
        self._outputs = ["score", "bands"] if self.spec.bands is not None else ["score"]
        self.score_bands(np.zeros((1, self.spec.window_samples), dtype=np.float32))

    def _check_io(self) -> str:
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(self.path, "graph.inputs", f"expected 1 input, found {len(inputs)}")
        tensor = inputs[0]
        if tensor.type != "tensor(float)":
            raise ModelError(
                self.path, "graph.inputs[0].type", f"expected float32, got {tensor.type}"
            )
        spec = self.spec
        if spec.input == "logmel":
            want: list[int | None] = [
                None,
                spec.n_frames,
                spec.features.n_mels if spec.features else 0,
            ]
            layout = "[batch, n_frames, n_mels]"
        else:
            want = [None, spec.window_samples]
            layout = "[batch, window_samples]"
        shape = list(tensor.shape)
        if len(shape) != len(want):
            raise ModelError(
                self.path, "graph.inputs[0].shape", f"expected {layout} = {want}, got {shape}"
            )
        for axis, (got, expected) in enumerate(zip(shape, want, strict=True)):
            if expected is not None and isinstance(got, int) and got != expected:
                raise ModelError(
                    self.path,
                    f"graph.inputs[0].shape[{axis}]",
                    f"expected {expected} for {layout} from the metadata, got {got}",
                )
        self._check_outputs(outputs)
        return str(tensor.name)

    def _check_outputs(self, outputs: list[ort.NodeArg]) -> None:
        """``score[batch]``, and ``bands[batch, n_bands]`` exactly when the metadata has
        ``bands``."""
        names = [o.name for o in outputs]
        if sorted(names) not in (["score"], ["bands", "score"]):
            raise ModelError(
                self.path,
                "graph.outputs",
                f"expected an output 'score' and optionally 'bands', got {names}",
            )
        index = {name: i for i, name in enumerate(names)}
        score = outputs[index["score"]]
        if len(score.shape) != 1:
            raise ModelError(
                self.path,
                f"graph.outputs[{index['score']}].shape",
                f"expected score[batch], got {score.shape}",
            )
        spec = self.spec.bands
        if "bands" not in index:
            if spec is not None:
                raise ModelError(
                    self.path,
                    "graph.outputs",
                    f"metadata.bands describes a 'bands' output the graph does not have "
                    f"(outputs: {names})",
                )
            return
        if spec is None:
            raise ModelError(
                self.path, "metadata.bands", "required field is missing: the graph has 'bands'"
            )
        at = index["bands"]
        shape = list(outputs[at].shape)
        if len(shape) != 2:
            raise ModelError(
                self.path,
                f"graph.outputs[{at}].shape",
                f"expected bands[batch, n_bands], got {shape}",
            )
        if isinstance(shape[1], int) and shape[1] != spec.n_bands:
            raise ModelError(
                self.path,
                f"graph.outputs[{at}].shape[1]",
                f"expected {spec.n_bands} bands (metadata.bands.edges_hz), got {shape[1]}",
            )

    @property
    def threshold(self) -> float:
        """The model's calibrated threshold."""
        return self.spec.threshold

    def model_input(self, windows: npt.ArrayLike) -> FloatArray:
        """What the graph takes for a batch of windows ``[batch, window_samples]``."""
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if self._logmel is not None:
            return self._logmel(x)
        return normalize_window(x, self.spec.normalize)

    def score(self, windows: npt.ArrayLike) -> FloatArray:
        """Anomaly scores of a batch of windows at the model's rate (one per window)."""
        return self.score_bands(windows)[0]

    def score_bands(self, windows: npt.ArrayLike) -> tuple[FloatArray, FloatArray | None]:
        """Scores ``[batch]`` and, for a model with a ``bands`` output, the band deviations
        ``[batch, n_bands]`` in dB (None otherwise), from one inference."""
        x = self.model_input(windows)
        try:
            outputs = self._session.run(self._outputs, {self._input_name: x})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(self.path, "graph", f"inference failed ({exc})") from None
        out = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        if out.shape[0] != x.shape[0]:
            raise ModelError(
                self.path, "graph.outputs.score", f"{out.shape[0]} scores for {x.shape[0]} windows"
            )
        if len(outputs) == 1:
            return out, None
        bands = np.asarray(outputs[1], dtype=np.float32)
        assert self.spec.bands is not None
        want = (x.shape[0], self.spec.bands.n_bands)
        if bands.shape != want:
            raise ModelError(
                self.path,
                "graph.outputs.bands",
                f"expected shape {list(want)} (windows, metadata.bands), got {list(bands.shape)}",
            )
        return out, bands
