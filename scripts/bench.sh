#!/usr/bin/env bash
# Reproduces docs/benchmarks.md end to end: builds the release binaries, runs every scenario
# with the server under test pinned to CPU 0 and the load (rotor-bench and its workers) to
# CPU 1, then draws docs/benchmarks.png. Results: target/bench/results.jsonl (one JSON object
# per line) and the tables printed here.
#
#   scripts/bench.sh            # everything (~30 minutes)
#   scripts/bench.sh idle       # one group: idle | memory | fanout | channels | protobuf |
#                               # features | churn | cluster | postgres
#   scripts/bench.sh memory     # the memory regression check alone (~2 minutes): exits 1
#                               # when a transport holds more per idle connection than its
#                               # budget
#
# Needs: nats-server (Debian package nats-server), Redis on 127.0.0.1:6379 for `cluster`,
# PostgreSQL on 127.0.0.1:5432 for `postgres`, python3 (matplotlib is installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

cargo build --release -p rotor-server -p rotor-bench
ulimit -n 20000 || { echo "needs 20,000 open files (ulimit -n)"; exit 1; }

out=target/bench
mkdir -p "$out"
results="$out/results.jsonl"
groups="${*:-idle memory fanout channels protobuf features churn cluster postgres}"
[ $# -eq 0 ] && rm -f "$results"

# One failed run is reported and the others go on; the script fails at the end.
failed=0
bench() {
  taskset -c 1 target/release/rotor-bench "$@" --server-cpus 0 --json "$results" ||
    { echo "!!! FAILED: rotor-bench $*"; failed=1; }
}
peers_and_rotor="ceiling nats rotor-ws rotor-http-stream rotor-sse"

for g in $groups; do
  case "$g" in
    idle)
      # The server holds one socket per connection and the open-file limit is 20,000;
      # http_stream/sse also need sockets for their emulation POSTs, so they stop at 18,000.
      for t in ceiling nats rotor-ws; do bench idle --target "$t" --counts 1000,5000,10000,19000; done
      for t in rotor-http-stream rotor-sse; do bench idle --target "$t" --counts 1000,5000,10000,18000; done ;;
    memory)
      # The memory regression check: every transport in the shape most apps open (each
      # connection its own user and its own channel with presence and history), held to a
      # budget of KiB per idle connection a little above what it measured
      # (docs/benchmarks.md): a change that makes idle connections heavier fails here.
      for t in rotor-ws rotor-ws-protobuf; do
        bench idle --target "$t" --shape realistic --counts 1000,5000,10000 --max-kib 4.5
      done
      for t in rotor-http-stream rotor-sse; do
        bench idle --target "$t" --shape realistic --counts 1000,5000,10000 --max-kib 7
      done ;;
    fanout)
      # p99 budget 1 s: with 10k subscribers the load core alone needs ~100 ms to take in one
      # publication's 10k frames, so a tighter budget would stop every target at step one.
      # 10k subscribers get 8 s steps: the delivered rate is divided by the time until the
      # last message arrived, so with 3 s steps a p99 of ~150 ms alone fails a step there.
      for t in $peers_and_rotor; do
        bench fanout --target "$t" --subs 100,1000 --duration 3 --p99-budget-ms 1000 \
          --deliveries 100000,800000,1600000,2400000,3200000,4000000
        bench fanout --target "$t" --subs 10000 --duration 8 --p99-budget-ms 1000 \
          --deliveries 100000,400000,1600000,2400000,2800000,3200000,3600000,4000000,4400000
      done ;;
    channels)
      for t in ceiling nats rotor-ws; do
        bench fanout --target "$t" --subs 10000 --channels each \
          --deliveries 5000,10000,20000,40000,80000,160000 --duration 3
      done ;;
    protobuf)
      # JSON, Protobuf and a channel with both (every other subscriber Protobuf), side by
      # side in the same run: idle memory per connection and the 10k fan-out ramp.
      for t in rotor-ws rotor-ws-protobuf; do bench idle --target "$t" --counts 1000,5000,10000; done
      for t in rotor-ws rotor-ws-protobuf rotor-ws-mixed; do
        bench fanout --target "$t" --subs 10000 --duration 8 --p99-budget-ms 1000 \
          --deliveries 100000,400000,1600000,2400000,2800000,3200000,3600000,4000000,4400000
      done ;;
    features)
      # Channel features (docs/benchmarks.md, "Channel features"): a 10k fan-out published
      # through the server API without a filter, with a simple and with a complex tags
      # filter on every subscriber (all pass, so the deliveries are the same), then the
      # bytes delta compression saves on a slowly changing document.
      for f in "--api-publish" "--tags-filter simple" "--tags-filter complex"; do
        bench fanout --target rotor-ws $f --subs 10000 --duration 8 --p99-budget-ms 1000 \
          --deliveries 100000,400000,1600000,2400000,2800000,3200000,3600000,4000000,4400000
      done
      bench delta --publications 2000 ;;
    churn)
      bench churn --alg rs256 --duration 10
      # Connects decided by the application backend (connect proxy, a local backend in
      # rotor-bench on the load CPU) beside HS256 tokens: alternated, three rounds.
      for _ in 1 2 3; do
        bench churn --alg hs256 --duration 10
        bench churn --alg proxy --duration 10
      done
      bench churn --alg hs256 --refresh 5000 --ttl 5 --duration 20
      # RS256 signing (pure Rust) is slow on the load side: 500 connections keep the load
      # generator from signing refresh tokens late.
      bench churn --alg rs256 --refresh 500 --ttl 5 --duration 20 ;;
    cluster)
      # One node in memory, one node on Redis, three nodes on Redis (all on CPU 0), in one
      # run: the ratios are the point (docs/benchmarks.md, "Across nodes").
      for engine in "--engine memory" "--engine redis" "--nodes 3"; do
        bench fanout --target rotor-ws $engine --subs 1000 --duration 3 --p99-budget-ms 1000 \
          --deliveries 800000,1600000,2400000,3200000,4000000,4800000,5600000,6400000,7200000
        bench fanout --target rotor-ws $engine --subs 10000 --duration 8 --p99-budget-ms 1000 \
          --deliveries 400000,1600000,2400000,3200000,3600000,4000000,4400000
      done ;;
    postgres)
      # The ceiling first: what Postgres itself takes when 64 publications go in one
      # transaction, from 2 and from 4 clients (pgbench, scripts/pg-ceiling.sql), then rotor.
      dsn="${BENCH_PG_DSN:-postgres://postgres@127.0.0.1:5432/test}"
      psql "$dsn" -q -c "DROP SCHEMA IF EXISTS rotor_ceiling CASCADE" -c "CREATE SCHEMA rotor_ceiling"
      PGOPTIONS="-c search_path=rotor_ceiling" psql "$dsn" -q -f migrations/20261123000001_storage.sql
      PGOPTIONS="-c search_path=rotor_ceiling" psql "$dsn" -q -c \
        "INSERT INTO rotor_streams SELECT 'chat:'||i, 'e', 0, now() + interval '1 hour' FROM generate_series(0,7) i"
      for clients in 2 4; do
        tps=$(PGOPTIONS="-c search_path=rotor_ceiling" pgbench -n -f scripts/pg-ceiling.sql \
          -c "$clients" -j 2 -T 10 "$dsn" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
        echo "pgbench ceiling, $clients clients: $tps transactions/s of 64 = $(echo "$tps * 64" | bc) publications/s"
      done
      psql "$dsn" -q -c "DROP SCHEMA rotor_ceiling CASCADE"
      cargo bench -p rotor-bench --bench pg_publish ;;
    *) echo "unknown group $g"; exit 2 ;;
  esac
done

# The plot shows the idle and fanout groups: redrawn when one of them ran.
case " $groups " in
  *" idle "*|*" fanout "*)
    python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib
    python3 scripts/plot-bench.py "$results" docs/benchmarks.png
    echo "results: $results; plot: docs/benchmarks.png" ;;
  *) echo "results: $results" ;;
esac
[ "$failed" -eq 0 ] || { echo "!!! some runs failed or went over budget (above)"; exit 1; }
