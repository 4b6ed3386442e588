#!/usr/bin/env bash
# Sets up .venv and fits the bundled sample image (Kodak kodim23) with the demo settings.
# Extra arguments go to `gipp fit`, e.g. `bash tools/demo.sh --full` for the paper's 50000 steps.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/tools/setup_env.sh" ""  # no extras (an explicit arg keeps ours out of it)
gipp fit -o "${GIPP_DEMO_OUT:-$root/demo-output}" "$@"
