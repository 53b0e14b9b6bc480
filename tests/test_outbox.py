"""Tests of the outbox: alerts kept on disk, in order, until the broker acknowledged them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from asd_edge.mqtt.outbox import Outbox, OutboxError

TOPIC = "asd/dev/alert"
SHM = Path("/dev/shm")


class Clock:
    """A settable wall clock, in seconds since the epoch."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_outbox(
    path: Path, *, max_rows: int = 1000, max_age_s: float = 86400.0, clock: Clock | None = None
) -> Outbox:
    return Outbox(path, max_rows=max_rows, max_age_s=max_age_s, clock=clock or Clock())


def ids(rows: list) -> list[str]:
    return [row.alert_id for row in rows]


class TestDurability:
    def test_rows_survive_close_and_reopen(self, tmp_path: Path) -> None:
        """What was added and not acked is there, byte for byte and in order, after a restart."""
        path = tmp_path / "outbox.sqlite"
        with open_outbox(path) as ob:
            for i in range(3):
                ob.add(f"a{i}", TOPIC, f'{{"n": {i}}}'.encode(), key="start")
            ob.ack(ob.pending()[1].rowid)
        with open_outbox(path) as ob:
            rows = ob.pending()
            assert ids(rows) == ["a0", "a2"]
            assert [r.payload for r in rows] == [b'{"n": 0}', b'{"n": 2}']
            assert all(r.topic == TOPIC and r.key == "start" and r.ready for r in rows)

    def test_order_continues_across_restarts(self, tmp_path: Path) -> None:
        """A row added after a restart comes after every older row, even if the newest was acked."""
        path = tmp_path / "outbox.sqlite"
        with open_outbox(path) as ob:
            first = ob.add("old", TOPIC, b"{}")
            ob.ack(ob.add("acked", TOPIC, b"{}"))
        with open_outbox(path) as ob:
            new = ob.add("new", TOPIC, b"{}")
            assert new > first
            assert ids(ob.pending()) == ["old", "new"]

    def test_a_row_is_on_disk_when_add_returns(self, tmp_path: Path) -> None:
        """A process killed (SIGKILL) right after add() returned has not lost the row."""
        path = tmp_path / "outbox.sqlite"
        code = (
            "import sys, time\n"
            "from asd_edge.mqtt.outbox import Outbox\n"
            f"ob = Outbox({str(path)!r}, max_rows=10, max_age_s=1e9)\n"
            "ob.add('crash-1', 'asd/dev/alert', b'{\"id\": \"crash-1\"}', key='start')\n"
            "print('added', flush=True)\n"
            "time.sleep(60)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "added"
        finally:
            proc.kill()
            proc.wait()
        with Outbox(path, max_rows=10, max_age_s=1e9) as ob:
            assert ids(ob.pending()) == ["crash-1"]


class TestOrderAndAck:
    def test_pending_in_order_with_cursor_and_limit(self, tmp_path: Path) -> None:
        """pending() pages through ready rows oldest first."""
        with open_outbox(tmp_path / "o.sqlite") as ob:
            rowids = [ob.add(f"a{i}", TOPIC, b"{}") for i in range(5)]
            assert ids(ob.pending(limit=2)) == ["a0", "a1"]
            assert ids(ob.pending(after_rowid=rowids[1], limit=10)) == ["a2", "a3", "a4"]

    def test_ack_deletes_only_that_row(self, tmp_path: Path) -> None:
        """ack removes one row; an unknown or repeated ack changes nothing."""
        with open_outbox(tmp_path / "o.sqlite") as ob:
            rowids = [ob.add(f"a{i}", TOPIC, b"{}") for i in range(3)]
            ob.ack(rowids[1])
            ob.ack(rowids[1])
            ob.ack(999)
            assert ids(ob.pending()) == ["a0", "a2"]
            assert ob.depth() == 2

    def test_a_retry_never_duplicates_a_row(self, tmp_path: Path) -> None:
        """The same (alert, topic, phase) added again returns the first row, unchanged."""
        with open_outbox(tmp_path / "o.sqlite") as ob:
            start = ob.add("a1", TOPIC, b'{"v": 1}', key="start")
            assert ob.add("a1", TOPIC, b'{"v": 2}', key="start") == start
            end = ob.add("a1", TOPIC, b'{"v": 3}', key="end")
            assert end != start
            assert [(r.key, r.payload) for r in ob.pending()] == [
                ("start", b'{"v": 1}'),
                ("end", b'{"v": 3}'),
            ]


class TestBounds:
    def test_max_rows_drops_the_oldest_and_counts(self, tmp_path: Path) -> None:
        """Beyond max_rows the oldest rows go; the count survives a restart."""
        path = tmp_path / "o.sqlite"
        with capture_logs() as logs, open_outbox(path, max_rows=3) as ob:
            for i in range(5):
                ob.add(f"a{i}", TOPIC, b"{}")
            assert ids(ob.pending()) == ["a2", "a3", "a4"]
        assert [e["reason"] for e in logs if e["event"] == "outbox_dropped"] == ["max_rows"] * 2
        with open_outbox(path, max_rows=3) as ob:
            assert ob.stats.dropped_rows == 2
            assert ob.stats.dropped_age == 0

    def test_max_age_drops_old_rows_and_counts(self, tmp_path: Path) -> None:
        """Rows older than max_age_s are dropped when adding and when opening."""
        path = tmp_path / "o.sqlite"
        clock = Clock()
        with open_outbox(path, max_age_s=100.0, clock=clock) as ob:
            ob.add("t0", TOPIC, b"{}")
            clock.now += 50
            ob.add("t50", TOPIC, b"{}")
            clock.now += 60
            ob.add("t110", TOPIC, b"{}")
            assert ids(ob.pending()) == ["t50", "t110"]
            assert ob.stats.dropped_age == 1
        clock.now += 500
        with open_outbox(path, max_age_s=100.0, clock=clock) as ob:
            assert ob.depth() == 0
            assert ob.stats.dropped_age == 3
            assert ob.stats.dropped_rows == 0


class TestHeld:
    def test_a_held_row_waits_for_release(self, tmp_path: Path) -> None:
        """A held row is not pending, survives a restart held, and is released in its place."""
        path = tmp_path / "o.sqlite"
        with open_outbox(path) as ob:
            ob.add("a0", TOPIC, b"{}")
            held = ob.add("a1", TOPIC, b'{"clip": null}', ready=False, key="end")
            ob.add("a2", TOPIC, b"{}")
            assert ids(ob.pending()) == ["a0", "a2"]
        with open_outbox(path) as ob:
            assert [(r.rowid, r.alert_id, r.key, r.ready) for r in ob.held()] == [
                (held, "a1", "end", False)
            ]
            assert ob.release(held, b'{"clip": "x.wav"}')
            assert ob.held() == []
            rows = ob.pending()
            assert ids(rows) == ["a0", "a1", "a2"]
            assert rows[1].payload == b'{"clip": "x.wav"}'
            assert ob.find("a1", TOPIC, "end") == rows[1]

    def test_release_of_an_unknown_row(self, tmp_path: Path) -> None:
        """Releasing a row that is not there says so."""
        with open_outbox(tmp_path / "o.sqlite") as ob:
            assert not ob.release(42, b"{}")


class TestOpenAlerts:
    def test_a_start_is_open_until_its_end_and_across_restarts(self, tmp_path: Path) -> None:
        """A start is recorded open with its payload until its end is added, acked or not;
        what is open survives a restart (a crash), in the order the alerts started."""
        path = tmp_path / "o.sqlite"
        with open_outbox(path) as ob:
            ob.ack(ob.add("a0", TOPIC, b'{"n": 0}', key="start", opens=True))
            ob.add("a1", TOPIC, b'{"n": 1}', key="start", opens=True)
            ob.add("a2", TOPIC, b'{"n": 2}', key="start", opens=True)
            assert ob.open_alerts(TOPIC) == [
                ("a0", b'{"n": 0}'),
                ("a1", b'{"n": 1}'),
                ("a2", b'{"n": 2}'),
            ]
            ob.add("a1", TOPIC, b"{}", ready=False, key="end", closes=True)  # held: closes too
        with open_outbox(path) as ob:
            assert ob.open_alerts(TOPIC) == [("a0", b'{"n": 0}'), ("a2", b'{"n": 2}')]
            ob.add("a0", TOPIC, b"{}", key="end", closes=True)
            assert ob.open_alerts(TOPIC) == [("a2", b'{"n": 2}')]
            assert ob.open_alerts("another/topic") == []

    def test_a_retried_start_changes_nothing(self, tmp_path: Path) -> None:
        """Adding a start again (a retry) neither duplicates it nor reopens an ended alert."""
        with open_outbox(tmp_path / "o.sqlite") as ob:
            ob.add("a0", TOPIC, b"first", key="start", opens=True)
            ob.add("a0", TOPIC, b"again", key="start", opens=True)
            assert ob.open_alerts(TOPIC) == [("a0", b"first")]
            ob.add("a0", TOPIC, b"{}", key="end", closes=True)
            ob.add("a0", TOPIC, b"first", key="start", opens=True)
            assert ob.open_alerts(TOPIC) == []

    def test_an_outbox_file_from_before_open_alerts_is_kept(self, tmp_path: Path) -> None:
        """A file made before the open-alert table existed keeps its rows and gains the table."""
        path = tmp_path / "o.sqlite"
        with open_outbox(path) as ob:
            ob.add("old", TOPIC, b"{}", key="start")
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE open_alerts")
        with capture_logs() as logs, open_outbox(path) as ob:
            assert ids(ob.pending()) == ["old"] and ob.open_alerts(TOPIC) == []
        assert not [e for e in logs if e["event"] == "outbox_corrupt"]


class TestCorruption:
    def test_a_garbage_file_is_moved_aside(self, tmp_path: Path) -> None:
        """A file that is not a database is renamed with a timestamp, logged, and replaced."""
        path = tmp_path / "outbox.sqlite"
        junk = b"this is not sqlite " * 300
        path.write_bytes(junk)
        with capture_logs() as logs, open_outbox(path) as ob:
            ob.add("a0", TOPIC, b"{}")
            assert ids(ob.pending()) == ["a0"]
        [moved] = tmp_path.glob("outbox.sqlite.corrupt-*[0-9TZ]")
        assert moved.read_bytes() == junk
        [event] = [e for e in logs if e["event"] == "outbox_corrupt"]
        assert event["log_level"] == "error" and event["moved_to"] == str(moved)

    def test_a_foreign_database_is_moved_aside(self, tmp_path: Path) -> None:
        """A SQLite file with another schema under our name is not ours: moved aside."""
        path = tmp_path / "outbox.sqlite"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE outbox (something TEXT)")
        with capture_logs() as logs, open_outbox(path) as ob:
            assert ob.depth() == 0
        assert any(e["event"] == "outbox_corrupt" for e in logs)
        assert len(list(tmp_path.glob("outbox.sqlite.corrupt-*"))) == 1

    def test_a_damaged_page_is_moved_aside(self, tmp_path: Path) -> None:
        """Overwritten pages in a real outbox are detected at open and the file set aside."""
        path = tmp_path / "outbox.sqlite"
        with open_outbox(path) as ob:
            for i in range(40):
                ob.add(f"alert-{i}", TOPIC, b"x" * 1000)
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(path.read_bytes())
        data[4096 + 8 : 4096 * 3] = b"\xa5" * (4096 * 2 - 8)
        path.write_bytes(bytes(data))
        with capture_logs() as logs, open_outbox(path) as ob:
            ob.add("fresh", TOPIC, b"{}")
            assert ids(ob.pending()) == ["fresh"]
        assert any(e["event"] == "outbox_corrupt" for e in logs)

    def test_an_impossible_path_is_a_clear_error(self, tmp_path: Path) -> None:
        """When no file can be made at all, OutboxError names the path."""
        (tmp_path / "file").write_text("x")
        with pytest.raises(OutboxError, match=r"file/outbox\.sqlite"):
            open_outbox(tmp_path / "file" / "outbox.sqlite")


# One step of the property test: add a new alert, ack the n-th pending row, or restart.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.booleans()),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("reopen"), st.none()),
        st.tuples(st.just("release"), st.integers(min_value=0, max_value=20)),
    ),
    max_size=30,
)


class TestProperties:
    @settings(max_examples=30, deadline=None)
    @given(steps)
    def test_order_kept_and_no_unacked_row_lost(self, ops: list[tuple[str, object]]) -> None:
        """Any sequence of add/ack/release/reopen keeps every un-acked row, in order of adding."""
        # tmpfs where there is one: this checks logic, fsync speed is not the point here.
        with tempfile.TemporaryDirectory(dir=SHM if SHM.is_dir() else None) as tmp:
            path = Path(tmp) / "o.sqlite"
            ob = open_outbox(path)
            ready: dict[str, bool] = {}  # the model: un-acked alerts in order -> ready?
            n = 0
            try:
                for op, arg in ops:
                    if op == "add":
                        ob.add(f"a{n}", TOPIC, f"{n}".encode(), ready=bool(arg))
                        ready[f"a{n}"] = bool(arg)
                        n += 1
                    elif op == "ack":
                        pending = ob.pending(limit=1000)
                        if pending:
                            row = pending[int(arg) % len(pending)]  # type: ignore[call-overload]
                            ob.ack(row.rowid)
                            del ready[row.alert_id]
                    elif op == "release":
                        held = ob.held()
                        if held:
                            row = held[int(arg) % len(held)]  # type: ignore[call-overload]
                            ob.release(row.rowid, row.payload)
                            ready[row.alert_id] = True
                    else:
                        ob.close()
                        ob = open_outbox(path)
                    assert ids(ob.pending(limit=1000)) == [a for a, r in ready.items() if r]
                    assert ids(ob.held()) == [a for a, r in ready.items() if not r]
                    assert ob.depth() == len(ready)
            finally:
                ob.close()
