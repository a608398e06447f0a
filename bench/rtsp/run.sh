#!/usr/bin/env bash
# RTSP benchmark (issue 14 item 6; a benchmark, not a test: never run by CI or tests/run).
#
# CPU and RSS of an RTSP server per client, snaprtcd beside GStreamer's RTSP server
# (gst-rtsp-server through python3-gi, bench/rtsp/gst_rtsp_server.py) in the same run, both
# serving the same 640x480@30 H.264 at 1.5 Mbit/s without encoding it:
#   - the clip: ffmpeg testsrc2 + libx264 baseline, 1.5 Mbit/s CBR-ish, a keyframe a second;
#   - snaprtcd: the `exec` source plays it (`ffmpeg -re -stream_loop -1 ... -c copy -f h264 -`,
#     a camera that costs next to nothing and is not counted), [encoder] passthrough, RTSP on;
#   - GStreamer: the same pictures in MP4, filesrc ! qtdemux ! h264parse ! rtph264pay in one
#     shared media, paced by its clock.
# For each client count (RB_CLIENTS, "1 8 32") a fresh server gets that many readers
# (`ffmpeg -rtsp_transport tcp -i rtsp://… -c copy -f null -`), RB_WARMUP seconds (3) to settle,
# then a window of RB_WINDOW seconds (10) over which the server's CPU (utime+stime of every
# thread, /proc/PID/stat) is measured; RSS is read at the end of the window. The cost of one
# more client is the slope from the smallest to the largest count.
#
#   bench/rtsp/run.sh
#   RB_CLIENTS="1 4" RB_WINDOW=5 bench/rtsp/run.sh
#
# SNAPRTCD_BIN (default: a release build of this checkout). Installs ffmpeg, python3-gi and
# GStreamer's RTSP server and plugins with apt-get when missing. Prints a markdown table for
# docs/BENCHMARKS.md; details go to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
counts="${RB_CLIENTS:-1 8 32}"
warmup="${RB_WARMUP:-3}"
window="${RB_WINDOW:-10}"

need=()
for p in ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
if [ -z "${SNAPRTCD_BIN:-}" ]; then
  (cd "$root" && cargo build --release --locked --bin snaprtcd) >&2
fi
daemon="${SNAPRTCD_BIN:-$root/target/release/snaprtcd}"

work="$(mktemp -d)"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Waits up to 20 s for `pattern` in file $1.
wait_for() {
  local i
  for i in $(seq 200); do
    grep -qE "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "run.sh: no '$2' in $1:" >&2
  cat "$1" >&2
  return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

clip="$work/clip.h264"
echo "== making the clip" >&2
ffmpeg -nostdin -loglevel error -f lavfi -i testsrc2=size=640x480:rate=30 -t 120 \
  -c:v libx264 -preset veryfast -profile:v baseline -b:v 1500k -maxrate 1500k -bufsize 1500k \
  -g 30 -bf 0 -f h264 "$clip"
# The same pictures in MP4 for GStreamer (timestamps from the container pace its server).
ffmpeg -nostdin -loglevel error -r 30 -i "$clip" -c copy "$work/clip.mp4"

start_snaprtcd() {
  local port="$1"
  cat >"$work/snaprtcd.toml" <<TOML
[server]
listen = "127.0.0.1:0"
rtc_udp_port = 0
[camera]
source = "exec"
width = 640
height = 480
fps = 30
[camera.exec]
command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", "$clip", "-c", "copy", "-f", "h264", "-"]
format = "h264"
[encoder]
kind = "passthrough"
[rtsp]
enabled = true
listen = "127.0.0.1:$port"
max_clients = 64
[mdns]
enabled = false
TOML
  NO_COLOR=1 "$daemon" --config "$work/snaprtcd.toml" >"$work/server.log" 2>&1 &
  server=$!
  pids+=("$server")
  wait_for "$work/server.log" 'rtsp listening|RTSP listening'
}

start_gstreamer() {
  local port="$1"
  # Debian's python3 (python3-gi is built for it), whatever python3 is first on PATH.
  /usr/bin/python3 "$here/gst_rtsp_server.py" "$port" "$work/clip.mp4" >"$work/server.log" 2>&1 &
  server=$!
  pids+=("$server")
  wait_for "$work/server.log" 'gst-rtsp listening'
}

results="$work/results"
: >"$results"
hz=$(getconf CLK_TCK)
for kind in snaprtcd gstreamer; do
  for n in $counts; do
    port=$(free_port)
    "start_$kind" "$port"
    readers=()
    for _ in $(seq "$n"); do
      ffmpeg -nostdin -loglevel error -rtsp_transport tcp -i "rtsp://127.0.0.1:$port/stream" \
        -c copy -f null - 2>>"$work/readers.log" &
      readers+=($!)
      pids+=($!)
    done
    sleep "$warmup"
    before=$(cpu_ticks "$server")
    sleep "$window"
    after=$(cpu_ticks "$server")
    rss=$(rss_mib "$server")
    alive=0
    for r in "${readers[@]}"; do kill -0 "$r" 2>/dev/null && alive=$((alive + 1)); done
    cpu=$(awk -v a="$after" -v b="$before" -v hz="$hz" -v w="$window" 'BEGIN {printf "%.2f", 100 * (a - b) / hz / w}')
    echo "== $kind, $n clients ($alive reading at the end): CPU $cpu % of one core, RSS $rss MiB" >&2
    echo "$kind $n $alive $cpu $rss" >>"$results"
    stop_all
  done
done

echo
echo "$(nproc) cores, $(uptime | sed 's/.*load average/load average/')"
echo
echo "| server | clients | still reading | CPU (% of one core) | RSS (MiB) |"
echo "|---|---:|---:|---:|---:|"
while read -r kind n alive cpu rss; do
  echo "| $kind | $n | $alive | $cpu | $rss |"
done <"$results"
echo
echo "| server | CPU per extra client (% of one core) | RSS per extra client (MiB) |"
echo "|---|---:|---:|"
for kind in snaprtcd gstreamer; do
  awk -v k="$kind" '$1 == k { if (!seen++) { n0 = $2; c0 = $4; r0 = $5 } n1 = $2; c1 = $4; r1 = $5 }
    END { if (n1 > n0) printf "| %s | %.3f | %.3f |\n", k, (c1 - c0) / (n1 - n0), (r1 - r0) / (n1 - n0) }' "$results"
done
