#!/usr/bin/env bash
# Applies the numbered migrations (infra/migrations/NNN_name.sql, mounted at /migrations) that
# the database has not had, in version order, each in one transaction with its row in
# schema_migrations: the same files and the same record consumer.py applies at every start
# (consumer/aggregator/postgres/store.py, Store.migrate).
#
# Run by the postgres image's entrypoint on a new data volume, before 10-role-passwords.sh.
# On an existing volume (an upgrade, when the consumer runs as pipeline_writer, which may not
# change the schema):
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/00-migrate.sh
#
# The entrypoint executes executable *.sh files and sources the others; the body runs in a
# subshell so that, when sourced, its shell options cannot leak into the entrypoint.

apply_migrations() (
    set -euo pipefail
    shopt -s nullglob
    dir="${MIGRATIONS_DIR:-/migrations}"
    run_psql() {
        psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
            --username "${POSTGRES_USER:-postgres}" \
            --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" "$@"
    }
    applied=" "
    if [ "$(run_psql -tA -c "SELECT to_regclass('schema_migrations') IS NOT NULL")" = t ]; then
        applied=" $(run_psql -tA -c "SELECT string_agg(version::text, ' ') FROM schema_migrations") "
    fi
    for file in "$dir"/[0-9][0-9][0-9]_*.sql; do
        name=$(basename "$file" .sql)
        version=$((10#${name%%_*}))
        if [[ "$applied" == *" $version "* ]]; then
            continue
        fi
        # -1: the file and its record commit together, or neither does.
        run_psql -1 -f "$file" \
            -c "INSERT INTO schema_migrations (version, name) VALUES ($version, '$name')"
        echo "00-migrate.sh: applied $name"
    done
)

apply_migrations
