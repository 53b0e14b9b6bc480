"""Tests of asd_edge.web.auth: hashes, tokens, CSRF, the login throttle, the config edit."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
import yaml
from support import REPO

from asd_edge.config import editing, load_config
from asd_edge.config.editing import set_config_secret
from asd_edge.errors import ConfigError
from asd_edge.web import auth
from asd_edge.web.auth import (
    LoginThrottle,
    check_new_password,
    csrf_matches,
    hash_password,
    hash_token,
    new_csrf_token,
    new_token,
    prompt_new_password,
    verify_password,
    verify_token,
)

SHIPPED = REPO / "config" / "asd-edge.yaml"
STORED = hash_password("correct horse battery")
"""One hash made once: each scrypt takes tens of milliseconds."""


class TestPasswordHash:
    """hash_password and verify_password."""

    def test_round_trip(self) -> None:
        """The password a hash was made from verifies against it."""
        assert verify_password("correct horse battery", STORED)

    def test_wrong_password(self) -> None:
        """Another password, a prefix, a different case and an empty one do not verify."""
        for wrong in ("correct horse batterx", "correct horse", "CORRECT HORSE BATTERY", ""):
            assert not verify_password(wrong, STORED)

    def test_format(self) -> None:
        """The hash says its scheme and parameters: scrypt, n=2**14, r=8, p=1, a 16-byte
        salt and a 32-byte key, in standard base64."""
        scheme, n, r, p, salt, key = STORED.split("$")
        assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
        assert (len(salt), len(key)) == (24, 44)

    def test_salted(self) -> None:
        """Two hashes of one password differ (a new salt each time), and both verify."""
        other = hash_password("correct horse battery")
        assert other != STORED
        assert verify_password("correct horse battery", other)

    def test_normalized(self) -> None:
        """'é' typed as one character or as e + combining accent is the same password."""
        stored = hash_password("caf\u00e9-au-lait")
        assert verify_password("cafe\u0301-au-lait", stored)

    def test_other_parameters_verify(self) -> None:
        """A hash made with other scrypt parameters verifies: they are read from it."""
        salt = auth._parse_password_hash(STORED)[3]
        new_key = auth._scrypt("pw", salt, 1024, 4, 2, 32)
        stored = f"scrypt$1024$4$2${auth._b64(salt)}${auth._b64(new_key)}"
        assert verify_password("pw", stored)
        assert not verify_password("pW", stored)

    @pytest.mark.parametrize(
        ("stored", "problem"),
        [
            ("", "expected 6 fields"),
            ("hunter2-plain-text", "expected 6 fields"),
            ("scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==", "expected 6 fields"),
            ("bcrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44, "the scheme 'scrypt'"),
            ("scrypt$lots$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44, "n: expected an integer"),
            ("scrypt$1000$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44, "n: expected a power"),
            ("scrypt$16384$0$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44, "r: expected an integer"),
            ("scrypt$16384$8$99$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44, "p: expected an integer"),
            ("scrypt$1048576$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44, "MiB per login"),
            ("scrypt$16384$8$1$not*base64$" + "A" * 44, "salt: expected standard base64"),
            ("scrypt$16384$8$1$c2FsdA==$" + "A" * 44, "salt: expected 8-64 bytes, got 4"),
            ("scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$AAAA", "hash: expected 16-64 bytes"),
            ("scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "é" * 44, "hash: expected standard"),
        ],
    )
    def test_malformed(self, stored: str, problem: str) -> None:
        """A malformed stored hash raises a ValueError naming what is wrong, without
        showing the stored string."""
        with pytest.raises(ValueError, match=r"^password hash: ") as caught:
            verify_password("correct horse battery", stored)
        message = str(caught.value)
        assert problem in message
        for part in stored.split("$"):
            if len(part) > 8:  # the plain text, the salt, the key
                assert part not in message


class TestCheckNewPassword:
    """check_new_password."""

    def test_accepts(self) -> None:
        """Eight characters or more, spaces and non-ASCII letters included, are accepted."""
        for password in ("12345678", "correct horse battery staple", "pässwörd", "x" * 1024):
            check_new_password(password)

    @pytest.mark.parametrize(
        ("password", "problem"),
        [
            ("", "the password is empty"),
            ("1234567", "too short: expected at least 8 characters, got 7"),
            ("x" * 1025, "too long: expected at most 1024 characters, got 1025"),
            ("tab\tinside", "control character"),
            ("newline\ninside", "control character"),
        ],
    )
    def test_refuses(self, password: str, problem: str) -> None:
        """Empty, short, huge and control-character passwords are refused, saying why."""
        with pytest.raises(ValueError, match=problem):
            check_new_password(password)


class _Terminal(io.StringIO):
    """Standard input on a terminal (its text is never read: ``ask`` is)."""

    def isatty(self) -> bool:
        return True


class _Asker:
    """getpass with scripted answers; records the prompts."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str, stream: object = None) -> str:
        self.prompts.append(prompt)
        return self.answers.pop(0)


class TestPromptNewPassword:
    """prompt_new_password, from a terminal and from a pipe."""

    def test_pipe(self) -> None:
        """Not on a terminal: one line is read, its line ending dropped, nothing asked."""
        out = io.StringIO()
        assert prompt_new_password(io.StringIO("s3cret pass\r\nmore\n"), out) == "s3cret pass"
        assert out.getvalue() == ""

    def test_pipe_last_line_without_newline(self) -> None:
        """``printf pw`` (no newline) gives the password too."""
        assert prompt_new_password(io.StringIO("s3cretpass"), io.StringIO()) == "s3cretpass"

    def test_pipe_empty(self) -> None:
        """Empty standard input is an error saying so."""
        with pytest.raises(ValueError, match="standard input is empty"):
            prompt_new_password(io.StringIO(""), io.StringIO())

    def test_pipe_short(self) -> None:
        """A short password from a pipe is refused (no second chance)."""
        with pytest.raises(ValueError, match="too short"):
            prompt_new_password(io.StringIO("short\n"), io.StringIO())

    def test_terminal_twice(self) -> None:
        """On a terminal the password is asked twice."""
        ask = _Asker("correct horse", "correct horse")
        assert prompt_new_password(_Terminal(), io.StringIO(), ask=ask) == "correct horse"
        assert ask.prompts == ["New password: ", "Repeat it: "]

    def test_terminal_retries(self) -> None:
        """A short password and a mismatch are reported, and asked again."""
        ask = _Asker("short", "correct horse", "correct h0rse", "correct horse", "correct horse")
        out = io.StringIO()
        assert prompt_new_password(_Terminal(), out, ask=ask) == "correct horse"
        assert "too short" in out.getvalue()
        assert "the two passwords differ; try again." in out.getvalue()

    def test_terminal_gives_up(self) -> None:
        """After three refused tries it raises, saying the last reason."""
        ask = _Asker("a", "b", "c")
        with pytest.raises(ValueError, match="no password set: the password is too short"):
            prompt_new_password(_Terminal(), io.StringIO(), ask=ask)


class TestToken:
    """new_token, hash_token and verify_token."""

    def test_round_trip(self) -> None:
        """A token verifies against its hash; another token and an empty one do not."""
        token = new_token()
        stored = hash_token(token)
        assert verify_token(token, stored)
        assert not verify_token(new_token(), stored)
        assert not verify_token(token[:-1], stored)
        assert not verify_token("", stored)

    def test_format(self) -> None:
        """Tokens are 43 URL-safe characters (256 bits), each new; the hash is sha256$hex."""
        token = new_token()
        assert len(token) == 43 and token != new_token()
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert hash_token("abc") == (
            "sha256$ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )

    def test_non_ascii_token(self) -> None:
        """A token with non-ASCII characters (from a request header) is just wrong."""
        assert not verify_token("tökén", hash_token(new_token()))

    @pytest.mark.parametrize(
        "stored", ["", "sha256$", "sha256$" + "g" * 64, "sha1$" + "a" * 64, "a" * 64]
    )
    def test_malformed(self, stored: str) -> None:
        """A malformed stored hash raises a ValueError saying what is expected."""
        with pytest.raises(ValueError, match="token hash: expected 'sha256\\$' and 64"):
            verify_token(new_token(), stored)


class TestCsrf:
    """new_csrf_token and csrf_matches."""

    def test_matches(self) -> None:
        """The session's token matches itself and nothing else."""
        token = new_csrf_token()
        assert csrf_matches(token, token)
        assert not csrf_matches(token, new_csrf_token())
        assert not csrf_matches(token, token + "x")

    def test_missing(self) -> None:
        """None or empty on either side never matches, even when both are."""
        token = new_csrf_token()
        for session, sent in ((None, token), (token, None), ("", ""), (None, None), (token, "")):
            assert not csrf_matches(session, sent)

    def test_non_ascii(self) -> None:
        """A sent token with non-ASCII characters is a mismatch, not an error."""
        assert not csrf_matches(new_csrf_token(), "jéton")


class FakeClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestLoginThrottle:
    """LoginThrottle with a fake clock."""

    @staticmethod
    def delays(throttle: LoginThrottle, client: str, count: int) -> list[float]:
        """The delays of ``count`` wrong passwords in a row, used as documented."""
        out = []
        for _ in range(count):
            out.append(throttle.delay_s(client))
            throttle.failed(client)
        return out

    def test_doubling_and_cap(self) -> None:
        """1 s for the first wrong password, doubling, capped at 30 s."""
        throttle = LoginThrottle(FakeClock())
        assert self.delays(throttle, "10.0.0.1", 8) == [1, 2, 4, 8, 16, 30, 30, 30]

    def test_many_failures(self) -> None:
        """Thousands of failures stay at the cap (no overflow)."""
        throttle = LoginThrottle(FakeClock())
        assert self.delays(throttle, "10.0.0.1", 2000)[-1] == 30

    def test_per_client(self) -> None:
        """One client's failures do not slow another down."""
        throttle = LoginThrottle(FakeClock())
        self.delays(throttle, "10.0.0.1", 5)
        assert throttle.delay_s("10.0.0.2") == 1

    def test_success_forgives(self) -> None:
        """A right password starts the client over."""
        throttle = LoginThrottle(FakeClock())
        self.delays(throttle, "10.0.0.1", 5)
        throttle.succeeded("10.0.0.1")
        assert throttle.delay_s("10.0.0.1") == 1

    def test_forgiven_after_15_min(self) -> None:
        """15 minutes after its last failure a client starts over; a minute less, not."""
        clock = FakeClock()
        throttle = LoginThrottle(clock)
        self.delays(throttle, "10.0.0.1", 4)
        clock.now += 14 * 60
        assert throttle.delay_s("10.0.0.1") == 16
        throttle.failed("10.0.0.1")
        clock.now += 15 * 60
        assert throttle.delay_s("10.0.0.1") == 1
        assert len(throttle) == 0

    def test_memory_bound(self) -> None:
        """At most max_clients are remembered; the one that failed longest ago goes first."""
        clock = FakeClock()
        throttle = LoginThrottle(clock, max_clients=1024)
        self.delays(throttle, "old", 3)
        for i in range(1023):
            clock.now += 0.01
            throttle.failed(f"10.0.{i // 256}.{i % 256}")
        self.delays(throttle, "old", 1)  # failed again: now the newest
        throttle.failed("2001:db8::1")
        assert len(throttle) == 1024
        assert throttle.delay_s("old") == 16
        assert throttle.delay_s("10.0.0.0") == 1  # forgotten
        assert throttle.delay_s("10.0.0.1") == 2

    def test_bad_settings(self) -> None:
        """Nonsense settings are refused."""
        with pytest.raises(ValueError, match="base_s"):
            LoginThrottle(base_s=60.0, max_s=30.0)
        with pytest.raises(ValueError, match="max_clients"):
            LoginThrottle(max_clients=0)


HASH = "scrypt$16384$8$1$YTGYO9DKry6Z8NzV4VLi1A==$nxQX8E3ILRXHysTbgaY6nZ1VYNHzpIpF2mvtt3fuO38="


def write(tmp_path: Path, data: bytes | str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def changed_lines(before: bytes, after: bytes) -> list[tuple[int, bytes, bytes]]:
    """The lines that differ, for files with the same number of lines."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(old) == len(new)
    return [(i + 1, a, b) for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]


class TestSetConfigSecret:
    """set_config_secret on real-looking configuration files."""

    def test_shipped_config(self, tmp_path: Path) -> None:
        """In a copy of the shipped file only the password_hash line changes, and the
        project's loader reads the hash back, which verifies the password."""
        original = SHIPPED.read_bytes()
        path = write(tmp_path, original)
        stored = hash_password("correct horse battery")
        set_config_secret(path, "password_hash", stored)
        after = path.read_bytes()
        [(_line, old, new)] = changed_lines(original, after)
        assert old == b"  password_hash: null\n"
        assert new == f"  password_hash: '{stored}'\n".encode()
        cfg = load_config(path)
        assert cfg.web.password_hash == stored
        assert verify_password("correct horse battery", cfg.web.password_hash)

    def test_shipped_config_token_then_password(self, tmp_path: Path) -> None:
        """Two keys set one after the other both stay; a second password replaces the
        first."""
        path = write(tmp_path, SHIPPED.read_bytes())
        token_hash = hash_token(new_token())
        set_config_secret(path, "token_hash", token_hash)
        set_config_secret(path, "password_hash", "scrypt$first")
        set_config_secret(path, "password_hash", HASH)
        cfg = load_config(path)
        assert (cfg.web.token_hash, cfg.web.password_hash) == (token_hash, HASH)
        assert len(changed_lines(SHIPPED.read_bytes(), path.read_bytes())) == 2

    def test_no_web_section(self, tmp_path: Path) -> None:
        """A file without web: keeps every byte and gets a web: block at its end."""
        original = b"# My device.\nmonitors:\n  - name: main\n    model: m.onnx  # the fan\n"
        path = write(tmp_path, original)
        set_config_secret(path, "password_hash", HASH)
        assert path.read_bytes() == original + f"\nweb:\n  password_hash: '{HASH}'\n".encode()
        assert load_config(path).web.password_hash == HASH

    def test_no_trailing_newline(self, tmp_path: Path) -> None:
        """A last line without a newline gets one before the web: block."""
        path = write(tmp_path, b"logging:\n  level: debug")
        set_config_secret(path, "password_hash", HASH)
        assert (
            path.read_bytes()
            == f"logging:\n  level: debug\n\nweb:\n  password_hash: '{HASH}'\n".encode()
        )

    def test_web_last_line_without_newline(self, tmp_path: Path) -> None:
        """``web:`` as the file's last line, without a newline, gets its key below."""
        path = write(tmp_path, b"logging:\n  level: debug\nweb:")
        set_config_secret(path, "password_hash", HASH)
        assert (
            path.read_bytes()
            == f"logging:\n  level: debug\nweb:\n  password_hash: '{HASH}'\n".encode()
        )

    def test_empty_file(self, tmp_path: Path) -> None:
        """An empty file (all defaults) becomes a web: block."""
        path = write(tmp_path, b"")
        set_config_secret(path, "token_hash", "sha256$" + "0" * 64)
        assert yaml.safe_load(path.read_bytes()) == {"web": {"token_hash": "sha256$" + "0" * 64}}

    def test_inserted_first_in_block(self, tmp_path: Path) -> None:
        """A web: block with comments, a blank line and 4-space indentation gets the key as
        its first line, at its indentation; the next section is untouched."""
        original = (
            "web:   # the dashboard\n"
            "# (a comment at the margin)\n"
            "\n"
            "    # bind everywhere\n"
            "    host: 0.0.0.0\n"
            "    port: 8443\n"
            "logging:\n"
            "  level: info\n"
        )
        path = write(tmp_path, original)
        set_config_secret(path, "password_hash", HASH)
        lines = original.splitlines(keepends=True)
        lines.insert(1, f"    password_hash: '{HASH}'\n")
        assert path.read_text() == "".join(lines)
        cfg = load_config(path)
        assert (cfg.web.host, cfg.web.port, cfg.web.password_hash) == ("0.0.0.0", 8443, HASH)

    def test_replaced_keeping_comment(self, tmp_path: Path) -> None:
        """An existing key's line is replaced at its indentation, its comment kept; a
        commented-out key and a key of another section are not touched."""
        original = (
            "mqtt:\n"
            "  password: hunter2  # the broker's\n"
            "web:\n"
            "    #password_hash: 'scrypt$old'\n"
            '    password_hash: "scrypt$x # y"   # set by asd-edge web --set-password\n'
            "    port: 8080\n"
        )
        path = write(tmp_path, original)
        set_config_secret(path, "password_hash", HASH)
        [(line, _old, new)] = changed_lines(original.encode(), path.read_bytes())
        assert line == 5
        assert (
            new == f"    password_hash: '{HASH}'   # set by asd-edge web --set-password\n".encode()
        )
        assert yaml.safe_load(path.read_bytes())["mqtt"]["password"] == "hunter2"

    def test_nested_key_not_taken(self, tmp_path: Path) -> None:
        """A key of the same name deeper in the block is not the web section's own."""
        path = write(tmp_path, "web:\n  extra:\n    password_hash: deeper\n")
        set_config_secret(path, "password_hash", HASH)
        data = yaml.safe_load(path.read_bytes())
        assert data == {"web": {"password_hash": HASH, "extra": {"password_hash": "deeper"}}}

    def test_crlf(self, tmp_path: Path) -> None:
        """A file with CRLF line endings keeps them, and the new lines get them too."""
        for original in (
            b"# Windows\r\nlogging:\r\n  level: info\r\n",
            b"web:\r\n  # port\r\n  port: 8080\r\n",
            b"web:\r\n  password_hash: null\r\n",
        ):
            path = write(tmp_path, original)
            set_config_secret(path, "password_hash", HASH)
            after = path.read_bytes()
            assert (
                after.count(b"\n")
                == after.count(b"\r\n")
                == original.count(b"\n")
                + (3 if b"web" not in original else 1 if b"password_hash" not in original else 0)
            )
            assert load_config(path).web.password_hash == HASH

    def test_bom(self, tmp_path: Path) -> None:
        """A UTF-8 byte order mark stays in front."""
        path = write(tmp_path, b"\xef\xbb\xbfweb:\n  port: 8080\n")
        set_config_secret(path, "password_hash", HASH)
        assert (
            path.read_bytes() == f"\ufeffweb:\n  password_hash: '{HASH}'\n  port: 8080\n".encode()
        )

    def test_quoted_value(self, tmp_path: Path) -> None:
        """A value with quotes, '#', ': ' and non-ASCII characters reads back the same."""
        value = 'it\'s a "value" # not: a comment ünïcode'
        path = write(tmp_path, "web:\n  port: 8080\n")
        set_config_secret(path, "password_hash", value)
        assert yaml.safe_load(path.read_bytes())["web"]["password_hash"] == value

    def test_flow_style_refused(self, tmp_path: Path) -> None:
        """``web: {}`` is refused with a message asking for block style; the file is left."""
        for original in ("web: {}\n", "web: {port: 8080}  # inline\n", "web: null\n"):
            path = write(tmp_path, original)
            with pytest.raises(ConfigError, match=r"config.yaml:1: .*block style"):
                set_config_secret(path, "password_hash", HASH)
            assert path.read_text() == original

    @pytest.mark.parametrize(
        ("original", "problem"),
        [
            ("web:\n  port: [8080\n", "invalid YAML"),
            ("- a list\n", "expected a YAML mapping"),
            ("web:\n  - host\n", "web: expected a mapping"),
            ("web:\n  password_hash: >\n    folded\n", ":2: web.password_hash goes on over"),
            ("web:\n  password_hash: plain\n    continued\n", ":2: web.password_hash goes on"),
            ("web:\n  password_hash: 'open\n    quote'\n", ":2: web.password_hash goes on"),
            ("web:\n  password_hash: a\nweb:\n  port: 1\n", "duplicate key 'web'"),
            ('"web":\n  port: 1\n', "cannot find where web: is set"),
        ],
    )
    def test_refused(self, tmp_path: Path, original: str, problem: str) -> None:
        """Files it cannot edit safely are refused with a ConfigError saying why, and left
        as they were, without a temporary file beside them."""
        path = write(tmp_path, original)
        with pytest.raises(ConfigError, match=problem):
            set_config_secret(path, "password_hash", HASH)
        assert path.read_text() == original
        assert os.listdir(tmp_path) == ["config.yaml"]

    def test_bad_arguments(self, tmp_path: Path) -> None:
        """A key that is no plain name and a value on several lines are ValueErrors."""
        path = write(tmp_path, "web:\n  port: 8080\n")
        with pytest.raises(ValueError, match="key: expected a lowercase name"):
            set_config_secret(path, "password_hash: x\n  port", HASH)
        with pytest.raises(ValueError, match="value: expected printable"):
            set_config_secret(path, "password_hash", "a\nb")

    def test_keeps_mode_and_owner(self, tmp_path: Path) -> None:
        """A 0640 file of another owner and group keeps mode, owner and group (as root),
        and no temporary file is left."""
        path = write(tmp_path, SHIPPED.read_bytes())
        path.chmod(0o640)
        if os.geteuid() == 0:
            os.chown(path, 1234, 5678)
        before = path.stat()
        set_config_secret(path, "password_hash", HASH)
        after = path.stat()
        assert stat.S_IMODE(after.st_mode) == 0o640
        assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
        assert after.st_ino != before.st_ino  # replaced by rename, not rewritten in place
        assert os.listdir(tmp_path) == ["config.yaml"]

    def test_symlink_followed(self, tmp_path: Path) -> None:
        """A symlinked config file is edited at its target; the link stays a link."""
        real = write(tmp_path, "web:\n  port: 8080\n", name="real.yaml")
        link = tmp_path / "config.yaml"
        link.symlink_to(real)
        set_config_secret(link, "password_hash", HASH)
        assert link.is_symlink()
        assert yaml.safe_load(real.read_bytes())["web"]["password_hash"] == HASH

    def test_restored_when_read_back_differs(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the file read back after the write is not what was written, the original
        is put back and the error says so."""
        original = SHIPPED.read_bytes()
        path = write(tmp_path, original)
        reads: list[int] = []

        def corrupting_read(p: str | os.PathLike[str], max_bytes: int) -> bytes:
            reads.append(1)
            data = Path(p).read_bytes()
            return data.replace(b"port: 8080", b"port: 9090") if len(reads) == 2 else data

        monkeypatch.setattr(editing, "read_regular", corrupting_read)
        with pytest.raises(ConfigError, match="did not give the file the expected content"):
            set_config_secret(path, "password_hash", HASH)
        assert path.read_bytes() == original
