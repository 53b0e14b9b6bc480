"""Capture through real PortAudio and PulseAudio: a recording played into the virtual mic."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.signal import correlate
from structlog.testing import capture_logs

from asd_edge.audiofile import read_audio, to_mono, write_wav
from asd_edge.capture import SoundDeviceSource, list_input_devices
from devkit.vmic import VirtualMic

pytestmark = pytest.mark.realaudio

RATE = 16000
LEAD_SILENCE_S = 0.3


def normalised_xcorr_peak(
    captured: npt.NDArray[np.float32], ref: npt.NDArray[np.float32]
) -> tuple[float, int]:
    """Best normalised cross-correlation of ``ref`` against every window of ``captured``."""
    num = correlate(captured.astype(np.float64), ref.astype(np.float64), mode="valid", method="fft")
    energy = np.concatenate([[0.0], np.cumsum(captured.astype(np.float64) ** 2)])
    window_energy = energy[len(ref) :] - energy[: -len(ref)]
    ncc = num / (np.sqrt(np.maximum(window_energy, 1e-20)) * np.linalg.norm(ref))
    lag = int(np.argmax(ncc))
    return float(ncc[lag]), lag


def synthetic_machine(seconds: float) -> npt.NDArray[np.float32]:
    """Machine-like test sound made here: a drifting hum with harmonics, noise, ticks."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 120.0 + 3.0 * np.sin(2 * np.pi * 0.4 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(0.15 / k * np.sin(k * phase) for k in (1, 2, 3, 5))
    x = x + 0.02 * rng.standard_normal(t.shape[0])
    x[:: RATE // 8] += 0.3
    return np.asarray(x, dtype=np.float32)


@pytest.fixture(scope="module", params=["synthetic", "pump"])
def pump_clip(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, npt.NDArray[np.float32]]:
    """3.5 s of machine sound after 0.3 s of silence, as a 16 kHz WAV; and the clip.

    ``synthetic`` is made here and always runs; ``pump`` is a real MIMII recording
    from ../shared/data (skipped where it is absent)."""
    if request.param == "pump":
        shared_data = request.getfixturevalue("shared_data")
        source = sorted((shared_data / "machines" / "pump" / "normal").glob("*.wav"))[0]
        audio = read_audio(source)
        assert audio.sample_rate == RATE
        clip = to_mono(audio.samples, 0)[: int(3.5 * RATE)]
    else:
        clip = synthetic_machine(3.5)
    path = tmp_path_factory.mktemp("vmic") / f"{request.param}.wav"
    write_wav(path, np.concatenate([np.zeros(int(LEAD_SILENCE_S * RATE)), clip]), RATE)
    # What the virtual mic can reproduce is the 16-bit file, not the float original.
    return path, to_mono(read_audio(path).samples, 0)[int(LEAD_SILENCE_S * RATE) :]


def make_source(virtual_mic: VirtualMic, stall_timeout_s: float = 1.0) -> SoundDeviceSource:
    """A mono source on ALSA 'pulse' that prefers the models' 16 kHz."""
    return SoundDeviceSource(
        device=virtual_mic.device,
        channels=1,
        sample_rate=None,
        preferred_rate=RATE,
        ring_s=30.0,
        block_s=0.02,
        stall_timeout_s=stall_timeout_s,
        restart_backoff_max_s=2.0,
        max_failures=10,
    )


def poll_for(source: SoundDeviceSource, seconds: float) -> None:
    """Run a tick loop (poll every 20 ms) for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        source.poll(time.monotonic())
        time.sleep(0.02)


class TestSoundDeviceSourceReal:
    """SoundDeviceSource captures what is played into the virtual microphone."""

    def test_lists_the_virtual_mic(self, virtual_mic: VirtualMic) -> None:
        """list_input_devices shows 'pulse' as an input that accepts 16 kHz and 48 kHz."""
        devices = {d["name"]: d for d in list_input_devices()}
        assert "pulse" in devices
        assert {16000, 48000} <= set(devices["pulse"]["rates"])
        assert devices["pulse"]["hostapi"] == "ALSA"

    def test_captures_a_played_recording_sample_for_sample(
        self, virtual_mic: VirtualMic, pump_clip: tuple[Path, npt.NDArray[np.float32]]
    ) -> None:
        """A pump recording played with paplay arrives at 16 kHz, correlation > 0.99, no loss."""
        path, ref = pump_clip
        source = make_source(virtual_mic)
        source.start()
        try:
            assert source.sample_rate == RATE
            poll_for(source, 0.3)
            player = virtual_mic.play(path, wait=False)
            deadline = time.monotonic() + 30
            while player.poll() is None and time.monotonic() < deadline:
                source.poll(time.monotonic())
                time.sleep(0.02)
            assert player.returncode == 0, player.stderr.read() if player.stderr else ""
            poll_for(source, 0.3)
        finally:
            source.stop()
        ring = source.ring(0)
        chunk = ring.since(0)
        assert chunk.lost == 0 and ring.overruns == 0
        assert source.stats.overflows == 0 and source.stats.callback_errors == 0
        assert source.stats.stalls == 0
        assert len(chunk.data) >= len(ref) + int(LEAD_SILENCE_S * RATE)
        peak, lag = normalised_xcorr_peak(chunk.data, ref)
        assert peak > 0.99, f"best match {peak:.4f} at sample {lag}"

    def test_dead_server_is_detected_and_the_stream_comes_back(
        self, virtual_mic: VirtualMic
    ) -> None:
        """Killing PulseAudio is seen within stall_timeout_s; after it returns, capture resumes."""
        stall_timeout_s = 1.0
        source = make_source(virtual_mic, stall_timeout_s)
        source.start()
        try:
            poll_for(source, 0.5)
            ring = source.ring(0)
            before = ring.written
            assert before > 0 and source.alive
            with capture_logs() as logs:
                virtual_mic.kill()
                killed_at = time.monotonic()
                while source.alive and time.monotonic() - killed_at < stall_timeout_s + 2.0:
                    source.poll(time.monotonic())
                    time.sleep(0.02)
                detected_after_s = time.monotonic() - killed_at
                assert not source.alive, "a dead PulseAudio went unnoticed"
                assert detected_after_s <= stall_timeout_s + 2.0
                virtual_mic.start()
                restarted_at = time.monotonic()
                while time.monotonic() - restarted_at < 15 and source.stats.restarts == 0:
                    source.poll(time.monotonic())
                    time.sleep(0.02)
                poll_for(source, 0.5)
            events = [e["event"] for e in logs]
            assert events[0] in ("stream_finished", "stream_stalled")
            assert "stream_restarted" in events
            assert source.alive and source.stats.restarts >= 1
            assert source.ring(0) is ring
            assert ring.written > before  # the count continued; it did not start over
        finally:
            source.stop()
            if not virtual_mic.running:
                virtual_mic.start()
