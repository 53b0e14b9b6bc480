"""The dashboard's credentials: password and token hashes, CSRF tokens, the failed-login
throttle, and writing a hash into the configuration file (``asd-edge web --set-password``)."""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import secrets
import stat
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TextIO

from asd_edge.config.sections import CONFIG_MAX_BYTES
from asd_edge.durable import fsync_dir, read_regular
from asd_edge.errors import ConfigError
from asd_edge.schema import load_yaml

__all__ = [
    "PASSWORD_MAX_CHARS",
    "PASSWORD_MIN_CHARS",
    "LoginThrottle",
    "check_new_password",
    "csrf_matches",
    "hash_password",
    "hash_token",
    "new_csrf_token",
    "new_token",
    "prompt_new_password",
    "set_config_secret",
    "verify_password",
    "verify_token",
]

# --- passwords -------------------------------------------------------------------------

PASSWORD_MIN_CHARS: Final = 8
"""The shortest password ``check_new_password`` accepts."""
PASSWORD_MAX_CHARS: Final = 1024
"""The longest password ``check_new_password`` accepts (a pasted file is a mistake)."""

_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_SALT_BYTES: Final = 16
_KEY_BYTES: Final = 32
_SCRYPT_MAX_MEMORY: Final = 64 << 20
"""The most memory a stored hash may make scrypt use (128 * n * r bytes): the hash comes
from the configuration file, and one with n = 2**24 would take 16 GiB per login. Ours
takes 16 MiB."""
_HASH_FORMAT: Final = "scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>"


def hash_password(password: str) -> str:
    """A new scrypt hash of ``password``: ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (n = 2**14,
    r = 8, p = 1: 16 MiB and about 50 ms per try; a random 16-byte salt and a 32-byte key,
    both in standard base64). The parameters are stored with it, so stronger ones later
    still verify the hashes written now. The password is NFC-normalized first, so that the
    same characters typed on another system give the same hash."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _KEY_BYTES)
    return "$".join(
        ("scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(key))
    )


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` (a ``hash_password`` string) was made
    from; the keys are compared in constant time. A malformed ``stored`` raises a
    ValueError that says what is wrong with it, never what it holds."""
    n, r, p, salt, key = _parse_password_hash(stored)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(key)), key)


def check_new_password(password: str) -> None:
    """Refuse a password not worth setting: a ValueError saying why (empty, shorter than
    ``PASSWORD_MIN_CHARS`` characters, longer than ``PASSWORD_MAX_CHARS``, or holding a
    control character such as a tab, which a login form cannot send)."""
    if not password:
        raise ValueError("the password is empty")
    chars = len(unicodedata.normalize("NFC", password))
    if chars < PASSWORD_MIN_CHARS:
        raise ValueError(
            f"the password is too short: expected at least {PASSWORD_MIN_CHARS} characters, "
            f"got {chars}"
        )
    if chars > PASSWORD_MAX_CHARS:
        raise ValueError(
            f"the password is too long: expected at most {PASSWORD_MAX_CHARS} characters, "
            f"got {chars}"
        )
    if any(unicodedata.category(c) == "Cc" for c in password):
        raise ValueError("the password holds a control character (such as a tab or a newline)")


def prompt_new_password(
    stream_in: TextIO,
    stream_out: TextIO,
    *,
    ask: Callable[[str, TextIO], str] = getpass.getpass,
) -> str:
    """A new password from the user, checked by ``check_new_password``.

    On a terminal (``stream_in.isatty()``) it is asked twice without echo (``ask``:
    ``getpass.getpass``, given the prompt and ``stream_out``), and asked again, at most
    three times, if it is refused or the two differ. Otherwise one line is read from
    ``stream_in`` (``echo "$pw" | asd-edge web --set-password``), without its line ending.
    Raises ValueError saying why when no acceptable password was given."""
    if not stream_in.isatty():
        line = stream_in.readline()
        if not line:
            raise ValueError("no password: standard input is empty")
        password = line.removesuffix("\n").removesuffix("\r")
        check_new_password(password)
        return password
    problem = ""
    for _attempt in range(3):
        password = ask("New password: ", stream_out)
        try:
            check_new_password(password)
        except ValueError as exc:
            problem = str(exc)
            print(f"{problem}; try again.", file=stream_out, flush=True)
            continue
        if ask("Repeat it: ", stream_out) == password:
            return password
        problem = "the two passwords differ"
        print(f"{problem}; try again.", file=stream_out, flush=True)
    raise ValueError(f"no password set: {problem}")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, key_bytes: int) -> bytes:
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    memory = 128 * n * r * (p + 1) + (1 << 20)  # scrypt's V and B arrays, and some room
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=memory, dklen=key_bytes)


def _parse_password_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """n, r, p, salt and key of a stored hash; a ValueError naming the bad part."""
    fields = stored.split("$")
    if len(fields) != 6:
        raise ValueError(
            f"password hash: expected 6 fields separated by '$' ({_HASH_FORMAT}), got {len(fields)}"
        )
    scheme, n_text, r_text, p_text, salt_text, key_text = fields
    if scheme != "scrypt":
        raise ValueError(f"password hash: expected the scheme 'scrypt' ({_HASH_FORMAT})")
    n = _parameter("n", n_text, 2, 2**20)
    if n & (n - 1):
        raise ValueError(f"password hash: n: expected a power of two, got {n}")
    r = _parameter("r", r_text, 1, 64)
    p = _parameter("p", p_text, 1, 16)
    if 128 * n * r > _SCRYPT_MAX_MEMORY:
        raise ValueError(
            f"password hash: n={n} and r={r} would make scrypt use {128 * n * r >> 20} MiB "
            f"per login (at most {_SCRYPT_MAX_MEMORY >> 20} MiB)"
        )
    salt = _unb64("salt", salt_text, 8, 64)
    key = _unb64("hash", key_text, 16, 64)
    return n, r, p, salt, key


def _parameter(name: str, text: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"password hash: {name}: expected an integer {low}-{high}")
    return int(text)


def _unb64(name: str, text: str, low: int, high: int) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError(f"password hash: {name}: expected standard base64") from None
    if not low <= len(raw) <= high:
        raise ValueError(f"password hash: {name}: expected {low}-{high} bytes, got {len(raw)}")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- API and CSRF tokens ---------------------------------------------------------------

_TOKEN_HASH: Final = re.compile(r"sha256\$[0-9a-f]{64}")


def new_token() -> str:
    """A new API token: 32 random bytes (256 bits), URL-safe base64, 43 characters."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of an API token: ``sha256$<64 hex digits>``.

    A plain SHA-256 is enough here, unlike for a password: a ``new_token`` token holds
    256 random bits, so nobody can guess it from its hash however fast the hash is, and a
    slow KDF would only slow every API request down."""
    return "sha256$" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def verify_token(token: str, stored: str) -> bool:
    """Whether ``token`` is the one ``stored`` (a ``hash_token`` string) was made from, in
    constant time; an empty token never matches. A malformed ``stored`` raises a
    ValueError saying what is expected, never what it holds."""
    if _TOKEN_HASH.fullmatch(stored) is None:
        raise ValueError("token hash: expected 'sha256$' and 64 lowercase hex digits")
    if not token:
        return False
    return hmac.compare_digest(hash_token(token).encode("ascii"), stored.encode("ascii"))


def new_csrf_token() -> str:
    """A new CSRF token for a session: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def csrf_matches(session_token: str | None, sent: str | None) -> bool:
    """Whether the token a form or header ``sent`` is the session's, in constant time;
    False when either is None or empty (a session without a token accepts nothing)."""
    if not session_token or not sent:
        return False
    # Bytes: compare_digest refuses a str with non-ASCII characters, which ``sent`` may hold.
    return hmac.compare_digest(session_token.encode("utf-8"), sent.encode("utf-8"))


# --- failed logins -----------------------------------------------------------------------


class LoginThrottle:
    """How long to hold the answer to a wrong password, per client (an address).

    The first wrong password from a client is answered after ``base_s`` (1 s), each
    following one after twice as long as the one before, up to ``max_s`` (30 s); a right
    password (``succeeded``) or ``forgive_s`` (15 min) without a failure starts over.
    At most ``max_clients`` clients are remembered: beyond, the one whose last failure is
    the oldest is forgotten. Use it as::

        if not verify_password(sent, stored):
            wait_s = throttle.delay_s(client)
            throttle.failed(client)
            await asyncio.sleep(wait_s)

    The delay bounds a client that waits for each answer; the server should also refuse a
    login from a client whose previous one is still being answered, or parallel requests
    would each get their own delay.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        base_s: float = 1.0,
        max_s: float = 30.0,
        forgive_s: float = 900.0,
        max_clients: int = 1024,
    ) -> None:
        if not 0 < base_s <= max_s:
            raise ValueError(f"expected 0 < base_s <= max_s, got {base_s} and {max_s}")
        if max_clients < 1:
            raise ValueError(f"max_clients: expected at least 1, got {max_clients}")
        self._clock = clock
        self._base_s = base_s
        self._max_s = max_s
        self._forgive_s = forgive_s
        self._max_clients = max_clients
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        """client -> (consecutive failures, time of the last one), oldest failure first."""

    def delay_s(self, client: str) -> float:
        """Seconds to hold the answer to a wrong password from ``client`` now: ``base_s``
        doubled once per failure it already has on record, at most ``max_s``."""
        failures = self._current(client)
        return min(self._base_s * 2.0 ** min(failures, 64), self._max_s)

    def failed(self, client: str) -> None:
        """Record a wrong password from ``client``."""
        failures = self._current(client)
        self._failures[client] = (failures + 1, self._clock())
        self._failures.move_to_end(client)
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """Record a right password from ``client``: its failures are forgotten."""
        self._failures.pop(client, None)

    def __len__(self) -> int:
        """How many clients have failures on record (expired ones may still count)."""
        return len(self._failures)

    def _current(self, client: str) -> int:
        """The client's consecutive failures that are not forgiven yet."""
        entry = self._failures.get(client)
        if entry is None:
            return 0
        failures, last = entry
        if self._clock() - last >= self._forgive_s:
            del self._failures[client]
            return 0
        return failures


# --- writing a secret into the configuration file --------------------------------------

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
