"""Ed25519 key files for signed pushes: loading, generating and writing them, key ids."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..durable import read_regular, write_atomic
from ..errors import FileRejected, KeyFileError
from .devicekey import DeviceKey

if TYPE_CHECKING:  # cryptography is imported only when a key is used (the daemon stays light)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "DEVICE_KEY_NAME",
    "KEY_FILE_MAX_BYTES",
    "PUSH_KEY_NAME",
    "generate_keys",
    "key_id",
    "load_private_key",
    "load_public_key",
    "raw_public_bytes",
]

PUSH_KEY_NAME: Final = "push.key"
"""``generate_keys``' private key file: stays on the workstation (``asd-train push --key``)."""
DEVICE_KEY_NAME: Final = "device.key"
"""``generate_keys``' public key file: goes to each device (config ``push.key_file``)."""
KEY_FILE_MAX_BYTES: Final = 1 << 16
"""The largest key file read (64 KiB): an Ed25519 key in PEM is about 120 bytes; the bound
leaves room for comments and refuses a wrong path (a model, a device) unread."""


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path`` (``device.key``); KeyFileError if not."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key(path)
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(
            path,
            f"this is a private key ({PUSH_KEY_NAME}); a device needs the public key "
            f"({DEVICE_KEY_NAME})",
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(path, f"not a valid PEM public key ({_cause(exc)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(path, f"expected an Ed25519 public key, got {_key_type(key)}")
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path`` (``push.key``); KeyFileError if not."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key(path)
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise KeyFileError(
            path,
            f"this is a public key ({DEVICE_KEY_NAME}); signing needs the private key "
            f"({PUSH_KEY_NAME})",
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            path, "the private key is encrypted; expected an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(path, f"not a valid PEM private key ({_cause(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, f"expected an Ed25519 private key, got {_key_type(key)}")
    return key


def raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    """The raw 32-byte form of an Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey | DeviceKey) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    if isinstance(public_key, DeviceKey):
        return public_key.key_id
    return hashlib.sha256(raw_public_bytes(public_key)).hexdigest()[:16]


def generate_keys(out_dir: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """Write a new key pair: ``push.key`` (private, 0600) and ``device.key`` (public, 0644).

    Returns ``(push.key, device.key)``. Refuses (KeyFileError naming the file) to replace
    either file unless ``force``; nothing is written then. Each file appears whole or not
    at all (written to a temporary name, fsynced, renamed).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = Path(out_dir)
    push_path, device_path = folder / PUSH_KEY_NAME, folder / DEVICE_KEY_NAME
    if not force:
        for path in (push_path, device_path):
            if path.exists():
                raise KeyFileError(path, "already exists; refusing to replace it without force")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(folder, f"cannot create the folder ({exc.strerror or exc})") from None
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomic(push_path, private_pem, 0o600)
    _write_atomic(device_path, public_pem, 0o644)
    return push_path, device_path


def _read_key(path: str | os.PathLike[str]) -> bytes:
    try:
        return read_regular(path, KEY_FILE_MAX_BYTES)
    except FileRejected as exc:
        raise KeyFileError(path, exc.problem) from None
    except OSError as exc:
        raise KeyFileError(path, f"cannot read the key file ({exc.strerror or exc})") from None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with exactly ``mode`` (``durable.write_atomic``)."""
    try:
        write_atomic(path, data, mode=mode)
    except OSError as exc:
        raise KeyFileError(path, f"cannot write the key file ({exc.strerror or exc})") from None


def _key_type(key: object) -> str:
    return type(key).__name__.removeprefix("_").replace("PublicKey", "").replace("PrivateKey", "")


def _cause(exc: BaseException) -> str:
    """cryptography's reason without its FAQ link."""
    text = str(exc).split(" See https://")[0].strip().rstrip(".")
    return text or type(exc).__name__
