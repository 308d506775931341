#!/usr/bin/env bash
# Everything the tests and the benchmark need on a fresh machine: Debian packages (below) and
# .venv with the pinned dependencies.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: PostgreSQL server binaries (the harness starts its own throwaway cluster)
# and docker-compose 1.29, which validates docker-compose.yml without a Docker engine.
packages=()
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && [ -z "${PG_BINDIR:-}" ]; then
    packages+=(postgresql)
fi
if ! command -v docker-compose >/dev/null; then
    packages+=(docker-compose)
fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "Installing ${packages[*]}..."
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "Python 3.11 or newer is needed (python3 is $(python3 -V 2>&1))." >&2
        exit 2
    fi
    python3 -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat producer/requirements.txt consumer/requirements.txt tests/requirements.txt \
    btcpipe/pyproject.toml | sha256sum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    # The scripts' requirements install btcpipe as a copy (as the images do); the tests use
    # it editable, so that a change to it is tested without installing it again.
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e ./btcpipe
    echo "$want" > "$stamp"
fi
