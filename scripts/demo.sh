#!/usr/bin/env bash
# The main job on the embedded default: a VAE on scikit-learn's bundled 8x8 digits
# (one to two minutes on 2 cores). Pictures and metrics go to runs/digits-vae/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/venv.sh"
cd "$here/.."
exec vaelab demo "$@"
