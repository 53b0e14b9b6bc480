"""The model manager: start-up choice, pushes, rollbacks and file swaps, on real ONNX files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs
from support.files import REJECTED_KINDS, rejected_file

from asd_edge.config import Config, parse_config
from asd_edge.detector import Detector
from asd_edge.errors import CommandError, ConfigError, Refused
from asd_edge.modelstore import (
    ModelManager,
    Swap,
    generate_keys,
    load_private_key,
    push_message,
    rollback_message,
)
from asd_edge.modelstore import files as modelfiles
from asd_edge.modelstore import worker as modelstore
from asd_edge.modelstore.checks import NOISE_RMS, check_noise
from asd_edge.mqtt import encode_json

DEVICE = "dev-1"
CAPTURE_RATE = 16000
RING_S = 60.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real models' bytes: the config's (v1), a new one (v2, another threshold), a 48 kHz
    one, one whose 30 s window needs a bigger ring, and a waveform model with a pre-filter."""
    from training.level import build_level_model, build_waveform_level_model

    prefilter = {"type": "butter_bandpass", "low_hz": 20.0, "high_hz": 7000.0, "order": 4}
    built = {
        "v1": build_level_model(threshold_dbfs=-30.0, version="1"),
        "v2": build_level_model(threshold_dbfs=-20.0, version="2"),
        "v3": build_level_model(threshold_dbfs=-10.0, version="3"),
        "48k": build_level_model(sample_rate=48000, version="48k"),
        "long": build_level_model(window_s=30.0, version="long"),
        "wave": build_waveform_level_model(prefilter=prefilter, version="wave"),
    }
    return {name: model.SerializeToString() for name, model in built.items()}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(push.key, device.key) made by the product's keygen."""
    return generate_keys(tmp_path_factory.mktemp("keys"))


class Rig:
    """A config on disk (model files, state dir) and the managers made from it."""

    def __init__(self, root: Path, models: dict[str, bytes], keys: tuple[Path, Path]) -> None:
        self.root = root
        self.models = models
        self.private = load_private_key(keys[0])
        self.device_key = keys[1]
        self.state_dir = root / "state"
        self.managers: list[ModelManager] = []
        self.clock = 0

    def model_file(self, name: str, data: bytes) -> Path:
        path = self.root / "config-models" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def config(self, monitors: dict[str, Path], **push: Any) -> Config:
        return parse_config(
            {
                "device_id": DEVICE,
                "state_dir": str(self.state_dir),
                "detector": {"watch_s": 0.1},
                "push": {"key_file": str(self.device_key), **push},
                "monitors": [{"name": n, "model": str(p)} for n, p in monitors.items()],
            },
            base_dir=self.root,
        )

    def manager(self, config: Config) -> tuple[ModelManager, dict[str, Any]]:
        manager = ModelManager(self.state_dir, device_id=DEVICE)
        self.managers.append(manager)
        detectors = manager.load(config)
        manager.set_capture(CAPTURE_RATE, RING_S)
        manager.start()
        return manager, detectors

    def issued_at(self) -> str:
        """Increasing issue times (as a workstation's clock gives them)."""
        self.clock += 1
        return f"2026-11-21T10:{self.clock // 60:02d}:{self.clock % 60:02d}.000Z"

    def push(self, model: bytes, monitor: str | None = None, **kw: Any) -> dict[str, Any]:
        key = kw.pop("private_key", self.private)
        return push_message(
            model,
            request_id=kw.pop("request_id", f"push-{self.clock + 1}"),
            target=kw.pop("target", DEVICE),
            monitor=monitor,
            private_key=key,
            issued_at=kw.pop("issued_at", None) or self.issued_at(),
        )

    def rollback(self, monitor: str | None = None) -> dict[str, Any]:
        return rollback_message(
            request_id=f"back-{self.clock + 1}",
            target=DEVICE,
            monitor=monitor,
            private_key=self.private,
            issued_at=self.issued_at(),
        )


@pytest.fixture
def rig(tmp_path: Path, models: dict[str, bytes], keys: tuple[Path, Path]) -> Iterator[Rig]:
    rig = Rig(tmp_path, models, keys)
    yield rig
    for manager in rig.managers:
        manager.stop(5.0)


def submit(manager: ModelManager, message: dict[str, Any], rollback: bool = False) -> None:
    """As the CommandRouter hands a command over: the JSON object's id apart."""
    args = {k: v for k, v in message.items() if k != "id"}
    if rollback:
        manager.submit_rollback(args, message["id"])
    else:
        manager.submit_push(args, message["id"])


def results(manager: ModelManager, count: int = 1, timeout_s: float = 10.0) -> list[Any]:
    """What the daemon's loop would collect between ticks, waiting for ``count`` items."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got.extend(manager.take_results())
        time.sleep(0.02)
    assert len(got) >= count, f"expected {count} result(s), got {got}"
    return got


def one_swap(manager: ModelManager) -> Swap:
    (result,) = results(manager)
    assert isinstance(result, Swap), result
    return result


def one_refusal(manager: ModelManager) -> Refused:
    (result,) = results(manager)
    assert isinstance(result, Refused), result
    return result


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_files(rig: Rig) -> list[str]:
    """Every file under state_dir/models (what a refusal must not leave behind)."""
    base = rig.state_dir / "models"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def settle(manager: ModelManager) -> None:
    """Wait until the worker wrote the swaps already applied (as a reload would)."""
    manager._wait_persisted()


def replace_atomically(path: Path, data: bytes) -> None:
    """What ``mv new.onnx model.onnx`` does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TestLoad:
    def test_config_models_load_and_nothing_is_written(self, rig: Rig) -> None:
        """At start with no stored model each monitor runs its config's model, and the
        state directory gets no file at all (normal operation writes nothing)."""
        config = rig.config(
            {
                "a": rig.model_file("a.onnx", rig.models["v1"]),
                "b": rig.model_file("b.onnx", rig.models["wave"]),
            }
        )
        manager, detectors = rig.manager(config)
        assert detectors["a"].sha256 == sha(rig.models["v1"])
        assert detectors["b"].spec.input == "waveform"
        assert manager.facts("a") == {
            "source": "config",
            "previous": None,
            "last_error": None,
            "replay_marker": None,
        }
        assert manager.last_push() is None
        assert not rig.state_dir.exists()

    def test_failing_config_models_are_all_listed(self, rig: Rig) -> None:
        """A ConfigError names each failing monitors[i].model, as load_detectors did."""
        config = rig.config(
            {
                "a": rig.model_file("a.onnx", b"not onnx"),
                "b": rig.model_file("b.onnx", rig.models["v1"]),
                "c": rig.root / "missing.onnx",
            }
        )
        with pytest.raises(ConfigError) as err:
            ModelManager(rig.state_dir, device_id=DEVICE).load(config)
        problems = err.value.problems
        assert len(problems) == 2
        assert problems[0].startswith("monitors[0].model: ") and "a.onnx: file:" in problems[0]
        assert problems[1].startswith("monitors[2].model: ") and "missing.onnx" in problems[1]

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("kind", REJECTED_KINDS)
    def test_a_config_model_that_is_no_regular_file_or_too_large_is_refused_unread(
        self, rig: Rig, kind: str
    ) -> None:
        """A FIFO, a link to /dev/zero or a 2 GB sparse file as the config's model stops
        the start at once, naming monitors[i].model and the file, nothing read or written."""
        path, problem = rejected_file(rig.root, kind, ".onnx")
        config = rig.config({"a": rig.model_file("a.onnx", rig.models["v1"]), "b": path})
        with pytest.raises(ConfigError) as err:
            ModelManager(rig.state_dir, device_id=DEVICE).load(config)
        (message,) = err.value.problems
        assert message.startswith(f"monitors[1].model: {path}: file: {problem}")
        assert not rig.state_dir.exists()

    def test_a_damaged_state_file_too_large_to_be_one_is_read_as_empty(self, rig: Rig) -> None:
        """A state.json grown to 2 GB (sparse) is not read: the config's model runs."""
        state = rig.state_dir / "models" / "a" / modelfiles.STATE_NAME
        state.parent.mkdir(parents=True)
        with state.open("wb") as f:
            f.truncate(2**31)
        config = rig.config({"a": rig.model_file("a.onnx", rig.models["v1"])})
        with capture_logs() as logs:
            manager, detectors = rig.manager(config)
        assert detectors["a"].sha256 == sha(rig.models["v1"])
        assert manager.facts("a")["source"] == "config"
        (unreadable,) = [e for e in logs if e["event"] == "model_state_unreadable"]
        assert "too large" in unreadable["error"]

    def test_a_bad_key_file_is_a_config_error_naming_it(self, rig: Rig) -> None:
        """push.key_file that is not a public key stops the start with its name."""
        bad = rig.root / "bad.key"
        bad.write_text("hello")
        config = rig.config({"a": rig.model_file("a.onnx", rig.models["v1"])}, key_file=str(bad))
        with pytest.raises(ConfigError, match=r"^push\.key_file: .*bad\.key"):
            ModelManager(rig.state_dir, device_id=DEVICE).load(config)


class TestPush:
    def test_signed_push_is_swapped_persisted_and_survives_a_restart(self, rig: Rig) -> None:
        """A good signed push becomes a Swap; once applied, active.onnx, previous.onnx
        and state.json hold it, and a new manager on the same state starts with it."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        message = rig.push(rig.models["v2"])
        submit(manager, message)
        swap = one_swap(manager)
        assert (swap.monitor, swap.source, swap.command) == ("pump", "push", "model")
        assert swap.request_id == message["id"]
        assert swap.detector.threshold == -20.0
        assert swap.detector.sha256 == sha(rig.models["v2"])
        assert manager.facts("pump")["source"] == "config"  # not in service yet
        manager.applied(swap)
        facts = manager.facts("pump")
        assert facts["source"] == "push"
        assert facts["previous"] == {
            "name": "level",
            "version": "1",
            "sha256": sha(rig.models["v1"]),
        }
        last = manager.last_push()
        assert last is not None and last["ok"] and last["id"] == message["id"]
        assert last["version"] == "2" and last["command"] == "model"
        settle(manager)
        folder = rig.state_dir / "models" / "pump"
        assert swap.detector.path == str(folder / "active.onnx")
        assert (folder / "active.onnx").read_bytes() == rig.models["v2"]
        assert (folder / "previous.onnx").read_bytes() == rig.models["v1"]
        assert not (folder / "incoming.onnx").exists()
        state = json.loads((folder / "state.json").read_text())
        assert state["last_issued_at"] == message["issued_at"]
        assert state["active"]["source"] == "push"

        manager.stop()
        again, detectors = rig.manager(config)
        assert detectors["pump"].sha256 == sha(rig.models["v2"])
        assert again.facts("pump")["source"] == "push"
        # the replay marker survived too: the same message again is a redelivery
        # (ignored), the same issued_at under another id a replay (refused)
        submit(again, message)
        replayed = rig.push(rig.models["v3"], request_id="other", issued_at=message["issued_at"])
        submit(again, replayed)
        refusal = one_refusal(again)
        assert refusal.request_id == "other"
        assert "not later than the last accepted" in refusal.reason

    def test_a_changed_config_model_wins_over_the_push(self, rig: Rig) -> None:
        """Replacing the config's model file while the daemon is down: at start that
        file runs, the pushed model is kept as previous, the replay marker stays."""
        path = rig.model_file("pump.onnx", rig.models["v1"])
        config = rig.config({"pump": path})
        manager, _ = rig.manager(config)
        message = rig.push(rig.models["v2"])
        submit(manager, message)
        manager.applied(one_swap(manager))
        manager.stop()
        path.write_bytes(rig.models["v3"])
        with capture_logs() as logs:
            again, detectors = rig.manager(config)
        assert detectors["pump"].sha256 == sha(rig.models["v3"])
        assert again.facts("pump")["source"] == "config"
        assert again.facts("pump")["previous"]["version"] == "2"
        loaded = next(e for e in logs if e["event"] == "model_loaded")
        assert "changed since the stored model was adopted" in loaded["reason"]
        replayed = rig.push(rig.models["v2"], request_id="other", issued_at=message["issued_at"])
        submit(again, replayed)
        assert "a replay is refused" in one_refusal(again).reason
        # rolling back returns to the push, which then survives restarts again
        submit(again, rig.rollback(), rollback=True)
        swap = one_swap(again)
        assert swap.detector.sha256 == sha(rig.models["v2"])
        again.applied(swap)
        again.stop()
        _, detectors = rig.manager(config)
        assert detectors["pump"].sha256 == sha(rig.models["v2"])

    @pytest.mark.parametrize(
        ("case", "reason"),
        [
            ("tampered", "bad signature"),
            ("unsigned", "unsigned push refused (push.allow_unsigned is false)"),
            ("truncated", "truncated: got"),
            (
                "wrong_rate",
                "sample_rate: the model needs 48000 Hz but the input captures at 16000 Hz",
            ),
            ("long_window", "window_s: the model's 30 s window does not fit the input ring"),
            ("not_onnx", "model: file: not a loadable ONNX model"),
            ("too_large", "model too large:"),
            ("unknown_monitor", "monitor: no monitor named 'fan' on this device (pump)"),
            ("other_device", "target: addressed to 'dev-2'"),
        ],
    )
    def test_bad_pushes_are_refused_and_nothing_is_stored(
        self, rig: Rig, case: str, reason: str
    ) -> None:
        """Each bad push comes back as a Refused with its reason; the running model stays
        (no Swap), nothing is left on disk, and the model topic's facts say why."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])}, max_mb=0.1)
        manager, _ = rig.manager(config)
        good = rig.models["v2"]
        if case == "tampered":  # another model under the signature of the good one
            message = rig.push(good)
            other = rig.models["v3"]
            message.update(
                model=base64.b64encode(other).decode(), sha256=sha(other), size=len(other)
            )
        elif case == "unsigned":
            message = rig.push(good, private_key=None)
        elif case == "truncated":
            message = rig.push(good)
            message["model"] = base64.b64encode(good[: len(good) // 2]).decode()
        elif case == "wrong_rate":
            message = rig.push(rig.models["48k"])
        elif case == "long_window":
            manager.set_capture(CAPTURE_RATE, 20.0)
            message = rig.push(rig.models["long"])
        elif case == "not_onnx":
            message = rig.push(os.urandom(3000))
        elif case == "too_large":
            message = rig.push(os.urandom(150_000))
        elif case == "unknown_monitor":
            message = rig.push(good, "fan")
        else:
            message = rig.push(good, target="dev-2")
        submit(manager, message)
        refusal = one_refusal(manager)
        assert reason in refusal.reason
        assert (refusal.request_id, refusal.command, refusal.source) == (
            message["id"],
            "model",
            "push",
        )
        assert stored_files(rig) == []
        last = manager.last_push()
        assert last is not None and not last["ok"] and reason in last["error"]
        facts = manager.facts("pump")
        assert facts["source"] == "config" and facts["previous"] is None
        if case in ("wrong_rate", "long_window", "not_onnx"):  # the model itself was unfit
            assert facts["last_error"] == refusal.reason
        # the manager goes on: a good push after the refusal is accepted
        submit(manager, rig.push(good))
        assert one_swap(manager).detector.sha256 == sha(good)

    def test_an_older_push_is_a_replay(self, rig: Rig) -> None:
        """A push issued before the last accepted one is refused, even if never seen."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        old = rig.push(rig.models["v3"])
        submit(manager, rig.push(rig.models["v2"]))
        manager.applied(one_swap(manager))
        submit(manager, old)
        refusal = one_refusal(manager)
        assert refusal.reason.startswith(f"issued_at: {old['issued_at']} is not later than")
        settle(manager)
        folder = rig.state_dir / "models" / "pump"
        assert (folder / "active.onnx").read_bytes() == rig.models["v2"]

    def test_a_push_dated_ahead_of_the_device_clock_is_refused(self, rig: Rig) -> None:
        """A push issued a year ahead of the device's clock is refused with the reason (were
        it accepted, every later push would be a replay); the store is untouched and the
        next push of today is accepted. Within push.max_clock_skew_s is fine."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        ahead = rig.push(rig.models["v2"], issued_at="2099-01-01T00:00:00.000Z")
        submit(manager, ahead)
        refusal = one_refusal(manager)
        assert refusal.reason.startswith("issued_at: 2099-01-01T00:00:00.000Z is ")
        assert "ahead of this device's clock" in refusal.reason
        assert "push.max_clock_skew_s (300 s)" in refusal.reason
        assert refusal.monitor == "pump"
        submit(manager, rig.push(rig.models["v3"]))  # dated 2026-11-21: before the clock
        assert one_swap(manager).detector.sha256 == sha(rig.models["v3"])

    def test_a_device_whose_clock_is_not_set_refuses_pushes_and_says_why(self, rig: Rig) -> None:
        """A board without a real-time clock, before NTP (its clock near 1970): a push of
        today lies decades ahead of it, and the reply says to set the clock."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager = ModelManager(rig.state_dir, device_id=DEVICE, wall_clock=lambda: 86400.0)
        rig.managers.append(manager)
        manager.load(config)
        manager.set_capture(CAPTURE_RATE, RING_S)
        manager.start()
        submit(manager, rig.push(rig.models["v2"]))
        refusal = one_refusal(manager)
        assert "ahead of this device's clock (1970-01-02T00:00:00.000Z)" in refusal.reason
        assert refusal.reason.endswith(
            "set the clock of the signer or of the device (NTP) and push again"
        )

    def test_a_key_id_no_utf8_can_carry_is_refused_and_the_answer_still_encodes(
        self, rig: Rig
    ) -> None:
        """Anyone who can publish may send a push naming key_id "\\ud800" (a lone
        surrogate) with a bad signature: it is refused, and the refusal (which names the
        key id) still encodes as the model topic's message (it once crashed the tick)."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        bad = base64.b64encode(bytes(64)).decode("ascii")
        forged = {**rig.push(rig.models["v2"]), "key_id": "\ud800", "signature": bad}
        submit(manager, forged)
        refusal = one_refusal(manager)
        assert refusal.reason.startswith("bad signature")
        encode_json({"reason": refusal.reason, "last_push": manager.last_push()})

    def test_a_device_with_several_monitors_needs_a_name(self, rig: Rig) -> None:
        """Without a monitor field, a two-monitor device refuses; named, it swaps that one."""
        config = rig.config(
            {
                "a": rig.model_file("a.onnx", rig.models["v1"]),
                "b": rig.model_file("b.onnx", rig.models["v1"]),
            }
        )
        manager, _ = rig.manager(config)
        submit(manager, rig.push(rig.models["v2"]))
        assert (
            one_refusal(manager).reason
            == "monitor: the device runs several monitors (a, b): name one"
        )
        submit(manager, rig.push(rig.models["v2"], "b"))
        assert one_swap(manager).monitor == "b"

    def test_a_second_push_while_one_is_in_flight_is_busy(self, rig: Rig) -> None:
        """submit_push only queues: while a push waits to be applied, the next one is
        refused at once with CommandError("busy: ..."); once applied, pushes go again."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager = ModelManager(rig.state_dir, device_id=DEVICE)
        rig.managers.append(manager)
        manager.load(config)
        manager.set_capture(CAPTURE_RATE, RING_S)
        submit(manager, rig.push(rig.models["v2"]))  # queued; the worker is not even running
        with pytest.raises(CommandError, match=r"^busy: a model push is already being processed"):
            submit(manager, rig.push(rig.models["v3"]))
        with pytest.raises(CommandError, match=r"^busy"):
            submit(manager, rig.rollback(), rollback=True)
        manager.start()
        swap = one_swap(manager)
        with pytest.raises(CommandError, match=r"^busy"):
            submit(manager, rig.push(rig.models["v3"]))
        manager.applied(swap)
        submit(manager, rig.push(rig.models["v3"]))
        assert one_swap(manager).detector.threshold == -10.0


class TestRollback:
    def test_rollback_returns_to_the_previous_model_and_back(self, rig: Rig) -> None:
        """After a push, rollback brings the config's model back (from previous.onnx);
        a second rollback returns to the pushed one."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        submit(manager, rig.push(rig.models["v2"]))
        manager.applied(one_swap(manager))
        message = rig.rollback()
        submit(manager, message, rollback=True)
        swap = one_swap(manager)
        assert (swap.source, swap.command, swap.request_id) == (
            "rollback",
            "model/rollback",
            message["id"],
        )
        assert swap.detector.sha256 == sha(rig.models["v1"])
        manager.applied(swap)
        assert manager.facts("pump")["source"] == "rollback"
        assert manager.facts("pump")["previous"]["version"] == "2"
        submit(manager, rig.rollback(), rollback=True)
        swap = one_swap(manager)
        assert swap.detector.sha256 == sha(rig.models["v2"])
        manager.applied(swap)
        settle(manager)
        folder = rig.state_dir / "models" / "pump"
        assert (folder / "active.onnx").read_bytes() == rig.models["v2"]
        assert (folder / "previous.onnx").read_bytes() == rig.models["v1"]

    def test_rollback_without_a_previous_model(self, rig: Rig) -> None:
        """A monitor that never changed model has nothing to roll back to."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        submit(manager, rig.rollback("pump"), rollback=True)
        refusal = one_refusal(manager)
        assert refusal.reason == "no previous model to roll back to"
        assert (refusal.monitor, refusal.source) == ("pump", "rollback")
        assert stored_files(rig) == []


class TestLearned:
    def test_a_learned_model_is_validated_stored_and_rolled_back_like_a_push(
        self, rig: Rig
    ) -> None:
        """A model learned on the device (no signature) runs with source learn, is the
        stored model after a restart, and rollback brings the config's model back."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        manager.submit_learned("pump", rig.models["v2"], "learn-1")
        swap = one_swap(manager)
        assert (swap.source, swap.command, swap.request_id) == ("learn", "learn", "learn-1")
        manager.applied(swap)
        last = manager.last_push()
        assert last is not None and (last["id"], last["command"], last["ok"]) == (
            "learn-1",
            "learn",
            True,
        )
        assert manager.facts("pump")["source"] == "learn"
        settle(manager)
        folder = rig.state_dir / "models" / "pump"
        assert (folder / "active.onnx").read_bytes() == rig.models["v2"]
        again, detectors = rig.manager(config)
        assert detectors["pump"].sha256 == sha(rig.models["v2"])
        assert again.facts("pump")["source"] == "learn"
        submit(again, rig.rollback(), rollback=True)
        back = one_swap(again)
        assert back.detector.sha256 == sha(rig.models["v1"])

    def test_a_learned_model_that_does_not_serve_is_refused_and_not_stored(self, rig: Rig) -> None:
        """A learned model is held to the same checks as a push: one the daemon cannot
        serve is refused with the field, and nothing is stored."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        manager.submit_learned("pump", b"not an onnx model", "learn-2")
        refused = one_refusal(manager)
        assert refused.command == "learn" and refused.reason.startswith("model:")
        last = manager.last_push()
        assert last is not None and last["id"] == "learn-2" and last["ok"] is False
        assert stored_files(rig) == []


class TestFileWatch:
    def test_an_atomically_replaced_model_file_is_swapped(self, rig: Rig) -> None:
        """``mv`` of a new model over the config's file: a Swap within a few watch
        periods; once applied the old model is kept as previous.onnx."""
        path = rig.model_file("pump.onnx", rig.models["v1"])
        manager, _ = rig.manager(rig.config({"pump": path}))
        replace_atomically(path, rig.models["v2"])
        swap = one_swap(manager)
        assert (swap.source, swap.command, swap.request_id) == ("file", None, None)
        assert swap.detector.sha256 == sha(rig.models["v2"])
        assert swap.detector.path == str(path)
        manager.applied(swap)
        settle(manager)
        folder = rig.state_dir / "models" / "pump"
        assert (folder / "previous.onnx").read_bytes() == rig.models["v1"]
        assert not (folder / "active.onnx").exists()
        assert manager.facts("pump")["source"] == "file"
        time.sleep(0.5)
        assert manager.take_results() == []  # the same file is not swapped again
        manager.stop()
        again, detectors = rig.manager(rig.config({"pump": path}))
        assert detectors["pump"].sha256 == sha(rig.models["v2"])
        assert again.facts("pump") == {
            "source": "file",
            "previous": {"name": "level", "version": "1", "sha256": sha(rig.models["v1"])},
            "last_error": None,
            "replay_marker": None,
        }

    def test_a_corrupt_replacement_is_refused_once_then_a_good_one_swaps(self, rig: Rig) -> None:
        """A half-written model is refused with the file named, not again every period;
        the next good replacement is swapped in."""
        path = rig.model_file("pump.onnx", rig.models["v1"])
        manager, _ = rig.manager(rig.config({"pump": path}))
        replace_atomically(path, rig.models["v2"][: len(rig.models["v2"]) // 2])
        refusal = one_refusal(manager)
        assert refusal.reason.startswith(f"{path}: ")
        assert (refusal.monitor, refusal.source, refusal.command) == ("pump", "file", None)
        assert manager.facts("pump")["last_error"] == refusal.reason
        time.sleep(0.6)
        assert manager.take_results() == []
        replace_atomically(path, rig.models["v3"])
        swap = one_swap(manager)
        assert swap.detector.threshold == -10.0
        manager.applied(swap)
        assert manager.facts("pump")["last_error"] is None

    @pytest.mark.timeout(30)
    def test_a_fifo_put_in_place_is_refused_unread_then_a_good_one_swaps(self, rig: Rig) -> None:
        """A FIFO renamed over the config's model file is refused with the file named;
        the worker does not wait on it, and the next good replacement is swapped in."""
        path = rig.model_file("pump.onnx", rig.models["v1"])
        manager, _ = rig.manager(rig.config({"pump": path}))
        fifo = path.with_name("new.fifo")
        os.mkfifo(fifo)
        os.replace(fifo, path)
        refusal = one_refusal(manager)
        assert refusal.reason == f"{path}: file: not a regular file (a FIFO)"
        replace_atomically(path, rig.models["v3"])
        swap = one_swap(manager)
        assert swap.detector.threshold == -10.0

    def test_watching_follows_the_reloaded_config(self, rig: Rig) -> None:
        """After load() with a config naming another file, that file is the one watched."""
        first = rig.model_file("first.onnx", rig.models["v1"])
        second = rig.model_file("second.onnx", rig.models["v1"])
        manager, _ = rig.manager(rig.config({"pump": first}))
        manager.load(rig.config({"pump": second}))
        replace_atomically(first, rig.models["v2"])
        replace_atomically(second, rig.models["v3"])
        swap = one_swap(manager)
        assert swap.detector.sha256 == sha(rig.models["v3"])


class TestRecovery:
    def test_a_stored_model_that_no_longer_loads_is_skipped(self, rig: Rig) -> None:
        """A damaged active.onnx is logged and the config's model runs instead."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        submit(manager, rig.push(rig.models["v2"]))
        manager.applied(one_swap(manager))
        manager.stop()
        (rig.state_dir / "models" / "pump" / "active.onnx").write_bytes(b"garbage")
        with capture_logs() as logs:
            again, detectors = rig.manager(config)
        assert detectors["pump"].sha256 == sha(rig.models["v1"])
        assert again.facts("pump")["source"] == "config"
        loaded = next(e for e in logs if e["event"] == "model_loaded")
        assert loaded["reason"].startswith("the stored model no longer loads")

    def test_a_reload_supersedes_a_swap_not_yet_taken(self, rig: Rig) -> None:
        """A push validated under the configuration a SIGHUP replaced comes back as a
        Refused, its incoming file goes, and the next push is accepted; a removed
        monitor's folder is left alone."""
        config = rig.config(
            {
                "a": rig.model_file("a.onnx", rig.models["v1"]),
                "b": rig.model_file("b.onnx", rig.models["v1"]),
            }
        )
        manager, _ = rig.manager(config)
        submit(manager, rig.push(rig.models["v2"], "a"))
        manager.applied(one_swap(manager))
        with capture_logs() as logs:
            submit(manager, rig.push(rig.models["v3"], "b"))
            deadline = time.monotonic() + 10
            while not any(e["event"] == "model_candidate_ready" for e in logs):
                assert time.monotonic() < deadline
                time.sleep(0.02)
        manager.load(rig.config({"b": rig.model_file("b.onnx", rig.models["v1"])}))
        refusal = one_refusal(manager)
        assert refusal.reason.startswith("superseded: the configuration was reloaded")
        last = manager.last_push()
        assert last is not None and not last["ok"] and last["error"] == refusal.reason
        time.sleep(0.2)
        assert stored_files(rig) == [
            "a/active.onnx",
            "a/previous.onnx",
            "a/state.json",
            "replay.json",
        ]
        submit(manager, rig.push(rig.models["v3"], "b"))
        assert one_swap(manager).monitor == "b"

    def test_a_model_file_overwritten_in_place_leaves_no_previous(self, rig: Rig) -> None:
        """Overwriting the config's model file in place (not ``mv``) destroys the old
        bytes: the new model is swapped in, but there is nothing to roll back to."""
        path = rig.model_file("pump.onnx", rig.models["v1"])
        manager, _ = rig.manager(rig.config({"pump": path}))
        path.write_bytes(rig.models["v2"])
        swap = one_swap(manager)
        assert swap.detector.sha256 == sha(rig.models["v2"])
        manager.applied(swap)
        settle(manager)
        assert manager.facts("pump")["previous"] is None
        submit(manager, rig.rollback(), rollback=True)
        assert one_refusal(manager).reason == "no previous model to roll back to"


class TestRobustness:
    def test_a_push_validated_across_a_reload_is_superseded(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A SIGHUP while a push is being validated: the push comes back refused as
        superseded, the running model and its previous stay as they were."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        submit(manager, rig.push(rig.models["v2"]))
        manager.applied(one_swap(manager))
        started, release = threading.Event(), threading.Event()
        real = modelstore.validate_candidate

        def slow(*args: Any, **kwargs: Any) -> Any:
            started.set()
            assert release.wait(10)
            return real(*args, **kwargs)

        monkeypatch.setattr(modelstore, "validate_candidate", slow)
        message = rig.push(rig.models["v3"])
        submit(manager, message)
        assert started.wait(10)
        manager.load(config)
        release.set()
        refusal = one_refusal(manager)
        assert refusal.reason == modelstore.SUPERSEDED
        assert refusal.request_id == message["id"]
        last = manager.last_push()
        assert last is not None and not last["ok"] and last["id"] == message["id"]
        facts = manager.facts("pump")
        assert facts["source"] == "push" and facts["previous"]["version"] == "1"
        submit(manager, rig.rollback(), rollback=True)  # not busy; goes back to v1
        assert one_swap(manager).detector.sha256 == sha(rig.models["v1"])
        folder = rig.state_dir / "models" / "pump"
        assert (folder / "active.onnx").read_bytes() == rig.models["v2"]

    def test_a_push_delivered_twice_while_in_flight_is_ignored(self, rig: Rig) -> None:
        """QoS 1 redelivery of the push in flight is not 'busy' and makes no second swap;
        another id is still busy."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager = ModelManager(rig.state_dir, device_id=DEVICE)
        rig.managers.append(manager)
        manager.load(config)
        manager.set_capture(CAPTURE_RATE, RING_S)
        message = rig.push(rig.models["v2"])
        submit(manager, message)
        with capture_logs() as logs:
            submit(manager, message)  # the same command again: silently ignored
        assert [e["event"] for e in logs] == ["model_command_duplicate"]
        with pytest.raises(CommandError, match=r"^busy"):
            submit(manager, rig.push(rig.models["v3"]))
        manager.start()
        swap = one_swap(manager)
        submit(manager, message)  # still pending: still ignored
        time.sleep(0.3)
        assert manager.take_results() == []
        manager.applied(swap)
        last = manager.last_push()
        assert last is not None and last["ok"] and last["id"] == message["id"]

    def test_a_push_delivered_again_after_it_was_accepted_is_ignored(self, rig: Rig) -> None:
        """Redelivery of the last accepted push (same id and issued_at), even after a
        restart, is neither refused as a replay nor allowed to spoil last_push."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)
        message = rig.push(rig.models["v2"])
        submit(manager, message)
        manager.applied(one_swap(manager))
        submit(manager, message)
        time.sleep(0.3)
        assert manager.take_results() == []
        last = manager.last_push()
        assert last is not None and last["ok"] and last["id"] == message["id"]
        manager.stop()
        again, _ = rig.manager(config)
        submit(again, message)
        time.sleep(0.3)
        assert again.take_results() == [] and again.last_push() is None
        # the same id with another issued_at is no redelivery: it is checked as usual
        forged = rig.push(
            rig.models["v3"], request_id=message["id"], issued_at="2020-01-01T00:00:00.000Z"
        )
        submit(again, forged)
        assert "a replay is refused" in one_refusal(again).reason

    @pytest.mark.parametrize("case", ["reloaded", "monitor_removed"])
    def test_a_swap_applied_after_a_reload_frees_the_push_slot(self, rig: Rig, case: str) -> None:
        """A push's swap that reaches ``applied`` only after a reload ends the push (as
        refused): the next push is not answered 'busy'."""
        paths = {n: rig.model_file(f"{n}.onnx", rig.models["v1"]) for n in ("a", "b")}
        manager, _ = rig.manager(rig.config(paths))
        submit(manager, rig.push(rig.models["v2"], "b"))
        swap = one_swap(manager)
        manager.load(rig.config(paths if case == "reloaded" else {"a": paths["a"]}))
        manager.applied(swap)
        last = manager.last_push()
        assert last is not None and not last["ok"]
        submit(manager, rig.push(rig.models["v3"], "a"))
        assert one_swap(manager).monitor == "a"

    def test_the_worker_survives_an_unexpected_error(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bug while storing a swap is logged and reported in last_error; the worker
        goes on handling pushes."""
        config = rig.config({"pump": rig.model_file("pump.onnx", rig.models["v1"])})
        manager, _ = rig.manager(config)

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("injected")

        monkeypatch.setattr(modelfiles.MonitorFiles, "adopt", broken)
        submit(manager, rig.push(rig.models["v2"]))
        manager.applied(one_swap(manager))
        deadline = time.monotonic() + 10
        while manager.facts("pump")["last_error"] is None:
            assert time.monotonic() < deadline, "the failed write was not reported"
            time.sleep(0.02)
        assert "could not be stored" in manager.facts("pump")["last_error"]
        monkeypatch.undo()
        submit(manager, rig.push(rig.models["v3"]))
        swap = (results(manager, timeout_s=5.0) or [None])[0]
        assert isinstance(swap, Swap) and swap.detector.threshold == -10.0
        manager.applied(swap)
        settle(manager)
        folder = rig.state_dir / "models" / "pump"
        assert (folder / "active.onnx").read_bytes() == rig.models["v3"]


class TestCaptureCheck:
    def test_a_reload_with_a_model_the_capture_cannot_serve_is_rejected(self, rig: Rig) -> None:
        """Once the capture runs, SIGHUP to a 48 kHz model on 16 kHz input is rejected as
        a whole (naming monitors[i].model); the running model and watcher go on."""
        path = rig.model_file("pump.onnx", rig.models["v1"])
        wide = rig.model_file("wide.onnx", rig.models["48k"])
        config = rig.config({"pump": path})
        manager, detectors = rig.manager(config)
        cfg = config.monitors[0]
        assert manager.check_capture(detectors["pump"], cfg) is None
        reason = "sample_rate: the model needs 48000 Hz but the input captures at 16000 Hz"
        assert manager.check_capture(Detector(wide), cfg) == reason
        with pytest.raises(ConfigError) as info:
            manager.load(rig.config({"pump": wide}))
        assert info.value.problems == [f"monitors[0].model: {reason}"]
        assert manager.facts("pump")["source"] == "config"
        replace_atomically(path, rig.models["v2"])  # still watching the old config's file
        assert one_swap(manager).detector.sha256 == sha(rig.models["v2"])
        # before the capture is open (the daemon's start) only the model itself is checked
        fresh = ModelManager(rig.root / "other", device_id=DEVICE)
        assert fresh.load(rig.config({"pump": wide}))["pump"].spec.sample_rate == 48000
        fresh.stop()

    @pytest.mark.parametrize("samples", [1, 2, 16001, 480000])
    def test_the_check_noise_is_fixed_white_gaussian_noise(self, samples: int) -> None:
        """The noise a model must score finitely is the same on every call, finite, at
        NOISE_RMS, Gaussian (68 % within one sigma, 95 % within two) and white (no
        correlation between neighbours)."""
        noise = check_noise(samples)
        assert noise.dtype == np.float32 and noise.shape == (samples,)
        assert np.array_equal(noise, check_noise(samples)) and np.isfinite(noise).all()
        if samples < 16000:
            return
        z = noise.astype(np.float64) / NOISE_RMS
        assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.02
        assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.01
        assert abs(np.mean(np.abs(z) < 2.0) - 0.9545) < 0.01
        assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.03
