#!/usr/bin/env bash
# Run the test suite in its own virtual environment. Real data is looked for in
# $VAELAB_DATA, else ../shared/data beside the project; under CI=true missing data fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/venv.sh"
cd "$here/.."
if [ -z "${VAELAB_DATA:-}" ] && [ -d ../shared/data ]; then export VAELAB_DATA="$(cd ../shared/data && pwd)"; fi
exec python -m pytest -q "$@"
