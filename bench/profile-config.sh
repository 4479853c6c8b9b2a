# Sourced by profile.sh and profile-cluster.sh: the settings of a node under callgrind.
# profile_node_config NAME PORT [THREADS]: prints its [node], limits, heartbeat and log
# sections; the caller appends storage or cluster sections.
profile_node_config() {
  local name=$1 port=$2 threads=${3:-}
  printf '[node]\nname = "%s"\nhttp_addr = "127.0.0.1:%s"\n' "$name" "$port"
  if [[ -n $threads ]]; then printf 'threads = %s\n' "$threads"; fi
  cat <<'EOF2'

[limits]
max_connections = 20000
frames_per_second = 0

[rate_limit]
messages_per_minute = 0
connections_per_ip = 0
handshakes_per_ip_per_sec = 0

[heartbeat]
# Valgrind slows everything down; keep clients from timing out.
interval_ms = 25000
timeout_ms = 600000

[log]
level = "warn"
EOF2
}
