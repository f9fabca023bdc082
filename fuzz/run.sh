#!/usr/bin/env bash
# Bounded, non-interactive fuzzing of every rotor fuzz target (CI-friendly).
#
#   fuzz/run.sh [seconds-per-target]      (default 30)
#
# 1. installs cargo-fuzz if missing, builds all targets once;
# 2. replays fuzz/regressions/<target>/* (inputs that once crashed) against each target;
# 3. fuzzes each target for the given time on a fresh COPY of fuzz/corpus/<target>/
#    (in fuzz/target/corpus-run/), so runs never modify files tracked by git.
#
# Exits non-zero when any target crashes, hangs or fails a regression, after running all of
# them, and prints where the crashing input was written.
#
# Environment:
#   FUZZ_TARGETS        space-separated subset of targets (default: all in fuzz_targets/)
#   FUZZ_TOOLCHAIN      rustup toolchain for cargo-fuzz (default: nightly)
#   FUZZ_SANITIZER      address (default), none, ...: passed to `cargo fuzz build -s`
#   CARGO_BUILD_JOBS    build parallelism (default: 1)
#   FUZZ_NICE           nice level of the build and the fuzzers (default: 19)
#   FUZZ_MAX_LEN        libFuzzer -max_len (default: 65536)
#   FUZZ_KEEP_CORPUS=1  keep growing fuzz/target/corpus-run/ across runs instead of recopying
#   FUZZ_VERBOSE=1      stream libFuzzer's output (otherwise it goes to fuzz/target/logs/)
set -euo pipefail

SECONDS_PER_TARGET="${1:-30}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
    echo "usage: $0 [seconds-per-target]   (a positive integer, default 30)" >&2
    exit 2
fi

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
SANITIZER="${FUZZ_SANITIZER:-address}"
NICE="${FUZZ_NICE:-19}"
MAX_LEN="${FUZZ_MAX_LEN:-65536}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a TARGETS <<<"$FUZZ_TARGETS"
else
    TARGETS=()
    for f in "$FUZZ_DIR"/fuzz_targets/*.rs; do
        TARGETS+=("$(basename "$f" .rs)")
    done
fi

dict_for() {
    case "$1" in
        protocol_decode | emulation_request) echo "$FUZZ_DIR/dict/protocol.dict" ;;
        protobuf_decode) echo "$FUZZ_DIR/dict/protobuf.dict" ;;
        jwt_verify) echo "$FUZZ_DIR/dict/jwt.dict" ;;
        config_parse) echo "$FUZZ_DIR/dict/config.dict" ;;
        *) echo "" ;;
    esac
}

log() { printf '\n==> %s\n' "$*"; }

# --- 1. tools and build ---------------------------------------------------------------------
if ! cargo "+$TOOLCHAIN" fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    nice -n "$NICE" cargo install cargo-fuzz --locked
fi

TRIPLE="$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')"
BIN_DIR="$FUZZ_DIR/target/$TRIPLE/release"

log "building ${TARGETS[*]} (sanitizer: $SANITIZER, jobs: $CARGO_BUILD_JOBS)"
build_start=$(date +%s)
for t in "${TARGETS[@]}"; do
    [ -f "$FUZZ_DIR/fuzz_targets/$t.rs" ] || { echo "unknown target $t" >&2; exit 2; }
done
if [ "${#TARGETS[@]}" -eq "$(ls "$FUZZ_DIR"/fuzz_targets/*.rs | wc -l)" ]; then
    nice -n "$NICE" cargo "+$TOOLCHAIN" fuzz build --fuzz-dir "$FUZZ_DIR" -s "$SANITIZER"
else
    for t in "${TARGETS[@]}"; do
        nice -n "$NICE" cargo "+$TOOLCHAIN" fuzz build --fuzz-dir "$FUZZ_DIR" -s "$SANITIZER" "$t"
    done
fi
echo "build took $(($(date +%s) - build_start))s"

RUN_ROOT="$FUZZ_DIR/target/corpus-run"
LOG_DIR="$FUZZ_DIR/target/logs"
mkdir -p "$RUN_ROOT" "$LOG_DIR"
# Scratch space for targets that need files (config_parse); removed on exit.
ROTOR_FUZZ_TMP="$(mktemp -d "${TMPDIR:-/tmp}/rotor-fuzz.XXXXXX")"
export ROTOR_FUZZ_TMP
trap 'rm -rf "$ROTOR_FUZZ_TMP"' EXIT

declare -a FAILED=()
declare -a SUMMARY=()

# --- 2. regressions -------------------------------------------------------------------------
for t in "${TARGETS[@]}"; do
    reg_dir="$FUZZ_DIR/regressions/$t"
    [ -d "$reg_dir" ] || continue
    mapfile -t inputs < <(find "$reg_dir" -type f ! -name '*.md' ! -name '.*' | sort)
    [ "${#inputs[@]}" -gt 0 ] || continue
    log "$t: replaying ${#inputs[@]} regression input(s) from ${reg_dir#"$FUZZ_DIR"/}"
    for input in "${inputs[@]}"; do
        rc=0
        nice -n "$NICE" "$BIN_DIR/$t" -rss_limit_mb=2048 -timeout=10 "$input" \
            >"$LOG_DIR/$t.regression.log" 2>&1 || rc=$?
        if [ "$rc" -ne 0 ]; then
            echo "REGRESSION FAILED: $t $input (exit $rc)"
            grep -m1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" \
                "$LOG_DIR/$t.regression.log" || true
            grep -m1 -A1 -E "^thread .* panicked at" "$LOG_DIR/$t.regression.log" | tail -1 || true
            FAILED+=("$t (regression ${input#"$FUZZ_DIR"/})")
        else
            echo "ok: ${input#"$FUZZ_DIR"/}"
        fi
    done
done

# --- 3. bounded fuzzing ---------------------------------------------------------------------
for t in "${TARGETS[@]}"; do
    corpus="$RUN_ROOT/$t"
    if [ "${FUZZ_KEEP_CORPUS:-0}" != 1 ] || [ ! -d "$corpus" ]; then
        rm -rf "$corpus"
        mkdir -p "$corpus"
        if [ -d "$FUZZ_DIR/corpus/$t" ]; then
            cp -R "$FUZZ_DIR/corpus/$t/." "$corpus/"
        fi
    fi
    artifacts="$FUZZ_DIR/artifacts/$t"
    mkdir -p "$artifacts"
    args=(
        "-max_total_time=$SECONDS_PER_TARGET"
        -rss_limit_mb=2048
        "-max_len=$MAX_LEN"
        -timeout=10
        -print_final_stats=1
        "-artifact_prefix=$artifacts/"
    )
    dict="$(dict_for "$t")"
    [ -n "$dict" ] && args+=("-dict=$dict")

    log "$t: fuzzing for ${SECONDS_PER_TARGET}s (corpus copy: ${corpus#"$FUZZ_DIR"/})"
    logf="$LOG_DIR/$t.log"
    rc=0
    # `timeout` is a safety net only: libFuzzer stops itself after -max_total_time.
    if [ "${FUZZ_VERBOSE:-0}" = 1 ]; then
        timeout --signal=INT --kill-after=30 $((SECONDS_PER_TARGET + 120)) \
            nice -n "$NICE" "$BIN_DIR/$t" "${args[@]}" "$corpus" 2>&1 | tee "$logf" || rc=$?
    else
        timeout --signal=INT --kill-after=30 $((SECONDS_PER_TARGET + 120)) \
            nice -n "$NICE" "$BIN_DIR/$t" "${args[@]}" "$corpus" >"$logf" 2>&1 || rc=$?
    fi

    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$logf" | tail -1 || true)"
    [ -n "$done_line" ] || done_line="$(grep -E '^#[0-9]+' "$logf" | tail -1 || true)"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -1)"
    speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logf" | tail -1)"
    echo "$done_line"
    echo "runs: ${runs:-?}  exec/s: ${speed:-?}  corpus: $(find "$corpus" -type f | wc -l) files  log: ${logf#"$FUZZ_DIR"/}"

    if [ "$rc" -ne 0 ]; then
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logf" | tail -1)"
        echo "CRASH in $t (exit $rc)"
        grep -m1 -A1 -E "^thread .* panicked at" "$logf" || true
        grep -m1 -E "^==[0-9]+==ERROR|ERROR: libFuzzer" "$logf" || true
        if [ -n "$artifact" ]; then
            echo "crashing input: $artifact"
            echo "reproduce:      $BIN_DIR/$t $artifact"
            echo "               (or: cargo +$TOOLCHAIN fuzz run --fuzz-dir $FUZZ_DIR $t $artifact)"
        fi
        [ -n "$artifact" ] || { echo "last lines of the log:"; tail -n 20 "$logf" | sed 's/^/    /'; }
        echo "full log:       $logf"
        FAILED+=("$t${artifact:+ ($artifact)}")
        SUMMARY+=("$t: CRASH after ${runs:-?} runs")
    else
        SUMMARY+=("$t: ok, ${runs:-?} runs, ${speed:-?} exec/s; ${done_line#*DONE }")
    fi
done

log "summary (${SECONDS_PER_TARGET}s per target)"
printf '  %s\n' "${SUMMARY[@]}"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "FAILED:"
    printf '  %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all targets ran without crashes"
