"""Tests of the cmd/... handler: malformed commands are refused with a reason, nothing escapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from asd_edge.errors import CommandError
from asd_edge.mqtt import encode_json
from asd_edge.mqtt.commands import (
    MAX_COMMAND_BYTES,
    Command,
    CommandRouter,
    CommandSpec,
    parse_command,
)


class TestParse:
    def test_ping_with_and_without_id(self) -> None:
        """A ping may carry a request id; an empty payload counts as {}."""
        assert parse_command("ping", b'{"id": "r-1"}') == Command("ping", "r-1", {})
        assert parse_command("ping", b"") == Command("ping", None, {})
        assert parse_command("health", b" {} ") == Command("health", None, {})

    @pytest.mark.parametrize(
        ("suffix", "payload", "reason"),
        [
            ("reboot", b"{}", "unknown command 'reboot'; known: health, ping"),
            ("ping", b"\xff\xfe{}", "not UTF-8"),
            ("ping", b"{id: 1}", "not JSON"),
            ("ping", b'{"id": NaN}', "not standard JSON: NaN is not allowed"),
            ("ping", b"[1, 2]", "expected a JSON object, got an array"),
            ("ping", b'"ping"', "expected a JSON object, got a string"),
            ("ping", b'{"id": 5}', "id: expected a non-empty string, got a number"),
            ("ping", b'{"id": ""}', "id: expected a non-empty string, got a string"),
            ("ping", json.dumps({"id": "x" * 129}).encode(), "at most 128 characters, got 129"),
            ("ping", b'{"id": "a", "force": true}', "unknown field 'force'; expected one of: id"),
            ("ping", b"[" * 3000, "nested"),
            (
                "ping",
                b'{"id": "' + b"x" * 5000 + b'"}',
                "payload too large: 5010 bytes, at most 4096",
            ),
        ],
    )
    def test_malformed_commands_name_the_problem(
        self, suffix: str, payload: bytes, reason: str
    ) -> None:
        """Every kind of malformed message is a CommandError whose reason says what is wrong."""
        with pytest.raises(CommandError) as info:
            parse_command(suffix, payload)
        assert reason in info.value.reason

    def test_field_types_follow_the_spec(self) -> None:
        """Fields are checked against the spec; a boolean is not a number; required fields."""
        specs = {
            "set": CommandSpec(
                fields={"hop_s": (int, float), "on": (bool,)}, required=frozenset({"hop_s"})
            )
        }
        cmd = parse_command("set", b'{"id": "q", "hop_s": 0.5, "on": false}', commands=specs)
        assert cmd.args == {"hop_s": 0.5, "on": False} and cmd.id == "q"
        with pytest.raises(CommandError, match="hop_s: expected int or float, got a boolean"):
            parse_command("set", b'{"hop_s": true}', commands=specs)
        with pytest.raises(CommandError, match="on: expected bool, got a number") as info:
            parse_command("set", b'{"id": "q2", "hop_s": 1, "on": 1}', commands=specs)
        assert info.value.id == "q2"
        with pytest.raises(CommandError, match="missing field"):
            parse_command("set", b"{}", commands=specs)

    def test_no_spec_lifts_the_global_size_cap(self) -> None:
        """A spec cannot accept more than MAX_COMMAND_BYTES."""
        specs = {"big": CommandSpec(fields={"data": (str,)}, max_bytes=10 * MAX_COMMAND_BYTES)}
        payload = json.dumps({"data": "x" * MAX_COMMAND_BYTES}).encode()
        with pytest.raises(CommandError, match="too large"):
            parse_command("big", payload, commands=specs)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(["ping", "health", "model", "x/y", ""]), st.binary(max_size=200))
    def test_random_bytes_never_raise_anything_else(self, suffix: str, payload: bytes) -> None:
        """Whatever arrives, parse_command returns a Command or raises CommandError."""
        try:
            cmd = parse_command(suffix, payload)
        except CommandError as exc:
            assert exc.reason
        else:
            assert cmd.name in ("ping", "health")


class TestRouter:
    def make(self, **handlers: Any) -> tuple[CommandRouter, list[dict[str, Any]]]:
        replies: list[dict[str, Any]] = []
        return CommandRouter(handlers, reply=replies.append), replies

    def test_ping_is_answered(self) -> None:
        """ping is built in: the reply echoes the id and says ok."""
        router, replies = self.make()
        router("ping", b'{"id": "abc"}')
        assert replies == [{"command": "ping", "id": "abc", "ok": True, "error": None}]
        assert (router.handled, router.rejected) == (1, 0)

    def test_handler_runs_and_its_result_is_replied(self) -> None:
        """A handler gets the parsed command; what it returns goes into the reply."""
        seen: list[Command] = []

        def health(cmd: Command) -> dict[str, Any]:
            seen.append(cmd)
            return {"published": True}

        router, replies = self.make(health=health)
        router("health", b'{"id": "h1"}')
        assert seen == [Command("health", "h1", {})]
        assert replies[0]["ok"] and replies[0]["result"] == {"published": True}

    def test_malformed_messages_are_rejected_logged_and_counted(self) -> None:
        """A bad message is logged as command_rejected with its reason and answered ok=false."""
        router, replies = self.make()
        with capture_logs() as logs:
            router("ping", b'{"id": "r9", "x": 1}')
            router("shutdown", b"{}")
        assert router.rejected == 2
        assert [(r["command"], r["id"], r["ok"]) for r in replies] == [
            ("ping", "r9", False),
            ("shutdown", None, False),
        ]
        events = [e for e in logs if e["event"] == "command_rejected"]
        assert [e["log_level"] for e in events] == ["warning", "warning"]
        assert "unknown field 'x'" in events[0]["reason"]
        assert "unknown command 'shutdown'" in replies[1]["error"]

    def test_an_id_with_a_lone_surrogate_still_gets_a_reply(self) -> None:
        """JSON may spell a lone UTF-16 surrogate (``"\\ud800"``), which no UTF-8 reply can
        carry: the command is refused with the reason and a null id, and the reply is
        publishable; an unknown command with such an id is answered too."""
        replies: list[dict[str, Any]] = []
        router = CommandRouter({}, reply=replies.append)
        router("ping", b'{"id": "\\ud800x"}')
        router("no-such", b'{"id": "\\udc00"}')
        assert [(r["command"], r["id"], r["ok"]) for r in replies] == [
            ("ping", None, False),
            ("no-such", None, False),
        ]
        assert replies[0]["error"].startswith("id: expected Unicode text, got a lone surrogate")
        for reply in replies:
            encode_json(reply)  # what MqttLink.publish_command_result sends

    def test_a_failing_handler_is_contained(self) -> None:
        """A handler that raises is reported, counted and answered; the next command still works."""

        def broken(_cmd: Command) -> None:
            raise RuntimeError("disk on fire")

        router, replies = self.make(health=broken)
        with capture_logs() as logs:
            router("health", b"{}")
        router("ping", b"{}")
        assert router.rejected == 1
        assert replies[0]["ok"] is False and "RuntimeError: disk on fire" in replies[0]["error"]
        assert replies[1]["ok"] is True
        assert any(e["event"] == "command_rejected" and e.get("exc_info") for e in logs)

    def test_a_known_command_without_a_handler(self) -> None:
        """health with no handler given is refused as not available."""
        router, replies = self.make()
        router("health", b"{}")
        assert replies[0]["error"] == "command 'health' is not available"

    def test_a_failing_reply_does_not_escape(self) -> None:
        """Even the reply path failing is logged, not raised."""

        def reply(_answer: dict[str, Any]) -> None:
            raise OSError("gone")

        router = CommandRouter({}, reply=reply)
        with capture_logs() as logs:
            router("ping", b"{}")
        assert [e["event"] for e in logs][-1] == "command_reply_failed"


def test_unknown_command_reply_keeps_the_request_id() -> None:
    """A sender that asked for a command this daemon does not know still gets its id back."""
    with pytest.raises(CommandError) as info:
        parse_command("reboot", b'{"id": "req-7"}')
    assert info.value.id == "req-7" and "unknown command" in info.value.reason
    with pytest.raises(CommandError) as info:
        parse_command("reboot", b"\xff not json")
    assert info.value.id is None
