#!/usr/bin/env bash
# The test command (README, .ci/run): sets up everything on a fresh machine, then runs
# ruff, mypy and the whole suite against real servers. Extra arguments go to pytest.
# The tests mostly wait on servers and processes, so they run in TEST_WORKERS processes (3),
# one test file per worker; TEST_WORKERS=0 runs them in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-3}" --dist loadfile "$@"
