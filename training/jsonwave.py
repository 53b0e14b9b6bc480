"""Streaming reader of the JSON waveform files the SoundDitect seed trained from.

Two shapes are read, record by record, without loading the whole file (which may be
several GB):

- ``[{"Waveform": [...], "Labels": 0|1}, ...]``: a list of records; the rate is the
  record's ``fs`` / ``sample_rate`` if it has one, else ``default_rate`` (44100).
- ``{"waveforms": [[...], ...], "labels": ["OK", "NG", ...], "fs": 44100}``: labels
  may also be 0/1; the keys may come in any order (if ``waveforms`` comes first, a
  quick first pass finds ``labels`` and ``fs`` by skipping over the arrays).

The file is decoded in chunks into a sliding text buffer, and each record (or each
waveform) is parsed with ``json.JSONDecoder.raw_decode`` as soon as it is complete,
so memory stays at about one record plus one chunk. Samples are floats in [-1, 1],
or integers in int16 range (divided by 32768).

A syntax error stops the file with :class:`JsonWaveError` naming the file, the byte
offset and the record (records before it were already yielded); a record whose
content is wrong (no waveform, not numbers, not 1-D, beyond full scale) is skipped
and reported through ``on_problem``, and the rest of the file goes on.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from asd_edge.audiofile import MIN_SAMPLE_RATE
from training.errors import DataError
from training.labels import Label, parse_label

__all__ = ["DEFAULT_JSON_RATE", "JsonWaveError", "WaveRecord", "read_json_waves"]

DEFAULT_JSON_RATE = 44100
"""Rate of records that do not say theirs (the seed recorded at 44.1 kHz)."""

_WAVE_KEYS = ("Waveform", "waveform", "Waveforms", "wave", "samples", "data")
_LABEL_KEYS = ("Labels", "labels", "Label", "label")
_RATE_KEYS = ("fs", "sample_rate", "sr", "rate")
_SPECIALS = re.compile(r'[\[\]{}"]')
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects a value may have: a record needs three levels.
Checked before decoding, so that data nested thousands deep is refused the same way on
every Python (whose JSON decoder recurses once per level)."""
_STRING_END = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)


class JsonWaveError(DataError):
    """A JSON waveform file cannot be parsed further; names the file, byte and record."""

    def __init__(self, path: Path, offset: int, record: int, problem: str) -> None:
        self.path = path
        self.offset = offset
        self.record = record
        self.problem = problem
        super().__init__(f"{path}: malformed JSON at byte {offset} (record {record}): {problem}")


class WaveRecord(NamedTuple):
    """One waveform of a JSON file."""

    samples: np.ndarray
    """float32 mono, full scale [-1, 1]."""
    sample_rate: int
    label: Label | None
    record_index: int
    """0-based position of the record in the file."""


class _Buffer:
    """A sliding window of decoded text over a file, with the byte offset of its start."""

    def __init__(self, path: Path, chunk_bytes: int) -> None:
        self.path = path
        self.chunk_bytes = chunk_bytes
        self._file = path.open("rb")
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0
        self.base = 0  # byte offset of text[0]
        if self._file.read(3) == codecs.BOM_UTF8:
            self.base = 3
        else:
            self._file.seek(0)
        self.eof = False
        self.record = 0

    def close(self) -> None:
        self._file.close()

    def offset(self, pos: int | None = None) -> int:
        """Byte offset in the file of text position ``pos`` (default: the cursor)."""
        p = self.pos if pos is None else pos
        return self.base + len(self.text[:p].encode("utf-8"))

    def error(self, problem: str, pos: int | None = None) -> JsonWaveError:
        return JsonWaveError(self.path, self.offset(pos), self.record, problem)

    def more(self, at_least: int = 0) -> bool:
        """Read another chunk (or more); False at the end of the file."""
        if self.eof:
            return False
        if self.pos > 0:  # drop what was consumed
            self.base = self.offset()
            self.text = self.text[self.pos :]
            self.pos = 0
        try:
            raw = self._file.read(max(self.chunk_bytes, at_least))
            self.text += self._decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise self.error(f"not UTF-8 text ({e.reason})", len(self.text)) from None
        if not raw:
            self.eof = True
        return True

    def peek(self) -> str:
        """The next non-space character ('' at the end), cursor moved onto it."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            found = repr(c) if c else "end of file"
            raise self.error(f"expected {' or '.join(repr(x) for x in chars)}, found {found}")
        self.pos += 1
        return c

    def value(self) -> Any:
        """Parse the next JSON value once it is wholly in the buffer."""
        self.peek()
        decoder = _DECODER
        while True:
            self._check_depth()
            try:
                obj, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                if self.more(at_least=len(self.text) - self.pos):
                    continue
                raise self.error(e.msg, e.pos) from None
            except RecursionError:  # (MAX_DEPTH comes first; a safety net)
                raise self.error(_TOO_DEEP) from None
            if end == len(self.text) and self.more():
                continue  # a number may go on in the next chunk
            self.pos = end
            return obj

    def _check_depth(self) -> None:
        """JsonWaveError if the value at the cursor nests deeper than ``MAX_DEPTH`` within
        what the buffer holds (the cursor does not move)."""
        if self.text[self.pos : self.pos + 1] not in ("[", "{"):
            return  # a number, string or literal: nothing nested
        _, _, too_deep = _follow(self.text, self.pos, 0, MAX_DEPTH)
        if too_deep is not None:
            raise self.error(_TOO_DEEP, too_deep)

    def skip(self) -> None:
        """Move past the next value without building it (for arrays of numbers)."""
        if self.peek() not in "[{":
            self.value()
            return
        depth = 0
        while True:
            self.pos, depth, _ = _follow(self.text, self.pos, depth)
            if depth <= 0:
                return
            if not self.more(at_least=len(self.text) - self.pos):
                raise self.error("unexpected end of file inside an array")


def _follow(
    text: str, pos: int, depth: int, limit: int | None = None
) -> tuple[int, int, int | None]:
    """Follow the brackets of a value from ``pos``, at nesting ``depth``, strings passed
    over, until it closes, the text ends or a string runs past the text: (where it
    stopped, the depth there, the offset of the bracket that went deeper than ``limit``,
    if one did: it stops there)."""
    for m in _SPECIALS.finditer(text, pos):
        if m.start() < pos:  # inside a string passed over
            continue
        if m.group() == '"':
            end = _STRING_END.match(text, m.end())
            if end is None:  # the string goes on in the next chunk
                return m.start(), depth, None
            pos = end.end()
            continue
        depth += 1 if m.group() in "[{" else -1
        pos = m.end()
        if limit is not None and depth > limit:
            return pos, depth, m.start()
        if depth <= 0:
            return pos, depth, None
    return len(text), depth, None


_DECODER = json.JSONDecoder()
_TOO_DEEP = f"nested more than {MAX_DEPTH} deep: not a waveform"


def _samples(raw: Any) -> np.ndarray:
    """Validated float32 samples of one waveform; ValueError saying what is wrong."""
    if not isinstance(raw, list):
        raise ValueError(f"waveform is a {type(raw).__name__}, expected a list of numbers")
    if not raw:
        raise ValueError("waveform is empty")
    try:
        x = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("waveform holds something other than numbers") from None
    if x.ndim != 1:
        raise ValueError(f"waveform has shape {x.shape}, expected a flat list of samples")
    if not np.all(np.isfinite(x)):
        raise ValueError("waveform holds NaN or infinite values")
    peak = float(np.max(np.abs(x)))
    if peak > 1.0:
        if peak <= 32768.0 and np.all(x == np.round(x)):
            x = x / 32768.0  # int16 PCM values
        else:
            raise ValueError(
                f"samples reach {peak:g}; expected floats in [-1, 1] or int16 integers"
            )
    return x.astype(np.float32)


def _rate(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        if value < MIN_SAMPLE_RATE:
            raise ValueError(
                f"sample rate {value!r} Hz is below {MIN_SAMPLE_RATE} Hz: not an audio recording"
            )
        return int(value)
    raise ValueError(f"sample rate {value!r} is not a positive number")


def _first(obj: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((obj[k] for k in keys if k in obj), None)


def read_json_waves(
    path: str | Path,
    *,
    default_rate: int = DEFAULT_JSON_RATE,
    on_problem: Callable[[str], None] | None = None,
    chunk_bytes: int = 1 << 20,
) -> Iterator[WaveRecord]:
    """Yield the records of a JSON waveform file one at a time (see the module doc).

    ``on_problem`` receives one ``path: record N: problem`` line per skipped record.
    Raises :class:`JsonWaveError` at a syntax error or an unknown shape.
    """
    p = Path(path)
    report = on_problem or (lambda _line: None)
    buf = _Buffer(p, chunk_bytes)
    try:
        first = buf.peek()
        if first == "[":
            yield from _records(buf, default_rate, report)
        elif first == "{":
            header = _header(_Buffer(p, chunk_bytes))
            yield from _columns(buf, header, default_rate, report)
        else:
            raise buf.error(
                'expected a list of {"Waveform": [...], "Labels": 0|1} records or an object '
                'with "waveforms"' + (", found an empty file" if not first else "")
            )
    finally:
        buf.close()


def _records(
    buf: _Buffer, default_rate: int, report: Callable[[str], None]
) -> Iterator[WaveRecord]:
    """Shape 1: a list of record objects."""
    buf.expect("[")
    if buf.peek() == "]":
        return
    while True:
        start = buf.offset()
        obj = buf.value()
        try:
            if not isinstance(obj, dict):
                raise ValueError(f"record is a {type(obj).__name__}, expected an object")
            raw = _first(obj, _WAVE_KEYS)
            if raw is None:
                raise ValueError(
                    f"record has no Waveform (keys: {', '.join(sorted(obj)) or 'none'})"
                )
            samples = _samples(raw)
            rate = _rate(_first(obj, _RATE_KEYS), default_rate)
            raw_label = _first(obj, _LABEL_KEYS)
            label = parse_label(raw_label)
            if raw_label is not None and label is None:
                report(f"{buf.path}: record {buf.record}: label {raw_label!r} not understood")
            del obj, raw
            yield WaveRecord(samples, rate, label, buf.record)
        except ValueError as e:
            report(f"{buf.path}: record {buf.record} (byte {start}): {e}; skipped")
        buf.record += 1
        if buf.expect(",]") == "]":
            return


def _header(buf: _Buffer) -> dict[str, Any]:
    """Shape 2, first pass: every top-level key but ``waveforms`` (whose arrays are skipped)."""
    header: dict[str, Any] = {}
    try:
        buf.expect("{")
        if buf.peek() == "}":
            return header
        while True:
            key = buf.value()
            if not isinstance(key, str):
                raise buf.error("expected a key (a string)")
            buf.expect(":")
            if key == "waveforms":
                header[key] = True
                buf.skip()
            else:
                header[key] = buf.value()
            if {"labels", "fs"} <= header.keys() and "waveforms" not in header:
                return header  # everything needed is known before the waveforms
            if buf.expect(",}") == "}":
                return header
    finally:
        buf.close()


def _columns(
    buf: _Buffer, header: dict[str, Any], default_rate: int, report: Callable[[str], None]
) -> Iterator[WaveRecord]:
    """Shape 2, second pass: stream the ``waveforms`` arrays, labels from the header."""
    try:
        rate = _rate(header.get("fs", header.get("sample_rate")), default_rate)
    except ValueError as e:
        raise buf.error(f"fs: {e}", 0) from None
    labels = header.get("labels")
    if labels is not None and not isinstance(labels, list):
        raise buf.error(f'"labels" is a {type(labels).__name__}, expected a list', 0)
    buf.expect("{")
    keys: list[str] = []
    while buf.peek() != "}":
        key = buf.value()
        keys.append(str(key))
        buf.expect(":")
        if key != "waveforms":
            buf.skip()
        else:
            yield from _waveforms(buf, labels, rate, report)
        if buf.expect(",}") == "}":
            break
    if "waveforms" not in keys:
        raise buf.error(f'no "waveforms" key (keys: {", ".join(sorted(keys)) or "none"})', 0)
    if labels is not None and len(labels) != buf.record:
        report(f"{buf.path}: labels has {len(labels)} entries for {buf.record} waveforms")


def _waveforms(
    buf: _Buffer, labels: list[Any] | None, rate: int, report: Callable[[str], None]
) -> Iterator[WaveRecord]:
    buf.expect("[")
    if buf.peek() == "]":
        buf.pos += 1
        return
    while True:
        start = buf.offset()
        raw = buf.value()
        i = buf.record
        try:
            samples = _samples(raw)
            label: Label | None = None
            if labels is not None and i < len(labels):
                label = parse_label(labels[i])
                if label is None:
                    report(f"{buf.path}: record {i}: label {labels[i]!r} not understood")
            del raw
            yield WaveRecord(samples, rate, label, i)
        except ValueError as e:
            report(f"{buf.path}: record {i} (byte {start}): {e}; skipped")
        buf.record += 1
        if buf.expect(",]") == "]":
            return
