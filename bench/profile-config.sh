# Sourced by profile.sh, profile-cluster.sh and two-nodes.sh: the settings of a bench node.
#
# bench_node_config NAME PORT [THREADS]: its [node] section and the limits and rate
# limits a benchmark turns off; the caller appends the rest.
bench_node_config() {
  local name=$1 port=$2 threads=${3:-}
  printf '[node]\nname = "%s"\nhttp_addr = "127.0.0.1:%s"\n' "$name" "$port"
  if [[ -n $threads ]]; then printf 'threads = %s\n' "$threads"; fi
  cat <<'EOF2'

[limits]
max_connections = 20000
max_http_connections = 24000
frames_per_second = 0

[rate_limit]
messages_per_minute = 0
connections_per_ip = 0
handshakes_per_ip_per_sec = 0
EOF2
}

# profile_node_config NAME PORT [THREADS]: a node under callgrind: the above, client
# heartbeats slow enough for valgrind, and the [log] section (level warn).
profile_node_config() {
  bench_node_config "$@"
  cat <<'EOF2'

[heartbeat]
# Valgrind slows everything down; keep clients from timing out.
interval_ms = 25000
timeout_ms = 600000

[log]
level = "warn"
EOF2
}

# durable_section DATA: durable room logs in DATA (fsync at its default, "always").
durable_section() {
  printf '\n[storage]\nengine = "durable"\ndir = "%s"\n' "$1"
}

# pair_cluster_section BIND SEED_A SEED_B COOKIE: the [cluster] section of one of two
# nodes a and b, both voters; the caller may append more [cluster] keys.
pair_cluster_section() {
  printf '\n[cluster]\nenabled = true\nbind = "127.0.0.1:%s"\ncookie = "%s"\n' "$1" "$4"
  printf 'seeds = ["127.0.0.1:%s", "127.0.0.1:%s"]\nvoters = ["a", "b"]\n' "$2" "$3"
}

# free_ports N: N free TCP ports on 127.0.0.1, on one line.
free_ports() {
  python3 -c 'import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
[s.bind(("127.0.0.1", 0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}
