#!/usr/bin/env bash
# A/B of hubbub builds: a fixed-rate fan-out (1000 clients, 10 rooms, 10 publishers) against
# each binary in turn, printing latency and, less sensitive to a busy machine, the server's
# context switches (summed over its threads) and utime/stime in clock ticks.
#   bench/ab.sh RATE LABEL=BIN:ENGINE ...     (ENGINE: durable | memory)
#   PROTOCOL=socketio bench/ab.sh ...          (the clients speak Socket.IO v5; default hubbub)
# Build hubbub-bench first: cargo build --release -p hubbub-bench. Used in bench/profiling.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/target/release/hubbub-bench}
WORK=${WORK:-$(mktemp -d)}
rate=$1; shift
for spec in "$@"; do
  label=${spec%%=*}; rest=${spec#*=}; bin=${rest%%:*}; engine=${rest#*:}
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  data=$WORK/data-$label; rm -rf "$data"; mkdir -p "$data"
  cfg=$WORK/$label.toml
  {
    printf '[node]\nname = "bench"\nhttp_addr = "127.0.0.1:%s"\n\n' "$port"
    printf '[limits]\nmax_connections = 20000\nframes_per_second = 0\n'
    # Builds before e2400ec have no max_http_connections (and refuse unknown keys); from
    # then on it must be at least max_connections.
    if "$bin" default-config | grep -q '^max_http_connections'; then
      printf 'max_http_connections = 24000\n'
    fi
    printf '\n'
    printf '[rate_limit]\nmessages_per_minute = 0\nconnections_per_ip = 0\nhandshakes_per_ip_per_sec = 0\n\n'
    printf '[log]\nlevel = "warn"\nformat = "json"\n\n'
    printf '[storage]\nengine = "%s"\n' "$engine"
    [[ $engine == durable ]] && printf 'dir = "%s"\n' "$data"
  } > "$cfg"
  "$bin" serve --config "$cfg" > $WORK/$label.log 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  t0=$(awk '{print $14" "$15}' /proc/$pid/stat)
  cs0=$(cat /proc/$pid/task/*/status | awk '/ctxt_switches/ {s+=$2} END {print s}')
  "$BENCH" --url "ws://127.0.0.1:$port" --protocol "${PROTOCOL:-hubbub}" --label "$label" --json "$WORK/$label-$rate.json" \
     fanout --clients 1000 --rooms 10 --publishers 10 --rate "$rate" --duration 6 --warmup 1 --settle 1 --size 100 --pid $pid \
     > $WORK/$label-$rate.txt 2>&1 || true
  t1=$(awk '{print $14" "$15}' /proc/$pid/stat)
  cs1=$(cat /proc/$pid/task/*/status | awk '/ctxt_switches/ {s+=$2} END {print s}')
  echo "$label ctxt switches during run: $((cs1-cs0)) cpu utime,stime before: $t0 after: $t1"
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$WORK/$label-$rate.json" "$label" "$rate" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))['result']
s=r['steps'][-1] if 'steps' in r else r
l=s['latency']
print(f"{sys.argv[2]:>10} @{sys.argv[3]}: p50 {l['p50_ms']:.2f} p90 {l['p90_ms']:.2f} p99 {l['p99_ms']:.2f} max {l['max_ms']:.2f} lost {s.get('lost')} cpu/deliv {s.get('server_cpu_us_per_delivery', s.get('cpu'))}")
PY
done
