#!/usr/bin/env bash
# tests/container/run.sh — the relay image, as a cloud platform runs it: build it with
# packaging/container/build.sh (amd64, from the dev package; SNAPRTCD_DEB_PROFILE=release for
# the release one), run it with podman (non-root, PORT set by the "platform", host network),
# then with the official @microsoft/signalr client (tests/container/exchange.mjs):
# /health says role relay, two clients complete the SnapRTC exchange through the container,
# and `podman stop` (SIGTERM) gives a connected client a clean close and the container exit 0.
#   tests/container/run.sh        needs root (podman's store under target/container)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

need=()
for p in podman runc qemu-user; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# shellcheck source=packaging/container/podman.sh
. packaging/container/podman.sh
[ -d tests/node/node_modules/@microsoft/signalr ] || (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)

start=$(date +%s)
packaging/container/build.sh --profile "${SNAPRTCD_DEB_PROFILE:-dev}" amd64
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
echo "# container: image built in $(( $(date +%s) - start )) s"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
name=snaprtcd-relay-test-$$
cleanup() { podman_ rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
podman_ run -d --name "$name" --network host -e PORT="$port" "snaprtcd-relay:$version-amd64" >/dev/null
# The container's own user: not root.
user=$(podman_ inspect --format '{{.Config.User}}' "$name")
[ "$user" = 65532:65532 ] || { echo "not ok - the image runs as $user, not 65532"; exit 1; }
echo "ok - the image runs as user $user"

rc=0
node tests/container/exchange.mjs "http://127.0.0.1:$port" \
  env CONTAINERS_CONF="$podman_conf" podman "${podman_args[@]}" stop -t 10 "$name" || rc=$?
status=$(podman_ inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$name")
if [ "$status" = "exited 0" ]; then
  echo "ok - after SIGTERM the container exited 0"
else
  echo "not ok - after SIGTERM the container is: $status"; rc=1
fi
echo "# the container's log (last lines):"
podman_ logs "$name" 2>&1 | tail -n 5 | sed 's/^/#   /'
exit $rc
