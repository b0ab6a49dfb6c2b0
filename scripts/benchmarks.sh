#!/usr/bin/env bash
# Assembles docs/BENCHMARKS.md from the per-component result files in docs/bench/.
# Each file is written by its benchmark's author after a side-by-side run and names its machine.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Benchmarks"
  echo
  echo "Speed and memory targets are measured here, never asserted in tests. Each section comes from one"
  echo "run that measured ProfileMate and its baseline side by side on the same machine, named in the"
  echo "section. Sources: \`docs/bench/*.md\`; regenerate this page with \`scripts/benchmarks.sh\`."
  echo
  echo "No GPU was available for these runs: the GPU check (\`shim/bench/gpu_check.py\`) is prepared and"
  echo "has not been run on a GPU yet."
  for f in shim enginecore worker agent hub faces report analysis; do
    [ -f "docs/bench/$f.md" ] || continue
    echo
    sed -e 's/^# /## /' -e 's/^## \(.*\)/### \1/' "docs/bench/$f.md" | sed -e '1s/^### /## /'
  done
} > docs/BENCHMARKS.md
