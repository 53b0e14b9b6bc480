"""The clip picture's cost: draw time, PNG size, and the daemon's memory with Pillow loaded.

    python benchmarks/bench_spectrogram.py [--repeat N] [--pictures N] [--wav FILE]

Measures, for a 20 s clip at 48 kHz (loud noise with a few tones by default, the worst
case for compression; ``--wav`` draws a real recording instead, as many seconds as it has):

- ``draw_ms``: ``clips.picture.draw_picture`` in this process (spectrogram levels, axes,
  text, PNG), the first picture (Pillow imported, font loaded) apart from the rest, and
  ``clips.spectrogram.spectrogram`` (the numpy part) alone; ``png_kb``: the file's size;
- ``rss_mb``: in a fresh interpreter that imports the daemon's modules as ``asd-edge run``
  does (math thread pools pinned first), VmRSS from /proc/self/status: after the imports,
  after three spectrograms' levels (the numpy part: what a picture cost before Pillow),
  after importing Pillow's modules alone, after the first picture, then after each of
  ``--pictures`` more (gc.collect() between): flat, or growing per picture?

Appends one JSON line to benchmarks/results/spectrogram.jsonl. Run it on an otherwise
idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asd_edge.runtime import pin_math_threads

pin_math_threads()  # as the asd-edge command does, before numpy loads

import numpy as np  # noqa: E402
from common import record, stats_us  # noqa: E402

from asd_edge.audiofile import read_audio  # noqa: E402

RATE = 48000
SECONDS = 20.0
MARKS = {"markers_s": (5.0, 15.0), "pre_s": 5.0, "band_hz": (2000.0, 4000.0)}
TITLE = "bench  ·  alert 2026-12-07 09:41:27 UTC  ·  peak score 4.21 (threshold 2.5)"

CHILD = """
import gc, json, sys
from asd_edge.runtime import pin_math_threads
pin_math_threads()
import numpy as np

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

import asd_edge.daemon, asd_edge.cli, asd_edge.mqtt, asd_edge.clips.writer  # as asd-edge run
from asd_edge.clips.picture import draw_picture
audio = np.load(sys.argv[1])
marks = json.loads(sys.argv[3])
from asd_edge.clips.spectrogram import spectrogram
gc.collect()
out = {"imported": rss_mb()}
for _ in range(3):
    spectrogram(audio, %(rate)d)  # the numpy part, all the picture cost before Pillow
gc.collect()
out["levels_only"] = rss_mb()
import PIL.Image, PIL.ImageDraw, PIL.ImageFont, PIL.PngImagePlugin
gc.collect()
out["pillow_imported"] = rss_mb()
picture = draw_picture(audio, %(rate)d, title=sys.argv[2], **marks)
del picture
gc.collect()
out["first_picture"] = rss_mb()
after = []
for _ in range(int(sys.argv[4])):
    picture = draw_picture(audio, %(rate)d, title=sys.argv[2], **marks)
    del picture
    gc.collect()
    after.append(round(rss_mb(), 2))
out["after_each"] = after
print(json.dumps(out))
"""


def test_audio(seconds: float, rate: int) -> np.ndarray:
    """Loud noise with three steady tones: every pixel differs, as on a noisy machine."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    tones = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (440.0, 3000.0, 11000.0))
    return (0.05 * rng.standard_normal(t.size) + tones).astype(np.float32)


def bench_draw(audio: np.ndarray, rate: int, repeat: int) -> dict[str, object]:
    from asd_edge.clips.picture import draw_picture
    from asd_edge.clips.spectrogram import spectrogram

    t0 = time.perf_counter_ns()
    picture = draw_picture(audio, rate, title=TITLE, **MARKS)  # type: ignore[arg-type]
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    whole, levels = [], []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        spectrogram(audio, rate)
        t1 = time.perf_counter_ns()
        picture = draw_picture(audio, rate, title=TITLE, **MARKS)  # type: ignore[arg-type]
        whole.append(time.perf_counter_ns() - t1)
        levels.append(t1 - t0)

    def ms(values: list[int]) -> dict[str, float]:
        stats = stats_us(values)
        return {"n": len(values)} | {
            k.replace("_us", "_ms"): round(v / 1000, 2) for k, v in stats.items() if k != "n"
        }

    return {
        "first_ms": round(first_ms, 1),
        "picture": ms(whole),
        "spectrogram_only": ms(levels),
        "png_kb": round(len(picture.png) / 1000, 1),
        "size_px": [picture.layout.width, picture.layout.height],
    }


def bench_rss(audio: np.ndarray, rate: int, pictures: int, tmp: Path) -> dict[str, object]:
    path = tmp / "bench_spectrogram_audio.npy"
    np.save(path, audio)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD % {"rate": rate},
                str(path),
                TITLE,
                json.dumps(MARKS),
                str(pictures),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    finally:
        path.unlink(missing_ok=True)
    out: dict[str, object] = json.loads(proc.stdout)
    after = out["after_each"]
    assert isinstance(after, list)
    mb = {k: float(v) for k, v in out.items() if k != "after_each"}  # type: ignore[arg-type]
    return {k: round(v, 2) for k, v in mb.items()} | {
        "after_each": after,
        "pillow_import_cost": round(mb["pillow_imported"] - mb["levels_only"], 2),
        "pictures_cost": round(after[-1] - mb["levels_only"], 2) if after else None,
        "growth_after_2nd": round(after[-1] - after[0], 2) if after else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="pictures timed (default 10)")
    parser.add_argument("--pictures", type=int, default=20, help="pictures for RSS (20)")
    parser.add_argument("--wav", type=Path, help="draw this recording instead of test noise")
    args = parser.parse_args()
    if args.wav is not None:
        data = read_audio(args.wav)
        audio, rate, source = data.samples[:, 0].copy(), data.sample_rate, args.wav.name
    else:
        audio, rate, source = test_audio(SECONDS, RATE), RATE, "noise+tones"
    results = {
        "audio": {"source": source, "seconds": round(audio.size / rate, 3), "rate": rate},
        "draw": bench_draw(audio, rate, args.repeat),
        "rss_mb": bench_rss(audio, rate, args.pictures, Path("/var/tmp")),
    }
    record("spectrogram", results)


if __name__ == "__main__":
    main()
