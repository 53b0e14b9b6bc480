"""Normal / anomaly labels read from folder and file names."""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Literal

__all__ = ["LABELS", "Label", "label_from_name", "parse_label"]

Label = Literal["normal", "anomaly"]
LABELS: tuple[Label, ...] = ("normal", "anomaly")

_WORDS: dict[str, Label] = {
    "normal": "normal",
    "ok": "normal",
    "good": "normal",
    "正常": "normal",
    "anomaly": "anomaly",
    "anomalies": "anomaly",
    "anomalous": "anomaly",
    "abnormal": "anomaly",
    "abnormality": "anomaly",
    "ng": "anomaly",
    "異常": "anomaly",
}
"""Label words, matched as whole tokens (case-insensitive, trailing digits allowed:
``normal1``, ``NG02``)."""

_SPLIT = re.compile(r"[_\-. \s]+")
_TRAILING_DIGITS = re.compile(r"\d+$")


def _token_label(token: str) -> Label | None:
    word = _TRAILING_DIGITS.sub("", token.casefold())
    return _WORDS.get(word)


def _component_label(component: str) -> Label | None:
    """The label of one path component: its last labelled token, if any."""
    found: Label | None = None
    for token in _SPLIT.split(component):
        label = _token_label(token)
        if label is not None:
            found = label
    return found


def label_from_name(path: str | Path) -> Label | None:
    """The label a path's folder or file names carry, or None.

    Tokens are separated by ``_ - . /``, spaces and the start and end of each
    component, so ``normal_id_00_00000000.wav``, ``pump.00.normal.0.wav``,
    ``section_00_source_test_anomaly_0001.wav``, ``NG/clip.wav`` and
    ``abnormality_report`` match, while ``knormalize`` and ``ngram`` do not. Words:
    normal, ok, good, 正常 → normal; anomaly, anomalous, abnormal, ng, 異常 → anomaly.
    The last component that carries a label wins (``normal/anomaly_0.wav`` is an
    anomaly); within one component the last labelled token wins.

    Pass a path relative to the data's root: the folders above it (a user's home
    called ``ok``) would otherwise count too.
    """
    found: Label | None = None
    for part in PurePath(path).parts:
        label = _component_label(part)
        if label is not None:
            found = label
    return found


def parse_label(value: object) -> Label | None:
    """A label from a data value: ``normal``/``anomaly`` words (as above), ``OK``/``NG``,
    or 0 (normal) / 1 (anomaly) as int, bool, float or string; None if it is none of them."""
    if isinstance(value, bool):
        return "anomaly" if value else "normal"
    if isinstance(value, int | float):
        if value == 0:
            return "normal"
        if value == 1:
            return "anomaly"
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in ("0", "1"):
            return "normal" if text == "0" else "anomaly"
        return _WORDS.get(text.casefold())
    return None
