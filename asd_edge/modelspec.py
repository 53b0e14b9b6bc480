"""The model contract: the ``asd_edge`` metadata an ONNX model carries, parsed and checked,
and the evidence its optional ``bands`` output gives on an event.

Besides the required fields (see ``parse_model_spec``), a model may carry two optional
parts; a model without them works as before:

- ``bands``: the graph has a second output ``bands``, ``float32[batch, n_bands]``, the
  signed deviation in dB of each band's level in the window from its normal level, and
  the metadata describes the columns::

      "bands": {"unit": "dB", "edges_hz": [[lo, hi], ...], "spread_db": [s1, ...]}

  (``edges_hz``: one ``[lo, hi]`` per band, ``0 <= lo < hi <= Nyquist``, both edges
  strictly increasing from band to band; ``spread_db``: the normal spread, a robust
  standard deviation > 0, of each band's level). The daemon turns the peak window's
  bands into ``evidence`` on events (``band_evidence`` below). The output and the
  metadata come together or not at all.
- ``level``: the level range of the normal recordings, from which a monitor tells a
  stopped machine from an anomaly (``asd_edge.machine``)::

      "level": {"unit": "dBFS", "measure": "window_mean_square",
                "p01": -41.2, "p50": -35.0, "p99": -30.1, "stopped_below_dbfs": -53.2}

  A window's level is ``asd_edge.meters.window_level_dbfs`` of the window as the
  monitor hands it to the detector: at the model's rate, after the model's streaming
  pre-filter if it names one (as training's windows are), before any normalisation.
  Only ``stopped_below_dbfs`` is required; the percentiles are informative, must be
  ordered, and ``stopped_below_dbfs`` must lie below the lowest one given.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from .errors import ModelError
from .features import LogMelParams, NormalizeMethod, PrefilterSpec

__all__ = [
    "EVIDENCE_MAX_BANDS",
    "EVIDENCE_MIN_Z",
    "MAX_BANDS",
    "METADATA_KEY",
    "SCHEMA_VERSION",
    "BandsSpec",
    "LevelSpec",
    "ModelSpec",
    "band_evidence",
    "parse_model_spec",
]

METADATA_KEY = "asd_edge"
"""The ``metadata_props`` key that holds the contract's JSON."""
SCHEMA_VERSION = 1
"""The metadata schema this daemon serves."""

MIN_RATE_HZ = 8000
MAX_RATE_HZ = 192_000
MAX_WINDOW_S = 30.0
MAX_BANDS = 1024
"""Most columns a ``bands`` output may have."""
MIN_LEVEL_DBFS = -200.0
"""Lowest window level (``meters.DB_FLOOR``, digital silence)."""


@dataclass(frozen=True, slots=True)
class BandsSpec:
    """The optional ``bands`` output: what each of its columns is."""

    edges_hz: tuple[tuple[float, float], ...]
    """``(lo, hi)`` in Hz of each band, in column order (increasing frequency)."""
    spread_db: tuple[float, ...]
    """Normal spread (robust standard deviation, > 0) of each band's level, in dB."""
    unit: str = "dB"
    """Unit of the output's values (signed deviation from normal)."""

    @property
    def n_bands(self) -> int:
        """Columns of the ``bands`` output."""
        return len(self.edges_hz)


@dataclass(frozen=True, slots=True)
class LevelSpec:
    """The optional ``level`` metadata: the normal level range and the stopped level."""

    stopped_below_dbfs: float
    """A window below this level (dBFS, ``meters.window_level_dbfs``) sounds stopped."""
    p01_dbfs: float | None = None
    """1st percentile of the normal windows' levels."""
    p50_dbfs: float | None = None
    """Median of the normal windows' levels."""
    p99_dbfs: float | None = None
    """99th percentile of the normal windows' levels."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the daemon needs to know about a model, taken from its metadata."""

    name: str
    """Model name, e.g. ``pump-a``."""
    version: str
    """Model version, e.g. ``20261121T101500Z-3f2a9c1``."""
    kind: str
    """Detector kind (``dense_ae``, ``gmm``, ``cnn_attention``, ...)."""
    sample_rate: int
    """Rate of the model's input in Hz."""
    window_s: float
    """Length of one scored window in seconds."""
    input: Literal["logmel", "waveform"]
    """What the graph takes: log-mel frames or the raw window."""
    threshold: float
    """Calibrated threshold on the score (higher = more anomalous)."""
    features: LogMelParams | None = None
    """Log-mel parameters (``input == "logmel"``)."""
    prefilter: PrefilterSpec | None = None
    """Filter applied to the stream before windowing, if any."""
    normalize: NormalizeMethod = "none"
    """Per-window normalisation of waveform input."""
    bands: BandsSpec | None = None
    """The ``bands`` output's columns; None: the model has no ``bands`` output."""
    level: LevelSpec | None = None
    """The normal level range; None: the monitor cannot tell a stopped machine."""
    raw: Mapping[str, Any] = field(default_factory=dict)
    """The metadata as stored (calibration, training, ... are passed through)."""

    @property
    def window_samples(self) -> int:
        """Samples in one window at the model's rate."""
        return round(self.window_s * self.sample_rate)

    @property
    def n_frames(self) -> int:
        """Log-mel frames in one window (0 for waveform models)."""
        return self.features.n_frames(self.window_samples) if self.features else 0


class _Fields:
    """Typed access to the metadata object, each failure naming the field."""

    def __init__(self, path: str, data: Mapping[str, Any], prefix: str = "") -> None:
        self.path, self.data, self.prefix = path, data, prefix

    def fail(self, key: str, problem: str) -> ModelError:
        return ModelError(self.path, f"metadata.{self.prefix}{key}", problem)

    def get(self, key: str, default: Any = ...) -> Any:
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is ...:
            raise self.fail(key, "required field is missing")
        return default

    def text(self, key: str, default: Any = ...) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def number(self, key: str, lo: float, hi: float, default: Any = ...) -> float:
        value = self.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.fail(key, f"expected a finite number, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(key, f"expected a number in [{lo:g}, {hi:g}], got {value!r}")
        return float(value)

    def integer(self, key: str, lo: int, hi: int, default: Any = ...) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(key, f"expected an integer {lo}-{hi}, got {value!r}")
        return value

    def number_list(self, key: str, lo: float, hi: float) -> list[float]:
        """A non-empty list of finite numbers in [lo, hi] (``key[i]`` named on failure)."""
        value = self.get(key)
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"expected a non-empty list, got {value!r}")
        items = _Fields(self.path, {f"{key}[{i}]": v for i, v in enumerate(value)}, self.prefix)
        return [items.number(f"{key}[{i}]", lo, hi) for i in range(len(value))]

    def choice(self, key: str, options: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, default)
        if value not in options:
            raise self.fail(key, f"expected one of {', '.join(map(repr, options))}, got {value!r}")
        return str(value)

    def section(self, key: str) -> _Fields | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected an object, got {type(value).__name__}")
        return _Fields(self.path, value, f"{self.prefix}{key}.")


def parse_model_spec(path: str, metadata: Mapping[str, str]) -> ModelSpec:
    """Read and check the contract's metadata of the model at ``path``.

    Raises ModelError naming the first field the daemon cannot serve.
    """
    if METADATA_KEY not in metadata:
        raise ModelError(path, f"metadata.{METADATA_KEY}", "missing: not an asd-edge model")
    try:
        data = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelError(path, f"metadata.{METADATA_KEY}", f"not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise ModelError(path, f"metadata.{METADATA_KEY}", "expected a JSON object")
    f = _Fields(path, data)
    schema = f.get("schema")
    if schema != SCHEMA_VERSION:
        raise f.fail("schema", f"expected {SCHEMA_VERSION}, got {schema!r} (unknown schema)")
    rate = f.integer("sample_rate", MIN_RATE_HZ, MAX_RATE_HZ)
    window_s = f.number("window_s", 0.01, MAX_WINDOW_S)
    spec_input = cast(Literal["logmel", "waveform"], f.choice("input", ("logmel", "waveform")))
    window_samples = round(window_s * rate)
    features = None
    if spec_input == "logmel":
        features = _parse_features(f, rate, window_samples)
    prefilter = _parse_prefilter(f, rate)
    normalize = f.choice("normalize", ("none", "peak", "zscore"), "none")
    bands = _parse_bands(f, rate)
    level = _parse_level(f)
    return ModelSpec(
        name=f.text("name"),
        version=f.text("version"),
        kind=f.text("kind"),
        sample_rate=rate,
        window_s=window_s,
        input=spec_input,
        threshold=f.number("threshold", -math.inf, math.inf),
        features=features,
        prefilter=prefilter,
        normalize=cast(NormalizeMethod, normalize),
        bands=bands,
        level=level,
        raw=dict(data),
    )


def _parse_bands(f: _Fields, rate: int) -> BandsSpec | None:
    """The optional ``bands`` metadata (whether the graph has the output: ``Detector``)."""
    bands = f.section("bands")
    if bands is None:
        return None
    unit = bands.choice("unit", ("dB",), "dB")
    edges = bands.get("edges_hz")
    if not isinstance(edges, list) or not edges:
        raise bands.fail("edges_hz", f"expected a non-empty list of [lo, hi] pairs, got {edges!r}")
    if len(edges) > MAX_BANDS:
        raise bands.fail("edges_hz", f"expected at most {MAX_BANDS} bands, got {len(edges)}")
    nyquist = rate / 2.0
    pairs: list[tuple[float, float]] = []
    for i, pair in enumerate(edges):
        if not isinstance(pair, list) or len(pair) != 2:
            raise bands.fail(f"edges_hz[{i}]", f"expected [lo, hi], got {pair!r}")
        item = _Fields(f.path, {"lo": pair[0], "hi": pair[1]}, f"{bands.prefix}edges_hz[{i}].")
        lo, hi = item.number("lo", 0.0, nyquist), item.number("hi", 0.0, nyquist)
        if hi <= lo:
            raise bands.fail(f"edges_hz[{i}]", f"expected lo < hi, got [{lo:g}, {hi:g}]")
        if pairs and (lo <= pairs[-1][0] or hi <= pairs[-1][1]):
            raise bands.fail(
                f"edges_hz[{i}]",
                f"expected edges increasing from band to band, got [{lo:g}, {hi:g}] after "
                f"[{pairs[-1][0]:g}, {pairs[-1][1]:g}]",
            )
        pairs.append((lo, hi))
    spread = bands.number_list("spread_db", 1e-6, 1e6)
    if len(spread) != len(pairs):
        raise bands.fail(
            "spread_db", f"expected {len(pairs)} values (one per band), got {len(spread)}"
        )
    return BandsSpec(edges_hz=tuple(pairs), spread_db=tuple(spread), unit=unit)


def _parse_level(f: _Fields) -> LevelSpec | None:
    level = f.section("level")
    if level is None:
        return None
    level.choice("unit", ("dBFS",), "dBFS")
    level.choice("measure", ("window_mean_square",), "window_mean_square")
    stopped = level.number("stopped_below_dbfs", MIN_LEVEL_DBFS, 0.0)
    percentiles: dict[str, float | None] = {
        key: level.number(key, MIN_LEVEL_DBFS, 0.0) if level.get(key, None) is not None else None
        for key in ("p01", "p50", "p99")
    }
    given = [(k, v) for k, v in percentiles.items() if v is not None]
    for (low_key, low), (key, value) in itertools.pairwise(given):
        if value < low:
            raise level.fail(key, f"expected at least {low_key} ({low:g}), got {value:g}")
    if given and stopped >= given[0][1]:
        first, value = given[0]
        raise level.fail(
            "stopped_below_dbfs",
            f"expected a level below {first} ({value:g}: the normal level), got {stopped:g}",
        )
    return LevelSpec(
        stopped_below_dbfs=stopped,
        p01_dbfs=percentiles["p01"],
        p50_dbfs=percentiles["p50"],
        p99_dbfs=percentiles["p99"],
    )


def _parse_features(f: _Fields, rate: int, window_samples: int) -> LogMelParams:
    feats = f.section("features")
    if feats is None:
        raise f.fail("features", "required for input 'logmel'")
    n_fft = feats.integer("n_fft", 16, 65536)
    if n_fft > window_samples:
        raise feats.fail("n_fft", f"{n_fft} is longer than the window ({window_samples} samples)")
    nyquist = rate / 2.0
    fmin = feats.number("fmin", 0.0, nyquist, 0.0)
    fmax = feats.number("fmax", 0.0, nyquist, nyquist)
    if fmax <= fmin:
        raise feats.fail("fmax", f"must be above fmin ({fmin:g}), got {fmax:g}")
    power = feats.number("power", 1.0, 2.0, 2.0)
    if power not in (1.0, 2.0):
        raise feats.fail("power", f"expected 1 or 2, got {power:g}")
    feats.choice("log", ("db",), "db")
    feats.integer("frames", 1, 64, 1)  # context stacking happens inside the graph
    return LogMelParams(
        sample_rate=rate,
        n_fft=n_fft,
        hop_length=feats.integer("hop_length", 1, n_fft),
        n_mels=feats.integer("n_mels", 1, 512),
        fmin=fmin,
        fmax=fmax,
        power=power,
        log="db",
    )


def _parse_prefilter(f: _Fields, rate: int) -> PrefilterSpec | None:
    pre = f.section("prefilter")
    if pre is None:
        return None
    kind = pre.choice("type", ("butter_bandpass", "butter_highpass", "butter_lowpass"))
    nyquist = rate / 2.0
    need_low = kind in ("butter_bandpass", "butter_highpass")
    need_high = kind in ("butter_bandpass", "butter_lowpass")
    low = pre.number("low_hz", 0.1, nyquist) if need_low else None
    # A band-pass may name an upper edge past Nyquist (the seed's 8 kHz at 16 kHz):
    # it is then a high-pass, as the filter design drops that edge.
    high = pre.number("high_hz", 0.1, 1e6) if need_high else None
    if kind == "butter_lowpass" and high is not None and high >= nyquist:
        raise pre.fail("high_hz", f"must be below Nyquist ({nyquist:g} Hz), got {high:g}")
    if low is not None and high is not None and high <= low:
        raise pre.fail("high_hz", f"must be above low_hz ({low:g}), got {high:g}")
    return PrefilterSpec(
        type=cast(Any, kind), order=pre.integer("order", 1, 8, 4), low_hz=low, high_hz=high
    )


# --- evidence: which bands of an event's peak window departed from normal -------------

EVIDENCE_MIN_Z = 3.0
"""A band is evidence when its deviation is at least this many normal spreads
(``|delta_db / spread_db| >= 3``): rarer than about 1 window in 370 for a normal band."""
EVIDENCE_MAX_BANDS = 3
"""Most bands an event's evidence names (the strongest)."""


def band_evidence(spec: BandsSpec, deltas_db: npt.ArrayLike | None) -> list[dict[str, Any]]:
    """The evidence of one window's ``bands`` output: at most ``EVIDENCE_MAX_BANDS``
    ``{"band_hz": [lo, hi], "delta_db": d, "z": z}``, strongest ``|z|`` first, only
    bands with ``|z| >= EVIDENCE_MIN_Z`` (``z = delta_db / spread_db``; both rounded
    to 0.1). An empty list when no band qualifies or there is no vector.
    """
    if deltas_db is None:
        return []
    deltas = np.asarray(deltas_db, dtype=np.float64).reshape(-1)
    if deltas.shape[0] != spec.n_bands:
        raise ValueError(f"expected {spec.n_bands} band deviations, got {deltas.shape[0]}")
    z = deltas / np.asarray(spec.spread_db, dtype=np.float64)
    strength = np.where(np.isfinite(z), np.abs(z), 0.0)
    candidates = np.flatnonzero(strength >= EVIDENCE_MIN_Z)
    if candidates.size == 0:
        return []
    # stable: among equal strengths the lower band comes first
    order = candidates[np.argsort(-strength[candidates], kind="stable")][:EVIDENCE_MAX_BANDS]
    evidence = []
    for i in order.tolist():
        lo, hi = spec.edges_hz[i]
        evidence.append(
            {
                "band_hz": [lo, hi],
                "delta_db": _tenth(deltas[i]),
                "z": _tenth(z[i]),
            }
        )
    return evidence


def _tenth(value: float) -> float:
    rounded = round(float(value), 1)
    return 0.0 if rounded == 0 or not math.isfinite(rounded) else rounded
