#!/usr/bin/env bash
# Runs every cargo-fuzz target for MINUTES minutes (default 10) each, one after the other,
# growing the corpus in a scratch copy (the checked-in corpus is only read), and stops at the
# first crash (libFuzzer leaves the input in fuzz/artifacts/TARGET/). See docs/testing.md.
#
#   scripts/fuzz-long.sh [MINUTES] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
minutes=${1:-10}
shift || true
targets=${*:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build
for target in $targets; do
  scratch=$(mktemp -d)
  echo "=== $target: $minutes min"
  cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
    -max_total_time=$((minutes * 60)) -rss_limit_mb=4096 -print_final_stats=1 2>&1 |
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|panicked|SUMMARY|#[0-9]+ *DONE'
  echo "new inputs found: $(ls "$scratch" | wc -l) (in $scratch; copy the interesting ones to corpus/$target)"
done
