#!/usr/bin/env bash
# The benchmark command: same set-up as the tests, then bench/throughput.py (see --help).
# The Quix Streams peer row needs: .venv/bin/pip install -r bench/requirements-peers.txt
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
exec .venv/bin/python bench/throughput.py "$@"
