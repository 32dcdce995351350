#!/usr/bin/env bash
# Runs every libFuzzer target of fuzz/ for a bounded time (cargo-fuzz on the nightly toolchain;
# scripts/test-deps.sh installs both).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 25 s, every target)
#
# FUZZ_BUILD_ARGS passes build options to cargo-fuzz, e.g. `--dev`. On a busy 2-core machine the
# release build (kube and rustls under ASan) took 15 min, the `--dev` build 10 min, but dev
# fuzzers run 20 to 100 times fewer inputs in the same time.
#
# The committed corpus (fuzz/corpus/TARGET) seeds each run read-only; what the run discovers goes
# to a temporary directory, so a run leaves the checkout as it was. A crash stops the script with
# the target's exit status; libFuzzer saves the input under fuzz/artifacts/TARGET/ (reproduce
# with `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…`, then make it a unit test
# in the crate it belongs to).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-25}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

read -r -a build_args <<<"${FUZZ_BUILD_ARGS:-}"
cargo +nightly fuzz build "${build_args[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    echo "=== fuzz $target for ${seconds} s ==="
    mkdir -p "$work/$target"
    if ! cargo +nightly fuzz run "${build_args[@]}" "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$work/$target.log" 2>&1; then
        tail -n 60 "$work/$target.log" >&2
        echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$work/$target.log" || true
done
