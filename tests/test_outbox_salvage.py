"""The outbox on a bad disk: the rows of a damaged file salvaged, rows kept in memory while
the disk refuses the file, and taken back to it once it can."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from structlog.testing import capture_logs
from support.mounts import Mounts, fill, not_root

from asd_edge.mqtt.outbox import (
    MEMORY,
    OpenAlert,
    Outbox,
    OutboxContents,
    OutboxRow,
    OutboxStats,
    OutboxStorage,
    read_damaged,
)
from asd_edge.statedisk import StateDisk

TOPIC = "asd/dev/alert"
PAGE = 4096


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def payload(i: int) -> bytes:
    """A row's body: a unique marker, padded so that a page holds about a dozen rows."""
    return b'{"n": "%05d"}' % i + b" " * 300


def filled(
    path: Path, n: int, *, held: frozenset[int] = frozenset(), opened: frozenset[int] = frozenset()
) -> list[int]:
    """An outbox file with ``n`` rows ``a0``... (``held`` ones not ready, ``opened`` ones
    recorded open), closed cleanly (its WAL checkpointed into the file); their rowids."""
    with Outbox(path, max_rows=10_000, max_age_s=1e9) as ob:
        return [
            ob.add(f"a{i}", TOPIC, payload(i), ready=i not in held, key="start", opens=i in opened)
            for i in range(n)
        ]


def on_disk(path: Path, query: str = "SELECT alert_id FROM outbox ORDER BY rowid") -> list[object]:
    """What a separate connection reads from the file (closed again: a mount can go)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [row[0] if len(row) == 1 else row for row in conn.execute(query)]


def ids(rows: list[OutboxRow] | tuple[OutboxRow, ...]) -> list[str]:
    return [row.alert_id for row in rows]


class TestSalvage:
    def test_a_truncated_file_gives_every_row_before_the_cut(self, tmp_path: Path) -> None:
        """Its last pages cut off: the rows of the pages left come back in order with their
        ids and bodies, and the file's index names the ones lost."""
        path = tmp_path / "outbox.sqlite"
        rowids = filled(path, 200)
        path.write_bytes(path.read_bytes()[: -3 * PAGE])
        salvage = read_damaged(path)
        rows = salvage.contents.rows
        assert salvage.readable and 100 < len(rows) < 200
        assert [r.rowid for r in rows] == rowids[: len(rows)]
        assert ids(rows) == [f"a{i}" for i in range(len(rows))]
        assert all(r.payload == payload(i) and r.ready for i, r in enumerate(rows))
        assert salvage.lost_ids == [f"a{i}" for i in range(len(rows), 200)]
        assert salvage.contents.last_rowid == rowids[-1]

    def test_a_damaged_page_in_the_middle_is_passed_over(self, tmp_path: Path) -> None:
        """A page of rows overwritten with garbage: every row before and after it is read,
        and exactly the rows that page held are named lost."""
        path = tmp_path / "outbox.sqlite"
        filled(path, 200)
        data = bytearray(path.read_bytes())
        page = data.index(b'{"n": "00100"}') // PAGE
        on_page = [i for i in range(200) if data.index(b'{"n": "%05d"}' % i) // PAGE == page]
        data[page * PAGE : (page + 1) * PAGE] = b"\xa5" * PAGE
        path.write_bytes(bytes(data))
        salvage = read_damaged(path)
        assert 100 in on_page and len(on_page) < 20
        assert ids(salvage.contents.rows) == [f"a{i}" for i in range(200) if i not in on_page]
        assert salvage.lost_ids == [f"a{i}" for i in on_page]

    def test_a_file_that_is_not_a_database_gives_nothing(self, tmp_path: Path) -> None:
        """Garbage, a missing file, a folder: nothing readable, and it says so."""
        junk = tmp_path / "junk.sqlite"
        junk.write_bytes(b"not sqlite at all " * 500)
        (tmp_path / "folder.sqlite").mkdir()
        for path in (junk, tmp_path / "missing.sqlite", tmp_path / "folder.sqlite"):
            salvage = read_damaged(path)
            assert not salvage.readable and salvage.contents == OutboxContents()
            assert salvage.error

    def test_opening_a_truncated_outbox_carries_its_rows_into_a_new_file(
        self, tmp_path: Path
    ) -> None:
        """Opened, a truncated outbox is moved aside and replaced by a file holding what
        could be read: ready and held rows with their ids, the open alerts; new rows come
        after every old id; the log counts the rows salvaged and lost."""
        path = tmp_path / "outbox.sqlite"
        rowids = filled(path, 120, held=frozenset({3}), opened=frozenset({0, 7}))
        path.write_bytes(path.read_bytes()[: -2 * PAGE])
        with capture_logs() as logs, Outbox(path, max_rows=10_000, max_age_s=1e9) as ob:
            kept = ob.pending(limit=1000)
            assert 60 < len(kept) < 119
            assert [r.rowid for r in kept] == [r for i, r in enumerate(rowids) if i != 3][
                : len(kept)
            ]
            assert ids(ob.held()) == ["a3"]
            assert [alert_id for alert_id, _ in ob.open_alerts(TOPIC)] == ["a0", "a7"]
            assert ob.add("new", TOPIC, b"{}") > rowids[-1]
        [moved] = tmp_path.glob("outbox.sqlite.corrupt-*[0-9TZ]")
        assert moved.stat().st_size > 0
        [event] = [e for e in logs if e["event"] == "outbox_salvaged"]
        assert event["rows"] == len(kept) + 1 and event["held"] == 1
        assert event["lost"] == 120 - len(kept) - 1 and event["open_alerts"] == 2
        assert event["lost_alerts"][:2] == [f"a{len(kept) + 1}", f"a{len(kept) + 2}"]


class TestLoad:
    def contents(self) -> OutboxContents:
        rows = (
            OutboxRow(5, "x", TOPIC, b"5", 1.0, True, "start"),
            OutboxRow(9, "y", TOPIC, b"9", 2.0, False, "end"),
        )
        opened = (OpenAlert("x", TOPIC, b"5"),)
        return OutboxContents(rows, opened, OutboxStats(2, 1), last_rowid=40)

    def test_replace_takes_the_other_outbox_place(self) -> None:
        """Rows keep their rowids and held state, counters and open alerts come along,
        what was here goes, and new rows come after the other's last rowid."""
        with Outbox(MEMORY, max_rows=100, max_age_s=1e9, clock=lambda: 3.0) as ob:
            ob.add("old", TOPIC, b"{}")
            assert ob.load(self.contents(), replace=True) == {}
            assert [(r.rowid, r.alert_id, r.ready) for r in ob.contents().rows] == [
                (5, "x", True),
                (9, "y", False),
            ]
            assert ob.open_alerts(TOPIC) == [("x", b"5")] and ob.stats == OutboxStats(2, 1)
            assert ob.add("new", TOPIC, b"{}") == 41

    def test_merge_comes_after_the_rows_here(self) -> None:
        """Without replace: the rows here stay first, the others follow in their order,
        renumbered where their rowid is not above the rows here; a row already here is
        not added twice; the counters add up."""
        with Outbox(MEMORY, max_rows=100, max_age_s=1e9, clock=lambda: 3.0) as ob:
            for i in range(7):
                ob.add(f"here{i}", TOPIC, b"{}")
            ob.add("x", TOPIC, b"here", key="start")
            remap = ob.load(self.contents(), replace=False)
            rows = ob.contents().rows
            assert ids(rows) == [*(f"here{i}" for i in range(7)), "x", "y"]
            assert remap == {5: 8}  # "x" was here already; "y" keeps its rowid
            assert rows[-1].rowid == 9 and rows[-2].payload == b"here"
            assert ob.stats == OutboxStats(2, 1)


def storage(path: Path, clock: Clock, disk: StateDisk | None = None) -> OutboxStorage:
    return OutboxStorage(path, max_rows=1000, max_age_s=1e9, clock=clock, retry_s=60, disk=disk)


class TestStorage:
    def test_a_read_only_outbox_is_delivered_from_memory(
        self, mounts: Mounts, tmp_path: Path
    ) -> None:
        """A read-only file system under an outbox with rows: every row is in memory, ids,
        order and held state kept, new rows are taken, the disk's trouble is told."""
        where = mounts.tmpfs("state")
        rowids = filled(where / "outbox.sqlite", 5, held=frozenset({2}), opened=frozenset({4}))
        mounts.read_only(where)
        disk = StateDisk(where)
        store = storage(where / "outbox.sqlite", Clock(), disk)
        store.open()
        try:
            assert (store.storage, store.reason) == ("memory", "read_only")
            pending = store.run(lambda ob: ob.pending())
            assert [r.rowid for r in pending] == [r for i, r in enumerate(rowids) if i != 2]
            assert ids(store.run(Outbox.held)) == ["a2"]
            assert store.run(lambda ob: ob.open_alerts(TOPIC))[0][0] == "a4"
            assert store.run(lambda ob: ob.add("new", TOPIC, b"{}")) > rowids[-1]
            assert [(f.part, f.reason) for f in disk.faults()] == [("outbox", "read_only")]
        finally:
            store.close()

    def test_a_read_only_folder_as_an_ordinary_user(self, tmp_path: Path) -> None:
        """The same without root: a file and folder the daemon's user may not write."""
        not_root()
        folder = tmp_path / "state"
        folder.mkdir()
        filled(folder / "outbox.sqlite", 3)
        (folder / "outbox.sqlite").chmod(0o444)
        folder.chmod(0o555)
        store = storage(folder / "outbox.sqlite", Clock())
        try:
            store.open()
            assert store.storage == "memory" and store.reason in ("read_only", "permission")
            assert ids(store.run(lambda ob: ob.pending())) == ["a0", "a1", "a2"]
        finally:
            store.close()
            folder.chmod(0o755)

    def test_a_disk_that_fills_up_and_empties_again(self, mounts: Mounts) -> None:
        """The disk fills: the write that fails lands in memory beside every row of the
        file (same rowids). Room again: at the next retry the file takes the memory's rows
        (acknowledged ones gone, held ones held) and is used again."""
        where = mounts.tmpfs("state", size_kb=512)
        clock, disk = Clock(), StateDisk(where)
        store = storage(where / "outbox.sqlite", clock, disk)
        store.open()
        try:
            first = [
                store.run(lambda ob, i=i: ob.add(f"a{i}", TOPIC, payload(i))) for i in range(3)
            ]
            filler = fill(where)
            held = store.run(lambda ob: ob.add("b", TOPIC, payload(9) * 20, ready=False))
            assert (store.storage, store.reason) == ("memory", "full")
            assert [r.rowid for r in store.run(lambda ob: ob.pending())] == first
            store.run(lambda ob: ob.ack(first[0]))
            assert on_disk(where / "outbox.sqlite") == ["a0", "a1", "a2"]  # as it was
            filler.unlink()
            clock.now += 59
            assert store.retry() is None and store.storage == "memory"
            clock.now += 1
            assert store.retry() == {} and store.storage == "file"
            assert on_disk(
                where / "outbox.sqlite", "SELECT rowid, alert_id, ready FROM outbox"
            ) == [
                (first[1], "a1", 1),
                (first[2], "a2", 1),
                (held, "b", 0),
            ]
            assert disk.faults() == []
        finally:
            store.close()

    def test_back_on_a_file_that_holds_rows_of_its_own(self, tmp_path: Path) -> None:
        """A file that could not be read at all comes back with rows of a previous run:
        they stay first, the memory's rows follow, renumbered (returned for the delivery's
        bookkeeping)."""
        path = tmp_path / "outbox.sqlite"
        path.mkdir()  # not a file: nothing can be read
        clock = Clock()
        store = storage(path, clock)
        store.open()
        try:
            mine = [store.run(lambda ob, i=i: ob.add(f"m{i}", TOPIC, b"{}")) for i in range(2)]
            path.rmdir()
            filled(path, 3)
            clock.now += 60
            remap = store.retry()
            assert store.storage == "file" and remap is not None
            assert on_disk(path) == ["a0", "a1", "a2", "m0", "m1"]
            assert sorted(remap) == mine and min(remap.values()) > 3
        finally:
            store.close()

    def test_a_file_system_that_turns_read_only_under_the_open_file(self, mounts: Mounts) -> None:
        """A disk error makes the file system read-only while the outbox is open: the next
        write moves every row into memory and is kept there."""
        where = mounts.ext4("state")
        disk = StateDisk(where)
        store = storage(where / "outbox.sqlite", Clock(), disk)
        store.open()
        try:
            first = [store.run(lambda ob, i=i: ob.add(f"a{i}", TOPIC, b"{}")) for i in range(2)]
            mounts.fail(where)
            store.run(lambda ob: ob.ack(first[0]))
            assert (store.storage, store.reason) == ("memory", "read_only")
            assert ids(store.run(lambda ob: ob.pending())) == ["a1"]
            store.run(lambda ob: ob.add("b", TOPIC, b"{}"))
            assert ids(store.run(lambda ob: ob.pending())) == ["a1", "b"]
            assert disk.faults()[0].reason == "read_only"
        finally:
            store.close()
