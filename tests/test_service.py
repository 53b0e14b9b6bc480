"""The systemd unit and scripts/service.sh: verify, hardening, staged and real installs."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support import REPO
from support.services import asd_edge_command

from devkit.vmic import missing_tools

UNIT_FILE = REPO / "systemd" / "asd-edge.service"
WEB_UNIT_FILE = REPO / "systemd" / "asd-edge-web.service"
WEB_EXPOSURE_MAX = 1.2  # the dashboard needs no device, no real-time, no W+X memory
SCRIPT = REPO / "scripts" / "service.sh"
VENV = "/opt/asd-edge/venv"
MODELS = "/opt/asd-edge/models"
EXPOSURE_MAX = 1.6  # what the unit reaches (1.5 before setpriority was allowed for the
# learning's child to lower its own priority); `systemd-analyze security` scores 0 (best) to 10
# The running interpreter's packages, shared with the install's venv through a .pth file
# so that the tests need neither the network nor minutes of pip downloads.
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
OFFLINE_PIP_ARGS = "--no-index --no-build-isolation"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Each section's keys with every value they are given, in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    """The value of a key that must be set exactly once."""
    values = section.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times: {values}"
    return values[0]


def environment(section: dict[str, list[str]]) -> dict[str, str]:
    """The variables of all Environment= lines."""
    env: dict[str, str] = {}
    for value in section.get("Environment", []):
        for item in value.split():
            name, _, setting = item.partition("=")
            env[name] = setting
    return env


def run_script(
    *args: str, destdir: Path | None = None, via_make: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    """scripts/service.sh (or its make target) with ``env`` added to the environment."""
    full = {**os.environ, "APT": "0", **env}
    if destdir is not None:
        full["DESTDIR"] = str(destdir)
    command = ["make", "-s", "-C", str(REPO), *args] if via_make else [str(SCRIPT), *args]
    if via_make:
        command += [f"{k}={v}" for k, v in full.items() if k in {"DESTDIR", "PURGE", "PIP_ARGS"}]
    return subprocess.run(command, capture_output=True, text=True, env=full, timeout=300)


def shared_venv(venv: Path, python: str = sys.executable) -> None:
    """A venv whose packages are the running interpreter's (a .pth file), for the
    installer to reuse: pip then finds every dependency already there."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = venv / "lib" / version / "site-packages"
    (site / "zz-shared-test-packages.pth").write_text(SITE_PACKAGES + "\n")


def staged_install(root: Path, *, via_make: bool = False) -> subprocess.CompletedProcess[str]:
    """`install` with DESTDIR=root, offline, into a venv sharing this interpreter's packages."""
    if not (root / VENV.lstrip("/")).exists():
        shared_venv(root / VENV.lstrip("/"))
    result = run_script("install", destdir=root, via_make=via_make, PIP_ARGS=OFFLINE_PIP_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One staged install (DESTDIR) shared by the read-only checks."""
    root = tmp_path_factory.mktemp("stage")
    staged_install(root)
    return root


def systemd_analyze() -> str:
    """Path of systemd-analyze, or skip."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    return exe


class TestUnit:
    unit = parse_unit(UNIT_FILE)

    def test_lifecycle(self) -> None:
        """Notify + watchdog, reload by SIGHUP, restarts that never give up but stop
        at a bad configuration, and the paths the installer uses."""
        from asd_edge.daemon import EXIT_CONFIG

        service, unit = self.unit["Service"], self.unit["Unit"]
        assert one(service, "Type") == "notify"
        assert one(service, "NotifyAccess") == "main"
        assert one(service, "WatchdogSec") == "30s"
        assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
        assert one(service, "Restart") == "on-failure"
        assert one(service, "RestartSec") == "15s"
        # Restarts never run out: an input unplugged for hours does not fail the unit for good.
        assert one(unit, "StartLimitIntervalSec") == "0"
        assert one(service, "RestartPreventExitStatus") == str(EXIT_CONFIG) == "78"
        stop_s = int(one(service, "TimeoutStopSec").removesuffix("s"))
        assert 10 <= stop_s <= 30  # the daemon needs 5-10 s to close a clip and flush
        assert one(service, "ExecStart") == f"{VENV}/bin/asd-edge run"
        assert environment(service)["ASD_EDGE_CONFIG"] == "/etc/asd-edge/config.yaml"
        assert environment(service)["PYTHONUNBUFFERED"] == "1"  # journal lines as they come
        assert (one(service, "User"), one(service, "Group")) == ("asd-edge", "asd-edge")
        assert one(service, "SupplementaryGroups") == "audio"
        assert one(service, "StateDirectory") == "asd-edge"
        assert one(service, "ConfigurationDirectory") == "asd-edge"
        assert one(self.unit["Install"], "WantedBy") == "multi-user.target"
        assert "readonly VENV=$PREFIX/venv" in SCRIPT.read_text()
        assert "readonly PREFIX=/opt/asd-edge" in SCRIPT.read_text()

    def test_hardening(self) -> None:
        """The sandbox an audio daemon can live in, and none of the options that
        would break ALSA capture."""
        service = self.unit["Service"]
        expected = {
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateMounts": "yes",
            "NoNewPrivileges": "yes",
            "DevicePolicy": "closed",
            "DeviceAllow": "char-alsa rw",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectKernelLogs": "yes",
            "ProtectControlGroups": "yes",
            "ProtectClock": "yes",
            "ProtectHostname": "yes",
            "ProtectProc": "invisible",
            "RestrictNamespaces": "yes",
            "RestrictRealtime": "yes",
            "RestrictSUIDSGID": "yes",
            "LockPersonality": "yes",
            "SystemCallArchitectures": "native",
            "SystemCallErrorNumber": "EPERM",
            "CapabilityBoundingSet": "",
            "AmbientCapabilities": "",
            "UMask": "0027",
        }
        assert {key: service.get(key, ["<missing>"])[0] for key in expected} == expected
        families = set(one(service, "RestrictAddressFamilies").split())
        assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
        assert service["SystemCallFilter"] == [
            "@system-service",
            "~@privileged @resources",
            "setpriority",  # the learning's child lowers its own priority
        ]
        sizes = {key: one(service, key) for key in ("MemoryHigh", "MemoryMax")}
        # budget: 120 MB RSS for the daemon, plus up to 340 MB for a learning's child
        assert sizes == {"MemoryHigh": "512M", "MemoryMax": "768M"}
        # Each of these would cut the daemon off its microphone (see the unit's comments).
        assert "MemoryDenyWriteExecute" not in service
        assert "PrivateUsers" not in service
        assert service.get("PrivateDevices", ["no"]) == ["no"]
        assert "ProcSubset" not in service


def verify_problems(analyze: str, root: Path) -> tuple[int, list[str], str]:
    """`systemd-analyze verify` of the unit installed in ``root``: exit code, the lines
    about the unit (it exits 0 even after warnings such as a bad value), all output."""
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", "asd-edge.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if "asd-edge" in line]
    return result.returncode, problems, output


def verify_root(root: Path) -> Path:
    """``root`` completed with the host's system units and /bin/kill (what ExecReload runs)."""
    units = Path("/usr/lib/systemd/system")
    if not units.is_dir():
        pytest.skip(f"{units} not found: no system units to verify against")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    if not (root / "lib").exists():
        (root / "lib").symlink_to("usr/lib")  # the units' absolute /lib/... links
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(shutil.which("kill") or "/bin/kill", root / "bin" / "kill")
    return root


def test_systemd_analyze_verify(staged: Path, tmp_path: Path) -> None:
    """The unit as installed passes `systemd-analyze verify` without a warning: checked
    in the staged tree, where ExecStart is the venv's real asd-edge script (the check
    that ExecStart exists is kept, not faked). A unit with a bad value is caught."""
    analyze = systemd_analyze()
    root = tmp_path / "root"
    shutil.copytree(staged, root, symlinks=True)
    verify_root(root)
    code, problems, output = verify_problems(analyze, root)
    assert code == 0 and not problems, output
    print(f"systemd-analyze verify: OK ({root / 'etc/systemd/system/asd-edge.service'})")

    unit = root / "etc/systemd/system/asd-edge.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    assert verify_problems(analyze, root)[1], "a bad Restart= value went unnoticed"
    shutil.rmtree(root / "opt")
    assert verify_problems(analyze, root)[1], "a missing ExecStart went unnoticed"


@pytest.mark.parametrize(
    ("unit_file", "exposure_max"),
    [(UNIT_FILE, EXPOSURE_MAX), (WEB_UNIT_FILE, WEB_EXPOSURE_MAX)],
    ids=["daemon", "web"],
)
def test_security_exposure(unit_file: Path, exposure_max: float) -> None:
    """`systemd-analyze security --offline=yes` scores each unit at its bound or better."""
    analyze = systemd_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"exposure {exposure} <= {exposure_max}: {'OK' if exposure <= exposure_max else 'FAIL'}")
    assert exposure <= exposure_max, result.stdout


def test_the_runtime_directory_keeps_libpulse_out_of_the_state_directory(
    tmp_path: Path,
) -> None:
    """`asd-edge devices` (PortAudio probing every ALSA device, the pulse plugin's too) in
    the unit's environment, XDG_RUNTIME_DIR in its RuntimeDirectory, with an empty HOME:
    HOME stays empty. Under systemd HOME is /var/lib/asd-edge, on disk; without a runtime
    directory libpulse writes ~/.config/pulse there (checked first: where it writes
    nothing anyway, there is nothing to keep out)."""
    if ("the ALSA pulse plugin", "libasound2-plugins") in missing_tools():
        pytest.skip("the ALSA pulse plugin is not installed (apt install libasound2-plugins)")
    service = TestUnit.unit["Service"]
    runtime = Path(environment(service)["XDG_RUNTIME_DIR"].replace("%t", str(tmp_path / "run")))
    assert runtime.name == one(service, "RuntimeDirectory")
    runtime.mkdir(parents=True, mode=0o700)  # as systemd makes it at start
    base = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "PULSE_"))}

    def devices(home: Path, **extra: str) -> None:
        home.mkdir()
        subprocess.run(
            [*asd_edge_command(), "devices"],
            capture_output=True,
            timeout=60,
            env={**base, "HOME": str(home), **extra},
        )

    devices(tmp_path / "bare")
    if not (tmp_path / "bare/.config/pulse").exists():
        pytest.skip("libpulse writes nothing into HOME here, even without a runtime directory")
    devices(tmp_path / "home", XDG_RUNTIME_DIR=str(runtime))
    assert list((tmp_path / "home").rglob("*")) == []


def test_write_execute_memory_breaks_capture() -> None:
    """Why the unit leaves MemoryDenyWriteExecute= off: under the kernel's equivalent
    (prctl PR_SET_MDWE) sounddevice cannot register its PortAudio callback."""
    code = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
import numpy, onnxruntime  # the rest of the daemon's native stack loads fine
try:
    import sounddevice
except OSError:
    sys.exit(78)
try:
    sounddevice._ffi.callback("PaStreamCallback", error=sounddevice._lib.paAbort)(lambda *a: 0)
except MemoryError as exc:
    print(exc)
    sys.exit(1)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    if result.returncode == 78:
        pytest.skip("PortAudio is not installed (apt install libportaudio2)")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "write+execute memory" in result.stdout


class TestScript:
    def test_help(self) -> None:
        result = run_script("--help")
        assert result.returncode == 0
        for word in ("install", "uninstall", "DESTDIR", "START=1", "PURGE=1", "PIP_ARGS"):
            assert word in result.stdout
        bad = run_script("reinstall")
        assert bad.returncode == 2 and "unknown command 'reinstall'" in bad.stderr

    @pytest.mark.parametrize("command", ["install", "uninstall"])
    def test_refuses_without_root(self, command: str) -> None:
        """Without root (and without DESTDIR) nothing is touched and the message says why."""
        env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
        with tempfile.TemporaryDirectory() as tmp:
            if os.geteuid() == 0:
                if shutil.which("setpriv") is None:
                    pytest.skip("setpriv (util-linux) is needed to drop root")
                # A copy nobody can read: the repository may sit in root's home.
                os.chmod(tmp, 0o755)
                script = Path(tmp) / "service.sh"
                shutil.copy2(SCRIPT, script)
                prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            else:
                script, prefix = SCRIPT, []
            result = subprocess.run(
                [*prefix, "bash", str(script), command], capture_output=True, text=True, env=env
            )
        assert result.returncode != 0
        # root itself may have no sudo: both ways are named
        assert f"as root: make {command}; otherwise: sudo make {command}" in result.stderr


def fake_python(folder: Path, script: str) -> Path:
    """An executable ``python`` in ``folder`` that runs this shell ``script``."""
    folder.mkdir(parents=True, exist_ok=True)
    python = folder / "python"
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(0o755)
    return python


class TestChecksComeFirst:
    """A Python the install cannot use stops it before anything is created."""

    def test_a_python_older_than_3_11(self, tmp_path: Path) -> None:
        """Python 3.9: refused with its version named, the staging tree left empty."""
        old = fake_python(
            tmp_path / "bin", '[ "$1" = -V ] && echo "Python 3.9.2" && exit 0\nexit 1\n'
        )
        root = tmp_path / "root"
        result = run_script("install", destdir=root, PYTHON=str(old))
        assert result.returncode == 1, result.stdout
        assert "needs Python 3.11 or newer" in result.stderr and "3.9.2" in result.stderr
        assert "Nothing was installed" in result.stderr
        assert list(root.iterdir()) == []

    def test_a_python_without_the_venv_module(self, tmp_path: Path) -> None:
        """A Python without ensurepip (Debian's python3 without python3-venv) with APT=0:
        refused, saying which package is missing, before the venv or any file is made."""
        hidden = tmp_path / "hide"
        hidden.mkdir()
        (hidden / "ensurepip.py").write_text("raise ImportError('split off into python3-venv')\n")
        python = fake_python(tmp_path / "bin", f'PYTHONPATH={hidden} exec {sys.executable} "$@"\n')
        root = tmp_path / "root"
        result = run_script("install", destdir=root, PYTHON=str(python))
        assert result.returncode == 1, result.stdout
        assert "has no venv module" in result.stderr and "python3-venv" in result.stderr
        assert list(root.iterdir()) == []


class TestStagedInstall:
    def test_layout(self, staged: Path) -> None:
        """Unit, models, README and configuration land where the unit expects them."""
        unit = staged / "etc/systemd/system/asd-edge.service"
        assert unit.read_bytes() == UNIT_FILE.read_bytes()
        web_unit = staged / "etc/systemd/system/asd-edge-web.service"
        assert web_unit.read_bytes() == WEB_UNIT_FILE.read_bytes()
        for name in ("level.onnx", "level.md", "demo.onnx", "demo.md"):
            assert (staged / MODELS.lstrip("/") / name).read_bytes() == (
                REPO / "models" / name
            ).read_bytes()
        assert (staged / "opt/asd-edge/README.md").is_file()
        config = staged / "etc/asd-edge/config.yaml"
        dist = staged / "etc/asd-edge/config.yaml.dist"
        assert config.read_bytes() == dist.read_bytes()
        assert stat.S_IMODE(config.stat().st_mode) == 0o640  # may hold the MQTT password
        assert stat.S_IMODE(dist.stat().st_mode) == 0o644
        assert not (staged / "var/lib/asd-edge").exists()  # systemd creates it (StateDirectory)

    def test_venv_runs_asd_edge(self, staged: Path) -> None:
        """The venv's asd-edge script works, and names the interpreter at its final
        place (/opt/asd-edge/venv), not in the staging directory."""
        venv = staged / VENV.lstrip("/")
        script = venv / "bin" / "asd-edge"
        assert script.read_text().splitlines()[0] == f"#!{VENV}/bin/python"
        assert not (venv / "bin" / "asd-train").exists()  # no training stack on the device
        result = subprocess.run(
            [str(venv / "bin" / "python"), str(script), "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert "usage: asd-edge" in result.stdout
        assert str(staged) not in (venv / "pyvenv.cfg").read_text()

    def test_installed_config_passes_check_config(self, staged: Path, tmp_path: Path) -> None:
        """The installed configuration names the installed model copy (the shipped one
        says ../models/, which would be /etc/models), and check-config accepts it once
        the staging prefix is put in front of /opt."""
        config = staged / "etc/asd-edge/config.yaml"
        models = [m["model"] for m in yaml.safe_load(config.read_text())["monitors"]]
        assert models == [f"{MODELS}/level.onnx"]
        assert (staged / models[0].lstrip("/")).is_file()
        text = config.read_text().replace("/opt/asd-edge/", f"{staged}/opt/asd-edge/")
        text = text.replace("state_dir: /var/lib/asd-edge", f"state_dir: {tmp_path / 'state'}")
        (tmp_path / "config.yaml").write_text(text)
        venv = staged / VENV.lstrip("/")
        result = subprocess.run(
            [str(venv / "bin/python"), str(venv / "bin/asd-edge"), "check-config"],
            capture_output=True,
            text=True,
            env={**os.environ, "ASD_EDGE_CONFIG": str(tmp_path / "config.yaml")},
        )
        assert result.returncode == 0, result.stderr
        assert f"{staged}/opt/asd-edge/models/level.onnx" in result.stdout

    def test_reinstall_keeps_edited_config(self, tmp_path: Path) -> None:
        """Installing again (through make) keeps the user's config.yaml and refreshes
        config.yaml.dist; uninstall keeps state and configuration unless PURGE=1."""
        if shutil.which("make") is None:
            pytest.skip("make is not installed")
        root = tmp_path / "root"
        staged_install(root, via_make=True)
        config = root / "etc/asd-edge/config.yaml"
        dist = root / "etc/asd-edge/config.yaml.dist"
        shipped = dist.read_text()
        edited = config.read_text().replace("host: localhost", "host: broker.example")
        config.write_text(edited)
        dist.write_text("stale\n")
        again = staged_install(root, via_make=True)
        assert "kept" in again.stdout and "diff -u" in again.stdout
        assert config.read_text() == edited
        assert dist.read_text() == shipped

        clip = root / "var/lib/asd-edge/clips/main/a.wav"
        clip.parent.mkdir(parents=True)
        clip.write_bytes(b"RIFF")
        result = run_script("uninstall", destdir=root, via_make=True)
        assert result.returncode == 0, result.stderr
        assert not (root / "opt/asd-edge").exists()
        assert not (root / "etc/systemd/system/asd-edge.service").exists()
        assert clip.read_bytes() == b"RIFF" and config.read_text() == edited
        result = run_script("uninstall", destdir=root, via_make=True, PURGE="1")
        assert result.returncode == 0, result.stderr
        assert not (root / "var/lib/asd-edge").exists()
        assert not (root / "etc/asd-edge").exists()


# --- The real thing: as root, on this machine (CI: a throwaway one) ---

REAL_PATHS = [
    Path("/opt/asd-edge"),
    Path("/etc/asd-edge"),
    Path("/var/lib/asd-edge"),
    Path("/etc/systemd/system/asd-edge.service"),
]


def user_exists(name: str) -> bool:
    """Whether the system knows this user."""
    return subprocess.run(["id", "-u", name], capture_output=True).returncode == 0


def service_python() -> str:
    """A Python of this minor version that the service user can run (not in /root
    or /home, which the unit hides), or skip."""
    candidates = [
        str(Path(getattr(sys, "_base_executable", sys.executable)).resolve()),
        f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
    ]
    for python in candidates:
        if Path(python).is_file() and not python.startswith(("/root/", "/home/")):
            check = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
                 f"import sys; sys.path.insert(0, {SITE_PACKAGES!r}); "
                 "import numpy, onnxruntime, yaml, structlog, paho.mqtt, sounddevice"],
                capture_output=True,
            )  # fmt: skip
            if check.returncode == 0:
                return python
    pytest.skip(
        f"no Python {sys.version_info.major}.{sys.version_info.minor} outside /root and /home "
        f"that another user can run with the packages in {SITE_PACKAGES}"
    )


def remove_real_install() -> None:
    """Uninstall with PURGE=1, then remove whatever is left, script or no script."""
    run_script("uninstall", PURGE="1")
    if user_exists("asd-edge"):
        subprocess.run(["userdel", "asd-edge"], capture_output=True)
    for path in [*REAL_PATHS, Path("/etc/systemd/system/multi-user.target.wants/asd-edge.service")]:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


@pytest.fixture
def bare_machine() -> Iterator[None]:
    """Root on a Linux machine without asd-edge, left without it however the test ends."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a real install needs root on Linux (CI runs as root)")
    for tool in ("useradd", "userdel", "runuser", "setpriv", "systemctl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    present = [str(p) for p in REAL_PATHS if p.exists()]
    if present or user_exists("asd-edge"):
        what = ", ".join(present) or "user asd-edge"
        pytest.skip(f"asd-edge is already installed here ({what}): left alone")
    try:
        yield
    finally:
        remove_real_install()


@pytest.fixture
def real_install(bare_machine: None) -> str:
    """A machine to install on for real and the Python the service can run there."""
    return service_python()


def test_real_install_refuses_a_python_the_service_cannot_run(
    bare_machine: None, tmp_path: Path
) -> None:
    """`make install` as root with a Python under /home (pyenv, conda), which the service
    cannot run (ProtectHome=yes): refused before the user, the venv or any file exists."""
    python = fake_python(
        tmp_path / "bin",
        'case "$2" in *realpath*) echo /home/ada/.pyenv/versions/3.12.1/bin/python3.12;; esac\n'
        "exit 0\n",
    )
    result = run_script("install", via_make=True, PYTHON=str(python))
    assert result.returncode != 0, result.stdout
    assert "which the service cannot run" in result.stderr, result.stderr
    assert "Nothing was installed" in result.stderr and result.stdout == ""
    assert not user_exists("asd-edge")
    assert [p for p in REAL_PATHS if p.exists()] == []


@pytest.mark.slow
def test_real_install_and_uninstall(real_install: str) -> None:
    """`make install` as root: the user, its files and permissions, the unit enabled
    (offline where systemd is not running); the service user can check its config;
    `make uninstall` removes all but state and configuration, PURGE=1 those too."""
    shared_venv(Path(VENV), python=real_install)
    result = run_script("install", via_make=True, PIP_ARGS=OFFLINE_PIP_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    if not Path("/run/systemd/system").is_dir():
        assert "systemd is not running here" in result.stderr

    user = pwd.getpwnam("asd-edge")
    assert "asd-edge" in grp.getgrnam("audio").gr_mem
    assert (user.pw_dir, Path(user.pw_shell).name) == ("/var/lib/asd-edge", "nologin")
    state = Path("/var/lib/asd-edge").stat()
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (user.pw_uid, 0o750)
    config = Path("/etc/asd-edge/config.yaml")
    assert config.group() == "asd-edge" and stat.S_IMODE(config.stat().st_mode) == 0o640
    enabled = subprocess.run(
        ["systemctl", "is-enabled", "asd-edge"], capture_output=True, text=True
    )
    assert enabled.stdout.strip() == "enabled"
    check = subprocess.run(
        ["runuser", "-u", "asd-edge", "--", f"{VENV}/bin/asd-edge", "check-config"],
        capture_output=True,
        text=True,
        env={**os.environ, "ASD_EDGE_CONFIG": str(config)},
    )
    assert check.returncode == 0, check.stderr
    assert f"{MODELS}/level.onnx" in check.stdout

    again = run_script("install", via_make=True, PIP_ARGS=OFFLINE_PIP_ARGS)
    assert again.returncode == 0, again.stderr
    assert "user asd-edge exists" in again.stdout

    result = run_script("uninstall", via_make=True)
    assert result.returncode == 0, result.stdout + result.stderr
    if not Path("/run/systemd/system").is_dir():  # nothing ran, so nothing was stopped
        assert "disabled asd-edge.service (systemd is not running here" in result.stdout
        assert "stopped" not in result.stdout
    assert not user_exists("asd-edge")
    assert not Path("/opt/asd-edge").exists()
    assert not Path("/etc/systemd/system/asd-edge.service").exists()
    assert not Path("/etc/systemd/system/multi-user.target.wants/asd-edge.service").is_symlink()
    assert config.is_file() and Path("/var/lib/asd-edge").is_dir()
    result = run_script("uninstall", via_make=True, PURGE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not Path("/etc/asd-edge").exists() and not Path("/var/lib/asd-edge").exists()
