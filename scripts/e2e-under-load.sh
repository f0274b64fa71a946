#!/usr/bin/env bash
# e2e-under-load.sh - runs the whole e2e suite RUNS times in a row (default 5) while a CPU hog
# keeps both cores busy, and stops at the first failure. This is how the suite is shown not to
# depend on wall-clock luck (docs/operations.md, "A suite that never flakes").
#
# The hog is stress-ng (Debian package stress-ng) when installed, else one busy shell loop per
# core. It runs at normal priority, exactly as another workload on a shared CI machine would.
# Usage: bash scripts/e2e-under-load.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
cores="$(nproc)"

cargo build -q -p reconix -p reconix-agent --bins
cargo nextest run -p reconix-e2e --no-run >/dev/null

hog_pids=()
stop_hog() { kill "${hog_pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop_hog EXIT
if command -v stress-ng >/dev/null 2>&1; then
  stress-ng --cpu "$cores" --quiet &
  hog_pids+=("$!")
  hog="stress-ng --cpu $cores"
else
  for _ in $(seq "$cores"); do
    (while :; do :; done) &
    hog_pids+=("$!")
  done
  hog="$cores busy shell loops"
fi
echo "e2e-under-load: $runs runs of the e2e suite beside $hog on $cores cores"

for run in $(seq "$runs"); do
  start=$(date +%s)
  if ! cargo nextest run -p reconix-e2e --no-fail-fast; then
    echo "e2e-under-load: run $run of $runs FAILED" >&2
    exit 1
  fi
  echo "e2e-under-load: run $run of $runs passed in $(( $(date +%s) - start )) s"
done
echo "e2e-under-load: all $runs runs passed"
