"""Tests of the clip's picture: the spectrogram's levels, and the PNG a user opens beside a
clip (axes, colour bar, the event marked, a title), decoded by Pillow."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.audio import sine

from asd_edge.clips import ClipRequest
from asd_edge.clips.picture import (
    BAND_RGB,
    BRACKET_PX,
    MARKER_RGB,
    MIN_PLOT_WIDTH_PX,
    PALETTE,
    PRE_ROLL_GREY,
    Picture,
    clip_title,
    draw_picture,
)
from asd_edge.clips.spectrogram import (
    LEVELS,
    MAX_HEIGHT_PX,
    MAX_WIDTH_PX,
    fft_size,
    spectrogram,
)

VIRIDIS = PALETTE[:LEVELS]


def decode(picture: Picture) -> np.ndarray:
    """The PNG as Pillow opens it, uint8[height, width, 3]; checks it is a palette PNG."""
    with Image.open(io.BytesIO(picture.png)) as img:
        assert img.format == "PNG" and img.mode == "P"
        assert img.size == (picture.layout.width, picture.layout.height)
        return np.asarray(img.convert("RGB"))


def plot_of(picture: Picture, rgb: np.ndarray) -> np.ndarray:
    left, top, right, bottom = picture.layout.plot
    return rgb[top:bottom, left:right]


def is_colour(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(pixels == np.array(colour, dtype=np.uint8), axis=-1)


class TestLevels:
    """The spectrogram's levels: frequencies upwards, on a fixed dB scale, bounded in size."""

    def test_size_and_tone_row_at_16k(self) -> None:
        """At 16 kHz: one column per frame, 256 rows; a 1 kHz tone at its row from the bottom."""
        rate = 16000
        spec = spectrogram(sine(1000.0, 3.0, rate=rate), rate)
        assert fft_size(rate) == 512
        assert spec.levels.shape == (MAX_HEIGHT_PX, 1 + (3 * rate - 512) // 256)
        from_bottom = MAX_HEIGHT_PX - 1 - int(np.argmax(spec.levels[:, 50]))
        assert abs(from_bottom - 1000 / 8000 * MAX_HEIGHT_PX) <= 1

    def test_high_rate_is_averaged_in_frequency(self) -> None:
        """At 48 kHz the rows are capped; a 6 kHz tone sits a quarter of the way up."""
        spec = spectrogram(sine(6000.0, 1.0, rate=48000), 48000)
        assert spec.levels.shape[0] == MAX_HEIGHT_PX
        from_bottom = MAX_HEIGHT_PX - 1 - int(np.argmax(spec.levels[:, 10]))
        assert abs(from_bottom - MAX_HEIGHT_PX * 6000 / 24000) <= 1

    def test_long_clip_is_averaged_in_time(self) -> None:
        """A clip longer than MAX_WIDTH_PX frames: the columns are power averages of runs of
        frames, as if the whole power spectrogram had been computed and then averaged."""
        rate = 8000
        rng = np.random.default_rng(3)
        audio = (rng.standard_normal(20 * rate) * np.linspace(0.001, 0.5, 20 * rate)).astype(
            np.float32
        )
        spec = spectrogram(audio, rate, max_width_px=300)
        n_fft = fft_size(rate)
        frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[:: n_fft // 2]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
        power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2 / (window.sum() / 2) ** 2
        columns = (np.arange(len(frames)) * 300) // len(frames)
        mean = np.stack([power[columns == c].mean(axis=0) for c in range(300)])
        db = 10 * np.log10(np.maximum(mean, 1e-10))
        expected = np.round(np.clip((db + 100) / 100, 0, 1) * (LEVELS - 1)).T[::-1]
        assert spec.levels.shape == (n_fft // 2 + 1, 300)
        assert np.mean(spec.levels == expected) > 0.999  # float32 rounding at level edges

    def test_fixed_level_scale(self) -> None:
        """A quiet tone gets a lower level than a loud one; silence is the floor everywhere."""
        loud = spectrogram(sine(1000.0, 1.0, amplitude=0.5), 16000).levels
        quiet = spectrogram(sine(1000.0, 1.0, amplitude=0.005), 16000).levels
        row = MAX_HEIGHT_PX - 1 - 32
        assert loud[row, 10] == LEVELS - 1 - round(6 / 100 * (LEVELS - 1))  # -6 dB
        assert loud[row, 10] - quiet[row, 10] == round(40 / 100 * (LEVELS - 1))  # 40 dB lower
        assert (spectrogram(np.zeros(16000, np.float32), 16000).levels == 0).all()

    def test_short_and_odd_input(self) -> None:
        """Audio shorter than one FFT frame, or with NaN, still gives one column."""
        spec = spectrogram(np.array([0.1, np.nan, -0.2], dtype=np.float32), 16000)
        assert spec.levels.shape == (MAX_HEIGHT_PX, 1)


class TestPicture:
    """What a user sees when opening the PNG beside a clip."""

    RATE = 16000

    def picture(self, seconds: float = 10.0, rate: int = RATE, **marks: object) -> Picture:
        audio = np.random.default_rng(0).standard_normal(round(seconds * rate)) * 0.01
        return draw_picture(audio.astype(np.float32), rate, **marks)  # type: ignore[arg-type]

    def test_20s_at_48k_is_small(self) -> None:
        """A 20 s 48 kHz clip of loud noise (the worst case for compression): a palette PNG
        whose plot is MAX_WIDTH_PX × MAX_HEIGHT_PX, under 100 kB."""
        picture = self.picture(20.0, 48000, title="pump", markers_s=(5.0, 15.0), pre_s=5.0)
        rgb = decode(picture)
        left, top, right, bottom = picture.layout.plot
        assert (right - left, bottom - top) == (MAX_WIDTH_PX, MAX_HEIGHT_PX)
        assert rgb.shape[1] < MAX_WIDTH_PX + 150 and rgb.shape[0] < MAX_HEIGHT_PX + 150
        assert len(picture.png) < 100_000

    def test_colour_bar_is_the_palette_gradient(self) -> None:
        """Top to bottom the colour bar runs through every level, 0 dB (yellow) to the floor."""
        picture = self.picture()
        left, top, right, bottom = picture.layout.bar
        bar = decode(picture)[top:bottom, left:right]
        assert (bar == bar[:, :1]).all()  # rows of one colour
        column = bar[:, 0]
        runs = column[np.r_[True, np.any(column[1:] != column[:-1], axis=1)]]
        np.testing.assert_array_equal(runs, VIRIDIS[::-1])

    def test_tone_at_its_frequency_row(self) -> None:
        """The brightest row of a 3 kHz tone is the row the frequency axis gives 3 kHz."""
        picture = draw_picture(sine(3000.0, 5.0, rate=self.RATE), self.RATE)
        plot = plot_of(picture, decode(picture)).astype(int).sum(axis=2)
        brightest = picture.layout.plot[1] + int(np.argmax(plot[:, 100]))
        assert abs(brightest - picture.layout.y(3000.0)) <= 1

    def test_event_and_pre_roll_are_marked(self) -> None:
        """Red lines at the anomaly's start and end columns, from top to bottom of the plot,
        and nowhere else; the strip above is grey over the pre-roll only."""
        picture = self.picture(markers_s=(2.0, 7.5), pre_s=2.0)
        rgb = decode(picture)
        layout = picture.layout
        red = is_colour(plot_of(picture, rgb), MARKER_RGB).all(axis=0)
        left = layout.plot[0]
        assert list(np.flatnonzero(red) + left) == [layout.x(2.0), layout.x(7.5)]
        strip = rgb[layout.plot[1] - 4, left : layout.plot[2]]
        grey = is_colour(strip, (PRE_ROLL_GREY,) * 3)
        assert grey[: layout.x(2.0) - left - 3].all() and not grey[layout.x(2.0) - left :].any()

    def test_evidence_band_rows_are_marked(self) -> None:
        """The band's rows are bracketed by bars inside both sides of the plot and dashed
        edges; no other pixel of the spectrogram changes, and it holds the band's tone."""
        audio = (sine(1500.0, 5.0, rate=self.RATE) + 0.01).astype(np.float32)
        plain = draw_picture(audio, self.RATE)
        marked = draw_picture(audio, self.RATE, band_hz=(2000.0, 1000.0))
        layout = marked.layout
        assert layout.plot == plain.layout.plot
        top, bottom = layout.y(2000.0), layout.y(1000.0)
        assert bottom - top > 10
        rgb, before = decode(marked), decode(plain)
        left, plot_top, right, plot_bottom = layout.plot
        for side in (slice(left, left + BRACKET_PX), slice(right - BRACKET_PX, right)):
            bars = is_colour(rgb[plot_top:plot_bottom, side], BAND_RGB).all(axis=1)
            assert list(np.flatnonzero(bars) + plot_top) == list(range(top, bottom + 1))
        changed = np.argwhere(np.any(plot_of(marked, rgb) != plot_of(plain, before), axis=2))
        assert set(changed[:, 0] + plot_top) == set(range(top, bottom + 1))
        assert top < layout.y(1500.0) < bottom

    def test_title_is_drawn(self) -> None:
        """Text in the strip above the plot with a title, none without one."""
        with_title = self.picture(title=clip_title("pump", datetime(2027, 1, 2, tzinfo=UTC), 3, 2))
        without = self.picture(title="")
        for picture, dark in ((with_title, True), (without, False)):
            strip = decode(picture)[: picture.layout.strip_top]
            assert (strip.sum(axis=2) < 200).any() == dark

    def test_axes_are_labelled(self) -> None:
        """Frequency labels left of the plot, time labels under it, dB labels right of the
        colour bar: dark pixels (text) in each margin."""
        picture = self.picture()
        rgb = decode(picture).sum(axis=2)
        left, top, right, bottom = picture.layout.plot
        bar_right = picture.layout.bar[2]
        assert (rgb[top:bottom, : left - 6] < 200).sum() > 50
        assert (rgb[bottom + 6 :, left:right] < 200).sum() > 200
        assert (rgb[top:bottom, bar_right + 6 :] < 200).sum() > 50

    def test_no_evidence_no_event(self) -> None:
        """Without markers, pre-roll or band it still renders: no red anywhere, no band
        colour on the spectrogram, no grey pre-roll bar, no legend."""
        picture = self.picture(title="pump")
        rgb = decode(picture)
        assert not is_colour(rgb, MARKER_RGB).any()
        assert not is_colour(plot_of(picture, rgb), BAND_RGB).any()
        left, top, right, _ = picture.layout.plot
        strip = rgb[picture.layout.strip_top : top - 1, left:right]
        assert not is_colour(strip, (PRE_ROLL_GREY,) * 3).any()
        marked = self.picture(title="pump", markers_s=(1.0,), pre_s=1.0, band_hz=(1e3, 2e3))
        assert marked.layout.height > picture.layout.height  # the legend's line

    @pytest.mark.parametrize(
        ("seconds", "rate", "plot_width"),
        [(0.01, 16000, MIN_PLOT_WIDTH_PX), (600.0, 8000, MAX_WIDTH_PX)],
    )
    def test_very_short_and_very_long(self, seconds: float, rate: int, plot_width: int) -> None:
        """10 ms is stretched to the narrowest plot; 10 minutes is averaged into the widest;
        both with markers (the long one's end beyond the clip is left out)."""
        picture = self.picture(seconds, rate, markers_s=(0.0, seconds * 2), pre_s=seconds / 2)
        rgb = decode(picture)
        left, top, right, bottom = picture.layout.plot
        assert right - left == plot_width and bottom - top >= 128
        assert len(picture.png) < 100_000
        assert is_colour(rgb[top:bottom, left], MARKER_RGB).all()


class TestTitle:
    def test_facts(self) -> None:
        """Monitor, the alert's UTC time, the peak score and threshold; unknowns left out."""
        at = datetime(2027, 3, 4, 5, 6, 7, 800000, tzinfo=UTC)
        assert clip_title("pump", at, 3.2149, 2.5) == (
            "pump  ·  alert 2027-03-04 05:06:07 UTC  ·  peak score 3.21 (threshold 2.5)"
        )
        assert clip_title("pump", None, float("nan"), 2.5) == "pump"
        assert clip_title("pump", None, 4.0, None) == "pump  ·  peak score 4"

    def test_alert_time_from_the_request(self, tmp_path: Path) -> None:
        """The start alert's wall time: the clip's first sample plus the stream time between."""
        request = ClipRequest(
            alert_id="a",
            monitor="pump",
            device_id="dev",
            samples=np.zeros(10, np.float32),
            sample_rate=16000,
            started_at=datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC),
            stream_start_s=100.0,
            pre_s=2.0,
            event={"started_s": 103.5},
            model={},
            scores=[],
            path=tmp_path / "a.wav",
        )
        assert request.alert_at == datetime(2027, 1, 1, 0, 0, 3, 500000, tzinfo=UTC)
        assert ClipRequest(**{**_fields(request), "event": {}}).alert_at is None


def _fields(request: ClipRequest) -> dict[str, object]:
    return {name: getattr(request, name) for name in ClipRequest.__dataclass_fields__}


class TestWriterPicture:
    def test_the_store_draws_the_request_facts(self, tmp_path: Path) -> None:
        """The PNG the clip store writes is the picture of the clip's audio with its marks
        and a title from the request's facts (monitor, alert time, peak, threshold)."""
        from support.clips import Results, clips_config

        from asd_edge.clips import ClipStore

        results = Results()
        store = ClipStore(tmp_path, clips_config(spectrogram=True), on_done=results)
        store.start()
        samples = (np.random.default_rng(5).standard_normal(8 * 8000) * 0.05).astype(np.float32)
        started = datetime(2027, 5, 6, 7, 8, 9, tzinfo=UTC)
        event = {"started_s": 53.0, "peak_score": 7.25, "threshold": 3.0}
        store.submit(
            ClipRequest(
                alert_id="a1",
                monitor="pump",
                device_id="dev",
                samples=samples,
                sample_rate=8000,
                started_at=started,
                stream_start_s=50.0,
                pre_s=2.0,
                event=event,
                model={},
                scores=[],
                path=store.planned_path("pump", "a1", started),
                markers_s=(2.0, 6.0),
                band_hz=(500.0, 1000.0),
            )
        )
        store.stop()
        [result] = results.items
        assert result.spectrogram is not None
        title = "pump  ·  alert 2027-05-06 07:08:12 UTC  ·  peak score 7.25 (threshold 3)"
        marks = {"markers_s": (2.0, 6.0), "pre_s": 2.0, "band_hz": (500.0, 1000.0)}
        expected = draw_picture(samples, 8000, title=title, **marks)  # type: ignore[arg-type]
        untitled = draw_picture(samples, 8000, **marks)  # type: ignore[arg-type]
        written = result.spectrogram.read_bytes()
        assert written == expected.png != untitled.png


class TestLight:
    def test_the_daemon_never_loads_pillow(self) -> None:
        """Pictures are drawn in a child process (``clips.painter``): a process that has
        drawn one (as the clip writer does) has still not loaded Pillow, and the PNG is the
        one ``draw_picture`` draws."""
        code = (
            "import sys, numpy as np\n"
            "import asd_edge.clips, asd_edge.clips.painter as p\n"
            "png = p.paint(np.zeros(800, np.float32), 8000, title='t', markers_s=(0.02,))\n"
            "sys.stdout.buffer.write(png)\n"
            "sys.exit(3 if 'PIL' in sys.modules else 0)\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True)
        assert result.returncode == 0, result.stderr.decode()
        expected = draw_picture(np.zeros(800, np.float32), 8000, title="t", markers_s=(0.02,))
        assert result.stdout == expected.png

    def test_a_bad_request_fails_with_a_reason(self) -> None:
        """The child refuses a malformed request with one line on stderr and exit 1."""
        from asd_edge.clips import painter

        for stdin in (b"not json\n", b'{"frames": 4}\n\x00\x00\x00\x00', b"[1]\n"):
            result = subprocess.run(
                [sys.executable, "-c", painter._CHILD], input=stdin, capture_output=True
            )
            assert result.returncode == 1 and result.stdout == b""
            assert len(result.stderr.decode().strip().splitlines()) == 1, result.stderr

    def test_a_failed_picture_keeps_the_clip(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the picture cannot be drawn the clip is saved without one, and said so."""
        from structlog.testing import capture_logs
        from support.clips import Results, clips_config

        from asd_edge.clips import ClipStore, writer
        from asd_edge.errors import ChildFailed

        def broken(*_args: object, **_kwargs: object) -> bytes:
            raise ChildFailed("the picture process could not start: no such file")

        monkeypatch.setattr(writer, "paint", broken)
        results = Results()
        store = ClipStore(tmp_path, clips_config(spectrogram=True), on_done=results)
        started = datetime(2027, 5, 6, 7, 8, 9, tzinfo=UTC)
        with capture_logs() as logs:
            store.start()
            store.submit(
                ClipRequest(
                    alert_id="a2",
                    monitor="pump",
                    device_id="dev",
                    samples=np.zeros(8000, np.float32),
                    sample_rate=8000,
                    started_at=started,
                    stream_start_s=0.0,
                    pre_s=0.0,
                    event={},
                    model={},
                    scores=[],
                    path=store.planned_path("pump", "a2", started),
                )
            )
            store.stop()
        [result] = results.items
        assert result.path is not None and result.path.is_file()
        assert result.spectrogram is None and not result.path.with_suffix(".png").exists()
        assert '"spectrogram": null' in result.path.with_suffix(".json").read_text()
        [failed] = [e for e in logs if e["event"] == "clip_picture_failed"]
        assert failed["alert_id"] == "a2" and "could not start" in failed["error"]
