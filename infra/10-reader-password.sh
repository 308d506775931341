#!/usr/bin/env bash
# Gives the read-only grafana_reader role (created without a password by migration 001) the
# password Grafana's datasource uses: $GRAFANA_DB_PASSWORD.
#
# Run by the postgres image's entrypoint on a new data volume, after 00-migrate.sh. To change
# the password of an existing volume later:
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-reader-password.sh
#
# The entrypoint executes executable *.sh files and sources the others; the body runs in a
# subshell so that, when sourced, its shell options cannot leak into the entrypoint.

set_reader_password() (
    set -euo pipefail
    : "${GRAFANA_DB_PASSWORD:?GRAFANA_DB_PASSWORD must be set (see .env.example)}"
    # The password is passed as a psql variable and inserted with :'pw', which quotes it as a
    # SQL literal, so any character (quotes, $, spaces, backslashes) is safe. Variables are
    # interpolated only in SQL read from stdin, not with -c.
    psql -v ON_ERROR_STOP=1 -v pw="$GRAFANA_DB_PASSWORD" \
        --no-psqlrc --quiet \
        --username "${POSTGRES_USER:-postgres}" \
        --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" <<'SQL'
ALTER ROLE grafana_reader WITH LOGIN PASSWORD :'pw';
SQL
    echo "10-reader-password.sh: password of grafana_reader set"
)

set_reader_password
