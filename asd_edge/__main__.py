"""``asd-edge`` and ``python -m asd_edge``: pin the math thread pools (and, for the daemon,
tune malloc for a flat memory), then run the CLI."""

from __future__ import annotations

import sys

from .runtime import hold_early_signals, pin_math_threads, tune_malloc

__all__ = ["main"]


def main() -> int:
    """Entry point of the ``asd-edge`` console script."""
    pin_math_threads()
    if sys.argv[1:2] == ["run"]:  # a reload or stop before the daemon's handlers: not fatal
        hold_early_signals()
        tune_malloc()
    from .cli import main as cli_main  # numpy is first imported here

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
