#!/usr/bin/env bash
# Mutation testing of the code the promise rests on: the fold and the gate's decision, the
# per-key gate, the journal's byte layout and its recovery. Each group runs only the tests that
# exercise it, so that one mutant costs a rebuild and a few seconds of tests. Takes hours on a
# 2-core machine; not part of .ci/run. Results in mutants.out/ (one directory per group);
# docs/testing.md records the last scores and the equivalent mutants.
#
#   scripts/mutants.sh [GROUP...]      # groups: model gate format recovery (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants

run() {
  local group=$1; shift
  local files=() filters=()
  while [ "$1" != "--" ]; do files+=(-f "$1"); shift; done
  shift
  filters=("$@")
  echo "=== $group"
  mkdir -p "mutants.out/$group"
  # The shuttle exploration's harness (`mod shuttle_tests`, built only with `--cfg shuttle`) is
  # test code: its mutants are not the product's.
  cargo mutants --no-shuffle --timeout 300 --exclude-re shuttle_tests "${files[@]}" \
    -o "mutants.out/$group" \
    -- --lib --test it -- "${filters[@]}" || true
  local outcomes="mutants.out/$group/mutants.out/outcomes.json"
  python3 - "$outcomes" "$group" <<'PY'
import json, sys
outcomes = json.load(open(sys.argv[1]))
counts = {}
for o in outcomes["outcomes"]:
    if o["scenario"] == "Baseline":
        continue
    counts[o["summary"]] = counts.get(o["summary"], 0) + 1
caught = counts.get("CaughtMutant", 0) + counts.get("Timeout", 0)
missed = counts.get("MissedMutant", 0)
unviable = counts.get("Unviable", 0)
viable = caught + missed
score = 100.0 * caught / viable if viable else 0.0
print(f"{sys.argv[2]}: caught {caught}, missed {missed}, unviable {unviable}: {score:.1f}%")
PY
}

groups=${*:-model gate format recovery}
for group in $groups; do
  case $group in
    model) run model src/model/fold.rs src/model/state.rs src/model/decide.rs src/model/evidence.rs \
             -- model operations:: ;;
    gate) run gate src/gate.rs -- ledger:: promise:: ledger_props ;;
    format) run format src/journal/format.rs \
              -- journal:: journal_recovery journal_props power_loss segment_fixtures codec ;;
    recovery) run recovery src/journal/recovery.rs \
                -- journal:: journal_recovery journal_props power_loss promise::every_flipped ;;
    *) echo "unknown group $group" >&2; exit 2 ;;
  esac
done
