#!/usr/bin/env bash
# Benchmarks. Usage:
#   scripts/benchmarks.sh            assemble docs/BENCHMARKS.md from the result files in docs/bench/
#   scripts/benchmarks.sh pipeline   the end-to-end benchmark (8 shim connections → pmagent → NATS →
#                                    pmhub → CSV, real binaries, loopback; every row checked exactly);
#                                    `e2e` is the same
#   scripts/benchmarks.sh agent      pmagent ingest → publish (socket → JetStream acknowledgement)
#   scripts/benchmarks.sh hub        pmhub consume → write, and plain JetStream consume beside it
#   scripts/benchmarks.sh tail       emit → `pmhub tail` latency (the simulator under two agents)
#   scripts/benchmarks.sh startup    the shim start-up benchmark (every pyenv Python 3.9–3.13)
#   scripts/benchmarks.sh compare REV pipeline|agent|hub|tail
#                                    before/after in one run: the same benchmark (this tree's
#                                    benchmark files) on REV, checked out into a temporary git
#                                    worktree, and on this tree, alternating COUNT times (default 2)
# Each docs/bench/*.md file is written by its benchmark's author after a side-by-side run and
# names its machine; the runs are not repeated here because a shared machine makes one run's
# ratios the only meaningful figures.
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_CFLAGS="${CGO_CFLAGS:--Wno-deprecated-declarations}"
GOTEST=(go test -p 1 -timeout 30m -ldflags=-extldflags=-Wl,-z,lazy -run '^$')

# bench NAME [DIR]: one benchmark's go test, run in DIR (default: this tree).
bench() {
  local dir="${2:-.}"
  case "$1" in
  pipeline | e2e) (cd "$dir" && "${GOTEST[@]}" -count="${COUNT:-2}" -bench '^BenchmarkPipeline$' -benchtime 1x ./e2e/) ;;
  agent) (cd "$dir" && "${GOTEST[@]}" -count="${COUNT:-2}" -bench '^BenchmarkIngestPublish$' -benchtime 400000x -benchmem ./agent/) ;;
  hub) (cd "$dir" && "${GOTEST[@]}" -count="${COUNT:-2}" -bench '^(BenchmarkPlainJetStream|BenchmarkConsumeWrite)$' -benchtime 3x ./hub/) ;;
  tail) (cd "$dir" && "${GOTEST[@]}" -count="${COUNT:-2}" -bench '^BenchmarkEmitToTail$' -benchtime 1x ./e2e/) ;;
  *)
    echo "unknown benchmark $1" >&2
    exit 2
    ;;
  esac
}

case "${1:-docs}" in
pipeline | e2e | agent | hub | tail)
  echo "# $(date -u +%FT%TZ) $(uname -n), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  bench "$1"
  exit
  ;;
compare)
  rev="${2:?usage: scripts/benchmarks.sh compare REV pipeline|agent|hub|tail}"
  what="${3:?usage: scripts/benchmarks.sh compare REV pipeline|agent|hub|tail}"
  before="$(mktemp -d)/before"
  git worktree add --detach -q "$before" "$rev"
  trap 'git worktree remove --force "$before"' EXIT
  # The benchmarks themselves are this tree's, so both sides measure the same thing.
  for f in e2e/pipeline_bench_test.go agent/bench_test.go hub/bench_test.go; do cp "$f" "$before/$f"; done
  echo "# $(date -u +%FT%TZ) $(uname -n), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "# before: $(git rev-parse --short "$rev"), after: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + uncommitted changes')"
  for i in $(seq "${COUNT:-2}"); do
    echo "## round $i before (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    COUNT=1 bench "$what" "$before" | grep -E '^(Benchmark|ok|FAIL|---)|ns/op' || true
    echo "## round $i after (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    COUNT=1 bench "$what" | grep -E '^(Benchmark|ok|FAIL|---)|ns/op' || true
  done
  exit
  ;;
startup)
  exec python3 shim/bench/startup.py "${N:-40}"
  ;;
docs) ;;
*)
  echo "usage: scripts/benchmarks.sh [docs|pipeline|agent|hub|tail|startup|compare REV pipeline|agent|hub|tail]" >&2
  exit 2
  ;;
esac
{
  echo "# Benchmarks"
  echo
  echo "Speed and memory targets are measured here, never asserted in tests. Each section comes from one"
  echo "run that measured ProfileMate and its baseline side by side on the same machine, named in the"
  echo "section. Sources: \`docs/bench/*.md\`; regenerate this page with \`scripts/benchmarks.sh\`"
  echo "(\`scripts/benchmarks.sh pipeline|agent|hub|tail|startup\` reruns one benchmark, \`scripts/benchmarks.sh"
  echo "compare REV pipeline|agent|hub|tail\` runs one before and after a change side by side)."
  echo
  echo "No GPU was available for these runs: the GPU check (\`shim/bench/gpu_check.py\`) is prepared and"
  echo "has not been run on a GPU yet."
  for f in shim flush enginecore worker pipeline agent hub scale faces report analysis; do
    [ -f "docs/bench/$f.md" ] || continue
    echo
    sed -e 's/^# /## /' -e 's/^## \(.*\)/### \1/' "docs/bench/$f.md" | sed -e '1s/^### /## /'
  done
} > docs/BENCHMARKS.md
