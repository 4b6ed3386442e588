#!/usr/bin/env bash
# Creates .venv (if missing) and installs gipp-jax into it with the given extras.
# Usage: source tools/setup_env.sh [EXTRAS]    e.g. EXTRAS=test
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GIPP_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
spec="$root"
if [ -n "${1:-}" ]; then spec="$root[$1]"; fi
"$venv/bin/python" -m pip install --quiet -e "$spec"
export PATH="$venv/bin:$PATH"
