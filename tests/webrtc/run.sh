#!/usr/bin/env bash
# snaprtcd's WebRTC side in headless Chromium (WHEP, viewer page, 8 viewers, bad input, time to
# first frame; go2rtc's API in go2rtc.test.mjs). Installs what it needs on a fresh Debian 12
# (Chromium, Node.js + npm, iproute2, python3-aiohttp),
# runs `npm ci`, builds the daemon unless SNAPRTCD_BIN names one, and runs the tests inside a
# network namespace of its own: loopback plus a veth address with a default route, because
# Chromium gathers no host candidate on loopback alone. Needs root (for the namespace).
#   tests/webrtc/run.sh                     # every test
#   tests/webrtc/run.sh --test-name-pattern=WHEP
# SNAPRTCD_TEST_LOG=1 echoes the daemon's log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# go2rtc.test.mjs runs ha_client.py: the Home Assistant WebRTC integration's aiohttp client.
/usr/bin/python3 -c 'import aiohttp' >/dev/null 2>&1 || need+=(python3-aiohttp)
if [ ${#need[@]} -gt 0 ]; then
  echo "run.sh: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

cd "$here"
npm ci --no-audit --no-fund --loglevel=error
if [ -z "${SNAPRTCD_BIN:-}" ]; then
  (cd "$root" && cargo build --locked --bin snaprtcd)
fi

# The namespace: "$ns" holds the tests (lo + 10.78.0.1/24, default route via the peer), the
# peer namespace only terminates the veth. Nothing leaves the pair.
ns="snaprtcd-webrtc-$$"
peer="$ns-peer"
va="srw$$a"; vb="srw$$b"
va=${va:0:15}; vb=${vb:0:15}
cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  ip netns del "$peer" 2>/dev/null || true
  rm -rf "$here/.tmp"
}
trap cleanup EXIT
if [ "$(id -u)" -ne 0 ]; then
  echo "run.sh: needs root to create a network namespace (run it with sudo)" >&2
  exit 1
fi
ip netns add "$ns"
ip netns add "$peer"
ip link add "$va" type veth peer name "$vb"
ip link set "$va" netns "$ns"
ip link set "$vb" netns "$peer"
ip -n "$ns" addr add 10.78.0.1/24 dev "$va"
ip -n "$peer" addr add 10.78.0.2/24 dev "$vb"
ip -n "$ns" link set lo up
ip -n "$ns" link set "$va" up
ip -n "$peer" link set lo up
ip -n "$peer" link set "$vb" up
ip -n "$ns" route add default via 10.78.0.2

mkdir -p "$here/.tmp"
export TMPDIR="$here/.tmp"
opts=()
if node --test-concurrency=1 -e '' >/dev/null 2>&1; then
  opts+=(--test-concurrency=1)
fi
ip netns exec "$ns" node --test "${opts[@]}" "$@" webrtc.test.mjs go2rtc.test.mjs
