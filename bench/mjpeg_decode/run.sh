#!/usr/bin/env bash
# MJPEG to I420, three ways, ms/frame at 1280x720 (noisy 4:2:0 and 4:2:2 JPEGs made by ffmpeg):
#   - zune-jpeg to RGB, then BT.601 back to I420 (the daemon before issue 16);
#   - zune-jpeg's YCbCr output, luma taken, chroma averaged 2x2 (what the daemon does now,
#     without its full-to-limited range table);
#   - libjpeg-turbo's planar decode (`turbojpeg` crate, bundled libjpeg-turbo 3 built with cmake
#     and nasm), 4:2:0 as decoded, 4:2:2 chroma averaged vertically.
#
#   bench/mjpeg_decode/run.sh            # ROUNDS=5 passes over 30 frames of each
# Needs ffmpeg, cmake, nasm and a C compiler; prints the table for docs/BENCHMARKS.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
for s in 420 422; do
    ffmpeg -loglevel error -y -f lavfi -i "testsrc2=size=1280x720:rate=30,noise=alls=20:allf=t" \
        -frames:v 30 -pix_fmt "yuvj${s}p" -q:v 5 "$dir/f${s}_%02d.jpg"
done
cargo build --release --manifest-path "$here/Cargo.toml" 2>&1 | tail -1
"$here/target/release/mjpeg-decode-bench" "$dir"
