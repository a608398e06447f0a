#!/usr/bin/env bash
# tests/scale/run.sh — snaprtcd scaled out (issue 12): 3 relays sharing sessions through a Redis
# backplane, haproxy in front (round-robin, no stickiness: packaging/container/haproxy.cfg, the
# file the compose file ships), driven by the official @microsoft/signalr client and headless
# Chromium; then the faults (Redis killed and back, an instance killed -9) and a rolling restart.
#
# On a fresh Debian 12 this installs what it needs (redis-server, haproxy, Node.js + npm,
# Chromium, iproute2), the pinned npm packages of tests/node (whose helpers the tests import),
# builds the daemon unless SNAPRTCD_BIN names one, and runs every *.test.mjs here with Node's
# test runner. Each test starts its own redis-server, haproxy and instances on free loopback
# ports (inside a network namespace of its own for Chromium, when root) and stops them.
#   tests/scale/run.sh                       # all of them
#   tests/scale/run.sh faults.test.mjs       # some of them
# SNAPRTCD_TEST_LOG=1 echoes the processes' logs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ] && [ "${SNAPRTCD_TEST_NO_INSTALL:-0}" != 1 ]; then
  echo "run.sh: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian puts haproxy in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin"

(cd "$root/tests/node" && npm ci --no-audit --no-fund --loglevel=error)

if [ -z "${SNAPRTCD_BIN:-}" ]; then
  (cd "$root" && cargo build --locked --bin snaprtcd)
fi

cd "$here"
if [ $# -eq 0 ]; then
  set -- *.test.mjs
fi
# One test file at a time: each starts its own fleet, and the machine has 2 cores.
exec node --test --test-concurrency=1 "$@"
