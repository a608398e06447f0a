#!/usr/bin/env bash
# Soak benchmark (issue 11 item 8; not a timed test, never run by CI): a release snaprtcd on
# loopback (test pattern, built-in capture member `join_sessions = "all"`) and SOAK_CLIENTS
# clients (bench/soak/src/main.rs) running cycles for SOAK_MINUTES:
#   SnapRTC: negotiate -> WebSocket -> Sync(s,false) -> signalStart -> SignalCapture(offer with
#            a data channel) -> answer via signalInitiator -> ICE/DTLS/SCTP up, JPEG on open ->
#            disconnect;
#   WHEP:    POST /whep -> ~SOAK_VIDEO_SECONDS of H.264 received -> DELETE.
# Prints the daemon's RSS, open fds, threads (from /proc/PID), tokio tasks and viewers (from
# /metrics), cycles and errors at the start and every SOAK_INTERVAL seconds, then the change
# in RSS and fds from the sample after SOAK_WARMUP seconds to the last one, against the target
# "flat within ±10 %". Stops by itself.
#
#   bench/soak/run.sh                                  # 60 minutes, 4 clients
#   SOAK_MINUTES=5 bench/soak/run.sh
#   SNAPRTCD_BIN=path/to/snaprtcd SOAK_CLIENTS=8 bench/soak/run.sh
#
# Other knobs: SOAK_INTERVAL (60), SOAK_WARMUP (60), SOAK_VIDEO_SECONDS (2), SOAK_WIDTH (640),
# SOAK_HEIGHT (480), SOAK_FPS (15), SOAK_PROFILE (release; "dev" builds both unoptimised, for
# a quick check on a loaded machine: not for published numbers). The daemon and the client
# are built with the same profile into one target directory (CARGO_TARGET_DIR, default the
# repository's target/), so the crates they share are compiled once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

minutes="${SOAK_MINUTES:-60}"
clients="${SOAK_CLIENTS:-4}"
interval="${SOAK_INTERVAL:-60}"
warmup="${SOAK_WARMUP:-60}"
video_seconds="${SOAK_VIDEO_SECONDS:-2}"
width="${SOAK_WIDTH:-640}"
height="${SOAK_HEIGHT:-480}"
fps="${SOAK_FPS:-15}"
profile="${SOAK_PROFILE:-release}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
case "$profile" in
  release) cargo_profile=(--release); out=release ;;
  dev) cargo_profile=(); out=debug ;;
  *) echo "run.sh: SOAK_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac

for v in minutes clients interval warmup width height fps; do
  if ! [[ "${!v}" =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
    echo "run.sh: SOAK_${v^^} must be a whole number above 0, not '${!v}'" >&2
    exit 2
  fi
done

echo "== building ($profile)" >&2
daemon="${SNAPRTCD_BIN:-}"
if [ -z "$daemon" ]; then
  (cd "$root" && cargo build "${cargo_profile[@]}" --locked --bin snaprtcd) >&2
  daemon="$CARGO_TARGET_DIR/$out/snaprtcd"
fi
cargo build "${cargo_profile[@]}" --locked --manifest-path "$here/Cargo.toml" >&2
client="$CARGO_TARGET_DIR/$out/snaprtcd-soak"

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Each SnapRTC cycle leaves a viewer in the daemon until its silence timeout (15 s): the
# client drops the peer as a closed browser tab does. Room for those and the WHEP viewers.
cat >"$work/snaprtcd.toml" <<TOML
[server]
listen = "127.0.0.1:0"
rtc_udp_port = 0
max_viewers = $((clients * 16))

[camera]
source = "testsrc"
width = $width
height = $height
fps = $fps

[signaling]
join_sessions = "all"

[mdns]
enabled = false
TOML

# Text log on stderr (not the journal, even when run from a systemd unit), no sd_notify.
env -u JOURNAL_STREAM -u NOTIFY_SOCKET -u PORT SNAPRTCD_LOG=info "$daemon" --config "$work/snaprtcd.toml" 2>"$work/log" &
pid=$!

# Waits up to 20 s for a log line matching `pattern`.
wait_log() {
  local pattern="$1" i
  for i in $(seq 200); do
    if grep -qE "$pattern" "$work/log"; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  echo "run.sh: snaprtcd did not start (no '$pattern' in its log):" >&2
  cat "$work/log" >&2
  exit 1
}
wait_log "http listening"
wait_log " ready"
addr="$(grep -m1 "http listening" "$work/log" | grep -oE 'addr=[0-9.:]+' | cut -d= -f2)"

echo "== snaprtcd $("$daemon" --version 2>/dev/null | head -1) on $addr (pid $pid)," \
  "testsrc ${width}x${height}@${fps}, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
"$client" --url "http://$addr" --pid "$pid" --clients "$clients" \
  --seconds $((minutes * 60)) --interval "$interval" --warmup "$warmup" \
  --video-seconds "$video_seconds" || status=$?

if ! kill -0 "$pid" 2>/dev/null; then
  echo "run.sh: snaprtcd exited during the soak; its log:" >&2
  tail -n 50 "$work/log" >&2
  exit 1
fi
warns="$(grep -c ' WARN ' "$work/log" || true)"
errors="$(grep -c ' ERROR ' "$work/log" || true)"
echo "== daemon log: $warns WARN, $errors ERROR lines"
if [ "$warns" != 0 ] || [ "$errors" != 0 ]; then
  echo "first of them:"
  grep -m 5 -E ' (WARN|ERROR) ' "$work/log" || true
fi
exit "$status"
