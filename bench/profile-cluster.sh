#!/usr/bin/env bash
# Where a node's instructions go with and without a cluster peer: node a under
# valgrind's callgrind through a short, light fan-out (200 clients in 10 rooms,
# 100 msg/s for 10 s), alone (`one`) or clustered with node b (`two`: voters a and b,
# clients spread over both, so a delivers half the messages and takes part in every
# shard's Raft group). Counted from the first message a delivers to the end of the
# run. Durable storage, fsync "always", as the benchmark. Written up in
# bench/profiling.md.
#
#   bench/profile-cluster.sh one
#   bench/profile-cluster.sh two
#   BIN=/some/dir bench/profile-cluster.sh two   a build's binaries, not built here
#
# Output in target/bench/profile-cluster-MODE/ (or $OUT): callgrind.out, excl.txt and incl.txt
# (callgrind_annotate), the bench's JSON, node a's metrics at the end.
set -u
MODE=${1:?one or two}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
command -v valgrind >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
[[ -n ${BIN:-} ]] || cargo build --release --locked -p hubbub -p hubbub-bench
D=${OUT:-${CARGO_TARGET_DIR:-$ROOT/target}/bench/profile-cluster-$MODE}; rm -rf $D; mkdir -p $D/data
# shellcheck source=bench/profile-config.sh
source "$ROOT/bench/profile-config.sh"
read -r a b ca cb < <(free_ports 4)
cfg() {
  {
    profile_node_config "$1" "$2" 1
    printf 'format = "json"\n'
    durable_section "$D/data"
    if [[ $MODE == two ]]; then
      pair_cluster_section "$3" "$ca" "$cb" profile-cluster
      printf 'heartbeat_ms = 500\nfailure_timeout_ms = 10000\n'
    fi
  } > $D/$1.toml
}
cfg a $a $ca; cfg b $b $cb
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$D/callgrind.out $T/hubbub serve --config $D/a.toml > $D/a.log 2>&1 & pa=$!
urls=ws://127.0.0.1:$a
if [[ $MODE == two ]]; then $T/hubbub serve --config $D/b.toml > $D/b.log 2>&1 & pb=$!; urls=$urls,ws://127.0.0.1:$b; fi
for p in $a; do for i in $(seq 600); do curl -sf localhost:$p/readyz >/dev/null && break; sleep 0.2; done; done

$T/hubbub-bench --url $urls --label cg --timeout-ms 60000 --connect-concurrency 16 --json $D/out.json fanout --clients 200 --rooms 10 --rate 100 --duration 10 --warmup 0 --drain-timeout 30 > $D/bench.txt 2>&1 & bp=$!
# instrument from the first publish anywhere (b's publishes reach a as Raft entries)
until curl -s "http://127.0.0.1:$a/metrics" | grep -q 'hubbub_messages_total{direction="out",type="message"} [1-9]'; do kill -0 $bp 2>/dev/null || break; sleep 0.2; done
callgrind_control --instr=on $pa >/dev/null
out0=$(curl -s "http://127.0.0.1:$a/metrics" | awk '/^hubbub_messages_total\{direction="out",type="message"\}/ {print $2}')
wait $bp
callgrind_control --instr=off $pa >/dev/null
out1=$(curl -s "http://127.0.0.1:$a/metrics" | awk '/^hubbub_messages_total\{direction="out",type="message"\}/ {print $2}')
echo "message frames out while instrumented: $((out1-out0))"
curl -s "http://127.0.0.1:$a/metrics" | grep -E 'hubbub_messages_total\{direction="out",type="message"\}|hubbub_cluster_messages_total' > $D/metrics.txt
kill -INT $pa; wait $pa
[[ $MODE == two ]] && kill $pb
cat $D/bench.txt | grep step
callgrind_annotate --inclusive=no $D/callgrind.out 2>/dev/null > $D/excl.txt
callgrind_annotate --inclusive=yes $D/callgrind.out 2>/dev/null > $D/incl.txt
grep "PROGRAM TOTALS" $D/excl.txt
cat $D/metrics.txt
