"""asd-edge: unattended acoustic anomaly detection for machines, at the edge."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
