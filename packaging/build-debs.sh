#!/usr/bin/env bash
# packaging/build-debs.sh — build the Debian packages into target/debian/:
#   snaprtcd_<version>-1_amd64.deb, _arm64.deb (aarch64-unknown-linux-gnu),
#   _armhf.deb (armv7-unknown-linux-gnueabihf).
#
#   packaging/build-debs.sh [--install] [--profile P] [ARCH...]   ARCH: amd64 arm64 armhf (default: all)
#   packaging/build-debs.sh --assets-only            only the generated assets (below)
#   packaging/build-debs.sh --build-only [...]       only the cargo builds (no assets, no cargo-deb)
#
# --profile P: the cargo profile the binary is built with (default release: what users get).
# The tests (tests/appliance, tests/cross) package the dev build instead, with a warning from
# cargo-deb: the same code, packaging and checks, at a fraction of the build time, and for the
# host's own architecture it is the build `tests/run rust` already made (built without
# --target, into target/debug/). SNAPRTCD_DEB_PROFILE=release tests/run appliance cross
# tests the release packages instead.
#
# --install first fetches what it needs: Debian's cross gcc/g++ (openh264 is C++), the rustup
# targets, and cargo-deb (pinned). Runs on Debian 12 (amd64); the packages need glibc >= 2.36
# (Debian 12 / Raspberry Pi OS bookworm and newer), which is what these cross compilers target.
#
# Before cargo-deb runs, target/debian-assets/ gets what is generated rather than kept in git:
# the shipped /etc config (config/snaprtcd.toml with auth = "token"), the man page snaprtcd(8)
# and bash/zsh/fish completions from the CLI definition (examples/gen-assets.rs).
# Every package is then checked: its binary's libraries and glibc symbol versions, and lintian
# (no errors).
#
# SNAPRTCD_CROSS_TARGET_DIR: the cargo target directory of the cross (non-host) builds
# (default target/). tests/run gives them their own, so that they can build in the background
# while other cargo commands use target/.
set -euo pipefail
CARGO_DEB_VERSION=3.8.0
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

install=0 archs=() assets_only=0 build_only=0 profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --assets-only) assets_only=1 ;;
    --build-only) build_only=1 ;;
    --profile) profile=${2:?--profile needs a name}; shift ;;
    amd64|arm64|armhf) archs+=("$1") ;;
    *) sed -n '2,26p' "$0" >&2; exit 2 ;;
  esac
  shift
done
profile_dir=$profile; [ "$profile" = dev ] && profile_dir=debug
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64 armhf)

triple() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    armhf) echo armv7-unknown-linux-gnueabihf ;;
  esac
}
gnu_prefix() {
  case "$1" in
    amd64) echo x86_64-linux-gnu ;;
    arm64) echo aarch64-linux-gnu ;;
    armhf) echo arm-linux-gnueabihf ;;
  esac
}

if [ $install = 1 ]; then
  pkgs=(lintian binutils)
  for a in "${archs[@]}"; do
    [ "$a" = amd64 ] && continue
    p=$(gnu_prefix "$a"); pkgs+=("gcc-$p" "g++-$p" "binutils-$p" "libasound2-dev:$a" "libopus-dev:$a" "libturbojpeg0-dev:$a")
    # The audio and JPEG libraries of the target (Debian multiarch).
    dpkg --print-foreign-architectures | grep -qx "$a" || dpkg --add-architecture "$a"
  done
  missing=()
  for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
  for a in "${archs[@]}"; do rustup target add "$(triple "$a")" >/dev/null; done
  if [ $build_only = 0 ] && [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
    # For the tests' dev packages, cargo-deb's own debug build: 57 s to compile instead of
    # 109 (two cores), the same code; it packs with --fast (below), so its speed hardly shows.
    debug=(); [ "$profile" = dev ] && debug=(--debug)
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked "${debug[@]}"
  fi
fi
[ $assets_only = 1 ] || [ $build_only = 1 ] || command -v cargo-deb >/dev/null || { echo "build-debs: cargo-deb missing; run with --install" >&2; exit 2; }

# --- generated assets ------------------------------------------------------------------------
assets=target/debian-assets
if [ $build_only = 0 ]; then
  rm -rf "$assets"; mkdir -p "$assets"
  cargo run -q --locked --example gen-assets -- "$assets" >/dev/null
  gzip -9nf "$assets/snaprtcd.8"
  # The shipped config is the documented defaults with auth and the RTSP server switched on:
  # exactly two lines change.
  sed -e 's/^auth = "none"$/auth = "token"/' \
      -e '/^\[rtsp\]$/,/^\[/ s/^enabled = false$/enabled = true/' \
      config/snaprtcd.toml > "$assets/snaprtcd.toml"
  changed=$(diff config/snaprtcd.toml "$assets/snaprtcd.toml" | grep -c '^>' || true)
  [ "$changed" = 2 ] || { echo "build-debs: expected one 'auth = \"none\"' line and [rtsp] 'enabled = false' in config/snaprtcd.toml, changed $changed" >&2; exit 1; }
  cargo run -q --locked -- check-config "$assets/snaprtcd.toml"
  [ $assets_only = 0 ] || exit 0
fi

# --- packages --------------------------------------------------------------------------------
allowed_libs='^(libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libstdc\+\+\.so\.6|libasound\.so\.2|libopus\.so\.0|libturbojpeg\.so\.0|ld-linux.*\.so\.[0-9]+)$'
mkdir -p target/debian
xdir=${SNAPRTCD_CROSS_TARGET_DIR:-target}   # the --target builds' (see above)
# One cargo invocation builds every architecture: it keeps both cores busy through each
# target's serial stretches (build scripts, the final crate, the link). A dev package for the
# host's architecture is the one exception: built without --target, it is the dev build that
# `cargo build`/`cargo test` make.
host_arch=$(dpkg --print-architecture)
# Dev packages (the tests') are packed with cargo-deb's --fast (lighter xz): 4 s instead of 23 for
# the amd64 dev binary, a package 19 % larger. Release packages get the full compression.
fast=(); [ "$profile" = dev ] && fast=(--fast)
host_dev() { [ "$profile" = dev ] && [ "$1" = "$host_arch" ]; }
targets=()
for a in "${archs[@]}"; do
  host_dev "$a" && continue
  t=$(triple "$a"); p=$(gnu_prefix "$a")
  targets+=(--target "$t")
  if [ "$a" != amd64 ]; then
    tu=$(echo "$t" | tr 'a-z-' 'A-Z_'); tl=$(echo "$t" | tr '-' '_')
    export "CARGO_TARGET_${tu}_LINKER=$p-gcc" "CC_$tl=$p-gcc" "CXX_$tl=$p-g++" "AR_$tl=$p-ar"
    # libasound, libopus and libturbojpeg (alsa-sys, audiopus_sys, turbojpeg-sys) from the
    # target's multiarch -dev packages.
    export PKG_CONFIG_ALLOW_CROSS=1 "PKG_CONFIG_LIBDIR_$tl=/usr/lib/$p/pkgconfig:/usr/share/pkgconfig"
  fi
done
echo "build-debs: building ${archs[*]} (profile $profile)"
if [ ${#targets[@]} -lt ${#archs[@]} ]; then
  cargo build --profile "$profile" --locked --bin snaprtcd
fi
if [ ${#targets[@]} -gt 0 ]; then
  cargo build --profile "$profile" --locked --bin snaprtcd --target-dir "$xdir" "${targets[@]}"
fi
[ $build_only = 0 ] || exit 0
for a in "${archs[@]}"; do
  t=$(triple "$a")
  echo "build-debs: $a ($t)"
  rm -f target/debian/snaprtcd_*_"$a".deb
  if host_dev "$a"; then
    cargo deb --locked --no-build --profile dev "${fast[@]}" --output target/debian/ >/dev/null
    bin=target/debug/snaprtcd
  else
    CARGO_TARGET_DIR=$xdir cargo deb --locked --no-build --profile "$profile" "${fast[@]}" --target "$t" --output target/debian/ >/dev/null
    bin=$xdir/$t/$profile_dir/snaprtcd
  fi
  deb=$(ls target/debian/snaprtcd_*_"$a".deb)
  # The binary must run on Debian 12: only base libraries, glibc symbols <= 2.36.
  libs=$(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
  for l in $libs; do
    [[ "$l" =~ $allowed_libs ]] || { echo "build-debs: $a binary needs $l, not in Depends" >&2; exit 1; }
  done
  glibc=$(readelf -V "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
  [ "$(printf '%s\n2.36\n' "$glibc" | sort -V | tail -n 1)" = 2.36 ] \
    || { echo "build-debs: $a binary needs glibc $glibc > 2.36" >&2; exit 1; }
  lintian --fail-on error "$deb"
  echo "build-debs: $deb ($(du -k "$deb" | cut -f1) KiB, needs glibc $glibc, libs: $(echo $libs))"
done
