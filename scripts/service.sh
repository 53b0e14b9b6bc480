#!/usr/bin/env bash
# Install or uninstall asd-edge as a systemd service; `sudo make install` and
# `sudo make uninstall` call this. Run with --help for what it does.
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
    Where systemd is not running (a container, a chroot) the unit is enabled
    offline and starts at the next boot.
uninstall  as root: stops and disables the unit, removes it, $PREFIX and the
  user $SERVICE_USER; keeps $STATE_DIR (clips, outbox, pushed models and their
  replay markers: a reinstall refuses old signed pushes as before) and
  $CONF_DIR unless PURGE=1 (then removes them and the unit's drop-ins too).

Environment variables (or make variables: sudo make install START=1):
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
                (libportaudio2; python3-venv to create the venv) with apt-get.
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

say() { echo "==> $*"; }

STAGED=0
D=""

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
    die "$1 must run as root: sudo make $1 (or stage it into a directory with DESTDIR=DIR)"
  fi
}

systemd_running() { [ -d /run/systemd/system ]; }

python_ok() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

apt_install() {
  # Install the Debian packages among "$@" that are missing.
  [ "${APT:-1}" != 0 ] || return 0
  if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    echo "note: not a Debian/Ubuntu system; make sure these are installed: $*" >&2
    return 0
  fi
  local missing="" p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  [ -n "$missing" ] || return 0
  say "installing system packages:$missing"
  apt-get update -qq
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

ensure_user() {
  command -v useradd >/dev/null || die "useradd not found: cannot create the user $SERVICE_USER"
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
  if [ -e "$venv/bin/python" ] && python_ok "$venv/bin/python"; then
    say "reusing the virtual environment $venv"
  else
    command -v "$python" >/dev/null || die "PYTHON=$python: not found"
    python_ok "$python" ||
      die "asd-edge needs Python 3.11 or newer; $python is $("$python" -V 2>&1). Set PYTHON=python3.11 (or newer)."
    if [ "$STAGED" = 0 ] && ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
      apt_install python3-venv
    fi
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
  if [ "$STAGED" = 0 ]; then
    # The service runs as $SERVICE_USER with /root and /home hidden
    # (ProtectHome=yes): an interpreter from pyenv or conda there cannot start.
    local real
    real=$(readlink -f "$venv/bin/python")
    case "$real" in
      /root/* | /home/* | /run/user/*)
        die "$venv/bin/python is $real, which the service cannot run (ProtectHome=yes hides" \
          "/root and /home). Use a system Python: rm -rf $venv; then PYTHON=/usr/bin/python3."
        ;;
    esac
    if command -v runuser >/dev/null; then
      runuser -u "$SERVICE_USER" -- "$venv/bin/python" -c 'import asd_edge.cli' ||
        die "the user $SERVICE_USER cannot run the daemon from $venv (see the error above)"
    fi
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
  if ! command -v systemctl >/dev/null; then
    echo "warning: systemctl not found: the unit is installed but not enabled" >&2
    return 0
  fi
  if systemd_running; then
    systemctl daemon-reload
    systemctl enable --quiet "$UNIT"
    say "enabled $UNIT (it starts at boot)"
    if [ "${START:-0}" = 1 ]; then
      systemctl restart "$UNIT"
      say "started $UNIT"
    elif systemctl is-active --quiet "$UNIT"; then
      echo "    $UNIT is running the previous version: sudo systemctl restart asd-edge"
    fi
  else
    systemctl enable --quiet "$UNIT"
    echo "warning: systemd is not running here (PID 1 is $(ps -o comm= -p 1 2>/dev/null || echo unknown)):" \
      "$UNIT is enabled but systemd was not reloaded and nothing was started;" \
      "it starts at the next boot under systemd." >&2
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
  cat <<EOF

Next:
  1. edit $CONF_DIR/config.yaml: input.device (an ALSA device from
     \`$VENV/bin/asd-edge devices\`), monitors[].model (your model; the
     shipped level model only hears loudness), mqtt.host
  2. sudo $VENV/bin/asd-edge check-config --config $CONF_DIR/config.yaml
  3. sudo systemctl start asd-edge
  4. systemctl status asd-edge;  journalctl -u asd-edge -f
EOF
}

cmd_install() {
  setup_destdir
  require_root install
  if [ ! -f "$REPO/pyproject.toml" ] || [ ! -f "$REPO/systemd/$UNIT" ]; then
    die "run from a clone of the asd-edge repository ($REPO has no pyproject.toml or systemd/$UNIT)"
  fi
  if [ "$STAGED" = 0 ]; then
    apt_install libportaudio2
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

cmd_uninstall() {
  setup_destdir
  require_root uninstall
  local unit=$D$UNIT_DIR/$UNIT web_unit=$D$UNIT_DIR/$WEB_UNIT
  if [ "$STAGED" = 0 ] && command -v systemctl >/dev/null && [ -e "$web_unit" ]; then
    if systemd_running; then
      systemctl disable --now --quiet "$WEB_UNIT" || echo "warning: could not stop $WEB_UNIT" >&2
    else
      systemctl disable --quiet "$WEB_UNIT" || echo "warning: could not disable $WEB_UNIT" >&2
    fi
  fi
  rm -f "$web_unit"
  if [ "$STAGED" = 0 ] && command -v systemctl >/dev/null && [ -e "$unit" ]; then
    if systemd_running; then
      systemctl disable --now --quiet "$UNIT" || echo "warning: could not stop/disable $UNIT" >&2
    else
      systemctl disable --quiet "$UNIT" || echo "warning: could not disable $UNIT" >&2
    fi
    say "stopped and disabled $UNIT"
  fi
  rm -f "$unit"
  if [ "${PURGE:-0}" = 1 ]; then
    rm -rf "$unit.d"
  fi
  if [ "$STAGED" = 0 ] && systemd_running; then
    systemctl daemon-reload
    systemctl reset-failed "$UNIT" >/dev/null 2>&1 || true
  fi
  rm -rf "$D$PREFIX"
  say "removed $D$PREFIX and $unit"
  [ "$STAGED" = 1 ] || remove_user
  if [ "${PURGE:-0}" = 1 ]; then
    rm -rf "$D$STATE_DIR" "$D$CONF_DIR"
    say "purged $D$STATE_DIR and $D$CONF_DIR"
  else
    say "kept $D$STATE_DIR (clips, outbox, pushed models, replay markers) and $D$CONF_DIR;" \
      "PURGE=1 removes them"
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  uninstall) cmd_uninstall ;;
  -h | --help | help) usage ;;
  "") usage >&2 && exit 2 ;;
  *) echo "$PROG: unknown command '$1'" >&2 && usage >&2 && exit 2 ;;
esac
