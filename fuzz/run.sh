#!/usr/bin/env bash
# Runs the fuzz targets: the long run by hand, and (with --budget) the short
# run CI does through scripts/fuzz-ci. See fuzz/README.md.
#
#   fuzz/run.sh [SECS] [TARGET...]    every target (or those named) for SECS
#                                     seconds each (default 600)
#   fuzz/run.sh --budget TOTAL [TARGET...]
#                                     build, then share what is left of TOTAL
#                                     seconds (building included) among the
#                                     targets, at least FUZZ_MIN_SECS (10) each
#
# Works on the pinned stable toolchain: the targets are built with
# `--sanitizer none`, which needs no -Z flag (everything warden-proto,
# warden-policy and warden-learn's decoder run is safe Rust). With
# FUZZ_SANITIZER=address they are built with AddressSanitizer instead,
# through RUSTC_BOOTSTRAP=1 on stable, into a separate target dir.
#
# Installs cargo-fuzz (crates.io only) under FUZZ_INSTALL_ROOT (default
# /var/cache/warden/fuzz-install) if `cargo fuzz` is missing. Builds into
# FUZZ_TARGET_DIR (default /var/cache/warden/fuzz-target; CARGO_TARGET_DIR
# is ignored). Each target's corpus is
# FUZZ_CORPUS_DIR/TARGET (default /var/cache/warden/fuzz-corpus, outside
# the clone, so runs accumulate) and starts from fuzz/seeds/TARGET, which is
# read but never written; after a long run (not with --budget) it is
# minimized (libFuzzer -merge=1; FUZZ_MINIMIZE=0 to skip). Crashes go to
# fuzz/artifacts/TARGET/. Every run appends "DATE TARGET RUNS SECS
# SANITIZER" to FUZZ_CORPUS_DIR/runs.log.
#
# Prints one line per target, "fuzz: TARGET: N runs in S s, no crash", and
# exits 1 after the first crash (with the input's path and the command that
# reproduces it), 2 on a usage or build error.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$fuzz_dir")"
cd "$root"

all_targets=(frame decode handshake config invitation learn_record)

# Extra libFuzzer flags per target. learn_record's records are 56 bytes to
# 5.8 KB (a denial), past libFuzzer's default 4096-byte inputs.
target_flags() {
  case "$1" in
    learn_record) echo "-max_len=6144" ;;
    *) echo "" ;;
  esac
}

budget=""
secs=600
if [ "${1:-}" = "--budget" ]; then
  budget="${2:?--budget needs a number of seconds}"
  shift 2
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  secs="$1"
  shift
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=("${all_targets[@]}"); fi
for t in "${targets[@]}"; do
  if [ ! -f "$fuzz_dir/fuzz_targets/$t.rs" ]; then
    echo "fuzz: unknown target $t (known: ${all_targets[*]})" >&2
    exit 2
  fi
done

start=$(date +%s)
sanitizer="${FUZZ_SANITIZER:-none}"
# Not CARGO_TARGET_DIR: .ci/run sets that to the main workspace's, and the
# fuzz builds' flags differ.
target_dir="${FUZZ_TARGET_DIR:-/var/cache/warden/fuzz-target}"
if [ "$sanitizer" != none ]; then
  # -Zsanitizer on the stable toolchain; its own build, not the default one.
  export RUSTC_BOOTSTRAP=1
  target_dir="$target_dir-$sanitizer"
fi
export CARGO_TARGET_DIR="$target_dir"
corpus_root="${FUZZ_CORPUS_DIR:-/var/cache/warden/fuzz-corpus}"
install_root="${FUZZ_INSTALL_ROOT:-/var/cache/warden/fuzz-install}"
export PATH="$install_root/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz into $install_root" >&2
  CARGO_TARGET_DIR="$install_root/target" \
    cargo install cargo-fuzz --version 0.13.2 --locked --root "$install_root" >&2
  rm -rf "$install_root/target"
fi

log_dir="$(mktemp -d "${TMPDIR:-/tmp}/warden-fuzz.XXXXXX")"
trap 'rm -rf "$log_dir"' EXIT

if ! cargo fuzz build --fuzz-dir "$fuzz_dir" --sanitizer "$sanitizer" >"$log_dir/build.log" 2>&1; then
  cat "$log_dir/build.log" >&2
  echo "fuzz: building the fuzz targets failed" >&2
  exit 2
fi
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$CARGO_TARGET_DIR/$triple/release"
built=$(($(date +%s) - start))

min_secs="${FUZZ_MIN_SECS:-10}"
if [ -n "$budget" ]; then
  # About a second per target goes to starting it and loading its corpus.
  left=$((budget - built - ${#targets[@]}))
  secs=$((left / ${#targets[@]}))
  if [ "$secs" -lt "$min_secs" ]; then secs="$min_secs"; fi
fi
echo "fuzz: built in ${built} s; ${#targets[@]} targets, ${secs} s each (sanitizer: $sanitizer)"

mkdir -p "$corpus_root"
for t in "${targets[@]}"; do
  corpus="$corpus_root/$t"
  artifacts="$fuzz_dir/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  log="$log_dir/$t.log"
  seeds=()
  if [ -d "$fuzz_dir/seeds/$t" ]; then seeds=("$fuzz_dir/seeds/$t"); fi
  # shellcheck disable=SC2046 # target_flags is a list of flags
  set +e
  "$bin_dir/$t" -artifact_prefix="$artifacts/" -max_total_time="$secs" -timeout=20 \
    -print_final_stats=0 $(target_flags "$t") "$corpus" "${seeds[@]}" >"$log" 2>&1
  rc=$?
  set -e
  runs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)"
  took="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -1)"
  if [ "$rc" -ne 0 ] || [ -z "$runs" ]; then
    tail -40 "$log" >&2
    input="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
    echo "fuzz: $t: CRASH (exit $rc)${input:+, input: $input}" >&2
    if [ -n "$input" ]; then
      echo "fuzz: reproduce with: cd $root && CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo fuzz run --fuzz-dir fuzz --sanitizer $sanitizer $t $input" >&2
      echo "fuzz: (or run the built target on it: $bin_dir/$t $input)" >&2
    fi
    exit 1
  fi
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $t $runs $took $sanitizer" >>"$corpus_root/runs.log"
  echo "fuzz: $t: $runs runs in $took s, no crash"
  if [ -z "$budget" ] && [ "${FUZZ_MINIMIZE:-1}" = 1 ]; then
    # After a long run, keep only the inputs that add coverage, so that
    # the short CI runs load a small corpus.
    min="$corpus.min.$$"
    rm -rf "$min"
    mkdir -p "$min"
    # shellcheck disable=SC2046
    if "$bin_dir/$t" -merge=1 $(target_flags "$t") "$min" "$corpus" >"$log_dir/$t.merge.log" 2>&1; then
      before=$(find "$corpus" -type f | wc -l)
      rm -rf "$corpus"
      mv "$min" "$corpus"
      echo "fuzz: $t: corpus minimized, $before -> $(find "$corpus" -type f | wc -l) inputs"
    else
      rm -rf "$min"
      echo "fuzz: $t: corpus not minimized (see below)" >&2
      tail -5 "$log_dir/$t.merge.log" >&2
    fi
  fi
done
echo "fuzz: total $(($(date +%s) - start)) s"
