"""The ``asd-train`` command line: one subcommand per stage, each in its own module.

Every stage module provides ``configure(parser)`` (adds its arguments) and
``run(args) -> int`` (does the work, returns an exit code); ``module:name`` names an
object of the module that does (one module may serve two commands). ``prepare`` and
``fit`` keep their command line apart from their work (``training.prepare_cli`` beside
``training.prepare``, ``training.fit_cli`` beside ``training.fit``). Modules are
imported only when their subcommand runs, so ``asd-train synth --help`` does not load
torch. The exit codes are in ``training.errors``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol

from asd_edge import __version__
from asd_edge.logs import configure_logging

from .errors import EXIT_CODES, EXIT_OK

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.synth", "generate deterministic machine-like sound with anomalies"),
    "prepare": ("training.prepare_cli", "turn recordings into a segmented, split dataset"),
    "fit": ("training.fit_cli", "train a detector, calibrate its threshold, export ONNX"),
    "evaluate": ("training.evaluate", "score a dataset with an ONNX model as the daemon does"),
    "keygen": ("training.keygen", "make the Ed25519 key pair that signs pushed models"),
    "push": ("training.push", "send a model to a device (or every device) over MQTT"),
    "rollback": ("training.push:rollback", "return a device's monitor to its previous model"),
    "reset": ("training.reset", "replace a device's replay marker (a push dated ahead blocks it)"),
}
"""Subcommand → (module, one-line help). Later stages add themselves here."""


class Stage(Protocol):
    """What a stage module provides."""

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _stage(module: str) -> Stage:
    """The stage named ``module`` or ``module:name`` (an object of the module)."""
    module_name, _, attribute = module.partition(":")
    loaded = importlib.import_module(module_name)
    return getattr(loaded, attribute) if attribute else loaded  # type: ignore[no-any-return]


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser; only the stage named in ``argv`` (if any) is imported."""
    parser = argparse.ArgumentParser(
        prog="asd-train",
        description="Turn recordings of a machine into a calibrated ONNX model for asd-edge.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, summary) in COMMANDS.items():
        sp = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == chosen:
            _stage(module).configure(sp)
            sp.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``asd-train``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    # The daemon's modules that training reuses log through structlog: warnings and
    # errors only, on stderr, so that stdout carries the command's own output.
    configure_logging("warning", stream=sys.stderr)
    try:
        return _stage(args._module).run(args)
    except KeyboardInterrupt:
        print("asd-train: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
