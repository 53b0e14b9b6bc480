"""asd-edge training: turns recordings into self-describing ONNX models for the daemon."""

from __future__ import annotations

__all__: list[str] = []
