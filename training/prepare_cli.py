"""``asd-train prepare``'s command line: the arguments, the checks, ``prepare.json`` and the
summary; the work (decode, cut, split, write) is :func:`training.prepare.prepare`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from asd_edge.audiofile import MIN_SAMPLE_RATE
from asd_edge.durable import write_atomic
from asd_edge.logs import configure_logging
from training.augment import AugmentConfig
from training.dataset import MANIFEST_NAME, SPLITS
from training.errors import EXIT_DATA, EXIT_FAILED, EXIT_NOINPUT, EXIT_OK, EXIT_USAGE, DataError
from training.jsonwave import DEFAULT_JSON_RATE
from training.prepare import PrepareResult, prepare
from training.sources import find_inputs

__all__ = ["configure", "run"]

_OWNED = (MANIFEST_NAME, "prepare.json", *SPLITS)
_SHOWN_SKIPS = 20


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    if lo > hi:
        raise argparse.ArgumentTypeError(f"expected LOW <= HIGH, got {text!r}")
    return lo, hi


def _split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0 or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"expected TRAIN,VALID,TEST fractions summing to 1 with TRAIN > 0, got {text!r}"
        )
    return parts[0], parts[1], parts[2]


def _channel(text: str) -> int | None:
    if text == "mix":
        return None
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(
        f"expected a channel number (0, 1, ...) or 'mix', got {text!r}"
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``asd-train prepare``'s arguments to ``parser``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio/JSON files or folders")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument(
        "--rate", type=int, default=16000, help="output rate, Hz (default: %(default)s)"
    )
    parser.add_argument(
        "--segment-s", type=float, default=10.0, help="segment length (default: %(default)s)"
    )
    parser.add_argument(
        "--min-segment-s",
        type=float,
        default=None,
        help="keep a shorter last segment (not padded) if at least this long "
        "(default: half a segment)",
    )
    parser.add_argument(
        "--channel",
        type=_channel,
        default=None,
        metavar="N|mix",
        help="channel of multichannel audio, 0-based, or mix (default: mix)",
    )
    parser.add_argument(
        "--split",
        type=_split,
        default=(0.7, 0.15, 0.15),
        metavar="TRAIN,VALID,TEST",
        help="fractions of the segments, split by recording (default: 0.7,0.15,0.15)",
    )
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument(
        "--label",
        choices=("normal", "anomaly"),
        help="label every input so (default: from folder and file names)",
    )
    parser.add_argument(
        "--labelled-train",
        action="store_true",
        help="split anomalies like normals, into train too (supervised kinds)",
    )
    parser.add_argument(
        "--json-rate",
        type=int,
        default=DEFAULT_JSON_RATE,
        help="rate of JSON records that do not give theirs (default: %(default)s)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a dataset already in --out (its manifest, splits, prepare.json)",
    )
    aug = parser.add_argument_group("augmentation (train segments only)")
    aug.add_argument(
        "--augment",
        type=int,
        default=0,
        metavar="N",
        help="write N augmented copies of each train segment (default: 0)",
    )
    aug.add_argument(
        "--noise",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="background recording or folder to mix in (repeatable)",
    )
    aug.add_argument(
        "--snr-db",
        type=_pair,
        default=(10.0, 30.0),
        metavar="LOW,HIGH",
        help="SNR range of the noise mix (default: 10,30)",
    )
    aug.add_argument(
        "--pitch-semitones",
        type=_pair,
        default=None,
        metavar="LOW,HIGH",
        help="pitch shift range, e.g. --pitch-semitones=-1,1",
    )
    aug.add_argument(
        "--gain-db",
        type=_pair,
        default=None,
        metavar="LOW,HIGH",
        help="gain range, e.g. --gain-db=-3,3",
    )
    aug.add_argument("--shift-s", type=float, default=None, help="max circular time shift, s")
    aug.add_argument(
        "--augment-p",
        type=float,
        default=0.5,
        help="probability of each transform (at least one is applied per copy)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no summary")


def _fail(message: str, code: int) -> int:
    print(f"asd-train prepare: {message}", file=sys.stderr)
    return code


def _clear(out: Path, force: bool) -> str | None:
    """Remove a previous dataset from ``out`` (with ``force``); an error message otherwise."""
    present = [name for name in _OWNED if (out / name).exists()]
    if present and not force:
        return f"{out} already holds a dataset ({', '.join(present)}); use --force to replace it"
    for name in present:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    return None


def run(args: argparse.Namespace) -> int:
    """Run ``asd-train prepare``; return the exit code."""
    configure_logging("warning", stream=sys.stderr)
    out: Path = args.out.expanduser().absolute()
    if min(args.rate, args.json_rate) < MIN_SAMPLE_RATE or args.segment_s <= 0 or args.augment < 0:
        return _fail(
            f"--rate and --json-rate must be >= {MIN_SAMPLE_RATE} Hz, --segment-s > 0 and "
            "--augment >= 0",
            EXIT_USAGE,
        )
    files, missing = find_inputs(args.inputs)
    for m in missing:
        print(f"asd-train prepare: {m}: no such file or folder", file=sys.stderr)
    if missing:
        return EXIT_NOINPUT
    files = [f for f in files if not f.path.is_relative_to(out)]
    config = None
    if args.augment:
        noise_files, _ = find_inputs(args.noise)
        try:
            config = AugmentConfig(
                pitch_semitones=args.pitch_semitones,
                noise_files=tuple(f.path for f in noise_files if f.path.suffix.lower() != ".json"),
                snr_db=args.snr_db,
                gain_db=args.gain_db,
                shift_s=args.shift_s,
                p=args.augment_p,
                at_least_one=True,
            )
        except ValueError as e:
            return _fail(str(e), EXIT_USAGE)
        if not config.transforms:
            return _fail(
                "--augment needs a transform: --noise, --pitch-semitones, --gain-db or --shift-s",
                EXIT_USAGE,
            )
    out.mkdir(parents=True, exist_ok=True)
    problem = _clear(out, args.force)
    if problem:
        return _fail(problem, EXIT_USAGE)
    try:
        result = prepare(
            files,
            out,
            sample_rate=args.rate,
            segment_s=args.segment_s,
            min_segment_s=args.min_segment_s,
            channel=args.channel,
            split=args.split,
            seed=args.seed,
            label=args.label,
            labelled_train=args.labelled_train,
            json_rate=args.json_rate,
            augment=args.augment,
            augment_config=config,
            progress=not args.quiet,
        )
    except DataError as e:  # a bad noise file
        return _fail(str(e), EXIT_DATA)
    _write_report(out, args, result)
    for path, reason in result.skipped[:_SHOWN_SKIPS]:
        print(f"asd-train prepare: skipped {path}: {reason}", file=sys.stderr)
    if len(result.skipped) > _SHOWN_SKIPS:
        more = len(result.skipped) - _SHOWN_SKIPS
        print(
            f"asd-train prepare: ... {more} more skipped, see {out / 'prepare.json'}",
            file=sys.stderr,
        )
    for line in result.warnings:
        print(f"asd-train prepare: warning: {line}", file=sys.stderr)
    if not result.segments:
        return _fail(f"nothing usable in {len(files)} input file(s)", EXIT_DATA)
    if not args.quiet:
        print(_summary(result, out))
    return EXIT_FAILED if result.skipped else EXIT_OK


def _counts(result: PrepareResult) -> dict[str, dict[str, dict[str, float]]]:
    counts: dict[str, dict[str, dict[str, float]]] = {}
    sources: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in result.segments:
        c = counts.setdefault(s.split, {}).setdefault(
            s.label, {"files": 0, "augmented": 0, "seconds": 0.0, "recordings": 0}
        )
        c["files"] += 1
        c["augmented"] += s.augmented
        c["seconds"] = round(c["seconds"] + s.duration_s, 6)
        sources[(s.split, s.label)].add(s.source)
    for (sp, lab), srcs in sources.items():
        counts[sp][lab]["recordings"] = len(srcs)
    return counts


def _summary(result: PrepareResult, out: Path) -> str:
    lines = [f"wrote {len(result.segments)} segments to {out}"]
    for sp, labels in sorted(_counts(result).items(), key=lambda kv: SPLITS.index(kv[0])):
        for lab, c in sorted(labels.items()):
            lines.append(
                f"  {sp:5s} {lab:7s} {int(c['files']):6d} files {c['seconds']:9.1f} s "
                f"from {int(c['recordings'])} recording(s)"
            )
    return "\n".join(lines)


def _write_report(out: Path, args: argparse.Namespace, result: PrepareResult) -> None:
    arguments = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if not k.startswith("_")
    }
    arguments["noise"] = [str(p) for p in args.noise]
    report = {
        "arguments": arguments,
        "sample_rate": args.rate,
        "segments": len(result.segments),
        "counts": _counts(result),
        "data_sha256": result.data_sha256,
        "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
        "warnings": list(result.warnings),
    }
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    write_atomic(out / "prepare.json", text.encode("utf-8"))
