"""``asd-train reset``: replace a device's replay marker with a signed reset over MQTT.

A device refuses every push and rollback dated before its replay marker. Once a marker
lies in the future (a push dated ahead was accepted while a clock was wrong, or by an
asd-edge without the clock check), nothing gets through until it is replaced; this
command does it without a shell on the device. It reads the marker from the device's
retained ``<prefix>/model`` (``replay_marker`` of ``--monitor``, else the device's
``replay_floor``) unless ``--clears`` names it, signs a ``cmd/model/reset`` that names
it (``asd_edge.modelstore.signing.reset_message``; the device's side is
``asd_edge.modelstore.reset``) and waits for the answer as ``asd-train push`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from asd_edge.modelstore.signing import reset_message, valid_issued_at

from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .push import (
    check_usage,
    configure_common,
    exchange,
    fail,
    private_key,
    sayer,
)

__all__ = ["configure", "current_marker", "run"]

RESET_EXIT_CODES: Final = """exit codes:
  0   the device accepted the reset, or has no marker to reset (then nothing is sent)
  1   the device refused (its reason is printed), or its model topic shows no marker to
      clear (an asd-edge without resets, or no such monitor: the reason is printed)
  2   bad command-line usage
  65  the key file is not an Ed25519 private key
  66  the key, password or CA file does not exist or cannot be read
  68  no such device: no retained status on <prefix>/status, so it never connected to
      this broker (a typo in --device or --prefix); nothing was published
  69  the broker cannot be reached or refused the connection
  75  no answer in time: the device may be offline (EX_TEMPFAIL); it refuses the reset
      if it arrives more than push.max_clock_skew_s after it was signed
"""
"""The exit codes as ``asd-train reset --help`` lists them."""


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``asd-train reset``."""
    parser.epilog = RESET_EXIT_CODES
    configure_common(
        parser,
        "reset",
        fleet=False,
        monitor_help="reset this monitor's marker only (default: the device's floor and "
        "every monitor's marker)",
    )
    parser.add_argument(
        "--clears",
        metavar="ISSUED_AT",
        help="the marker to replace, as the device's model topic shows it (default: read "
        "replay_marker / replay_floor from the retained <prefix>/model)",
    )


def run(args: argparse.Namespace) -> int:
    """``asd-train reset``: sign a reset of the marker the device shows, print the answer."""
    problem = check_usage(args)
    if problem is None and args.clears is not None and not valid_issued_at(args.clears):
        problem = (
            "--clears: expected ISO 8601 UTC with milliseconds like 2099-01-01T00:00:00.000Z "
            f"(as the device's model topic shows it), got {args.clears!r}"
        )
    if problem:
        return fail(args, problem, EXIT_USAGE)
    key, code = private_key(args)
    if code:
        return code
    say = sayer(args)
    whose = "the device" if args.monitor is None else f"monitor {args.monitor}"
    chosen: dict[str, str] = {}

    def prepare(prefix: str, model: dict[str, Any] | None) -> int | None:
        if args.clears is not None:
            chosen["clears"] = args.clears
            say(f"replacing the replay marker {args.clears} of {whose} (--clears)")
            return None
        found, problem = current_marker(model, args.monitor)
        if problem is not None:
            return fail(args, f"{prefix}/model: {problem}", EXIT_FAILED)
        if found is None:
            print(f"{whose} has no replay marker: nothing to reset, nothing sent", file=sys.stderr)
            if args.json:
                print(json.dumps({"command": "model/reset", "results": []}, indent=2))
            return EXIT_OK
        chosen["clears"] = found
        say(f"replacing the replay marker {found} of {whose} (from {prefix}/model)")
        return None

    def build(request_id: str, target: str) -> dict[str, Any]:
        return reset_message(
            request_id=request_id,
            target=target,
            monitor=args.monitor,
            clears=chosen["clears"],
            private_key=key,
        )

    return exchange(args, command="model/reset", build=build, prepare=prepare)


def current_marker(
    model: dict[str, Any] | None, monitor: str | None
) -> tuple[str | None, str | None]:
    """(the marker a reset of ``monitor`` (None: of the device) must clear, None) from a
    device's ``model`` message, or (None, why it cannot be told). A marker of None:
    there is nothing to reset."""
    if model is None:
        return None, "no retained model message (give --clears)"
    if monitor is None:
        if "replay_floor" not in model:
            return None, "no replay_floor: the device's asd-edge has no reset (give --clears)"
        value = model["replay_floor"]
    else:
        monitors = model.get("monitors")
        if not isinstance(monitors, dict) or monitor not in monitors:
            names = ", ".join(sorted(monitors)) if isinstance(monitors, dict) else "none"
            return None, f"no monitor named {monitor!r} on the device ({names})"
        entry = monitors[monitor]
        if not isinstance(entry, dict) or "replay_marker" not in entry:
            return None, "no replay_marker: the device's asd-edge has no reset (give --clears)"
        value = entry["replay_marker"]
    if value is not None and not (isinstance(value, str) and valid_issued_at(value)):
        return None, f"the marker is not an issued_at: {value!r} (give --clears)"
    return value, None
