"""Tests of the audio sources without hardware: file sources, the callback, supervision."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import sounddevice as sd
from structlog.testing import capture_logs

from asd_edge.audiofile import AudioData, write_wav
from asd_edge.capture import AudioSource, Backoff, CaptureStats, SoundDeviceSource, block_due_s
from asd_edge.errors import AudioError
from asd_edge.filesource import FileSource
from asd_edge.ring import RingBuffer

INPUT_OVERFLOW = sd.CallbackFlags(0x2)  # paInputOverflow
NO_FLAGS = sd.CallbackFlags(0)


def two_channel_audio(frames: int = 16000, rate: int = 16000) -> AudioData:
    """Channel 0 is a ramp, channel 1 its negative: every sample is distinct and traceable."""
    ramp = (np.arange(frames, dtype=np.float32) / frames).astype(np.float32)
    return AudioData(np.stack([ramp, -ramp], axis=1), rate)


class TestFileSourceStepping:
    """A non-realtime FileSource writes exactly the file's samples, on demand."""

    def test_steps_fill_each_ring_with_its_channel(self) -> None:
        """Uneven steps deliver every frame once, in order, channel by channel, then 0."""
        audio = two_channel_audio(1000)
        src = FileSource(audio, realtime=False, ring_s=1.0)
        src.start()
        assert [src.step(n) for n in (300, 1, 450, 400, 10)] == [300, 1, 450, 249, 0]
        assert src.finished
        for c in range(2):
            chunk = src.ring(c).since(0)
            assert chunk.lost == 0
            np.testing.assert_array_equal(chunk.data, audio.samples[:, c])
        assert src.stats.frames == 1000

    def test_reads_a_file_at_its_own_rate(self, tmp_path: Path) -> None:
        """A WAV path is decoded; sample_rate and channels are the file's."""
        x = np.random.default_rng(0).uniform(-0.9, 0.9, size=(2205, 2))
        write_wav(tmp_path / "s.wav", x, 22050)
        src = FileSource(tmp_path / "s.wav", realtime=False)
        assert (src.sample_rate, src.channels) == (22050, 2)
        src.step(10_000)
        np.testing.assert_allclose(src.ring(1).since(0).data, x[:, 1], atol=1 / 32768)

    def test_loop_wraps_around(self) -> None:
        """With loop=True the file repeats seamlessly and never finishes."""
        audio = two_channel_audio(100)
        src = FileSource(audio, realtime=False, loop=True)
        assert src.step(250) == 250
        assert not src.finished
        expected = np.concatenate([audio.samples[:, 0]] * 3)[:250]
        np.testing.assert_array_equal(src.ring(0).since(0).data, expected)

    def test_channel_subset_and_too_many(self) -> None:
        """channels=1 takes the first channel; asking for more than the file has is an error."""
        src = FileSource(two_channel_audio(10), channels=1, realtime=False)
        assert src.channels == 1
        with pytest.raises(IndexError):
            src.ring(1)
        with pytest.raises(AudioError, match="2 channel"):
            FileSource(two_channel_audio(10), channels=3, realtime=False)

    def test_step_refused_in_realtime_mode(self) -> None:
        """A realtime source has its own pacing thread; stepping it too would corrupt order."""
        with pytest.raises(RuntimeError):
            FileSource(two_channel_audio(10)).step(5)


class TestFileSourceRealtime:
    """A realtime FileSource paces itself like a microphone."""

    def test_delivers_the_file_at_about_real_time(self) -> None:
        """0.5 s of audio arrives complete and in order, never ahead of real time."""
        audio = two_channel_audio(8000)  # 0.5 s at 16 kHz
        src: AudioSource = FileSource(audio, block_s=0.01)
        seen = []  # (seconds since start, samples written by then)
        t0 = time.monotonic()
        src.start()
        while src.ring(0).written < 8000 and time.monotonic() - t0 < 10:
            written = src.ring(0).written
            seen.append((time.monotonic() - t0, written))
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        src.stop()
        src.stop()  # idempotent
        assert not src.alive
        np.testing.assert_array_equal(src.ring(0).since(0).data, audio.samples[:, 0])
        np.testing.assert_array_equal(src.ring(1).since(0).data, audio.samples[:, 1])
        assert 0.5 <= elapsed < 5.0
        # A sample is never written before its time (a late machine only makes it later).
        assert all(written <= t * 16000 + 160 for t, written in seen)
        assert len({w for _, w in seen}) > 10  # it arrived block by block, not all at once

    def test_stop_halts_delivery_and_start_resumes(self) -> None:
        """After stop() no more samples arrive; start() continues where it stopped."""
        audio = two_channel_audio(16000 * 30)
        src = FileSource(audio, block_s=0.01)
        src.start()
        time.sleep(0.1)
        src.stop()
        stopped_at = src.ring(0).written
        time.sleep(0.1)
        assert src.ring(0).written == stopped_at > 0
        src.start()
        time.sleep(0.1)
        src.stop()
        assert src.ring(0).written > stopped_at
        data = src.ring(0).since(0).data
        np.testing.assert_array_equal(data, audio.samples[: len(data), 0])


def make_source(**kwargs: Any) -> SoundDeviceSource:
    """A 2-channel 16 kHz source whose stream is a FakeStream (no PortAudio device)."""
    args: dict[str, Any] = dict(
        device="fake",
        channels=2,
        sample_rate=16000,
        preferred_rate=None,
        ring_s=1.0,
        block_s=0.01,
        stall_timeout_s=2.0,
        restart_backoff_max_s=8.0,
        max_failures=4,
        rng=random.Random(7),
        open_stream=FakeStream.factory(),
    )
    args.update(kwargs)
    return SoundDeviceSource(**args)


class FakeStream:
    """Stands in for sounddevice.InputStream; records what it was opened with."""

    def __init__(self, fail_next: list[Exception], **kwargs: Any) -> None:
        if fail_next:
            raise fail_next.pop(0)
        self.kwargs = kwargs
        self.closed = False
        self.started = False

    @classmethod
    def factory(cls, fail_next: list[Exception] | None = None) -> Any:
        """A constructor that raises the queued errors first, and logs each stream made."""
        failures = fail_next if fail_next is not None else []
        made: list[FakeStream] = []

        def open_stream(**kwargs: Any) -> FakeStream:
            stream = cls(failures, **kwargs)
            made.append(stream)
            return stream

        open_stream.made = made  # type: ignore[attr-defined]
        return open_stream

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    def deliver(self, block: npt.NDArray[np.float32], status: Any = NO_FLAGS) -> None:
        """Call the callback the way PortAudio's thread would."""
        self.kwargs["callback"](block, block.shape[0], None, status)

    def finish(self) -> None:
        """What PortAudio does when the stream dies."""
        self.kwargs["finished_callback"]()


def block(n: int, value: float, channels: int = 2) -> npt.NDArray[np.float32]:
    """A block whose channel c holds value + c."""
    return (value + np.arange(channels, dtype=np.float32) + np.zeros((n, 1))).astype(np.float32)


class TestCallback:
    """The stream callback copies per channel and counts; nothing escapes it."""

    def test_fills_each_ring_from_its_column(self) -> None:
        """Column c of every block lands in ring c, in order."""
        src = make_source()
        src.start()
        stream = src._stream
        stream.deliver(block(160, 1.0))
        stream.deliver(block(160, 3.0))
        np.testing.assert_array_equal(src.ring(0).since(0).data, [1.0] * 160 + [3.0] * 160)
        np.testing.assert_array_equal(src.ring(1).since(0).data, [2.0] * 160 + [4.0] * 160)
        assert (src.stats.callbacks, src.stats.frames) == (2, 320)
        assert stream.kwargs["dtype"] == "float32" and stream.kwargs["blocksize"] == 160
        assert stream.kwargs["samplerate"] == 16000 and stream.kwargs["channels"] == 2

    def test_counts_overflows_and_other_flags(self) -> None:
        """input_overflow counts as an overflow; any flag counts in status_flags."""
        src = make_source()
        src.start()
        src._stream.deliver(block(10, 0.0), INPUT_OVERFLOW)
        src._stream.deliver(block(10, 0.0), sd.CallbackFlags(0x1))  # input underflow
        src._stream.deliver(block(10, 0.0))
        assert (src.stats.overflows, src.stats.status_flags) == (1, 2)
        assert src.ring(0).written == 30  # flagged blocks are still kept

    def test_exceptions_never_escape(self) -> None:
        """A block of the wrong shape is counted as a callback error, not raised."""
        src = make_source()
        src.start()
        src._stream.deliver(block(10, 0.0, channels=1))  # column 1 is missing
        src._stream.deliver(np.zeros(3, dtype=np.float32))  # not even 2-D
        assert src.stats.callback_errors == 2
        src._stream.deliver(block(10, 5.0))
        assert src.ring(1).since(0).data[-1] == 6.0


class TestBackoff:
    """Restart delays double from 1 s, cap, and carry ±20 % jitter."""

    def test_doubles_then_caps(self) -> None:
        """With no jitter: 1, 2, 4, 8, 8, ... and back to 1 after reset."""
        b = Backoff(1.0, 8.0, jitter=0.0)
        assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
        b.reset()
        assert b.next_delay() == 1

    def test_jitter_stays_within_twenty_percent_and_varies(self) -> None:
        """Jittered delays spread over [0.8, 1.2] x base and never exceed the cap."""
        delays = []
        for seed in range(200):
            b = Backoff(1.0, 3.0, rng=random.Random(seed))
            delays.append([b.next_delay() for _ in range(4)])
        d = np.array(delays)
        assert d[:, 0].min() >= 0.8 and d[:, 0].max() <= 1.2
        assert d[:, 1].min() >= 1.6 and d[:, 1].max() <= 2.4
        assert d[:, 3].max() <= 3.0
        assert d[:, 0].std() > 0.05  # jitter actually spreads restarts of many devices


class TestSupervision:
    """poll() finds dead streams, restarts them with backoff, and gives up eventually."""

    def test_healthy_stream_is_left_alone(self) -> None:
        """A stream that keeps delivering is never restarted."""
        src = make_source()
        src.start()
        for i in range(100):
            src._stream.deliver(block(160, 0.0))
            src.poll(100.0 + i * 0.5)
        assert src.alive and src.stats.stalls == 0 and src.stats.restarts == 0

    def test_finished_stream_restarts_after_about_a_second(self) -> None:
        """finished_callback -> stream_finished now, reopened 1 s (±20 %) later, same rings."""
        opener = FakeStream.factory()
        src = make_source(open_stream=opener)
        src.start()
        ring = src.ring(0)
        src._stream.deliver(block(160, 1.0))
        src.poll(10.0)
        first = src._stream
        first.finish()
        with capture_logs() as logs:
            src.poll(10.1)
            assert not src.alive and first.closed
            src.poll(10.1 + 0.79)
            assert len(opener.made) == 1  # too early
            src.poll(10.1 + 1.21)
        assert [e["event"] for e in logs] == ["stream_finished", "stream_restarted"]
        assert src.alive and len(opener.made) == 2 and src.stats.restarts == 1
        assert src.ring(0) is ring
        src._stream.deliver(block(160, 2.0))
        assert ring.written == 320  # the sample count continues across the restart
        first.finish()  # a late word from the replaced stream must not kill the new one
        src.poll(11.5)
        assert src.alive and src.stats.stalls == 1

    def test_stall_is_detected_after_the_timeout(self) -> None:
        """No new samples for stall_timeout_s -> stream_stalled; not a moment before."""
        src = make_source(stall_timeout_s=2.0)
        src.start()
        src._stream.deliver(block(160, 0.0))
        src.poll(50.0)
        with capture_logs() as logs:
            src.poll(51.99)
            assert src.alive
            src.poll(52.0)
        assert not src.alive and src.stats.stalls == 1
        assert logs[0]["event"] == "stream_stalled" and logs[0]["log_level"] == "warning"

    def test_failed_reopens_back_off_then_raise(self) -> None:
        """Open errors are retried after 1, 2, 4, 8 s (jittered); the 4th failure raises."""
        failures: list[Exception] = []
        src = make_source(open_stream=FakeStream.factory(failures), max_failures=4)
        src.start()
        failures.extend([sd.PortAudioError("Device unavailable")] * 4)
        src._stream.finish()
        now = 0.0
        src.poll(now)
        attempts = []
        with pytest.raises(AudioError, match=r"failed 4 restarts in a row.*Device unavailable"):
            for _ in range(1000):
                now += 0.05
                before = len(failures)
                try:
                    src.poll(now)
                finally:
                    if len(failures) < before:
                        attempts.append(now)
        gaps = np.diff([0.0, *attempts])
        assert len(attempts) == 4
        for gap, base in zip(gaps, [1, 2, 4, 8], strict=True):
            assert 0.8 * base - 0.05 <= gap <= min(1.2 * base, 8.0) + 0.05
        assert not src.alive

    def test_restart_that_dies_at_once_counts_as_a_failure(self) -> None:
        """A stream that reopens but never delivers does not reset the failure count."""
        src = make_source(max_failures=3, restart_backoff_max_s=1.0)
        src.start()
        now = 0.0
        with pytest.raises(AudioError, match="3 restarts"):
            for _ in range(10_000):
                now += 0.1
                if src._stream is not None:
                    src._stream.finish()
                src.poll(now)
        assert now < 30

    def test_steady_delivery_after_restart_resets_failures(self) -> None:
        """Once a reopened stream delivers for stall_timeout_s, earlier failures are forgiven."""
        failures: list[Exception] = []
        src = make_source(open_stream=FakeStream.factory(failures), max_failures=2)
        src.start()
        now = 0.0
        for _ in range(5):  # each outage: one failed reopen, then a good one
            failures.append(sd.PortAudioError("Device unavailable"))
            src._stream.finish()
            src.poll(now)
            while src._stream is None:
                now += 0.1
                src.poll(now)
            assert not failures
            for _ in range(30):
                now += 0.1
                src._stream.deliver(block(160, 0.0))
                src.poll(now)
        assert src.stats.restarts == 5 and src.alive

    def test_stop_is_idempotent_and_quiet(self) -> None:
        """stop() closes the stream; polling a stopped source does nothing."""
        src = make_source()
        src.start()
        stream = src._stream
        src.stop()
        src.stop()
        src.poll(1e6)
        assert stream.closed and not src.alive and src.stats.stalls == 0

    def test_open_error_names_device_and_rate(self) -> None:
        """start() turns a PortAudio error into an AudioError naming the device and rate."""
        opener = FakeStream.factory([sd.PortAudioError("Invalid sample rate")])
        src = make_source(device="hw:7,0", sample_rate=12345, open_stream=opener)
        with pytest.raises(AudioError, match=r"'hw:7,0'.*12345 Hz.*Invalid sample rate"):
            src.start()
        assert not src.alive


class TestListInputDevices:
    """list_input_devices describes what PortAudio sees, even when it sees nothing."""

    def test_without_any_sound_server_it_does_not_crash(self, tmp_path: Path) -> None:
        """With PulseAudio unreachable (no devices on a box without sound hardware): a list."""
        (tmp_path / "client.conf").write_text("autospawn = no\n")
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(tmp_path),
            "PULSE_RUNTIME_PATH": str(tmp_path / "pulse"),
            "PULSE_SERVER": f"unix:{tmp_path / 'nowhere'}",
            "PULSE_CLIENTCONFIG": str(tmp_path / "client.conf"),
        }
        code = "import json, asd_edge.capture as c; print(json.dumps(c.list_input_devices()))"
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        devices = json.loads(proc.stdout.splitlines()[-1])
        assert isinstance(devices, list)
        for dev in devices:  # a machine with real sound cards lists them
            assert dev["max_input_channels"] > 0
            assert set(dev["rates"]) <= {8000, 16000, 22050, 32000, 44100, 48000}
        assert sum(dev["default"] for dev in devices) <= 1


class TestBlockDue:
    """The tick loop sleeps until the block that completes a window lands."""

    def test_unknown_timing_keeps_the_estimate(self) -> None:
        assert block_due_s(0.03, 10.0, CaptureStats(), 0.0) == 0.03
        assert block_due_s(0.03, 10.0, CaptureStats(block_s=0.1), 0.0) == 0.03  # no block yet

    def test_waits_for_the_block_holding_the_last_sample(self) -> None:
        stats = CaptureStats(block_s=0.1)
        # 30 ms of audio missing: the next block (at 10.1) brings it.
        assert block_due_s(0.03, 10.02, stats, 10.0) == pytest.approx(0.08)
        # 150 ms missing: two blocks, the second lands at 10.2.
        assert block_due_s(0.15, 10.02, stats, 10.0) == pytest.approx(0.18)
        # Exactly one block missing: that block, not the one after it.
        assert block_due_s(0.1, 10.0, stats, 10.0) == pytest.approx(0.1)

    def test_a_late_block_or_another_clock_falls_back(self) -> None:
        stats = CaptureStats(block_s=0.1)
        # The block is 3 ms late: look again at once, not a whole block later.
        assert block_due_s(0.03, 10.103, stats, 10.0) == 0.0
        assert block_due_s(0.03, 0.0, stats, 10.0) == 0.03  # a fake clock far from monotonic()
        assert block_due_s(0.03, 100.0, stats, 10.0) == 0.03  # or far ahead of it

    def test_the_callback_stamps_the_block_after_its_samples(self) -> None:
        """The time of a block is set once its samples are in the ring: a loop that reads
        the time first and the ring second never sees a new time with old samples."""
        seen: list[tuple[float, int]] = []
        src = SoundDeviceSource(
            None,
            1,
            16000,
            None,
            ring_s=5.0,
            block_s=0.1,
            stall_timeout_s=2.0,
            restart_backoff_max_s=5.0,
            open_stream=lambda **kw: None,
        )

        class Watched(RingBuffer):
            def write(self, block: npt.ArrayLike) -> None:
                seen.append((src.stats.last_block_at, self.written))
                super().write(block)

        ring = Watched(16000)
        src._rings = (ring,)
        src._callback(np.zeros((1600, 1), np.float32), 1600, None, NO_FLAGS)
        assert seen == [(0.0, 0)] and src.stats.last_block_at > 0.0 and ring.written == 1600
