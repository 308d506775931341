#!/usr/bin/env bash
# Applies the numbered migrations (infra/migrations/NNN_name.sql, mounted at /migrations) in
# version order, each in one transaction with its row in schema_migrations: the same files and
# the same record consumer.py applies at every start (consumer/aggregator/migrations.py).
#
# Run by the postgres image's entrypoint on a new data volume, before 10-reader-password.sh.
# On an existing volume the consumer applies what is missing when it starts.
#
# The entrypoint executes executable *.sh files and sources the others; the body runs in a
# subshell so that, when sourced, its shell options cannot leak into the entrypoint.

apply_migrations() (
    set -euo pipefail
    shopt -s nullglob
    dir="${MIGRATIONS_DIR:-/migrations}"
    for file in "$dir"/[0-9][0-9][0-9]_*.sql; do
        name=$(basename "$file" .sql)
        version=$((10#${name%%_*}))
        # -1: the file and its record commit together, or neither does.
        psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet -1 \
            --username "${POSTGRES_USER:-postgres}" \
            --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" \
            -f "$file" \
            -c "INSERT INTO schema_migrations (version, name) VALUES ($version, '$name')"
        echo "00-migrate.sh: applied $name"
    done
)

apply_migrations
