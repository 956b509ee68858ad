#!/usr/bin/env bash
# Make a local PostgreSQL available to the test suite and print its URL on stdout.
#
# As root on Debian/Ubuntu: installs the `postgresql` package if missing (and `kcat`, the
# librdkafka producer some tests use), starts the default cluster if it is down, and creates
# the role `outreach` (password `outreach`, CREATEDB: tests make a database each) and the
# database `outreach_test`. Idempotent: run it as often as you like.
# Not root: checks the database is reachable, else explains how to provide one.
# Messages go to stderr; stdout carries the URL only, so `url=$(bash scripts/postgres.sh)`.
set -euo pipefail
# Whatever the tools print (pg_ctlcluster says "Removed stale pid file." on stdout) goes to
# stderr; the URL alone goes to the caller's stdout, kept here as fd 3.
exec 3>&1 1>&2

ROLE=outreach
PASSWORD=outreach
DATABASE=outreach_test
HOST=127.0.0.1

say() { echo "postgres.sh: $*" >&2; }

reachable() { # port
    command -v psql >/dev/null &&
        PGPASSWORD=$PASSWORD psql -h "$HOST" -p "$1" -U "$ROLE" -d "$DATABASE" -qtAc 'SELECT 1' \
            >/dev/null 2>&1
}

as_postgres() {
    (cd / && runuser -u postgres -- "$@")
}

sql() { # statement -> single value
    as_postgres psql -X -v ON_ERROR_STOP=1 -qtAc "$1"
}

if [ "$(id -u)" -ne 0 ]; then
    if reachable 5432; then
        echo "postgresql+psycopg://$ROLE:$PASSWORD@$HOST:5432/$DATABASE" >&3
        exit 0
    fi
    say "no PostgreSQL for the tests at $HOST:5432 (role $ROLE, database $DATABASE), and"
    say "installing one needs root. Either run this script as root (Debian/Ubuntu), or point"
    say "the tests at a server where a role may create databases:"
    say "  export OUTREACH_TEST_POSTGRES_URL=postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
    exit 1
fi

missing=()
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v kcat >/dev/null || missing+=(kcat)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 3>&-
fi

# the first cluster (Debian creates <version>/main when the package is installed)
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n 1) || true
if [ -z "${version:-}" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    say "no cluster: creating $version/main"
    pg_createcluster "$version" main >/dev/null 3>&-
    read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n 1)
fi
if [ "$status" != online ]; then
    say "starting cluster $version/$cluster on port $port"
    pg_ctlcluster "$version" "$cluster" start 3>&-  # the server must not hold the caller's pipe
fi
for _ in $(seq 100); do
    pg_isready -q -h "$HOST" -p "$port" && break
    sleep 0.1
done
pg_isready -q -h "$HOST" -p "$port" || { say "cluster $version/$cluster does not answer"; exit 1; }

export PGPORT=$port
if [ "$(sql "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    say "creating role $ROLE"
    sql "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'" >/dev/null
else
    sql "ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'" >/dev/null
fi
# DROP DATABASE ... WITH (FORCE) at a test's teardown may have to end an autovacuum worker
sql "GRANT pg_signal_backend TO $ROLE" >/dev/null
if [ "$(sql "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]; then
    say "creating database $DATABASE"
    sql "CREATE DATABASE $DATABASE OWNER $ROLE" >/dev/null
fi
reachable "$port" || { say "cannot log in as $ROLE over TCP: check pg_hba.conf"; exit 1; }

echo "postgresql+psycopg://$ROLE:$PASSWORD@$HOST:$port/$DATABASE" >&3
