#!/usr/bin/env bash
# Mutation testing of the safety-critical core (docs/TESTING.md, "Do the tests bite?").
#
# cargo-mutants (from crates.io) changes one small thing at a time in the six files below and runs
# `cargo test --lib` against each change: a mutant is *caught* when a test fails, *missed* when
# every test still passes. Two passes, so that a mutant costs about 20 s here, not 48:
#   1. every mutant against the library suite built unoptimized (`[profile.mutants]`: a mutant's
#      build takes seconds, not 40), without its measurements (the 100,000 orphans, the 30 days
#      of failures, the 500 simulation seeds, the largest lab) and its fuzz properties, which
#      are slow unoptimized (about 10 s left of the suite);
#   2. every mutant the first pass missed, or that timed out, again against the whole suite
#      (the test profile, optimized).
# A mutant caught in either pass made a test of `cargo test --lib` fail. What pass 2 still misses
# is listed in docs/TESTING.md with the reason it is left.
#
# Usage: bash scripts/mutants.sh [FILE...]   (default: the six files)
# Settings (environment): MUTANTS_OUT (target/mutants-out), MUTANTS_TIMEOUT (seconds, 240),
# MUTANTS_DONE (a file of mutant names already tested, one per line, as cargo-mutants names
# them: left out of pass 1, to resume a run cut short).
# cargo-mutants works in a copy of the tree (not --in-place): editing src/ meanwhile is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v cargo-mutants >/dev/null 2>&1; then
  cargo install cargo-mutants --locked --version 27.1.0
fi

files=("$@")
if [ ${#files[@]} = 0 ]; then
  files=(src/lab/session/stage.rs src/lab/wake.rs src/lab/retry.rs src/lab/cleanup.rs
    src/lab/fleet/inventory.rs src/lab/procedures/claims.rs)
fi
out="${MUTANTS_OUT:-target/mutants-out}"
timeout="${MUTANTS_TIMEOUT:-240}"
file_args=()
for f in "${files[@]}"; do file_args+=(--file "$f"); done
measurements=(--skip a_hundred_thousand_orphans --skip thirty_days_of_failures
  --skip sim::tests::seeds --skip the_largest_lab_stays_within_the_bound --skip fuzz_tests
  --skip decode_speed)
# One anchored regex per mutant name of the file $1 (regex characters escaped), after $2.
regexes() {
  while IFS= read -r name; do
    [ -n "$name" ] && printf '%s\n%s\n' "$2" "^$(printf '%s' "$name" | sed 's/[][\.*^$()+?{}|]/\\&/g')\$"
  done <"$1"
}
done_args=()
if [ -n "${MUTANTS_DONE:-}" ]; then
  mapfile -t done_args < <(regexes "$MUTANTS_DONE" --exclude-re)
fi

echo "==> pass 1: every mutant, the suite without its measurements"
mkdir -p "$out/pass1" "$out/pass2"
# cargo-mutants exits 2 when a mutant is missed, 3 on a timeout: both are read from its files.
cargo mutants "${file_args[@]}" "${done_args[@]}" --cargo-arg=--lib --profile mutants \
  --timeout "$timeout" --output "$out/pass1" -- -- "${measurements[@]}" || true

again="$out/pass2/again.txt"
cat "$out/pass1/mutants.out/missed.txt" "$out/pass1/mutants.out/timeout.txt" 2>/dev/null \
  | sed '/^$/d' >"$again" || true
if [ -s "$again" ]; then
  echo "==> pass 2: the $(wc -l <"$again") mutants pass 1 did not catch, the whole suite"
  mapfile -t re_args < <(regexes "$again" --re)
  cargo mutants "${file_args[@]}" "${re_args[@]}" --timeout "$timeout" \
    --cargo-arg=--lib --output "$out/pass2" || true
fi

echo "==> results"
count() { sed '/^$/d' "$1" 2>/dev/null | wc -l; }
p1="$out/pass1/mutants.out"
p2="$out/pass2/mutants.out"
total=$(($(count "$p1/caught.txt") + $(count "$p1/missed.txt") + $(count "$p1/timeout.txt") + $(count "$p1/unviable.txt")))
echo "mutants: $total, unviable: $(count "$p1/unviable.txt")"
echo "caught in pass 1: $(count "$p1/caught.txt")"
if [ -s "$again" ]; then
  echo "caught in pass 2: $(count "$p2/caught.txt"), missed: $(count "$p2/missed.txt"), timeouts: $(count "$p2/timeout.txt")"
  sed '/^$/d; s/^/  missed: /' "$p2/missed.txt"
  sed '/^$/d; s/^/  timeout: /' "$p2/timeout.txt"
else
  echo "missed: 0, timeouts: 0"
fi
