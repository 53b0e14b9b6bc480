"""``asd-train synth``: a dataset of synthetic machines, or one stream with anomalies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .datasets import write_dataset
from .faults import ANOMALY_KINDS
from .stream import Stream, parse_anomalies

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``asd-train synth``'s arguments to ``parser``."""
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--machines", type=int, default=1, help="machines (default: %(default)s)")
    parser.add_argument(
        "--train-files", type=int, default=40, help="normal training files (default: %(default)s)"
    )
    parser.add_argument(
        "--test-normal", type=int, default=10, help="normal test files (default: %(default)s)"
    )
    parser.add_argument(
        "--test-anomaly",
        type=int,
        default=10,
        help=f"anomalous test files, kinds cycled: {', '.join(ANOMALY_KINDS)} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--duration-s", type=float, default=10.0, help="seconds per file (default: %(default)s)"
    )
    parser.add_argument("--rate", type=int, default=16000, help="Hz (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument(
        "--stream",
        type=float,
        metavar="SECONDS",
        help="instead of a dataset, write one continuous stream of this length "
        "(OUT/stream.wav; what it is and its anomalies in OUT/stream.json)",
    )
    parser.add_argument(
        "--anomalies",
        default="",
        metavar="START:DURATION:KIND,...",
        help='anomalies in the stream, in seconds, e.g. "20:5:bearing,40:3:squeal"',
    )
    parser.add_argument(
        "--machine-id", type=int, default=0, help="the machine of the stream (default: 0)"
    )
    parser.add_argument(
        "--severity", type=float, default=1.0, help="stream anomaly severity (default: 1.0)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``asd-train synth``; return the exit code."""
    out: Path = args.out
    try:
        if args.stream is not None:
            stream = Stream(
                duration_s=args.stream,
                anomalies=parse_anomalies(args.anomalies),
                machine_id=args.machine_id,
                machine_seed=args.seed,
                seed=args.seed,
                severity=args.severity,
                sample_rate=args.rate,
            )
            print(stream.write(out))
            return 0
        paths = write_dataset(
            out,
            machines=args.machines,
            train_files=args.train_files,
            test_normal=args.test_normal,
            test_anomaly=args.test_anomaly,
            duration_s=args.duration_s,
            sample_rate=args.rate,
            seed=args.seed,
            progress=not args.quiet,
        )
    except ValueError as e:
        print(f"asd-train synth: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files under {out}")
    return 0
