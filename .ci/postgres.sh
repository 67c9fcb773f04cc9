#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the sweep tests (several workers, one study).
# Sourced by .ci/run: exports BCD_POSTGRES_URL. Installs Debian's postgresql when it is missing.
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
pg_bin="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")"
pg_port="${BCD_POSTGRES_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
pg_data="$(mktemp -d /tmp/bcd-postgres.XXXXXX)"
chown postgres "$pg_data"
# the server refuses to run as root, so it runs as Debian's postgres user
su postgres -s /bin/sh -c "'$pg_bin/initdb' -D '$pg_data/data' -A trust -U postgres >/dev/null"
su postgres -s /bin/sh -c "'$pg_bin/pg_ctl' -D '$pg_data/data' -l '$pg_data/server.log' -w \
    -o \"-c listen_addresses=127.0.0.1 -p $pg_port -k '$pg_data'\" start >/dev/null"
psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE DATABASE bcd" >/dev/null
export BCD_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/bcd"
echo "PostgreSQL for the sweep tests: $BCD_POSTGRES_URL"
