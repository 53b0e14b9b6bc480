"""Signed push, rollback and reset messages: keys, round trips and every refusal reason."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from support.files import REJECTED_KINDS, rejected_file

from asd_edge.errors import ChildFailed, KeyFileError, Refused
from asd_edge.modelstore import devicekey
from asd_edge.modelstore.devicekey import load_device_key
from asd_edge.modelstore.keyfiles import (
    generate_keys,
    key_id,
    load_private_key,
    load_public_key,
)
from asd_edge.modelstore.signing import (
    PUSH_CONTEXT,
    RESET_CONTEXT,
    ROLLBACK_CONTEXT,
    canonical_bytes,
    parse_push,
    parse_reset,
    parse_rollback,
    push_message,
    reset_message,
    rollback_message,
)

DEVICE = "press-7"
MODEL = bytes(range(256)) * 40
"""10 240 bytes standing for an ONNX file (parse_push does not parse ONNX)."""
LIMIT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(push.key, device.key) made by generate_keys."""
    return generate_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def private(keys: tuple[Path, Path]) -> Ed25519PrivateKey:
    return load_private_key(keys[0])


@pytest.fixture(scope="module")
def public(keys: tuple[Path, Path]) -> Ed25519PublicKey:
    return load_public_key(keys[1])


def signed_push(private: Ed25519PrivateKey, **kw: Any) -> dict[str, Any]:
    """A signed push of MODEL to DEVICE (keyword arguments override push_message's)."""
    options: dict[str, Any] = {
        "request_id": "req-1",
        "target": DEVICE,
        "monitor": "spindle",
        "private_key": private,
        "issued_at": "2026-11-21T10:15:00.123Z",
    }
    options.update(kw)
    return push_message(MODEL, **options)


def check_push(
    message: dict[str, Any],
    public: Ed25519PublicKey | None,
    *,
    allow_unsigned: bool = False,
    max_bytes: int = LIMIT,
    device_id: str = DEVICE,
) -> Any:
    """parse_push as the daemon calls it: the router strips ``id`` into request_id."""
    args = {k: v for k, v in message.items() if k != "id"}
    return parse_push(
        args,
        request_id=message.get("id"),
        device_id=device_id,
        max_bytes=max_bytes,
        public_key=public,
        allow_unsigned=allow_unsigned,
    )


def refusal(message: dict[str, Any], public: Ed25519PublicKey | None, **kw: Any) -> str:
    """The reason parse_push refuses ``message`` with (the test fails if it accepts it)."""
    with pytest.raises(Refused) as info:
        check_push(message, public, **kw)
    reason = info.value.reason
    assert "\n" not in reason and reason == str(info.value)
    return reason


class TestPushRoundTrip:
    def test_signed_push_is_accepted_with_its_bytes(
        self, private: Ed25519PrivateKey, public: Ed25519PublicKey
    ) -> None:
        """A push made by push_message comes back out of parse_push whole and marked signed."""
        message = json.loads(json.dumps(signed_push(private)))  # through JSON, as over MQTT
        request = check_push(message, public)
        assert request.model == MODEL
        assert request.sha256 == hashlib.sha256(MODEL).hexdigest()
        assert request.size == len(MODEL)
        assert (request.id, request.target, request.monitor) == ("req-1", DEVICE, "spindle")
        assert request.issued_at == "2026-11-21T10:15:00.123Z"
        assert request.signed and request.key_id == key_id(public) == message["key_id"]

    def test_signed_bytes_follow_the_contract(
        self, private: Ed25519PrivateKey, public: Ed25519PublicKey
    ) -> None:
        """The signature covers the context line and the sorted compact JSON of six fields,
        monitor null when absent, so that another implementation can verify it."""
        message = signed_push(private, monitor=None)
        assert "monitor" not in message
        fields = {k: message[k] for k in ("id", "target", "sha256", "size", "issued_at")}
        text = json.dumps({**fields, "monitor": None}, sort_keys=True, separators=(",", ":"))
        public.verify(base64.b64decode(message["signature"]), PUSH_CONTEXT + text.encode())
        assert canonical_bytes(PUSH_CONTEXT, {**fields, "monitor": None}) == (
            PUSH_CONTEXT + text.encode()
        )
        assert check_push(message, public).monitor is None

    def test_default_issued_at_is_utc_with_milliseconds(self, private: Ed25519PrivateKey) -> None:
        """Without issued_at, now is written as 2026-11-21T10:15:00.123Z is."""
        issued = push_message(MODEL, request_id="r", target="*", monitor=None, private_key=private)[
            "issued_at"
        ]
        assert len(issued) == 24 and issued[10] == "T" and issued.endswith("Z")
        assert issued[19] == "."

    def test_fleet_target_is_accepted_by_every_device(
        self, private: Ed25519PrivateKey, public: Ed25519PublicKey
    ) -> None:
        """target "*" (push --all) is accepted by any device id."""
        message = signed_push(private, target="*")
        assert check_push(message, public, device_id="press-1").target == "*"
        assert check_push(message, public, device_id="press-2").target == "*"

    def test_unsigned_push_when_allowed(self) -> None:
        """With push.allow_unsigned an unsigned push is accepted, marked unsigned."""
        message = push_message(MODEL, request_id="r", target=DEVICE, monitor=None, private_key=None)
        assert "signature" not in message and "key_id" not in message
        request = check_push(message, None, allow_unsigned=True)
        assert not request.signed and request.key_id is None and request.model == MODEL


class TestPushRefusals:
    def test_missing_id(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A push without a request id is refused first."""
        message = signed_push(private)
        del message["id"]
        assert refusal(message, public).startswith("id:")

    def test_wrong_target(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A push signed for another device is refused by this one, naming both."""
        reason = refusal(signed_push(private, target="press-8"), public)
        assert reason.startswith("target:") and "press-8" in reason and DEVICE in reason

    def test_tampered_target(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """Turning a one-device push into a fleet push breaks the signature."""
        message = signed_push(private, target="press-8")
        message["target"] = "*"
        assert refusal(message, public).startswith("bad signature")

    def test_too_large(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A model over push.max_mb is refused by its size before anything is decoded."""
        reason = refusal(signed_push(private), public, max_bytes=10_000)
        assert reason == "model too large: 10240 bytes, at most 10000 (push.max_mb)"

    def test_bad_size(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A size that is not a positive integer is refused naming the field."""
        for size in ("10240", 0, True, 1.5):
            message = {**signed_push(private), "size": size}
            assert refusal(message, public).startswith("size:"), size

    def test_tampered_size(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A size that disagrees with the model's bytes is refused either way."""
        message = {**signed_push(private), "size": len(MODEL) + 1}
        assert (
            refusal(message, public)
            == f"truncated: got {len(MODEL)} bytes of {len(MODEL) + 1} (model)"
        )
        message = {**signed_push(private), "size": len(MODEL) - 1}
        assert refusal(message, public).startswith(f"model: got {len(MODEL)} bytes, more than")

    def test_bad_base64(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A model that is not strict base64 (junk characters, missing padding) is refused."""
        message = signed_push(private)
        for junk in (message["model"][:-4] + "!!!!", message["model"].rstrip("=") + "A", 17):
            assert refusal({**message, "model": junk}, public).startswith("model:"), junk

    def test_truncated_model(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A model cut short in transit is refused as truncated."""
        message = signed_push(private)
        message["model"] = base64.b64encode(MODEL[:6000]).decode()
        assert refusal(message, public) == f"truncated: got 6000 bytes of {len(MODEL)} (model)"

    def test_tampered_model_byte(
        self, private: Ed25519PrivateKey, public: Ed25519PublicKey
    ) -> None:
        """One flipped byte of the model is a sha256 mismatch."""
        altered = bytearray(MODEL)
        altered[5000] ^= 0x01
        message = {**signed_push(private), "model": base64.b64encode(altered).decode()}
        assert refusal(message, public) == (
            "sha256 mismatch: the model was altered or corrupted in transit"
        )

    def test_tampered_sha256(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A model swapped together with its sha256 keeps the hash but breaks the signature;
        a sha256 that is not 64 lowercase hex digits is refused naming the field."""
        other = b"another model" * 100
        message = {
            **signed_push(private),
            "model": base64.b64encode(other).decode(),
            "size": len(other),
            "sha256": hashlib.sha256(other).hexdigest(),
        }
        assert refusal(message, public).startswith("bad signature")
        upper = {**signed_push(private)}
        upper["sha256"] = upper["sha256"].upper()
        assert refusal(upper, public).startswith("sha256: expected 64 lowercase hex")

    @pytest.mark.parametrize(
        ("field", "value"), [("monitor", "gearbox"), ("issued_at", "2026-11-21T10:15:00.124Z")]
    )
    def test_tampered_signed_field(
        self, private: Ed25519PrivateKey, public: Ed25519PublicKey, field: str, value: str
    ) -> None:
        """Changing the monitor or the time after signing breaks the signature; the reason
        names this device's key id."""
        message = {**signed_push(private), field: value}
        reason = refusal(message, public)
        assert reason.startswith("bad signature") and key_id(public) in reason

    def test_bad_issued_at(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """issued_at must be ISO 8601 UTC with milliseconds (so later compares greater)."""
        for text in (
            "2026-11-21T10:15:00Z",
            "2026-11-21 10:15:00.123Z",
            "2026-13-21T10:15:00.123Z",
        ):
            message = signed_push(private, issued_at=text)
            assert refusal(message, public).startswith("issued_at:"), text

    def test_unsigned_refused(self, public: Ed25519PublicKey) -> None:
        """An unsigned push is refused unless push.allow_unsigned, whether or not a key is set."""
        message = push_message(MODEL, request_id="r", target=DEVICE, monitor=None, private_key=None)
        expected = "unsigned push refused (push.allow_unsigned is false)"
        assert refusal(message, public) == expected
        assert refusal(message, None) == expected

    def test_signed_by_another_key(
        self, private: Ed25519PrivateKey, public: Ed25519PublicKey
    ) -> None:
        """A push signed by a key the device does not hold is refused naming both key ids."""
        stranger = Ed25519PrivateKey.generate()
        message = signed_push(stranger)
        reason = refusal(message, public)
        assert reason.startswith("bad signature")
        assert key_id(public) in reason and key_id(stranger.public_key()) in reason
        assert refusal(message, public, allow_unsigned=True).startswith("bad signature")

    def test_garbage_signature(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A signature that is not base64, or not a string, is refused."""
        assert refusal({**signed_push(private), "signature": "%%%"}, public).startswith(
            "bad signature"
        )
        assert refusal({**signed_push(private), "signature": 5}, public).startswith("signature:")

    def test_signature_without_a_key(self, private: Ed25519PrivateKey) -> None:
        """A signed push to a device without push.key_file cannot be checked: refused."""
        reason = refusal(signed_push(private), None)
        assert reason == "push.key_file is not set: cannot check the signature"

    def test_unknown_field(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A field outside the contract is refused by name."""
        reason = refusal({**signed_push(private), "sha1": "x"}, public)
        assert reason.startswith("unknown field 'sha1'")


class TestRollback:
    def rollback(self, private: Ed25519PrivateKey | None, **kw: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "request_id": "rb-1",
            "target": DEVICE,
            "monitor": "spindle",
            "private_key": private,
            "issued_at": "2026-11-21T11:00:00.000Z",
        }
        return rollback_message(**{**options, **kw})

    def parse(self, message: dict[str, Any], public: Ed25519PublicKey | None, **kw: Any) -> Any:
        args = {k: v for k, v in message.items() if k != "id"}
        options: dict[str, Any] = {"device_id": DEVICE, "allow_unsigned": False, **kw}
        return parse_rollback(args, request_id=message.get("id"), public_key=public, **options)

    def test_round_trip(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A signed rollback is accepted with its fields; the signature is over the contract."""
        message = self.rollback(private)
        request = self.parse(json.loads(json.dumps(message)), public)
        assert (request.id, request.target, request.monitor) == ("rb-1", DEVICE, "spindle")
        assert request.signed and request.key_id == key_id(public)
        fields = {k: message[k] for k in ("id", "target", "monitor", "issued_at")}
        public.verify(
            base64.b64decode(message["signature"]), canonical_bytes(ROLLBACK_CONTEXT, fields)
        )

    def test_a_push_signature_is_not_a_rollback_signature(
        self, private: Ed25519PrivateKey, public: Ed25519PublicKey
    ) -> None:
        """The context line keeps a signature from being replayed as the other command."""
        message = self.rollback(private)
        fields = {k: message[k] for k in ("id", "target", "monitor", "issued_at")}
        forged = private.sign(canonical_bytes(PUSH_CONTEXT, fields))
        message["signature"] = base64.b64encode(forged).decode()
        with pytest.raises(Refused, match=r"^bad signature"):
            self.parse(message, public)

    def test_refusals(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """Tampered monitor, wrong target, unsigned and unverifiable rollbacks are refused."""
        cases: list[tuple[dict[str, Any], Ed25519PublicKey | None, str]] = [
            ({**self.rollback(private), "monitor": "gearbox"}, public, "bad signature"),
            (self.rollback(private, target="press-8"), public, "target:"),
            (self.rollback(None), public, "unsigned rollback refused (push.allow_unsigned"),
            (self.rollback(private), None, "push.key_file is not set"),
            (self.rollback(private, issued_at="yesterday"), public, "issued_at:"),
        ]
        for message, key, start in cases:
            with pytest.raises(Refused) as info:
                self.parse(message, key)
            assert info.value.reason.startswith(start), info.value.reason
        assert not self.parse(self.rollback(None), None, allow_unsigned=True).signed
        assert self.parse(self.rollback(private, target="*"), public).target == "*"


class TestReset:
    CLEARS = "2099-01-01T00:00:00.000Z"

    def reset(self, private: Ed25519PrivateKey | None, **kw: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "request_id": "reset-1",
            "target": DEVICE,
            "monitor": "spindle",
            "clears": self.CLEARS,
            "private_key": private,
            "issued_at": "2026-11-21T12:00:00.000Z",
        }
        return reset_message(**{**options, **kw})

    def parse(self, message: dict[str, Any], public: Ed25519PublicKey | None) -> Any:
        args = {k: v for k, v in message.items() if k != "id"}
        return parse_reset(args, request_id=message.get("id"), device_id=DEVICE, public_key=public)

    def test_round_trip(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """A signed reset comes back with its fields; the signature covers the reset's
        context line and the five fields, clears included, monitor null when absent."""
        message = self.reset(private, monitor=None)
        assert "monitor" not in message
        request = self.parse(json.loads(json.dumps(message)), public)
        assert (request.id, request.target, request.monitor) == ("reset-1", DEVICE, None)
        assert (request.clears, request.issued_at) == (self.CLEARS, "2026-11-21T12:00:00.000Z")
        assert request.key_id == key_id(public) == message["key_id"]
        fields = {k: message[k] for k in ("id", "target", "clears", "issued_at")}
        public.verify(
            base64.b64decode(message["signature"]),
            canonical_bytes(RESET_CONTEXT, {**fields, "monitor": None}),
        )

    def test_a_rollback_signature_is_not_a_reset_signature(
        self, private: Ed25519PrivateKey, public: Ed25519PublicKey
    ) -> None:
        """The same fields signed under the rollback's context do not verify as a reset."""
        message = self.reset(private)
        fields = {k: message[k] for k in ("id", "target", "monitor", "clears", "issued_at")}
        forged = private.sign(canonical_bytes(ROLLBACK_CONTEXT, fields))
        message["signature"] = base64.b64encode(forged).decode()
        with pytest.raises(Refused, match=r"^bad signature"):
            self.parse(message, public)

    def test_refusals(self, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> None:
        """Each refusal names its field: a changed clears, the fleet or another target, no
        or a malformed clears, unsigned (always), another key, no key on the device."""
        stranger = Ed25519PrivateKey.generate()
        no_clears = {k: v for k, v in self.reset(private).items() if k != "clears"}
        cases: list[tuple[dict[str, Any], Ed25519PublicKey | None, str]] = [
            (
                {**self.reset(private), "clears": "2098-01-01T00:00:00.000Z"},
                public,
                "bad signature",
            ),
            (self.reset(private, target="*"), public, "target: a reset addresses one device"),
            (self.reset(private, target="press-8"), public, "target: addressed to 'press-8'"),
            (no_clears, public, "clears: expected the replay marker"),
            (self.reset(private, clears="tomorrow"), public, "clears: expected the replay marker"),
            (self.reset(None), public, "unsigned reset refused: a reset must be signed"),
            (self.reset(stranger), public, "bad signature"),
            (self.reset(private), None, "push.key_file is not set"),
            ({**self.reset(private), "size": 1}, public, "unknown field 'size'"),
        ]
        for message, key, start in cases:
            with pytest.raises(Refused) as info:
                self.parse(message, key)
            assert info.value.reason.startswith(start), (start, info.value.reason)


class TestKeyFiles:
    def test_generate_keys_modes_and_pair(self, tmp_path: Path) -> None:
        """push.key is private (0600), device.key public (0644), and they are a pair."""
        push_key, device_key = generate_keys(tmp_path / "new")
        assert stat.S_IMODE(push_key.stat().st_mode) == 0o600
        assert stat.S_IMODE(device_key.stat().st_mode) == 0o644
        assert (push_key.name, device_key.name) == ("push.key", "device.key")
        private, public = load_private_key(push_key), load_public_key(device_key)
        public.verify(private.sign(b"x"), b"x")
        assert b"PRIVATE" not in device_key.read_bytes()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert key_id(public) == hashlib.sha256(raw).hexdigest()[:16]

    def test_refuses_to_overwrite_without_force(self, tmp_path: Path) -> None:
        """An existing key pair is kept unless force; force makes a new pair."""
        push_key, device_key = generate_keys(tmp_path)
        before = push_key.read_bytes(), device_key.read_bytes()
        with pytest.raises(KeyFileError, match="already exists") as info:
            generate_keys(tmp_path)
        assert str(push_key) in str(info.value)
        assert (push_key.read_bytes(), device_key.read_bytes()) == before
        push_key.unlink()  # one file left is still refused, and nothing is written
        with pytest.raises(KeyFileError, match=r"device\.key: already exists"):
            generate_keys(tmp_path)
        assert not push_key.exists()
        generate_keys(tmp_path, force=True)
        assert device_key.read_bytes() != before[1]

    def test_wrong_permissions_are_fine(self, keys: tuple[Path, Path], tmp_path: Path) -> None:
        """A readable key loads whatever its mode (a copied device.key may be 0600 or 0664)."""
        copy = tmp_path / "device.key"
        copy.write_bytes(keys[1].read_bytes())
        os.chmod(copy, 0o666)
        assert key_id(load_public_key(copy)) == key_id(load_public_key(keys[1]))

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing key file is named."""
        for load in (load_public_key, load_private_key):
            with pytest.raises(KeyFileError, match="cannot read the key file") as info:
                load(tmp_path / "nope.key")
            assert info.value.path == str(tmp_path / "nope.key")

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("kind", REJECTED_KINDS)
    def test_not_a_regular_file_or_too_large_is_refused_unread(
        self, tmp_path: Path, kind: str
    ) -> None:
        """A FIFO, /dev/zero and a 2 GB sparse file given as a key are refused at once,
        unread, naming the file (a key file is at most KEY_FILE_MAX_BYTES)."""
        path, problem = rejected_file(tmp_path, kind)
        for load in (load_public_key, load_private_key):
            with pytest.raises(KeyFileError) as info:
                load(path)
            assert info.value.path == str(path) and problem in info.value.problem

    def test_swapped_keys(self, keys: tuple[Path, Path]) -> None:
        """The private key given where the public one is expected (and back) is named as such."""
        with pytest.raises(KeyFileError, match="this is a private key") as info:
            load_public_key(keys[0])
        assert str(keys[0]) in str(info.value)
        with pytest.raises(KeyFileError, match="this is a public key") as info:
            load_private_key(keys[1])
        assert str(keys[1]) in str(info.value)

    def test_garbage_and_foreign_keys(self, tmp_path: Path) -> None:
        """Garbage PEM and a key of another algorithm give KeyFileError naming the file."""
        garbage = tmp_path / "garbage.key"
        garbage.write_text(
            "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n"
        )
        with pytest.raises(KeyFileError, match="not a valid PEM public key") as info:
            load_public_key(garbage)
        assert str(garbage) in str(info.value)
        text = tmp_path / "text.key"
        text.write_text("hello\n")
        with pytest.raises(KeyFileError, match="not a valid PEM private key"):
            load_private_key(text)
        from cryptography.hazmat.primitives.asymmetric import ec

        ec_key = ec.generate_private_key(ec.SECP256R1())
        pem = tmp_path / "ec.key"
        pem.write_bytes(
            ec_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        with pytest.raises(KeyFileError, match="expected an Ed25519 public key") as info:
            load_public_key(pem)
        assert str(pem) in str(info.value)


class TestLight:
    def test_importing_signing_does_not_load_cryptography(self) -> None:
        """cryptography loads only when a key is used, not when the daemon imports the modules
        (signing, the reset, the daemon itself)."""
        code = textwrap.dedent(
            """
            import sys
            import asd_edge.modelstore.signing, asd_edge.modelstore.reset, asd_edge.daemon
            print(sorted(m for m in sys.modules if m.split(".")[0] == "cryptography"))
            """
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"

    def test_the_daemon_checks_a_push_without_loading_cryptography(
        self, keys: tuple[Path, Path], private: Ed25519PrivateKey
    ) -> None:
        """The daemon's key (``load_key``: a ``DeviceKey``) is read and each signature checked
        in a child: a process that loaded the key and checked a good and a forged push has
        still not loaded cryptography, and got the right verdicts."""
        good = json.dumps(signed_push(private))
        forged = json.dumps({**signed_push(private), "issued_at": "2026-01-01T00:00:00.000Z"})
        code = textwrap.dedent(
            f"""
            import json, sys
            from asd_edge.errors import Refused
            from asd_edge.modelstore import signing
            from asd_edge.modelstore.devicekey import load_device_key
            key = load_device_key({str(keys[1])!r})
            for text in ({good!r}, {forged!r}):
                args = json.loads(text)
                try:
                    signing.parse_push(args, request_id=args.pop("id"), device_id={DEVICE!r},
                                       max_bytes={LIMIT}, public_key=key, allow_unsigned=False)
                    print("accepted")
                except Refused as exc:
                    print("refused:", str(exc).split(":")[0])
            print(sorted(m for m in sys.modules if m.split(".")[0] == "cryptography"))
            """
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["accepted", "refused: bad signature", "[]"]


class TestDeviceKey:
    def test_same_key_and_id_as_the_workstation(self, keys: tuple[Path, Path]) -> None:
        key = load_device_key(keys[1])
        assert key.key_id == key_id(load_public_key(keys[1])) == key_id(key)
        assert len(key.raw) == 32 and key.path == str(keys[1])

    def test_verdicts(self, keys: tuple[Path, Path], private: Ed25519PrivateKey) -> None:
        key = load_device_key(keys[1])
        signature = private.sign(b"data")
        assert key.verify(signature, b"data")
        assert not key.verify(signature, b"other data")
        assert not key.verify(b"\0" * 64, b"data")
        assert not key.verify(b"short", b"data")

    def test_the_workstations_problems(self, keys: tuple[Path, Path], tmp_path: Path) -> None:
        """A file that cannot be the device's key gets the problem load_public_key gives."""
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not a key\n")
        for path in (keys[0], garbage, tmp_path / "missing.pem"):
            with pytest.raises(KeyFileError) as here:
                load_public_key(path)
            with pytest.raises(KeyFileError) as child:
                load_device_key(path)
            assert str(child.value) == str(here.value)

    def test_a_child_that_cannot_run_is_said(
        self, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No verdict is ever guessed: a key check that cannot run refuses, with why; a key
        file that cannot be read now is ChildFailed (the daemon exits 69 and is restarted),
        never a configuration error (exit 78 would stop it for good)."""
        key = load_device_key(keys[1])
        other = tmp_path / "device.key"
        other.write_bytes(keys[1].read_bytes())
        monkeypatch.setattr(sys, "executable", "/nonexistent/python")
        with pytest.raises(ChildFailed, match="could not start"):
            key.verify(b"\0" * 64, b"data")
        with pytest.raises(ChildFailed, match="cannot be checked now: the key check could not"):
            load_device_key(other)
        assert load_device_key(keys[1]) is key  # unchanged: not read again


class TestNoVerdict:
    """A key check in a child that gives no verdict (it timed out, failed, or answered
    something other than ``{"valid": true|false}``) refuses a push, a rollback and a
    reset alike: nothing is accepted on a guess."""

    @pytest.mark.parametrize(
        "answer",
        [
            ChildFailed("the key check took over 30 s"),
            ChildFailed("the key check failed: MemoryError"),
            b'{"valid": "true"}',
            b'{"valid": 1}',
            b"{}",
            b"not json",
            b"[true]",
            b"",
        ],
        ids=["timeout", "failed", "string", "number", "empty-object", "not-json", "list", "none"],
    )
    def test_refused(
        self,
        keys: tuple[Path, Path],
        private: Ed25519PrivateKey,
        monkeypatch: pytest.MonkeyPatch,
        answer: ChildFailed | bytes,
    ) -> None:
        key = load_device_key(keys[1])
        asked: list[str] = []

        def child(code: str, stdin: bytes, *, timeout_s: float, what: str) -> bytes:
            asked.append(json.loads(stdin)["op"])
            if isinstance(answer, ChildFailed):
                raise answer
            return answer

        monkeypatch.setattr(devicekey, "run_python", child)
        common = {"device_id": DEVICE, "public_key": key}
        push = signed_push(private)
        back = rollback_message(request_id="b-1", target=DEVICE, monitor=None, private_key=private)
        reset = reset_message(
            request_id="z-1",
            target=DEVICE,
            monitor=None,
            clears="2099-01-01T00:00:00.000Z",
            private_key=private,
        )
        checks = {
            "push": lambda: parse_push(
                push, request_id=push.pop("id"), max_bytes=LIMIT, allow_unsigned=False, **common
            ),
            "rollback": lambda: parse_rollback(
                back, request_id=back.pop("id"), allow_unsigned=False, **common
            ),
            "reset": lambda: parse_reset(reset, request_id=reset.pop("id"), **common),
        }
        for what, check in checks.items():
            with pytest.raises(Refused, match=r"^signature: cannot be checked now \(") as refused:
                check()
            assert str(refused.value).endswith("; send it again"), what
        assert asked == ["verify"] * 3
