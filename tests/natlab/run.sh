#!/usr/bin/env bash
# tests/natlab/run.sh — the NAT lab (issue 13, item 7): a device (snaprtcd with the test pattern)
# and a browser (headless Chromium), each behind its own NAT router (iptables MASQUERADE = cone,
# SNAT --random-fully = symmetric), meet across a small "internet" holding coturn (STUN, TURN with
# long-term credentials and a use-auth-secret instance) and a snaprtcd relay hub. All of it is
# network namespaces on this machine (topo.sh draws it); nothing leaves them.
#
# Cases (lab.test.mjs): (a) cone NATs, WHEP through server-reflexive candidates; (b) symmetric
# NATs, only TURN works; (c) UDP to coturn blocked, TURN over TCP; (d) a wrong TURN credential;
# (e) dial-out: a stock SnapRTC initiator on the hub reaches the device; (f) the hub restarts;
# (g) initiators in turn on an echoing hub. Each prints the selected candidate pair; the lines
# are repeated at the end.
#
# On a fresh Debian 12 this installs what it needs (coturn, iptables, iproute2, Chromium,
# Node.js + npm), tests/node's pinned npm packages, builds the daemon unless SNAPRTCD_BIN names
# one. Needs root (namespaces). With CI=true nothing is skipped: a missing tool fails the suite.
#   tests/natlab/run.sh                                 # every case
#   tests/natlab/run.sh --test-name-pattern='^\(a\)'    # some of them
# SNAPRTCD_TEST_LOG=1 echoes every process's log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ "$(id -u)" -ne 0 ]; then
  echo "natlab: needs root (network namespaces, iptables)" >&2
  exit 1
fi

need=()
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ] && [ "${SNAPRTCD_TEST_NO_INSTALL:-0}" != 1 ]; then
  echo "natlab: installing ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"
for tool in turnserver iptables ip node /usr/bin/chromium; do
  command -v "$tool" >/dev/null 2>&1 || { echo "natlab: $tool is missing (apt-get install coturn iptables iproute2 nodejs chromium)" >&2; exit 1; }
done
# Debian's coturn package starts a turnserver service of its own on 3478 in the host's namespace;
# the lab's instances live in their own namespace and do not meet it.

(cd "$root/tests/node" && npm ci --no-audit --no-fund --loglevel=error)
if [ -z "${SNAPRTCD_BIN:-}" ]; then
  (cd "$root" && cargo build --locked --bin snaprtcd)
  export SNAPRTCD_BIN="$root/target/debug/snaprtcd"
fi
SNAPRTCD_BIN="$(realpath "$SNAPRTCD_BIN")"
export SNAPRTCD_BIN

prefix="nl$$"
tmp="$(mktemp -d /tmp/natlab.XXXXXX)"
cleanup() {
  "$here/topo.sh" down "$prefix" || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$here/topo.sh" up "$prefix"

export NATLAB_PREFIX="$prefix" NATLAB_TMP="$tmp" NATLAB_SUMMARY="$tmp/summary"
: >"$NATLAB_SUMMARY"
cd "$here"
rc=0
# The test process runs on the lab's internet: it reaches the servers and the device's
# forwarded port as any internet host would, and starts the rest in their namespaces.
ip netns exec "$prefix-inet" node --test --test-concurrency=1 "$@" lab.test.mjs || rc=$?
echo
echo "natlab: selected candidate pairs (Chromium's getStats, local = the browser's side):"
sed 's/^/  /' "$NATLAB_SUMMARY"
exit $rc
