#!/usr/bin/env bash
# The test command (README, .ci/run): sets up everything on a fresh machine, then runs
# ruff and the whole suite against real servers. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
