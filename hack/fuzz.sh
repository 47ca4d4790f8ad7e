#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 20), starting from the
# committed corpus in fuzz/corpus. Installs cargo-fuzz when it is missing. Targets are built without
# a sanitizer (`-s none`): the crate forbids unsafe code, so what is sought is panics (broken
# invariants, overflows, slicing), which libFuzzer reports with the input that caused them.
#   hack/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
cd fuzz
cargo fuzz build -s none
for target in "${targets[@]}"; do
  # The committed corpus is the seed; new finds go to a scratch directory, so a run leaves the tree clean.
  scratch=$(mktemp -d)
  log="$scratch.log"
  echo "fuzz: $target for ${seconds}s"
  status=0
  cargo fuzz run -s none "$target" "$scratch" "corpus/$target" -- -max_total_time="$seconds" >"$log" 2>&1 || status=$?
  grep -E '^Done|panicked|SUMMARY|Failing input|Test unit written' "$log" || true
  if ((status != 0)); then
    tail -40 "$log" >&2
    echo "fuzz: $target found a failing input (see fuzz/artifacts/$target)" >&2
    exit "$status"
  fi
  rm -rf "$scratch" "$log"
done
