"""Writing one value into the YAML configuration file in place, keeping the user's
comments, order and line endings (``asd-edge web --set-password`` and ``--new-token``)."""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, Final

from asd_edge.durable import fsync_dir, read_regular
from asd_edge.errors import ConfigError
from asd_edge.schema import load_yaml

from .sections import CONFIG_MAX_BYTES

__all__ = ["set_config_secret"]

_KEY: Final = re.compile(r"[a-z_][a-z0-9_]*")
_LINE: Final = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_WEB_HEADER: Final = re.compile(r"web[ \t]*:(?P<rest>[ \t]*[^\r\n]*)")
_COMMENT_ONLY: Final = re.compile(r"[ \t]*(?:#.*)?")


def set_config_secret(path: str | os.PathLike[str], key: str, value: str) -> None:
    """Set ``web.<key>`` to ``value`` in the YAML configuration file ``path``, keeping
    every other byte of it (comments, order, line endings) as it was.

    In a top-level ``web:`` block, a ``<key>:`` line at the block's indentation is
    replaced (its trailing comment kept), or, if there is none, the key becomes the
    block's first line; a file without ``web:`` gets a ``web:`` block at its end. The
    value is written as a YAML single-quoted string. A ``web:`` written in flow style
    (``web: {}``), a key whose value spans several lines and a file that is not a YAML
    mapping are refused with a ConfigError saying what to change.

    The file is replaced atomically (a temporary file beside it, fsynced, renamed) with
    the original's mode, owner and group, so a root-owned 0640 file stays readable by the
    daemon's group; a symlink is followed and its target edited. The edit is checked
    before writing and after (the file is read back: everything it held is unchanged but
    ``web.<key>``, which equals ``value``); if the file read back differs, the original is
    restored and ConfigError raised. A bad ``key`` or ``value`` raises ValueError; I/O
    errors raise OSError."""
    if _KEY.fullmatch(key) is None:
        raise ValueError(f"key: expected a lowercase name such as password_hash, got {key!r}")
    if not value.isprintable():
        raise ValueError("value: expected printable characters on one line")
    target = Path(os.path.realpath(path))
    shown = os.fspath(path)
    original = read_regular(target, CONFIG_MAX_BYTES)
    before = os.stat(target)
    edited = _edited(original, key, value, shown)
    _replace(target, edited, before)
    try:
        _check_edit(original, read_regular(target, CONFIG_MAX_BYTES), key, value, shown)
    except ConfigError:
        _replace(target, original, before, check_unchanged=False)
        raise


def _edited(original: bytes, key: str, value: str, shown: str) -> bytes:
    """The file's bytes with ``web.<key>: '<value>'`` set, checked in memory."""
    try:
        text = original.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: expected a UTF-8 text file, got {exc.reason}") from None
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    lines = _LINE.findall(text.removeprefix(bom))
    newline = "\r\n" if "\r\n" in text else "\n"
    data = load_yaml(original, shown)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{shown}: expected a YAML mapping (key: value lines) at the top")
    if isinstance(data, dict) and data.get("web") is not None and not isinstance(data["web"], dict):
        raise ConfigError(f"{shown}: web: expected a mapping (key: value lines), got another value")
    quoted = "'" + value.replace("'", "''") + "'"
    header = _web_header(lines, shown)
    if (header is None) != (data is None or "web" not in data):
        raise ConfigError(
            f"{shown}: cannot find where web: is set; write it as a plain `web:` line at the "
            "start of a line, its keys on the lines below, and try again"
        )
    if header is None:
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += newline
        if lines and lines[-1].strip():
            lines.append(newline)
        lines += [f"web:{newline}", f"  {key}: {quoted}{newline}"]
    else:
        _set_in_block(lines, header, key, quoted, newline, shown)
    edited = (bom + "".join(lines)).encode("utf-8")
    _check_edit(original, edited, key, value, shown)
    return edited


def _web_header(lines: list[str], shown: str) -> int | None:
    """The index of the top-level ``web:`` line, if any; flow style is refused."""
    found: list[int] = []
    for i, line in enumerate(lines):
        match = _WEB_HEADER.fullmatch(line.rstrip("\r\n"))
        if match is None:
            continue
        if _COMMENT_ONLY.fullmatch(match["rest"]) is None:
            raise ConfigError(
                f"{shown}:{i + 1}: expected `web:` alone on its line, its keys on the lines "
                "below, got a value after it (flow style such as `web: {}`); write the web "
                "section in block style, one `key: value` per line, and try again"
            )
        found.append(i)
    if len(found) > 1:
        raise ConfigError(f"{shown}: expected one web: section, got {len(found)}")
    return found[0] if found else None


def _set_in_block(
    lines: list[str], header: int, key: str, quoted: str, newline: str, shown: str
) -> None:
    """Replace ``key``'s line in the ``web:`` block starting at ``lines[header]``, or
    insert it as the block's first line."""
    key_line = re.compile(rf"(?P<indent>[ ]+)(?P<key>{key}|'{key}'|\"{key}\")[ \t]*:(?=[ \t]|$)")
    indent: str | None = None  # the block's, from its first key
    hits: list[int] = []
    last_hit = False  # the latest line with content was a hit
    for i in range(header + 1, len(lines)):
        content = lines[i].rstrip("\r\n")
        if _COMMENT_ONLY.fullmatch(content):
            continue  # a blank line or a comment, at any indentation
        if not content[0].isspace():
            break  # the next top-level key: the block has ended
        here = content[: len(content) - len(content.lstrip(" \t"))]
        indent = here if indent is None else indent
        if last_hit and len(here) > len(indent):
            raise _several_lines(shown, hits[-1], key)
        last_hit = here == indent and key_line.match(content) is not None
        if last_hit:
            hits.append(i)
    if len(hits) > 1:
        where = " and ".join(str(i + 1) for i in hits)
        raise ConfigError(f"{shown}: web.{key} is set on lines {where}; keep one")
    if not hits:
        if not lines[header].endswith(("\n", "\r")):
            lines[header] += newline
        lines.insert(header + 1, f"{indent or '  '}{key}: {quoted}{newline}")
        return
    i = hits[0]
    content = lines[i].rstrip("\r\n")
    match = key_line.match(content)
    assert match is not None  # it matched above
    rest = content[match.end() :]
    end = _scalar_end(rest)
    if end is None:
        raise _several_lines(shown, i, key)
    ending = lines[i][len(content) :]
    lines[i] = f"{match['indent']}{match['key']}: {quoted}{rest[end:]}{ending}"


def _several_lines(shown: str, i: int, key: str) -> ConfigError:
    return ConfigError(
        f"{shown}:{i + 1}: web.{key} goes on over several lines; write it on one line "
        "(or delete it) and try again"
    )


def _scalar_end(rest: str) -> int | None:
    """Where the one-line value after a key's colon ends (its trailing comment, if any,
    starts there); None if it does not end on this line (a block scalar ``|`` or ``>``,
    or a quoted string whose closing quote is on a later line)."""
    stripped = rest.lstrip(" \t")
    start = len(rest) - len(stripped)
    if stripped[:1] in ("|", ">"):
        return None
    if stripped[:1] == "'":
        match = re.match(r"'(?:[^']|'')*'", stripped)
        return start + match.end() if match else None
    if stripped[:1] == '"':
        match = re.match(r'"(?:[^"\\]|\\.)*"', stripped)
        return start + match.end() if match else None
    comment = re.search(r"[ \t]+#", rest)
    return comment.start() if comment else len(rest.rstrip(" \t"))


def _check_edit(original: bytes, edited: bytes, key: str, value: str, shown: str) -> None:
    """ConfigError unless ``edited`` holds what ``original`` held, but ``web.<key>``
    set to ``value``."""
    expected: Any = load_yaml(original, shown) or {}
    web = expected.get("web") or {}
    expected["web"] = {**web, key: value}
    try:
        got = load_yaml(edited, shown)
    except ConfigError as exc:
        raise ConfigError(f"{shown}: setting web.{key} would break the file: {exc}") from None
    if got != expected:
        raise ConfigError(
            f"{shown}: setting web.{key} did not give the file the expected content; "
            "it is left as it was"
        )


def _replace(
    target: Path, data: bytes, before: os.stat_result, *, check_unchanged: bool = True
) -> None:
    """Replace ``target`` atomically with ``data``, keeping its mode, owner and group.

    ``durable.write_atomic`` would give the file our own owner and group: a root-owned
    file of group asd-edge would then be unreadable by the daemon."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            made = os.fstat(f.fileno())
            if (before.st_uid, before.st_gid) != (made.st_uid, made.st_gid):
                try:
                    os.fchown(f.fileno(), before.st_uid, before.st_gid)
                except PermissionError:
                    raise ConfigError(
                        f"{target}: cannot keep its owner and group "
                        f"({before.st_uid}:{before.st_gid}); run this as root or as its owner"
                    ) from None
            os.fchmod(f.fileno(), stat.S_IMODE(before.st_mode))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        now = os.stat(target)
        if check_unchanged and (now.st_ino, now.st_size, now.st_mtime_ns) != (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        ):
            raise ConfigError(f"{target}: changed while it was being edited; try again")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
