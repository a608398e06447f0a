#!/usr/bin/env bash
# Audio benchmark (issue 15 item 6; a benchmark, not a test: never run by CI or tests/run).
#
# 1. Capture + Opus encode: the daemon with [audio] source = "test" (the tone generator stands in
#    for the sound card; it costs more than an ALSA read, a sine per sample) at 48 kHz, mono and
#    stereo, 32 kbit/s, with one RTSP listener taking the audio track only (the encoder runs only
#    while someone listens). The `audio` thread's CPU (utime+stime of /proc/PID/task/TID/stat)
#    over AB_WINDOW seconds (default 10) after AB_WARMUP (3).
# 2. The extra cost per listener: the whole process's CPU with 1 and with AB_CLIENTS (default
#    16) RTSP clients that set up the audio track only (`ffmpeg -allowed_media_types audio`),
#    the slope per client. (The camera is a 320x240@15 test pattern in every run; RTSP clients
#    still subscribe to video for DESCRIBE's SPS/PPS, so the slope includes skipping video
#    frames they did not set up: an upper bound for audio alone.)
#
#   bench/audio/run.sh                  # a release build of this checkout
#   SNAPRTCD_BIN=target/debug/snaprtcd bench/audio/run.sh
# Needs ffmpeg. Prints "% of one core" lines; details of each run go to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
window="${AB_WINDOW:-10}"
warmup="${AB_WARMUP:-3}"
clients="${AB_CLIENTS:-16}"
bin="${SNAPRTCD_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --locked --bin snaprtcd)
  bin="$root/target/release/snaprtcd"
fi
command -v ffmpeg >/dev/null || { echo "bench/audio: needs ffmpeg" >&2; exit 2; }
tck=$(getconf CLK_TCK)
dir="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

ticks() { awk '{print $14 + $15}' "$1"; }

# start CHANNELS: the daemon on free ports; sets $pid and $rtsp.
start() {
  cat >"$dir/snaprtcd.toml" <<TOML
[server]
listen = "127.0.0.1:0"
rtc_udp_port = 0
[camera]
source = "testsrc"
width = 320
height = 240
fps = 15
[rtsp]
enabled = true
listen = "127.0.0.1:0"
max_clients = 64
[audio]
source = "test"
channels = $1
[mdns]
enabled = false
TOML
  "$bin" --config "$dir/snaprtcd.toml" 2>"$dir/log" &
  pid=$!; pids+=("$pid")
  for _ in $(seq 1 100); do
    rtsp=$(sed -n 's/.*rtsp listening.*addr=\([0-9.:]*\).*/\1/p' "$dir/log" | head -n1)
    [ -n "$rtsp" ] && break
    sleep 0.1
  done
  [ -n "$rtsp" ] || { cat "$dir/log" >&2; exit 1; }
}

# listen N: N audio-only RTSP readers.
listen() {
  for _ in $(seq 1 "$1"); do
    ffmpeg -nostdin -v error -rtsp_transport tcp -allowed_media_types audio \
      -i "rtsp://$rtsp/stream" -c copy -f null - 2>>"$dir/ffmpeg.log" &
    pids+=("$!")
  done
}

stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

# measure FILE...: % of one core the sum of FILEs' ticks took over the window.
measure() {
  local a=0 b=0 f
  for f in "$@"; do a=$((a + $(ticks "$f"))); done
  local t0; t0=$(date +%s.%N)
  sleep "$window"
  for f in "$@"; do b=$((b + $(ticks "$f"))); done
  awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$(date +%s.%N)" -v tck="$tck" \
    'BEGIN { printf "%.2f", 100 * (b - a) / tck / (t1 - t0) }'
}

audio_task() {
  local t
  for t in /proc/"$pid"/task/*; do
    [ "$(cat "$t/comm")" = audio ] && { echo "$t/stat"; return; }
  done
  echo "bench/audio: no audio thread in $pid" >&2; exit 1
}

for ch in 1 2; do
  start "$ch"; listen 1; sleep "$warmup"
  name=$([ "$ch" = 1 ] && echo mono || echo stereo)
  echo "capture + Opus encode, 48 kHz $name, 32 kbit/s: $(measure "$(audio_task)") % of one core (the audio thread)"
  stop
done

start 1
listen 1; sleep "$warmup"
one=$(measure "/proc/$pid/stat")
stop
start 1
listen "$clients"; sleep "$warmup"
many=$(measure "/proc/$pid/stat")
echo "whole daemon (320x240@15 testsrc + mono audio): 1 audio listener $one %, $clients listeners $many % of one core"
awk -v a="$one" -v b="$many" -v n="$clients" \
  'BEGIN { printf "extra cost per audio listener (RTSP, slope 1 -> %d): %.3f %% of one core\n", n, (b - a) / (n - 1) }'
stop
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
