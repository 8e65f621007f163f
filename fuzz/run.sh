#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 60), installing cargo-fuzz
# first if it is missing. Prints the number of executions per target.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  CARGO_TARGET_DIR="${CARGO_FUZZ_INSTALL_DIR:-/var/cache/warden/fuzz-install}" cargo install cargo-fuzz --locked
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_FUZZ:-/var/cache/warden/fuzz-target}"
for t in decode handshake invitation; do
  mkdir -p "corpus/$t"
  # Seeds kept in the repository (fuzz/seeds/TARGET) start the corpus.
  if [ -d "seeds/$t" ]; then cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true; fi
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" 2>&1 | tee "/tmp/fuzz-$t.log" | tail -3
  grep -Eo 'Done [0-9]+ runs' "/tmp/fuzz-$t.log" | sed "s/^/$t: /" || true
done
