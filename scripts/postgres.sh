#!/usr/bin/env bash
# Makes sure a local PostgreSQL is reachable and that sinkgate can log in to it.
#
# Idempotent; safe to run every time. It
#   1. installs PostgreSQL from Debian's packages when no server is installed,
#   2. starts the local cluster when nothing answers on the port,
#   3. creates the login role and the database (the role may create databases,
#      which `#[sqlx::test]` needs for its per-test databases),
# and prints the DATABASE_URL to use on its last line.
#
# When DATABASE_URL is already set, it is trusted as is and nothing is changed.
set -euo pipefail

if [ -n "${DATABASE_URL:-}" ]; then
  echo "$DATABASE_URL"
  exit 0
fi

PGHOST_=${SINKGATE_PGHOST:-127.0.0.1}
PGPORT_=${SINKGATE_PGPORT:-5432}
ROLE=${SINKGATE_DB_USER:-sinkgate}
PASSWORD=${SINKGATE_DB_PASSWORD:-sinkgate}
DB=${SINKGATE_DB_NAME:-sinkgate}

log() { echo "[postgres.sh] $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Runs a command as the postgres OS user (peer authentication on the socket).
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    sudo -u postgres "$@"
  fi
}

if ! command -v pg_lsclusters >/dev/null 2>&1 && ! pg_isready -q -h "$PGHOST_" -p "$PGPORT_" 2>/dev/null; then
  log "no PostgreSQL server found: installing it from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi

if ! pg_isready -q -h "$PGHOST_" -p "$PGPORT_"; then
  # Start the newest local cluster that is down (Debian layout).
  cluster=$(pg_lsclusters --no-header 2>/dev/null | awk -v port="$PGPORT_" '$3 == port {print $1" "$2}' | tail -n 1)
  if [ -z "$cluster" ]; then
    cluster=$(pg_lsclusters --no-header 2>/dev/null | awk '{print $1" "$2}' | tail -n 1)
  fi
  if [ -z "$cluster" ]; then
    log "no cluster exists: creating one"
    version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
    as_root pg_createcluster "$version" main --port "$PGPORT_" >&2
    cluster="$version main"
  fi
  log "starting cluster $cluster"
  # shellcheck disable=SC2086
  as_root pg_ctlcluster $cluster start >&2 || true
  for _ in $(seq 1 60); do
    pg_isready -q -h "$PGHOST_" -p "$PGPORT_" && break
    sleep 0.5
  done
  pg_isready -q -h "$PGHOST_" -p "$PGPORT_" || { log "PostgreSQL did not come up on $PGHOST_:$PGPORT_"; exit 1; }
fi

# Role and database, created through the local socket as the postgres superuser.
psql_admin() { as_postgres psql -p "$PGPORT_" -v ON_ERROR_STOP=1 -qAt "$@"; }
psql_admin -c "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE \"$ROLE\" LOGIN CREATEDB PASSWORD '$PASSWORD';
  ELSE
    ALTER ROLE \"$ROLE\" LOGIN CREATEDB PASSWORD '$PASSWORD';
  END IF;
END \$\$;" >&2
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE \"$DB\" OWNER \"$ROLE\"" >&2
fi

echo "postgres://$ROLE:$PASSWORD@$PGHOST_:$PGPORT_/$DB"
