#!/usr/bin/env bash
# tests/vm/vivid-vm.sh: run one command as root inside a small QEMU VM whose kernel has the
# `vivid` virtual camera loaded, so V4L2 code meets a real driver (/dev/video0).
#
# usage: tests/vm/vivid-vm.sh [--vivid "MODULE OPTIONS"] [--timeout SEC] [--install] -- CMD [ARGS]
#
# How: Debian's kernel boots with a tiny busybox initramfs that mounts this machine's root
# filesystem read-only over virtio-9p (every installed tool works inside), the current directory
# read-write at the same path, fresh tmpfs on /tmp and /run, loads vivid, and runs CMD there.
# CMD's output is printed, its exit status is returned. No network. Under software emulation
# (nested KVM is unreliable on CI runners) a boot takes a few seconds.
#
# Needs Debian packages: qemu-system-x86 linux-image-amd64 busybox-static kmod cpio
# (`--install` installs them with apt-get).
set -euo pipefail

VIVID_OPTS="n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0"
LIMIT=240
while (($#)); do
  case $1 in
    --vivid) VIVID_OPTS=$2; shift 2 ;;
    --timeout) LIMIT=$2; shift 2 ;;
    --install)
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 linux-image-amd64 busybox-static kmod cpio >/dev/null
      shift ;;
    --) shift; break ;;
    *) echo "vivid-vm: unknown argument $1" >&2; exit 2 ;;
  esac
done
(($#)) || { echo "usage: $0 [--vivid OPTS] [--timeout SEC] [--install] -- CMD [ARGS]" >&2; exit 2; }

KVER=$(find /lib/modules -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
if [[ -z $KVER || ! -r /boot/vmlinuz-$KVER ]]; then
  echo "vivid-vm: no kernel image in /boot; run with --install" >&2; exit 2
fi
for tool in qemu-system-x86_64 cpio modprobe; do
  command -v "$tool" >/dev/null || { echo "vivid-vm: $tool missing; run with --install" >&2; exit 2; }
done
[[ -x /bin/busybox ]] || { echo "vivid-vm: busybox-static missing; run with --install" >&2; exit 2; }

TMP=$(mktemp -d /tmp/snaprtcd-vm.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
HERE=$PWD
INITRD_DIR=$TMP/root
mkdir -p "$INITRD_DIR"/{bin,proc,sys,dev,newroot,ko}
cp /bin/busybox "$INITRD_DIR/bin/"

# Kernel modules for the 9p root, in load order; virtio_rng feeds the guest's entropy pool from
# the host (-device virtio-rng-pci), so getrandom() (DTLS keys, ids) does not block for minutes
# in a fresh guest under software emulation.
i=0
for ko in $(for m in virtio_pci 9pnet_virtio 9p virtio_rng; do modprobe -S "$KVER" --show-depends "$m"; done \
            | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'); do
  i=$((i + 1)); cp "$ko" "$INITRD_DIR/ko/$(printf '%03d' "$i").ko"
done

# The script run inside the host's root: load vivid, wait for the node, run the command.
{
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root'
  echo 'ip link set lo up 2>/dev/null'
  printf 'modprobe vivid %s || { echo "@@exit=97"; exit; }\n' "$VIVID_OPTS"
  echo 'n=0; while [ ! -e /dev/video0 ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done'
  printf 'cd %q || { echo "@@exit=98"; exit; }\n' "$HERE"
  echo 'echo; echo "@@start"'
  printf '%q ' "$@"; echo
  echo 'echo "@@exit=$?"'
} > "$INITRD_DIR/run.sh"

cat > "$INITRD_DIR/init" <<EOS
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc none /proc && mount -t sysfs none /sys && mount -t devtmpfs none /dev
for k in /ko/*.ko; do insmod "\$k"; done
R=/newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose rootfs \$R || { echo "@@exit=96"; poweroff -f; }
mount -t proc none \$R/proc; mount -t sysfs none \$R/sys; mount -t devtmpfs none \$R/dev
mkdir -p \$R/dev/pts \$R/dev/shm; mount -t devpts none \$R/dev/pts; mount -t tmpfs none \$R/dev/shm
mount -t tmpfs none \$R/tmp; mount -t tmpfs none \$R/run
# A checkout under /tmp or /run sits on the fresh tmpfs just mounted: make its mount point.
mkdir -p "\$R$HERE" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 project "\$R$HERE" || { echo "@@exit=95"; poweroff -f; }
cp /run.sh \$R/tmp/run.sh
chroot \$R /bin/sh /tmp/run.sh
poweroff -f
EOS
chmod 755 "$INITRD_DIR/init"
(cd "$INITRD_DIR" && find . -print | cpio -o -H newc --quiet | gzip -1) > "$TMP/initrd.gz"

ACCEL=(-accel tcg,thread=multi)
[[ ${SNAPRTCD_VM_KVM:-0} == 1 ]] && ACCEL=(-accel kvm -cpu host)
# A guest that never reaches the command (no "@@start" on its console when the time limit
# ends) hung while booting under software emulation, before anything of the test ran: seen
# once in a cold CI run on a loaded machine. That boot is tried once more; a guest that
# started the command and did not finish is never retried.
for attempt in 1 2; do
set +e
timeout "$LIMIT" qemu-system-x86_64 "${ACCEL[@]}" -m 1024 -smp 2 -nographic -no-reboot -nic none \
  -kernel "/boot/vmlinuz-$KVER" -initrd "$TMP/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
  -fsdev local,id=fs0,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=fs0,mount_tag=rootfs \
  -fsdev local,id=fs1,path="$HERE",security_model=none \
  -device virtio-9p-pci,fsdev=fs1,mount_tag=project \
  -device virtio-rng-pci \
  </dev/null >"$TMP/console" 2>&1
QEMU_RC=$?
set -e
  if [[ $QEMU_RC == 124 ]] && ! grep -q '^@@start' "$TMP/console" && [[ $attempt == 1 ]]; then
    echo "vivid-vm: the guest did not boot within ${LIMIT}s (nothing ran); booting it once more" >&2
    continue
  fi
  break
done
tr -d '\r' < "$TMP/console" > "$TMP/log"
[[ -n ${SNAPRTCD_VM_LOG:-} ]] && cp "$TMP/log" "$SNAPRTCD_VM_LOG"
sed -n '/^@@start$/,/^@@exit=/{/^@@/d;p}' "$TMP/log"
RC=$(sed -n 's/^@@exit=\([0-9]*\)$/\1/p' "$TMP/log" | tail -n1)
if [[ -z $RC ]]; then
  echo "vivid-vm: command did not finish (qemu rc $QEMU_RC); console tail:" >&2
  tail -n 20 "$TMP/log" >&2
  exit 125
fi
case $RC in
  95) echo "vivid-vm: could not mount $HERE in the VM" >&2 ;;
  96) echo "vivid-vm: could not mount the host's root in the VM" >&2 ;;
  97) echo "vivid-vm: modprobe vivid $VIVID_OPTS failed in the VM" >&2 ;;
  98) echo "vivid-vm: cd $HERE failed in the VM" >&2 ;;
esac
exit "$RC"
