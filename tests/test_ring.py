"""Tests of the lock-free SPSC sample ring: contents, overrun accounting, the seqlock."""

from __future__ import annotations

import functools
import itertools
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asd_edge.ring import Chunk, RingBuffer

FloatArray = npt.NDArray[np.float32]

RAMP_PERIOD = 2**23
"""The ramp wraps here so that every value is an integer exactly representable in float32."""


def ramp(start: int, stop: int) -> FloatArray:
    """The test signal: stream sample ``i`` has the value ``float(i % 2**23)``."""
    return (np.arange(start, stop, dtype=np.int64) % RAMP_PERIOD).astype(np.float32)


def expected_lost(capacity: int, written: int, start: int, stop: int) -> int:
    """Samples of ``[max(start, 0), stop)`` already overwritten when the writer is idle.

    That is ``max(0, written - capacity - start)``, capped at the length of the
    range: ``Chunk.lost`` counts samples *of the requested range*, so that
    ``chunk.start == max(start, 0) + chunk.lost`` always holds.
    """
    start = max(start, 0)
    return min(max(0, written - capacity - start), stop - start)


def assert_chunk(chunk: Chunk, capacity: int, written: int, start: int, stop: int) -> None:
    """Assert that ``chunk`` is exactly what an idle-writer ``read(start, stop)`` must return."""
    lost = expected_lost(capacity, written, start, stop)
    assert chunk.lost == lost
    assert chunk.start == max(start, 0) + lost
    assert chunk.data.dtype == np.float32
    np.testing.assert_array_equal(chunk.data, ramp(chunk.start, stop))


def write_ramp(ring: RingBuffer, n: int) -> None:
    """Append the next ``n`` ramp samples to ``ring``."""
    ring.write(ramp(ring.written, ring.written + n))


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Make CPython switch threads every 20 µs instead of 5 ms, for more interleavings."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(2e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class TestRampProperties:
    """Single-threaded hypothesis properties: any write pattern, any valid read."""

    @settings(max_examples=300, deadline=None)
    @given(capacity=st.integers(1, 48), data=st.data())
    def test_reads_return_the_ramp_and_count_exactly_what_was_overwritten(
        self, capacity: int, data: st.DataObject
    ) -> None:
        """After any sequence of blocks (empty, small, larger than the ring), ``latest``
        and ``read`` return exactly the ramp, and lost/overruns count exactly the
        overwritten samples."""
        ring = RingBuffer(capacity)
        blocks = data.draw(st.lists(st.integers(0, 3 * capacity + 5), max_size=12), "blocks")
        overruns = lost_samples = 0
        for size in blocks:
            write_ramp(ring, size)
            written = ring.written
            assert ring.oldest == max(0, written - capacity)

            k = data.draw(st.integers(0, written + capacity + 3), "latest_n")
            chunk = ring.latest(k)
            assert_chunk(chunk, capacity, written, written - k, written)
            overruns += chunk.lost > 0
            lost_samples += chunk.lost

            a = data.draw(st.integers(-capacity - 3, written), "start")
            b = data.draw(st.integers(max(a, 0), written), "stop")
            out = np.full(b - a, np.nan, dtype=np.float32) if data.draw(st.booleans()) else None
            chunk = ring.read(a, b, out=out)
            assert_chunk(chunk, capacity, written, a, b)
            if out is not None and len(chunk.data):
                assert np.shares_memory(chunk.data, out)
            overruns += chunk.lost > 0
            lost_samples += chunk.lost

            assert (ring.overruns, ring.lost_samples) == (overruns, lost_samples)
        assert ring.written == sum(blocks)

    @settings(max_examples=200, deadline=None)
    @given(
        capacity=st.integers(1, 32),
        steps=st.lists(st.tuples(st.integers(0, 80), st.none() | st.integers(1, 40)), max_size=20),
    )
    def test_a_following_reader_sees_every_sample_once_or_counts_it_lost(
        self, capacity: int, steps: list[tuple[int, int | None]]
    ) -> None:
        """A reader that follows the stream with ``since(cursor, max_samples)`` gets each
        sample exactly once or counts it lost exactly once: nothing is skipped silently
        and nothing is counted twice."""
        ring = RingBuffer(capacity)
        cursor = received = 0
        for size, max_samples in [*steps, (0, None)]:
            write_ramp(ring, size)
            chunk = ring.since(cursor, max_samples)
            assert chunk.start == cursor + chunk.lost
            np.testing.assert_array_equal(
                chunk.data, ramp(chunk.start, chunk.start + len(chunk.data))
            )
            cursor = chunk.start + len(chunk.data)
            received += len(chunk.data)
        assert cursor == ring.written
        assert ring.lost_samples == ring.written - received


class TestConstructor:
    """``RingBuffer(capacity)``."""

    @pytest.mark.parametrize("capacity", [0, -1])
    def test_rejects_a_capacity_that_is_not_positive(self, capacity: int) -> None:
        """A ring that could hold nothing is refused with the bad value in the message."""
        with pytest.raises(ValueError, match=str(capacity)):
            RingBuffer(capacity)

    def test_a_new_ring_is_empty(self) -> None:
        """Nothing written, nothing lost, and reading the (empty) past returns nothing."""
        ring = RingBuffer(8)
        assert (ring.capacity, ring.written, ring.oldest) == (8, 0, 0)
        chunk = ring.latest(5)
        assert (len(chunk.data), chunk.start, chunk.lost) == (0, 0, 0)
        assert (ring.overruns, ring.lost_samples) == (0, 0)


class TestWrite:
    """``RingBuffer.write``."""

    def test_a_block_bigger_than_the_ring_keeps_its_last_capacity_samples(self) -> None:
        """``written`` advances by the whole block; the ring holds its tail."""
        ring = RingBuffer(8)
        write_ramp(ring, 3)
        write_ramp(ring, 20)
        assert ring.written == 23
        assert ring.oldest == 15
        chunk = ring.latest(8)
        assert (chunk.start, chunk.lost) == (15, 0)
        np.testing.assert_array_equal(chunk.data, ramp(15, 23))

    def test_an_empty_block_changes_nothing(self) -> None:
        """Writing zero samples leaves ``written``, ``oldest`` and the contents alone."""
        ring = RingBuffer(4)
        write_ramp(ring, 6)
        ring.write(np.empty(0, dtype=np.float32))
        assert (ring.written, ring.oldest) == (6, 2)
        np.testing.assert_array_equal(ring.latest(4).data, ramp(2, 6))

    def test_blocks_wrap_around_the_end_of_the_array(self) -> None:
        """A block that straddles the end of the storage reads back in stream order."""
        ring = RingBuffer(8)
        write_ramp(ring, 6)
        write_ramp(ring, 5)  # positions 6, 7, 0, 1, 2
        chunk = ring.read(3, 11)
        assert (chunk.start, chunk.lost) == (3, 0)
        np.testing.assert_array_equal(chunk.data, ramp(3, 11))

    def test_accepts_any_one_dimensional_array_like(self) -> None:
        """Lists and float64 arrays are stored as float32."""
        ring = RingBuffer(4)
        ring.write([0.0, 1.0])
        ring.write(np.array([2.0, 3.0]))
        np.testing.assert_array_equal(ring.latest(4).data, ramp(0, 4))


class TestRead:
    """``RingBuffer.read``, ``latest`` and ``since`` with an idle writer."""

    def test_stop_beyond_written_is_refused(self) -> None:
        """Asking for samples that do not exist yet is an error naming both numbers."""
        ring = RingBuffer(8)
        write_ramp(ring, 5)
        with pytest.raises(ValueError, match=r"stop 6 .*\(5\)"):
            ring.read(0, 6)

    def test_start_after_stop_is_refused(self) -> None:
        """An inverted range is an error, not an empty chunk."""
        ring = RingBuffer(8)
        write_ramp(ring, 5)
        with pytest.raises(ValueError, match="start 4 is after stop 3"):
            ring.read(4, 3)

    def test_a_start_before_the_stream_is_clipped_without_counting_loss(self) -> None:
        """Samples before sample 0 never existed: they are not returned and not lost."""
        ring = RingBuffer(8)
        write_ramp(ring, 5)
        chunk = ring.read(-3, 5)
        assert (chunk.start, chunk.lost) == (0, 0)
        np.testing.assert_array_equal(chunk.data, ramp(0, 5))
        chunk = ring.latest(100)
        assert (chunk.start, chunk.lost) == (0, 0)
        assert (ring.overruns, ring.lost_samples) == (0, 0)

    def test_the_out_buffer_receives_the_samples(self) -> None:
        """With ``out=`` nothing is allocated: the data is a view at the front of ``out``."""
        ring = RingBuffer(8)
        write_ramp(ring, 12)
        out = np.full(6, np.nan, dtype=np.float32)
        chunk = ring.read(6, 12, out=out)
        assert chunk.data.base is out
        np.testing.assert_array_equal(out, ramp(6, 12))
        chunk = ring.latest(3, out=out)
        assert np.shares_memory(chunk.data, out)
        np.testing.assert_array_equal(out[:3], ramp(9, 12))

    def test_an_out_buffer_that_is_too_small_is_refused(self) -> None:
        """``out`` must hold the whole requested range."""
        ring = RingBuffer(8)
        write_ramp(ring, 8)
        with pytest.raises(ValueError, match="out holds 3 samples, need 4"):
            ring.read(4, 8, out=np.empty(3, dtype=np.float32))

    def test_since_is_capped_by_max_samples(self) -> None:
        """``since(start, max_samples)`` returns the first ``max_samples`` from ``start``."""
        ring = RingBuffer(16)
        write_ramp(ring, 10)
        chunk = ring.since(4, max_samples=3)
        assert (chunk.start, chunk.lost) == (4, 0)
        np.testing.assert_array_equal(chunk.data, ramp(4, 7))
        np.testing.assert_array_equal(ring.since(4).data, ramp(4, 10))


class TestOverrunAccounting:
    """``overruns``, ``lost_samples`` and ``Chunk.lost`` after known writes and reads."""

    def test_exact_counts_after_a_known_sequence(self) -> None:
        """Each read that misses samples is one overrun; every missed sample is counted."""
        ring = RingBuffer(10)
        write_ramp(ring, 25)
        chunk = ring.read(0, 25)  # 0..14 are gone
        assert (chunk.start, chunk.lost) == (15, 15)
        np.testing.assert_array_equal(chunk.data, ramp(15, 25))
        assert (ring.overruns, ring.lost_samples) == (1, 15)

        ring.read(20, 25)
        ring.latest(10)
        assert (ring.overruns, ring.lost_samples) == (1, 15)

        write_ramp(ring, 5)
        chunk = ring.read(15, 30)
        assert (chunk.start, chunk.lost) == (20, 5)
        chunk = ring.latest(12)
        assert (chunk.start, chunk.lost) == (20, 2)
        np.testing.assert_array_equal(chunk.data, ramp(20, 30))
        assert (ring.overruns, ring.lost_samples) == (3, 22)

    def test_a_range_overwritten_entirely_loses_only_its_own_samples(self) -> None:
        """Reading ``[0, 2)`` after the writer lapped it loses 2 samples, not 6.

        (A loss not capped at ``stop - start`` would give ``Chunk(start=2, lost=6)``:
        ``start + lost != chunk.start``, and samples never asked for counted as lost.)
        """
        ring = RingBuffer(4)
        write_ramp(ring, 10)
        chunk = ring.read(0, 2)
        assert len(chunk.data) == 0
        assert (chunk.start, chunk.lost) == (2, 2)
        assert (ring.overruns, ring.lost_samples) == (1, 2)

    def test_a_lagging_reader_with_max_samples_counts_each_lost_sample_once(self) -> None:
        """A reader far behind that catches up with ``since(cursor, max_samples=3)``
        misses samples 0..5 (six of them) and the loss counter must say 6.

        (With an uncapped loss the first call would report 6 lost but move the cursor
        only to 3, and the second would report 3..5 lost again: ``lost_samples == 9``.)
        """
        ring = RingBuffer(4)
        write_ramp(ring, 10)
        cursor = 0
        received = []
        while cursor < ring.written:
            chunk = ring.since(cursor, max_samples=3)
            cursor = chunk.start + len(chunk.data)
            received.extend(chunk.data.tolist())
        assert received == ramp(6, 10).tolist()
        assert ring.lost_samples == 6


class TestSeqlock:
    """A reader never returns samples the writer has announced it is overwriting."""

    def test_a_read_while_the_writer_is_mid_copy_skips_the_slots_being_overwritten(
        self,
    ) -> None:
        """A reader that runs between the writer's announce and its publish loses the
        samples whose slots the writer is overwriting, and returns only intact ones.

        A real writer sits in that window only while numpy copies (microseconds), which
        threads cannot hit on demand. Instead the block is an object array: numpy
        converts it to float32 element by element *inside* the writer's copy, calling
        ``__float__``, so a reader placed in the middle element runs when sample 10 is
        already in the slot of sample 2 and ``written`` still says 10. No private state
        is touched. Had the writer announced ``_writing_end`` only after copying, this
        read would return 10.0 labelled as sample 2.
        """
        ring = RingBuffer(8)
        write_ramp(ring, 10)
        seen: list[tuple[int, int, Chunk]] = []

        class ReaderRunsDuringConversion:
            def __init__(self, value: float, *, read: bool = False) -> None:
                self.value, self.read = value, read

            def __float__(self) -> float:
                if self.read:
                    chunk = ring.read(2, ring.written)
                    seen.append((ring.written, ring.oldest, chunk))
                return self.value

        block = np.array(
            [
                ReaderRunsDuringConversion(10.0),
                ReaderRunsDuringConversion(11.0, read=True),
                ReaderRunsDuringConversion(12.0),
            ],
            dtype=object,
        )
        ring.write(block)
        [(written, oldest, chunk)] = seen
        assert (written, oldest) == (10, 5)
        assert (chunk.start, chunk.lost) == (5, 3)
        np.testing.assert_array_equal(chunk.data, ramp(5, 10))
        assert (ring.overruns, ring.lost_samples) == (1, 3)
        np.testing.assert_array_equal(ring.latest(8).data, ramp(5, 13))

    def test_a_write_that_starts_during_the_readers_copy_is_detected(self) -> None:
        """A real ``write`` runs while the reader copies; the torn part is dropped.

        The reader copies into an ``out`` whose ``__setitem__`` first lets the writer
        write a 3-sample block (overwriting samples 2..4 in the ring) and only then
        performs the copy, which is the interleaving of a reader preempted mid-copy.
        Without the re-check after the copy, samples 10..12 would be returned labelled
        as 2..4.
        """
        ring = RingBuffer(8)
        write_ramp(ring, 10)
        writer_ran: list[bool] = []

        class WriterStartsDuringCopy(np.ndarray):
            def __setitem__(self, key: Any, value: Any) -> None:
                if not writer_ran:
                    writer_ran.append(True)
                    write_ramp(ring, 3)
                super().__setitem__(key, value)

        out = np.full(8, np.nan, dtype=np.float32).view(WriterStartsDuringCopy)
        chunk = ring.read(2, 10, out=out)
        assert writer_ran
        assert (chunk.start, chunk.lost) == (5, 3)
        np.testing.assert_array_equal(np.asarray(chunk.data), ramp(5, 10))
        assert (ring.overruns, ring.lost_samples) == (1, 3)


@functools.cache
def ramp_period_source(extra: int) -> FloatArray:
    """One period of the ramp plus ``extra`` samples: ``source[i % 2**23 :][:n]`` is the
    ramp from stream index ``i`` for any ``n <= extra``, so a long stream needs no
    stream-sized array."""
    return ramp(0, RAMP_PERIOD + extra)


def run_producer_consumer(
    ring: RingBuffer,
    total: int,
    block_sizes: tuple[int, int],
    seed: int,
    *,
    flow_control: bool,
    consumer_sleep_s: float,
) -> list[tuple[int, int]]:
    """Write ``total`` ramp samples from a thread while this thread follows with ``since``.

    The producer writes blocks of seeded random sizes as fast as it can, yielding the
    GIL after each one (it stays runnable, so it keeps preempting the reader). Every
    chunk is checked as it arrives: its samples are the ramp values of their indices
    (nothing torn) and it starts where the previous one ended plus what it lost
    (nothing skipped silently). With ``flow_control`` the producer never laps the
    consumer's cursor, so nothing may be lost. Returns ``(lost, received)`` per read.
    """
    rng = np.random.default_rng(seed)
    source = ramp_period_source(2**16)
    assert block_sizes[1] <= 2**16 and ring.capacity <= 2**16
    sizes = rng.integers(*block_sizes, size=total // block_sizes[0] + 1)
    bounds = np.minimum(np.concatenate(([0], np.cumsum(sizes))), total)
    bounds = bounds[: np.searchsorted(bounds, total) + 1].tolist()

    consumer_at = [0]  # the consumer's cursor, published for flow control
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for lo, hi in itertools.pairwise(bounds):
                while flow_control and hi - consumer_at[0] > ring.capacity:
                    if stop.is_set():
                        return
                    time.sleep(0)
                ring.write(source[lo % RAMP_PERIOD :][: hi - lo])
                time.sleep(0)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)
        finally:
            stop.set()

    reads: list[tuple[int, int]] = []
    producer = threading.Thread(target=produce, name="ring-producer")
    producer.start()
    try:
        cursor = 0
        while True:
            done = stop.is_set()
            chunk = ring.since(cursor)
            assert chunk.start == cursor + chunk.lost, f"a read skipped samples silently: {chunk}"
            expected = source[chunk.start % RAMP_PERIOD :][: len(chunk.data)]
            if not np.array_equal(chunk.data, expected):
                bad = np.flatnonzero(chunk.data != expected)[:5]
                pytest.fail(f"torn data: samples {chunk.start + bad} hold {chunk.data[bad]}")
            reads.append((chunk.lost, len(chunk.data)))
            cursor = consumer_at[0] = chunk.start + len(chunk.data)
            if done and cursor == ring.written:
                break
            if consumer_sleep_s:
                time.sleep(consumer_sleep_s)
    finally:
        stop.set()
        producer.join()
    if errors:
        raise errors[0]
    assert ring.written == total
    return reads


@pytest.mark.usefixtures("fast_thread_switching")
class TestConcurrency:
    """A producer thread writing blocks of thousands of samples (numpy copies may then
    run without the GIL) while the test thread reads behind it."""

    def test_a_reader_that_keeps_up_gets_every_sample_intact(self) -> None:
        """When the producer never laps the reader, every sample arrives, in order,
        with the right value, and nothing is counted lost."""
        ring = RingBuffer(32_768)
        total = 10_000_000
        reads = run_producer_consumer(
            ring, total, (1_000, 8_000), seed=1, flow_control=True, consumer_sleep_s=0
        )
        assert sum(received for _, received in reads) == total
        assert sum(lost for lost, _ in reads) == 0
        assert (ring.overruns, ring.lost_samples) == (0, 0)
        # Flow control forces the reads to interleave with the writes.
        assert sum(received > 0 for _, received in reads) >= total // ring.capacity

    def test_a_slow_reader_on_a_tiny_ring_loses_samples_and_counts_them(self) -> None:
        """When the producer laps a sleeping reader, the lost samples are reported and
        counted, every returned sample is still intact, and received plus lost adds up
        to everything written.

        This run also hunts torn reads: the reader keeps reading at the oldest edge,
        exactly where the writer overwrites next. With the seqlock re-check removed, or
        the announce moved after the copy, 32 M samples (past the 2**23 ramp period)
        produced torn data in about 6 runs out of 7 on a 2-core x86 machine; TestSeqlock
        catches both of those mutations every time.
        """
        ring = RingBuffer(4_096)
        total = 32_000_000
        # Blocks up to 8,000 > capacity: each such block makes the next read lose.
        reads = run_producer_consumer(
            ring, total, (1_000, 8_000), seed=2, flow_control=False, consumer_sleep_s=0.0001
        )
        received = sum(received for _, received in reads)
        lost = sum(lost for lost, _ in reads)
        assert received + lost == total
        assert ring.overruns == sum(lost > 0 for lost, _ in reads) > 0
        assert ring.lost_samples == lost > 0
