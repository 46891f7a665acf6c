#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for the database-failure tests
# (tests/database_faults.rs): a primary that a test may crash and restart,
# and a synchronous streaming standby that it may promote. They listen on
# 127.0.0.1 only, trust local logins, and live under
# ${SINKGATE_PG_CLUSTERS:-/tmp/sinkgate-clusters}/NAME, never touching the
# machine's own cluster.
#
#   pg-cluster.sh create NAME PORT            a new primary (replaces NAME), started,
#                                             with role and database `sinkgate`
#   pg-cluster.sh standby NAME PORT UPSTREAM [async]
#                                             a standby streaming from the primary reached
#                                             on port UPSTREAM (a proxy may sit between),
#                                             synchronous unless `async` (replaces NAME)
#   pg-cluster.sh start NAME                  start (waits until it accepts logins)
#   pg-cluster.sh crash NAME                  `pg_ctl stop -m immediate`: no shutdown
#                                             checkpoint, crash recovery on start
#   pg-cluster.sh kill NAME                   SIGKILL the postmaster and its processes
#   pg-cluster.sh promote NAME                promote a standby to primary
#   pg-cluster.sh destroy NAME                stop it and delete its files
#
# Installs PostgreSQL from Debian's packages when it is missing (through
# scripts/postgres.sh's logic). As root, the clusters run as the `postgres`
# OS user (initdb refuses root); otherwise as the calling user.
set -euo pipefail

log() { echo "[pg-cluster.sh] $*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  log "PostgreSQL is not installed: installing it from Debian's packages"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
BIN=/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -n 1)/bin
ROOT=${SINKGATE_PG_CLUSTERS:-/tmp/sinkgate-clusters}

if [ "$(id -u)" = 0 ]; then
  OWNER=postgres
  as_owner() { runuser -u postgres -- "$@"; }
else
  OWNER=$(id -un)
  as_owner() { "$@"; }
fi

data_dir() { echo "$ROOT/$1"; }

prepare_root() {
  mkdir -p "$ROOT"
  chmod 0755 "$ROOT"
}

# Stops NAME at once if it runs and removes its files.
destroy() {
  local dir
  dir=$(data_dir "$1")
  if [ -f "$dir/postmaster.pid" ]; then
    as_owner "$BIN/pg_ctl" -D "$dir" stop -m immediate -w >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

wait_ready() {
  local port=$1
  for _ in $(seq 1 120); do
    if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port"; then return 0; fi
    sleep 0.25
  done
  log "the cluster on port $port did not come up"
  return 1
}

port_of() {
  sed -n "s/^port = \([0-9]*\).*/\1/p" "$(data_dir "$1")/postgresql.conf" | tail -n 1
}

start() {
  local dir
  dir=$(data_dir "$1")
  as_owner "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" start -w -t 60 >/dev/null
  wait_ready "$(port_of "$1")"
}

# Settings shared by primaries and standbys (a standby keeps them when it
# is promoted).
configure() {
  local dir=$1 port=$2
  cat >>"$dir/postgresql.conf" <<EOF
# --- sinkgate test cluster ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
max_connections = 100
shared_buffers = 32MB
wal_level = replica
max_wal_senders = 5
hot_standby = on
logging_collector = off
EOF
}

command=${1:-}
case "$command" in
  create)
    name=$2 port=$3
    prepare_root
    destroy "$name"
    dir=$(data_dir "$name")
    install -d -m 0700 -o "$OWNER" "$dir"
    as_owner "$BIN/initdb" -D "$dir" -U postgres --auth-local=trust --auth-host=trust \
      --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    configure "$dir" "$port"
    start "$name"
    "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt \
      -c "CREATE ROLE sinkgate LOGIN CREATEDB" -c "CREATE DATABASE sinkgate OWNER sinkgate" >/dev/null
    ;;
  standby)
    name=$2 port=$3 primary=$4 mode=${5:-sync}
    prepare_root
    destroy "$name"
    dir=$(data_dir "$name")
    install -d -m 0700 -o "$OWNER" "$dir"
    as_owner "$BIN/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$dir" \
      -R -X stream --checkpoint=fast -d "application_name=$name"
    # The base backup carries the primary's settings: this one's own port
    # comes last and wins.
    configure "$dir" "$port"
    start "$name"
    if [ "$mode" = sync ]; then
      # Commits on the primary now wait until this standby has flushed them.
      "$BIN/psql" -h 127.0.0.1 -p "$primary" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt \
        -c "ALTER SYSTEM SET synchronous_standby_names = '\"$name\"'" -c "SELECT pg_reload_conf()" >/dev/null
      wanted=sync
    else
      wanted=async
    fi
    for _ in $(seq 1 120); do
      state=$("$BIN/psql" -h 127.0.0.1 -p "$primary" -U postgres -d postgres -qAt \
        -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$name'")
      [ "$state" = "$wanted" ] && exit 0
      sleep 0.25
    done
    log "standby $name is not streaming ($wanted)"
    exit 1
    ;;
  start)
    start "$2"
    ;;
  crash)
    as_owner "$BIN/pg_ctl" -D "$(data_dir "$2")" stop -m immediate -w >/dev/null
    ;;
  kill)
    dir=$(data_dir "$2")
    pid=$(head -n 1 "$dir/postmaster.pid")
    # The postmaster and every backend it started, at once.
    pkill -KILL -P "$pid" || true
    kill -KILL "$pid" || true
    for _ in $(seq 1 120); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    ;;
  promote)
    as_owner "$BIN/pg_ctl" -D "$(data_dir "$2")" promote -w >/dev/null
    # It has no standby of its own yet: commits must not wait for one.
    "$BIN/psql" -h 127.0.0.1 -p "$(port_of "$2")" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt \
      -c "ALTER SYSTEM RESET synchronous_standby_names" -c "SELECT pg_reload_conf()" >/dev/null
    ;;
  destroy)
    destroy "$2"
    ;;
  *)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac
