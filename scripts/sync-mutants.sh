#!/usr/bin/env bash
# Deletes each sync that durability rests on, one at a time, runs the integration tests, and
# checks that at least one test fails (the mutant is "caught"). The source is restored after
# each run, whatever happens. Takes a few minutes; not part of .ci/run. See docs/testing.md.
#
#   scripts/sync-mutants.sh            # both mutants
set -euo pipefail
cd "$(dirname "$0")/.."

run_mutant() {
  local name=$1 file=$2 from=$3 to=$4
  cp "$file" "$file.orig"
  trap 'mv "$file.orig" "$file"' RETURN
  python3 - "$file" "$from" "$to" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
assert text.count(old) == 1, f"{old!r} must occur once in {path}"
open(path, "w").write(text.replace(old, new))
PY
  echo "=== mutant: $name ($file)"
  local log
  log=$(mktemp)
  if CARGO_TARGET_DIR=target/mutants cargo test --test it 2>&1 > "$log"; then
    echo "SURVIVED: $name — no test failed"
    return 1
  fi
  if grep -q "could not compile" "$log"; then
    echo "the mutant did not build: fix the script, not a result"
    grep -E '^error' "$log" | head -3 || true
    return 1
  fi
  echo "caught: $name, by:"
  grep -E '^test .* FAILED$' "$log" | sed 's/^test /  /; s/ \.\.\. FAILED$//'
}

status=0
run_mutant "no fdatasync in the commit path" src/journal/group_commit.rs \
  '            .sync_data()
            .map_err(|e| FatalCause::new(format!("fdatasync of {}", path.display()), e))?;' \
  '            .file_len()
            .map(drop)
            .map_err(|e| FatalCause::new(format!("fdatasync of {}", path.display()), e))?;' || status=1
run_mutant "no directory sync when a segment is created" src/journal/segment.rs \
  '        .sync_dir(dir)' \
  '        .list(dir)
        .map(drop)' || status=1
exit $status
