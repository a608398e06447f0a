#!/bin/bash
# tests/appliance/guest.sh — the user's journey, run as root inside the Debian 12 VM (see
# run.sh): install the amd64 .deb, find it, break and reload the config, stall it, edit the
# conffile and reinstall, purge. One "ok"/"not ok" line per step, then the numbers.
set -u
deb=$(ls target/debian/snaprtcd_*_amd64.deb | head -n 1)
conf=/etc/snaprtcd/snaprtcd.toml
export DEBIAN_FRONTEND=noninteractive
failed=0 n=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
no() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else no "$what"; fi; }
# wait_until SECONDS COMMAND...: poll COMMAND (every 0.2 s) until it succeeds.
wait_until() {
  local end=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.2; done
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
journal() { journalctl -u snaprtcd --no-pager -o cat "$@"; }

echo "# installing $deb"
t0=$(now)
apt-get install -y -q "./$deb" > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; no "apt-get install"; }
wait_until 60 sh -c '[ "$(systemctl is-active snaprtcd)" = active ]'
t1=$(now)
# From the unit's start to READY=1, as systemd measured it.
ready_ms=$(systemctl show -p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic --value snaprtcd \
  | awk 'NR == 1 { a = $1 } NR == 2 { b = $1 } END { d = a - b; if (d < 0) d = -d; printf "%.2f", d / 1e6 }')
check "systemctl is-active snaprtcd: $(systemctl is-active snaprtcd)" [ "$(systemctl is-active snaprtcd)" = active ]
echo "# apt-get install -> active: $(secs "$t0" "$t1") s (of which unit start -> READY=1: $ready_ms s)"
grep '^snaprtcd:' /tmp/apt.log | sed 's/^/# postinst: /'
check "postinst says where the viewer and the token are" \
  sh -c 'grep -q "the viewer is at http://" /tmp/apt.log && grep -q "cat /var/lib/snaprtcd/token" /tmp/apt.log'
check "user snaprtcd in group video" sh -c 'id -nG snaprtcd | grep -qw video'

status() { systemctl show -p StatusText --value snaprtcd; }
wait_until 30 sh -c 'systemctl show -p StatusText --value snaprtcd | grep -Eq "^(streaming|no camera).* viewers"'
check "StatusText says what it does: $(status)" sh -c 'systemctl show -p StatusText --value snaprtcd | grep -Eq "^(streaming|no camera).* viewers"'

health=$(curl -fsS --max-time 5 http://127.0.0.1:8080/health)
check "/health answers: $health" [ -n "$health" ]
check "the token file exists, readable by snaprtcd only" \
  sh -c '[ "$(stat -c %U:%a /var/lib/snaprtcd/token)" = snaprtcd:600 ]'
check "the hub wants the token" \
  sh -c '[ "$(curl -s -o /dev/null -w %{http_code} -X POST "http://127.0.0.1:8080/snaprtc-hub/negotiate?negotiateVersion=1")" = 401 ]'

# The package turns RTSP on, behind the same token: a DESCRIBE without credentials gets 401.
rtsp_describe() {
  exec 3<>/dev/tcp/127.0.0.1/8554 || return 1
  printf 'DESCRIBE rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n' >&3
  timeout 5 head -n 1 <&3
  exec 3<&-
}
rtsp=$(rtsp_describe 2>/dev/null | tr -d '\r')
check "RTSP on 8554 wants the token: $rtsp" sh -c "echo '$rtsp' | grep -q '^RTSP/1.0 401'"

found() { avahi-browse -rpt _snaprtc._tcp 2>/dev/null | grep '^=' | grep ';8080;' | grep -q '"path=/snaprtc-hub"'; }
if wait_until 30 found; then
  ok "avahi-browse -rpt _snaprtc._tcp finds it"
  avahi-browse -rpt _snaprtc._tcp 2>/dev/null | grep '^=' | head -n 2 | sed 's/^/# /'
else
  no "avahi-browse -rpt _snaprtc._tcp finds it"; avahi-browse -rpt _snaprtc._tcp 2>&1 | sed 's/^/# /'
fi

# A broken config: reload keeps it running and the journal names file:line.
cp "$conf" /tmp/good.toml
printf '\n[snapshot]\nquality = "high"\n' >> "$conf"
pid=$(systemctl show -p MainPID --value snaprtcd)
systemctl reload snaprtcd
wait_until 20 sh -c 'journalctl -u snaprtcd --no-pager -o cat | grep -q "reload rejected"'
check "broken config + reload: still active, same PID" \
  sh -c "[ \"\$(systemctl is-active snaprtcd)\" = active ] && [ \"\$(systemctl show -p MainPID --value snaprtcd)\" = $pid ]"
journal | grep "reload rejected" | tail -n 1 | sed 's/^/# journal: /'
names_place() { journal | grep "reload rejected" | grep -q "$conf:[0-9][0-9]*"; }
check "the journal shows $conf:line" names_place
check "StatusText shows the rejected reload: $(status)" sh -c 'systemctl show -p StatusText --value snaprtcd | grep -q "reload rejected"'

# A valid change: applied by restarting the services in-process.
sed 's/^fps = 30$/fps = 10/' /tmp/good.toml > "$conf"
systemctl reload snaprtcd
check "a valid change is applied (services restarted, same PID)" \
  wait_until 30 sh -c "journalctl -u snaprtcd --no-pager -o cat | grep -q 'services restarted' && [ \"\$(systemctl show -p MainPID --value snaprtcd)\" = $pid ]"
wait_until 20 sh -c '! systemctl show -p StatusText --value snaprtcd | grep -q "reload rejected"'
check "StatusText is live again: $(status)" sh -c '! systemctl show -p StatusText --value snaprtcd | grep -q "reload rejected"'

# A stopped process stops the watchdog pings: systemd kills and restarts it.
t2=$(now)
kill -STOP "$pid"
restarted() {
  local p; p=$(systemctl show -p MainPID --value snaprtcd)
  [ "$p" != "$pid" ] && [ "$p" != 0 ] && [ "$(systemctl is-active snaprtcd)" = active ]
}
if wait_until 60 restarted; then
  ok "kill -STOP: restarted by the watchdog after $(secs "$t2" "$(now)") s (NRestarts=$(systemctl show -p NRestarts --value snaprtcd))"
else
  no "kill -STOP: restarted by the watchdog"; systemctl status snaprtcd --no-pager | sed 's/^/# /'
fi
check "the journal says why" sh -c 'journalctl -u snaprtcd --no-pager | grep -qi "watchdog timeout"'

# systemd's own checks of the installed unit.
# --man=no: the guest has no man-db to look up Documentation=man:snaprtcd(8); the page is
# checked to be installed instead.
verify=$(systemd-analyze verify --man=no snaprtcd.service 2>&1)
check "systemd-analyze verify snaprtcd.service is clean${verify:+: $verify}" [ -z "$verify" ]
check "man page snaprtcd(8) installed" [ -s /usr/share/man/man8/snaprtcd.8.gz ]
systemd-analyze security --no-pager snaprtcd.service > /tmp/security.txt 2>&1
score=$(sed -n 's/.*Overall exposure level for snaprtcd.service: \([0-9.]*\).*/\1/p' /tmp/security.txt)
check "systemd-analyze security: exposure $score <= 2.5" awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.5) }'
[ -n "${SNAPRTCD_SECURITY_OUT:-}" ] && cp /tmp/security.txt "$SNAPRTCD_SECURITY_OUT"

# Editing the conffile, then reinstalling, keeps the edit.
printf '\n# edited by the owner\n' >> "$conf"
apt-get install -y -q --reinstall "./$deb" > /tmp/apt2.log 2>&1 || { cat /tmp/apt2.log; no "reinstall"; }
check "reinstall keeps the edited conffile" grep -q '^# edited by the owner$' "$conf"
check "and the service is active again" wait_until 60 sh -c '[ "$(systemctl is-active snaprtcd)" = active ]'

# remove stops it; purge removes user, state and config.
apt-get remove -y -q snaprtcd > /tmp/apt3.log 2>&1
check "apt-get remove stops it" sh -c '! systemctl is-active -q snaprtcd'
check "remove keeps the config" [ -f "$conf" ]
apt-get purge -y -q snaprtcd > /tmp/apt4.log 2>&1
check "apt-get purge removes the user" sh -c '! getent passwd snaprtcd'
check "apt-get purge removes /etc/snaprtcd and /var/lib/snaprtcd" sh -c '[ ! -e /etc/snaprtcd ] && [ ! -e /var/lib/snaprtcd ]'

echo "# $n steps, $failed failed"
[ "$failed" = 0 ]
