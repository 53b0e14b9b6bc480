"""``make demo``: asd-edge hears a synthetic machine through a virtual mic and alerts over MQTT.

python -m devkit.demo [--out demo-output] [--model PATH] [--seed N] [--anomalies N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from asd_edge.detector import Detector
from asd_edge.errors import ModelError
from devkit import DevkitError, Unavailable
from devkit.broker import HOST, Broker, Received, Subscriber
from devkit.broker import check_tools as check_broker_tools
from devkit.console import Console
from devkit.daemonproc import DaemonProcess, asd_edge_command
from devkit.report import AlertBook, describe_phase, evaluate, render_summary
from devkit.scenario import lead_in_threshold, plan
from devkit.vmic import VirtualMic, virtual_mic
from devkit.vmic import check_tools as check_mic_tools
from training.synth import ANOMALY_KINDS, Stream

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "models" / "demo.onnx"
LEVEL_MODEL = REPO / "models" / "level.onnx"
DEVICE_ID = "demo"
PREFIX = f"asd/{DEVICE_ID}"
MONITOR = "main"
PRE_S = 2.0
POST_S = 2.0
HOLD_S = 1.0
LEVEL_MARGIN_DB = 1.0
"""The untrained level model alarms 1 dB above the loudest window of the normal lead-in."""
STOP_BEFORE_END_S = 1.0
"""The daemon is stopped this long before the stream ends, never after: once paplay is
done the microphone hears digital silence, which a trained model rightly finds abnormal."""
OUTPUTS = ("state", "stream.wav", "stream.json", "asd-edge.yaml", "daemon.log", "summary.json")
"""What a run writes in the output folder (and a second run replaces)."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_INTERRUPTED = 130
EXIT_CODES = """exit codes:
  0   the pipeline worked end to end (detection quality is reported, not judged)
  1   the pipeline failed: the daemon exited non-zero, an alert got no end, a clip was not saved
  2   bad command-line usage
  69  a service could not start: mosquitto, PulseAudio, or the daemon itself
  130 interrupted (Ctrl-C or SIGTERM); everything started was stopped
"""


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived (Ctrl-C is KeyboardInterrupt)."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m devkit.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m devkit.demo",
        description=(
            "Play a synthetic machine with injected anomalies into a virtual microphone\n"
            "while asd-edge listens; print each alert as the MQTT broker delivers it and\n"
            "each clip as it is saved, then a summary: anomalies detected and missed, false\n"
            "alarms, onset-to-alert latency. Starts a private mosquitto and PulseAudio and\n"
            "stops everything it started; the output folder stays for you to look at."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="output folder: stream, clips, spectrograms, daemon log (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="ONNX model to run (default: models/demo.onnx, else models/level.onnx)",
    )
    parser.add_argument("--seed", type=int, default=0, help="stream seed (default: %(default)s)")
    parser.add_argument(
        "--anomalies",
        type=int,
        metavar="N",
        default=len(ANOMALY_KINDS),
        help="how many anomalies to inject, one every 14 s (default: %(default)s)",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(ANOMALY_KINDS),
        help="anomaly kinds, cycled (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no step lines or progress bar")
    return parser


def choose_model(requested: Path | None, console: Console) -> Path:
    """``--model``, else models/demo.onnx, else the untrained level model (said loudly)."""
    if requested is not None:
        return requested
    if DEMO_MODEL.is_file():
        return DEMO_MODEL
    console.say(
        f"{DEMO_MODEL.relative_to(REPO)} not found: using the untrained level model "
        f"({LEVEL_MODEL.relative_to(REPO)}); it hears loudness only, so expect misses"
    )
    return LEVEL_MODEL


def clear_outputs(out: Path) -> None:
    """Remove what an earlier run left in ``out`` (only the demo's own outputs)."""
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def daemon_config(
    out: Path, model: Path, threshold: float | None, broker: Broker
) -> dict[str, Any]:
    """The configuration the demo's daemon runs with."""
    monitor: dict[str, Any] = {"name": MONITOR, "model": str(model.resolve()), "hold_s": HOLD_S}
    if threshold is not None:
        monitor["threshold"] = round(threshold, 3)
    return {
        "device_id": DEVICE_ID,
        "state_dir": str((out / "state").resolve()),
        "input": {"device": VirtualMic.device, "sample_rate": 16000},
        "monitors": [monitor],
        "mqtt": {
            "host": HOST,
            "port": broker.port,
            "reconnect_min_s": 0.2,
            "homeassistant": {"enabled": False},
        },
        "clips": {"pre_s": PRE_S, "post_s": POST_S},
        "logging": {"level": "info", "format": "json"},
    }


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


class Demo:
    """One run: services, stream, daemon, playback, summary; ``run`` cleans up after itself."""

    def __init__(self, scenario: Stream, detector: Detector, out: Path, console: Console) -> None:
        self.scenario = scenario
        self.detector = detector
        self.model = Path(detector.path)
        self.out = out
        self.console = console
        self.book = AlertBook()
        self.stack = ExitStack()
        self.playback_start_s: float | None = None
        """Wall-clock time paplay was started: stream second 0."""
        self.exit_code: int | None = None
        """The daemon's exit code once stopped."""

    def run(self) -> int:
        """Do the demo; DevkitError if a service would not start. Stops everything it
        started, whatever happens (a second Ctrl-C does not cut the cleanup short)."""
        try:
            broker, mic = self._services()
            wav, threshold = self._stream()
            sub = broker.subscriber(f"{PREFIX}/#", listener=self._on_message)
            with self.console.playback(self.scenario.duration_s) as update:
                player = self._play(wav, mic)
                daemon = self._start_daemon(broker, mic, sub, threshold)
                self._watch(daemon, player, update)
            self.console.step("stopping the daemon (SIGTERM) while the stream still plays")
            self.exit_code = daemon.stop()
            self.console.note(f"    daemon exited with {self.exit_code}")
            _stop_player(player)
            time.sleep(0.3)  # the last alerts the daemon handed over while stopping
            sub.close()
            return self._report(threshold)
        finally:
            with _signals_held():
                self.stack.close()

    def _services(self) -> tuple[Broker, VirtualMic]:
        runtime = Path(tempfile.mkdtemp(prefix="asd-demo-"))
        self.stack.callback(shutil.rmtree, runtime, True)
        broker = Broker(runtime / "broker")
        self.stack.callback(broker.close)
        broker.start()
        self.console.step(f"broker: mosquitto on {HOST}:{broker.port}")
        mic = self.stack.enter_context(virtual_mic())
        self.console.step(f"microphone: PulseAudio null sink 'vmic', heard on ALSA '{mic.device}'")
        return broker, mic

    def _stream(self) -> tuple[Path, float | None]:
        """Write the stream; for the level model, its fixed threshold from the lead-in."""
        scenario = self.scenario
        self.out.mkdir(parents=True, exist_ok=True)
        clear_outputs(self.out)
        samples = scenario.render()
        wav = scenario.write(self.out, samples)
        kinds = ", ".join(a.kind for a in scenario.anomalies)
        self.console.step(
            f"stream: {scenario.duration_s:.0f} s of machine {scenario.machine_id} (seed "
            f"{scenario.seed}), {len(scenario.anomalies)} anomalies ({kinds}) -> {wav}"
        )
        if self.detector.spec.kind != "level":
            return wav, None
        threshold = lead_in_threshold(
            self.detector, samples, scenario.sample_rate, scenario.lead_s, LEVEL_MARGIN_DB
        )
        self.console.say(
            f"threshold {threshold:.2f} dBFS, fixed: {LEVEL_MARGIN_DB:g} dB above the loudest "
            f"window of the stream's first {scenario.lead_s:g} s of normal sound "
            "(the level model learned nothing)"
        )
        return wav, threshold

    def _on_message(self, message: Received) -> None:
        """paho's thread: print each alert phase as it arrives."""
        if message.topic != f"{PREFIX}/alert":
            return
        before = len(self.book.input_alerts)
        added = self.book.add(message)
        for alert in self.book.input_alerts[before:]:
            self.console.say(
                f"input alert: {alert.get('condition')} {alert.get('phase')} "
                f"(channel {alert.get('channel')}, {alert.get('details')})"
            )
        if added is not None:
            record, phase = added
            for line in describe_phase(record, phase, self.playback_start_s):
                self.console.say(line)

    def _play(self, wav: Path, mic: VirtualMic) -> subprocess.Popen[bytes]:
        """Start paplay. It runs before the daemon starts: the daemon then hears the
        machine from its first sample (digital silence would be an anomaly of its own)."""
        self.console.step(
            f"playing {wav.name} ({self.scenario.duration_s:.0f} s) into the microphone; "
            f"the daemon starts during its first {self.scenario.lead_s:g} s of normal sound"
        )
        self.playback_start_s = time.time()
        player = mic.play(wav, wait=False)
        self.stack.callback(_stop_player, player)
        return player

    def _start_daemon(
        self, broker: Broker, mic: VirtualMic, sub: Subscriber, threshold: float | None
    ) -> DaemonProcess:
        """Start ``asd-edge run``; wait for daemon_started and status online, which must
        come before the first anomaly plays."""
        config_path = self.out / "asd-edge.yaml"
        config = daemon_config(self.out, self.model, threshold, broker)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        daemon = DaemonProcess(config_path, env=mic.env, log_path=self.out / "daemon.log")
        self.stack.callback(daemon.stop)
        assert self.playback_start_s is not None
        ready_by = self.playback_start_s + self.scenario.anomalies[0].start_s
        started = daemon.wait_for("daemon_started", max(1.0, ready_by - time.time()))
        _wait_online(sub, daemon, max(1.0, ready_by - time.time()))
        spec = self.detector.spec
        in_force = spec.threshold if threshold is None else threshold
        self.console.step(
            f"daemon: pid {daemon.pid}, model {spec.name} {spec.version} ({spec.kind}), "
            f"threshold {in_force:.4g}, capture {started.get('sample_rate')} Hz, status online "
            f"{time.time() - self.playback_start_s:.1f} s into the stream"
        )
        return daemon

    def _watch(
        self,
        daemon: DaemonProcess,
        player: subprocess.Popen[bytes],
        update: Callable[[float], None],
    ) -> None:
        """Until the last anomaly's alert has ended and its clip's post-roll passed, or
        the stream is about to end, or the daemon or paplay stopped by themselves."""
        assert self.playback_start_s is not None
        t0 = self.playback_start_s
        scenario = self.scenario
        settle_s = scenario.anomalies[-1].end_s + self.detector.spec.window_s + HOLD_S + POST_S
        stop_by_s = scenario.duration_s - STOP_BEFORE_END_S
        while True:
            elapsed_s = time.time() - t0
            update(elapsed_s)
            if daemon.proc.poll() is not None or player.poll() is not None:
                break
            if elapsed_s >= stop_by_s or (elapsed_s >= settle_s and not self.book.open_count()):
                break
            time.sleep(0.1)
        if player.returncode not in (None, 0):
            raise DevkitError(f"paplay exited with {player.returncode}")

    def _report(self, threshold: float | None) -> int:
        """Print the summary, write summary.json; the exit code."""
        assert self.playback_start_s is not None and self.exit_code is not None
        t0 = self.playback_start_s
        spec = self.detector.spec
        outcome = evaluate(
            self.scenario.anomalies, self.book.alerts(), playback_start_s=t0, slack_s=spec.window_s
        )
        if self.exit_code != 0:
            log = self.out / "daemon.log"
            outcome.problems.insert(0, f"the daemon exited with {self.exit_code} (see {log})")
        outcome.problems += [f"invalid alert message {m}" for m in self.book.invalid]
        self.console.say(render_summary(outcome, playback_start_s=t0))
        summary = {
            "model": {"path": str(self.model), "name": spec.name, "kind": spec.kind},
            "threshold": spec.threshold if threshold is None else threshold,
            "daemon_exit_code": self.exit_code,
            "stream": self.scenario.as_dict(),
            **outcome.as_dict(t0),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.console.say(
            f"  output folder:      {self.out.resolve()}\n"
            "    stream.wav and stream.json (what was played, the anomalies in it),\n"
            "    state/clips/ (clips, spectrograms, sidecars),\n"
            "    daemon.log (the daemon's JSON log), asd-edge.yaml, summary.json"
        )
        if outcome.problems:
            problems = "\n".join(f"  - {p}" for p in outcome.problems)
            self.console.say(f"\nPIPELINE FAILED:\n{problems}")
            return EXIT_FAILED
        self.console.say(
            "\npipeline OK: the daemon started and stopped with 0, every alert ended, "
            "every clip was saved"
        )
        return EXIT_OK


def run(args: argparse.Namespace, console: Console) -> int:
    """Check the arguments and the tools, then run the demo."""
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    try:
        scenario = plan(args.anomalies, kinds=kinds, seed=args.seed)
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    model = choose_model(args.model, console)
    try:
        detector = Detector(model)
    except ModelError as exc:
        print(f"demo: {'--model ' if args.model is not None else ''}{exc}", file=sys.stderr)
        return EXIT_USAGE if args.model is not None else EXIT_FAILED
    asd_edge_command()  # each raises Unavailable naming what to install
    check_broker_tools()
    check_mic_tools()
    return Demo(scenario, detector, args.out, console).run()


def _wait_online(sub: Subscriber, daemon: DaemonProcess, timeout_s: float) -> None:
    """Wait for the retained ``status`` to say online; DevkitError if it does not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and daemon.proc.poll() is None:
        statuses = sub.on(f"{PREFIX}/status")
        if statuses and json.loads(statuses[-1].payload).get("state") == "online":
            return
        time.sleep(0.05)
    raise DevkitError(
        f"the daemon did not report online on {PREFIX}/status in time:\n{daemon.log_tail()}"
    )


def _stop_player(player: subprocess.Popen[bytes]) -> None:
    if player.poll() is None:
        player.terminate()
        try:
            player.wait(timeout=5)
        except subprocess.TimeoutExpired:
            player.kill()
            player.wait()


@contextmanager
def _signals_held() -> Iterator[None]:
    """Cleanup is not cut short by a second Ctrl-C or SIGTERM."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m devkit.demo``."""
    args = build_parser().parse_args(argv)
    console = Console(quiet=args.quiet)
    previous = {
        sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        return run(args, console)
    except Unavailable as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except DevkitError as exc:
        print(f"demo: a service failed: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (KeyboardInterrupt, Interrupted) as exc:
        reason = str(exc) or "Ctrl-C"
        print(f"demo: interrupted ({reason}); everything it started is stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
