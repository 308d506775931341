#!/usr/bin/env bash
# The pure tests only (tests/unit/: no server, no process), in seconds, in this process. The
# whole suite is tests/run.sh. Extra arguments go to pytest (tests/unit.sh -k contract).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
exec .venv/bin/python -m pytest tests/unit -q -p no:xdist "$@"
