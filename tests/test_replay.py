"""The replay state of pushes and rollbacks, on real ONNX files and a clock of our own:
the device-wide floor that outlives a damaged state.json, a new monitor or a reinstall,
and the signed reset that replaces a marker dated in the future."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from asd_edge.config import Config, parse_config
from asd_edge.errors import CommandError, Refused
from asd_edge.modelstore import (
    ModelManager,
    Swap,
    generate_keys,
    load_private_key,
    push_message,
    rollback_message,
)
from asd_edge.modelstore.devicekey import DeviceKey
from asd_edge.modelstore.files import MonitorFiles
from asd_edge.modelstore.shared import ReplayReset
from asd_edge.modelstore.signing import format_issued_at, reset_message

DEVICE = "dev-1"
NOW_S = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
"""The device's clock in these tests (the signer's too, unless a test moves it)."""
DAY_S = 86400.0


def at(offset_s: float) -> str:
    """issued_at ``offset_s`` seconds from NOW_S."""
    return format_issued_at(datetime.fromtimestamp(NOW_S + offset_s, UTC))


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """Real models: the config's (v1) and two to push."""
    from training.level import build_level_model

    return {
        v: build_level_model(threshold_dbfs=t, version=v).SerializeToString()
        for v, t in (("1", -30.0), ("2", -20.0), ("3", -10.0))
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(push.key, device.key) made by the product's keygen."""
    return generate_keys(tmp_path_factory.mktemp("keys"))


class Device:
    """One state directory and the model managers run on it (one after the other: a
    restart, a reinstall), with a wall clock the test sets."""

    def __init__(self, root: Path, models: dict[str, bytes], keys: tuple[Path, Path]) -> None:
        self.root = root
        self.models = models
        self.signer = load_private_key(keys[0])
        self.device_key = keys[1]
        self.state_dir = root / "state"
        self.clock_s = NOW_S
        self.running: ModelManager | None = None
        self.count = 0

    def config(self, *monitors: str, **push: Any) -> Config:
        path = self.root / "config.onnx"
        if not path.exists():
            path.write_bytes(self.models["1"])
        settings: dict[str, Any] = {"key_file": str(self.device_key), **push}
        return parse_config(
            {
                "device_id": DEVICE,
                "state_dir": str(self.state_dir),
                "push": settings,
                "monitors": [{"name": name, "model": str(path)} for name in monitors],
            },
            base_dir=self.root,
        )

    def start(self, *monitors: str, **push: Any) -> ModelManager:
        """A new manager (stopping the one before): what a restart or a reinstall that
        keeps ``state_dir`` runs."""
        self.stop()
        manager = ModelManager(self.state_dir, device_id=DEVICE, wall_clock=lambda: self.clock_s)
        manager.load(self.config(*(monitors or ("pump",)), **push))
        manager.set_capture(16000, 60.0)
        manager.start()
        self.running = manager
        return manager

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop(5.0)
            self.running = None

    @property
    def manager(self) -> ModelManager:
        assert self.running is not None
        return self.running

    def request_id(self, what: str) -> str:
        self.count += 1
        return f"{what}-{self.count}"

    def push(self, version: str, issued_at: str, monitor: str | None = None) -> dict[str, Any]:
        return push_message(
            self.models[version],
            request_id=self.request_id("push"),
            target=DEVICE,
            monitor=monitor,
            private_key=self.signer,
            issued_at=issued_at,
        )

    def rollback(self, issued_at: str, monitor: str | None = None) -> dict[str, Any]:
        return rollback_message(
            request_id=self.request_id("back"),
            target=DEVICE,
            monitor=monitor,
            private_key=self.signer,
            issued_at=issued_at,
        )

    def reset(
        self,
        clears: str,
        issued_at: str | None = None,
        monitor: str | None = None,
        key: Ed25519PrivateKey | str | None = "ours",
        target: str = DEVICE,
    ) -> dict[str, Any]:
        """A reset as ``asd-train reset`` builds it (``key=None``: unsigned)."""
        return reset_message(
            request_id=self.request_id("reset"),
            target=target,
            monitor=monitor,
            clears=clears,
            private_key=self.signer if key == "ours" else key,  # type: ignore[arg-type]
            issued_at=issued_at or at(0),
        )

    def send(self, message: dict[str, Any], command: str = "model") -> Swap | Refused | ReplayReset:
        """Hand ``message`` over as the CommandRouter does; the one result, a swap applied."""
        args = {k: v for k, v in message.items() if k != "id"}
        submit = {
            "model": self.manager.submit_push,
            "model/rollback": self.manager.submit_rollback,
            "model/reset": self.manager.submit_reset,
        }[command]
        submit(args, message["id"])
        deadline = time.monotonic() + 10
        while not (got := self.manager.take_results()):
            assert time.monotonic() < deadline, f"no answer to {message['id']}"
            time.sleep(0.02)
        (result,) = got
        if isinstance(result, Swap):
            self.manager.applied(result)
            self.manager._wait_persisted()
        return result

    def refused(self, message: dict[str, Any], command: str = "model") -> str:
        result = self.send(message, command)
        assert isinstance(result, Refused), result
        return result.reason

    def accepted(self, message: dict[str, Any], command: str = "model") -> Swap | ReplayReset:
        result = self.send(message, command)
        assert not isinstance(result, Refused), result.reason
        return result

    def folder(self, monitor: str = "pump") -> Path:
        return self.state_dir / "models" / monitor

    def floor_file(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "models" / "replay.json").read_text())
        return data

    def marker_on_disk(self, monitor: str = "pump") -> str | None:
        state = json.loads((self.folder(monitor) / "state.json").read_text())
        return state["last_issued_at"]  # type: ignore[no-any-return]


@pytest.fixture
def device(tmp_path: Path, models: dict[str, bytes], keys: tuple[Path, Path]) -> Iterator[Device]:
    made = Device(tmp_path, models, keys)
    yield made
    made.stop()


def wedged(device: Device, *monitors: str) -> str:
    """A device whose replay marker lies 20 hours ahead: a push so dated was accepted
    while push.max_clock_skew_s allowed a day (as an asd-edge without the clock check,
    or with a wrong clock, would have); then it restarts with the default skew. Returns
    the marker."""
    ahead = at(20 * 3600)
    device.start(*monitors, max_clock_skew_s=DAY_S)
    device.accepted(device.push("2", ahead, monitors[0] if len(monitors) > 1 else None))
    device.start(*monitors)
    return ahead


class TestFloor:
    def test_the_floor_follows_every_accepted_request_and_survives_a_restart(
        self, device: Device
    ) -> None:
        """replay.json holds the latest issued_at accepted on the device, written with
        the swap; the model topic shows it and each monitor's marker."""
        manager = device.start("pump", "fan")
        assert manager.replay_floor() is None
        push = device.push("2", at(-60), "fan")
        device.accepted(push)
        assert device.floor_file() == {"schema": 1, "floor": at(-60), "request_id": push["id"]}
        device.accepted(device.push("3", at(-30), "pump"))
        assert device.floor_file()["floor"] == at(-30)
        assert manager.facts("fan")["replay_marker"] == at(-60)  # its own
        assert manager.replay_floor() == at(-30)
        again = device.start("pump", "fan")
        assert (again.replay_floor(), again.facts("pump")["replay_marker"]) == (at(-30), at(-30))

    @pytest.mark.parametrize("damage", ["deleted", "corrupted", "renamed"])
    def test_an_old_push_replayed_onto_a_monitor_without_a_marker_is_refused(
        self, device: Device, damage: str
    ) -> None:
        """After a reinstall that kept state_dir but not the monitor's state.json (deleted,
        or damaged), or with the monitor renamed in a new configuration, the monitor is
        held to the device's floor: the same signed push, replayed, is refused."""
        device.start()
        push = device.push("2", at(-60))
        device.accepted(push)
        device.stop()
        monitor = "pump"
        if damage == "deleted":
            (device.folder() / "state.json").unlink()
        elif damage == "corrupted":
            (device.folder() / "state.json").write_text('{"schema": 1, "last_issued_at": ')
        else:
            monitor = "pump-2"
        manager = device.start(monitor)
        assert manager.facts(monitor)["replay_marker"] == at(-60)
        reason = device.refused(push)  # the very message, as anyone on the broker saw it
        assert reason == (
            f"issued_at: {at(-60)} is not later than the device's replay floor ({at(-60)}; "
            f"monitor {monitor!r} has no marker of its own): a replay is refused"
        )
        device.accepted(device.push("3", at(-10)))  # a new push goes through

    def test_a_state_dir_from_before_the_floor_gets_one_from_its_markers(
        self, device: Device
    ) -> None:
        """Upgrading keeps the protection: without replay.json (an older asd-edge wrote
        the state) the floor is the latest marker of every monitor folder, a removed
        monitor's too, and is written at start; a damaged replay.json is rebuilt the
        same way, with a warning."""
        device.start("pump", "old")
        device.accepted(device.push("3", at(-120), "pump"))
        device.accepted(device.push("2", at(-60), "old"))
        floor = device.state_dir / "models" / "replay.json"
        floor.unlink()
        manager = device.start("pump")  # "old" left the configuration
        assert manager.replay_floor() == at(-60)
        assert device.floor_file()["floor"] == at(-60)
        floor.write_text("{not json")
        with capture_logs() as logs:
            manager = device.start("pump")
        assert manager.replay_floor() == at(-60)
        assert [e["event"] for e in logs].count("replay_floor_unreadable") == 1
        assert device.floor_file()["floor"] == at(-60)

    def test_a_fresh_device_writes_no_floor(self, device: Device) -> None:
        """Nothing accepted, nothing written: no replay.json appears at start."""
        device.start()
        assert not (device.state_dir / "models").exists()


class TestReset:
    def test_a_signed_reset_recovers_a_marker_dated_ahead(self, device: Device) -> None:
        """A marker 20 h ahead refuses every push and rollback as a replay. A signed reset
        of the device (clears = the floor the model topic shows) sets the floor and the
        marker to its own issued_at, writes both, changes no model, and the next push
        is accepted; sent again, it is refused (its clears no longer match)."""
        ahead = wedged(device, "pump")
        manager = device.manager
        assert "a replay is refused" in device.refused(device.push("3", at(-5)))
        assert "a replay is refused" in device.refused(device.rollback(at(-4)), "model/rollback")
        active = (device.folder() / "active.onnx").read_bytes()
        reset = device.reset(clears=manager.replay_floor() or "", issued_at=at(-1))
        done = device.accepted(reset, "model/reset")
        assert done == ReplayReset(reset["id"], None, ahead, at(-1))
        last = manager.last_push()
        assert last is not None and last["ok"] and last["command"] == "model/reset"
        assert (last["cleared"], last["replay_marker"]) == (ahead, at(-1))
        assert manager.replay_floor() == at(-1) == manager.facts("pump")["replay_marker"]
        assert device.floor_file() == {"schema": 1, "floor": at(-1), "request_id": reset["id"]}
        assert device.marker_on_disk() == at(-1)
        assert (device.folder() / "active.onnx").read_bytes() == active  # no model changed
        assert manager.facts("pump")["source"] == "push"
        assert "a replay is refused" in device.refused(device.push("3", at(-5)))  # before it
        device.accepted(device.push("3", at(0)))
        reason = device.refused(reset, "model/reset")
        assert reason.startswith(f"clears: {ahead} is not the replay marker of the device")
        device.start()  # the reset and the push after it survive a restart
        assert device.manager.replay_floor() == at(0)

    def test_a_monitor_reset_replaces_that_monitor_marker_only(self, device: Device) -> None:
        """--monitor: the named monitor's marker is replaced; the floor stays, and with it
        a monitor without a marker of its own (fan: held to the floor, wedged too); a
        device reset replaces them all."""
        ahead = wedged(device, "pump", "fan")
        manager = device.manager
        assert manager.facts("fan")["replay_marker"] == ahead
        assert "replay floor" in device.refused(device.push("3", at(-600), "fan"))
        reset = device.reset(clears=ahead, issued_at=at(0), monitor="pump")
        assert device.accepted(reset, "model/reset") == ReplayReset(
            reset["id"], "pump", ahead, at(0)
        )
        assert manager.facts("pump")["replay_marker"] == at(0)
        assert manager.facts("fan")["replay_marker"] == ahead == manager.replay_floor()
        whole = device.reset(clears=ahead, issued_at=at(1))
        device.accepted(whole, "model/reset")
        assert manager.facts("fan")["replay_marker"] == at(1) == manager.replay_floor()
        assert device.marker_on_disk("fan") == at(1) == device.marker_on_disk("pump")

    def test_refusals_name_their_reason_and_change_nothing(
        self, device: Device, keys: tuple[Path, Path]
    ) -> None:
        """A wrong clears, an unsigned reset (even with push.allow_unsigned), another
        key, the fleet target, an issued_at older or newer than the clock allows, an
        unknown monitor: each refused with its reason, the marker untouched."""
        ahead = wedged(device, "pump")
        device.start("pump", allow_unsigned=True)
        stranger = Ed25519PrivateKey.generate()
        cases = {
            "clears: 2099-01-01T00:00:00.000Z is not the replay marker of the device": (
                device.reset(clears="2099-01-01T00:00:00.000Z")
            ),
            "unsigned reset refused": device.reset(clears=ahead, key=None),
            "bad signature": device.reset(clears=ahead, key=stranger),
            "target: a reset addresses one device": device.reset(clears=ahead, target="*"),
            f"issued_at: {at(-600)} is 600 s behind this device's clock": (
                device.reset(clears=ahead, issued_at=at(-600))
            ),
            f"issued_at: {at(3600)} is 3600 s ahead of this device's clock": (
                device.reset(clears=ahead, issued_at=at(3600))
            ),
            "monitor: no monitor named 'fan'": device.reset(clears=ahead, monitor="fan"),
        }
        for start, message in cases.items():
            reason = device.refused(message, "model/reset")
            assert reason.startswith(start), (start, reason)
            last = device.manager.last_push()
            assert last is not None and not last["ok"] and last["error"] == reason
        assert device.manager.replay_floor() == ahead == device.marker_on_disk()

    def test_a_device_without_a_marker_has_nothing_to_reset(self, device: Device) -> None:
        device.start()
        reason = device.refused(device.reset(clears=at(0)), "model/reset")
        assert reason == "clears: the device has no replay marker: nothing to reset"

    def test_a_reset_delivered_twice_is_answered_once(self, device: Device) -> None:
        """QoS 1 redelivery of an accepted reset is ignored, not refused: last_push keeps
        saying it was accepted."""
        ahead = wedged(device, "pump")
        reset = device.reset(clears=ahead)
        device.accepted(reset, "model/reset")
        with capture_logs() as logs:  # the duplicate filter answers before submit returns
            device.manager.submit_reset({k: v for k, v in reset.items() if k != "id"}, reset["id"])
        assert [e["event"] for e in logs] == ["model_command_duplicate"]
        shared = device.manager._shared
        assert (shared.in_flight, shared.flight, shared.tasks.empty()) == (0, None, True)
        assert device.manager.take_results() == []
        last = device.manager.last_push()
        assert last is not None and last["ok"] and last["id"] == reset["id"]

    def test_a_reset_waits_its_turn_behind_a_push(self, device: Device) -> None:
        """Like a push or rollback, a reset is 'busy' while one is in flight."""
        ahead = wedged(device, "pump")
        device.stop()
        manager = ModelManager(device.state_dir, device_id=DEVICE, wall_clock=lambda: NOW_S)
        manager.load(device.config("pump"))
        push = device.push("3", at(-1))
        manager.submit_push({k: v for k, v in push.items() if k != "id"}, push["id"])
        reset = device.reset(clears=ahead)
        try:
            with pytest.raises(CommandError, match=r"^busy"):
                manager.submit_reset({k: v for k, v in reset.items() if k != "id"}, reset["id"])
        finally:
            manager.stop()


class TestResetGivesUpLittle:
    def test_a_device_reset_keeps_a_marker_that_is_not_wedged(self, device: Device) -> None:
        """The reset is signed; then a push to another monitor (fan, its marker not
        wedged) is signed and accepted before the reset arrives. The reset replaces the
        wedged markers (pump's, the floor's) and keeps fan's: the fan push, replayed,
        stays refused, after a restart too; the floor stays at the latest marker."""
        device.start("pump", "fan", max_clock_skew_s=DAY_S)
        device.accepted(device.push("2", at(-100), "fan"))
        ahead = at(20 * 3600)
        device.accepted(device.push("2", ahead, "pump"))
        manager = device.start("pump", "fan")
        reset = device.reset(clears=ahead, issued_at=at(-30))
        fan = device.push("3", at(-10), "fan")
        device.accepted(fan)
        done = device.accepted(reset, "model/reset")
        assert done == ReplayReset(reset["id"], None, ahead, at(-10))
        assert manager.facts("pump")["replay_marker"] == at(-30) == device.marker_on_disk("pump")
        assert manager.facts("fan")["replay_marker"] == at(-10) == device.marker_on_disk("fan")
        assert manager.replay_floor() == at(-10) == device.floor_file()["floor"]
        for _ in ("now", "after a restart"):
            device.manager.submit_push({k: v for k, v in fan.items() if k != "id"}, fan["id"])
            assert device.manager._shared.in_flight == 0  # the very message: a duplicate
            same_time = device.push("2", at(-10), "fan")  # or any signed no later
            assert "a replay is refused" in device.refused(same_time)
            device.start("pump", "fan")
        device.accepted(device.push("3", at(-20), "pump"))  # signed after the reset

    def test_a_monitor_reset_keeps_a_marker_that_is_not_wedged(self, device: Device) -> None:
        """A marker ahead of the clock by less than push.max_clock_skew_s passes by
        itself: a reset of it (the device's or the monitor's) would only reopen a
        window, and is refused as having nothing to reset; nothing changes."""
        manager = device.start("pump", "fan")
        device.accepted(device.push("2", at(60), "pump"))
        for monitor in (None, "pump"):
            reason = device.refused(device.reset(clears=at(60), monitor=monitor), "model/reset")
            assert reason.startswith(
                "nothing to reset: no marker is ahead of this device's clock "
                f"({at(0)}) by more than push.max_clock_skew_s (300 s): the replay marker of "
            ), reason
        assert manager.facts("pump")["replay_marker"] == at(60) == manager.replay_floor()
        assert device.marker_on_disk("pump") == at(60) == device.floor_file()["floor"]
        assert "a replay is refused" in device.refused(device.push("3", at(60), "pump"))

    def test_a_reset_that_cannot_be_stored_changes_nothing_and_is_checked_again(
        self, device: Device, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """replay.json is written, then state.json fails: the reset is refused and the
        device still checks against the markers it had (the floor too), so the QoS
        redelivery of the same reset is checked again and accepted, not dropped as a
        duplicate."""
        ahead = wedged(device, "pump")
        reset = device.reset(clears=ahead)

        def full(self: MonitorFiles, state: object) -> None:
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patched:
            patched.setattr(MonitorFiles, "write_state", full)
            reason = device.refused(reset, "model/reset")
        assert reason.startswith("the reset cannot be stored: "), reason
        manager = device.manager
        assert manager.replay_floor() == ahead == manager.facts("pump")["replay_marker"]
        assert "a replay is refused" in device.refused(device.push("3", at(-5)))
        done = device.accepted(reset, "model/reset")  # the redelivery
        assert done == ReplayReset(reset["id"], None, ahead, at(0))
        assert device.floor_file()["floor"] == at(0) == device.marker_on_disk()
        device.accepted(device.push("3", at(1)))


class TestCheapChecksFirst:
    def test_no_child_is_spawned_for_a_request_refused_on_its_fields(
        self, device: Device, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Replays, requests dated too far ahead, an unknown monitor, a reset with the
        wrong clears, stale or with nothing to reset: each refused with its reason and
        without verifying the signature (a child process each); the signature of what
        passes those is still verified."""
        calls: list[bytes] = []
        real = DeviceKey.verify

        def counted(self: DeviceKey, signature: bytes, data: bytes) -> bool:
            calls.append(data)
            return real(self, signature, data)

        monkeypatch.setattr(DeviceKey, "verify", counted)
        ahead = wedged(device, "pump")
        calls.clear()
        cases = [
            (device.push("3", at(-5)), "model", "a replay is refused"),
            (device.rollback(at(-4)), "model/rollback", "a replay is refused"),
            (device.push("3", at(365 * DAY_S)), "model", "ahead of this device's clock"),
            (device.push("3", at(-3), "fan"), "model", "monitor: no monitor named 'fan'"),
            (device.reset(clears=at(0)), "model/reset", "is not the replay marker"),
            (device.reset(clears=ahead, issued_at=at(-600)), "model/reset", "s behind"),
            (device.reset(clears=ahead, issued_at=at(3600)), "model/reset", "s ahead"),
        ]
        for message, command, reason in cases:
            assert reason in device.refused(message, command)
        assert calls == []
        device.accepted(device.reset(clears=ahead, issued_at=at(-1)), "model/reset")
        assert len(calls) == 1
        again = device.reset(clears=at(-1))
        assert device.refused(again, "model/reset").startswith("nothing to reset")
        push = device.push("3", at(0))
        device.accepted(push)
        assert len(calls) == 2
        assert "a replay is refused" in device.refused(device.push("2", at(0)))
        forged = {**device.push("2", at(1)), "sha256": push["sha256"], "size": push["size"]}
        forged["model"] = push["model"]
        assert device.refused(forged).startswith("bad signature")  # fields fine: verified
        assert len(calls) == 3


def test_a_marker_that_is_not_a_time_counts_as_wedged() -> None:
    """A hand-edited or old-format marker in state.json (any string) can be cleared by a
    reset, instead of making every reset fail with an internal error."""
    from asd_edge.modelstore.reset import _wedged

    assert _wedged("not-a-time", 0.0, 300.0)
    assert _wedged("z", 0.0, 300.0)
    assert not _wedged("2026-01-01T00:00:00.000Z", 2e9, 300.0)
