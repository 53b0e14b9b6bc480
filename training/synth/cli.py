"""``asd-train synth``: a dataset of synthetic machines, or one stream with anomalies."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asd_edge.audiofile import write_wav

from .datasets import write_dataset
from .faults import ANOMALY_KINDS, check_kind
from .machine import Machine, make_stream

__all__ = ["configure", "parse_events", "run"]


def parse_events(text: str) -> list[tuple[float, float, str]]:
    """Parse ``"start:dur:kind,..."`` (seconds) into events; ValueError naming the bad one."""
    events: list[tuple[float, float, str]] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"event {item!r}: expected start:dur:kind, e.g. 12:5:bearing")
        try:
            start_s, dur_s = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"event {item!r}: start and dur must be numbers (seconds)") from None
        kind = parts[2].strip()
        check_kind(kind)
        events.append((start_s, dur_s, kind))
    return events


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
        "(OUT/stream.wav, events in OUT/stream.json)",
    )
    parser.add_argument(
        "--events",
        default="",
        help='anomalies in the stream: "start:dur:kind,..." in seconds, e.g. "20:5:bearing"',
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
            events = parse_events(args.events)
            machine = Machine(machine_id=args.machine_id, seed=args.seed, sample_rate=args.rate)
            wave = make_stream(
                args.stream, events, machine=machine, seed=args.seed, severity=args.severity
            )
            out.mkdir(parents=True, exist_ok=True)
            write_wav(out / "stream.wav", wave, args.rate)
            meta = {
                "wav": "stream.wav",
                "sample_rate": args.rate,
                "duration_s": args.stream,
                "machine_id": args.machine_id,
                "seed": args.seed,
                "severity": args.severity,
                "events": [{"start_s": s, "dur_s": d, "kind": k} for s, d, k in events],
            }
            (out / "stream.json").write_text(json.dumps(meta, indent=2) + "\n")
            print(out / "stream.wav")
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
