#!/usr/bin/env bash
# Fuzzes crmflow's decoders: builds every cargo-fuzz target in fuzz/ and runs each for SECONDS
# (default 60), one process on one core at a time; fails if any target crashes (a panic, a
# broken invariant, a sanitizer report, a timeout or running out of memory).
#
#   deploy/scripts/fuzz.sh [SECONDS]      # make fuzz (FUZZ_SECONDS, default 300) / make fuzz-smoke (60)
#
# Installs cargo-fuzz when it is missing (the nightly toolchain must be installed). Builds go to
# $FUZZ_TARGET_DIR (default ~/.cache/crmflow/fuzz-target), never the main build cache. Each run
# starts from the seeds in fuzz/corpus/<target>/ and from what earlier runs found, kept in
# $FUZZ_CORPUS_DIR/<target>/ (default ~/.cache/crmflow/fuzz-corpus): new inputs go there, never
# into the repository. Inputs that once crashed a target (fuzz/regressions/<target>/) are run
# first. A crash leaves its input in fuzz/artifacts/<target>/ (ignored by git); fuzz/README.md
# says how to reproduce it and turn it into a regression test.
# FUZZ_TARGETS="input_json output" runs only those targets.
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$(pwd)
seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS per target, a positive integer]" >&2
    exit 2
fi

export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/crmflow/fuzz-target}"
corpus_cache="${FUZZ_CORPUS_DIR:-$HOME/.cache/crmflow/fuzz-corpus}"
# Nothing here may wait for a terminal.
exec </dev/null

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly --profile minimal)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

started=$(date +%s)
echo "==> building the fuzz targets ($CARGO_TARGET_DIR)"
cargo +nightly fuzz build
built=$(date +%s)

targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
failed=()
for target in $targets; do
    seeds="fuzz/corpus/$target"
    found="$corpus_cache/$target"
    if [[ ! -d "$seeds" ]]; then
        echo "fuzz.sh: no seed corpus $seeds for target $target" >&2
        exit 1
    fi
    mkdir -p "$found" "fuzz/artifacts/$target"
    # Tokens that help the mutations: Avro headers for the binary decoder, JSON words for the rest.
    case "$target" in
        avro_single_object) dict=fuzz/dict/avro.dict ;;
        *) dict=fuzz/dict/json.dict ;;
    esac
    # First the inputs that crashed it once (fuzz/regressions/<target>/): each must pass.
    regressions=("fuzz/regressions/$target"/*)
    if [[ -e "${regressions[0]}" ]]; then
        echo "==> $target: ${#regressions[@]} regression inputs"
        if ! cargo +nightly fuzz run "$target" "${regressions[@]}" >"fuzz/artifacts/$target/regressions.log" 2>&1; then
            grep -E -A4 "^(Running|thread .* panicked)" "fuzz/artifacts/$target/regressions.log" | head -n 40 | sed "s/^/    /"
            failed+=("$target")
            echo "==> $target FAILED on an input of fuzz/regressions/$target/ (not fuzzed; see fuzz/tests/regressions.rs)" >&2
            continue
        fi
    fi
    # libFuzzer's job mode writes the run's log to fuzz-0.log in its working directory (and
    # prints it when the job ends): a scratch directory, and the whole output kept aside.
    log_dir=$(mktemp -d)
    echo "==> $target: ${seconds}s"
    status=0
    (
        cd "$log_dir"
        cargo +nightly fuzz run --fuzz-dir "$root/fuzz" "$target" "$found" "$root/$seeds" -- \
            -max_total_time="$seconds" -jobs=1 -workers=1 -dict="$root/$dict" \
            -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
    ) >"$log_dir/run.log" 2>&1 || status=$?
    if ((status == 0)); then
        grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)|DONE +cov' \
            "$log_dir/run.log" | sed "s/^/    /" || true
    else
        tail -n 80 "$log_dir/run.log" | sed "s/^/    /"
        cp "$log_dir/run.log" "fuzz/artifacts/$target/fuzz.log"
    fi
    rm -rf "$log_dir"
    if ((status != 0)); then
        failed+=("$target")
        echo "==> $target FAILED (exit $status); inputs that crashed it: fuzz/artifacts/$target/" >&2
    fi
done

finished=$(date +%s)
echo "==> fuzzing took $((finished - started))s (build $((built - started))s)"
if ((${#failed[@]})); then
    echo "fuzz.sh: crashes in: ${failed[*]} (see fuzz/README.md to reproduce and minimize them)" >&2
    exit 1
fi
echo "==> no target crashed"
