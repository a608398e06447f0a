#!/usr/bin/env bash
# Signalling benchmark: snaprtcd's SignalR hub beside PeerJS's server (npm `peer`), both driven
# by the same Rust client (bench/signaling/src/main.rs) doing the same offer/answer relay.
#
#   bench/signaling/run.sh
#   BENCH_CONNECTIONS=2000 BENCH_SECONDS=5 bench/signaling/run.sh
#
# For each server, on a fresh process:
#   hold:     BENCH_CONNECTIONS (10 000) connections in pairs, all pairs exchanging at
#             BENCH_RATE (1 000) exchanges/s in total for BENCH_SECONDS: connections held, RSS,
#             relay latency at that rate, CPU.
#   flat out: BENCH_BUSY_CONNECTIONS (200) connections, every pair exchanging back to back:
#             exchanges/s and exchanges per server CPU-second.
# snaprtcd runs twice per scenario: `invoke` (what SnapRTC pages do: every call also gets a
# Completion, 4 messages out per exchange) and `send` (no Completion: 2 messages out per
# exchange, message for message what PeerJS relays).
# Then a fleet: 2 snaprtcd instances on one redis-server (the backplane), every pair's
# initiator on one instance and its capture side on the other, `invoke`, the same two
# scenarios; the CPU and RSS columns sum both instances and Redis, and the last column counts
# Redis commands per exchange. Set BENCH_FLEET=0 to leave it out, BENCH_FLEET=only for just
# it and the single snaprtcd/invoke; BENCH_WRITE_INTERVAL (e.g. 0ms) sets the instances'
# [backplane] write_interval.
# Builds the daemon (release) and the client, runs `npm ci` for PeerJS, installs Node.js and npm
# with apt-get when missing. Prints a Markdown table for docs/BENCHMARKS.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

connections="${BENCH_CONNECTIONS:-10000}"
busy_connections="${BENCH_BUSY_CONNECTIONS:-200}"
rate="${BENCH_RATE:-1000}"
seconds="${BENCH_SECONDS:-10}"

# Every connection is a file descriptor in the server and one in the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((connections + 1000)) ]; then
  echo "run.sh: open-file limit $(ulimit -n) is too low for $connections connections" \
    "(raise the hard limit, e.g. ulimit -Hn 65536 as root, or set BENCH_CONNECTIONS)" >&2
  exit 1
fi

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

echo "== building" >&2
[ -n "${SNAPRTCD_BIN:-}" ] || (cd "$root" && cargo build --release --locked --bin snaprtcd) >&2
cargo build --release --locked --manifest-path "$here/Cargo.toml" >&2
(cd "$here/peerjs" && npm ci --no-audit --no-fund --loglevel=error) >&2
daemon="${SNAPRTCD_BIN:-$root/target/release/snaprtcd}"
client="$here/target/release/snaprtc-bench"

work="$(mktemp -d)"
server_pid=""
fleet_pids=()
stop_server() {
  for pid in $server_pid "${fleet_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  server_pid=""
  fleet_pids=()
}
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT

# Waits up to 20 s for `pattern` in file $1 and prints the first capture group.
wait_for() {
  local file="$1" pattern="$2" i
  for i in $(seq 200); do
    if grep -qE "$pattern" "$file" 2>/dev/null; then
      sed -nE "s/.*$pattern.*/\\1/p" "$file" | head -1
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "run.sh: server did not start:" >&2
  cat "$file" >&2
  return 1
}

# The daemon as a pure relay (join_sessions = "none", as the original SnapRTC server), its
# connection limit raised, and the camera at 160x120, 1 fps: the daemon encodes its camera even
# with nobody watching, and that cost is not signalling.
cat >"$work/snaprtcd.toml" <<EOF
[server]
listen = "127.0.0.1:0"
rtc_udp_port = 0
[camera]
source = "testsrc"
width = 160
height = 120
fps = 1
[signaling]
join_sessions = "none"
max_connections = $((connections + 100))
max_sessions = $((connections + 100))
[mdns]
enabled = false
[log]
level = "info"
format = "text"
EOF

start_snaprtc() {
  NO_COLOR=1 "$daemon" --config "$work/snaprtcd.toml" >"$work/server.log" 2>&1 &
  server_pid=$!
  local addr
  addr="$(wait_for "$work/server.log" 'http listening addr=([0-9.:]+)')"
  url="http://$addr/snaprtc-hub"
}

start_peerjs() {
  node "$here/peerjs/server.mjs" 0 $((connections + 100)) >"$work/server.log" 2>&1 &
  server_pid=$!
  local addr
  addr="$(wait_for "$work/server.log" 'peerjs listening addr=([0-9.:]+)')"
  url="ws://$addr/peerjs"
}

# The fleet: a redis-server on a free port and 2 instances on it (camera off: the relay role).
start_fleet() {
  local port addr i
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --maxclients $((connections + 1000)) >"$work/redis.log" 2>&1 &
  server_pid=$!
  wait_for "$work/redis.log" '(Ready) to accept' >/dev/null
  redis_addr="127.0.0.1:$port"
  urls=()
  fleet_pids=()
  local write_interval=
  [ -n "${BENCH_WRITE_INTERVAL:-}" ] && write_interval="write_interval = \"$BENCH_WRITE_INTERVAL\""
  for i in 1 2; do
    cat >"$work/fleet$i.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[camera]
source = "none"
[signaling]
max_connections = $((connections + 100))
max_sessions = $((connections + 100))
[backplane]
kind = "redis"
url = "redis://$redis_addr/0"
max_queued_messages = 65536
$write_interval
[mdns]
enabled = false
[log]
level = "info"
format = "text"
EOF
    NO_COLOR=1 "$daemon" --config "$work/fleet$i.toml" >"$work/fleet$i.log" 2>&1 &
    fleet_pids+=($!)
    addr="$(wait_for "$work/fleet$i.log" 'http listening addr=([0-9.:]+)')"
    wait_for "$work/fleet$i.log" '(backplane connected)' >/dev/null
    urls+=(--url "http://$addr/snaprtc-hub" --pid "${fleet_pids[-1]}")
  done
}

results="$work/results"
: >"$results"
# run LABEL KIND CLIENT-ARGS...
run() {
  local label="$1" kind="$2"
  shift 2
  echo "== $label" >&2
  "$client" --server "$kind" "$@" | tee "$work/out" >&2
  echo "$label $(grep '^RESULT ' "$work/out" | sed 's/^RESULT //')" >>"$results"
}

# BENCH_FLEET=only: just the single snaprtcd (invoke) beside the fleet, the comparison the
# backplane's targets are set against.
kinds=(snaprtc peerjs)
[ "${BENCH_FLEET:-1}" = only ] && kinds=(snaprtc)
for kind in "${kinds[@]}"; do
  modes=(invoke)
  [ "$kind" = snaprtc ] && [ "${BENCH_FLEET:-1}" != only ] && modes=(invoke send)
  for mode in "${modes[@]}"; do
    flag=()
    [ "$mode" = send ] && flag=(--send)
    label="$kind"
    [ "$kind" = snaprtc ] && label="snaprtcd/$mode"
    [ "$kind" = peerjs ] && label="peerjs"
    "start_$kind"
    run "$label|hold" "$kind" --url "$url" --pid "$server_pid" --connections "$connections" --rate "$rate" --duration "${seconds}s" "${flag[@]}"
    run "$label|flat-out" "$kind" --url "$url" --pid "$server_pid" --connections "$busy_connections" --rate 0 --duration "${seconds}s" "${flag[@]}"
    stop_server
  done
done

if [ "${BENCH_FLEET:-1}" != 0 ]; then
  for scenario in hold flat-out; do
    # A fresh fleet per scenario, as the single servers get a fresh process.
    start_fleet
    if [ "$scenario" = hold ]; then
      args=(--connections "$connections" --rate "$rate")
    else
      args=(--connections "$busy_connections" --rate 0)
    fi
    run "2×snaprtcd+Redis/invoke|$scenario" snaprtc "${urls[@]}" --pid "$server_pid" \
      --redis "$redis_addr" "${args[@]}" --duration "${seconds}s"
    stop_server
  done
fi

echo
echo "$(nproc) cores, $(uptime | sed 's/.*load average/load average/')"
echo
echo "| server | scenario | connections held | RSS (MiB) | exchanges/s | relay p50 (ms) | relay p99 (ms) | server CPU (s) | CPU per exchange, user + kernel (µs) | exchanges per CPU-s | Redis commands per exchange |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
while read -r label rest; do
  declare -A r=()
  for kv in $rest; do r[${kv%%=*}]="${kv#*=}"; done
  server="${label%%|*}"
  scenario="${label#*|}"
  echo "| $server | $scenario | ${r[connections_held]} | ${r[rss_after_mib]} | ${r[exchanges_per_s]} | ${r[p50_ms]} | ${r[p99_ms]} | ${r[server_cpu_s]} | ${r[server_user_us_per_exchange]} + ${r[server_sys_us_per_exchange]} | ${r[exchanges_per_cpu_s]} | ${r[redis_commands_per_exchange]} |"
  unset r
done <"$results"
