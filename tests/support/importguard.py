"""A prelude for ``python -c`` code that makes importing a heavy package an ImportError."""

from __future__ import annotations

import textwrap

__all__ = ["GUARD", "HEAVY"]

HEAVY = ("cryptography", "torch", "librosa", "sklearn", "matplotlib", "onnx")

GUARD = textwrap.dedent(
    f"""
    import importlib.abc, sys
    HEAVY = {HEAVY!r}
    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"asd_edge must not import {{name}}")
            return None
    sys.meta_path.insert(0, Refuse())
    """
)
