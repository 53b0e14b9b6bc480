"""What the tests import besides the code under test (fixtures live in ``conftest.py``).

- ``support.bands``: tiny real ONNX models with a ``bands`` output, and sound to feed them.
"""

from __future__ import annotations
