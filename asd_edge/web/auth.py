"""The dashboard's credentials: password and token hashes, CSRF tokens and the failed-login
throttle (``asd_edge.config.editing`` writes the hashes into the configuration file)."""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import re
import secrets
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, TextIO

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
