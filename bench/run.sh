#!/usr/bin/env bash
# The benchmark command: same set-up as the tests, then bench/throughput.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
exec .venv/bin/python bench/throughput.py "$@"
