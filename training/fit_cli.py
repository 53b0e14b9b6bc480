"""``asd-train fit``'s command line: its options, their checks, the exit codes; the work is
:func:`training.fit.fit`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asd_edge.errors import LearnError
from asd_edge.learning.bandstat import DEFAULTS as BANDSTAT_DEFAULTS
from asd_edge.learning.calibration import DEVICE_RULE, METHODS
from asd_edge.learning.fitting import candidates_for

from .bandfit import NUMPY_KINDS
from .errors import (
    EXIT_DATA,
    EXIT_NOINPUT,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    DataError,
    ExportError,
)
from .fit import FitConfig, fit
from .kinds import DEFAULT_KIND, KIND_NAMES, get_kind
from .runs import TrackerUnavailable, make_tracker
from .windows import WindowSpec

__all__ = ["OPTIONS", "configure", "parse_params", "run"]


OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--data", {"required": True, "type": Path, "help": "dataset folder or manifest.csv"}),
    ("--model", {"default": DEFAULT_KIND, "choices": (*NUMPY_KINDS, *KIND_NAMES),
                 "help": "detector kind; auto fits bandstat's scorers and keeps the one that "
                 "catches the most faults injected into your held-out normal audio at the "
                 "false-alarm target"}),
    ("--out", {"required": True, "type": Path, "help": "run directory (created)"}),
    ("--epochs", {"type": int, "default": 30, "help": "most epochs"}),
    ("--seed", {"type": int, "default": 0, "help": "seed of everything random"}),
    ("--batch-size", {"type": int, "default": 64, "help": "windows per batch"}),
    ("--lr", {"type": float, "default": 1e-3, "help": "Adam's learning rate"}),
    ("--patience", {"type": int, "default": 5, "help": "early-stopping patience, epochs"}),
    ("--hop-s", {"type": float, "default": 0.5, "help": "hop of the training windows, s"}),
    (
        "--deploy-hop-s",
        {"type": float, "default": DEVICE_RULE["hop_s"], "help": "the daemon's hop, s"},
    ),
    ("--window-s", {"type": float, "default": 1.0, "help": "window length, s"}),
    ("--rate", {"type": int, "default": 16000, "help": "model sample rate, Hz"}),
    ("--valid-fraction", {"type": float, "default": 0.15, "help": "DCASE train files held out"}),
    ("--calibration", {"default": "fa_per_day", "choices": METHODS, "help": "threshold method"}),
    ("--target-fa-per-day", {"type": float, "default": 1.0, "help": "fa_per_day: alarms/day"}),
    ("--quantile", {"type": float, "default": 0.99, "help": "quantile: which one"}),
    ("--k", {"type": float, "default": 2.0, "help": "mean_std: mean + k sigma"}),
    ("--threshold", {"type": float, "default": None, "help": "fixed: the threshold"}),
    ("--param", {"action": "append", "default": [], "metavar": "KEY=VALUE",
                 "help": "a hyper-parameter of the kind (repeatable; values are JSON)"}),
    ("--augment", {"action": "append", "default": [], "metavar": "KEY=VALUE",
                   "help": "augment training windows on the fly with this training.augment "
                   "setting (repeatable; values are JSON, e.g. pitch_semitones=[-1,1])"}),
    ("--name", {"default": None, "help": "model name (default: <data folder>-<kind>)"}),
    ("--quantize", {"action": "store_true", "help": "also write model.int8.onnx (dynamic)"}),
    ("--tracker", {"default": "none", "choices": ("none", "clearml"), "help": "also log to"}),
    ("--threads", {"type": int, "default": None,
                   "help": "torch and BLAS threads (default: 1 for auto and bandstat, the "
                   "libraries' own for the torch kinds)"}),
    ("--quiet", {"action": "store_true", "help": "no progress bars or log lines on stderr"}),
]  # fmt: skip


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``asd-train fit``."""
    for flag, options in OPTIONS:
        if (
            "default" in options
            and options["default"] not in (None, [])
            and "action" not in options
        ):
            options = {**options, "help": options["help"] + " (default: %(default)s)"}
        parser.add_argument(flag, **options)


def parse_params(pairs: list[str], defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``key=value`` strings (values as JSON where they parse) checked against ``defaults``."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ValueError(f"{what} has no parameter {key!r} (known: {known})")
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = text
    return params


def _config(args: argparse.Namespace) -> FitConfig:
    """The FitConfig of parsed arguments (ValueError/TypeError naming the bad one)."""
    numpy_kind = args.model in NUMPY_KINDS
    info = None if numpy_kind else get_kind(args.model)
    augment = None
    if args.augment:
        from .augment import AugmentConfig

        fields = {f.name: f.default for f in dataclasses.fields(AugmentConfig)}
        augment = parse_params(args.augment, fields, "--augment")
    config = FitConfig(
        data=args.data, out=args.out, kind=args.model,
        params=parse_params(
            args.param, BANDSTAT_DEFAULTS if info is None else info.defaults,
            f"--param: kind {args.model}",
        ),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
        seed=args.seed, threads=args.threads, rate=args.rate, window_s=args.window_s,
        hop_s=args.hop_s, deploy_hop_s=args.deploy_hop_s, valid_fraction=args.valid_fraction,
        calibration=args.calibration, target_fa_per_day=args.target_fa_per_day,
        quantile=args.quantile, k=args.k, threshold=args.threshold, augment=augment,
        name=args.name, quantize=args.quantize, tracker=args.tracker, quiet=args.quiet,
    )  # fmt: skip
    config.calibration_config()
    config.train_config()
    if info is None:
        try:
            candidates_for(config.kind, config.params)
        except LearnError as exc:
            raise ValueError(str(exc).replace("auto chooses", "--model auto chooses")) from None
        if config.calibration != "fa_per_day":
            raise ValueError(
                f"--calibration {config.calibration}: --model {config.kind} calibrates its two "
                "channels and their fusion on false alarms per day (fa_per_day) only"
            )
    else:
        WindowSpec.for_kind(
            info, sample_rate=config.rate, window_s=config.window_s, hop_s=config.hop_s
        )
    if not 0.05 <= config.deploy_hop_s <= 10.0:
        raise ValueError(f"--deploy-hop-s must be in [0.05, 10], got {config.deploy_hop_s}")
    return config


def run(args: argparse.Namespace) -> int:
    """``asd-train fit``: 0, 2 (bad arguments), 65, 66, 69 or 70 (see ``--help``)."""

    def fail(code: int, message: str) -> int:
        print(f"asd-train fit: {message}", file=sys.stderr)
        return code

    if not args.data.exists():
        return fail(EXIT_NOINPUT, f"{args.data}: no such dataset folder or manifest")
    try:
        config = _config(args)
    except (ValueError, TypeError) as exc:
        return fail(EXIT_USAGE, str(exc))
    try:
        tracker = make_tracker(args.tracker, project="asd-edge", task=args.name or args.out.name)
    except TrackerUnavailable as exc:
        return fail(EXIT_UNAVAILABLE, str(exc))
    try:
        result = fit(config, tracker=tracker)
    except DataError as exc:
        return fail(EXIT_DATA, str(exc))
    except ExportError as exc:
        return fail(EXIT_SOFTWARE, f"export failed, no model.onnx written: {exc}")
    except LearnError as exc:  # SOURCE_DATE_EPOCH unusable
        return fail(EXIT_USAGE, str(exc))
    finally:
        tracker.close()
    print(result.model_path)
    return EXIT_OK
