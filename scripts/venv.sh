# Sourced by scripts/demo.sh and scripts/test.sh: create or refresh .venv, then activate it.
# torch is pinned first because the machines carry a local CPU wheel of 2.13.0; any other
# torch requirement would pull several GB of CUDA packages.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
stamp="$venv/.vaelab-installed"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setting up $venv (torch 2.13.0 CPU, then vaelab and its test tools)..." >&2
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
    "$venv/bin/python" -m pip install --quiet -e "$root[test]"
    echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
