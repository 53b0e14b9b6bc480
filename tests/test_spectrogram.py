"""Tests of the spectrogram PNG: it decodes, has the promised size, shows what the audio holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.audio import sine

from asd_edge.clips.spectrogram import (
    BAND_PX,
    MARKER_RGB,
    MAX_HEIGHT_PX,
    MAX_WIDTH_PX,
    PALETTE,
    PRE_ROLL_RGB,
    encode_png,
    fft_size,
    spectrogram_indexed,
)
from asd_edge.durable import write_atomic

image = pytest.importorskip("matplotlib.image", reason="matplotlib (training extra) decodes PNG")


def spectrogram_rgb(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """The clip writer's picture in colour, ``uint8[height, width, 3]``."""
    return PALETTE[spectrogram_indexed(samples, sample_rate)]


def write_png(path: Path, pixels: np.ndarray, palette: np.ndarray | None = None) -> None:
    """``encode_png`` written to a file, as the clip writer writes its pictures."""
    write_atomic(path, encode_png(pixels, palette))


def spectrogram_png(
    samples: np.ndarray,
    sample_rate: int,
    path: Path,
    *,
    markers_s: tuple[float, ...] = (),
    pre_s: float = 0.0,
) -> tuple[int, int]:
    """The clip writer's picture of ``samples`` written to ``path``; (height, width)."""
    index = spectrogram_indexed(samples, sample_rate, markers_s=markers_s, pre_s=pre_s)
    write_png(path, index, PALETTE)
    return index.shape[0], index.shape[1]


def decode(path: Path) -> np.ndarray:
    """The PNG as uint8[h, w, 3], decoded by matplotlib (an independent decoder; it gives
    indexed colour as opaque RGBA)."""
    pixels = image.imread(path)
    assert pixels.dtype == np.float32 and pixels.shape[2] in (3, 4)
    if pixels.shape[2] == 4:
        assert (pixels[:, :, 3] == 1.0).all()
    return np.round(pixels[:, :, :3] * 255).astype(np.uint8)


def brightest_row(rgb: np.ndarray, column: int) -> int:
    """Row (from the top, band excluded) where the colour at ``column`` is brightest."""
    return int(np.argmax(rgb[BAND_PX:, column].astype(int).sum(axis=1)))


class TestPng:
    """The encoder writes standard PNG that other decoders read back pixel for pixel."""

    def test_round_trip_through_matplotlib(self, tmp_path: Path) -> None:
        """Random pixels come back unchanged and no temporary file is left."""
        rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
        write_png(tmp_path / "a.png", rgb)
        np.testing.assert_array_equal(decode(tmp_path / "a.png"), rgb)
        assert [p.name for p in tmp_path.iterdir()] == ["a.png"]

    def test_round_trip_through_pil(self) -> None:
        """Pillow, where present, agrees too."""
        pil = pytest.importorskip("PIL.Image")
        import io

        rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
        with pil.open(io.BytesIO(encode_png(rgb))) as img:
            assert img.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(img), rgb)

    def test_indexed_colour_round_trip(self, tmp_path: Path) -> None:
        """Palette indices are drawn in the palette's colours."""
        indices = np.random.default_rng(2).integers(0, 256, (20, 30), dtype=np.uint8)
        write_png(tmp_path / "p.png", indices, PALETTE)
        np.testing.assert_array_equal(decode(tmp_path / "p.png"), PALETTE[indices])

    def test_bad_shape_is_refused(self) -> None:
        """A grey image or an empty one is a ValueError naming the shape."""
        with pytest.raises(ValueError, match=r"uint8\[height, width, 3\].*\(4, 4\)"):
            encode_png(np.zeros((4, 4), dtype=np.uint8))
        with pytest.raises(ValueError, match="0, 4, 3"):
            encode_png(np.zeros((0, 4, 3), dtype=np.uint8))
        with pytest.raises(ValueError, match="index 9 is beyond the 4 colours"):
            encode_png(np.full((2, 2), 9, dtype=np.uint8), PALETTE[:4])


class TestSpectrogram:
    """The picture shows frequencies upwards, on a fixed level scale, with the event marked."""

    def test_size_and_tone_row_at_16k(self, tmp_path: Path) -> None:
        """At 16 kHz: 257 frequency rows under the band; a 1 kHz tone at bin 32 from the bottom."""
        rate = 16000
        height, width = spectrogram_png(sine(1000.0, 3.0, rate=rate), rate, tmp_path / "s.png")
        rgb = decode(tmp_path / "s.png")
        n_fft = fft_size(rate)
        assert n_fft == 512
        assert rgb.shape == (height, width, 3) == (BAND_PX + 257, 1 + (3 * rate - 512) // 256, 3)
        assert brightest_row(rgb, width // 2) == 256 - 32

    def test_high_rate_is_binned_in_frequency(self, tmp_path: Path) -> None:
        """At 48 kHz the rows are capped; a 6 kHz tone sits a quarter of the way up."""
        rate = 48000
        spectrogram_png(sine(6000.0, 1.0, rate=rate), rate, tmp_path / "s.png")
        rgb = decode(tmp_path / "s.png")
        rows = rgb.shape[0] - BAND_PX
        assert rows == MAX_HEIGHT_PX
        from_bottom = rows - 1 - brightest_row(rgb, rgb.shape[1] // 2)
        assert abs(from_bottom - rows * 6000 / 24000) <= 1

    def test_long_clip_is_capped_in_width(self) -> None:
        """A minute at 16 kHz has thousands of frames but at most MAX_WIDTH_PX columns."""
        rgb = spectrogram_rgb(np.zeros(60 * 16000, dtype=np.float32), 16000)
        assert rgb.shape[1] == MAX_WIDTH_PX

    def test_fixed_level_scale(self) -> None:
        """A quiet tone is drawn darker than a loud one: levels are not normalised per clip."""
        loud = spectrogram_rgb(sine(1000.0, 1.0, amplitude=0.5), 16000)
        quiet = spectrogram_rgb(sine(1000.0, 1.0, amplitude=0.005), 16000)
        row = BAND_PX + 256 - 32
        assert loud[row, 10].astype(int).sum() > quiet[row, 10].astype(int).sum() + 100
        silent = spectrogram_rgb(np.zeros(16000, dtype=np.float32), 16000)
        assert (silent[BAND_PX:] == silent[BAND_PX, 0]).all()  # the floor colour everywhere

    def test_markers_and_pre_roll_band(self, tmp_path: Path) -> None:
        """Red lines at the event's start and end; the band is light for the pre-roll only."""
        rate = 8000
        audio = np.zeros(10 * rate, dtype=np.float32)
        spectrogram_png(audio, rate, tmp_path / "s.png", markers_s=(2.0, 7.5), pre_s=2.0)
        rgb = decode(tmp_path / "s.png")
        width = rgb.shape[1]
        red = np.all(rgb[BAND_PX:] == MARKER_RGB, axis=2).all(axis=0)
        assert list(np.flatnonzero(red)) == [round(0.2 * width), round(0.75 * width)]
        band = np.all(rgb[0] == PRE_ROLL_RGB, axis=1)
        assert list(np.flatnonzero(band)) == list(range(round(0.2 * width)))

    def test_short_and_odd_input(self) -> None:
        """Audio shorter than one FFT frame, or with NaN, still gives a picture."""
        rgb = spectrogram_rgb(np.array([0.1, np.nan, -0.2], dtype=np.float32), 16000)
        assert rgb.shape == (BAND_PX + 257, 1, 3)
