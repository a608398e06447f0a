#!/usr/bin/env bash
# Black-box tests of snaprtcd's SnapRTC hub with the official npm clients and headless Chromium.
#
# On a fresh Debian 12 this installs what it needs (Node.js + npm, Chromium, iproute2 for the
# browser test's network namespace), installs the pinned npm packages (`npm ci`), builds the
# daemon unless SNAPRTCD_BIN names one, and runs every *.test.mjs with Node's own test runner.
#   tests/node/run.sh                      # all of them
#   tests/node/run.sh browser.test.mjs     # some of them
# SNAPRTCD_TEST_LOG=1 echoes the daemons' logs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo "run.sh: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi

major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 18 ]; then
  echo "run.sh: Node.js $(node --version) is too old; 18 or newer is needed" >&2
  exit 1
fi

cd "$here"
npm ci --no-audit --no-fund --loglevel=error

if [ -z "${SNAPRTCD_BIN:-}" ]; then
  (cd "$root" && cargo build --locked --bin snaprtcd)
fi

if [ $# -eq 0 ]; then
  set -- *.test.mjs
fi
# One test file at a time: each starts its own daemons, and the machine has 2 cores.
opts=()
if node --test-concurrency=1 -e '' >/dev/null 2>&1; then
  opts+=(--test-concurrency=1)
fi
exec node --test "${opts[@]}" "$@"
