"""``asd-edge learn --seconds`` and ``asd-edge feedback``: a command sent to the running
daemon through the broker, and its learning followed on ``<prefix>/learn`` with a
progress bar until it ends."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Final

from ..config import Config

__all__ = ["ANSWER_TIMEOUT_S", "remote"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_UNAVAILABLE: Final = 69
EXIT_CONFIG: Final = 78
ANSWER_TIMEOUT_S: Final = 15.0
"""How long the daemon has to answer the command."""


def remote(
    config: Config, command: str, body: dict[str, Any], *, seconds: float, timeout_s: float | None
) -> int:
    """Send ``cmd/<command>`` to the daemon ``config`` describes and follow its learning
    on ``<prefix>/learn`` until it ends (a cancel: until it is answered)."""
    from paho.mqtt.client import Client, MQTTMessage, MQTTv5, MQTTv311
    from paho.mqtt.enums import CallbackAPIVersion
    from tqdm import tqdm

    from ..mqtt.client import read_password, tls_context

    cfg = config.mqtt
    if not cfg.enabled:
        print(
            f"asd-edge {command}: mqtt.enabled is false, so the daemon cannot be reached"
            + (": learn --from recordings instead" if command == "learn" else ""),
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
            got = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(got, dict):
            return
        if msg.topic.endswith("/cmd_result") and got.get("id") == request_id:
            answers.append(got)
        elif msg.topic.endswith("/learn") and got.get("id") == request_id:
            progress.append(got)
        changed.set()

    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"asd-edge-{command}-{os.getpid()}",
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
            f"asd-edge {command}: cannot reach the broker {cfg.host}:{cfg.port}: {exc}",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    client.subscribe([(f"{prefix}/cmd_result", 1), (f"{prefix}/learn", 1)])
    client.loop_start()
    client.publish(f"{prefix}/cmd/{command}", json.dumps({"id": request_id, **body}), qos=1)
    try:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while not answers:
            if time.monotonic() > deadline:
                print(
                    f"asd-edge {command}: no answer from the daemon on {prefix} within "
                    f"{ANSWER_TIMEOUT_S:g} s (is it running?)",
                    file=sys.stderr,
                )
                return EXIT_UNAVAILABLE
            changed.wait(0.2)
            changed.clear()
        answer = answers[0]
        if not answer.get("ok"):
            print(f"asd-edge {command}: refused: {answer.get('error')}", file=sys.stderr)
            return EXIT_FAILED
        if body.get("cancel"):
            print(
                f"cancelled the learning of {answer.get('result', {}).get('monitor')}",
                file=sys.stderr,
            )
            return EXIT_OK
        timeout = timeout_s or 2 * seconds + 600
        return _follow(progress, changed, time.monotonic() + timeout, seconds, tqdm)
    except KeyboardInterrupt:
        if not (answers and answers[0].get("ok")) or body.get("cancel"):
            print("interrupted", file=sys.stderr)  # nothing of ours to cancel
            return EXIT_FAILED
        monitor = (answers[0].get("result") or {}).get("monitor")
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
        total=round(seconds) or 100,
        unit="s" if seconds else "%",
        desc="listening" if seconds else "fitting",
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
            elif state == "fitting" and not seconds:
                bar.update(round(100 * float(last.get("fit_progress", 0))) - bar.n)
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
                marked = last.get("feedback")
                if marked:
                    print(_compared(marked), file=sys.stderr)
                print(json.dumps({**model, **({"feedback": marked} if marked else {})}))
                return EXIT_OK
            elif state in ("failed", "cancelled"):
                bar.close()
                print(f"asd-edge: {state}: {last.get('error') or state}", file=sys.stderr)
                return EXIT_FAILED
        print(
            "asd-edge: gave up waiting (--timeout); the daemon keeps learning",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        bar.close()


def _compared(marked: dict[str, Any]) -> str:
    """How the false alarm's clip scores now against the threshold, in one line."""
    now, threshold = marked.get("score_now"), marked.get("threshold_now")
    then = marked.get("alert_score")
    if not isinstance(now, (int, float)) or not isinstance(threshold, (int, float)):
        return f"alert {marked.get('alert_id')} learned as normal"
    verdict = "below" if now <= threshold else "still above"
    return (
        f"alert {marked.get('alert_id')}: its clip now scores at most {now:.3g}, {verdict} the "
        f"threshold {threshold:.3g} (it alerted at {then if then is None else f'{then:.3g}'})"
    )
