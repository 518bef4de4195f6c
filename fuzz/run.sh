#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time, starting from
# its seed corpus (fuzz/corpus/<target>/); fails if any target crashes,
# hangs, leaks or runs out of memory. CI runs it for 10 s per target; the
# longer runs recorded in RESULTS.md ran the same binaries for 300 s each
# (their commands are there).
#
#   fuzz/run.sh [SECONDS_PER_TARGET]     (default 20)
#
# Needs the nightly toolchain and cargo-fuzz 0.13
# (`cargo install cargo-fuzz --locked`). Builds into $CARGO_TARGET_DIR
# (default fuzz/target). The runs work on a temporary copy of the corpus,
# so the repository stays clean; an input that fails a target is copied
# to fuzz/artifacts/<target>/ (ignored by git) and printed in base64.
# Set FUZZ_TARGETS="a b" to run only some targets.
set -euo pipefail

seconds="${1:-20}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"

# cargo-fuzz's defaults: a release build with debug assertions and
# overflow checks, AddressSanitizer, one codegen unit per crate (16 units
# cost more CPU in all on two cores; see RESULTS.md). FUZZ_BUILD_FLAGS adds
# cargo-fuzz build flags (e.g. `--dev`, `-s none`; a `--dev` build's
# binaries are found under debug/).
read -r -a build_flags <<<"${FUZZ_BUILD_FLAGS:-}"
started=$(date +%s)
build_log="$(mktemp "${TMPDIR:-/tmp}/imsg-fuzz-build.XXXXXX")"
if ! cargo +nightly fuzz build "${build_flags[@]}" 2>&1 | tee "$build_log"; then
    # CI shows the tail of the output: repeat the compiler's errors there.
    echo "fuzz: the build failed; its errors:" >&2
    grep -A12 -E '^(error|warning: unused)' "$build_log" | tail -60 >&2 || true
    rm -f "$build_log"
    exit 1
fi
rm -f "$build_log"
echo "fuzz: built in $(($(date +%s) - started)) s"

profile=release
for flag in "${build_flags[@]}"; do
    case "$flag" in --dev | -D) profile=debug ;; esac
done
bin_dir="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/$profile"
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
work="$(mktemp -d "${TMPDIR:-/tmp}/imsg-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Options of one target. storage_rows: its store's threads allocate
# between inputs, so libFuzzer would run a full leak scan after nearly
# every input (most of its time); leaks are checked by the other targets.
target_options() {
    case "$1" in
    storage_rows) echo "-detect_leaks=0" ;;
    esac
}

failed=()
for target in $targets; do
    mkdir -p "$work/$target/corpus" "$work/$target/artifacts" "$work/$target/tmp"
    cp -r corpus/"$target"/. "$work/$target/corpus/"
    log="$work/$target/log"
    echo "fuzz: $target for ${seconds} s"
    # -timeout: one input that takes this long is a hang (a failure).
    # TMPDIR: where storage_rows keeps its scratch store.
    if TMPDIR="$work/$target/tmp" "$bin_dir/$target" "$work/$target/corpus" \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 $(target_options "$target") \
        -artifact_prefix="$work/$target/artifacts/" >"$log" 2>&1; then
        # The last status line: executions, coverage, corpus size.
        grep -E '^#[0-9]+' "$log" | tail -n 1 | sed "s/^/fuzz: $target: /"
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" |
            sed "s/^/fuzz: $target: /"
    else
        failed+=("$target")
        tail -n 60 "$log"
        mkdir -p "artifacts/$target"
        for artifact in "$work/$target/artifacts"/*; do
            [ -e "$artifact" ] || continue
            cp "$artifact" "artifacts/$target/"
            echo "fuzz: $target failed on fuzz/artifacts/$target/$(basename "$artifact"), base64:"
            base64 -w 0 "$artifact"
            echo
            echo "fuzz: reproduce with $bin_dir/$target fuzz/artifacts/$target/$(basename "$artifact")"
        done
    fi
done

echo "fuzz: build and runs took $(($(date +%s) - started)) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: every target ran ${seconds} s without a failure"
