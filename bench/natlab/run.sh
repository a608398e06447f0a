#!/usr/bin/env bash
# Time to first frame across the NAT lab (issue 13, item 9): WHEP POST to first decoded frame,
# median of 10, direct through two cone NATs (server-reflexive) and through coturn's relay, in
# tests/natlab's topology (network namespaces; needs root). Prints a Markdown table.
#   bench/natlab/run.sh                    # release build, 10 runs per path
#   BENCH_RUNS=5 SNAPRTCD_BIN=target/debug/snaprtcd bench/natlab/run.sh
# Needs what tests/natlab needs (coturn, iptables, iproute2, Chromium, Node.js; it installs
# them on Debian when missing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
lab="$root/tests/natlab"
[ "$(id -u)" -eq 0 ] || { echo "bench/natlab: needs root (network namespaces)" >&2; exit 1; }

need=()
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"
(cd "$root/tests/node" && npm ci --no-audit --no-fund --loglevel=error)
if [ -z "${SNAPRTCD_BIN:-}" ]; then
  (cd "$root" && cargo build --release --locked --bin snaprtcd)
  SNAPRTCD_BIN="$root/target/release/snaprtcd"
fi
SNAPRTCD_BIN="$(realpath "$SNAPRTCD_BIN")"
export SNAPRTCD_BIN

prefix="nlb$$"
tmp="$(mktemp -d /tmp/natlab-bench.XXXXXX)"
cleanup() { "$lab/topo.sh" down "$prefix" || true; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
"$lab/topo.sh" up "$prefix"
export NATLAB_PREFIX="$prefix" NATLAB_TMP="$tmp"
ip netns exec "$prefix-inet" node "$here/bench.mjs"
