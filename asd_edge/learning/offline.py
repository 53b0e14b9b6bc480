"""``asd-edge learn --from``: a monitor's normal sound learned from recordings here, with
the daemon's own code and no daemon: files read in blocks into a ``Collector``, one fit."""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from ..config import Config, MonitorConfig
from ..errors import AudioDecodeError, LearnError

__all__ = ["AUDIO_SUFFIXES", "learn_offline"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_NOINPUT: Final = 66
AUDIO_SUFFIXES: Final = (".wav", ".flac", ".mp3", ".mp4", ".m4a", ".ogg", ".opus", ".aac")
"""What ``--from DIR`` reads."""


def _files(sources: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for src in sources:
        if src.is_dir():
            out += sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            out.append(src)
    return out


def learn_offline(
    config: Config, monitor: MonitorConfig, sources: Sequence[Path], out: Path | None
) -> int:
    from tqdm import tqdm

    from ..audiofile import open_audio, to_mono
    from ..resample import StreamResampler
    from .calibration import CalibrationConfig
    from .fitting import fit_recordings
    from .recording import MIN_PIECE_S
    from .session import PIECES
    from .windows import Collector, features_for

    learn_cfg = config.learn
    files = _files(sources)
    if not files:
        print(f"asd-edge learn: no audio in {', '.join(map(str, sources))}", file=sys.stderr)
        return EXIT_NOINPUT
    features = features_for(learn_cfg.sample_rate, 1.0, learn_cfg.n_mels)
    durations, skipped = {}, []
    for path in files:  # their lengths first (the progress bar, pieces of a single file)
        try:
            with open_audio(path) as reader:
                durations[path] = reader.frames / reader.sample_rate
        except AudioDecodeError as exc:
            skipped.append(f"{path}: {exc.problem}")
    total_s = sum(durations.values())
    piece_s = max(MIN_PIECE_S, total_s / PIECES) if len(durations) == 1 else None
    collector = Collector(
        features,
        1.0,
        monitor.hop_s,
        piece_s=piece_s,
        silence_dbfs=config.health.silence_dbfs,
        clipping_ratio=config.health.clipping_ratio,
    )
    bar = tqdm(
        total=round(total_s),
        unit="s",
        desc="reading",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    )
    for path in durations:  # one file open at a time, read in blocks
        try:
            with open_audio(path) as reader:
                collector.begin(path.name)
                resampler = StreamResampler(reader.sample_rate, learn_cfg.sample_rate)
                for block in reader.blocks():
                    collector.feed(resampler(to_mono(block, None)))
                    bar.update(block.shape[0] / reader.sample_rate)
                collector.feed(resampler.flush())
        except AudioDecodeError as exc:
            skipped.append(f"{path}: {exc.problem}")
    bar.close()
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    recordings = collector.recordings()
    print(
        f"{collector.seconds:.0f} s of usable normal sound from {len(durations)} file(s)"
        + (f"; skipped windows: {_reasons(collector.skipped_s)}" if collector.skipped_s else ""),
        file=sys.stderr,
    )
    if not recordings:
        return EXIT_NOINPUT
    calibration = CalibrationConfig.for_monitor(monitor, learn_cfg.target_fa_per_day)
    with _fit_bar() as progress:
        try:
            learned = fit_recordings(
                recordings,
                kind=learn_cfg.kind,
                params={"n_mels": learn_cfg.n_mels},
                features=features,
                window_s=1.0,
                config=calibration,
                name=f"{config.device_id}-{monitor.name}-learned",
                data_sha256=_files_sha256(files),
                training={"source": "learn", "files": len(files), "monitor": monitor.name},
                pieces=piece_s is not None,
                progress=progress,
            )
        except LearnError as exc:
            print(f"asd-edge learn: {exc}", file=sys.stderr)
            return EXIT_FAILED
    from ..durable import write_atomic

    target = out or Path(f"{monitor.name}-learned.onnx")
    write_atomic(target, learned.onnx, mode=0o644)
    print(
        f"{target}: {learned.metadata['name']} {learned.metadata['version']}, "
        f"{learned.chosen.name}, threshold {learned.threshold:.4g}, predicted "
        f"{learned.calibration.get('predicted_fa_per_day', float('nan')):.2g} false alarms/day, "
        f"fitted in {learned.fit_s:.1f} s",
        file=sys.stderr,
    )
    if learned.warning:
        print(f"warning: {learned.warning}", file=sys.stderr)
    print(
        f"run it: set monitors[].model to {target} (the daemon swaps it in when the file "
        "changes), or push it with asd-train push",
        file=sys.stderr,
    )
    print(target)
    return EXIT_OK


def _files_sha256(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.name).encode())
        with contextlib.suppress(OSError):
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _fit_bar() -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(
        total=100, unit="%", desc="fitting", file=sys.stderr, disable=not sys.stderr.isatty()
    )
    try:
        yield lambda done, total: bar.update(round(100 * done / total) - bar.n)
    finally:
        bar.close()


def _reasons(skipped: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f} s" for k, v in sorted(skipped.items(), key=lambda i: -i[1]))
