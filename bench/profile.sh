#!/usr/bin/env bash
# Where a hubbub node spends its instructions under fan-out load: the release binary
# under valgrind's callgrind (repeatable instruction counts; this machine's perf has no
# hardware counters) through a short `fanout` run, then callgrind_annotate's top
# functions, exclusive and inclusive. What it found is written up in
# bench/profiling.md, which docs/performance.md includes.
#
#   bench/profile.sh                      200 clients, 10 rooms, 100 msg/s for 10 s
#   PROFILE_FANOUT="--clients 1000 --rooms 10 --rate 50 --duration 5" bench/profile.sh
#
# Only the publishing phase is counted: the counters are zeroed once the first publish
# arrives and dumped when the run ends. Output: target/bench/profile-<date>/
# (callgrind.out*, annotate-*.txt of the steady state, the bench's JSON). Callgrind runs the node ~50x slower, so the load is small, and latency figures
# from this run mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/bench/profile-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
FANOUT=${PROFILE_FANOUT:-"--clients 200 --rooms 10 --rate 100 --duration 10"}

command -v valgrind >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
cargo build --release --locked -p hubbub -p hubbub-bench

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# shellcheck source=bench/profile-config.sh
source "$ROOT/bench/profile-config.sh"
profile_node_config profile "$PORT" >"$OUT/hubbub.toml"

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" \
  "$ROOT/target/release/hubbub" serve --config "$OUT/hubbub.toml" >"$OUT/hubbub.log" 2>&1 &
NODE=$!
trap 'kill -INT $NODE 2>/dev/null || true; wait $NODE 2>/dev/null || true' EXIT

for _ in $(seq 600); do
  if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz" || true) == 200 ]]; then
    break
  fi
  sleep 0.1
done

# The counts that matter are the steady state: instrumentation starts once the first
# publish has arrived (connecting and joining are done by then) and stops when the run
# ends; the file written at exit holds that window only.
publishes() {
  curl -s "http://127.0.0.1:$PORT/metrics" |
    awk '/^hubbub_messages_total\{direction="in",type="publish"\}/ {print $2}'
}
# shellcheck disable=SC2086 # FANOUT is a list of options
"$ROOT/target/release/hubbub-bench" --url "ws://127.0.0.1:$PORT" --label "hubbub under callgrind" \
  --timeout-ms 60000 --connect-concurrency 16 --json "$OUT/fanout.json" \
  fanout $FANOUT --warmup 0 --drain-timeout 30 >"$OUT/fanout.txt" &
BENCH=$!
until [[ $(publishes) =~ ^[1-9] ]]; do
  kill -0 $BENCH 2>/dev/null || break
  sleep 0.2
done
callgrind_control --instr=on $NODE >/dev/null
wait $BENCH
cat "$OUT/fanout.txt"
callgrind_control --instr=off $NODE >/dev/null
kill -INT $NODE
wait $NODE || true
trap - EXIT

STEADY=$OUT/callgrind.out
callgrind_annotate --inclusive=no "$STEADY" >"$OUT/annotate-exclusive.txt" 2>/dev/null
callgrind_annotate --inclusive=yes "$STEADY" >"$OUT/annotate-inclusive.txt" 2>/dev/null
echo "== exclusive (self) instructions, top functions"
sed -n '1,45p' "$OUT/annotate-exclusive.txt"
echo "(full output in $OUT)"
