"""The outbox's move into memory: rowids that never repeat, a merge that lets a released
row win over its held copy, and only disk errors taken for the disk's fault."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from asd_edge.config import OutboxConfig
from asd_edge.mqtt.delivery import Delivery
from asd_edge.mqtt.outbox import MEMORY, Outbox, OutboxStorage, Salvage, storage
from asd_edge.mqtt.outbox.rows import OutboxContents
from asd_edge.statedisk import StateDisk

TOPIC = "asd/dev/alert"
SUCCESS = ReasonCode(PacketTypes.PUBACK, "Success")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class _Info:
    mid: int


class FakeClient:
    """Records what is published; mids count up from 1."""

    def __init__(self) -> None:
        self.published: list[tuple[int, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int) -> _Info:
        self.published.append((len(self.published) + 1, bytes(payload)))
        return _Info(len(self.published))

    def mid_of(self, payload: bytes) -> int:
        [mid] = [mid for mid, sent in self.published if sent == payload]
        return mid


def unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the outbox file cannot be read either: the open connection's reads
    fail with an I/O error and a salvage finds nothing."""

    def contents(self: Outbox) -> OutboxContents:
        exc = sqlite3.OperationalError("disk I/O error")
        exc.sqlite_errorname = "SQLITE_IOERR_READ"  # type: ignore[attr-defined]
        raise exc

    monkeypatch.setattr(Outbox, "contents", contents)
    monkeypatch.setattr(
        storage, "read_damaged", lambda path: Salvage(OutboxContents(), False, error="EIO")
    )


def refuse_writes(store: OutboxStorage) -> None:
    """The file's connection refuses writes from now on (SQLITE_READONLY)."""
    file = store._file
    assert file is not None
    file._conn.execute("PRAGMA query_only=ON")


class TestFileUnreadable:
    def test_memory_rowids_continue_past_the_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The file refuses writes and cannot be read: the memory outbox it falls back to
        numbers its rows after every rowid the file handed out, so no new row takes the
        number of one still in flight from the file."""
        store = OutboxStorage(tmp_path / "outbox.sqlite", max_rows=100, max_age_s=1e9)
        store.open()
        try:
            first = [store.run(lambda ob, i=i: ob.add(f"a{i}", TOPIC, b"{}")) for i in range(5)]
            store.run(lambda ob: ob.ack(first[-1]))
            unreadable(monkeypatch)
            refuse_writes(store)
            new = store.run(lambda ob: ob.add("b", TOPIC, b"{}"))
            assert store.storage == "memory"
            assert new > max(first)
        finally:
            store.close()

    def test_every_alert_delivered_once_and_none_deleted_unsent(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Rows 1-5 published from the file, row 1 still in flight; the disk then fails
        reads and writes. A new alert goes to memory: it is published at the next pump,
        row 1's late PUBACK deletes nothing else, and every alert goes out exactly once."""
        delivery = Delivery(
            topic=TOPIC,
            outbox_path=tmp_path / "outbox.sqlite",
            outbox=OutboxConfig(),
            clock=Clock(),
            disk=StateDisk(tmp_path),
        )
        client = FakeClient()
        delivery.open()
        try:
            for i in range(5):
                delivery.store(f"a{i}", "start", b"a%d" % i, False, 0.0)
            delivery.pump(client)  # type: ignore[arg-type]
            assert [p for _mid, p in client.published] == [b"a%d" % i for i in range(5)]
            for i in range(1, 5):
                delivery.acknowledged(client.mid_of(b"a%d" % i), SUCCESS)
            assert delivery.in_flight == 1  # a0, row 1

            unreadable(monkeypatch)
            refuse_writes(delivery.storage)
            delivery.store("b", "start", b"b", False, 0.0)
            assert delivery.storage.storage == "memory"
            delivery.acknowledged(client.mid_of(b"a0"), SUCCESS)  # late PUBACK of row 1
            assert delivery.storage.run(Outbox.depth) == 1  # b is still there, unsent

            delivery.pump(client)  # type: ignore[arg-type]
            delivery.acknowledged(client.mid_of(b"b"), SUCCESS)
            delivery.pump(client)  # type: ignore[arg-type]
            sent = [p for _mid, p in client.published]
            assert sent == [b"a0", b"a1", b"a2", b"a3", b"a4", b"b"]
            assert delivery.storage.run(Outbox.depth) == 0
            assert delivery.in_flight == 0
        finally:
            delivery.close()

    def test_the_cursor_starts_again_when_the_storage_changes(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Back on the file, rows it holds below the delivery's cursor (a previous run's,
        on a file that could not be read before) are published without a reconnect."""
        path = tmp_path / "outbox.sqlite"
        with Outbox(path, max_rows=100, max_age_s=1e9) as ob:
            old = [ob.add(f"old{i}", TOPIC, b"old%d" % i) for i in range(3)]
            for rowid in old[:-1]:
                ob.ack(rowid)
        clock = Clock()
        delivery = Delivery(
            topic=TOPIC, outbox_path=path, outbox=OutboxConfig(), clock=clock, retry_s=1.0
        )
        client = FakeClient()
        delivery.open()
        try:
            # The file stops taking writes and cannot be read: "old2" (rowid 3) is not seen.
            with monkeypatch.context() as patch:
                unreadable(patch)
                refuse_writes(delivery.storage)
                # Stored before the file's old2 was ever published.
                for i in range(5):
                    delivery.store(f"m{i}", "start", b"m%d" % i, False, 0.0)
            assert delivery.storage.storage == "memory"
            delivery.pump(client)  # type: ignore[arg-type]
            clock.now += 2
            delivery.maintain()
            assert delivery.storage.storage == "file"
            delivery.pump(client)  # type: ignore[arg-type]
            sent = [p for _mid, p in client.published]
            assert sorted(sent) == sorted([b"old2", *(b"m%d" % i for i in range(5))])
        finally:
            delivery.close()


class TestMerge:
    def test_a_released_row_wins_over_its_held_copy(self) -> None:
        """The file holds a held end; memory holds the same end released with its final
        payload: after the merge the row is ready with that payload."""
        with (
            Outbox(MEMORY, max_rows=100, max_age_s=1e9) as here,
            Outbox(MEMORY, max_rows=100, max_age_s=1e9) as there,
        ):
            rowid = here.add("e", TOPIC, b"recording", ready=False, key="end")
            other = there.add("e", TOPIC, b"recording", ready=False, key="end")
            assert there.release(other, b"saved")
            here.load(there.contents(), replace=False)
            assert here.held() == []
            [row] = here.pending()
            assert (row.rowid, row.payload) == (rowid, b"saved")

    def test_a_held_copy_does_not_undo_a_release(self) -> None:
        """The other way round: a ready row here stays ready with its payload."""
        with (
            Outbox(MEMORY, max_rows=100, max_age_s=1e9) as here,
            Outbox(MEMORY, max_rows=100, max_age_s=1e9) as there,
        ):
            here.add("e", TOPIC, b"saved", key="end")
            there.add("e", TOPIC, b"recording", ready=False, key="end")
            here.load(there.contents(), replace=False)
            assert [row.payload for row in here.pending()] == [b"saved"]


class TestAck:
    def test_an_ack_for_another_alert_phase_deletes_nothing(self) -> None:
        """A rowid acknowledged with the alert phase it was sent as: a row that now has
        that rowid but is another alert phase stays."""
        with Outbox(MEMORY, max_rows=100, max_age_s=1e9) as ob:
            rowid = ob.add("new", TOPIC, b"{}", key="start")
            ob.ack(rowid, alert_id="old", key="start")
            ob.ack(rowid, alert_id="new", key="end")
            assert ob.depth() == 1
            ob.ack(rowid, alert_id="new", key="start")
            assert ob.depth() == 0


class TestFallbackTrigger:
    @pytest.mark.parametrize(
        "statement",
        [
            "SELECT * FROM no_such_table",  # OperationalError, SQLITE_ERROR
            "SELECT ?",  # ProgrammingError: a binding missing
            "INSERT INTO counters VALUES ('dropped_rows', 1)",  # IntegrityError
        ],
    )
    def test_a_programming_error_is_raised_not_a_disk_fault(
        self, tmp_path: Path, statement: str
    ) -> None:
        disk = StateDisk(tmp_path)
        store = OutboxStorage(tmp_path / "outbox.sqlite", max_rows=100, max_age_s=1e9, disk=disk)
        store.open()
        try:
            store.run(lambda ob: ob.add("a", TOPIC, b"{}"))
            with pytest.raises(sqlite3.Error):
                store.run(lambda ob: ob._conn.execute(statement).fetchall())
            assert store.storage == "file"
            assert disk.faults() == []
            assert store.run(Outbox.depth) == 1
        finally:
            store.close()

    def test_a_read_only_file_still_falls_back(self, tmp_path: Path) -> None:
        disk = StateDisk(tmp_path)
        store = OutboxStorage(tmp_path / "outbox.sqlite", max_rows=100, max_age_s=1e9, disk=disk)
        store.open()
        try:
            refuse_writes(store)
            store.run(lambda ob: ob.add("a", TOPIC, b"{}"))
            assert store.storage == "memory"
            assert [f.part for f in disk.faults()] == ["outbox"]
        finally:
            store.close()
