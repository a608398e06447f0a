#!/usr/bin/env bash
# WebRTC benchmark: snaprtcd vs aiortc, 1/4/16 WHEP viewers in headless Chromium, in a network
# namespace (as tests/webrtc/run.sh). Prints a Markdown table for docs/BENCHMARKS.md.
#   bench/webrtc/run.sh                  # release build, 10 s windows
#   BENCH_VIEWERS=1,4 BENCH_WINDOW_MS=5000 bench/webrtc/run.sh
#   BENCH_SOURCE=h264 bench/webrtc/run.sh  # both pass through one ffmpeg 1.5 Mbit/s H.264 stream
#   BENCH_VIEWERS=0 bench/webrtc/run.sh    # time to first frame only, with its phases
#   BENCH_TTFF_N=20 BENCH_ICE_FULL=1 ...   # 20 joins; snaprtcd once more with [ice] mode = "full"
# Server CPU is process CPU-seconds over each window (not wall-clock %), so a loaded machine
# does not inflate it; the 1-minute load average is printed beside each row.
# Needs root (namespace). Installs Chromium, Node.js, npm, python3-venv, ffmpeg when missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
[ -x "$here/.venv/bin/python" ] || python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install -q -r "$here/requirements.txt"
(cd "$root/tests/webrtc" && npm ci --no-audit --no-fund --loglevel=error)
if [ -z "${SNAPRTCD_BIN:-}" ]; then
  (cd "$root" && cargo build --release --locked --bin snaprtcd)
  export SNAPRTCD_BIN="$root/target/release/snaprtcd"
fi
export AIORTC_PYTHON="$here/.venv/bin/python"

ns="snaprtcd-bench-$$"; peer="$ns-peer"
va="srb$$a"; vb="srb$$b"; va=${va:0:15}; vb=${vb:0:15}
cleanup() { ip netns del "$ns" 2>/dev/null || true; ip netns del "$peer" 2>/dev/null || true; }
trap cleanup EXIT
[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root for the network namespace" >&2; exit 1; }
ip netns add "$ns"; ip netns add "$peer"
ip link add "$va" type veth peer name "$vb"
ip link set "$va" netns "$ns"; ip link set "$vb" netns "$peer"
ip -n "$ns" addr add 10.79.0.1/24 dev "$va"; ip -n "$peer" addr add 10.79.0.2/24 dev "$vb"
ip -n "$ns" link set lo up; ip -n "$ns" link set "$va" up
ip -n "$peer" link set lo up; ip -n "$peer" link set "$vb" up
ip -n "$ns" route add default via 10.79.0.2
mkdir -p "$root/tests/webrtc/.tmp"
ip netns exec "$ns" node "$here/bench.mjs"
