#!/usr/bin/env bash
# Socket writes (sendto + writev) of rotor's server processes per delivery, counted by
# perf over 3 s of one fan-out step: 1,000 subscribers, 800k deliveries/s, server on CPU 0,
# load on CPU 1. Extra arguments go to rotor-bench (e.g. `--engine redis`, `--nodes 3`);
# ROTOR_BIN picks the server binary (default target/release/rotor).
#
#   scripts/writes-per-delivery.sh --engine memory
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000
export ROTOR_BIN="${ROTOR_BIN:-$PWD/target/release/rotor}"
out=$(mktemp)
taskset -c 1 target/release/rotor-bench fanout --subs 1000 --duration 6 --p99-budget-ms 1000 \
  --deliveries 800000 "$@" --server-cpus 0 >"$out" 2>&1 &
bench=$!
for _ in $(seq 1 200); do grep -q "^# rotor" "$out" && break; sleep 0.1; done
sleep 1.5
pids=$(pgrep -d, -f "$ROTOR_BIN --config")
timeout -s INT 3 perf stat -x, -e syscalls:sys_enter_sendto,syscalls:sys_enter_writev -p "$pids" 2>&1 |
  awk -F, '{s+=$1} END {printf "socket writes in 3 s: %d (%.0f/s), %.3f per delivery at 800k/s\n", s, s/3, s/3/800000}'
wait "$bench"
rm -f "$out"
