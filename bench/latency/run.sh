#!/usr/bin/env bash
# Capture-to-display latency of snaprtcd's video (issue 16 item 6): a release snaprtcd with the
# 1280x720@30 test pattern, one headless Chromium viewer at a time on the same machine, in a
# network namespace (as tests/webrtc/run.sh: Chromium gathers no host candidate on loopback
# alone). Each displayed frame's capture instant is read back from the picture and compared with
# the browser's wall clock. Prints a Markdown table for docs/BENCHMARKS.md.
#   sudo bench/latency/run.sh
#   BENCH_RUNS=whep,whep-jb0 BENCH_WINDOW_MS=10000 sudo -E bench/latency/run.sh
# Runs: whep (WHEP, Chromium's defaults), whep-jb0 (jitterBufferTarget = 0 and
# playoutDelayHint = 0 on the receiver), whep-nopd (the answer without the playout-delay
# extension: what it is worth), viewer (the viewer page at `/` and its stats line),
# snaprtc (a SnapRTC initiator asking for video from the built-in capture member), rtsp (ffmpeg
# reads rtsp://…/stream over TCP and decodes; the stamp is read from its output on arrival).
# Needs root (namespace). Installs Chromium, Node.js and npm when missing. Not part of tests/run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root for the network namespace" >&2; exit 1; }
(cd "$root/tests/webrtc" && npm ci --no-audit --no-fund --loglevel=error)
# The SnapRTC run loads the npm browser builds the node tests use (SignalR, simple-peer, lz-string).
(cd "$root/tests/node" && npm ci --no-audit --no-fund --loglevel=error)
if [ -z "${SNAPRTCD_BIN:-}" ]; then
  (cd "$root" && cargo build --release --locked --bin snaprtcd)
  export SNAPRTCD_BIN="$root/target/release/snaprtcd"
fi

ns="snaprtcd-latency-$$"; peer="$ns-peer"
va="srl$$a"; vb="srl$$b"; va=${va:0:15}; vb=${vb:0:15}
cleanup() { ip netns del "$ns" 2>/dev/null || true; ip netns del "$peer" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"; ip netns add "$peer"
ip link add "$va" type veth peer name "$vb"
ip link set "$va" netns "$ns"; ip link set "$vb" netns "$peer"
ip -n "$ns" addr add 10.80.0.1/24 dev "$va"; ip -n "$peer" addr add 10.80.0.2/24 dev "$vb"
ip -n "$ns" link set lo up; ip -n "$ns" link set "$va" up
ip -n "$peer" link set lo up; ip -n "$peer" link set "$vb" up
ip -n "$ns" route add default via 10.80.0.2
mkdir -p "$root/tests/webrtc/.tmp"
ip netns exec "$ns" node "$here/latency.mjs"
