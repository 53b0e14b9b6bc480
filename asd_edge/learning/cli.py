"""``asd-edge learn`` and ``asd-edge feedback``: their arguments and what they run
(``offline`` for ``--from``, ``remote`` for the running daemon)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ..config import LEARN_MIN_S, Config, MonitorConfig
from ..errors import LearnError
from .offline import learn_offline
from .remote import remote

__all__ = ["EXIT_HELP", "feedback", "learn", "register"]

EXIT_CONFIG: Final = 78
DESCRIPTION: Final = """Learn a monitor's normal sound without torch.

With --seconds, the running daemon the configuration describes learns N seconds of
live sound (the command goes through the broker); a progress bar follows it until the
learned model runs (exit 0) or the learning fails (the reason, exit 1). Ctrl-C cancels.

With --from, the recordings given (files, or every audio file in folders) are learned
here, without a daemon, by the same code; a file that cannot be read is named and
skipped; the model goes to --out."""

EXIT_HELP = """exit codes:
  0   the learned model runs (live) or is written (--from)
  1   the learning was refused, failed or was cancelled (the reason is printed)
  2   bad command-line usage
  66  --from names no readable audio
  69  the broker cannot be reached or the daemon does not answer
  78  invalid configuration (the message names the key)
"""


def register(sub: Any, config_help: str, func: Callable[[argparse.Namespace], int]) -> None:
    """The ``learn`` and ``feedback`` subcommands of ``asd-edge``: ``func`` loads the
    configuration and calls ``args.run(config, args)`` (``learn`` or ``feedback``)."""
    learn_parser = sub.add_parser(
        "learn",
        help="learn a monitor's normal sound (no torch)",
        description=DESCRIPTION,
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    learn_parser.set_defaults(func=func, run=learn)
    learn_parser.add_argument("--config", metavar="FILE", help=config_help)
    _learn_arguments(learn_parser)
    fb = sub.add_parser(
        "feedback",
        help="mark an alert as a false alarm: its clip is learned as normal",
        description="Tell the running daemon (through the broker) that an alert was a "
        "false alarm: its clip joins the monitor's learned normal sound as marked normal "
        "and the model is refitted, so that the same sound does not alert again while "
        "faults still do. The monitor's normal sound must have been learned on the device.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fb.set_defaults(func=func, run=feedback)
    fb.add_argument("alert_id", metavar="ALERT_ID", help='the alert\'s id, or "last"')
    fb.add_argument(
        "--normal", action="store_true", required=True, help="the alert's sound is normal"
    )
    fb.add_argument("--monitor", metavar="NAME", help='with "last": whose last alert')
    fb.add_argument("--config", metavar="FILE", help=config_help)
    fb.add_argument("--timeout", type=float, metavar="S", help="give up after S s (600)")


def _learn_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``asd-edge learn``."""
    parser.add_argument(
        "--monitor", metavar="NAME", help="the monitor to learn (default: the only one)"
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--seconds",
        type=float,
        metavar="N",
        help=f"learn N seconds of live sound in the running daemon (at least {LEARN_MIN_S:g})",
    )
    mode.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        metavar="PATH",
        type=Path,
        help="learn from these recordings (files or folders) here, offline",
    )
    mode.add_argument("--cancel", action="store_true", help="cancel the learning in progress")
    parser.add_argument(
        "--append",
        action="store_true",
        help="live: add to the monitor's learned normal sound instead of starting over",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="--from: the model file to write (default: <monitor>-learned.onnx)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="live: give up after S seconds (default: twice the learning, plus 10 min)",
    )


def learn(config: Config, args: argparse.Namespace) -> int:
    """Run ``asd-edge learn``; the exit code says how it ended (``EXIT_HELP``)."""
    try:
        monitor = _monitor(config, args.monitor)
    except LearnError as exc:
        print(f"asd-edge learn: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.sources is not None:
        return learn_offline(config, monitor, args.sources, args.out)
    body: dict[str, Any] = {"monitor": monitor.name}
    if args.cancel:
        body["cancel"] = True
    else:
        body.update(seconds=args.seconds, append=bool(args.append))
    return remote(config, "learn", body, seconds=args.seconds or 0.0, timeout_s=args.timeout)


def feedback(config: Config, args: argparse.Namespace) -> int:
    """``asd-edge feedback ALERT_ID --normal``: that alert was a false alarm; its clip is
    learned as normal in the running daemon. Exit codes as ``learn``'s."""
    body: dict[str, Any] = {"alert_id": args.alert_id, "verdict": "normal"}
    if args.monitor is not None:
        body["monitor"] = args.monitor
    return remote(config, "feedback", body, seconds=0.0, timeout_s=args.timeout)


def _monitor(config: Config, named: str | None) -> MonitorConfig:
    if named is None and len(config.monitors) == 1:
        return config.monitors[0]
    for m in config.monitors:
        if m.name == named:
            return m
    if config.source is None:
        raise LearnError(
            "no monitor to learn: no configuration file was found (--config FILE, "
            "$ASD_EDGE_CONFIG or /etc/asd-edge/config.yaml) and the built-in defaults have none"
        )
    if not config.monitors:
        raise LearnError(f"no monitor to learn: {config.source} has none")
    where = f"monitors in {config.source}: {', '.join(m.name for m in config.monitors)}"
    if named is None:
        raise LearnError(f"--monitor: name the monitor to learn ({where})")
    raise LearnError(f"--monitor: {named!r} does not exist ({where})")
