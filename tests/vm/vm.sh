#!/usr/bin/env bash
# tests/vm/vm.sh — run a command as root in a throwaway Debian 12 (bookworm) VM that boots
# with systemd as PID 1, as a user's device would.
#
#   tests/vm/vm.sh [--timeout SEC] [--mem MIB] -- COMMAND [ARG...]
#   tests/vm/vm.sh --prepare      only build the guest root (callers overlap it with a build)
#
# The current directory is shared read-write at the same path and is the working directory;
# every other write in the guest is lost at power-off. The command's output is copied to
# stdout and its exit status becomes this script's (125: the VM did not finish).
#
# The guest root is a debootstrap'd minbase (systemd, dbus, udev, avahi-daemon, avahi-utils,
# curl, adduser, procps, kmod, iproute2) built once into $SNAPRTCD_VM_ROOT
# (default /var/cache/snaprtcd-vm/bookworm-turbojpeg; the name changes when the package list does), with the host kernel's modules so that e.g.
# `modprobe vivid` works. The host kernel from linux-image-amd64 boots it under qemu (TCG: no
# KVM needed). Guest network: 10.0.2.15/24 through qemu's restricted user network, which
# reaches nothing outside the VM.
# SNAPRTCD_VM_LOG=FILE keeps the serial console there. Do not wait for the boot to finish
# (`systemctl is-system-running --wait`): the command is itself part of the boot.
# Needs root and: qemu-system-x86 linux-image-amd64 busybox-static debootstrap kmod cpio.
set -euo pipefail
timeout_s=900 mem=1024 prepare=0
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout_s=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --prepare) prepare=1; shift ;;
    --) shift; break ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || [ $prepare = 1 ] || { sed -n '2,20p' "$0" >&2; exit 2; }

kver=$(find /lib/modules -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
kernel=/boot/vmlinuz-$kver
[ -n "$kver" ] && [ -r "$kernel" ] || { echo "vm.sh: no kernel in /boot (apt-get install linux-image-amd64)" >&2; exit 2; }

root=${SNAPRTCD_VM_ROOT:-/var/cache/snaprtcd-vm/bookworm-turbojpeg}
mkdir -p "$(dirname "$root")"
# One builder at a time (tests/run starts a --prepare early; the suite's own call waits here).
exec 9>"$root.lock"
flock 9
if [ ! -e "$root/.complete" ]; then
  echo "vm.sh: building the guest root in $root (once, about a minute)" >&2
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n 1)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  # An interrupted debootstrap leaves its /proc (and /sys) mounted inside: unmount, never
  # delete through them.
  for m in $(awk -v r="$root.new/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do umount -l "$m"; done
  rm -rf "$root.new"; mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,udev,dbus,iproute2,curl,ca-certificates,avahi-daemon,avahi-utils,kmod,procps,adduser,libgcc-s1,libasound2,libopus0,libturbojpeg0 \
    bookworm "$root.new" "$mirror" > "$root.log" 2>&1 || { echo "vm.sh: debootstrap failed, see $root.log" >&2; exit 2; }
  mkdir -p "$root.new/lib/modules"; cp -a "/lib/modules/$kver" "$root.new/lib/modules/"
  echo snaprtcd-vm > "$root.new/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 snaprtcd-vm\n' > "$root.new/etc/hosts"
  # The serial console belongs to the kernel; no login prompt on it.
  ln -sf /dev/null "$root.new/etc/systemd/system/serial-getty@ttyS0.service"
  touch "$root.new/.complete"
  rm -rf "$root"; mv "$root.new" "$root"
fi
exec 9>&-
[ $prepare = 0 ] || exit 0   # --prepare: only build the guest root

tmp=$(mktemp -d /tmp/snaprtcd-vm.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/result" "$tmp/init/bin" "$tmp/init/modules" "$tmp/init/proc" "$tmp/init/sys" "$tmp/init/dev"
cwd=$(pwd)

# What runs in the guest once multi-user.target is reached; output and status go to a share.
{
  echo '#!/bin/bash'
  echo 'ip link set lo up; ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2'
  printf 'cd %q || exit 99\n' "$cwd"
  printf '%q ' "$@"; echo '> /vmresult/output 2>&1'
  echo 'echo $? > /vmresult/status'
} > "$tmp/guest-command"

cp "$(command -v busybox)" "$tmp/init/bin/busybox"
n=0
for m in virtio_pci virtio_net 9pnet_virtio 9p overlay; do
  modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do n=$((n + 1)); cp "$ko" "$tmp/init/modules/$(printf '%03d' $n).ko"; done
cp "$tmp/guest-command" "$tmp/init/guest-command"
cat > "$tmp/init/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc none /proc; mount -t sysfs none /sys; mount -t devtmpfs none /dev
for ko in /modules/*.ko; do insmod "\$ko"; done
mkdir -p /lower /upper /root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 guestroot /lower
mount -t tmpfs -o size=75% tmpfs /upper && mkdir -p /upper/rw /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/rw,workdir=/upper/work overlay /root
mkdir -p "/root$cwd" /root/vmresult
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 hostcwd "/root$cwd"
mount -t 9p -o trans=virtio,version=9p2000.L hostresult /root/vmresult
cp /guest-command /root/usr/local/sbin/guest-command && chmod 755 /root/usr/local/sbin/guest-command
cat > /root/etc/systemd/system/guest-command.service <<UNIT
[Unit]
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/guest-command
ExecStopPost=/bin/systemctl --no-block poweroff --force
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/guest-command.service /root/etc/systemd/system/multi-user.target.wants/
exec switch_root /root /lib/systemd/systemd
INIT
chmod 755 "$tmp/init/init"
(cd "$tmp/init" && find . | cpio -o -H newc --quiet | gzip -1) > "$tmp/initrd.gz"

set +e
timeout "$timeout_s" qemu-system-x86_64 -accel tcg,thread=multi -m "$mem" -smp 2 \
  -nographic -no-reboot -kernel "$kernel" -initrd "$tmp/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init net.ifnames=0 systemd.show_status=0" \
  -fsdev local,id=fr,path="$root",security_model=none,readonly=on,multidevs=remap -device virtio-9p-pci,fsdev=fr,mount_tag=guestroot \
  -fsdev local,id=fc,path="$cwd",security_model=none -device virtio-9p-pci,fsdev=fc,mount_tag=hostcwd \
  -fsdev local,id=fo,path="$tmp/result",security_model=none -device virtio-9p-pci,fsdev=fo,mount_tag=hostresult \
  -netdev user,id=net0,restrict=on -device virtio-net-pci,netdev=net0 \
  </dev/null > "$tmp/console.log" 2>&1
set -e
[ -n "${SNAPRTCD_VM_LOG:-}" ] && cp "$tmp/console.log" "$SNAPRTCD_VM_LOG"
[ -f "$tmp/result/output" ] && cat "$tmp/result/output"
if [ ! -s "$tmp/result/status" ]; then
  echo "vm.sh: the command did not finish; last console lines:" >&2
  tail -n 20 "$tmp/console.log" >&2
  exit 125
fi
exit "$(cat "$tmp/result/status")"
