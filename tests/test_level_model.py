"""The shipped level model is what its documented command builds, and it loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import REPO

from asd_edge.detector import Detector


class TestShippedLevelModel:
    def test_committed_file_is_reproducible(self, tmp_path: Path) -> None:
        """`python -m training.level --out ...` rebuilds models/level.onnx byte for byte."""
        out = tmp_path / "level.onnx"
        subprocess.run(
            [sys.executable, "-m", "training.level", "--out", str(out)], check=True, cwd=REPO
        )
        assert out.read_bytes() == (REPO / "models/level.onnx").read_bytes()

    def test_loads_with_its_documented_threshold(self) -> None:
        """The daemon loads it; the threshold is the model card's -20 dBFS."""
        det = Detector(REPO / "models/level.onnx")
        assert det.threshold == -20.0
        assert det.spec.kind == "level" and det.spec.sample_rate == 16000
