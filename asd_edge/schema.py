"""A strict, generic validator that reads YAML (duplicate keys refused) into typed dataclasses."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
from collections.abc import Mapping
from typing import (
    Any,
    Final,
    Literal,
    TypeGuard,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

from .errors import ConfigError

__all__ = ["INVALID", "at", "build", "convert", "load_yaml", "show", "to_plain"]

# Field metadata understood here: "min"/"max" (numbers, inclusive), "pattern" (strings,
# whole match), "describe" (the expectation shown for a bad string), "path" (a non-empty
# path, resolved against base_dir), "secret" (redacted by to_plain, never echoed in
# errors), "internal" (not a key), "derived" (null in the data stands for a value the
# caller derives after parsing: the field's type is the derived value's, never None
# once parsed; a default_factory gives it outside the data). Supported field types:
# bool, int, float, str, None, Literal, unions of those, nested dataclasses and
# tuple[X, ...] (a list in the data).

INVALID: Final = object()
"""Stands in the parsed tree for a value that was reported as a problem."""

_T = TypeVar("_T")


def convert(
    cls: type, data: object, *, base_dir: str, problems: list[str], path: str = ""
) -> dict[str, Any] | object:
    """The fields of dataclass ``cls`` read from ``data`` (None counts as empty).

    Returns a tree of plain values (nested dataclasses as dicts with defaults filled,
    tuples as lists) in which each bad value is INVALID, or INVALID itself if ``data``
    is not a mapping. Each problem is appended to ``problems`` as
    ``dotted.path: expected ..., got ...``, the paths starting at ``path``. Relative
    paths in "path" fields are resolved against ``base_dir``, an absolute directory.
    """
    return _convert_mapping(cls, data, path, base_dir, problems)


def build(cls: type[_T], tree: Mapping[str, Any]) -> _T:
    """The dataclass instance for a tree from convert in which every value is valid."""
    kwargs: dict[str, Any] = {}
    for name, (tp, _f) in _schema(cls).items():
        value = tree[name]
        if _is_record(tp):
            value = build(tp, value)
        elif get_origin(tp) is tuple:
            item_tp = get_args(tp)[0]
            is_record = _is_record(item_tp)
            value = tuple(build(item_tp, item) if is_record else item for item in value)
        kwargs[name] = value
    return cls(**kwargs)


def to_plain(obj: object, *, redact: bool) -> dict[str, Any]:
    """A dataclass instance as plain data (tuples as lists); secrets are "***" if ``redact``."""
    plain: dict[str, Any] = {}
    for name, (_tp, f) in _schema(type(obj)).items():
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            value = to_plain(value, redact=redact)
        elif isinstance(value, tuple):
            value = [
                to_plain(item, redact=redact) if dataclasses.is_dataclass(item) else item
                for item in value
            ]
        elif redact and f.metadata.get("secret") and value is not None:
            value = "***"
        plain[name] = value
    return plain


def show(value: object) -> str:
    """A found value as written in an error message: 'abc', 70000, true, null, a list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 100 else repr(value[:100]) + "..."
    if isinstance(value, int | float):
        try:
            return repr(value)
        except ValueError:  # more digits than int -> str allows
            return "an integer too long to show"
    return _kind(value)


def _schema(cls: type) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    """The keys of a dataclass in the data: name -> (resolved type, field)."""
    hints = get_type_hints(cls)
    return {
        f.name: (hints[f.name], f)
        for f in dataclasses.fields(cls)
        if not f.metadata.get("internal")
    }


def _is_record(tp: object) -> TypeGuard[type[Any]]:
    """Whether a schema type is a dataclass (a mapping in the data)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert_mapping(
    cls: type, value: object, path: str, base_dir: str, problems: list[str]
) -> dict[str, Any] | object:
    """The fields of ``cls`` read from ``value`` as a dict (defaults filled), or INVALID."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        problems.append(f"{path or '<top level>'}: expected a mapping, got {show(value)}")
        return INVALID
    schema = _schema(cls)
    for key in value:
        if key not in schema:
            hint = ""
            if isinstance(key, str) and (close := difflib.get_close_matches(key, schema, n=1)):
                hint = f"; did you mean {close[0]!r}?"
            problems.append(f"{_join(path, key)}: unknown key{hint}")
    tree: dict[str, Any] = {}
    for name, (tp, f) in schema.items():
        where = _join(path, name)
        if name in value:
            raw = value[name]
        elif f.default is not dataclasses.MISSING:
            raw = f.default
        elif f.default_factory is not dataclasses.MISSING:
            raw = None  # a section or a list: converting None gives its defaults; derived
        else:
            problems.append(f"{where}: required key is missing")
            tree[name] = INVALID
            continue
        tree[name] = _convert(tp, f.metadata, raw, where, base_dir, problems)
    return tree


def _convert(
    tp: Any, meta: Mapping[str, Any], value: object, path: str, base_dir: str, problems: list[str]
) -> object:
    """``value`` parsed as a ``tp`` (dataclasses as dicts, tuples as lists), or INVALID."""
    if value is None and meta.get("derived"):
        return None  # derived by the caller
    if _is_record(tp):
        return _convert_mapping(tp, value, path, base_dir, problems)
    if get_origin(tp) is tuple:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            problems.append(f"{path}: expected a list, got {show(value)}")
            return INVALID
        item_tp = get_args(tp)[0]
        return [
            _convert(item_tp, {}, item, f"{path}[{i}]", base_dir, problems)
            for i, item in enumerate(value)
        ]
    ok, parsed = _match(tp, meta, value, base_dir)
    if ok:
        return parsed
    shown = _kind(value) if meta.get("secret") else show(value)
    nullable = " or null" if meta.get("derived") else ""
    problems.append(f"{path}: expected {_describe(tp, meta)}{nullable}, got {shown}")
    return INVALID


def _match(tp: Any, meta: Mapping[str, Any], value: object, base_dir: str) -> tuple[bool, object]:
    """Whether ``value`` is a ``tp`` meeting the field's constraints, and its parsed form."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        for member in get_args(tp):
            ok, parsed = _match(member, meta, value, base_dir)
            if ok:
                return True, parsed
        return False, None
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in get_args(tp)), value
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):  # a bool is an int to Python, never to this schema
        return False, None
    if tp is int:
        return isinstance(value, int) and _in_range(value, meta), value
    if tp is float:
        if not isinstance(value, int | float):
            return False, None
        try:
            number = float(value)
        except OverflowError:
            return False, None
        return math.isfinite(number) and _in_range(number, meta), number
    if tp is str:
        if not isinstance(value, str):
            return False, None
        pattern = meta.get("pattern")
        if pattern is not None and re.fullmatch(pattern, value) is None:
            return False, None
        if meta.get("path"):
            if not value or "\x00" in value:
                return False, None
            return True, os.path.normpath(os.path.join(base_dir, value))
        return True, value
    raise TypeError(f"config schema: unsupported type {tp!r}")


def _in_range(number: float, meta: Mapping[str, Any]) -> bool:
    low, high = meta.get("min"), meta.get("max")
    return (low is None or number >= low) and (high is None or number <= high)


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a value of ``tp`` with these constraints looks like, for an error message."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        parts = [_describe(member, meta) for member in get_args(tp)]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if tp is str:
        if "describe" in meta:
            return str(meta["describe"])
        if "pattern" in meta:
            return f"a string matching {meta['pattern']}"
        return "a non-empty path" if meta.get("path") else "a string"
    if tp is int or tp is float:
        return ("an integer" if tp is int else "a number") + _range_text(meta)
    return "null" if tp is type(None) else "true or false"


def _range_text(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f" {_number(low)}-{_number(high)}"
    if low is not None:
        return f" >= {_number(low)}"
    return f" <= {_number(high)}" if high is not None else ""


def _number(number: float) -> str:
    """A bound as a person writes it: 5, not 5.0; 0.001, not 1e-03."""
    return str(int(number)) if number == int(number) else repr(number)


def _kind(value: object) -> str:
    """The kind of a YAML value, without the value (for secrets and containers)."""
    if value is None:
        return "null"
    kinds = [(bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")]
    kinds += [(Mapping, "a mapping"), (list, "a list"), (tuple, "a list"), (bytes, "binary data")]
    for kind, text in kinds:
        if isinstance(value, kind):
            return text
    return f"a {type(value).__name__}"


def _join(path: str, key: object) -> str:
    name = key if isinstance(key, str) else repr(key)
    return f"{path}.{name}" if path else name


# --- reading YAML strictly ---------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key repeated in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml(raw: bytes, shown: str) -> object:
    """The YAML document in ``raw``; a ConfigError naming the file (and line) if it is bad."""
    try:
        return yaml.load(raw, Loader=_StrictLoader)  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark is not None else shown
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{where}: invalid YAML: {what}") from exc
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # ValueError: a date such as 2024-13-45, or an integer too long to convert.
        raise ConfigError(f"{shown}: invalid YAML: {exc}") from exc


def at(tree: object, *keys: str) -> object:
    """The parsed value at ``keys`` in the tree, or INVALID if it or a parent is invalid."""
    for key in keys:
        if not isinstance(tree, dict):
            return INVALID
        tree = tree[key]
    return tree
