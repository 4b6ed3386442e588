#!/usr/bin/env bash
# Creates .venv (if missing) and installs gipp-jax into it with the given extras, quietly:
# pip's and setuptools' output is shown only when the install fails.
# Usage: source tools/setup_env.sh [EXTRAS]    e.g. EXTRAS=test
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GIPP_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
spec="$root"
if [ -n "${1:-}" ]; then spec="$root[$1]"; fi
log="$(mktemp)"
if ! { "$venv/bin/python" -m pip install --quiet --upgrade pip \
       && "$venv/bin/python" -m pip install --quiet -e "$spec"; } >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  echo "setup failed: pip could not install $spec into $venv (its output above)" >&2
  return 1 2>/dev/null || exit 1
fi
rm -f "$log"
export PATH="$venv/bin:$PATH"
