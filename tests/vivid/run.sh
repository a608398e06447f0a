#!/usr/bin/env bash
# tests/vivid/run.sh: the V4L2 tests against the kernel's vivid camera, in a VM (and real ALSA
# through the snd-aloop loopback card, in the same VM).
#
# Builds the `vivid` and `audio` test binaries, boots tests/vm/vivid-vm.sh and runs them inside:
# one VM per camera test (each gets a fresh vivid), the ALSA test in the first one (it loads and
# unloads snd-aloop itself). Needs root for nothing on the host; installs the VM's Debian
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
# test_bin NAME: build tests/NAME.rs and print its executable (the daemon binary the CLI test
# runs is built too: skip its line).
test_bin() {
  local b
  b=$(cargo test --test "$1" --no-run --message-format=json 2>/dev/null \
    | grep '"kind":\["test"\]' | grep "\"name\":\"$1\"" \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
  [[ -x $b ]] || { echo "vivid: could not build the $1 test binary" >&2; return 1; }
  echo "$b"
}
bin=$(test_bin vivid)
# Real ALSA in the same VM: snd-aloop (tests/audio.rs, vm_…): a tone played into the
# loopback is in the Opus frames and reaches ffmpeg over RTSP and a str0m peer over WebRTC,
# and survives an unplug.
audio_bin=$(test_bin audio)
# One VM boot per entry, each with a fresh vivid; an entry may name several tests (they share
# that VM's vivid). The ALSA test (snd-aloop, not vivid) rides in the first VM, after its
# camera tests, whatever they gave: a boot under software emulation costs ~14 s. (One VM for
# every test was tried: a failed unplug test leaves vivid unloaded, and the tests after it
# failed with it.)
inside='a=0; "$1" --ignored --exact $2 --nocapture --test-threads=1 || a=1;'
inside+=' [ -z "$3" ] || "$3" --ignored --exact "$4" --nocapture --test-threads=1 || a=1; exit $a'
audio_test=vm_alsa_loopback_tone_reaches_rtsp_and_survives_unplugging
rc=0
also=("$audio_bin" "$audio_test")  # the first VM's extra test; none after it
for t in "vivid_formats_and_sizes_give_h264_and_stills vivid_cli_lists_the_device_and_takes_a_snapshot" \
         vivid_unplug_unload_and_reload_resume_the_stream \
         vivid_dropped_and_corrupt_buffers_do_not_stop_the_stream \
         vivid_daemon_streams_serves_stills_and_outlives_the_camera; do
  echo "== $t ${also[1]}"
  start=$(date +%s)
  if tests/vm/vivid-vm.sh "${vm_args[@]}" --vivid "$VIVID_OPTS" -- \
      env SNAPRTCD_VIVID=1 SNAPRTCD_VIVID_OPTS="$VIVID_OPTS" RUST_BACKTRACE=1 \
      sh -c "$inside" sh "$bin" "$t" "${also[@]}"; then
    echo "== $t ${also[1]}: ok ($(($(date +%s) - start)) s)"
  else
    echo "== $t ${also[1]}: FAILED" >&2; rc=1
  fi
  vm_args=() also=("" "")
done
exit $rc
