#!/usr/bin/env bash
# Gives the two login roles the passwords docker-compose.yml passes in (both roles are created
# without a password, by infra/migrations/001_initial_schema.sql and 003_pipeline_writer.sql):
#   grafana_reader   $GRAFANA_DB_PASSWORD    Grafana's datasource (read-only)
#   pipeline_writer  $CONSUMER_DB_PASSWORD   consumer.py (what its SQL needs on its tables)
#
# Run by the postgres image's entrypoint on a new data volume, after 00-migrate.sh (it runs
# /docker-entrypoint-initdb.d/* in name order). To change a password of an existing volume:
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-role-passwords.sh
#
# The entrypoint executes executable *.sh files and sources the others; the body runs in a
# subshell so that, when sourced, its shell options cannot leak into the entrypoint.

set_password() (
    set -euo pipefail
    local role=$1 variable=$2
    if [ -z "${!variable:-}" ]; then
        echo "10-role-passwords.sh: $variable must be set (see .env.example)" >&2
        exit 1
    fi
    # The password is passed as a psql variable and inserted with :'pw', which quotes it as a
    # SQL literal, so any character (quotes, $, spaces, backslashes) is safe. Variables are
    # interpolated only in SQL read from stdin, not with -c.
    psql -v ON_ERROR_STOP=1 -v pw="${!variable}" -v role="$role" \
        --no-psqlrc --quiet \
        --username "${POSTGRES_USER:-postgres}" \
        --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" <<'SQL'
ALTER ROLE :"role" WITH LOGIN PASSWORD :'pw';
SQL
    echo "10-role-passwords.sh: password of $role set"
)

# Fail the init on the first error, whether executed (exit) or sourced (return).
if ! set_password grafana_reader GRAFANA_DB_PASSWORD \
    || ! set_password pipeline_writer CONSUMER_DB_PASSWORD; then
    return 1 2>/dev/null || exit 1
fi
