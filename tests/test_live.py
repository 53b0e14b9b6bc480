"""The live feed: its lease (cmd/live), its frames, its spectrum, and the daemon publishing
them through a real mosquitto only while the lease runs."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.audio import write_wav
from support.services import wait_until

from asd_edge.assembly import build_services
from asd_edge.config import PushConfig, parse_config
from asd_edge.daemon import Daemon
from asd_edge.errors import CommandError
from asd_edge.filesource import FileSource
from asd_edge.live import FLOOR_DB, FRAME_INTERVAL_S, N_BANDS, LiveFeed, LiveSpectrum
from asd_edge.mqtt import Command, CommandRouter, command_specs
from asd_edge.ring import RingBuffer
from asd_edge.telemetry import MonitorState
from devkit.broker import Broker

RATE = 16000
FRAME_FIELDS = {
    "monitor",
    "at",
    "t",
    "level_dbfs",
    "spectrum_db",
    "score",
    "threshold",
    "index",
    "anomaly",
    "machine",
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    """One channel holding ``samples``, as an AudioSource shows it to the feed."""

    def __init__(self, samples: np.ndarray, rate: int = RATE) -> None:
        self.sample_rate = rate
        self._ring = RingBuffer(rate * 2)
        self._ring.write(samples.astype(np.float32))

    def ring(self, channel: int) -> RingBuffer:
        assert channel == 0
        return self._ring


class Untouchable:
    """A source whose audio must not be read (no lease: nothing is computed)."""

    sample_rate = RATE

    def ring(self, channel: int) -> RingBuffer:
        raise AssertionError("the feed read audio without a lease")


def sine(hz: float, seconds: float = 1.0, rate: int = RATE, amplitude: float = 1.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * hz * t)


def states() -> dict[str, MonitorState]:
    state = MonitorState(name="pump", channel=0, model={}, threshold=3.0, reference=1.0)
    state.scored(5.0)
    return {"pump": state}


def feed(clock: Clock) -> tuple[LiveFeed, list[tuple[str, dict[str, Any]]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    live = LiveFeed(
        clock=clock,
        wall_clock=lambda: 1_790_000_000.25,
        publish=lambda name, payload: sent.append((name, dict(payload))),
    )
    return live, sent


def run_for(
    live: LiveFeed, clock: Clock, seconds: float, source: Any, step_s: float = 0.05
) -> None:
    """The tick loop's calls, every ``step_s`` for ``seconds``."""
    for _ in range(round(seconds / step_s)):
        live.poll(clock.now, states(), source)
        clock.now += step_s


class TestLease:
    def test_no_lease_no_work(self) -> None:
        """Before any cmd/live: no frame, no audio read, no wake asked for."""
        clock = Clock()
        live, sent = feed(clock)
        run_for(live, clock, 2.0, Untouchable())
        assert sent == [] and live.due_in_s(clock.now) is None

    def test_a_command_starts_frames_four_a_second(self) -> None:
        """cmd/live {"seconds": 2}: about 4 frames a second per monitor while it runs."""
        clock = Clock()
        live, sent = feed(clock)
        reply = live.command(Command("live", args={"seconds": 2}))
        assert reply == {"seconds": 2.0, "interval_s": FRAME_INTERVAL_S}
        run_for(live, clock, 2.0, Source(sine(1000)))
        assert 7 <= len(sent) <= 10 and {name for name, _ in sent} == {"pump"}

    def test_frames_stop_when_not_renewed(self) -> None:
        """A lease that is not renewed ends: no frame after it, no early wake."""
        clock = Clock()
        live, sent = feed(clock)
        live.command(Command("live", args={"seconds": 1}))
        run_for(live, clock, 1.0, Source(sine(1000)))
        count = len(sent)
        assert count >= 3
        clock.now += 0.01  # past the lease's end (the steps' float sum falls just short)
        run_for(live, clock, 3.0, Untouchable())
        assert len(sent) == count and live.due_in_s(clock.now) is None

    def test_renewal_extends_the_lease(self) -> None:
        """A renewal before the end keeps the frames coming past the first lease; a shorter
        renewal never cuts another watcher's longer lease."""
        clock = Clock()
        live, sent = feed(clock)
        live.command(Command("live", args={"seconds": 1}))
        run_for(live, clock, 0.8, Source(sine(1000)))
        live.command(Command("live", args={"seconds": 2}))
        assert live.command(Command("live", args={"seconds": 1})) == {
            "seconds": 2.0,
            "interval_s": FRAME_INTERVAL_S,
        }
        run_for(live, clock, 1.5, Source(sine(1000)))
        assert live.active(clock.now)
        assert clock.now > 100.0 + 1.0 and sent[-1][1]["t"] > 0

    def test_default_is_30_seconds(self) -> None:
        """No seconds (or null): 30 s."""
        live, _ = feed(Clock())
        assert live.command(Command("live"))["seconds"] == 30.0
        assert live.command(Command("live", args={"seconds": None}))["seconds"] == 30.0

    @pytest.mark.parametrize("payload", [b'{"seconds": 0}', b'{"seconds": 10000}'])
    def test_out_of_range_is_refused(self, payload: bytes) -> None:
        """seconds 0 or 10000: refused in cmd_result, no lease."""
        clock = Clock()
        live, _ = feed(clock)
        replies: list[dict[str, Any]] = []
        router = CommandRouter(
            {"live": live.command}, reply=replies.append, commands=command_specs(PushConfig())
        )
        router("live", payload)
        (reply,) = replies
        assert reply["ok"] is False and "seconds: expected 1-300" in reply["error"]
        assert not live.active(clock.now)

    def test_a_string_is_refused(self) -> None:
        """seconds "10": refused by the command's field spec."""
        live, _ = feed(Clock())
        replies: list[dict[str, Any]] = []
        router = CommandRouter(
            {"live": live.command}, reply=replies.append, commands=command_specs(PushConfig())
        )
        router("live", b'{"seconds": "10", "id": "r1"}')
        assert replies == [
            {
                "command": "live",
                "id": "r1",
                "ok": False,
                "error": "seconds: expected int or float or NoneType, got a string",
            }
        ]

    def test_handler_refuses_non_finite(self) -> None:
        """A NaN that bypassed JSON parsing is refused too."""
        live, _ = feed(Clock())
        with pytest.raises(CommandError):
            live.command(Command("live", args={"seconds": float("nan")}))


class TestFrame:
    def test_payload_fields(self) -> None:
        """Every frame has the documented fields; the first of a lease adds the band edges
        and the rate, the next ones do not; a new lease sends them again."""
        clock = Clock()
        live, sent = feed(clock)
        live.command(Command("live", args={"seconds": 1}))
        run_for(live, clock, 1.0, Source(sine(1000)))
        first, second = sent[0][1], sent[1][1]
        assert set(first) == FRAME_FIELDS | {"band_edges_hz", "sample_rate_hz"}
        assert set(second) == FRAME_FIELDS
        assert len(first["band_edges_hz"]) == N_BANDS + 1 and first["sample_rate_hz"] == RATE
        assert first["at"] == "2026-09-21T14:13:20.250Z" and first["t"] == 1_790_000_000.25
        assert first["score"] == 5.0 and first["threshold"] == 3.0 and first["index"] == 2.0
        assert first["anomaly"] is False and first["machine"] is None
        assert len(first["spectrum_db"]) == N_BANDS
        assert all(round(v, 1) == v for v in first["spectrum_db"])
        json.dumps(first, allow_nan=False)
        clock.now += 0.01
        run_for(live, clock, 1.0, Untouchable())  # the lease ends
        live.command(Command("live", args={"seconds": 1}))
        count = len(sent)
        run_for(live, clock, 0.3, Source(sine(1000)))
        assert "band_edges_hz" in sent[count][1]


class TestSpectrum:
    @pytest.mark.parametrize("rate", [16000, 48000])
    def test_full_scale_sine_peaks_at_0_db_in_its_band(self, rate: int) -> None:
        """A full-scale 1 kHz sine: the band whose edges hold 1 kHz is the loudest and
        reads 0 dB (within 1 dB); bands far away are at least 40 dB lower."""
        spectrum = LiveSpectrum(rate)
        _, db = spectrum.measure(sine(1000, SPAN, rate))
        peak = int(np.argmax(db))
        edges = spectrum.edges_hz
        assert edges[peak] <= 1000 < edges[peak + 1]
        assert db[peak] == pytest.approx(0.0, abs=1.0)
        assert np.all(db[: peak - 3] < -40) and np.all(db[peak + 4 :] < -40)

    def test_level_of_a_full_scale_sine_is_minus_3_dbfs(self) -> None:
        """level_dbfs is RMS against a full-scale square wave (meters.dbfs): a full-scale
        sine reads -3.01, a sine at 0.1 reads -23.01."""
        spectrum = LiveSpectrum(RATE)
        assert spectrum.measure(sine(1000, SPAN))[0] == pytest.approx(-3.01, abs=0.02)
        assert spectrum.measure(sine(1000, SPAN, amplitude=0.1))[0] == pytest.approx(
            -23.01, abs=0.02
        )

    def test_quieter_sine_reads_lower_by_its_gain(self) -> None:
        """-20 dB of gain lowers the peak band by 20 dB."""
        spectrum = LiveSpectrum(RATE)
        loud = spectrum.measure(sine(440, SPAN))[1]
        quiet = spectrum.measure(sine(440, SPAN, amplitude=0.1))[1]
        assert quiet.max() == pytest.approx(loud.max() - 20.0, abs=0.1)

    def test_silence_and_nan_read_the_floor(self) -> None:
        """Digital silence (and NaN samples, counted as silence) read -120 dB everywhere."""
        spectrum = LiveSpectrum(RATE)
        samples = np.zeros(4000)
        samples[:10] = np.nan
        level, db = spectrum.measure(samples)
        assert level == -200.0 and np.all(db == FLOOR_DB)

    def test_every_band_has_bins(self) -> None:
        """Band edges run from 20 Hz to Nyquist, increasing; none is empty at any rate."""
        for rate in (8000, 16000, 22050, 44100, 48000, 96000):
            spectrum = LiveSpectrum(rate)
            edges = spectrum.edges_hz
            assert edges[0] == 20.0 and edges[-1] == rate / 2 and np.all(np.diff(edges) > 0)
            _, db = spectrum.measure(np.random.default_rng(0).standard_normal(rate // 4) * 0.1)
            assert np.all(db > FLOOR_DB)


SPAN = 0.25


class TestDaemonThroughMosquitto:
    def test_frames_only_while_leased_and_the_score_topic_has_at_and_index(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """The daemon replaying a recording in real time with a real broker: no live frame
        before cmd/live; after cmd/live {"seconds": 1.5} about 4 frames a second on
        live/pump, the first with the band edges; none once the lease has run out. The
        score topic carries at and index meanwhile."""
        wav = write_wav(tmp_path / "tone.wav", 0.1 * sine(1000, 9.0), RATE)
        config = parse_config(
            {
                "device_id": "live",
                "state_dir": str(tmp_path / "state"),
                "input": {"device": f"file:{wav}"},
                "monitors": [{"name": "pump", "model": str(level_model)}],
                "mqtt": {
                    "host": mqtt_broker.host,
                    "port": mqtt_broker.port,
                    "publish_scores": True,
                    "score_interval_s": 0.1,
                    "reconnect_min_s": 0.1,
                    "reconnect_max_s": 1.0,
                },
            },
            base_dir=tmp_path,
        )
        sub = mqtt_broker.subscriber("asd/live/live/#", "asd/live/score", "asd/live/cmd_result")
        services = build_services(config)
        daemon = Daemon(config, services.detectors, source=FileSource(wav), services=services)
        runner = threading.Thread(target=daemon.run)
        runner.start()
        try:
            sub.wait_for("asd/live/score", 2, timeout_s=10)
            assert sub.on("asd/live/live/pump") == []
            mqtt_broker.publish("asd/live/cmd/live", b'{"seconds": 1.5, "id": "w"}')
            (reply,) = [json.loads(m.payload) for m in sub.wait_for("asd/live/cmd_result")]
            assert reply["ok"] and reply["id"] == "w" and reply["result"]["seconds"] == 1.5
            frames = sub.wait_for("asd/live/live/pump", 4, timeout_s=5)
            wait_until(lambda: not daemon.live.active(daemon._clock()), 5, "the lease to end")
            ended = len(sub.on("asd/live/live/pump"))
            wait_until(lambda: len(sub.on("asd/live/score")) >= 8, 10, "more scores")
        finally:
            daemon.stop()
            runner.join(15)
        frames = sub.on("asd/live/live/pump")
        assert len(frames) == ended  # nothing after the lease
        assert 4 <= len(frames) <= 8  # 1.5 s at 4 a second (±1 at each end)
        payloads = [json.loads(m.payload) for m in frames]
        assert "band_edges_hz" in payloads[0] and "band_edges_hz" not in payloads[1]
        assert all(set(p) >= FRAME_FIELDS for p in payloads)
        peak = payloads[-1]["spectrum_db"]
        edges = payloads[0]["band_edges_hz"]
        loudest = int(np.argmax(peak))
        assert edges[loudest] <= 1000 < edges[loudest + 1]
        assert payloads[-1]["level_dbfs"] == pytest.approx(-23.0, abs=0.1)
        assert all(not m.retain and m.qos == 0 for m in frames)
        gaps = np.diff([m.received_at for m in frames])
        assert np.median(gaps) == pytest.approx(FRAME_INTERVAL_S, abs=0.08)
        scores = [json.loads(m.payload) for m in sub.on("asd/live/score")]
        assert all(s["at"].endswith("Z") and isinstance(s["index"], float) for s in scores)
        assert daemon.link is not None and daemon.link.stats()["live_dropped"] == 0
