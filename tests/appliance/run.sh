#!/usr/bin/env bash
# tests/appliance/run.sh — the owner's journey on a real Debian 12 with systemd: build the
# amd64 .deb (packaging/build-debs.sh), boot one VM (tests/vm/vm.sh, qemu TCG) and run
# tests/appliance/guest.sh in it: apt-get install → active, StatusText, /health, avahi-browse
# finds it, a broken config + reload keeps it running and the journal names file:line,
# kill -STOP → the watchdog restarts it, systemd-analyze verify/security, the edited conffile
# survives a reinstall, purge removes user, config and state.
#
#   tests/appliance/run.sh        needs root; installs the VM's Debian packages when missing
#
# The package is the dev build (`tests/run rust` has made it; the same code and packaging):
# SNAPRTCD_DEB_PROFILE=release tests the release package instead.
# SNAPRTCD_SECURITY_OUT=FILE keeps the `systemd-analyze security` table from the VM.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "tests/appliance: needs root (debootstrap, qemu 9p as root)" >&2; exit 1; }

need=()
for p in qemu-system-x86 linux-image-amd64 busybox-static debootstrap kmod cpio lintian; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

start=$(date +%s)
# The guest root (debootstrap: mostly download and unpack) is built while the package compiles.
prep_log=$(mktemp /tmp/snaprtcd-vmprep.XXXXXX)
tests/vm/vm.sh --prepare > "$prep_log" 2>&1 &
prep=$!
packaging/build-debs.sh --install --profile "${SNAPRTCD_DEB_PROFILE:-dev}" amd64
built=$(date +%s)
echo "# appliance: amd64 .deb built in $((built - start)) s"
if ! wait "$prep"; then
  cat "$prep_log" >&2; rm -f "$prep_log"
  echo "tests/appliance: could not build the VM's root" >&2; exit 1
fi
rm -f "$prep_log"
rc=0
tests/vm/vm.sh --timeout 900 --mem 1536 -- \
  env SNAPRTCD_SECURITY_OUT="${SNAPRTCD_SECURITY_OUT:+$(pwd)/target/security.txt}" tests/appliance/guest.sh || rc=$?
if [ -n "${SNAPRTCD_SECURITY_OUT:-}" ] && [ -f target/security.txt ]; then
  mv target/security.txt "$SNAPRTCD_SECURITY_OUT"
fi
echo "# appliance: VM (boot + journey) $(( $(date +%s) - built )) s"
exit $rc
