"""The state directory's health: the ``disk`` condition raised once and cleared once, the
reasons named, and the clip store reporting a folder it cannot write (and writing again)."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from support.clips import MODEL, Results, clips_config, pcm
from support.mounts import Mounts, not_root
from support.services import wait_until

from asd_edge.clips import ClipRequest, ClipStore
from asd_edge.errors import OutboxError
from asd_edge.statedisk import StateDisk, disk_reason


def sqlite_error(path: Path) -> sqlite3.Error:
    """A real SQLITE_READONLY: a write through a read-only connection."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            conn.execute("INSERT INTO t VALUES (1)")
        except sqlite3.Error as exc:
            return exc
    raise AssertionError("a read-only connection wrote")


class TestStateDisk:
    def test_one_start_and_one_end_however_many_parts_fail(self, tmp_path: Path) -> None:
        """The first part failing starts the condition, repeats and a second part change
        nothing but its details, and it ends once the last part writes again."""
        disk = StateDisk(tmp_path)
        assert disk.update(1.0) == [] and disk.active() == []
        disk.failed("outbox", OSError(errno.EROFS, "Read-only file system"))
        [start] = disk.update(2.0)
        assert (start.condition, start.channel, start.phase) == ("disk", None, "start")
        assert start.details["reason"] == "read_only" and start.details["path"] == str(tmp_path)
        disk.failed("outbox", OSError(errno.EROFS, "Read-only file system"))
        disk.failed("clips", OSError(errno.EROFS, "Read-only file system"))
        assert disk.update(3.0) == []
        [active] = disk.active()
        assert active.details["parts"] == {"outbox": "read_only", "clips": "read_only"}
        disk.recovered("outbox")
        assert disk.update(4.0) == [] and disk.active()
        disk.recovered("clips")
        [end] = disk.update(5.0)
        assert (end.phase, end.since_s, end.at_s) == ("end", 2.0, 5.0)
        assert disk.update(6.0) == [] and disk.active() == []

    def test_reasons(self, tmp_path: Path) -> None:
        """errno and SQLite's error names, also of the error an OutboxError came from."""
        assert disk_reason(OSError(errno.ENOSPC, "No space left on device")) == "full"
        assert disk_reason(OSError(errno.EACCES, "Permission denied")) == "permission"
        assert disk_reason(OSError(errno.EIO, "Input/output error")) == "io_error"
        readonly = sqlite_error(tmp_path / "x.sqlite")
        assert disk_reason(readonly) == "read_only"
        try:
            raise OutboxError("cannot use the outbox") from readonly
        except OutboxError as wrapped:
            assert disk_reason(wrapped) == "read_only"
        assert disk_reason(ValueError("odd"), tmp_path) == "error"  # a writable folder

    def test_the_file_system_says_read_only(self, mounts: Mounts) -> None:
        """An error that does not say why (SQLite's I/O error) gets it from the file system."""
        where = mounts.tmpfs("ro")
        mounts.read_only(where)
        assert disk_reason(sqlite3.OperationalError("disk I/O error"), where) == "read_only"


def request(store: ClipStore, alert_id: str) -> ClipRequest:
    started = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    return ClipRequest(
        alert_id=alert_id,
        monitor="pump",
        device_id="dev1",
        samples=pcm(8000),
        sample_rate=8000,
        started_at=started,
        stream_start_s=100.0,
        pre_s=0.5,
        event={},
        model=MODEL,
        scores=[],
        path=store.planned_path("pump", alert_id, started),
        markers_s=(0.5,),
    )


class TestClipStore:
    def test_a_read_only_folder_skips_clips_says_so_and_recovers(self, mounts: Mounts) -> None:
        """Read-only at start: the store starts anyway, each clip is skipped with the
        error, the disk is told; writable again, its test write clears that and clips are
        saved again."""
        where = mounts.tmpfs("state")
        mounts.read_only(where)
        results, disk = Results(), StateDisk(where)
        store = ClipStore(where / "clips", clips_config(), on_done=results, disk=disk, retry_s=0.05)
        store.start()
        try:
            assert [f.part for f in disk.faults()] == ["clips"]
            assert store.submit(request(store, "a1"))
            wait_until(lambda: results.items, what="the clip's result")
            [skipped] = results.items
            assert skipped.path is None and "Read-only file system" in str(skipped.error)
            mounts.writable(where)
            wait_until(lambda: not disk.faults(), what="the store to write again")
            assert store.submit(request(store, "a2"))
            wait_until(lambda: len(results.items) == 2, what="the second clip")
            saved = results.by_id()["a2"]
            assert saved.path is not None and saved.path.is_file()
            assert not (where / "clips" / ".write-probe").exists()
        finally:
            store.stop()

    def test_a_folder_an_ordinary_user_may_not_write(self, tmp_path: Path) -> None:
        """The same without root: permission bits refuse the folder."""
        not_root()
        (tmp_path / "state").mkdir(mode=0o555)
        results, disk = Results(), StateDisk(tmp_path / "state")
        store = ClipStore(tmp_path / "state" / "clips", clips_config(), on_done=results, disk=disk)
        store.start()
        try:
            assert store.submit(request(store, "a1"))
            wait_until(lambda: results.items, what="the clip's result")
            assert results.items[0].path is None and "Permission denied" in str(
                results.items[0].error
            )
            assert disk.faults()[0].reason == "permission"
        finally:
            store.stop()
            (tmp_path / "state").chmod(0o755)
