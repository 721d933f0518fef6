#!/usr/bin/env bash
# Makes sure a PostgreSQL server accepts connections as user postgres on 127.0.0.1:5432, as the tests
# that use the durable job store expect (postgresql://postgres@127.0.0.1:5432/test):
#   - a server already answering there is used as it is;
#   - otherwise an installed Debian cluster on port 5432 is started;
#   - otherwise Debian's postgresql package is installed (without starting its service) and its cluster
#     is started with trust authentication for user postgres on the loopback addresses.
# Then it checks that user postgres can log in over TCP and that the database `test` exists.
#
# Usage: scripts/ensure-postgres.sh
# Environment (optional): TURNOUT_PG_TRUST_LOCAL=1 also adds the loopback trust rule to an existing
# cluster whose authentication refuses postgres; PGPASSWORD is honoured for password authentication.
# Exits non-zero with an explanation when the server cannot be reached or refuses the login.
set -euo pipefail
cd "$(dirname "$0")/.."

host=127.0.0.1
port=5432
log() { printf 'ensure-postgres: %s\n' "$*"; }
die() { printf 'ensure-postgres: ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "'$*' needs root (run as root or with passwordless sudo)"
  fi
}

port_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$host" -p "$port" -t 3
  else
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
  fi
}

wait_ready() {
  local i
  for i in $(seq 1 60); do
    port_ready && return 0
    sleep 0.5
  done
  return 1
}

# Runs one SQL statement as postgres over TCP; prints the result, or the server's error on stderr.
sql() {
  if command -v psql >/dev/null 2>&1; then
    PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$host" -p "$port" -U postgres -d "${2:-postgres}" -tA -c "$1"
  elif [ -x .venv/bin/python ]; then
    .venv/bin/python - "$host" "$port" "${2:-postgres}" "$1" <<'EOF'
import sys
import psycopg
host, port, db, stmt = sys.argv[1:]
with psycopg.connect(host=host, port=int(port), user="postgres", dbname=db, connect_timeout=5,
                     autocommit=True) as conn:
    cur = conn.execute(stmt)
    if cur.description is not None:
        for row in cur.fetchall():
            print("|".join(str(v) for v in row))
EOF
  else
    die "neither psql nor .venv/bin/python (psycopg) is available to check the login"
  fi
}

# The Debian cluster serving port 5432, as "VERSION NAME STATUS", if one exists.
cluster_on_port() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 0
  pg_lsclusters --no-header 2>/dev/null | awk -v p="$port" '$3 == p {print $1, $2, $4; exit}'
}

start_cluster() {  # VERSION NAME
  log "starting cluster $1/$2 (pg_ctlcluster --skip-systemctl-redirect $1 $2 start)"
  if ! as_root pg_ctlcluster --skip-systemctl-redirect "$1" "$2" start; then
    local logf="/var/log/postgresql/postgresql-$1-$2.log"
    [ -r "$logf" ] && tail -n 20 "$logf" >&2
    die "could not start PostgreSQL cluster $1/$2 (log: $logf)"
  fi
}

# Puts "host all postgres <loopback> trust" first in the cluster's pg_hba.conf and reloads it.
trust_loopback() {  # VERSION NAME
  local hba="/etc/postgresql/$1/$2/pg_hba.conf" marker="# added by Turnout scripts/ensure-postgres.sh"
  as_root test -f "$hba" || die "no $hba to configure"
  if ! as_root grep -qF "$marker" "$hba"; then
    log "allowing trust login for user postgres from 127.0.0.1 and ::1 in $hba"
    local tmp
    tmp=$(mktemp)
    {
      echo "$marker"
      echo "host    all    postgres    127.0.0.1/32    trust"
      echo "host    all    postgres    ::1/128         trust"
      as_root cat "$hba"
    } > "$tmp"
    as_root cp "$tmp" "$hba"
    rm -f "$tmp"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$1" "$2" reload
}

install_postgresql() {
  if [ "${TURNOUT_APT_UPDATED:-0}" != 1 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || return $?
  fi
  log "apt-get install postgresql"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
}

created=""  # "VERSION NAME" of a cluster this run installed or created: its authentication is ours to set
if port_ready; then
  log "a server accepts connections on $host:$port"
else
  read -r ver name status <<<"$(cluster_on_port)" || true
  if [ -z "${ver:-}" ]; then
    server_bin=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$server_bin" ]; then
      log "no PostgreSQL server installed: installing Debian's postgresql (service not started)"
      policy=/usr/sbin/policy-rc.d
      backup=""
      if as_root test -e "$policy"; then backup=$(mktemp); as_root cp -p "$policy" "$backup"; fi
      as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
      rc=0
      install_postgresql || rc=$?
      if [ -n "$backup" ]; then as_root cp -p "$backup" "$policy"; rm -f "$backup"
      else as_root rm -f "$policy"
      fi
      [ "$rc" -eq 0 ] || die "installing postgresql failed (exit $rc)"
      read -r ver name status <<<"$(cluster_on_port)" || true
    fi
    if [ -z "${ver:-}" ]; then
      ver=$(ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -n1 | awk -F/ '{print $5}')
      name=main
      log "creating cluster $ver/$name on port $port"
      as_root pg_createcluster -p "$port" "$ver" "$name"
    fi
    created="$ver $name"
  fi
  start_cluster "$ver" "$name"
  wait_ready || die "PostgreSQL cluster $ver/$name started but $host:$port does not accept connections"
  if [ -n "$created" ]; then
    # shellcheck disable=SC2086
    trust_loopback $created
  fi
fi

# --- login check ---------------------------------------------------------------------------------------
if ! err=$(sql 'SELECT 1' 2>&1 >/dev/null); then
  read -r ver name status <<<"$(cluster_on_port)" || true
  if [ "${TURNOUT_PG_TRUST_LOCAL:-0}" = 1 ] && [ -n "${ver:-}" ]; then
    trust_loopback "$ver" "$name"
    err=$(sql 'SELECT 1' 2>&1 >/dev/null) || die "login as postgres still fails after adding trust: $err"
  else
    hba_hint="the server's pg_hba.conf"
    [ -n "${ver:-}" ] && hba_hint="/etc/postgresql/$ver/$name/pg_hba.conf"
    die "$host:$port accepts connections but refuses user postgres:
  $err
The tests connect as postgres@$host:$port without a password. Either
  - allow it: put 'host all postgres 127.0.0.1/32 trust' first in $hba_hint and reload the server
    (or rerun with TURNOUT_PG_TRUST_LOCAL=1 to let this script do that for a local Debian cluster), or
  - give postgres a password and export PGPASSWORD=... before running the tests."
  fi
fi

if [ "$(sql "SELECT 1 FROM pg_database WHERE datname = 'test'")" != 1 ]; then
  log "creating database test"
  sql 'CREATE DATABASE test' >/dev/null
fi
log "ok: postgres@$host:$port accepts logins; database test exists"
