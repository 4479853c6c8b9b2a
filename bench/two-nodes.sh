#!/usr/bin/env bash
# Two durable nodes (voters a and b, node.threads = 1 each, as bench/run.sh runs its
# two-node cluster) through the bench's fan-out at one fixed RATE (1000 clients over
# both nodes, 10 rooms, 10 publishers), printing the step's latency, the servers' and
# the load generator's CPU, and each server thread's CPU ticks. For A/B of builds at a
# fixed load: run it against each build's binaries in turn, interleaved.
#
#   bench/two-nodes.sh RATE                 binaries of target/release
#   BIN=/some/dir DUR=6 bench/two-nodes.sh 1600
#   PROTOCOL=socketio bench/two-nodes.sh 400   the clients speak Socket.IO v5 (default hubbub)
#
# Also prints each node's cluster envelopes out by kind over the step (/metrics).
#
# Build first: cargo build --release -p hubbub -p hubbub-bench. Used in
# bench/profiling.md ("Two nodes, continued").
set -u
RATE=${1:?rate in msg/s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
D=$(mktemp -d); mkdir -p "$D/data"
# shellcheck source=bench/profile-config.sh
source "$ROOT/bench/profile-config.sh"
read -r a b ca cb < <(free_ports 4)
cfg() {
  {
    bench_node_config "$1" "$2" 1
    printf '\n[log]\nlevel = "warn"\nformat = "json"\n'
    durable_section "$D/data"
    pair_cluster_section "$3" "$ca" "$cb" two-nodes
  } > "$D/$1.toml"
}
cfg a "$a" "$ca"; cfg b "$b" "$cb"
"$BIN/hubbub" serve --config "$D/a.toml" > "$D/a.log" 2>&1 & pa=$!
"$BIN/hubbub" serve --config "$D/b.toml" > "$D/b.log" 2>&1 & pb=$!
for p in $a $b; do
  for _ in $(seq 100); do curl -sf "localhost:$p/readyz" >/dev/null && break; sleep 0.2; done
done
threads() {
  for task in /proc/$1/task/*; do
    echo "$(tr ' ' _ < "$task/comm") $(awk '{print $14+$15}' "$task/stat")"
  done | awk '{s[$1]+=$2} END {for (k in s) print k, s[k]}' | sort
}
envelopes() {
  curl -sf "localhost:$1/metrics" | awk '/^hubbub_cluster_messages_total\{direction="out"/ {
    match($0, /kind="[a-z_]+"/); print substr($0, RSTART + 6, RLENGTH - 7), $NF }' | sort
}
threads $pa > "$D/ta0"; threads $pb > "$D/tb0"
envelopes $a > "$D/ea0"; envelopes $b > "$D/eb0"
"$BIN/hubbub-bench" --protocol "${PROTOCOL:-hubbub}" --url "ws://127.0.0.1:$a,ws://127.0.0.1:$b" --label two --json "$D/out.json" \
  fanout --clients 1000 --rooms 10 --publishers 10 --rate "$RATE" --duration "${DUR:-4}" \
  --pid $pa --pid $pb > "$D/bench.txt" 2>&1
threads $pa > "$D/ta1"; threads $pb > "$D/tb1"
envelopes $a > "$D/ea1"; envelopes $b > "$D/eb1"
for n in a b; do
  echo "CPU ticks by thread, node $n:"
  join "$D/t${n}0" "$D/t${n}1" | awk '{print "  ", $1, $3-$2}'
  echo "cluster envelopes out, node $n:"
  join "$D/e${n}0" "$D/e${n}1" | awk '$3 - $2 > 0 {print "  ", $1, $3-$2}'
done
kill $pa $pb; wait 2>/dev/null
python3 - "$D/out.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["result"]["steps"]:
    print("rate %.0f held=%s lost=%d p50=%.1f ms p99=%.1f ms server CPU %.2f s, load generator %.2f s, "
          "%.2f us per delivery" % (s["rate"], s["held"], s["lost"], s["latency"]["p50_ms"],
          s["latency"]["p99_ms"], s["server"]["cpu_s"], s["client"]["cpu_s"],
          s["server"]["cpu_us_per_delivery"]))
PY
rm -rf "$D"
