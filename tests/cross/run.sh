#!/usr/bin/env bash
# tests/cross/run.sh — arm64 and armhf: cross-build (rustup targets + Debian's cross gcc/g++),
# then run the binary under qemu-user (Debian qemu-user, with the target's own Debian libraries,
# multiarch, as its root: libc6, libstdc++6, libopus0, libasound2 and libturbojpeg0 of
# arm64/armhf): `--version`, `check-config` on the shipped /etc/snaprtcd/snaprtcd.toml, and a
# 3-second testsrc run that answers /health and stops cleanly on SIGTERM; the row kernels
# (tests/cross/rows: YUYV, NV12, the MJPEG planes' range maps and chroma smoothing) match the
# scalar code and the host's output. Prints build times and sizes.
#
#   tests/cross/run.sh [ARCH...]      ARCH: arm64 armhf (default: both)
#
# The packages are built with packaging/build-debs.sh (with its checks and lintian), and the
# binary and config are tested from inside each .deb. They are dev-profile packages (the same
# code and packaging, built in a third of the time): SNAPRTCD_DEB_PROFILE=release tests the
# release ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
archs=("$@"); [ ${#archs[@]} -gt 0 ] || archs=(arm64 armhf)

need=()
for p in qemu-user curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

profile=${SNAPRTCD_DEB_PROFILE:-dev}
# The arm builds' own target directory, the same whether tests/run built them in the
# background or this suite runs alone (packaging/build-debs.sh).
export SNAPRTCD_CROSS_TARGET_DIR=${SNAPRTCD_CROSS_TARGET_DIR:-$root/target/cross}
triple() { case "$1" in arm64) echo aarch64-unknown-linux-gnu ;; armhf) echo armv7-unknown-linux-gnueabihf ;; esac; }
start=$(date +%s)
# tests/run may have started the cargo builds in the background (build-debs.sh --build-only,
# at idle priority, holding this lock): wait for them and show how they went; build-debs.sh
# below then finds them up to date.
if [ -n "${SNAPRTCD_CROSS_BUILD_LOCK:-}" ]; then
  echo "# cross: waiting for the background build (started by tests/run) ..."
  flock -w 3600 "$SNAPRTCD_CROSS_BUILD_LOCK" true || echo "# cross: still building after an hour"
  cat "$SNAPRTCD_CROSS_BUILD_LOCK.log" 2>/dev/null | grep -v '^ *Compiling ' || true
  bg_rc=$(cat "$SNAPRTCD_CROSS_BUILD_LOCK.rc" 2>/dev/null || echo "none (it never ran)")
  echo "# cross: background build exit status: $bg_rc, waited $(( $(date +%s) - start )) s"
fi
packaging/build-debs.sh --install --profile "$profile" "${archs[@]}"
# The binaries run against the target's multiarch libraries (build-debs.sh installed its -dev
# packages, which bring libc6:ARCH): the cross toolchain's own sysroot holds a libc of another
# build, and a loader from one with the libc of the other hangs at the first thread.
need=()
for a in "${archs[@]}"; do
  dpkg-query -W -f='${Status}' "libstdc++6:$a" 2>/dev/null | grep -q "install ok installed" || need+=("libstdc++6:$a")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
echo "# cross: built ${archs[*]} (profile $profile) in $(( $(date +%s) - start )) s"

tmp=$(mktemp -d /tmp/snaprtcd-cross.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
failed=0
fail() { echo "not ok - $*"; failed=$((failed + 1)); }

# The YUYV/NV12/YCbCr row kernels (NEON on arm64 for YUYV/NV12, scalar otherwise) against the scalar code, and their
# output checksum against the host's (SSE2 on x86_64): a tiny crate with no dependencies.
rows=tests/cross/rows
cargo build -q --locked --release --manifest-path $rows/Cargo.toml
host_rows=$($rows/target/release/snaprtcd-rows-check)

port=18580
for a in "${archs[@]}"; do
  case "$a" in
    arm64) qemu=qemu-aarch64; sysroot=/ ;;
    armhf) qemu=qemu-arm; sysroot=/ ;;
    *) echo "cross: unknown arch $a" >&2; exit 2 ;;
  esac
  x=$tmp/$a
  deb=$(ls target/debian/snaprtcd_*_"$a".deb)
  echo "# $a: $deb $(du -k "$deb" | cut -f1) KiB"
  dpkg-deb -x "$deb" "$x"
  run() { "$qemu" -L "$sysroot" "$x/usr/bin/snaprtcd" "$@"; }

  t=$(triple "$a"); tu=$(echo "$t" | tr 'a-z-' 'A-Z_')
  case "$a" in arm64) p=aarch64-linux-gnu ;; armhf) p=arm-linux-gnueabihf ;; esac
  if env "CARGO_TARGET_${tu}_LINKER=$p-gcc" cargo build -q --locked --release \
      --manifest-path $rows/Cargo.toml --target "$t" \
    && r=$("$qemu" -L "$sysroot" "$rows/target/$t/release/snaprtcd-rows-check") \
    && [ "$r" = "$host_rows" ]; then
    echo "ok - $a row kernels match the scalar code and the host's output: $r"
  else
    fail "$a row kernels: '${r:-}' (host: $host_rows)"
  fi

  v=$(run --version) && [[ $v == "snaprtcd "* ]] && echo "ok - $a --version: $v" || fail "$a --version: $v"
  if run check-config "$x/etc/snaprtcd/snaprtcd.toml" >/dev/null; then
    echo "ok - $a check-config on the shipped config"
  else
    fail "$a check-config on the shipped config"
  fi

  # A 3-second testsrc run: /health answers, SIGTERM stops it with status 0.
  port=$((port + 1))
  cat > "$tmp/$a.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
rtc_udp_port = 0
auth = "none"
[camera]
source = "testsrc"
width = 320
height = 240
fps = 15
[mdns]
enabled = false
CONF
  # exec: $! must be qemu itself, so that SIGTERM reaches the daemon.
  (export STATE_DIRECTORY=$tmp/$a-state; exec "$qemu" -L "$sysroot" "$x/usr/bin/snaprtcd" --config "$tmp/$a.toml" run) > "$tmp/$a.log" 2>&1 &
  pid=$!; pids+=("$pid")
  t0=$(date +%s.%N) up=
  for _ in $(seq 1 300); do
    if body=$(curl -fsS --max-time 2 "http://127.0.0.1:$port/health" 2>/dev/null); then up=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -n "$up" ]; then
    echo "ok - $a /health answers after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s: $body"
    sleep 3
    h=$(curl -fsS --max-time 5 -H 'Accept: application/json' "http://127.0.0.1:$port/health" || true)
    if echo "$h" | grep -q '"state":"streaming"'; then
      echo "ok - $a still answers after 3 s, camera streaming"
    else
      fail "$a after 3 s: $h"
    fi
  else
    fail "$a /health never answered"; tail -n 20 "$tmp/$a.log"
  fi
  kill -TERM "$pid" 2>/dev/null || true
  if wait "$pid"; then echo "ok - $a SIGTERM: exit 0"; else fail "$a SIGTERM: exit $?"; tail -n 5 "$tmp/$a.log"; fi
done
[ $failed = 0 ]
