"""A virtual microphone: a private PulseAudio null sink whose monitor is the default source."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devkit import DevkitError, Unavailable

__all__ = [
    "ENV_KEYS",
    "SINK",
    "SINK_RATE",
    "VirtualMic",
    "check_tools",
    "missing_tools",
    "refresh_portaudio",
    "virtual_mic",
]

SINK = "vmic"
SINK_RATE = 16000
_PULSE_PLUGIN_GLOBS = (
    "/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so",
    "/usr/lib/alsa-lib/libasound_module_pcm_pulse.so",
    "/usr/lib64/alsa-lib/libasound_module_pcm_pulse.so",
)
_TOOLS = (
    ("pulseaudio", "pulseaudio"),
    ("pactl", "pulseaudio-utils"),
    ("paplay", "pulseaudio-utils"),
)
ENV_KEYS = (
    "XDG_RUNTIME_DIR",
    "PULSE_RUNTIME_PATH",
    "PULSE_SERVER",
    "PULSE_COOKIE",
    "PULSE_CLIENTCONFIG",
)
"""The environment variables that point a client at the private server."""


class VirtualMic:
    """A private PulseAudio server: what is played on sink ``vmic`` is heard on ALSA ``pulse``.

    Playback is paced in real time, as from a real microphone. Runs as root too:
    ``pulseaudio -n`` only warns that it is "not intended to be run as root"; it
    gets a private HOME so that it never writes to the real one. Everything it
    writes stays under ``root``.
    """

    device = "pulse"
    """The ALSA PCM name to open with sounddevice."""
    sink_rate = SINK_RATE

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = root / "pulse"
        self.log_path = root / "pulseaudio.log"
        self.pulse_env: dict[str, str] = {
            "XDG_RUNTIME_DIR": str(root),
            "PULSE_RUNTIME_PATH": str(self.runtime),
            "PULSE_SERVER": f"unix:{self.runtime / 'native'}",
            "PULSE_COOKIE": str(root / "cookie"),
            # Clients must never autospawn a server of their own (with the real HOME)
            # while ours is down.
            "PULSE_CLIENTCONFIG": str(root / "client.conf"),
        }
        (root / "client.conf").write_text("autospawn = no\n")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """A complete environment for a subprocess that should hear the virtual mic."""
        return {**os.environ, **self.pulse_env}

    def _server_env(self) -> dict[str, str]:
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        env = {
            **self.env,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
        }
        env.pop("PULSE_SERVER", None)
        return env

    @property
    def running(self) -> bool:
        """Whether the server process is up."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers.

        Raises :class:`Unavailable` if PulseAudio is not installed and
        :class:`DevkitError` (with the end of its log) if it does not come up.
        """
        if self.running:
            return
        check_tools()
        args = [
            "pulseaudio",
            "-n",
            "--daemonize=no",
            "--system=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--use-pid-file=no",
            "--realtime=no",
            "--high-priority=no",
            "--no-cpu-limit",
            "--log-target=stderr",
            f"--load=module-native-protocol-unix auth-anonymous=1 cookie={self.root / 'cookie'}"
            f" socket={self.runtime / 'native'}",
            # norewinds=1: the null sink then renders in 50 ms blocks instead of 2 s ones,
            # so a capture hears the sink within ~50 ms, not after up to 2 s of nothing.
            f"--load=module-null-sink sink_name={SINK} rate={SINK_RATE} channels=1 norewinds=1",
        ]
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args, env=self._server_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise DevkitError(f"pulseaudio exited with {code}:\n{self.log_tail()}")
            if self._pactl("info").returncode == 0:
                break
            if time.monotonic() > deadline:
                self.kill()
                raise DevkitError(f"pulseaudio did not answer in {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.05)
        result = self._pactl("set-default-source", f"{SINK}.monitor")
        if result.returncode != 0:
            self.kill()
            raise DevkitError(f"pactl set-default-source {SINK}.monitor failed: {result.stderr}")

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Kill the server if it runs, then start a fresh one in the same directory."""
        self.kill()
        self.start()

    def play(self, path: str | os.PathLike[str], *, wait: bool = True) -> subprocess.Popen[bytes]:
        """Play a sound file into the microphone (``paplay``), by default to its end.

        With ``wait`` a failed playback raises :class:`DevkitError` with paplay's message.
        """
        proc = subprocess.Popen(
            ["paplay", f"--device={SINK}", str(path)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if wait:
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise DevkitError(f"paplay {path} failed ({proc.returncode}): {err.decode()}")
        return proc

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _pactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pactl", *args],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=10,
            check=False,
        )


def missing_tools() -> list[tuple[str, str]]:
    """What the virtual microphone needs and is not installed: (what, Debian package)."""
    missing = [(tool, pkg) for tool, pkg in _TOOLS if shutil.which(tool) is None]
    if not any(glob.glob(g) for g in _PULSE_PLUGIN_GLOBS):
        missing.append(("the ALSA pulse plugin", "libasound2-plugins"))
    return missing


def check_tools() -> None:
    """Raise :class:`Unavailable` naming what to install if anything is missing."""
    missing = missing_tools()
    if missing:
        what = ", ".join(tool for tool, _ in missing)
        packages = " ".join(dict.fromkeys(pkg for _, pkg in missing))
        raise Unavailable(f"the virtual microphone needs {what}: apt-get install {packages}")


def refresh_portaudio() -> None:
    """Make this process's PortAudio see the ``pulse`` device (it enumerates ALSA only at
    initialisation). Call it after the server started and its environment is set."""
    try:
        import sounddevice as sd
    except OSError as e:
        raise Unavailable(
            f"PortAudio is not available ({e}): apt-get install libportaudio2"
        ) from None
    if not any(d["name"] == VirtualMic.device for d in sd.query_devices()):
        sd._terminate()
        sd._initialize()
    names = [d["name"] for d in sd.query_devices()]
    if VirtualMic.device not in names:
        raise DevkitError(f"PortAudio does not list the ALSA 'pulse' device; it lists {names}")


@contextmanager
def virtual_mic(prefix: str = "asd-vmic-") -> Iterator[VirtualMic]:
    """A started virtual microphone in a private temporary directory; on exit the server
    is killed and the directory removed (also on errors and Ctrl-C)."""
    check_tools()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        root.chmod(0o700)
        mic = VirtualMic(root)
        try:
            mic.start()
            yield mic
        finally:
            mic.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)
