#!/usr/bin/env bash
# Reopen after a crash: builds a large ledger with the scale bench's build phase, kills it with
# SIGKILL after SECONDS (default 60), then times two reopens (the first after the crash, the
# second after a clean stop). Needs about 1 GB of disk per 5 million events.
#
#   scripts/crash-reopen.sh [SECONDS] [KEYS]      # KEYS default 3,400,000 (10.2 M events)
#
# Prints the events in the journal and each reopen's time; removes its directory at the end.
set -euo pipefail
seconds=${1:-60}
keys=${2:-3400000}
cd "$(dirname "$0")/.."
bin=$(cargo bench --bench scale --no-run 2>&1 | sed -n 's/.*Executable benches\/scale.rs (\(.*\))/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the scale bench" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" --phase build "$dir/ledger" "$keys" > /dev/null 2>&1 &
build=$!
sleep "$seconds"
kill -9 "$build" 2>/dev/null || { echo "the build finished before ${seconds}s: give fewer seconds or more keys" >&2; exit 1; }
wait "$build" 2>/dev/null || true
echo "killed after ${seconds}s"
echo -n "reopen after the crash: "; "$bin" --phase reopen "$dir/ledger" | sed -n 1p
echo -n "reopen after a clean stop: "; "$bin" --phase reopen "$dir/ledger" | sed -n 1p
