"""The ``asd-edge`` command line: run, check-config, devices, score, record; learn and
feedback (``asd_edge.learning.cli``); web (``asd_edge.web.cli``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .assembly import check_services, open_input
from .audiofile import write_wav
from .capture import list_input_devices
from .config import (
    DEFAULT_CONFIG_PATH,
    HOP_MAX_S,
    HOP_MIN_S,
    Config,
    MonitorConfig,
    config_to_dict,
    load_config,
)
from .daemon import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, Daemon
from .detector import Detector
from .errors import AsdEdgeError, AudioError, ChildFailed, ConfigError, ModelError
from .filesource import FileSource
from .jsonvalues import json_safe
from .learning import cli as learning_cli
from .logs import configure_logging
from .modelstore import running_model
from .scoring import score_file
from .web import cli as web_cli

__all__ = ["main"]

EXIT_FAILED = 1
"""Some of the work failed (e.g. a file that could not be scored); the rest was done."""

EXIT_CODES = """exit codes:
  0   success
  1   some inputs failed (each is reported); the others were processed
  2   bad command-line usage
  69  the audio input is unavailable, or push.key_file could not be checked now
      (EX_UNAVAILABLE: systemd tries again)
  70  internal error, logged with its traceback (EX_SOFTWARE)
  78  invalid configuration or model (EX_CONFIG); the message names the key or field
"""


def positive_float(text: str) -> float:
    """argparse type: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def hop_seconds(text: str) -> float:
    """argparse type: a hop within the range ``monitors[].hop_s`` allows."""
    value = positive_float(text)
    if not HOP_MIN_S <= value <= HOP_MAX_S:
        raise argparse.ArgumentTypeError(
            f"expected {HOP_MIN_S:g}-{HOP_MAX_S:g} seconds (as monitors[].hop_s), got {text!r}"
        )
    return value


def _config_path(arg: str | None) -> str | None:
    """``--config``, else $ASD_EDGE_CONFIG, else /etc/asd-edge/config.yaml if it exists."""
    if arg:
        return arg
    env = os.environ.get("ASD_EDGE_CONFIG")
    if env:
        return env
    return str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.is_file() else None


def _load(arg: str | None) -> Config:
    return load_config(_config_path(arg))


def _config_error(exc: ConfigError | ModelError) -> int:
    problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
    print("configuration error:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _unchecked(exc: ChildFailed) -> int:
    """A file that could not be checked now (its child gave no answer): not a
    configuration error, so systemd restarts the daemon rather than giving up."""
    print(f"push.key_file: {exc}", file=sys.stderr)
    return EXIT_UNAVAILABLE


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or SIGINT."""
    try:
        config = _load(args.config)
        if not config.monitors:
            raise ConfigError(
                "monitors: at least one monitor is needed to run, got none "
                "(see config/asd-edge.yaml for an example)"
            )
        configure_logging(config.logging.level, config.logging.format)
        daemon = Daemon.from_config(config)
    except ConfigError as exc:
        return _config_error(exc)
    except AudioError as exc:  # a replay file that cannot be read
        return _config_error(ConfigError(f"input.device: {exc}"))
    except ChildFailed as exc:  # push.key_file could not be checked: try again later
        return _unchecked(exc)
    daemon.install_signal_handlers()
    return daemon.run()


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration, load its models and read every file it names as the
    daemon will (push.key_file, the MQTT password and TLS files); print the effective
    configuration."""
    try:
        config = _load(args.config)
        check_services(config)
    except ConfigError as exc:
        return _config_error(exc)
    except ChildFailed as exc:
        return _unchecked(exc)
    print(f"# effective configuration of {config.source or 'the built-in defaults'}")
    root = Path(config.state_dir) / "models"
    for monitor in config.monitors:  # a pushed model may run instead of the configured one
        try:
            runs = running_model(monitor, config.detector.threads, root)
        except (ModelError, OSError) as exc:
            runs = f"the configured file (the stored models cannot be read: {exc})"
        print(f"# monitor {monitor.name} runs {runs}")
    print(yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK


def cmd_devices(args: argparse.Namespace) -> int:
    """List the input devices PortAudio sees."""
    try:
        devices = list_input_devices()
    except AudioError as exc:  # PortAudio itself is missing
        print(f"cannot list devices: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(devices, indent=2))
        return EXIT_OK if devices else EXIT_UNAVAILABLE
    if not devices:
        print(
            "no input devices found (is the user in group 'audio'? is a sound server running?)",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    header = f"{'index':>5}  {'channels':>8}  {'default Hz':>10}  {'rates accepted':<40}"
    print(f"  {header}  name (host API)")
    for d in devices:
        mark = "*" if d.get("default") else " "
        rates = ",".join(str(r) for r in d.get("rates", []))
        print(
            f"{mark:2}{d['index']:>5}  {d['max_input_channels']:>8}  "
            f"{float(d['default_samplerate']):>10.0f}  {rates:<40}  {d['name']} ({d['hostapi']})"
        )
    print("* = default input")
    return EXIT_OK


def _score_settings(args: argparse.Namespace, config: Config | None) -> MonitorConfig:
    """The monitor whose hop and decision rule ``score`` uses: ``--monitor`` of
    ``--config``, its first monitor, or the defaults of a ``monitors[]`` entry."""
    if config is None:
        if args.monitor is not None:
            raise ConfigError("--monitor: needs --config to name a monitor of")
        return MonitorConfig(name="score", model=str(args.model))
    named = [m for m in config.monitors if args.monitor in (None, m.name)]
    if not named:
        wanted = f"no monitor named {args.monitor!r}" if args.monitor else "no monitors"
        raise ConfigError(f"--monitor: {wanted} in {config.source}")
    return named[0]


def cmd_score(args: argparse.Namespace) -> int:
    """Score audio files with a model, exactly as the daemon would, faster than real time."""
    try:
        config = load_config(args.config) if args.config else None
        detector = Detector(args.model, threads=config.detector.threads if config else 1)
        settings = _score_settings(args, config)
    except (ConfigError, ModelError) as exc:
        return _config_error(exc)
    failed = 0
    for path in args.files:
        try:
            report = score_file(
                path,
                detector,
                settings,
                channel=args.channel,
                threshold=args.threshold,
                hop_s=args.hop_s,
            )
        except (AsdEdgeError, ValueError, MemoryError) as exc:  # this file only
            failed += 1
            report = {"file": path, "error": str(exc)}
        print(json.dumps(json_safe(report), ensure_ascii=False, allow_nan=False), flush=True)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_record(args: argparse.Namespace) -> int:
    """Record the configured input into WAV segments (training data)."""
    try:
        config = _load(args.config)
    except ConfigError as exc:
        return _config_error(exc)
    cfg = config.input
    if not 0 <= args.channel < cfg.channels:
        print(
            f"--channel: expected 0-{cfg.channels - 1} (input.channels), got {args.channel}",
            file=sys.stderr,
        )
        return 2
    source = open_input(
        cfg, preferred_rate=args.rate, ring_s=max(cfg.ring_s, 2 * args.segment_s + 5)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        source.start()
    except AudioError as exc:
        print(f"cannot open the input: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    ring = source.ring(args.channel)
    rate = source.sample_rate
    segment = round(args.segment_s * rate)
    total = round(args.seconds * rate)
    begin = ring.written
    done = 0
    print(
        f"recording {args.seconds:g} s at {rate} Hz from channel {args.channel} into {out}",
        file=sys.stderr,
    )
    try:
        while done < total:
            time.sleep(0.1)
            source.poll(time.monotonic())
            want = min(segment, total - done)
            if ring.written - (begin + done) < want:
                if not (isinstance(source, FileSource) and source.finished):
                    continue
                want = ring.written - (begin + done)  # a replayed file ended: its rest
                if want <= 0:
                    print(f"the replayed file ended after {done / rate:g} s", file=sys.stderr)
                    break
            chunk = ring.read(begin + done, begin + done + want)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            path = out / f"{config.device_id}_ch{args.channel}_{stamp}.wav"
            write_wav(path, chunk.data, rate)
            if chunk.lost:
                print(f"warning: {chunk.lost} samples lost before {path}", file=sys.stderr)
            print(path, flush=True)
            done += want
    except KeyboardInterrupt:
        print("interrupted; the segments above are complete", file=sys.stderr)
    except AudioError as exc:
        print(f"the input failed: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        source.stop()
    return EXIT_OK


def cmd_with_config(args: argparse.Namespace) -> int:
    """``asd-edge learn``, ``feedback`` and ``web``: the configuration, then ``args.run``."""
    try:
        config = _load(args.config)
    except ConfigError as exc:
        return _config_error(exc)
    code: int = args.run(config, args)
    return code


def _command(
    sub: Any, name: str, func: Any, *, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help lists the exit codes and which runs ``func``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``asd-edge`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="asd-edge",
        description="Listen to a machine, detect abnormal sound with an ONNX model, alert.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"asd-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = (
        "YAML configuration (default: $ASD_EDGE_CONFIG, else /etc/asd-edge/config.yaml "
        "when it exists, else the built-in defaults)"
    )

    run = _command(
        sub,
        "run",
        cmd_run,
        help="run the daemon",
        description="Capture audio and run every configured monitor until "
        "SIGTERM or SIGINT. Logs go to stdout.",
    )
    run.add_argument("--config", metavar="FILE", help=config_help)

    check = _command(
        sub,
        "check-config",
        cmd_check_config,
        help="validate a configuration and its models",
        description="Validate the configuration and load every monitor's "
        "model; print the effective configuration (secrets redacted).",
    )
    check.add_argument("--config", metavar="FILE", help=config_help)

    devices = _command(
        sub,
        "devices",
        cmd_devices,
        help="list audio input devices",
        description="List the input devices PortAudio sees, with their "
        "channels and the sample rates they accept.",
    )
    devices.add_argument("--json", action="store_true", help="print JSON instead of a table")

    score = _command(
        sub,
        "score",
        cmd_score,
        help="score audio files as the daemon would",
        description="Run the daemon's pipeline (resampling, pre-filter, features, model, "
        "decision) over audio files, faster than real time. Prints one JSON object per file: "
        '{"file", "sample_rate", "threshold", "windows": [{"start_s", "end_s", "score"}], '
        '"events": [{"start_s", "end_s", "peak_score", "alert_s"}]} or {"file", "error"}. '
        'A model with a bands output adds "evidence" to each event; one with level metadata '
        'adds "level_dbfs" to each window and "machine": [{"state", "at_s", "since_s", '
        '"level_dbfs"}].',
    )
    score.add_argument("--model", required=True, metavar="M.onnx", help="the model to score with")
    score.add_argument(
        "--config",
        metavar="FILE",
        help="take hop and decision settings from this configuration's monitor",
    )
    score.add_argument(
        "--monitor", metavar="NAME", help="which monitor of --config (default: the first)"
    )
    score.add_argument(
        "--hop-s", type=hop_seconds, metavar="S", help="seconds between windows (default 0.5)"
    )
    score.add_argument("--threshold", type=float, help="override the threshold")
    score.add_argument(
        "--channel", type=int, metavar="C", help="channel of multichannel files (default: mix down)"
    )
    score.add_argument("files", nargs="+", metavar="FILE", help="WAV or anything ffmpeg decodes")

    record = _command(
        sub,
        "record",
        cmd_record,
        help="record training data",
        description="Record the configured input into WAV segments, "
        "e.g. normal sound of a machine to train a model on.",
    )
    record.add_argument("--config", metavar="FILE", help=config_help)
    record.add_argument("--seconds", type=positive_float, required=True, help="how long to record")
    record.add_argument("--out", required=True, metavar="DIR", help="folder for the WAV files")
    record.add_argument(
        "--segment-s",
        type=positive_float,
        default=10.0,
        help="length of each file (default: %(default)s s)",
    )
    record.add_argument("--channel", type=int, default=0, help="input channel (default: 0)")
    record.add_argument(
        "--rate",
        type=int,
        default=16000,
        help="preferred sample rate when input.sample_rate is null (default: %(default)s Hz)",
    )

    learning_cli.register(sub, config_help, cmd_with_config)
    web_cli.register(sub, config_help, cmd_with_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``asd-edge`` console script."""
    args = build_parser().parse_args(argv)
    # Commands other than `run` keep stdout for their output: warnings go to stderr.
    configure_logging("warning", "console", stream=sys.stderr)
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # e.g. `asd-edge score ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
