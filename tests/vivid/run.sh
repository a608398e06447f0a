#!/usr/bin/env bash
# tests/vivid/run.sh: the V4L2 tests against the kernel's vivid camera, in a VM (and real ALSA
# through the snd-aloop loopback card, in the same VM).
#
# Builds the `vivid` test binary, boots tests/vm/vivid-vm.sh and runs it inside, one VM per
# test (each gets a fresh vivid). Needs root for nothing on the host; installs the VM's Debian
# packages and ffmpeg/v4l-utils when missing (CI starts from a fresh Debian 12):
#     tests/vivid/run.sh [--install]
set -euo pipefail
cd "$(dirname "$0")/../.."
VIVID_OPTS="n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0"
vm_args=()
if [[ ${1:-} == --install ]] || ! command -v qemu-system-x86_64 >/dev/null || ! command -v ffprobe >/dev/null || ! command -v v4l2-ctl >/dev/null || ! command -v aplay >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg v4l-utils alsa-utils >/dev/null
  vm_args+=(--install)
fi
# The test binary (the daemon binary the CLI test runs is built too: skip its line).
bin=$(cargo test --test vivid --no-run --message-format=json 2>/dev/null \
  | grep '"kind":\["test"\]' | grep '"name":"vivid"' \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
[[ -x $bin ]] || { echo "vivid: could not build the test binary" >&2; exit 1; }
rc=0
# One VM boot per entry; an entry may name several tests (they share that VM's vivid).
for t in "vivid_formats_and_sizes_give_h264_and_stills vivid_cli_lists_the_device_and_takes_a_snapshot" \
         vivid_unplug_unload_and_reload_resume_the_stream \
         vivid_dropped_and_corrupt_buffers_do_not_stop_the_stream \
         vivid_daemon_streams_serves_stills_and_outlives_the_camera; do
  echo "== $t"
  start=$(date +%s)
  if tests/vm/vivid-vm.sh "${vm_args[@]}" --vivid "$VIVID_OPTS" -- \
      env SNAPRTCD_VIVID=1 SNAPRTCD_VIVID_OPTS="$VIVID_OPTS" RUST_BACKTRACE=1 \
      "$bin" --ignored --exact $t --nocapture --test-threads=1; then
    echo "== $t: ok ($(($(date +%s) - start)) s)"
  else
    echo "== $t: FAILED" >&2; rc=1
  fi
  vm_args=()
done

# Real ALSA in the same VM image: snd-aloop (tests/audio.rs, vm_…): a tone played into the
# loopback is in the Opus frames and reaches ffmpeg over RTSP, and survives an unplug.
audio_bin=$(cargo test --test audio --no-run --message-format=json 2>/dev/null \
  | grep '"kind":\["test"\]' | grep '"name":"audio"' \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
[[ -x $audio_bin ]] || { echo "vivid: could not build the audio test binary" >&2; exit 1; }
t=vm_alsa_loopback_tone_reaches_rtsp_and_survives_unplugging
echo "== $t"
start=$(date +%s)
if tests/vm/vivid-vm.sh --vivid "$VIVID_OPTS" -- \
    env SNAPRTCD_VIVID=1 RUST_BACKTRACE=1 "$audio_bin" --ignored --exact $t --nocapture --test-threads=1; then
  echo "== $t: ok ($(($(date +%s) - start)) s)"
else
  echo "== $t: FAILED" >&2; rc=1
fi
exit $rc
