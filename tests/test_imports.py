"""The daemon stays light: nothing in asd_edge imports torch or librosa."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import tone_burst, write_wav

HEAVY = ("torch", "librosa", "sklearn", "matplotlib", "onnx")

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


class TestDaemonIsLight:
    def test_importing_every_module(self) -> None:
        """Every asd_edge module imports with torch, librosa, sklearn, matplotlib, onnx barred."""
        code = GUARD + textwrap.dedent(
            """
            import pkgutil, importlib, asd_edge
            for mod in pkgutil.iter_modules(asd_edge.__path__):
                importlib.import_module(f"asd_edge.{mod.name}")
            print(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
            """
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"

    def test_score_runs_without_heavy_imports(self, tmp_path: Path, level_model: Path) -> None:
        """`asd-edge score` runs end to end with the heavy packages barred."""
        wav = write_wav(tmp_path / "a.wav", tone_burst(16000, 3.0, (1.0, 2.0)), 16000)
        code = GUARD + textwrap.dedent(
            f"""
            from asd_edge.cli import main
            code = main(["score", "--model", {str(level_model)!r}, {str(wav)!r}])
            assert not [m for m in sys.modules if m.split(".")[0] in HEAVY]
            sys.exit(code)
            """
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert '"events": [{' in result.stdout
