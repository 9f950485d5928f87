#!/usr/bin/env bash
# Runs the benchmark matrix of docs/benchmarks.md, each case RUNS times (default 3), and
# writes one JSON report per run to benches/results/ (OUT=dir to change); runs whose report
# is already there are skipped, so an interrupted matrix resumes. Needs RabbitMQ and
# Redis on localhost (bash scripts/test.sh --services starts them). Runs the load harness
# target/release/wxpush-bench (crates/bench), building it first with
# `cargo build --release -p wxpush-bench`; BIN=path runs another build instead.
#
#   scripts/bench_matrix.sh            # everything (about 15 minutes on 2 cores)
#   scripts/bench_matrix.sh a c        # only some cases
#
# Then: python3 scripts/plot_bench.py  (table + docs/benchmarks-window.png)
#
# Redis commands are counted server-wide (INFO commandstats): on a Redis shared with other
# work, point the bench at a private one, e.g.
#   redis-server --port 6391 --save '' --appendonly no --daemonize yes
#   WXPUSH_REDIS__URL=redis://127.0.0.1:6391/0 scripts/bench_matrix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
    BIN=${CARGO_TARGET_DIR:-target}/release/wxpush-bench
    echo "== cargo build --release -p wxpush-bench" >&2
    cargo build --release --locked -p wxpush-bench --quiet
fi
[ -x "$BIN" ] || {
    echo "no load harness at $BIN: build it with cargo build --release -p wxpush-bench, or set BIN" >&2
    exit 1
}
OUT=${OUT:-benches/results}
RUNS=${RUNS:-3}
EVENTS=${EVENTS:-20000}
WINDOWS=${WINDOWS:-32 64 128 256 512}
mkdir -p "$OUT"
# The worker's default log level: per-message spans cost what they cost in production.
unset RUST_LOG

bench() { # name, then wxpush-bench arguments
    local name=$1; shift
    for run in $(seq 1 "$RUNS"); do
        # Resuming: a run whose report exists is not run again.
        [ -s "$OUT/$name-$run.json" ] && continue
        # A run that fails (e.g. another test suite restarting the broker) is tried again.
        for attempt in 1 2 3; do
            echo "== $name run $run (attempt $attempt): wxpush-bench $*" >&2
            if "$BIN" --events "$EVENTS" --json "$OUT/$name-$run.json" "$@" \
                >"$OUT/$name-$run.txt" 2>"$OUT/$name-$run.log"; then
                grep -E "sends/s|ceiling|end to end|added|token|Redis|RSS|CPU" "$OUT/$name-$run.txt" >&2 || true
                break
            fi
            echo "   failed: $(tail -1 "$OUT/$name-$run.log")" >&2
            sleep 20
        done
    done
}

cases=${*:-a b c d e}
for case in $cases; do
    case $case in
    # (a) no emulator latency, one in-process worker, against the plain consume+ack ceiling
    a) bench a-latency0-inproc --baseline ;;
    # (b) 100 ms emulator latency, one worker process, in-flight window = prefetch
    b) for p in $WINDOWS; do
           bench "b-latency100-p$p" --latency 100ms --processes 1 --prefetch "$p"
       done ;;
    # (c) steady 1000/s at 100 ms latency: latency added by wxpush + RabbitMQ + Redis
    c) bench c-rate1000-latency100 --rate 1000/s --latency 100ms --processes 1 ;;
    # (d) peak RSS of one worker process at prefetch 256 under full load (no latency)
    d) bench d-latency0-proc1 --processes 1 ;;
    # (e) cold start of 8 worker processes at once: token fetches
    e) bench e-cold-proc8 --processes 8 --latency 100ms ;;
    *) echo "unknown case $case (a b c d e)" >&2; exit 2 ;;
    esac
done
