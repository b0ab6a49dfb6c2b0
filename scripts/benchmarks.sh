#!/usr/bin/env bash
# Benchmarks. Usage:
#   scripts/benchmarks.sh          assemble docs/BENCHMARKS.md from the result files in docs/bench/
#   scripts/benchmarks.sh e2e      run the end-to-end pipeline benchmark (pmagent → NATS → pmhub → CSV,
#                                  real binaries, loopback, every row checked) and print its result
#   scripts/benchmarks.sh startup  run the shim start-up benchmark (every pyenv Python 3.9–3.13)
# Each docs/bench/*.md file is written by its benchmark's author after a side-by-side run and
# names its machine; the runs are not repeated here because a shared machine makes one run's
# ratios the only meaningful figures.
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_CFLAGS="${CGO_CFLAGS:--Wno-deprecated-declarations}"
case "${1:-docs}" in
e2e)
  exec go test -p 1 -count="${COUNT:-2}" -timeout 30m -ldflags=-extldflags=-Wl,-z,lazy \
    -run '^$' -bench '^BenchmarkPipeline$' -benchtime 1x ./e2e/
  ;;
startup)
  exec python3 shim/bench/startup.py "${N:-40}"
  ;;
docs) ;;
*)
  echo "usage: scripts/benchmarks.sh [docs|e2e|startup]" >&2
  exit 2
  ;;
esac
{
  echo "# Benchmarks"
  echo
  echo "Speed and memory targets are measured here, never asserted in tests. Each section comes from one"
  echo "run that measured ProfileMate and its baseline side by side on the same machine, named in the"
  echo "section. Sources: \`docs/bench/*.md\`; regenerate this page with \`scripts/benchmarks.sh\`"
  echo "(\`scripts/benchmarks.sh e2e\` and \`scripts/benchmarks.sh startup\` rerun those two benchmarks)."
  echo
  echo "No GPU was available for these runs: the GPU check (\`shim/bench/gpu_check.py\`) is prepared and"
  echo "has not been run on a GPU yet."
  for f in shim flush enginecore worker pipeline agent hub faces report analysis; do
    [ -f "docs/bench/$f.md" ] || continue
    echo
    sed -e 's/^# /## /' -e 's/^## \(.*\)/### \1/' "docs/bench/$f.md" | sed -e '1s/^### /## /'
  done
} > docs/BENCHMARKS.md
