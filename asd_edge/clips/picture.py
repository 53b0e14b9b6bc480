"""The picture beside a clip: its spectrogram with axes, a dB colour bar, the event marked and
a title, drawn with Pillow and written as a palette PNG (the daemon draws it in a child
process: ``painter``)."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .spectrogram import FLOOR_DB, LEVELS, spectrogram

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

    Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

__all__ = [
    "BAND",
    "BAND_RGB",
    "BRACKET_PX",
    "MARKER",
    "MARKER_RGB",
    "MIN_PLOT_HEIGHT_PX",
    "MIN_PLOT_WIDTH_PX",
    "PALETTE",
    "Layout",
    "Picture",
    "clip_title",
    "draw_picture",
]

FONT_PX = 12
"""Text height (Pillow's default font; its bitmap font where FreeType is missing)."""
MIN_PLOT_WIDTH_PX = 480
"""Narrowest spectrogram: short clips are stretched in time so that the axes and the
legend fit."""
MIN_PLOT_HEIGHT_PX = 128
"""Lowest spectrogram: low rates are stretched in frequency."""
MARKER_RGB = (255, 48, 48)
"""Lines where the anomaly starts and ends (absent from viridis)."""
BAND_RGB = (255, 255, 255)
"""Dashed edges and side bars of the strongest evidence band."""
BRACKET_PX = 3
"""Width of the bars drawn inside both sides of the spectrogram across the evidence band."""
PRE_ROLL_GREY = 204
"""Grey of the bar above the spectrogram that spans the pre-roll (a step of the grey ramp:
a multiple of 255 / (GREYS - 1))."""
GREYS = 16
"""Grey levels of text and lines (enough for smooth text edges)."""
DB_STEP = 20
"""dB between the colour bar's labels."""
_PAD, _TICK, _GAP, _BAR_PX = 6, 4, 14, 12

# Palette: LEVELS viridis levels (FLOOR_DB..0 dB), GREYS greys (black..white), two marks.
_VIRIDIS_HEX = "440154 472c7a 3b518b 2c718e 21908d 27ad81 5cc863 aadc32 fde725"  # 0, 1/8, ..., 1
_VIRIDIS = np.array([list(bytes.fromhex(c)) for c in _VIRIDIS_HEX.split(" ")], dtype=np.float64)
_GREY0 = LEVELS
MARKER = LEVELS + GREYS
"""Palette index of MARKER_RGB."""
BAND = MARKER + 1
"""Palette index of BAND_RGB."""
PALETTE: npt.NDArray[np.uint8] = (
    np.concatenate(
        [
            np.stack(
                [
                    np.interp(np.linspace(0, 1, LEVELS), np.linspace(0, 1, 9), _VIRIDIS[:, c])
                    for c in range(3)
                ],
                axis=1,
            ),
            np.repeat(np.linspace(0, 255, GREYS)[:, None], 3, axis=1),
            np.array([MARKER_RGB, BAND_RGB], dtype=np.float64),
        ]
    )
    .round()
    .astype(np.uint8)
)
"""The colours of the picture: viridis levels, greys, marker and band colours."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the parts of a picture are, in pixels from its top-left corner (right and
    bottom edges exclusive)."""

    width: int
    height: int
    plot: tuple[int, int, int, int]
    """The spectrogram: left, top, right, bottom."""
    bar: tuple[int, int, int, int]
    """The colour bar: left, top, right, bottom (0 dB at the top)."""
    strip_top: int
    """Top of the strip above the spectrogram where the pre-roll is marked (the title is above)."""
    duration_s: float
    low_hz: float
    high_hz: float

    def x(self, t_s: float) -> int:
        """Column of a time in seconds from the clip's start (the columns cover the clip)."""
        left, _, right, _ = self.plot
        width = right - left
        return left + max(0, min(width - 1, round(t_s / self.duration_s * width)))

    def y(self, hz: float) -> int:
        """Row of a frequency."""
        _, top, _, bottom = self.plot
        share = (self.high_hz - hz) / (self.high_hz - self.low_hz)
        return top + max(0, min(bottom - top - 1, math.floor(share * (bottom - top))))

    def db_y(self, db: float) -> int:
        """Row of a level on the colour bar."""
        _, top, _, bottom = self.bar
        return top + round(db / FLOOR_DB * (bottom - top - 1))


@dataclass(frozen=True, slots=True)
class Picture:
    """A drawn picture."""

    png: bytes
    """The PNG file's bytes (8-bit palette)."""
    layout: Layout
    """Where its parts are."""


def clip_title(
    monitor: str, alert_at: datetime | None, peak_score: object, threshold: object
) -> str:
    """The picture's one-line title: monitor, alert time (UTC), peak score and threshold
    (what is known of them)."""
    parts = [monitor]
    if alert_at is not None:
        parts.append(f"alert {alert_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC")
    if isinstance(peak_score, int | float) and math.isfinite(peak_score):
        score = f"peak score {peak_score:.3g}"
        if isinstance(threshold, int | float) and math.isfinite(threshold):
            score += f" (threshold {threshold:.3g})"
        parts.append(score)
    return "  ·  ".join(parts)


@functools.lru_cache(maxsize=1)
def _font() -> Font:
    from PIL import ImageFont

    # FreeType's Aileron at FONT_PX, or Pillow's bitmap font where FreeType is missing.
    return ImageFont.load_default(size=FONT_PX)


def _nice_step(span: float, most: int) -> float:
    """The smallest 1, 2 or 5 × 10^k that cuts ``span`` into at most ``most`` steps."""
    span = max(span, 1e-9)
    k = math.floor(math.log10(span / max(most, 1)))
    for power in (k, k + 1):
        for mantissa in (1, 2, 5):
            if span / (mantissa * 10.0**power) <= most:
                return mantissa * 10.0**power
    return 10.0 ** (k + 2)


def _ticks(span: float, step: float) -> list[tuple[float, str]]:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    count = math.floor(span / step + 1e-9)
    return [(i * step, f"{i * step:.{decimals}f}") for i in range(count + 1)]


def _stretch(levels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Repeat rows and columns (nearest) up to the smallest plot."""
    rows, cols = levels.shape
    height, width = max(rows, MIN_PLOT_HEIGHT_PX), max(cols, MIN_PLOT_WIDTH_PX)
    stretched: npt.NDArray[np.uint8] = levels[(np.arange(height) * rows) // height]
    return stretched[:, (np.arange(width) * cols) // width]


class _Pen:
    """Text on the grey canvas, placed by the top of its line box."""

    def __init__(self, draw: ImageDraw.ImageDraw, font: Font) -> None:
        self.draw, self.font = draw, font
        _, top, _, bottom = draw.textbbox((0, 0), "Ag0", font=font)
        self.line_px, self._top = int(bottom - top), int(top)

    def width(self, text: str) -> int:
        return math.ceil(self.draw.textlength(text, font=self.font))

    def text(self, x: float, y: float, text: str, fill: int = 0) -> None:
        self.draw.text((round(x), round(y) - self._top), text, fill=fill, font=self.font)


def _legend(
    markers_s: Sequence[float], pre_s: float, band_hz: tuple[float, float] | None
) -> list[tuple[str, str]]:
    """(swatch kind, text) of each mark the picture carries."""
    items = []
    if pre_s > 0:
        items.append(("pre", f"pre-roll {pre_s:.3g} s"))
    if markers_s:
        times = ", ".join(f"{t:.3g} s" for t in markers_s)
        items.append(("marker", f"anomaly start, end ({times})"))
    if band_hz is not None:
        lo, hi = sorted(band_hz)
        items.append(("band", f"evidence band {_khz(lo)}-{_khz(hi)} kHz"))
    return items


def _khz(hz: float) -> str:
    """Hz as kHz with one or two decimals: 1.0, 1.25, 12.5."""
    text = f"{hz / 1000:.2f}"
    return text[:-1] if text.endswith("0") else text


def draw_picture(
    samples: npt.ArrayLike,
    sample_rate: int,
    *,
    title: str = "",
    markers_s: Sequence[float] = (),
    pre_s: float = 0.0,
    band_hz: tuple[float, float] | None = None,
) -> Picture:
    """The clip's picture: a title; a strip marking the pre-roll; the spectrogram
    (``spectrogram.spectrogram``, low frequencies at the bottom) with red lines where the
    anomaly starts and ends (``markers_s``, seconds from the clip's start) and the
    evidence band ``band_hz`` bracketed (dashed edges, bars at both sides); a time axis
    in seconds from the clip's start, a frequency axis in kHz, a colour bar in dB
    relative to a full-scale sine (FLOOR_DB..0, the same for every clip); a legend."""
    from PIL import Image, ImageDraw

    spec = spectrogram(samples, sample_rate)
    levels = _stretch(spec.levels)
    marks = [t for t in markers_s if math.isfinite(t) and 0.0 <= t <= spec.duration_s]
    legend = _legend(marks, pre_s, band_hz)

    font = _font()
    probe = _Pen(ImageDraw.Draw(Image.new("L", (1, 1))), font)
    line = probe.line_px
    plot_h, plot_w = levels.shape
    nyquist_khz = sample_rate / 2000
    khz = _ticks(nyquist_khz, _nice_step(nyquist_khz, max(1, plot_h // (2 * line))))
    dbs = [(float(db), f"{db:d}") for db in range(0, int(FLOOR_DB) - 1, -DB_STEP)]
    left = _PAD + max(probe.width(s) for s in [*(s for _, s in khz), "kHz"]) + _TICK + 3
    right_margin = _GAP + _BAR_PX + _TICK + 3 + max(probe.width(s) for _, s in dbs) + _PAD
    width = left + plot_w + right_margin
    legend_rows = _legend_rows(probe, legend, width - 2 * _PAD)
    strip_top = _PAD + line + _PAD
    top = strip_top + line + 4
    bottom = top + plot_h
    height = bottom + _TICK + 2 * line + 4 + len(legend_rows) * (line + 4) + _PAD
    bar_left = left + plot_w + _GAP
    layout = Layout(
        width=width,
        height=height,
        plot=(left, top, left + plot_w, bottom),
        bar=(bar_left, top, bar_left + _BAR_PX, bottom),
        strip_top=strip_top,
        duration_s=spec.duration_s,
        low_hz=spec.low_hz,
        high_hz=spec.high_hz,
    )

    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    pen = _Pen(draw, font)
    pen.text(_PAD, _PAD, _fitted(pen, title, width - 2 * _PAD))
    if pre_s > 0:  # the pre-roll: a grey bar in the strip, labelled where it fits
        x1 = layout.x(pre_s)
        draw.rectangle((left, strip_top, x1 - 1, top - 3), fill=PRE_ROLL_GREY)
        if pen.width("pre-roll") + 4 <= x1 - left:
            pen.text((left + x1 - pen.width("pre-roll")) / 2, strip_top, "pre-roll")
    pen.text(_PAD, strip_top, "kHz")
    pen.text(bar_left + (_BAR_PX - pen.width("dBFS")) / 2, strip_top, "dBFS")
    for box in (layout.plot, layout.bar):  # frames, just outside
        draw.rectangle((box[0] - 1, box[1] - 1, box[2], box[3]), outline=0)
    for value_khz, label in khz:
        y = layout.y(value_khz * 1000)
        draw.line((left - 1 - _TICK, y, left - 2, y), fill=0)
        label_y = min(max(y - line / 2, strip_top + line), bottom - line)
        pen.text(left - 3 - _TICK - pen.width(label), label_y, label)
    for db, label in dbs:
        y = layout.db_y(db)
        draw.line((bar_left + _BAR_PX + 1, y, bar_left + _BAR_PX + _TICK, y), fill=0)
        pen.text(bar_left + _BAR_PX + _TICK + 3, min(y - line / 2, bottom - line), label)
    _time_axis(pen, layout, line)
    _draw_legend(pen, legend_rows, bottom + _TICK + 2 * line + 6, line)

    # Colour: greys from the canvas, then the spectrogram, the colour bar and the marks.
    index = (_GREY0 + (np.asarray(canvas, dtype=np.uint16) * (GREYS - 1) + 127) // 255).astype(
        np.uint8
    )
    index[top:bottom, left : left + plot_w] = levels
    ramp = np.round(np.linspace(LEVELS - 1, 0, plot_h)).astype(np.uint8)
    index[top:bottom, bar_left : bar_left + _BAR_PX] = ramp[:, None]
    if band_hz is not None:
        _bracket(index, layout, band_hz)
    for t_s in marks:
        x = layout.x(t_s)
        index[top:bottom, x] = MARKER
        index[strip_top : top - 2, max(left, x - 2) : x + 3] = MARKER  # a flag in the strip
    _legend_swatches(index, legend_rows, bottom + _TICK + 2 * line + 6, line)

    image = Image.frombytes("P", (width, height), index.tobytes())
    image.putpalette(PALETTE.tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return Picture(png=buffer.getvalue(), layout=layout)


def _fitted(pen: _Pen, text: str, width_px: int) -> str:
    """``text``, cut short with '...' if wider than ``width_px``."""
    if pen.width(text) <= width_px:
        return text
    while text and pen.width(text + "...") > width_px:
        text = text[:-1]
    return text + "..."


def _time_axis(pen: _Pen, layout: Layout, line: int) -> None:
    left, _, right, bottom = layout.plot
    widest = pen.width(f"{layout.duration_s:.2f}") + 16
    step = _nice_step(layout.duration_s, max(1, (right - left) // widest))
    for t_s, label in _ticks(layout.duration_s, step):
        x = layout.x(t_s)
        pen.draw.line((x, bottom + 1, x, bottom + _TICK), fill=0)
        label_px = pen.width(label)
        label_x = min(max(x - label_px / 2, left - 4), layout.width - _PAD - label_px)
        pen.text(label_x, bottom + _TICK + 1, label)
    axis = "time since the clip's start (s)"
    pen.text((left + right - pen.width(axis)) / 2, bottom + _TICK + line + 3, axis)


_SWATCH_PX = 18


def _legend_rows(
    pen: _Pen, items: list[tuple[str, str]], width_px: int
) -> list[list[tuple[int, str, str]]]:
    """The legend's items as rows of (x, swatch kind, text) that fit ``width_px``."""
    rows: list[list[tuple[int, str, str]]] = []
    x = width_px  # start a new row at once
    for kind, text in items:
        item_px = _SWATCH_PX + 5 + pen.width(text)
        if x + item_px > width_px:
            rows.append([])
            x = 0
        rows[-1].append((_PAD + x, kind, text))
        x += item_px + 18
    return rows


def _draw_legend(pen: _Pen, rows: list[list[tuple[int, str, str]]], y0: int, line: int) -> None:
    for i, row in enumerate(rows):
        y = y0 + i * (line + 4)
        for x, kind, text in row:
            if kind == "pre":
                pen.draw.rectangle((x, y + 3, x + _SWATCH_PX - 1, y + line - 3), fill=PRE_ROLL_GREY)
            elif kind == "band":  # a dark patch to show the dashes on
                pen.draw.rectangle((x, y + 1, x + _SWATCH_PX - 1, y + line - 1), fill=60)
            pen.text(x + _SWATCH_PX + 5, y, text)


def _legend_swatches(
    index: npt.NDArray[np.uint8], rows: list[list[tuple[int, str, str]]], y0: int, line: int
) -> None:
    for i, row in enumerate(rows):
        y = y0 + i * (line + 4)
        for x, kind, _ in row:
            if kind == "marker":
                index[y + 1 : y + line - 1, x + _SWATCH_PX // 2] = MARKER
            elif kind == "band":
                dashes = x + np.flatnonzero((np.arange(_SWATCH_PX) // 4) % 2 == 0)
                index[y + 3, dashes] = BAND
                index[y + line - 3, dashes] = BAND


def _bracket(index: npt.NDArray[np.uint8], layout: Layout, band_hz: tuple[float, float]) -> None:
    """Mark the rows of ``band_hz`` on the spectrogram (in place): bars inside both sides,
    dashed lines at its edges."""
    left, _, right, _ = layout.plot
    lo, hi = sorted(band_hz)
    top, bottom = layout.y(hi), layout.y(lo)
    bar = min(BRACKET_PX, right - left)
    index[top : bottom + 1, left : left + bar] = BAND
    index[top : bottom + 1, right - bar : right] = BAND
    dashes = left + np.flatnonzero((np.arange(right - left) // 4) % 2 == 0)
    index[top, dashes] = BAND
    index[bottom, dashes] = BAND
