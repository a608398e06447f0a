#!/usr/bin/env bash
# mDNS across a network: two network namespaces on one veth link ("cam" 10.77.0.1 and
# "peer" 10.77.0.2). The advertiser runs on cam; on peer, python-zeroconf and avahi-browse
# (with its own avahi-daemon and D-Bus) must each resolve instance, port, TXT and address;
# python-zeroconf also resolves the RTSP server's `_rtsp._tcp` (port 8554, path=/stream);
# after SIGTERM the service must be gone within 3 s.
#
#   tests/mdns/run.sh            # needs root; installs what it needs with apt-get and pip
#   SNAPRTCD_BIN=path tests/mdns/run.sh   # test this binary (`snaprtcd run`) instead of
#                                          # the mdns-advertise example
#
# Scenario 2 repeats it with avahi-daemon also running on cam, checking that both coexist:
# avahi keeps its host name and our SRV record points to our own host name.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "tests/mdns: needs root (network namespaces)"; exit 1; }

need=()
for t in ip:iproute2 avahi-browse:avahi-utils avahi-daemon:avahi-daemon dbus-daemon:dbus unshare:util-linux; do
  command -v "${t%%:*}" >/dev/null || need+=("${t##*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
venv=$root/target/mdns-venv
[ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import zeroconf' 2>/dev/null || {
  python3 -m venv "$venv" && "$venv/bin/pip" install -q 'zeroconf>=0.130,<1'
}
export PYTHON=$venv/bin/python

(cd "$root" && cargo build -q --example mdns-advertise)
work=$(mktemp -d /tmp/snaprtcd-mdns.XXXXXX)
ns=snmd$$
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  ip netns del "$ns-a" 2>/dev/null || true; ip netns del "$ns-b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Two hosts on one link. Multicast needs a route for 224.0.0.0/4 on the veth.
ip netns add "$ns-a"; ip netns add "$ns-b"
ip link add "$ns-va" type veth peer name "$ns-vb"
ip link set "$ns-va" netns "$ns-a"; ip link set "$ns-vb" netns "$ns-b"
ip -n "$ns-a" addr add 10.77.0.1/24 dev "$ns-va"
ip -n "$ns-b" addr add 10.77.0.2/24 dev "$ns-vb"
for s in a b; do
  ip -n "$ns-$s" link set lo up
  ip -n "$ns-$s" link set "$ns-v$s" up multicast on
  ip -n "$ns-$s" route add 224.0.0.0/4 dev "$ns-v$s"
done

failures=0
scenario() { # NAME WITH_AVAHI_ON_CAM
  local name=$1 avahi=$2
  echo "== scenario: $name"
  cat > "$work/cam.sh" <<CAM
#!/usr/bin/env bash
set -euo pipefail
hostname cam-a
if [ "$avahi" = 1 ]; then
  mount -t tmpfs tmpfs /run/dbus 2>/dev/null || { mkdir -p /run/dbus; mount -t tmpfs tmpfs /run/dbus; }
  mkdir -p /run/avahi-daemon && mount -t tmpfs tmpfs /run/avahi-daemon
  dbus_pid=\$(dbus-daemon --system --fork --nopidfile --print-pid)
  avahi-daemon --no-drop-root --no-chroot --no-rlimits -D
  for _ in \$(seq 50); do [ -S /run/avahi-daemon/socket ] && break; sleep 0.1; done
  trap 'avahi-daemon -k 2>/dev/null || true; kill "\$dbus_pid" 2>/dev/null || true' EXIT
else
  mkdir -p /run/avahi-daemon && mount -t tmpfs tmpfs /run/avahi-daemon
fi
export STATE_DIRECTORY=$work/state
if [ -n "\${SNAPRTCD_BIN:-}" ]; then
  cfg=$work/cam.toml
  printf '[server]\nlisten = "0.0.0.0:8080"\n[camera]\nsource = "testsrc"\n[mdns]\ninstance_name = "cam-a"\n[rtsp]\nenabled = true\n' > "\$cfg"
  "\$SNAPRTCD_BIN" run --config "\$cfg" &
else
  printf '[rtsp]\nenabled = true\n' > $work/advertise.toml
  "$root/target/debug/examples/mdns-advertise" $work/advertise.toml 8080 &
fi
child=\$!
trap 'kill -TERM \$child 2>/dev/null || true' TERM
wait \$child || true
wait \$child 2>/dev/null || true
[ "$avahi" = 1 ] && avahi-resolve -4 -n cam-a.local > $work/avahi-self.txt 2>&1 || true
exit 0
CAM
  chmod +x "$work/cam.sh"
  ip netns exec "$ns-a" unshare -m -u --propagation private "$work/cam.sh" > "$work/cam.log" 2>&1 &
  local cam=$!; pids+=("$cam")
  coproc PEER { ip netns exec "$ns-b" unshare -m -u --propagation private "$here/peer.sh" cam-a 8080 10.77.0.1 0 2>&1; }
  local peer_pid=$PEER_PID ok=1 line
  while IFS= read -r -t 40 line <&"${PEER[0]}"; do
    echo "   $line"
    case "$line" in
      READY-FOR-TERM)
        echo TERMED >&"${PEER[1]}"
        kill -TERM "$cam" ;;
      FAIL*) ok=0 ;;
    esac
  done
  wait "$peer_pid" || ok=0
  wait "$cam" || true
  if [ "$avahi" = 1 ]; then
    # avahi on the cam host must still own its name: no rename after a conflict.
    if grep -qi "conflict" "$work/cam.log"; then echo "   FAIL avahi on cam saw a name conflict"; ok=0; fi
    if grep -q "cam-a.local" "$work/avahi-self.txt"; then echo "   PASS avahi on cam still resolves cam-a.local: $(cat "$work/avahi-self.txt")"
    else echo "   FAIL avahi on cam: $(cat "$work/avahi-self.txt")"; ok=0; fi
  fi
  if [ $ok = 1 ]; then echo "== $name: ok"; else echo "== $name: FAILED; cam log:"; sed 's/^/   | /' "$work/cam.log"; failures=$((failures+1)); fi
}

scenario "peer resolves the advertisement" 0
scenario "avahi-daemon on the same host" 1
[ $failures = 0 ] && echo "tests/mdns: all passed" || { echo "tests/mdns: $failures scenario(s) failed"; exit 1; }
