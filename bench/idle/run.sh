#!/usr/bin/env bash
# CPU of an idle snaprtcd (no viewer): the release binary on the default 1280x720@30 test
# pattern, process CPU time (utime+stime from /proc/PID/stat) over BENCH_SECONDS (default 20)
# after a 3 s warm-up. Prints "% of one core".
#   bench/idle/run.sh                 # builds the release binary
#   SNAPRTCD_BIN=path bench/idle/run.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
secs="${BENCH_SECONDS:-20}"
bin="${SNAPRTCD_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --locked --bin snaprtcd)
  bin="$root/target/release/snaprtcd"
fi
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat >"$dir/snaprtcd.toml" <<'TOML'
[server]
listen = "127.0.0.1:0"
rtc_udp_port = 0

[camera]
source = "testsrc"

[mdns]
enabled = false
TOML
"$bin" --config "$dir/snaprtcd.toml" 2>"$dir/log" &
pid=$!
sleep 3
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
tck=$(getconf CLK_TCK)
a=$(ticks); t0=$(date +%s.%N)
sleep "$secs"
b=$(ticks); t1=$(date +%s.%N)
awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" -v tck="$tck" -v s="$secs" \
  'BEGIN { printf "idle snaprtcd (1280x720@30 testsrc, no viewer): %.2f %% of one core over %d s\n", 100 * (b - a) / tck / (t1 - t0), s }'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
