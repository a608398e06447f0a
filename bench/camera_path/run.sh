#!/usr/bin/env bash
# Camera path benchmark (issue 16 item 5; a benchmark, not a test: never run by CI or tests/run).
#
# Runs, each "KIND:WxH" (CP_RUNS):
#   mjpeg  noisy MJPEG made by ffmpeg (testsrc2 + temporal noise, -q:v 5, 4:2:0, CP_SECONDS long)
#          fed to a release snaprtcd through the `exec` source, looped and paced at 30 fps
#          (`ffmpeg -re -stream_loop -1 ... -c copy -flush_packets 1 -f mjpeg -`, a camera that
#          costs next to nothing), [encoder] kind = "software";
#   yuyv   the same pictures as raw YUYV 4:2:2 (`[camera.exec] format = "yuyv"`, the file read
#          by `ffmpeg -re -stream_loop -1 -f rawvideo ... -c copy -f rawvideo -`): what a USB
#          camera sends uncompressed, converted to I420 on the capture thread;
#   h264   the same pictures encoded once by x264 (ultrafast, baseline, 2 Mbit/s, an IDR every
#          2 s) and passed through (`kind = "passthrough"`): the floor, nothing decoded or encoded.
# Each run has one WHEP viewer (bench/camera_path/src/main.rs, str0m) recording the H.264 it
# receives. In mjpeg and yuyv runs, on the same file, also looped and paced at 30 fps:
#   ffmpeg -re -stream_loop -1 -i SRC -t LENGTH -pix_fmt yuv420p -c:v libx264 -preset ultrafast \
#          -tune zerolatency -profile:v baseline -b:v 2M -threads 1 -f h264 OUT
# (the go2rtc user's path; -pix_fmt yuv420p as go2rtc's templates have it, so both outputs are
# limited range like snaprtcd's). Over a fixed window of CP_WINDOW seconds after CP_WARMUP (by
# default after the source has looped once: every buffer has met the largest frame it will):
#   - CPU of every snaprtcd thread and of the ffmpeg+x264 process (/proc/PID/task/*/stat), in %
#     of one core, and per picture that went into each encoder (on a busy machine snaprtcd
#     drops pictures its media thread is too late for, while ffmpeg -re falls behind instead,
#     so CPU ms per picture is the figure to compare);
#   - snaprtcd's page faults (minor/major) per picture taken (captured and not dropped), and
#     per thread on stderr;
#   - frames captured, dropped before the encoder, skipped by the encoder (openh264's rate
#     control; 0 since it may not skip) and encoded, and the mean wall time of one openh264
#     encode call (from /metrics).
# Then the quality of both outputs against the decoded source: SSIM (All) and PSNR (average)
# from ffmpeg's ssim/psnr filters, at the bitrate each really produced. snaprtcd's pictures
# are paired with the source pictures they came from by the matcher (RTP time, then luma MSE
# against the neighbours); pictures the daemon skipped are not scored (the table shows how
# many it delivered per second).
#
#   bench/camera_path/run.sh                       # the four runs below
#   CP_RUNS=mjpeg:1280x720 CP_THREADS=1 bench/camera_path/run.sh
#
# Knobs: CP_RUNS ("mjpeg:1280x720 mjpeg:1920x1080 yuyv:1280x720 h264:1280x720"), CP_SECONDS
# (20: source length; a run lasts CP_WARMUP + CP_WINDOW + 2), CP_WARMUP (25), CP_WINDOW (10),
# CP_BITRATE_KBPS (2000, both encoders), CP_THREADS ("auto": snaprtcd's [encoder] threads),
# CP_BESIDE (1; 0 runs snaprtcd alone, without x264 beside it: what the daemon drops when it
# has the machine to itself), SNAPRTCD_BIN (default: a release build of this checkout), CP_FAULTS_DIR (unset; when set,
# `perf record -e page-faults --call-graph dwarf` follows the daemon through each window and
# the call chain of every fault goes to DIR/KIND-WxH.txt; perf's own cost then shows in the
# CPU columns). Needs ffmpeg with libx264 (and perf for CP_FAULTS_DIR). Temporary files (a few
# GB of raw video) go to $TMPDIR. Prints a markdown table for docs/BENCHMARKS.md; details go
# to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

runs="${CP_RUNS:-mjpeg:1280x720 mjpeg:1920x1080 yuyv:1280x720 h264:1280x720}"
seconds="${CP_SECONDS:-20}"
warmup="${CP_WARMUP:-25}"
window="${CP_WINDOW:-10}"
kbps="${CP_BITRATE_KBPS:-2000}"
threads="${CP_THREADS:-auto}"
beside="${CP_BESIDE:-1}"
fps=30
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

for v in seconds warmup window kbps; do
  if ! [[ "${!v}" =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
    echo "run.sh: CP_${v^^} must be a whole number above 0, not '${!v}'" >&2
    exit 2
  fi
done
# Each run lasts this long; both the daemon's program and x264 loop the source.
length=$((warmup + window + 2))
if [ "$beside" != 0 ] && [ "$beside" != 1 ]; then
  echo "run.sh: CP_BESIDE must be 0 or 1, not '$beside'" >&2
  exit 2
fi
if [ "$threads" != auto ] && ! [[ "$threads" =~ ^[1-4]$ ]]; then
  echo "run.sh: CP_THREADS must be auto or 1-4, not '$threads'" >&2
  exit 2
fi
for run in $runs; do
  if ! [[ "$run" =~ ^(mjpeg|yuyv|h264):[0-9]+x[0-9]+$ ]]; then
    echo "run.sh: CP_RUNS entries are KIND:WxH with KIND mjpeg, yuyv or h264, not '$run'" >&2
    exit 2
  fi
done
for tool in ffmpeg ${CP_FAULTS_DIR:+perf}; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is needed" >&2; exit 2; }
done
encoders="$(ffmpeg -hide_banner -encoders 2>/dev/null)"
grep -q libx264 <<<"$encoders" ||
  { echo "run.sh: ffmpeg without libx264" >&2; exit 2; }

echo "== building (release)" >&2
daemon="${SNAPRTCD_BIN:-}"
if [ -z "$daemon" ]; then
  (cd "$root" && cargo build --release --locked --bin snaprtcd) >&2
  daemon="$CARGO_TARGET_DIR/release/snaprtcd"
fi
cargo build --release --locked --manifest-path "$here/Cargo.toml" >&2
helper="$CARGO_TARGET_DIR/release/snaprtcd-camera-path"

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

tck="$(getconf CLK_TCK)"

# "tid name utime+stime minflt majflt" for every thread of $1.
thread_sample() {
  local t stat name rest
  for t in /proc/"$1"/task/*; do
    stat="$(cat "$t/stat" 2>/dev/null)" || continue
    name="${stat#*(}"; name="${name%)*}"; name="${name// /_}"
    rest="${stat##*) }"
    # Fields after the name: 1 state ... 8 minflt, 10 majflt, 12 utime, 13 stime.
    awk -v tid="${t##*/}" -v name="$name" '{print tid, name, $12 + $13, $8, $10}' <<<"$rest"
  done
}

# "utime+stime minflt majflt" of process $1 (all its threads).
proc_sample() {
  local stat
  stat="$(cat /proc/"$1"/stat)"
  awk '{print $12 + $13, $8, $10}' <<<"${stat##*) }"
}

# Pictures ffmpeg+x264 has encoded so far (its -progress file in $1).
x264_frames() {
  grep -oE '^frame=[0-9]+' "$1/x264.progress" | tail -n 1 | cut -d= -f2
}

# Value of counter $1 in the metrics text $2.
metric() {
  awk -v m="$1" '$1 == m {print $2}' <<<"$2"
}

# Waits up to 20 s for a log line matching $1 in $2 (the daemon is $3).
wait_log() {
  local i
  for i in $(seq 200); do
    grep -qE "$1" "$2" && return 0
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  echo "run.sh: no '$1' in the daemon's log:" >&2
  cat "$2" >&2
  exit 1
}

# SSIM All and PSNR average of raw I420 $1 against raw I420 $2 (both $3 = WxH): "ssim psnr".
quality() {
  local out
  out="$(ffmpeg -hide_banner -nostats \
    -f rawvideo -pix_fmt yuv420p -s "$3" -framerate $fps -i "$1" \
    -f rawvideo -pix_fmt yuv420p -s "$3" -framerate $fps -i "$2" \
    -lavfi "[0:v]split[a0][a1];[1:v]split[b0][b1];[a0][b0]ssim=shortest=1;[a1][b1]psnr=shortest=1" \
    -f null - 2>&1)"
  printf '%.4f %.2f\n' "$(grep -oE 'SSIM .* All:[0-9.]+' <<<"$out" | grep -oE 'All:[0-9.]+' | cut -d: -f2)" \
    "$(grep -oE 'PSNR .* average:[0-9.]+' <<<"$out" | grep -oE 'average:[0-9.]+' | cut -d: -f2)"
}

load="$(cut -d' ' -f1-3 /proc/loadavg)"
rows=()
for run in $runs; do
  kind="${run%%:*}"; size="${run#*:}"
  w="${size%x*}"; h="${size#*x}"
  dir="$work/$size"; mkdir -p "$dir"
  if [ ! -f "$dir/src.mkv" ]; then
    echo "== $size: making ${seconds}s of noisy MJPEG" >&2
    ffmpeg -loglevel error -y -f lavfi -i "testsrc2=size=${size}:rate=$fps,noise=alls=20:allf=t" \
      -t "$seconds" -pix_fmt yuvj420p -c:v mjpeg -q:v 5 -f matroska "$dir/src.mkv"
  fi
  src_kbps="$(( $(stat -c %s "$dir/src.mkv") * 8 / seconds / 1000 ))"
  # What the daemon's program writes, and what x264 beside it reads (nothing for h264).
  encoder_kind=software
  case "$kind" in
    mjpeg)
      feed=(-i "$dir/src.mkv" -c copy -flush_packets 1 -f mjpeg -)
      x264_in=(-i "$dir/src.mkv")
      ;;
    yuyv)
      [ -f "$dir/src.yuyv" ] ||
        ffmpeg -loglevel error -y -i "$dir/src.mkv" -pix_fmt yuyv422 -f rawvideo "$dir/src.yuyv"
      raw=(-f rawvideo -pix_fmt yuyv422 -s "$size" -framerate $fps -i "$dir/src.yuyv")
      feed=("${raw[@]}" -c copy -f rawvideo -)
      x264_in=("${raw[@]}")
      ;;
    h264)
      [ -f "$dir/src.h264" ] ||
        ffmpeg -loglevel error -y -i "$dir/src.mkv" -pix_fmt yuv420p -c:v libx264 -preset ultrafast \
          -tune zerolatency -profile:v baseline -b:v "${kbps}k" -g $((2 * fps)) -f h264 "$dir/src.h264"
      feed=(-framerate $fps -i "$dir/src.h264" -c copy -f h264 -)
      x264_in=()
      encoder_kind=passthrough
      ;;
  esac
  [ "$beside" = 1 ] || x264_in=()
  command="$(printf '"%s", ' ffmpeg -loglevel error -re -stream_loop -1 "${feed[@]}")"
  ffmpeg -loglevel error -y -i "$dir/src.mkv" -pix_fmt yuv420p -f rawvideo "$dir/src.yuv"

  cat >"$dir/snaprtcd.toml" <<TOML
[server]
listen = "127.0.0.1:0"
rtc_udp_port = 0

[camera]
source = "exec"
width = $w
height = $h
fps = $fps

[camera.exec]
command = [${command%, }]
format = "$kind"

[encoder]
kind = "$encoder_kind"
bitrate_kbps = $kbps
threads = $( [ "$threads" = auto ] && echo '"auto"' || echo "$threads" )

[mdns]
enabled = false
TOML
  env -u JOURNAL_STREAM -u NOTIFY_SOCKET -u PORT SNAPRTCD_LOG=info \
    "$daemon" --config "$dir/snaprtcd.toml" 2>"$dir/log" &
  pid=$!; pids+=("$pid")
  wait_log "http listening" "$dir/log" "$pid"
  wait_log " ready" "$dir/log" "$pid"
  addr="$(grep -m1 "http listening" "$dir/log" | grep -oE 'addr=[0-9.:]+' | cut -d= -f2)"
  echo "== $kind $size: snaprtcd on $addr (pid $pid)$([ ${#x264_in[@]} -gt 0 ] && echo ", x264 beside it"); load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

  "$helper" record --url "http://$addr" --seconds $((length - 1)) \
    --out "$dir/rec.h264" --times "$dir/rec.times" >"$dir/record.out" 2>&1 &
  rec=$!; pids+=("$rec")
  x264=""
  if [ ${#x264_in[@]} -gt 0 ]; then
    ffmpeg -loglevel error -y -re -stream_loop -1 "${x264_in[@]}" -t "$length" -pix_fmt yuv420p -c:v libx264 -preset ultrafast \
      -tune zerolatency -profile:v baseline -b:v "${kbps}k" -threads 1 -f h264 "$dir/x264.h264" \
      -stats_period 0.1 -progress "$dir/x264.progress" &
    x264=$!; pids+=("$x264")
  fi

  sleep "$warmup"
  m0="$(curl -sf "http://$addr/metrics")"
  x0="0 0 0"; x1="0 0 0"; xf0=0; xf1=0
  t0="$(thread_sample "$pid")"; p0="$(proc_sample "$pid")"
  [ -z "$x264" ] || { x0="$(proc_sample "$x264")"; xf0="$(x264_frames "$dir")"; }
  perf_pid=""
  if [ -n "${CP_FAULTS_DIR:-}" ]; then
    perf record -q -e page-faults --call-graph dwarf -p "$pid" -o "$dir/faults.data" -- sleep "$window" \
      >/dev/null 2>"$dir/perf.log" &
    perf_pid=$!; pids+=("$perf_pid")
  fi
  sleep "$window"
  t1="$(thread_sample "$pid")"; p1="$(proc_sample "$pid")"
  [ -z "$x264" ] || { x1="$(proc_sample "$x264")"; xf1="$(x264_frames "$dir")"; }
  m1="$(curl -sf "http://$addr/metrics")"
  viewers="$(metric snaprtcd_viewers "$m1")"

  d() { echo $(( $(metric "$1" "$m1") - $(metric "$1" "$m0") )); }
  captured="$(d snaprtcd_frames_captured_total)"
  dropped="$(d snaprtcd_frames_dropped_total)"
  encoded="$(d snaprtcd_frames_encoded_total)"
  skipped="$(d snaprtcd_frames_encoder_skipped_total)"
  # Wall time of openh264's encode call per picture (threads shorten it only with idle cores).
  encode_ms="$(awk -v s="$(metric snaprtcd_encode_seconds_sum "$m1")" -v s0="$(metric snaprtcd_encode_seconds_sum "$m0")" \
    -v n="$(d snaprtcd_encode_seconds_count)" 'BEGIN {printf "%.1f", (s - s0) * 1000 / (n ? n : 1)}')"
  read -r pc0 pmin0 pmaj0 <<<"$p0"; read -r pc1 pmin1 pmaj1 <<<"$p1"
  read -r xc0 _ _ <<<"$x0"; read -r xc1 _ _ <<<"$x1"
  pct() { awk -v t="$1" -v tck="$tck" -v w="$window" 'BEGIN {printf "%.1f", t / tck / w * 100}'; }
  daemon_cpu="$(pct $((pc1 - pc0)))"
  x264_cpu="$(pct $((xc1 - xc0)))"
  # CPU per picture that went in: the daemon's pictures dropped before the encoder cost next
  # to nothing (never decoded); x264's are those it got through in the window (-re paces it,
  # but on a busy machine it may fall behind rather than drop).
  taken=$((captured - dropped)); xframes=$((xf1 - xf0))
  per() { awk -v t="$1" -v tck="$tck" -v n="$2" 'BEGIN {printf "%.1f", t / tck * 1000 / (n ? n : 1)}'; }
  daemon_ms="$(per $((pc1 - pc0)) "$taken")"
  x264_ms="$(per $((xc1 - xc0)) "$xframes")"
  rate() { awk -v n="$1" -v w="$window" 'BEGIN {printf "%.1f", n / w}'; }
  threads_used="$(grep -m1 "openh264 encoder open" "$dir/log" | grep -oE 'threads=[0-9]+' | cut -d= -f2)"
  # Per thread, grouped by name (openh264's workers inherit the media thread's name).
  per_thread="$(LC_ALL=C join <(LC_ALL=C sort <<<"$t0") <(LC_ALL=C sort <<<"$t1") |
    awk -v tck="$tck" -v w="$window" '{c[$2] += $7 - $3; n[$2]++}
      END {for (k in c) if (c[k] > 0) printf "%s%s %.1f\n", k, (n[k] > 1 ? "×" n[k] : ""), c[k] / tck / w * 100}' |
    sort -k2 -rn | awk '{printf "%s%s %s", sep, $1, $2; sep = ", "}')"
  # Minor faults per thread over the window (where any fault comes from).
  thread_faults="$(LC_ALL=C join <(LC_ALL=C sort <<<"$t0") <(LC_ALL=C sort <<<"$t1") |
    awk '{f[$2] += $8 - $4} END {for (k in f) printf "%s %d\n", k, f[k]}' |
    sort -k2 -rn | awk '{printf "%s%s %s", sep, $1, $2; sep = ", "}')"
  faults="$(awk -v a=$((pmin1 - pmin0)) -v b=$((pmaj1 - pmaj0)) -v n="$taken" \
    'BEGIN {printf "%.2f / %.2f", a / (n ? n : 1), b / (n ? n : 1)}')"

  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || { echo "run.sh: perf record failed:" >&2; cat "$dir/perf.log" >&2; exit 1; }
    mkdir -p "$CP_FAULTS_DIR"
    perf report -i "$dir/faults.data" --stdio --no-children -g caller,0.5,callee --sort comm,dso,sym \
      >"$CP_FAULTS_DIR/$kind-$size.txt" 2>/dev/null
    echo "   page faults in the window, by call chain: $CP_FAULTS_DIR/$kind-$size.txt" >&2
  fi
  wait "$rec" || { echo "run.sh: the WHEP recorder failed:" >&2; cat "$dir/record.out" >&2; exit 1; }
  [ -z "$x264" ] || wait "$x264" || { echo "run.sh: ffmpeg+x264 failed" >&2; exit 1; }
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "   recorder: $(cat "$dir/record.out")" >&2
  echo "   snaprtcd threads (% of a core): $per_thread" >&2
  echo "   snaprtcd minor faults in the window, per thread: $thread_faults" >&2

  ffmpeg -loglevel error -y -i "$dir/rec.h264" -vsync passthrough -pix_fmt yuv420p -f rawvideo "$dir/rec.yuv"
  "$helper" match --width "$w" --height "$h" --fps $fps --source "$dir/src.yuv" \
    --decoded "$dir/rec.yuv" --times "$dir/rec.times" --ref "$dir/rec.ref.yuv" >&2
  read -r s_ssim s_psnr <<<"$(quality "$dir/rec.yuv" "$dir/rec.ref.yuv" "$size")"
  frame_bytes=$((w * h * 3 / 2))
  rec_frames=$(( $(stat -c %s "$dir/rec.yuv") / frame_bytes ))
  if [ -n "$x264" ]; then
    ffmpeg -loglevel error -y -i "$dir/x264.h264" -vsync passthrough -pix_fmt yuv420p -f rawvideo "$dir/x264.yuv"
    read -r x_ssim x_psnr <<<"$(quality "$dir/x264.yuv" "$dir/src.yuv" "$size")"
    x_frames=$(( $(stat -c %s "$dir/x264.yuv") / frame_bytes ))
  fi
  rec_span="$(awk 'NR == 1 {a = $1} {b = $1} END {printf "%.3f", (b - a) / 1e6 + 1 / 30}' "$dir/rec.times")"
  s_kbps="$(awk -v b="$(stat -c %s "$dir/rec.h264")" -v s="$rec_span" 'BEGIN {printf "%.0f", b * 8 / s / 1000}')"
  s_fps="$(awk -v n="$rec_frames" -v s="$rec_span" 'BEGIN {printf "%.1f", n / s}')"
  rm -f "$dir"/*.yuv

  if [ "$kind" = h264 ]; then
    label="snaprtcd (passthrough of x264's stream)"
  else
    label="snaprtcd (openh264, threads=$threads → $threads_used)"
  fi
  input="${kind^^} ${w}x${h}@$fps"
  rows+=("| $input | $label | **$daemon_ms** | $(rate "$taken") | $daemon_cpu ($per_thread) | $s_ssim | $s_psnr | $s_kbps | $s_fps | $faults | $captured / $dropped / $skipped / $encoded | $encode_ms |")
  if [ -n "$x264" ]; then
    x_kbps="$(awk -v b="$(stat -c %s "$dir/x264.h264")" -v n="$x_frames" 'BEGIN {printf "%.0f", b * 8 / (n / 30) / 1000}')"
    rows+=("| $input | ffmpeg + x264 ultrafast, -threads 1 | **$x264_ms** | $(rate "$xframes") | $x264_cpu | $x_ssim | $x_psnr | $x_kbps | $(rate "$xframes") | | | |")
  fi
  [ "$viewers" = 1 ] || echo "run.sh: warning: $viewers viewers at the end of the window" >&2
  echo "   source MJPEG: $src_kbps kbit/s" >&2
  # Raw YUYV is large (1.1 GB for 20 s at 720p): made again if a later run needs it.
  [ "$kind" != yuyv ] || rm -f "$dir/src.yuyv"
done

echo
echo "$(nproc) cores, load average $load at the start; window ${window}s after ${warmup}s; bitrate ${kbps} kbit/s; snaprtcd $("$daemon" --version 2>/dev/null | head -1)"
echo
echo "| input | encoder | CPU ms/picture | pictures/s in | CPU % of a core (threads) | SSIM | PSNR dB | kbit/s | pictures/s out | faults/picture taken (minor / major) | captured / dropped / skipped / encoded | encode wall ms |"
echo "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|"
printf '%s\n' "${rows[@]}"
