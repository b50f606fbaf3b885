#!/usr/bin/env bash
# Run the test suite in its own virtual environment. Real data is looked for in
# $VAELAB_DATA, else ../shared/data beside the project; under CI=true missing data fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/venv.sh"
cd "$here/.."
if [ -z "${VAELAB_DATA:-}" ] && [ -d ../shared/data ]; then export VAELAB_DATA="$(cd ../shared/data && pwd)"; fi
# one worker per core, up to 4 (each test runs torch on one thread; a worker takes whole files, so
# a module's shared fixture is built once), the files in the order tests/conftest.py gives them
# (longest first: xdist would otherwise order them by their count of tests); -n 0 after the
# command runs it in one process
workers="$(python -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')"
exec python -m pytest -q -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
