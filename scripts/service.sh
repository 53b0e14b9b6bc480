#!/usr/bin/env bash
# Install or uninstall asd-edge as a systemd service; `make install` and
# `make uninstall` (as root, or through sudo) call this. Run with --help for what it does.
set -euo pipefail

readonly PREFIX=/opt/asd-edge
readonly VENV=$PREFIX/venv
readonly MODELS=$PREFIX/models
readonly CONF_DIR=/etc/asd-edge
readonly STATE_DIR=/var/lib/asd-edge
readonly UNIT_DIR=/etc/systemd/system
readonly UNIT=asd-edge.service
readonly WEB_UNIT=asd-edge-web.service
readonly SERVICE_USER=asd-edge
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
PROG="scripts/$(basename "$0")"
readonly PROG

usage() {
  cat <<EOF
usage: $PROG install | uninstall | --help

install    (idempotent) as root:
  - checks first, before it creates anything: a Python 3.11 or newer with the
    venv module (ensurepip) that the service user can run (not in /root or
    /home), PortAudio (or apt-get to install it), useradd, systemctl; a check
    that fails stops it with the reason, nothing changed;
  - installs the missing system packages with apt-get (libportaudio2, and
    python3-venv when the venv module is missing), unless APT=0;
  - creates the system user $SERVICE_USER (no login shell, home $STATE_DIR,
    supplementary group audio);
  - creates the virtual environment $VENV (or reuses the one there) and
    installs the daemon into it with its dependencies only (no training stack);
  - copies the models (models/*.onnx and their cards) to $MODELS and this
    README to $PREFIX;
  - writes $CONF_DIR/config.yaml from config/asd-edge.yaml, its model paths
    pointed at $MODELS, ONLY if that file does not exist yet (your edits are
    kept), and always refreshes $CONF_DIR/config.yaml.dist beside it;
  - installs $UNIT_DIR/$UNIT, reloads systemd and enables the unit. It does
    not start it unless START=1 (then it restarts it, e.g. after an upgrade).
    Where systemd is installed but not running (a container, a chroot) the
    unit is enabled offline and starts at the next boot.
uninstall  as root: stops (where systemd runs) and disables the unit, removes
  it, $PREFIX and the user $SERVICE_USER; keeps $STATE_DIR (clips, outbox,
  pushed models and their replay markers: a reinstall refuses old signed pushes
  as before) and $CONF_DIR unless PURGE=1 (then removes them and the
  unit's drop-ins too).

As root: make install. Otherwise: sudo make install.

Environment variables (or make variables: make install START=1):
  DESTDIR=DIR   stage into DIR instead of / (packaging, tests): no root needed,
                no user, no apt, no systemctl; venv scripts are rewritten to
                run from $VENV once the tree is copied to /.
  START=1       install: (re)start the service after installing.
  PURGE=1       uninstall: also remove $STATE_DIR, $CONF_DIR and drop-ins.
  PYTHON=EXE    interpreter (3.11 or newer) the venv is made from (python3).
  VENV_ARGS=..  extra arguments to \`python -m venv\`, e.g. --system-site-packages
                to use distribution packages (python3-numpy, ...).
  PIP_ARGS=..   extra arguments to \`pip install\`, e.g. for an offline install:
                "--no-index --find-links /path/to/wheels"; with
                "--no-index --no-build-isolation" and a venv prepared in
                $VENV beforehand (an existing one is reused, only asd-edge
                is reinstalled), no network is needed at all (the tests do so).
  APT=0         do not install the system packages the daemon needs
                (libportaudio2; python3-venv to create the venv) with apt-get:
                a missing PortAudio is then only warned about, a missing venv
                module stops the install before it starts.
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

say() { echo "==> $*"; }

STAGED=0
D=""
# What goes before a command that needs root, in the messages: sudo for whoever came
# through sudo, nothing for root itself (which may have no sudo at all).
if [ -n "${SUDO_USER:-}" ]; then AS_ROOT="sudo "; else AS_ROOT=""; fi
readonly AS_ROOT

setup_destdir() {
  local dest=${DESTDIR:-}
  dest=${dest%/}
  while [ "${dest%/}" != "$dest" ]; do dest=${dest%/}; done
  if [ -n "$dest" ]; then
    mkdir -p "$dest"
    D=$(cd "$dest" && pwd)
    STAGED=1
  fi
}

require_root() {
  if [ "$STAGED" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "$1 must run as root (as root: make $1; otherwise: sudo make $1), or stage it" \
      "into a directory with DESTDIR=DIR"
  fi
}

systemd_running() { [ -d /run/systemd/system ]; }

python_ok() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

# Whether "$1" can make a virtual environment with pip in it (Debian and Ubuntu
# ship ensurepip, which venv needs, apart: python3-venv).
python_has_venv() { "$1" -c 'import ensurepip, venv' >/dev/null 2>&1; }

# The file "$1" really runs (through pyenv shims and symlinks).
python_real() { "$1" -c 'import os, sys; print(os.path.realpath(sys.executable))'; }

have_apt() { [ "${APT:-1}" != 0 ] && command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; }

deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

portaudio_present() {
  if command -v dpkg-query >/dev/null; then
    deb_installed libportaudio2
  else
    ldconfig -p 2>/dev/null | grep -q 'libportaudio\.so\.2'
  fi
}

NEW_VENV=0   # preflight: 1 when the venv is to be made (none usable is there)
APT_NEEDED="" # preflight: the Debian packages to install before anything else

preflight() {
  # Everything install needs, checked before it creates or installs anything, so
  # that a check that fails leaves the machine as it was.
  local venv=$D$VENV python=${PYTHON:-python3} real
  if [ -e "$venv/bin/python" ] && python_ok "$venv/bin/python"; then
    real=$(readlink -f "$venv/bin/python")
  else
    NEW_VENV=1
    command -v "$python" >/dev/null || die "PYTHON=$python: not found. Nothing was installed."
    python_ok "$python" ||
      die "asd-edge needs Python 3.11 or newer; $python is $("$python" -V 2>&1)." \
        "Set PYTHON=python3.11 (or newer). Nothing was installed."
    real=$(python_real "$python")
    if ! python_has_venv "$python"; then
      if [ "$STAGED" = 0 ] && have_apt; then
        APT_NEEDED="$APT_NEEDED python3-venv"
      else
        die "$python ($real) has no venv module with ensurepip, so it cannot make" \
          "$venv (on Debian/Ubuntu: apt-get install python3-venv). Nothing was installed."
      fi
    fi
  fi
  [ "$STAGED" = 0 ] || return 0
  # The service runs as $SERVICE_USER with /root and /home hidden (ProtectHome=yes):
  # an interpreter from pyenv or conda there cannot start.
  case "$real" in
    /root/* | /home/* | /run/user/*)
      if [ "$NEW_VENV" = 1 ]; then
        die "$python is $real, which the service cannot run (ProtectHome=yes hides /root" \
          "and /home). Use a system Python: PYTHON=/usr/bin/python3. Nothing was installed."
      fi
      die "$venv/bin/python is $real, which the service cannot run (ProtectHome=yes hides" \
        "/root and /home). Use a system Python: rm -rf $venv; then PYTHON=/usr/bin/python3." \
        "Nothing was installed."
      ;;
  esac
  command -v useradd >/dev/null ||
    die "useradd not found: cannot create the user $SERVICE_USER. Nothing was installed."
  command -v systemctl >/dev/null ||
    die "systemctl not found: this installs a systemd service. Without systemd, stage the" \
      "files with DESTDIR=DIR and run $VENV/bin/asd-edge run your own way. Nothing was installed."
  if ! portaudio_present; then
    if have_apt; then
      APT_NEEDED="libportaudio2$APT_NEEDED"
    elif [ "${APT:-1}" = 0 ]; then
      echo "warning: PortAudio (libportaudio2) is not installed and APT=0: the daemon" \
        "cannot open a microphone until it is" >&2
    else
      die "PortAudio (libportaudio.so.2) not found and there is no apt-get here: install" \
        "PortAudio with this system's package manager first. Nothing was installed."
    fi
  fi
}

apt_install() {
  # Install the Debian packages "$@" (preflight found them missing).
  [ "$#" -gt 0 ] || return 0
  say "installing system packages: $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_user() {
  getent group audio >/dev/null || groupadd --system audio
  if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    usermod -a -G audio "$SERVICE_USER"
    say "user $SERVICE_USER exists (in group audio)"
  else
    local shell=/usr/sbin/nologin
    [ -x "$shell" ] || shell=$(command -v nologin || echo /bin/false)
    useradd --system --user-group --groups audio --home-dir "$STATE_DIR" --no-create-home \
      --shell "$shell" --comment "asd-edge acoustic anomaly detection" "$SERVICE_USER"
    say "created the system user $SERVICE_USER (group audio, home $STATE_DIR)"
  fi
  # A state directory kept from an earlier install belongs to the old user id.
  install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
  if [ "$(stat -c %U "$STATE_DIR")" != "$SERVICE_USER" ] ||
    [ -n "$(find "$STATE_DIR" ! -user "$SERVICE_USER" -print -quit)" ]; then
    chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
  fi
}

make_venv() {
  local venv=$D$VENV python=${PYTHON:-python3}
  if [ "$NEW_VENV" = 0 ]; then
    say "reusing the virtual environment $venv"
  else
    python_has_venv "$python" ||
      die "$python still has no venv module after apt-get install python3-venv (is it" \
        "the system's python3?). Only system packages were installed."
    rm -rf "$venv"
    say "creating the virtual environment $venv"
    # shellcheck disable=SC2086 # VENV_ARGS is a list of arguments
    "$python" -m venv ${VENV_ARGS:-} "$venv" ||
      die "could not create $venv (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
  # Build from a copy holding only the daemon: nothing is written into the
  # repository, and the training package (torch, librosa) stays off the device.
  local src
  src=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: src is local
  trap "rm -rf '$src'" EXIT
  tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md asd_edge |
    tar -C "$src" -xf -
  say "installing asd-edge and its dependencies into $venv (the first time, pip downloads" \
    "numpy, scipy and onnxruntime: a few minutes on a small board)"
  # shellcheck disable=SC2086 # PIP_ARGS is a list of arguments
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-warn-script-location -q \
    --upgrade ${PIP_ARGS:-} "$src[web]"
  rm -rf "$src"
  trap - EXIT
  # asd-train needs the training stack, which the device does not get.
  rm -f "$venv/bin/asd-train"
  "$venv/bin/python" -c 'import asd_edge.cli' ||
    die "the daemon does not import in $venv (see the error above)"
  if [ "$STAGED" = 0 ] && command -v runuser >/dev/null; then
    runuser -u "$SERVICE_USER" -- "$venv/bin/python" -c 'import asd_edge.cli' ||
      die "the user $SERVICE_USER cannot run the daemon from $venv (see the error above)"
  fi
  if [ "$STAGED" = 1 ]; then
    # Scripts name their interpreter by absolute path: point them at where the
    # tree will live, not at the staging directory.
    # (pip writes a `#!/bin/sh` + exec preamble instead for long paths.)
    local f
    for f in "$venv"/bin/*; do
      if [ -f "$f" ] && [ ! -L "$f" ] && [ "$(head -c 2 "$f")" = "#!" ]; then
        sed -i "1,3s|$venv/bin/|$VENV/bin/|" "$f"
      fi
    done
    find "$venv/bin" -maxdepth 1 -type f -iname 'activate*' -exec sed -i "s|$venv|$VENV|g" {} +
    sed -i "s|$venv|$VENV|g" "$venv/pyvenv.cfg"
  fi
}

install_files() {
  local models=$D$MODELS conf=$D$CONF_DIR rendered f
  install -d -m 0755 "$D$PREFIX" "$models" "$conf"
  for f in "$REPO"/models/*.onnx "$REPO"/models/*.md; do
    install -m 0644 "$f" "$models/"
  done
  install -m 0644 "$REPO/README.md" "$D$PREFIX/README.md"
  say "models in $models, README in $D$PREFIX"

  # The shipped configuration names its models relative to itself
  # (../models/level.onnx); installed, they live in $MODELS.
  rendered=$(sed "s|\.\./models/|$MODELS/|g" "$REPO/config/asd-edge.yaml")
  if grep -qE '^[[:space:]]*(- )?model:[[:space:]]*[^/[:space:]]' <<<"$rendered"; then
    die "config/asd-edge.yaml names a model by a relative path outside models/: install cannot place it"
  fi
  printf '%s\n' "$rendered" >"$conf/config.yaml.dist.tmp"
  chmod 0644 "$conf/config.yaml.dist.tmp"
  mv -f "$conf/config.yaml.dist.tmp" "$conf/config.yaml.dist"
  if [ -e "$conf/config.yaml" ]; then
    say "kept $conf/config.yaml (yours); the shipped one is config.yaml.dist beside it"
    # a reinstall after an uninstall made a new group asd-edge, maybe with another gid:
    # the kept file must stay readable by the service
    [ "$STAGED" = 1 ] || chgrp "$SERVICE_USER" "$conf/config.yaml"
    if ! cmp -s "$conf/config.yaml" "$conf/config.yaml.dist"; then
      echo "    see what differs: diff -u $conf/config.yaml.dist $conf/config.yaml"
    fi
  else
    # Group asd-edge may read it, nobody else: it may hold the MQTT password.
    install -m 0640 "$conf/config.yaml.dist" "$conf/config.yaml"
    [ "$STAGED" = 1 ] || chgrp "$SERVICE_USER" "$conf/config.yaml"
    say "wrote $conf/config.yaml"
  fi

  install -d -m 0755 "$D$UNIT_DIR"
  install -m 0644 "$REPO/systemd/$UNIT" "$D$UNIT_DIR/$UNIT"
  install -m 0644 "$REPO/systemd/$WEB_UNIT" "$D$UNIT_DIR/$WEB_UNIT"
  say "installed $D$UNIT_DIR/$UNIT and $WEB_UNIT (the dashboard: off until" \
    "systemctl enable --now asd-edge-web)"
}

enable_unit() {
  if systemd_running; then
    systemctl daemon-reload
    systemctl enable --quiet "$UNIT"
    say "enabled $UNIT (it starts at boot)"
    if [ "${START:-0}" = 1 ]; then
      systemctl restart "$UNIT"
      say "started $UNIT"
    elif systemctl is-active --quiet "$UNIT"; then
      echo "    $UNIT is running the previous version: ${AS_ROOT}systemctl restart asd-edge"
    fi
  else
    systemctl enable --quiet "$UNIT"
    echo "warning: systemd is not running here (PID 1 is $(ps -o comm= -p 1 2>/dev/null ||
      echo unknown)): $UNIT is enabled but systemd was not reloaded and nothing was" \
      "started; it starts at the next boot under systemd." >&2
    [ "${START:-0}" != 1 ] || echo "warning: START=1 ignored: no systemd to start it with" >&2
  fi
}

next_steps() {
  if [ "$STAGED" = 1 ]; then
    cat <<EOF

Staged into $D. On the target: create the user (useradd --system --user-group
--groups audio --home-dir $STATE_DIR --shell /usr/sbin/nologin $SERVICE_USER),
chgrp $SERVICE_USER $CONF_DIR/config.yaml, systemctl daemon-reload and
systemctl enable $UNIT. The venv needs the same Python at the same path as here.
EOF
    return 0
  fi
  local as_user="runuser -u $SERVICE_USER --"
  [ -z "$AS_ROOT" ] || as_user="sudo -u $SERVICE_USER"
  cat <<EOF

Next:
  1. edit $CONF_DIR/config.yaml: input.device (an ALSA device from
     \`$as_user $VENV/bin/asd-edge devices\`), monitors[].model (your
     model; the shipped level model only hears loudness), mqtt.host
  2. $as_user $VENV/bin/asd-edge check-config
EOF
  if systemd_running; then
    cat <<EOF
  3. ${AS_ROOT}systemctl start asd-edge
  4. systemctl status asd-edge;  journalctl -u asd-edge -f
EOF
  else
    echo "  3. boot this system with systemd: asd-edge starts then"
  fi
}

cmd_install() {
  setup_destdir
  require_root install
  if [ ! -f "$REPO/pyproject.toml" ] || [ ! -f "$REPO/systemd/$UNIT" ]; then
    die "run from a clone of the asd-edge repository ($REPO has no pyproject.toml or systemd/$UNIT)"
  fi
  preflight
  if [ "$STAGED" = 0 ]; then
    # shellcheck disable=SC2086 # one word per package
    apt_install $APT_NEEDED
    ensure_user
  fi
  make_venv
  install_files
  [ "$STAGED" = 1 ] || enable_unit
  next_steps
}

remove_user() {
  if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    userdel "$SERVICE_USER" || die "could not remove the user $SERVICE_USER (a process of it still running?)"
    say "removed the user $SERVICE_USER"
  fi
  if getent group "$SERVICE_USER" >/dev/null; then
    groupdel "$SERVICE_USER" || echo "warning: could not remove the group $SERVICE_USER" >&2
  fi
}

disable_unit() {
  # Stop (where systemd runs) and disable the unit "$1" installed as "$2"; say which.
  local name=$1 file=$2
  if [ "$STAGED" = 1 ] || [ ! -e "$file" ]; then
    return 0
  fi
  if ! command -v systemctl >/dev/null; then
    rm -f "$UNIT_DIR"/*.wants/"$name"
    say "removed the links that enabled $name (no systemctl here: nothing to stop)"
  elif systemd_running; then
    if systemctl disable --now --quiet "$name"; then
      say "stopped and disabled $name"
    else
      echo "warning: could not stop and disable $name" >&2
    fi
  elif systemctl disable --quiet "$name"; then
    say "disabled $name (systemd is not running here: nothing was running to stop)"
  else
    echo "warning: could not disable $name" >&2
  fi
}

cmd_uninstall() {
  setup_destdir
  require_root uninstall
  local unit=$D$UNIT_DIR/$UNIT web_unit=$D$UNIT_DIR/$WEB_UNIT path removed="" kept=""
  disable_unit "$WEB_UNIT" "$web_unit"
  disable_unit "$UNIT" "$unit"
  for path in "$web_unit" "$unit" "$D$PREFIX"; do
    if [ -e "$path" ]; then
      rm -rf "$path"
      removed="$removed $path"
    fi
  done
  if [ "${PURGE:-0}" = 1 ] && [ -e "$unit.d" ]; then
    rm -rf "$unit.d"
    removed="$removed $unit.d"
  fi
  if [ "$STAGED" = 0 ] && systemd_running; then
    systemctl daemon-reload
    systemctl reset-failed "$UNIT" >/dev/null 2>&1 || true
  fi
  if [ -n "$removed" ]; then
    say "removed$removed"
  else
    say "no unit and no $D$PREFIX to remove"
  fi
  [ "$STAGED" = 1 ] || remove_user
  for path in "$D$STATE_DIR" "$D$CONF_DIR"; do
    if [ ! -e "$path" ]; then
      continue
    elif [ "${PURGE:-0}" = 1 ]; then
      rm -rf "$path"
      say "purged $path"
    elif [ "$path" = "$D$STATE_DIR" ]; then
      kept="$kept $path (clips, outbox, pushed and learned models, replay markers)"
    else
      kept="$kept $path (the configuration)"
    fi
  done
  if [ -n "$kept" ]; then
    say "kept$kept; PURGE=1 removes them"
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  uninstall) cmd_uninstall ;;
  -h | --help | help) usage ;;
  "") usage >&2 && exit 2 ;;
  *) echo "$PROG: unknown command '$1'" >&2 && usage >&2 && exit 2 ;;
esac
