#!/usr/bin/env bash
# CPU per exchange by process: one snaprtcd alone, then 2 instances on one redis-server with
# every pair split across them, each at BENCH_RATE (1 000) exchanges/s over
# BENCH_CONNECTIONS (2 000) connections. CPU is read from /proc/PID/stat (utime + stime) over
# a BENCH_WINDOW (10 s) window in the middle of the run, after every connection is up, so
# neither the connecting nor the closing is counted. BENCH_RUNS (2) rounds, one of each.
#
#   bench/signaling/by_process.sh
#   SNAPRTCD_BIN=/tmp/old/snaprtcd bench/signaling/by_process.sh   # another build
#   BENCH_WRITE_INTERVAL=0ms bench/signaling/by_process.sh           # [backplane] write_interval
#   BENCH_PERF=/tmp/prof bench/signaling/by_process.sh               # profile every process too
#
# BENCH_PERF=DIR also runs `perf record --call-graph dwarf` on each measured process for the
# first BENCH_PERF_SECONDS (8) of the window, into DIR/run<N>-<process>.data
# (perf_split.py prints where each one's CPU goes), and `perf stat` of the syscall and
# scheduler tracepoints over the whole window (printed per exchange). Profiling costs CPU, so
# the figures of a profiled round are inflated and compare only with each other.
#
# Prints one line per measurement: CPU per exchange (user + kernel; in parentheses, the user
# part) and, in brackets, context switches per exchange (all threads). docs/BENCHMARKS.md
# ("One RESP3 connection per instance", "At most one write to Redis per 2 ms", "The same
# build on another machine") has what it gave. Needs redis-server and the client run.sh
# builds (snaprtc-bench).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
connections="${BENCH_CONNECTIONS:-2000}"
rate="${BENCH_RATE:-1000}"
window="${BENCH_WINDOW:-10}"
runs="${BENCH_RUNS:-2}"
# Connections are up well before this; the run lasts past the window's end.
settle=8

[ -n "${SNAPRTCD_BIN:-}" ] || (cd "$root" && cargo build --release --locked --bin snaprtcd) >&2
cargo build --release --locked --manifest-path "$here/Cargo.toml" >&2
daemon="${SNAPRTCD_BIN:-$root/target/release/snaprtcd}"
client="$here/target/release/snaprtc-bench"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ -n "${BENCH_PERF:-}" ]; then
  command -v perf >/dev/null || { echo "BENCH_PERF needs perf (apt-get install linux-perf)" >&2; exit 1; }
  mkdir -p "$BENCH_PERF"
fi
profile_events=raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,sched:sched_switch,sched:sched_wakeup

work="$(mktemp -d)"
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
trap 'stop; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
user_ticks() { awk '{ print $14 }' "/proc/$1/stat"; }
# Context switches of all the process's threads, voluntary and not.
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ { n += $2 } END { print n }'; }
# µs per exchange from a tick count over the window.
per_exchange() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$((rate * window))" 'BEGIN { printf "%.0f", t * 1e6 / hz / n }'; }

# daemon NAME [BACKPLANE-URL]: start an instance; sets $pid and $url.
daemon() {
  {
    printf '[server]\nlisten = "127.0.0.1:0"\n[camera]\nsource = "none"\n[mdns]\nenabled = false\n'
    printf '[signaling]\nmax_connections = %d\nmax_sessions = %d\n' $((connections + 100)) $((connections + 100))
    [ -n "${2:-}" ] && printf '[backplane]\nkind = "redis"\nurl = "%s"\nmax_queued_messages = 65536\n' "$2"
    [ -n "${2:-}" ] && [ -n "${BENCH_WRITE_INTERVAL:-}" ] && printf 'write_interval = "%s"\n' "$BENCH_WRITE_INTERVAL"
  } >"$work/$1.toml"
  NO_COLOR=1 "$daemon" --config "$work/$1.toml" >"$work/$1.log" 2>&1 &
  pid=$!; pids+=("$pid")
  local addr=
  for _ in $(seq 1 100); do
    addr=$(sed -nE 's/.*http listening addr=([0-9.:]+).*/\1/p' "$work/$1.log" | head -n1)
    if [ -n "$addr" ] && { [ -z "${2:-}" ] || grep -q 'backplane connected' "$work/$1.log"; }; then break; fi
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/$1.log" >&2; exit 1; }
  url="http://$addr/snaprtc-hub"
}

# measure PID...: start the client (args in $args), then the ticks of each PID over the window.
# With BENCH_PERF, $names holds a name for each PID (the profiles' file names).
measure() {
  "$client" --server snaprtc "${args[@]}" --connections "$connections" --rate "$rate" \
    --duration "$((settle + window + 5))s" >"$work/client.out" 2>&1 &
  local cpid=$! p before=() after=() u_before=() u_after=() cs_before=() cs_after=()
  sleep "$settle"
  for p in "$@"; do
    before+=("$(ticks "$p")"); u_before+=("$(user_ticks "$p")"); cs_before+=("$(switches "$p")")
  done
  local profilers=() n=0 profile
  if [ -n "${BENCH_PERF:-}" ]; then
    for p in "$@"; do
      profile="$BENCH_PERF/run$run-${names[n]}"; n=$((n + 1))
      perf record -q -F 9999 --call-graph dwarf,16384 -o "$profile.data" -p "$p" \
        -- sleep "${BENCH_PERF_SECONDS:-8}" >/dev/null 2>&1 & profilers+=($!)
      perf stat -x, -e "$profile_events" -o "$profile.stat" -p "$p" -- sleep "$window" >/dev/null 2>&1 &
      profilers+=($!)
    done
  fi
  sleep "$window"
  [ "${#profilers[@]}" -eq 0 ] || wait "${profilers[@]}"
  for p in "$@"; do
    after+=("$(ticks "$p")"); u_after+=("$(user_ticks "$p")"); cs_after+=("$(switches "$p")")
  done
  wait "$cpid" || { cat "$work/client.out" >&2; exit 1; }
  local i out=()
  for i in "${!before[@]}"; do
    out+=("$(per_exchange $((after[i] - before[i]))) µs (user $(per_exchange \
      $((u_after[i] - u_before[i])))) [$(awk -v n=$((cs_after[i] - cs_before[i])) \
      -v e="$((rate * window))" 'BEGIN { printf "%.1f", n / e }') switches]")
  done
  echo "${out[*]} ($(grep -o 'failed_pairs=[0-9]*' "$work/client.out"))"
  if [ -n "${BENCH_PERF:-}" ]; then
    for i in "${!names[@]}"; do
      printf '  %s, per exchange:' "${names[i]}"
      awk -F, -v e="$((rate * window))" '!/^#/ && NF > 2 { sub(/^[a-z_]+:(sys_enter_)?/, "", $3); printf " %s %.2f", $3, $1 / e }' \
        "$BENCH_PERF/run$run-${names[i]}.stat"
      echo
    done
  fi
}

for run in $(seq 1 "$runs"); do
  daemon one
  args=(--url "$url" --pid "$pid"); names=(one)
  echo "run $run, one instance: $(measure "$pid")"
  stop

  port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no >"$work/redis.log" 2>&1 &
  redis=$!; pids+=("$redis")
  for _ in $(seq 1 100); do grep -q 'Ready to accept' "$work/redis.log" && break; sleep 0.1; done
  daemon a "redis://127.0.0.1:$port/0"; a=$pid; args=(--url "$url" --pid "$a")
  daemon b "redis://127.0.0.1:$port/0"; b=$pid; args+=(--url "$url" --pid "$b" --redis "127.0.0.1:$port")
  names=(a b redis)
  echo "run $run, fleet (instance A, instance B, Redis): $(measure "$a" "$b" "$redis")"
  stop
done
