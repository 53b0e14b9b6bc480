"""``asd-train keygen``: the Ed25519 key pair that signs pushed models (private and public)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asd_edge.errors import KeyFileError
from asd_edge.modelstore import generate_keys, key_id, load_public_key

from .errors import EXIT_CANTCREAT, EXIT_OK

__all__ = ["configure", "run"]

EPILOG = """what to do with the files:
  push.key    the private key: it stays on this workstation (asd-train push --key push.key);
              whoever holds it can replace the model of every device that trusts it
  device.key  the public key: copy it to each device and name it in the config,
              push:
                key_file: /etc/asd-edge/device.key

exit codes:
  0   the keys were written
  2   bad command-line usage
  73  the keys cannot be written: a key exists already (--force) or the folder is not
      writable (EX_CANTCREAT)
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``asd-train keygen``."""
    parser.epilog = EPILOG
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder for push.key and device.key"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key pair (every device then needs the new device.key)",
    )


def run(args: argparse.Namespace) -> int:
    """``asd-train keygen``: returns 0 or 73."""
    try:
        push_key, device_key = generate_keys(args.out, force=args.force)
        kid = key_id(load_public_key(device_key))
    except KeyFileError as exc:
        hint = " (--force)" if "already exists" in exc.problem else ""
        print(f"asd-train keygen: {exc}{hint}", file=sys.stderr)
        return EXIT_CANTCREAT
    print(f"key id: {kid}")
    print(f"{push_key}: private key (0600): keep it on this workstation; asd-train push --key")
    print(f"{device_key}: public key: copy it to each device and set push.key_file to its path")
    return EXIT_OK
