#!/usr/bin/env bash
# tests/vivid/run.sh: the V4L2 tests against the kernel's vivid camera, in a VM (and real ALSA
# through the snd-aloop loopback card, in the same VM).
#
# Builds the `vivid` and `audio` test binaries, boots tests/vm/vivid-vm.sh once and runs them
# inside, one test after another (a boot under software emulation costs ~14 s, so one VM for
# all saves about a minute). The tests that unplug the camera end with `rmmod vivid` and
# `modprobe vivid` (a fresh device); the one that leaves a control set (20 % dropped buffers)
# runs last of the camera tests; the audio test loads and unloads snd-aloop itself. Needs
# root for nothing on the host; installs the VM's Debian packages and ffmpeg/v4l-utils when
# missing (CI starts from a fresh Debian 12):
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
# Real ALSA in the same VM: snd-aloop (tests/audio.rs, vm_…): a tone played into the
# loopback is in the Opus frames and reaches ffmpeg over RTSP and a str0m peer over WebRTC,
# and survives an unplug.
audio_bin=$(cargo test --test audio --no-run --message-format=json 2>/dev/null \
  | grep '"kind":\["test"\]' | grep '"name":"audio"' \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
[[ -x $audio_bin ]] || { echo "vivid: could not build the audio test binary" >&2; exit 1; }
camera_tests=(vivid_formats_and_sizes_give_h264_and_stills
              vivid_cli_lists_the_device_and_takes_a_snapshot
              vivid_daemon_streams_serves_stills_and_outlives_the_camera
              vivid_unplug_unload_and_reload_resume_the_stream
              vivid_dropped_and_corrupt_buffers_do_not_stop_the_stream)
audio_test=vm_alsa_loopback_tone_reaches_rtsp_and_survives_unplugging
# Inside (one line: the VM's init quotes it with printf %q): one process per camera test, in
# this order (libtest itself would sort them by name); then the audio test, whatever the
# camera tests gave. Each prints its own failures.
inside='a=0; for t in $2; do "$1" --ignored --exact "$t" --nocapture --test-threads=1 || a=1; done;'
inside+=' "$3" --ignored --exact "$4" --nocapture --test-threads=1; b=$?;'
inside+=' echo "== camera tests: exit $a; audio test: exit $b"; [ $a = 0 ] && [ $b = 0 ]'
start=$(date +%s)
if tests/vm/vivid-vm.sh "${vm_args[@]}" --timeout 480 --vivid "$VIVID_OPTS" -- \
    env SNAPRTCD_VIVID=1 SNAPRTCD_VIVID_OPTS="$VIVID_OPTS" RUST_BACKTRACE=1 \
    sh -c "$inside" sh "$bin" "${camera_tests[*]}" "$audio_bin" "$audio_test"; then
  echo "== vivid VM: ok ($(($(date +%s) - start)) s)"
else
  echo "== vivid VM: FAILED ($(($(date +%s) - start)) s)" >&2; exit 1
fi
