"""The daemon stays light: nothing in asd_edge imports torch or librosa."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.audio import tone_burst, write_wav
from support.importguard import GUARD


def fresh_python(code: str) -> str:
    """What ``code`` prints in a new Python (this one's), which must exit 0."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


class TestDaemonIsLight:
    def test_importing_every_module(self) -> None:
        """Every asd_edge module imports with torch, librosa, sklearn, matplotlib, onnx barred."""
        code = GUARD + textwrap.dedent(
            """
            import pkgutil, importlib, asd_edge
            for mod in pkgutil.walk_packages(asd_edge.__path__, "asd_edge."):
                importlib.import_module(mod.name)
            print(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
            """
        )
        assert fresh_python(code).strip() == "[]"

    def test_the_daemon_never_loads_the_web_stack(self) -> None:
        """The command line and the daemon's modules load no Starlette, uvicorn, Jinja2 or
        prometheus_client (the dashboard's, a separate process), nor Pillow before a
        clip's picture is drawn."""
        code = textwrap.dedent(
            """
            import sys
            import asd_edge.cli, asd_edge.daemon, asd_edge.assembly, asd_edge.clips
            web = ("starlette", "uvicorn", "jinja2", "prometheus_client", "PIL")
            print(sorted({m.split(".")[0] for m in sys.modules} & set(web)))
            """
        )
        assert fresh_python(code).strip() == "[]"

    def test_a_microphone_daemon_does_not_load_scipy_signal(self, level_model: Path) -> None:
        """scipy.signal (about 80 MB of resident memory) and scipy.io are loaded only when a
        model needs a pre-filter or a rate conversion, or a WAV file is read: a daemon
        on a microphone at the model's rate, with clips and MQTT, stays without them."""
        code = textwrap.dedent(
            f"""
            import sys
            import numpy as np
            from asd_edge.daemon import Daemon
            from asd_edge.detector import Detector
            from asd_edge.monitor import Monitor
            from asd_edge.config import MonitorConfig
            from asd_edge.ring import RingBuffer
            from asd_edge.audiofile import wav_bytes
            import asd_edge.cli, asd_edge.mqtt, asd_edge.clips.writer, asd_edge.clips.spectrogram
            detector = Detector({str(level_model)!r})
            ring = RingBuffer(16000 * 4)
            monitor = Monitor.from_config(
                MonitorConfig(name="m", model="m.onnx"), detector, ring, 16000, start_index=0)
            ring.write(np.zeros(32000, np.float32))
            assert monitor.tick().scores
            wav_bytes(np.zeros(100, np.float32), 16000)
            loaded = sorted(m for m in sys.modules if m in ("scipy.signal", "scipy.io"))
            print(loaded)
            """
        )
        assert fresh_python(code).strip() == "[]"

    def test_model_checks_and_health_load_no_numpy_extras(self, level_model: Path) -> None:
        """A model's load checks (noise through its pipeline) and the health report's tick
        quantiles import neither ``numpy.random`` (2.5 MB of RSS) nor ``numpy.ma``
        (1.4 MB), which the daemon would otherwise keep from its first model load and
        first health report on (benchmarks/bench_cost.py)."""
        eager = subprocess.run(
            [sys.executable, "-c", "import sys, numpy; print('numpy.random' in sys.modules)"],
            capture_output=True,
            text=True,
        )
        if eager.stdout.strip() == "True":
            pytest.skip("this numpy loads numpy.random with itself: nothing to keep out")
        code = textwrap.dedent(
            f"""
            import sys
            from asd_edge.config import MonitorConfig
            from asd_edge.modelstore.checks import CaptureFacts, validate_candidate
            from asd_edge.telemetry import tick_summary
            validate_candidate({str(level_model)!r}, MonitorConfig(name="m", model="m.onnx"),
                               capture=CaptureFacts(16000, 60.0))
            assert tick_summary([0.001, 0.002, 0.004])["tick_p50_ms"] == 2.0
            print(sorted(m for m in sys.modules if m in ("numpy.random", "numpy.ma")))
            """
        )
        assert fresh_python(code).strip() == "[]"

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
        assert '"events": [{' in fresh_python(code)


class TestEntryPoint:
    def test_math_threads_pinned_unless_set(self) -> None:
        """The asd-edge entry point pins BLAS pools to one thread, but respects the user's say."""
        code = textwrap.dedent(
            """
            import os, sys
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
            os.environ["OMP_NUM_THREADS"] = "3"
            from asd_edge.runtime import pin_math_threads
            pin_math_threads()
            print(os.environ["OPENBLAS_NUM_THREADS"], os.environ["OMP_NUM_THREADS"])
            """
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.stdout.split() == ["1", "3"], result.stderr

    def test_malloc_tuned_unless_set(self) -> None:
        """``asd-edge run`` caps glibc's malloc arenas and fixes its mmap and trim
        thresholds (a flat RSS), but a setting the environment already gives is the
        user's."""
        code = "from asd_edge.runtime import tune_malloc; print(sorted(tune_malloc().items()))"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        tuned = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env
        )
        assert tuned.stdout.strip() == (
            "[('MALLOC_ARENA_MAX', 2), ('MALLOC_MMAP_THRESHOLD_', 1048576),"
            " ('MALLOC_TRIM_THRESHOLD_', 4194304)]"
        ), tuned.stderr
        kept = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**env, "MALLOC_ARENA_MAX": "4"},
        )
        assert kept.stdout.strip() == (
            "[('MALLOC_MMAP_THRESHOLD_', 1048576), ('MALLOC_TRIM_THRESHOLD_', 4194304)]"
        ), kept.stderr

    def test_python_dash_m_runs_the_cli(self) -> None:
        """`python -m asd_edge --version` works like the console script."""
        result = subprocess.run(
            [sys.executable, "-m", "asd_edge", "--version"], capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stdout.startswith("asd-edge ")


class TestLazyFaces:
    @pytest.mark.parametrize("package", ["asd_edge.modelstore", "asd_edge.clips"])
    def test_every_name_of_the_face_resolves(self, package: str) -> None:
        """The face's table names exactly what ``__all__`` offers, and each name resolves
        to the object its module defines; an unknown name is an AttributeError."""
        import importlib

        face = importlib.import_module(package)
        assert set(face._WHERE) == set(face.__all__)
        for name, module in face._WHERE.items():
            defining = importlib.import_module(f"{package}.{module}")
            assert getattr(face, name) is getattr(defining, name)
        with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
            face.Nothing  # noqa: B018

    def test_a_child_entry_loads_one_module(self) -> None:
        """Importing the key check's or the painter's module loads neither onnxruntime nor
        the rest of its package (the children stay light)."""
        code = (
            "import sys\n"
            "import asd_edge.modelstore.devicekey, asd_edge.clips.painter\n"
            "print(sorted(m for m in ('onnxruntime', 'asd_edge.modelstore.manager',"
            " 'asd_edge.clips.writer', 'structlog') if m in sys.modules))\n"
        )
        assert fresh_python(code).strip() == "[]"
