"""``python -m training`` is ``asd-train``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
