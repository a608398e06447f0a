#!/usr/bin/env bash
# Audio benchmark (issue 15 item 6; a benchmark, not a test: never run by CI or tests/run).
#
# The daemon (a RELEASE build unless SNAPRTCD_BIN says otherwise) with [audio] source = "test"
# (the tone generator stands in for the sound card; it costs more than an ALSA read, a sine per
# sample), 48 kHz, 32 kbit/s, and a 320x240@15 test-pattern camera. Listeners are ffmpeg RTSP
# clients that set up the audio track only (`-allowed_media_types audio`); they do not keep the
# H.264 encoder running, so the video threads stay idle and what grows with listeners is audio.
#
# CPU is read per thread from /proc/PID/task/TID/schedstat (ns on CPU) over AB_WINDOW seconds
# (default 10) after AB_WARMUP (3), grouped by thread name:
#   audio     the capture + Opus encode thread (one, whatever the listener count)
#   runtime   the tokio workers ("snaprtcd"): the fan-out, RTP packetising, socket writes
#   video     "capture" and "media" (should be ~0: nobody watches video)
#   daemon    the whole process
# and printed as % of one core.
#
# 1. Capture + encode, mono and stereo, at Opus complexity AB_COMPLEXITIES (default "0 5 10";
#    5 is the default of [audio] complexity; AB_COMPLEXITIES= skips this part), one listener.
# 2. Fan-out: mono at the default complexity with AB_LISTENERS (default "0 1 5 20"; empty
#    skips it) listeners, the cost of the first listener (0 -> 1: the encoder starts) and the
#    slope per extra listener (1 -> the last count: the fan-out alone).
# 3. WebRTC: AB_WEBRTC (default "1 5"; empty skips it) WHEP viewers (str0m, the camera path
#    bench's `listen` helper, built in release on first use), each taking the 320x240@15
#    video; once without audio in the offer and once with an Opus m-line. The difference is
#    what audio adds for WebRTC viewers: the encode (started by the first) and each viewer's
#    SRTP and datagram per period (40 ms). AB_RECV_EVERY_MS=N makes the viewers read their
#    sockets every N ms instead of sleeping in a read: on one machine the kernel wakes a
#    sleeping receiver inside the daemon's `sendto` and charges the daemon for it, which a
#    network between them spares it (empty, the default: woken per datagram, as a browser).
#    AB_NETNS=deliver (root) puts the viewers in a network namespace of their own behind a
#    veth pair instead of on loopback; AB_NETNS=drop also drops the audio RTP (Opus, payload
#    type 111) going out to them in the OUTPUT hook (iptables u32), so the daemon pays its
#    send path (socket, UDP, routing, IP, netfilter) and nothing of the viewers' receive
#    path: what a device pays with its viewers across a network, less its NIC driver's
#    transmit. The viewers then get no audio; the video and all else flow as before.
#
#   flock /work/coord/bench.lock bench/audio/run.sh    # a release build of this checkout
#   SNAPRTCD_BIN=target/debug/snaprtcd bench/audio/run.sh
# Needs ffmpeg. Prints a table; details of each run go to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
window="${AB_WINDOW:-10}"
netns="${AB_NETNS:-}"
warmup="${AB_WARMUP:-3}"
complexities="${AB_COMPLEXITIES-0 5 10}"
webrtc="${AB_WEBRTC-1 5}"
recv_every="${AB_RECV_EVERY_MS:-}"
listeners="${AB_LISTENERS-0 1 5 20}"
bin="${SNAPRTCD_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --locked --bin snaprtcd)
  bin="$root/target/release/snaprtcd"
fi
command -v ffmpeg >/dev/null || { echo "bench/audio: needs ffmpeg" >&2; exit 2; }
dir="$(mktemp -d)"
pids=()
ns=snaprtcd-ab-$$ veth=abd$$
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
  if [ -n "$netns" ]; then
    [ "$netns" = drop ] && iptables -D OUTPUT -o "$veth" -p udp -m u32 --u32 "26&0x7F=0x6F" -j DROP 2>/dev/null
    ip link del "$veth" 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# start CHANNELS COMPLEXITY: the daemon on free ports; sets $pid and $rtsp.
start() {
  cat >"$dir/snaprtcd.toml" <<TOML
[server]
listen = "${http_listen:-127.0.0.1:0}"
rtc_udp_port = 0
# Room for AB_WEBRTC viewers past the default 16.
max_viewers = 64
[camera]
source = "testsrc"
width = 320
height = 240
fps = 15
[rtsp]
enabled = true
listen = "127.0.0.1:0"
max_clients = 64
[audio]
source = "test"
channels = $1
complexity = $2
[mdns]
enabled = false
TOML
  : >"$dir/log"
  "$bin" --config "$dir/snaprtcd.toml" 2>"$dir/log" &
  pid=$!; pids+=("$pid")
  rtsp=
  for _ in $(seq 1 100); do
    rtsp=$(sed -n 's/.*rtsp listening.*addr=\([0-9.:]*\).*/\1/p' "$dir/log" | head -n1)
    http=$(sed -n 's/.*http listening.*addr=\([0-9.:]*\).*/\1/p' "$dir/log" | head -n1)
    [ -n "$rtsp" ] && [ -n "$http" ] && break
    sleep 0.1
  done
  [ -n "$rtsp" ] || { cat "$dir/log" >&2; exit 1; }
}

# listen N: N audio-only RTSP readers.
listen() {
  local i
  for i in $(seq 1 "$1"); do
    ffmpeg -nostdin -v error -rtsp_transport tcp -allowed_media_types audio \
      -i "rtsp://$rtsp/stream" -c copy -f null - 2>>"$dir/ffmpeg.log" &
    pids+=("$!")
  done
}

stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

# cpu_ns: "audio runtime video daemon" nanoseconds on CPU of $pid's threads now, from
# /proc/PID/task/TID/schedstat (the scheduler's own clock). Not utime+stime from .../stat: those
# are sampled at the timer tick, which could misjudge a thread that wakes every 20 ms. (Checked
# on 3 Dec 2026: both clocks gave the same figures within run-to-run noise.)
cpu_ns() {
  local t name a=0 r=0 v=0 d=0 n
  for t in /proc/"$pid"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null) || continue
    n=$(cut -d' ' -f1 "$t/schedstat" 2>/dev/null) || continue
    d=$((d + n))
    case "$name" in
      audio) a=$((a + n)) ;;
      snaprtcd) r=$((r + n)) ;;
      capture | media) v=$((v + n)) ;;
    esac
  done
  echo "$a $r $v $d"
}

# measure: "audio runtime video daemon" as % of one core over the window.
measure() {
  local a b t0 t1
  a=$(cpu_ns); t0=$(date +%s.%N)
  sleep "$window"
  b=$(cpu_ns); t1=$(date +%s.%N)
  awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" 'BEGIN {
    split(a, x, " "); split(b, y, " ");
    for (i = 1; i <= 4; i++) printf "%s%.2f", (i > 1 ? " " : ""), 100 * (y[i] - x[i]) / 1e9 / (t1 - t0);
    printf "\n" }'
}

# connected: RTSP sessions the daemon holds now (established TCP connections to its port;
# printed after the window, so a listener that failed shows).
connected() {
  local port=${rtsp##*:}
  ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l
}

echo "# bench/audio: $(basename "$bin"), ${window} s windows, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# % of one core: audio thread | tokio runtime | video threads | whole daemon"
if [ -n "$complexities" ]; then
  echo "## 1. capture + Opus encode (48 kHz, 32 kbit/s, 1 RTSP listener)"
  printf '%-8s %-10s %7s %8s %6s %7s\n' channels complexity audio runtime video daemon
  for ch in 1 2; do
    for cx in $complexities; do
      start "$ch" "$cx"; listen 1; sleep "$warmup"
      read -r a r v d < <(measure)
      printf '%-8s %-10s %7s %8s %6s %7s\n' "$ch" "$cx" "$a" "$r" "$v" "$d"
      stop
    done
  done
fi

if [ -n "$listeners" ]; then
  echo "## 2. fan-out: mono, complexity 5, N audio-only RTSP listeners"
  printf '%-9s %9s %7s %8s %6s %7s\n' listeners connected audio runtime video daemon
  declare -A cpu=()
  for n in $listeners; do
    start 1 5; listen "$n"
    # ffmpeg starts slowly on a busy machine: measure once all N are connected.
    for _ in $(seq 1 600); do [ "$(connected)" -ge "$n" ] && break; sleep 0.1; done
    sleep "$warmup"
    read -r a r v d < <(measure)
    c=$(connected)
    printf '%-9s %9s %7s %8s %6s %7s\n' "$n" "$c" "$a" "$r" "$v" "$d"
    cpu[$n]=$d
    stop
  done
  # The first listener starts the encoder; the slope from there on is the fan-out alone.
  set -- $listeners
  shift $(($# - 1)); top=$1
  if [ -n "${cpu[0]:-}" ] && [ -n "${cpu[1]:-}" ]; then
    awk -v a="${cpu[0]}" -v b="${cpu[1]}" \
      'BEGIN { printf "first listener (starts the encode), whole daemon 0 -> 1: %.2f %% of one core\n", b - a }'
  fi
  if [ -n "${cpu[1]:-}" ] && [ "$top" -gt 1 ]; then
    awk -v a="${cpu[1]}" -v b="${cpu[$top]}" -v n="$top" \
      'BEGIN { printf "each extra listener, whole daemon 1 -> %d: %.3f %% of one core\n", n, (b - a) / (n - 1) }'
  fi
fi

# Datagrams the viewers' UDP stack has received so far (/proc/net/snmp, Udp InDatagrams: the
# host's, or with AB_NETNS the viewers' namespace's).
udp_datagrams() { "${in_ns[@]}" awk '/^Udp:/ { if (++n == 2) print $2 }' /proc/net/snmp; }

# AB_NETNS: the viewers' namespace, 10.213.0.2 behind a veth pair from this one's 10.213.0.1.
in_ns=()
if [ -n "$netns" ]; then
  case "$netns" in deliver|drop) ;; *) echo "run.sh: AB_NETNS is deliver or drop, not $netns" >&2; exit 2 ;; esac
  ip netns add "$ns"
  ip link add "$veth" type veth peer name abv$$
  ip link set abv$$ netns "$ns"
  ip addr add 10.213.0.1/24 dev "$veth" && ip link set "$veth" up
  ip -n "$ns" addr add 10.213.0.2/24 dev abv$$ && ip -n "$ns" link set abv$$ up && ip -n "$ns" link set lo up
  # The daemon announces every address it has; each is reached through it.
  ip -n "$ns" route add default via 10.213.0.1
  if [ "$netns" = drop ]; then
    # Payload type 111 (Opus) in the second byte of the RTP header: byte 29 of the IP packet
    # (20 bytes of IP header, 8 of UDP); RTCP, STUN and DTLS have other values there.
    iptables -A OUTPUT -o "$veth" -p udp -m u32 --u32 "26&0x7F=0x6F" -j DROP
  fi
  http_listen=10.213.0.1:0
  in_ns=(ip netns exec "$ns")
fi

if [ -n "$webrtc" ]; then
  # Into the main target/ (as bench/camera_path/run.sh builds it): str0m is compiled once.
  target="${CARGO_TARGET_DIR:-$root/target}"
  CARGO_TARGET_DIR="$target" cargo build --release --locked -q \
    --manifest-path "$root/bench/camera_path/Cargo.toml"
  viewer="$target/release/snaprtcd-camera-path"
  echo "## 3. WebRTC: mono, complexity 5, N WHEP viewers of the 320x240@15 video, without and with audio${recv_every:+ (viewers read every $recv_every ms)}${netns:+ (viewers in a network namespace, AB_NETNS=$netns)}"
  printf '%-7s %-5s %7s %8s %6s %7s\n' viewers audio audio runtime video daemon
  declare -A rtc=()
  for n in $webrtc; do
    for with in 0 1; do
      start 1 5
      for _ in $(seq 1 "$n"); do
        "${in_ns[@]}" "$viewer" listen --url "http://$http" --seconds $((warmup + window + 5)) --audio "$with" \
          ${recv_every:+--recv-every-ms "$recv_every"} >>"$dir/viewers.log" 2>&1 &
        pids+=("$!")
      done
      sleep "$warmup"
      u0=$(udp_datagrams)
      read -r a r v d < <(measure)
      u1=$(udp_datagrams)
      # System-wide (loopback: each datagram counted once, as the receiver's InDatagrams), so
      # other work on the machine shows here too.
      echo "# $n viewer(s), audio $with: $(( (u1 - u0) / window )) UDP datagrams/s in the window" >&2
      printf '%-7s %-5s %7s %8s %6s %7s\n' "$n" "$with" "$a" "$r" "$v" "$d"
      rtc[$n.$with]=$d
      stop
    done
  done
  # Each viewer says "video flowing", then "audio flowing" when it took audio.
  sort "$dir/viewers.log" | uniq -c | sed 's/^/# viewer lines: /' >&2
  [ "$netns" = drop ] && iptables -L OUTPUT -v -x -n | awk -v v="$veth" '$7 == v { print "# audio datagrams dropped on the way out: " $1 }' >&2
  for n in $webrtc; do
    awk -v a="${rtc[$n.0]}" -v b="${rtc[$n.1]}" -v n="$n" \
      'BEGIN { printf "audio for %d WebRTC viewer(s), whole daemon: %.2f %% of one core\n", n, b - a }'
  done
  set -- $webrtc
  if [ $# -ge 2 ]; then
    lo=$1; shift $(($# - 1)); hi=$1
    awk -v a0="${rtc[$lo.0]}" -v a1="${rtc[$lo.1]}" -v b0="${rtc[$hi.0]}" -v b1="${rtc[$hi.1]}" -v lo="$lo" -v hi="$hi" \
      'BEGIN { printf "audio per extra WebRTC viewer (%d -> %d): %.3f %% of one core\n", lo, hi, ((b1 - b0) - (a1 - a0)) / (hi - lo) }'
  fi
fi
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
