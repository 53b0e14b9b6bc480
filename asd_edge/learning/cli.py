"""``asd-edge learn``: learn a monitor's normal sound, in the running daemon through the
broker (``--seconds``), or from recordings on this machine (``--from``), without torch.

Live: the command goes to ``<prefix>/cmd/learn`` of the daemon the configuration
describes; a progress bar follows ``<prefix>/learn`` until the learned model runs
(exit 0) or the learning fails (the reason, exit 1). Ctrl-C cancels it.

Offline: every file (or every audio file in a folder) is read in blocks, resampled and
kept as window statistics (``Collector``); a file that cannot be read is named and
skipped. The same fit as the daemon's (``fitting.fit_recordings``) writes ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from ..config import LEARN_MIN_S, Config, MonitorConfig
from ..errors import AudioDecodeError, LearnError

__all__ = ["AUDIO_SUFFIXES", "EXIT_FAILED", "EXIT_NOINPUT", "add_arguments", "learn"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""The learning failed or was refused or cancelled; the reason is printed."""
EXIT_NOINPUT: Final = 66
"""``--from`` names nothing readable."""
EXIT_UNAVAILABLE: Final = 69
"""The broker cannot be reached, or the daemon did not answer."""
EXIT_CONFIG: Final = 78
AUDIO_SUFFIXES: Final = (".wav", ".flac", ".mp3", ".mp4", ".m4a", ".ogg", ".opus", ".aac")
"""What ``--from DIR`` reads."""
ANSWER_TIMEOUT_S: Final = 15.0
"""How long the daemon has to answer the command."""

EXIT_HELP = """exit codes:
  0   the learned model runs (live) or is written (--from)
  1   the learning was refused, failed or was cancelled (the reason is printed)
  2   bad command-line usage
  66  --from names no readable audio
  69  the broker cannot be reached or the daemon does not answer
  78  invalid configuration (the message names the key)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        return _offline(config, monitor, args.sources, args.out)
    return _live(config, monitor.name, args)


def _monitor(config: Config, named: str | None) -> MonitorConfig:
    if named is None and len(config.monitors) == 1:
        return config.monitors[0]
    names = ", ".join(m.name for m in config.monitors) or "none"
    for m in config.monitors:
        if m.name == named:
            return m
    if named is None:
        raise LearnError(f"--monitor: name the monitor to learn (monitors: {names})")
    raise LearnError(f"--monitor: {named!r} does not exist (monitors: {names})")


# --- offline ------------------------------------------------------------------------------


def _files(sources: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for src in sources:
        if src.is_dir():
            out += sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            out.append(src)
    return out


def _offline(
    config: Config, monitor: MonitorConfig, sources: Sequence[Path], out: Path | None
) -> int:
    from tqdm import tqdm

    from ..audiofile import open_audio, to_mono
    from ..resample import StreamResampler
    from .calibration import CalibrationConfig
    from .fitting import fit_recordings
    from .recording import MIN_PIECE_S
    from .session import PIECES
    from .windows import Collector, features_for

    learn_cfg = config.learn
    files = _files(sources)
    if not files:
        print(f"asd-edge learn: no audio in {', '.join(map(str, sources))}", file=sys.stderr)
        return EXIT_NOINPUT
    features = features_for(learn_cfg.sample_rate, 1.0, learn_cfg.n_mels)
    readers, skipped = [], []
    for path in files:
        try:
            readers.append(open_audio(path))
        except AudioDecodeError as exc:
            skipped.append(f"{path}: {exc.problem}")
    total_s = sum(r.frames / r.sample_rate for r in readers)
    piece_s = max(MIN_PIECE_S, total_s / PIECES) if len(readers) == 1 else None
    collector = Collector(
        features,
        1.0,
        monitor.hop_s,
        piece_s=piece_s,
        silence_dbfs=config.health.silence_dbfs,
        clipping_ratio=config.health.clipping_ratio,
    )
    bar = tqdm(
        total=round(total_s),
        unit="s",
        desc="reading",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    )
    for reader in readers:
        with reader:
            collector.begin(Path(reader.name).name)
            resampler = StreamResampler(reader.sample_rate, learn_cfg.sample_rate)
            try:
                for block in reader.blocks():
                    collector.feed(resampler(to_mono(block, None)))
                    bar.update(block.shape[0] / reader.sample_rate)
                collector.feed(resampler.flush())
            except AudioDecodeError as exc:
                skipped.append(f"{reader.name}: {exc.problem}")
    bar.close()
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    recordings = collector.recordings()
    print(
        f"{collector.seconds:.0f} s of usable normal sound from {len(readers)} file(s)"
        + (f"; skipped windows: {_reasons(collector.skipped_s)}" if collector.skipped_s else ""),
        file=sys.stderr,
    )
    if not recordings:
        return EXIT_NOINPUT
    calibration = CalibrationConfig(
        target_fa_per_day=learn_cfg.target_fa_per_day,
        hop_s=monitor.hop_s,
        onset_k=monitor.onset_k,
        onset_n=monitor.onset_n,
        hold_s=monitor.hold_s,
        refractory_s=monitor.refractory_s,
    )
    with _fit_bar() as progress:
        try:
            learned = fit_recordings(
                recordings,
                kind=learn_cfg.kind,
                params={"n_mels": learn_cfg.n_mels},
                features=features,
                window_s=1.0,
                config=calibration,
                name=f"{config.device_id}-{monitor.name}-learned",
                data_sha256=_files_sha256(files),
                training={"source": "learn", "files": len(files), "monitor": monitor.name},
                pieces=piece_s is not None,
                progress=progress,
            )
        except LearnError as exc:
            print(f"asd-edge learn: {exc}", file=sys.stderr)
            return EXIT_FAILED
    from ..durable import write_atomic

    target = out or Path(f"{monitor.name}-learned.onnx")
    write_atomic(target, learned.onnx, mode=0o644)
    print(
        f"{target}: {learned.metadata['name']} {learned.metadata['version']}, "
        f"{learned.chosen.name}, threshold {learned.threshold:.4g}, predicted "
        f"{learned.calibration.get('predicted_fa_per_day', float('nan')):.2g} false alarms/day, "
        f"fitted in {learned.fit_s:.1f} s",
        file=sys.stderr,
    )
    if learned.warning:
        print(f"warning: {learned.warning}", file=sys.stderr)
    print(
        f"run it: set monitors[].model to {target} (the daemon swaps it in when the file "
        "changes), or push it with asd-train push",
        file=sys.stderr,
    )
    print(target)
    return EXIT_OK


def _files_sha256(files: Sequence[Path]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.name).encode())
        with contextlib.suppress(OSError):
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _fit_bar() -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(
        total=100, unit="%", desc="fitting", file=sys.stderr, disable=not sys.stderr.isatty()
    )
    try:
        yield lambda done, total: bar.update(round(100 * done / total) - bar.n)
    finally:
        bar.close()


def _reasons(skipped: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f} s" for k, v in sorted(skipped.items(), key=lambda i: -i[1]))


# --- live, through the broker -------------------------------------------------------------


def _live(config: Config, monitor: str, args: argparse.Namespace) -> int:
    from paho.mqtt.client import Client, MQTTMessage, MQTTv5, MQTTv311
    from paho.mqtt.enums import CallbackAPIVersion
    from tqdm import tqdm

    from ..mqtt.client import read_password, tls_context

    cfg = config.mqtt
    if not cfg.enabled:
        print(
            "asd-edge learn: mqtt.enabled is false: learn --from recordings instead",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    prefix = cfg.topic_prefix
    request_id = f"cli-{os.getpid()}-{int(time.time() * 1000)}"
    answers: list[dict[str, Any]] = []
    progress: list[dict[str, Any]] = []
    changed = threading.Event()

    def on_message(_c: Client, _u: Any, msg: MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        if msg.topic.endswith("/cmd_result") and body.get("id") == request_id:
            answers.append(body)
        elif msg.topic.endswith("/learn") and (args.cancel or body.get("id") == request_id):
            progress.append(body)
        changed.set()

    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"asd-edge-learn-{os.getpid()}",
        protocol=MQTTv5 if cfg.protocol == "5" else MQTTv311,
    )
    password = read_password(cfg.password_file) if cfg.password_file else cfg.password
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    if cfg.tls.enabled:
        client.tls_set_context(tls_context(cfg))
        client.tls_insecure_set(cfg.tls.insecure)
    client.on_message = on_message
    try:
        client.connect(cfg.host, cfg.port, cfg.keepalive_s)
    except OSError as exc:
        print(
            f"asd-edge learn: cannot reach the broker {cfg.host}:{cfg.port}: {exc}", file=sys.stderr
        )
        return EXIT_UNAVAILABLE
    client.subscribe([(f"{prefix}/cmd_result", 1), (f"{prefix}/learn", 1)])
    client.loop_start()
    body: dict[str, Any] = {"id": request_id, "monitor": monitor}
    if args.cancel:
        body["cancel"] = True
    else:
        body.update(seconds=args.seconds, append=bool(args.append))
    client.publish(f"{prefix}/cmd/learn", json.dumps(body), qos=1)
    try:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while not answers:
            if time.monotonic() > deadline:
                print(
                    f"asd-edge learn: no answer from the daemon on {prefix} within "
                    f"{ANSWER_TIMEOUT_S:g} s (is it running?)",
                    file=sys.stderr,
                )
                return EXIT_UNAVAILABLE
            changed.wait(0.2)
            changed.clear()
        answer = answers[0]
        if not answer.get("ok"):
            print(f"asd-edge learn: refused: {answer.get('error')}", file=sys.stderr)
            return EXIT_FAILED
        if args.cancel:
            print(
                f"cancelled the learning of {answer.get('result', {}).get('monitor')}",
                file=sys.stderr,
            )
            return EXIT_OK
        timeout = args.timeout or 2 * args.seconds + 600
        return _follow(progress, changed, time.monotonic() + timeout, args.seconds, tqdm)
    except KeyboardInterrupt:
        client.publish(
            f"{prefix}/cmd/learn",
            json.dumps({"id": request_id + "-cancel", "cancel": True, "monitor": monitor}),
            qos=1,
        ).wait_for_publish(5)
        print(
            "interrupted: the learning is cancelled; the model that ran keeps running",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        client.loop_stop()
        client.disconnect()


def _follow(
    progress: list[dict[str, Any]],
    changed: threading.Event,
    deadline: float,
    seconds: float,
    tqdm: Any,
) -> int:
    bar = tqdm(
        total=round(seconds),
        unit="s",
        desc="listening",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    )
    try:
        while time.monotonic() < deadline:
            changed.wait(0.5)
            changed.clear()
            if not progress:
                continue
            last = progress[-1]
            state = last.get("state")
            if state == "collecting":
                bar.update(
                    min(round(seconds), round(float(last.get("seconds_collected", 0)))) - bar.n
                )
            elif state == "fitting":
                bar.set_description("fitting")
                bar.update(round(seconds) - bar.n)
            elif state == "done":
                model = last.get("model") or {}
                bar.close()
                print(
                    f"learned: {model.get('name')} {model.get('version')} runs on "
                    f"{last.get('monitor')}",
                    file=sys.stderr,
                )
                fit = last.get("fit") or {}
                if fit.get("warning"):
                    print(f"warning: {fit['warning']}", file=sys.stderr)
                print(json.dumps(model))
                return EXIT_OK
            elif state in ("failed", "cancelled"):
                bar.close()
                print(f"asd-edge learn: {state}: {last.get('error') or state}", file=sys.stderr)
                return EXIT_FAILED
        print(
            "asd-edge learn: gave up waiting (--timeout); the daemon keeps learning",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        bar.close()
