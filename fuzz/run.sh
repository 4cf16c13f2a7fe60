#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after another, and prints the
# executions of each; exits non-zero if any target found a crash. Crashes land in
# fuzz/artifacts/TARGET/; keep each as a regression test. CI runs the differential HTTP target
# for a minute (tests/run.sh).
#
#   fuzz/run.sh 600             # ten minutes a target
#   fuzz/run.sh 60 jsonrpc sse  # only these
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(http_framing jsonrpc sse tool_name policy_load decide approval_key)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
[[ $(rustup toolchain list) == *nightly* ]] || rustup toolchain install nightly --profile minimal
mkdir -p corpus
printf '%-14s %14s %10s %s\n' target executions exec/s result
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (see fuzz/artifacts/$t and $log)"
    failed=1
    tail -30 "$log" >&2
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  printf '%-14s %14s %10s %s\n' "$t" "$runs" "$((runs / seconds))" "$result"
done
exit $failed
