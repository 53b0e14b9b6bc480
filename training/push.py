"""``asd-train push`` and ``asd-train rollback``: signed model commands over MQTT and the answers.

Both publish one command (QoS 1, not retained) on a device's ``<prefix>/cmd/model[/rollback]``
or, with ``--all``, on the fleet topic, then wait for each device's answer: a
``<prefix>/model`` message whose ``last_push`` carries the request id, or a refusal on
``<prefix>/cmd_result``. The message format is ``asd_edge.modelstore.signing``'s.
``exchange`` and the options are shared with ``asd-train reset`` (``training.reset``).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from asd_edge.errors import KeyFileError
from asd_edge.modelstore import load_private_key, push_message, rollback_message

from .errors import (
    EXIT_DATA,
    EXIT_FAILED,
    EXIT_NOHOST,
    EXIT_NOINPUT,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from .pushsession import BrokerAddress, BrokerError, FileProblem, MqttSession, parse_broker

__all__ = [
    "DISCOVER_S",
    "EXIT_CODES",
    "Outcome",
    "check_usage",
    "configure",
    "configure_common",
    "exchange",
    "fail",
    "private_key",
    "rollback",
    "run",
    "sayer",
]

DISCOVER_S: Final = 1.0
"""--all: how long retained ``<base>/+/status`` messages are collected."""
STATUS_WAIT_S: Final = 0.5
"""How long the retained ``<prefix>/status`` of the one device asked may take to arrive."""

EXIT_CODES: Final = """exit codes:
  0   every device that was asked (every online device with --all) accepted
  1   a device refused; its reason is printed
  2   bad command-line usage
  65  the model would be refused by the daemon's own loader (the reason is printed), or the
      key file is not an Ed25519 private key
  66  the model, key, password or CA file does not exist or cannot be read
  68  no such device: no retained status on <prefix>/status, so it never connected to
      this broker (a typo in --device or --prefix); nothing was published
  69  the broker cannot be reached or refused the connection; --all found no device
  75  no answer in time: the device may be offline (EX_TEMPFAIL); its persistent session
      still receives the command when it reconnects
"""

Builder = Callable[[str, str], dict[str, Any]]
"""(request id, target) -> the JSON object to publish."""
Prepare = Callable[[str, dict[str, Any] | None], int | None]
"""(the device's prefix, its latest ``model`` message or None) -> None to go on and
publish, or the exit code to end with (having said why), before anything is published."""
WHAT: Final = {"model": "push", "model/rollback": "rollback", "model/reset": "reset"}
"""Each command's name in messages."""


@dataclass
class Outcome:
    """What one device answered (or did not)."""

    device_id: str
    prefix: str
    status: str
    """``accepted``, ``refused``, ``no_answer`` or ``offline`` (--all, not awaited)."""
    error: str | None = None
    answer: dict[str, Any] | None = None
    """The device's ``last_push`` (or its ``cmd_result`` refusal) as it sent it."""


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``asd-train push``."""
    parser.epilog = EXIT_CODES
    parser.add_argument("model", type=Path, metavar="MODEL.onnx", help="the model to send")
    configure_common(parser, "push")


def run(args: argparse.Namespace) -> int:
    """``asd-train push``: check the model as the daemon would, send it, print the answers."""
    from asd_edge.config import PushConfig
    from asd_edge.detector import Detector
    from asd_edge.errors import ModelError

    say = sayer(args)
    problem = check_usage(args)
    if problem:
        return fail(args, problem, EXIT_USAGE)
    if not args.model.is_file():
        return fail(args, f"{args.model}: no such model file", EXIT_NOINPUT)
    say(f"checking {args.model} with the daemon's loader")
    try:
        detector = Detector(args.model)
        blob = args.model.read_bytes()
    except ModelError as exc:
        return fail(args, f"the device would refuse this model: {exc}", EXIT_DATA)
    except OSError as exc:
        return fail(args, f"{args.model}: cannot read ({exc.strerror or exc})", EXIT_NOINPUT)
    spec = detector.spec
    say(f"model {spec.name} {spec.version} ({spec.kind}, sha256 {detector.sha256[:12]})")
    default_mb = PushConfig().max_mb
    if len(blob) > default_mb * 1e6:
        say(
            f"note: {len(blob) / 1e6:.1f} MB is more than the daemon's default push.max_mb "
            f"({default_mb:g}): a device refuses it unless its push.max_mb is raised"
        )
    key, code = private_key(args)
    if code:
        return code

    def build(request_id: str, target: str) -> dict[str, Any]:
        return push_message(
            blob, request_id=request_id, target=target, monitor=args.monitor, private_key=key
        )

    return exchange(args, command="model", build=build)


class _Rollback:
    """``asd-train rollback`` as a stage of ``asd-train`` (``training.push:rollback``)."""

    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        """The arguments of ``asd-train rollback``."""
        parser.epilog = EXIT_CODES.replace("the model would be", "(push only) the model would be")
        configure_common(parser, "rollback")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """``asd-train rollback``: ask for the previous model back, print the answers."""
        problem = check_usage(args)
        if problem:
            return fail(args, problem, EXIT_USAGE)
        key, code = private_key(args)
        if code:
            return code

        def build(request_id: str, target: str) -> dict[str, Any]:
            return rollback_message(
                request_id=request_id, target=target, monitor=args.monitor, private_key=key
            )

        return exchange(args, command="model/rollback", build=build)


rollback = _Rollback()


def exchange(
    args: argparse.Namespace, *, command: str, build: Builder, prepare: Prepare | None = None
) -> int:
    """Publish ``command`` (``model``, ``model/rollback`` or ``model/reset``) and wait for
    the answers.

    Shared by push, rollback and reset: connect, subscribe to the answer topics (and,
    with ``--all``, discover the devices from their retained status) before publishing,
    then match answers on the request id. With one device, ``prepare`` sees its
    retained ``model`` message first and may end the command there. Returns the
    command's exit code.
    """
    say = sayer(args)
    request_id = f"{command.split('/')[-1]}-{uuid.uuid4().hex[:16]}"
    address: BrokerAddress = args.broker
    what = WHAT[command]
    try:
        session = MqttSession(args, request_id=request_id, command=command)
    except FileProblem as exc:
        return fail(args, str(exc), EXIT_NOINPUT)
    try:
        say(f"connecting to {address}")
        session.connect(timeout_s=min(args.timeout, 10.0))
        if args.all:
            devices = _discover(session, args, say)
            if not devices:
                return fail(
                    args,
                    f"no device found: no retained status on {args.base}/+/status",
                    EXIT_UNAVAILABLE,
                )
            topic, target = f"{args.fleet_prefix}/cmd/{command}", "*"
        else:
            prefix = args.prefix or f"asd/{args.device}"
            session.subscribe([f"{prefix}/status", f"{prefix}/model", f"{prefix}/cmd_result"])
            seen = session.devices(settle_s=STATUS_WAIT_S).get(prefix)
            if seen is None:
                return fail(
                    args,
                    f"no device {args.device!r} on this broker: no retained status on "
                    f"{prefix}/status (every asd-edge that connected once leaves one); "
                    "check --device or --prefix; nothing was published",
                    EXIT_NOHOST,
                )
            if prepare is not None and (code := prepare(prefix, session.model(prefix))) is not None:
                return code
            devices = {prefix: (args.device, True)}  # offline: its session still gets it
            topic, target = f"{prefix}/cmd/{command}", args.device
        payload = json.dumps(build(request_id, target), separators=(",", ":")).encode()
        say(f"publishing {_size(len(payload))} on {topic} (request {request_id})")
        session.publish(topic, payload, timeout_s=max(args.timeout, 10.0))
        awaited = [p for p, (_, online) in devices.items() if online]
        if awaited:
            say(f"waiting up to {args.timeout:g} s for {len(awaited)} answer(s)")
        answers = session.wait(awaited, timeout_s=args.timeout)
    except BrokerError as exc:
        return fail(args, str(exc), EXIT_UNAVAILABLE)
    finally:
        session.close()
    outcomes = _outcomes(devices, answers)
    _report(args, outcomes, request_id, command, topic, what)
    return _exit_code(outcomes)


def _discover(
    session: MqttSession, args: argparse.Namespace, say: Callable[[str], None]
) -> dict[str, tuple[str, bool]]:
    """prefix -> (device id, online) from the retained ``<base>/+/status`` messages."""
    base = args.base
    session.subscribe([f"{base}/+/status", f"{base}/+/model", f"{base}/+/cmd_result"])
    say(f"looking for devices on {base}/+/status ({DISCOVER_S:g} s)")
    devices = session.devices(settle_s=DISCOVER_S)
    for prefix, (device_id, online) in sorted(devices.items()):
        say(f"  {device_id}: {'online' if online else 'offline'} ({prefix})")
    return devices


def _outcomes(
    devices: dict[str, tuple[str, bool]], answers: dict[str, tuple[str, str | None, dict[str, Any]]]
) -> list[Outcome]:
    """One Outcome per known device, plus any other device that answered."""
    outcomes: list[Outcome] = []
    for prefix, (device_id, online) in sorted(devices.items()):
        if prefix in answers:
            status, error, answer = answers[prefix]
            outcomes.append(Outcome(device_id, prefix, status, error, answer))
        else:
            outcomes.append(Outcome(device_id, prefix, "no_answer" if online else "offline"))
    for prefix, (status, error, answer) in sorted(answers.items()):
        if prefix not in devices:
            device_id = prefix.rsplit("/", 1)[-1]
            outcomes.append(Outcome(device_id, prefix, status, error, answer))
    return outcomes


def _report(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    request_id: str,
    command: str,
    topic: str,
    what: str,
) -> None:
    """One line per device (stdout, or stderr under --json), and the JSON with --json."""
    lines = [_line(o, args, what) for o in outcomes]
    out = sys.stderr if args.json else sys.stdout
    for line in lines:
        print(line, file=out)
    if args.all:
        counts = {s: sum(o.status == s for o in outcomes) for s in ("accepted", "refused")}
        online = sum(o.status != "offline" for o in outcomes)
        print(
            f"asd-train {what}: {counts['accepted']} of {online} online device(s) accepted, "
            f"{counts['refused']} refused",
            file=sys.stderr,
        )
    elif outcomes[0].status == "no_answer":
        print(
            f"asd-train {what}: no answer from {outcomes[0].device_id} within {args.timeout:g} s: "
            f"the device may be offline; its persistent session will still receive the {what} "
            "when it reconnects",
            file=sys.stderr,
        )
    if args.json:
        document = {
            "command": command,
            "request_id": request_id,
            "topic": topic,
            "results": [asdict(o) for o in outcomes],
        }
        print(json.dumps(document, indent=2))


def _line(outcome: Outcome, args: argparse.Namespace, what: str) -> str:
    head = f"{outcome.device_id}: " if args.all else ""
    answer = outcome.answer or {}
    if outcome.status == "accepted" and what == "reset":
        marker = f"{answer.get('cleared')} -> {answer.get('replay_marker')}"
        if answer.get("monitor"):
            return f"{head}accepted: the replay marker of {answer['monitor']} is reset ({marker})"
        return f"{head}accepted: the device's replay markers are reset ({marker})"
    if outcome.status == "accepted":
        monitor = answer.get("monitor") or "the monitor"
        tail = " (rolled back)" if what == "rollback" else ""
        return (
            f"{head}accepted: {monitor} now runs {answer.get('name')} {answer.get('version')}{tail}"
        )
    if outcome.status == "refused":
        return f"{head}refused: {outcome.error}"
    if outcome.status == "offline":
        return f"{head}offline: will receive it on reconnect"
    return f"{head}no answer within {args.timeout:g} s"


def _exit_code(outcomes: list[Outcome]) -> int:
    statuses = {o.status for o in outcomes}
    if "refused" in statuses:
        return EXIT_FAILED
    if "no_answer" in statuses:
        return EXIT_TEMPFAIL
    return EXIT_OK


def configure_common(
    parser: argparse.ArgumentParser,
    what: str,
    *,
    fleet: bool = True,
    monitor_help: str = "the monitor to change (default: the device's only one)",
) -> None:
    """Target, signing and broker options shared by push, rollback and reset (``fleet``
    False: one device only, always signed, as a reset)."""
    if fleet:
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--device", metavar="ID", help="the device_id to address")
        who.add_argument(
            "--all", action="store_true", help="every device behind the fleet topic (target '*')"
        )
    else:
        parser.add_argument("--device", required=True, metavar="ID", help="the device_id")
        parser.set_defaults(all=False, fleet_prefix=None, base=None, unsigned=False)
    parser.add_argument("--monitor", metavar="NAME", help=monitor_help)
    key_help = "push.key from asd-train keygen: sign with it"
    if fleet:
        sign = parser.add_mutually_exclusive_group(required=True)
        sign.add_argument("--key", type=Path, metavar="FILE", help=key_help)
        sign.add_argument(
            "--unsigned",
            action="store_true",
            help="send unsigned (a device refuses it unless push.allow_unsigned is true)",
        )
    else:
        parser.add_argument("--key", type=Path, required=True, metavar="FILE", help=key_help)
    parser.add_argument(
        "--broker", required=True, type=parse_broker, metavar="HOST[:PORT]", help="MQTT broker"
    )
    parser.add_argument("--prefix", metavar="P", help="the device's topic prefix (default asd/ID)")
    if fleet:
        parser.add_argument(
            "--fleet-prefix",
            default="asd/fleet",
            metavar="P",
            help="with --all: the fleet prefix (the devices' push.fleet_prefix; default "
            "%(default)s)",
        )
        parser.add_argument(
            "--base",
            default="asd",
            metavar="B",
            help="with --all: find devices from retained B/+/status (default %(default)s)",
        )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help=f"seconds to wait for the answers to the {what} (default %(default)g)",
    )
    parser.add_argument("--username", metavar="U", help="broker user name")
    parser.add_argument("--password-file", type=Path, metavar="F", help="file holding the password")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (default port 8883)")
    parser.add_argument("--ca-file", type=Path, metavar="F", help="CA certificate(s) for --tls")
    parser.add_argument("--cert-file", type=Path, metavar="F", help="client certificate for --tls")
    parser.add_argument("--key-file", type=Path, metavar="F", help="client certificate's key")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def check_usage(args: argparse.Namespace) -> str | None:
    """A problem with the options that argparse cannot see, or None."""
    if args.timeout <= 0:
        return f"--timeout must be positive, got {args.timeout:g}"
    names = {"--device": args.device, "--monitor": args.monitor}
    for option, value in names.items():
        if value is not None and (not value or any(c in value for c in "/+#\x00")):
            return f"{option}: expected a name without / + # or NUL, got {value!r}"
    prefixes = {"--prefix": args.prefix, "--fleet-prefix": args.fleet_prefix, "--base": args.base}
    for option, value in prefixes.items():
        if value is not None and (not value.strip("/") or any(c in value for c in "+#\x00")):
            return f"{option}: expected a topic prefix without + # or NUL, got {value!r}"
    if args.all and args.prefix:
        return "--prefix names one device's prefix; with --all use --base and --fleet-prefix"
    if (args.cert_file or args.ca_file) and not args.tls:
        return "--ca-file and --cert-file need --tls"
    if args.password_file and not args.username:
        return "--password-file needs --username"
    return None


def private_key(args: argparse.Namespace) -> tuple[Any, int]:
    """(the signing key or None for --unsigned, 0) or (None, exit code) after printing why."""
    if args.unsigned:
        sayer(args)("unsigned: a device accepts it only with push.allow_unsigned: true")
        return None, EXIT_OK
    if not args.key.is_file():
        return None, fail(args, f"{args.key}: no such key file (asd-train keygen)", EXIT_NOINPUT)
    try:
        return load_private_key(args.key), EXIT_OK
    except KeyFileError as exc:
        return None, fail(args, str(exc), EXIT_DATA)


def sayer(args: argparse.Namespace) -> Callable[[str], None]:
    """A function printing progress lines on stderr (nothing with --quiet)."""

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    return say


def fail(args: argparse.Namespace, message: str, code: int) -> int:
    """Print ``asd-train <command>: message`` on stderr; return ``code``."""
    print(f"asd-train {args.command}: {message}", file=sys.stderr)
    return code


def _size(n_bytes: int) -> str:
    return f"{n_bytes} bytes" if n_bytes < 10_000 else f"{n_bytes / 1e6:.2f} MB"
