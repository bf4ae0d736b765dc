#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the committed seeds in
# fuzz/seeds/<target>, and prints executions and corpus size per target. Exits non-zero if
# any target crashes (the crashing input is kept in fuzz/artifacts/<target>/).
#   usage: fuzz/run.sh [SECONDS]
set -uo pipefail
secs="${1:-60}"
cd "$(dirname "$0")"

# cargo-fuzz needs nightly flags; use the nightly toolchain when there is one.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! "${fuzz[@]}" build >"$work/build.log" 2>&1; then
  cat "$work/build.log"
  echo "fuzz: build failed"
  exit 1
fi

status=0
for target in $("${fuzz[@]}" list); do
  corpus="$work/corpus/$target"
  mkdir -p "$corpus" "seeds/$target"
  log="$work/$target.log"
  if "${fuzz[@]}" run "$target" "$corpus" "seeds/$target" -- \
      -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
    tail -n 60 "$log"
  fi
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)"
  units="$(find "$corpus" -type f | wc -l)"
  echo "fuzz: $target: $result, ${execs:-?} execs in ${secs}s, corpus $units new + $(find "seeds/$target" -type f | wc -l) seeds"
done
exit "$status"
