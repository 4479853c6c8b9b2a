#!/usr/bin/env bash
# The full benchmark: hubbub against a Node `ws` server, socket.io (one process, and two
# behind Redis), and a Rust floor, through the same scenarios on this machine in one
# run; hubbub also with its room logs in memory (storage on vs off) and as a
# three-node cluster (publish-to-ack latency across nodes); hubbub's Socket.IO endpoint
# (one node and two) against socket.io 4 and socketioxide; then docs/performance.md
# and docs/performance.svg are written from the results.
#
#   bench/run.sh                  the full run (about 32 minutes on 2 cores)
#   BENCH_REPEAT=0 bench/run.sh   without the second fan-out ramp per system (~20 min)
#   BENCH_QUICK=1 bench/run.sh    small numbers, to check the script end to end (~10 min)
#   BENCH_SYSTEMS="hubbub floor" bench/run.sh    only some systems (default: all of
#                                 hubbub hubbub-mem node-ws socketio-1 floor hubbub-2
#                                 socketio-2 hubbub-3 hubbub-sio socketioxide
#                                 hubbub-sio-2)
#   BENCH_SYSTEMS=socketio BENCH_NO_DOC=1 bench/run.sh
#                                 the Socket.IO group alone (~14 min): hubbub-sio
#                                 socketio-1 socketioxide hubbub-sio-2 socketio-2
#   BENCH_NO_DOC=1 bench/run.sh   results only, docs/ untouched
#
# docs/performance.md is written from this run's results alone: a run of some systems
# writes a page with only theirs (use BENCH_NO_DOC=1 and bench/report.py into /tmp).
#
# The systems: hubbub (one node, durable room logs, storage.fsync "always", the
# default), hubbub-mem (the same with storage.engine "memory"), hubbub-2 and hubbub-3
# (two and three clustered nodes, durable), hubbub-sio and hubbub-sio-2 (the nodes of
# hubbub and hubbub-2, spoken to in Socket.IO v5), and the peers. Every hubbub system
# but the Socket.IO ones also runs `ack` (publish-to-acknowledgement latency at fixed
# rates).
#
# It installs what is missing (npm packages from the lock files, Debian's redis-server,
# python3 for the report), builds release binaries (into $CARGO_TARGET_DIR if set, else
# target/; the socketioxide peer, a workspace of its own, only when it is selected),
# starts one system at a time on loopback ports, runs the scenarios against it, and
# stops it. Every process it starts
# is stopped on exit, whatever the exit. Results: target/bench/<date>/*.json, copied to
# bench/results/ for the doc. Traffic stays on 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${BENCH_OUT:-$ROOT/target/bench/$STAMP}
mkdir -p "$OUT"
LOG=$OUT/logs
mkdir -p "$LOG"
SYSTEMS=${BENCH_SYSTEMS:-"hubbub hubbub-mem node-ws socketio-1 floor hubbub-2 socketio-2 hubbub-3 hubbub-sio socketioxide hubbub-sio-2"}
# The Socket.IO group: hubbub's Socket.IO endpoint against socket.io 4 and socketioxide,
# one node (hubbub-sio, socketio-1, socketioxide) and two (hubbub-sio-2, socketio-2).
expanded=
for system in $SYSTEMS; do
  case $system in
    socketio) expanded+=" hubbub-sio socketio-1 socketioxide hubbub-sio-2 socketio-2" ;;
    *) expanded+=" $system" ;;
  esac
done
SYSTEMS=${expanded# }
QUICK=${BENCH_QUICK:-0}

log() { printf '\n== %s\n' "$*" >&2; }

# ---- scenario sizes -------------------------------------------------------------
if [[ $QUICK == 1 ]]; then
  FANOUT=(--clients 200 --rooms 4 --rate 200 --duration 2 --ramp --ramp-factor 2
          --max-steps 4 --warmup 0.5 --settle 0.5 --drain-timeout 3)
  IDLE=(--connections 1000 --hold 1 --settle 1)
  CHURN=(--rate 200 --duration 2 --max-inflight 256)
  EFFICIENCY=(--members 2,20 --messages 50 --rate 100)
  ACK=(--publishers 6 --rooms 6 --rate 200,1000 --duration 1.5 --warmup 0.5 --settle 0.5)
else
  # 1000 clients in 10 rooms (100 members each), 10 publishers; each step publishes for
  # 4 s. The rate doubles while a step holds (p99 <= 50 ms, nothing lost, no error),
  # then the ramp narrows down to within 15 %.
  FANOUT=(--clients 1000 --rooms 10 --publishers 10 --rate 200 --duration 4 --ramp
          --ramp-factor 2 --precision 0.15 --max-steps 12 --warmup 1 --settle 1
          --drain-timeout 5 --p99-bound-ms 50)
  IDLE=(--connections 10000 --hold 3 --settle 2)
  CHURN=(--rate 1000 --duration 5 --max-inflight 256)
  EFFICIENCY=(--members 2,20,200 --messages 200 --rate 200)
  # 12 publishers (4 per node of hubbub-3) in 12 rooms, 10 s at 200 and at 1000
  # messages/s in all; a publish with no reply 10 s after its step is an error.
  ACK=(--publishers 12 --rooms 12 --rate 200,1000 --duration 10 --warmup 2 --settle 1)
fi

# ---- processes we start, stopped on any exit ------------------------------------
PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]:-}"; do
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [[ -n $pid ]] && wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# started NAME -- COMMAND...: runs COMMAND in the background, output to logs/NAME.log;
# its pid is left in STARTED (and remembered for stop_all).
STARTED=
started() {
  local name=$1
  shift 2
  "$@" >"$LOG/$name.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for PORT [PATH STATUS]: until the port accepts connections (and, with a path,
# until GET PATH answers STATUS), 30 s at most.
wait_for() {
  local port=$1 path=${2:-} want=${3:-200} i
  for ((i = 0; i < 300; i++)); do
    if port_open "$port"; then
      if [[ -z $path ]]; then return 0; fi
      if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path" || true) == "$want" ]]; then
        return 0
      fi
    fi
    sleep 0.1
  done
  echo "nothing answered on port $port${path:+ $path} within 30 s; logs in $LOG" >&2
  return 1
}

# free_ports N: N distinct free loopback ports, on one line.
free_ports() {
  python3 -c '
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}

# ---- install and build -----------------------------------------------------------
APT_UPDATED=0
apt_install() {
  if [[ $APT_UPDATED == 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Only what the chosen systems need: Node and the peers' packages for node-ws and
# socket.io, Redis for socketio-2, the socketioxide peer's build for socketioxide.
NODE_PEERS=()
NEED_REDIS=0
NEED_SOCKETIOXIDE=0
for system in $SYSTEMS; do
  case $system in
    node-ws) NODE_PEERS+=(node-ws) ;;
    socketio-1) NODE_PEERS+=(socketio) ;;
    socketio-2) NODE_PEERS+=(socketio) NEED_REDIS=1 ;;
    socketioxide) NEED_SOCKETIOXIDE=1 ;;
    hubbub | hubbub-mem | hubbub-2 | hubbub-3 | hubbub-sio | hubbub-sio-2 | floor) ;;
    *) echo "unknown system: $system" >&2; exit 2 ;;
  esac
done

log "install"
command -v python3 >/dev/null || apt_install python3
command -v curl >/dev/null || apt_install curl
if ((${#NODE_PEERS[@]} > 0)); then
  command -v node >/dev/null || apt_install nodejs npm
  command -v npm >/dev/null || apt_install npm
fi
if [[ $NEED_REDIS == 1 ]]; then
  command -v redis-server >/dev/null || apt_install redis-server
fi
for peer in $(printf '%s\n' "${NODE_PEERS[@]:-}" | sort -u); do
  dir=bench/peers/$peer
  if [[ ! -d $dir/node_modules || $dir/package-lock.json -nt $dir/node_modules ]]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

log "build"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release --locked -p hubbub -p hubbub-bench -p rust-floor
HUBBUB=$TARGET/release/hubbub
BENCH=$TARGET/release/hubbub-bench
FLOOR=$TARGET/release/rust-floor
# The socketioxide peer is a workspace of its own (bench/peers/socketioxide/Cargo.toml
# says why); built into the same target directory.
SOCKETIOXIDE=$TARGET/release/socketioxide-peer
if [[ $NEED_SOCKETIOXIDE == 1 ]]; then
  cargo build --release --locked --manifest-path bench/peers/socketioxide/Cargo.toml --target-dir "$TARGET"
fi

# Two connections per idle client (ours and the server's) stay under the file limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- the machine ----------------------------------------------------------------
machine() {
  python3 - "$OUT/machine.json" <<'EOF'
import json, os, platform, subprocess, sys
def first(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, shell=True).stdout.strip().splitlines()[0]
    except Exception:
        return None
def version(package_json):
    # None when that peer is not installed (not among the systems run).
    try:
        return json.load(open(package_json))['version']
    except OSError:
        return None
def locked(cargo_lock, crate):
    # The version a Cargo.lock pins (for a peer among the systems run).
    text = open(cargo_lock).read()
    mark = f'name = "{crate}"\nversion = "'
    return text.split(mark, 1)[1].split('"', 1)[0] if mark in text else None
model = None
with open('/proc/cpuinfo') as f:
    for line in f:
        if line.startswith('model name'):
            model = line.split(':', 1)[1].strip()
            break
mem_kib = None
with open('/proc/meminfo') as f:
    for line in f:
        if line.startswith('MemTotal:'):
            mem_kib = int(line.split()[1])
json.dump({
    'nproc': os.cpu_count(),
    'cpu_model': model,
    'mem_total_gib': round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
    'kernel': platform.release(),
    'load_before': os.getloadavg(),
    'date_utc': first('date -u +%Y-%m-%dT%H:%M:%SZ'),
    'git_commit': first('git rev-parse --short HEAD'),
    'git_dirty': bool(first('git status --porcelain --untracked-files=no')),
    'rustc': first('rustc --version'),
    'node': first('node --version'),
    'redis': first('redis-server --version'),
    'ws': version('bench/peers/node-ws/node_modules/ws/package.json'),
    'socket.io': version('bench/peers/socketio/node_modules/socket.io/package.json'),
    'redis_adapter': version('bench/peers/socketio/node_modules/@socket.io/redis-adapter/package.json'),
    'socketioxide': locked('bench/peers/socketioxide/Cargo.lock', 'socketioxide')
                    if os.environ.get('NEED_SOCKETIOXIDE') == '1' else None,
    'quick': os.environ.get('BENCH_QUICK') == '1',
}, open(sys.argv[1], 'w'), indent=2)
EOF
}
NEED_SOCKETIOXIDE=$NEED_SOCKETIOXIDE machine
log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- the systems ----------------------------------------------------------------
# hubbub_config FILE NAME HTTP_PORT ENGINE DATA [CLUSTER_PORT SEEDS VOTERS NODES]: the
# benchmark's settings. ENGINE "durable" keeps the room logs in DATA (storage.fsync
# "always", the default); "memory" keeps them in memory. Rate limits are off (every
# peer runs without any) and the connection cap is above the idle scenario's 10,000;
# the NODES nodes of a cluster, which share the machine, each get their share of its
# cores (`node.threads` = cores / NODES, at least 1); everything else is the default.
hubbub_config() {
  local file=$1 name=$2 http=$3 engine=$4 data=$5 bind=${6:-} seeds=${7:-} voters=${8:-} nodes=${9:-1}
  {
    printf '[node]\nname = "%s"\nhttp_addr = "127.0.0.1:%s"\n' "$name" "$http"
    # Nodes that share the machine each get their share of its cores.
    if [[ -n $bind ]]; then printf 'threads = %s\n' "$(( $(nproc) / nodes > 0 ? $(nproc) / nodes : 1 ))"; fi
    printf '\n'
    printf '[limits]\nmax_connections = 20000\nmax_http_connections = 24000\nframes_per_second = 0\n\n'
    printf '[rate_limit]\nmessages_per_minute = 0\nconnections_per_ip = 0\nhandshakes_per_ip_per_sec = 0\n\n'
    printf '[log]\nlevel = "warn"\nformat = "json"\n\n'
    printf '[storage]\nengine = "%s"\n' "$engine"
    if [[ $engine == durable ]]; then printf 'dir = "%s"\n' "$data"; fi
    if [[ -n $bind ]]; then
      printf '\n[cluster]\nenabled = true\nbind = "127.0.0.1:%s"\ncookie = "bench-cookie-%s"\nseeds = [%s]\nvoters = [%s]\n' \
        "$bind" "$STAMP" "$seeds" "$voters"
    fi
  } >"$file"
}

# fresh_data SYSTEM: an empty data directory for SYSTEM's nodes (each start begins
# with empty room logs, so that no system replays an earlier one's, and the nodes of
# different clusters that share a name never share a log).
fresh_data() {
  rm -rf "$OUT/data/$1"
  mkdir -p "$OUT/data/$1"
  printf '%s' "$OUT/data/$1"
}

# start_SYSTEM: starts it; sets URLS (comma-separated), PROTOCOL and SERVER_PIDS.
start_hubbub() {
  local port data
  port=$(free_ports 1)
  data=$(fresh_data hubbub)
  hubbub_config "$OUT/hubbub.toml" bench "$port" durable "$data"
  started hubbub -- "$HUBBUB" serve --config "$OUT/hubbub.toml"
  SERVER_PIDS=$STARTED
  wait_for "$port" /readyz
  URLS=ws://127.0.0.1:$port PROTOCOL=hubbub
}

# One node like `hubbub`, its room logs in memory: fan-out with storage off.
start_hubbub-mem() {
  local port
  port=$(free_ports 1)
  hubbub_config "$OUT/hubbub-mem.toml" bench "$port" memory ""
  started hubbub-mem -- "$HUBBUB" serve --config "$OUT/hubbub-mem.toml"
  SERVER_PIDS=$STARTED
  wait_for "$port" /readyz
  URLS=ws://127.0.0.1:$port PROTOCOL=hubbub
}

start_hubbub-2() {
  local a b ca cb data
  read -r a b ca cb < <(free_ports 4)
  data=$(fresh_data hubbub-2)
  local seeds="\"127.0.0.1:$ca\", \"127.0.0.1:$cb\""
  hubbub_config "$OUT/hubbub-a.toml" a "$a" durable "$data" "$ca" "$seeds" '"a", "b"' 2
  hubbub_config "$OUT/hubbub-b.toml" b "$b" durable "$data" "$cb" "$seeds" '"a", "b"' 2
  local pa pb
  started hubbub-a -- "$HUBBUB" serve --config "$OUT/hubbub-a.toml"
  pa=$STARTED
  started hubbub-b -- "$HUBBUB" serve --config "$OUT/hubbub-b.toml"
  pb=$STARTED
  # Ready means every shard of the room logs has its leader.
  wait_for "$a" /readyz
  wait_for "$b" /readyz
  SERVER_PIDS="$pa $pb"
  URLS=ws://127.0.0.1:$a,ws://127.0.0.1:$b PROTOCOL=hubbub
}

# hubbub's Socket.IO endpoint (docs/socketio.md), the load generator speaking
# Socket.IO v5 over WebSocket as it does to socket.io: one node (against socketio-1)
# and two clustered nodes (against socketio-2, two socket.io processes and Redis).
start_hubbub-sio() {
  start_hubbub
  PROTOCOL=socketio
}

start_hubbub-sio-2() {
  start_hubbub-2
  PROTOCOL=socketio
}

# Three clustered nodes, voters a, b, c: every shard's Raft group spans all three and
# commits on two.
start_hubbub-3() {
  local a b c ca cb cc data
  read -r a b c ca cb cc < <(free_ports 6)
  data=$(fresh_data hubbub-3)
  local seeds="\"127.0.0.1:$ca\", \"127.0.0.1:$cb\", \"127.0.0.1:$cc\""
  local voters='"a", "b", "c"'
  hubbub_config "$OUT/hubbub-3a.toml" a "$a" durable "$data" "$ca" "$seeds" "$voters" 3
  hubbub_config "$OUT/hubbub-3b.toml" b "$b" durable "$data" "$cb" "$seeds" "$voters" 3
  hubbub_config "$OUT/hubbub-3c.toml" c "$c" durable "$data" "$cc" "$seeds" "$voters" 3
  local pa pb pc
  started hubbub-3a -- "$HUBBUB" serve --config "$OUT/hubbub-3a.toml"
  pa=$STARTED
  started hubbub-3b -- "$HUBBUB" serve --config "$OUT/hubbub-3b.toml"
  pb=$STARTED
  started hubbub-3c -- "$HUBBUB" serve --config "$OUT/hubbub-3c.toml"
  pc=$STARTED
  wait_for "$a" /readyz
  wait_for "$b" /readyz
  wait_for "$c" /readyz
  SERVER_PIDS="$pa $pb $pc"
  URLS=ws://127.0.0.1:$a,ws://127.0.0.1:$b,ws://127.0.0.1:$c PROTOCOL=hubbub
}

start_node-ws() {
  local port
  port=$(free_ports 1)
  started node-ws -- node bench/peers/node-ws/server.js "$port"
  SERVER_PIDS=$STARTED
  wait_for "$port"
  URLS=ws://127.0.0.1:$port PROTOCOL=hubbub
}

start_floor() {
  local port
  port=$(free_ports 1)
  started floor -- "$FLOOR" "127.0.0.1:$port"
  SERVER_PIDS=$STARTED
  wait_for "$port"
  URLS=ws://127.0.0.1:$port PROTOCOL=hubbub
}

start_socketio-1() {
  local port
  port=$(free_ports 1)
  started socketio-1 -- node bench/peers/socketio/server.js "$port"
  SERVER_PIDS=$STARTED
  wait_for "$port"
  URLS=ws://127.0.0.1:$port PROTOCOL=socketio
}

# socketioxide on axum, one process (bench/peers/socketioxide): the Rust Socket.IO server
# against hubbub-sio.
start_socketioxide() {
  local port
  port=$(free_ports 1)
  started socketioxide -- "$SOCKETIOXIDE" "$port"
  SERVER_PIDS=$STARTED
  wait_for "$port"
  URLS=ws://127.0.0.1:$port PROTOCOL=socketio
}

start_socketio-2() {
  local redis a b
  read -r redis a b < <(free_ports 3)
  local pr
  started redis -- redis-server --bind 127.0.0.1 --port "$redis" --save '' --appendonly no
  pr=$STARTED
  wait_for "$redis"
  local pa pb
  started socketio-2a -- node bench/peers/socketio/server.js "$a" "redis://127.0.0.1:$redis"
  pa=$STARTED
  started socketio-2b -- node bench/peers/socketio/server.js "$b" "redis://127.0.0.1:$redis"
  pb=$STARTED
  wait_for "$a"
  wait_for "$b"
  # Redis does part of the work of a two-process socket.io: count its memory too.
  SERVER_PIDS="$pa $pb $pr"
  URLS=ws://127.0.0.1:$a,ws://127.0.0.1:$b PROTOCOL=socketio
}

# bench_run SYSTEM SCENARIO ARGS...: one scenario against the running system.
bench_run() {
  local system=$1 scenario=$2
  shift 2
  log "$system: $scenario"
  "$BENCH" --url "$URLS" --protocol "$PROTOCOL" --label "$system" \
    --json "$OUT/$system-$scenario.json" "$scenario" "$@" | tee "$LOG/$system-$scenario.txt"
}

pid_args() {
  local pid
  for pid in $SERVER_PIDS; do printf -- '--pid %s ' "$pid"; done
}

# bench_run_as NAME SYSTEM SCENARIO ARGS...: the same, its result in NAME.json.
bench_run_as() {
  local name=$1 system=$2 scenario=$3
  shift 3
  log "$system: $scenario ($name)"
  "$BENCH" --url "$URLS" --protocol "$PROTOCOL" --label "$system" \
    --json "$OUT/$name.json" "$scenario" "$@" | tee "$LOG/$name.txt"
}

for system in $SYSTEMS; do
  case $system in
    hubbub | hubbub-sio | node-ws | socketio-1 | socketioxide | floor)
      # Memory on a fresh process: one that has run the fan-out keeps the memory it
      # freed and would make connections look cheaper than they are.
      log "start $system (for idle)"
      "start_$system"
      sleep 1
      # shellcheck disable=SC2046 # one --pid per process
      bench_run "$system" idle "${IDLE[@]}" --source-ips 4 $(pid_args)
      stop_all
      sleep 2
      ;;
  esac
  log "start $system"
  "start_$system"
  sleep 1
  # shellcheck disable=SC2046 # one --pid per process
  bench_run "$system" fanout "${FANOUT[@]}" $(pid_args)
  # hubbub-mem differs from hubbub in its storage only, which joins and leaves do
  # not touch: it runs fan-out and ack, not churn.
  if [[ $system != hubbub-mem ]]; then
    bench_run "$system" churn "${CHURN[@]}" --source-ips 8
  fi
  case $system in
    hubbub-sio*) ;;
    hubbub*) bench_run "$system" ack "${ACK[@]}" ;;
  esac
  case $system in
    hubbub-2 | hubbub-3) bench_run "$system" efficiency "${EFFICIENCY[@]}" ;;
  esac
  stop_all
  sleep 2
done

# A second fan-out ramp per system, in the same order after every first pass: how far
# a ramp's answer moves between two runs on the same machine.
if [[ ${BENCH_REPEAT:-1} == 1 ]]; then
  for system in $SYSTEMS; do
    log "start $system (second ramp)"
    "start_$system"
    sleep 1
    # shellcheck disable=SC2046 # one --pid per process
    bench_run_as "$system-fanout.2" "$system" fanout "${FANOUT[@]}" $(pid_args)
    stop_all
    sleep 2
  done
fi

python3 - "$OUT/machine.json" <<'EOF'
import json, os, sys
m = json.load(open(sys.argv[1]))
m['load_after'] = os.getloadavg()
json.dump(m, open(sys.argv[1], 'w'), indent=2)
EOF

if [[ ${BENCH_NO_DOC:-0} != 1 ]]; then
  log "report"
  rm -rf bench/results
  mkdir -p bench/results
  cp "$OUT"/*.json bench/results/
  python3 bench/report.py bench/results docs/performance.md docs/performance.svg
  echo "wrote docs/performance.md and docs/performance.svg (results in bench/results/, logs in $LOG)" >&2
else
  echo "results in $OUT" >&2
fi
