#!/usr/bin/env bash
# packaging/container/build.sh — the relay container image (FROM scratch), built with podman
# from the Debian packages this repository makes, into OCI archives:
#   target/container/snaprtcd-relay_<version>_<arch>.tar      (podman load -i …)
#
#   packaging/container/build.sh [--profile P] [ARCH...]     ARCH: amd64 arm64 (default: both)
#
# For each architecture: packaging/build-debs.sh builds the .deb (--profile P, default
# release), its usr/bin/snaprtcd goes into a root filesystem with exactly the shared libraries
# it needs (from the host's Debian libc6/libgcc-s1/libstdc++6 for amd64, from the cross
# toolchain's Debian libc6-arm64-cross etc. and the multiarch :arm64 packages (libopus0,
# libasound2, libturbojpeg0) for arm64), its ELF interpreter, /etc/passwd with
# user snaprtcd (65532), config/relay.toml as /etc/snaprtcd/relay.toml, and a writable
# /var/lib/snaprtcd and /tmp. The binary is run from that root (natively, or under qemu-user
# for arm64) before the image is made, so a missing library fails here, not in the cloud.
# Images go into a private podman store under target/container/storage (vfs driver: no base
# image and no overlay support needed), tagged snaprtcd-relay:<version>-<arch>.
#
# Needs: podman (Debian package podman), and for arm64 the cross toolchain and qemu-user
# (build-debs.sh --install fetches the toolchain).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

profile=release archs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs a name}; shift ;;
    amd64|arm64) archs+=("$1") ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
  esac
  shift
done
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64)
command -v podman >/dev/null || { echo "container: podman missing (apt-get install podman)" >&2; exit 2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
out=target/container
mkdir -p "$out"
# shellcheck source=packaging/container/podman.sh
. packaging/container/podman.sh

packaging/build-debs.sh --install --profile "$profile" "${archs[@]}"

for a in "${archs[@]}"; do
  case "$a" in
    amd64) libdirs="/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu"; multiarch=x86_64-linux-gnu ;;
    arm64) libdirs="/usr/aarch64-linux-gnu/lib /usr/lib/aarch64-linux-gnu"; multiarch=aarch64-linux-gnu ;;
  esac
  ctx=$(mktemp -d "/tmp/snaprtcd-image-$a.XXXXXX")
  rootfs=$ctx/rootfs
  mkdir -p "$rootfs"/{usr/bin,etc/snaprtcd,var/lib/snaprtcd,tmp}
  deb=$(ls target/debian/snaprtcd_*_"$a".deb)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$ctx" ./usr/bin/snaprtcd
  mv "$ctx/usr/bin/snaprtcd" "$rootfs/usr/bin/snaprtcd"
  bin=$rootfs/usr/bin/snaprtcd
  # The ELF interpreter at its own path, every NEEDED library in /lib/<multiarch>/.
  interp=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
  mkdir -p "$rootfs$(dirname "$interp")" "$rootfs/lib/$multiarch"
  find_lib() { for d in $libdirs; do [ -e "$d/$1" ] && { echo "$d/$1"; return; }; done; return 1; }
  cp -L "$(find_lib "$(basename "$interp")")" "$rootfs$interp"
  for lib in $(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    src=$(find_lib "$lib") || { echo "container: $a: $lib not found in $libdirs" >&2; exit 1; }
    cp -L "$src" "$rootfs/lib/$multiarch/$lib"
  done
  printf 'root:x:0:0:root:/:/nonexistent\nsnaprtcd:x:65532:65532:snaprtcd:/var/lib/snaprtcd:/nonexistent\n' > "$rootfs/etc/passwd"
  printf 'root:x:0:\nsnaprtcd:x:65532:\n' > "$rootfs/etc/group"
  cp config/relay.toml "$rootfs/etc/snaprtcd/relay.toml"
  chmod 1777 "$rootfs/tmp" "$rootfs/var/lib/snaprtcd"
  # The root must run the binary on its own: the loader finds every library inside it.
  if [ "$a" = amd64 ]; then
    inroot() { env -i "$rootfs$interp" --library-path "$rootfs/lib/$multiarch" --inhibit-cache "$bin" "$@"; }
  else
    qemu=$(command -v qemu-aarch64) || { echo "container: qemu-aarch64 missing (apt-get install qemu-user)" >&2; exit 2; }
    inroot() { env -i "$qemu" -L "$rootfs" "$bin" "$@"; }
  fi
  v=$(inroot --version) || { echo "container: $a: the binary does not run from its root" >&2; exit 1; }
  inroot check-config "$rootfs/etc/snaprtcd/relay.toml" >/dev/null \
    || { echo "container: $a: check-config refuses the image's relay.toml" >&2; exit 1; }
  cp packaging/container/Containerfile "$ctx/Containerfile"
  tag=snaprtcd-relay:$version-$a
  podman_ build --quiet --platform "linux/$a" -t "$tag" -f "$ctx/Containerfile" "$ctx" >/dev/null
  archive=$out/snaprtcd-relay_${version}_$a.tar
  rm -f "$archive"
  podman_ image save --quiet --format oci-archive -o "$archive" "$tag"
  size=$(podman_ image inspect --format '{{.Size}}' "$tag")
  echo "container: $tag: $v; image $((size / 1024)) KiB, archive $archive $(du -k "$archive" | cut -f1) KiB; libs: $(ls "$rootfs/lib/$multiarch" | tr '\n' ' ')"
  rm -rf "$ctx"
done
