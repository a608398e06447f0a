#!/usr/bin/env bash
# Inside the "other host" namespace (own mount and UTS namespaces): a private system D-Bus and
# avahi-daemon, as on a desktop or a Pi on the LAN, then the checker. Args go to check.py.
set -euo pipefail
hostname peer-b
mount -t tmpfs tmpfs /run/dbus 2>/dev/null || { mkdir -p /run/dbus; mount -t tmpfs tmpfs /run/dbus; }
mkdir -p /run/avahi-daemon && mount -t tmpfs tmpfs /run/avahi-daemon
dbus_pid=$(dbus-daemon --system --fork --nopidfile --print-pid)
avahi-daemon --no-drop-root --no-chroot --no-rlimits -D
for _ in $(seq 50); do avahi-browse -at -p >/dev/null 2>&1 && break; sleep 0.1; done
trap 'avahi-daemon -k 2>/dev/null || true; kill "$dbus_pid" 2>/dev/null || true' EXIT
"$PYTHON" "$(dirname "$0")/check.py" "$@"
