#!/usr/bin/env bash
# Sets up .venv with the test extras and runs the test suite, one process per core (at most
# four; tests marked xdist_group share a process, and so their module's fixtures). Extra
# arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/tools/setup_env.sh" test
cd "$root"
python -m pytest -n auto --maxprocesses 4 --dist loadgroup "$@"
