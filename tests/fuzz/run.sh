#!/usr/bin/env bash
# Suite `fuzz` of tests/run: cargo-fuzz (libFuzzer) targets for the parsers of outside input.
#
#   tests/run fuzz                      every target, FUZZ_SECONDS (default 8) each, FUZZ_JOBS
#                                       (default: the number of cores) at a time
#   FUZZ_SECONDS=300 tests/fuzz/run.sh  longer runs; FUZZ_TARGETS="signalr offer" for a few
#
# Targets (fuzz/fuzz_targets/*.rs, each says what it feeds and which invariants it asserts):
# signalr (SignalR codec and Connection state machine under a virtual clock), snappeer
# (SnapRTC payload decoder), offer (offer inspection, then str0m's SDP parser), annexb (the
# Annex-B splitter fed random pieces, and the SPS/PPS inserter), config (Config::from_toml and
# the print-config round trip), sdpfrag (WHEP PATCH fragments, candidates parsed by str0m),
# backplane (messages from other instances: the .NET Redis envelope and the record in it),
# mjpeg (a camera's MJPEG frames decoded straight to I420), go2rtc (go2rtc's /api/ws Session fed
# messages, answers and clock ticks), rtsp (an RTSP client's bytes through the RTSP session, cut
# into reads, with frames and time in between), remote (dial-out's SignalR client state machine
# fed a hub's frames, failures, answers and clock ticks), turn (bytes from the TURN server's
# address into the TURN allocation core, as datagrams and as a stream), stun (datagrams from a
# STUN server's address through rtc::stun::StunClient between clock ticks).
#
# The targets are built once with the coverage flags `cargo fuzz build --sanitizer none`
# (cargo-fuzz 0.13.2, src/project.rs) gives rustc: libFuzzer's sancov coverage, `--cfg fuzzing`,
# debug assertions. Unlike cargo-fuzz, the suite gives them only to the crates under test
# (snaprtcd and the targets), through tests/fuzz/rustc-wrapper, and builds in the dev profile
# into the main target/ directory: every other crate is then the very build `cargo build` and
# `cargo test` made (fuzz/ is a member of the main workspace, with its Cargo.lock and
# profiles; its "fuzzing" feature of snaprtcd keeps the instrumented crate's artifacts apart),
# and only libFuzzer, snaprtcd (at opt-level 1) and the targets are compiled.
# On a fresh 2-core machine that is 2-3 minutes instead of 9 for cargo-fuzz's own release
# build, where the instrumented str0m alone took 5. libFuzzer steers by snaprtcd's branches;
# str0m's SDP parser runs on every `offer`/`sdpfrag` input (a panic there is caught) without
# its own coverage, and dependencies run unoptimised: for a long run by hand, instrument more
# (FUZZ_INSTRUMENT="str0m", which builds into its own fuzz/target-instrumented/) or use
# `cargo fuzz run <target>` in fuzz/ (the workspace's release profile, everything
# instrumented: a long build; cargo-fuzz is not needed in CI).
# Then each target runs for FUZZ_SECONDS (default 8: fourteen targets fit CI's 30-minute budget; run longer by hand), one per core at a
# time, on a temporary copy of its committed seed corpus (fuzz/corpus/<target>/), so runs never grow
# the repository. A crash, a panic, a timeout (FUZZ_TIMEOUT s for one input) or an RSS over
# FUZZ_RSS_MB fails the suite, and its input is printed: its path (kept in
# fuzz/artifacts/<target>/) and base64. Reproduce a failure with
#   target/debug/<target> <file>      (or cargo fuzz run <target> <file> in fuzz/)
# and turn it into a unit test in the module that failed.
#
# Toolchain: this machine and CI have stable Rust only (no nightly can be fetched).
# cargo-fuzz's default AddressSanitizer needs `-Zsanitizer`, a nightly flag, so the targets are
# built as with `--sanitizer none`: only stable flags (`-Cpasses=sancov-module` and
# `-Cllvm-args=-sanitizer-coverage-*` for libFuzzer's coverage, `--cfg fuzzing`,
# `-Cdebug-assertions`). For safe Rust that loses little: panics, arithmetic overflow (debug
# assertions), runaway memory (-rss_limit_mb) and hangs (-timeout) are all still caught;
# what ASan adds is checking of `unsafe` code, of which these parsers have none.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

FUZZ_SECONDS=${FUZZ_SECONDS:-8}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-10}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-1024}
read -r -a targets <<<"${FUZZ_TARGETS:-signalr snappeer offer annexb config sdpfrag backplane mjpeg go2rtc rtsp remote turn ogg stun}"
# Largest input per target: above the largest seed, small enough to keep executions fast.
declare -A max_len=([signalr]=8192 [snappeer]=8192 [offer]=16384 [annexb]=16384 [config]=8192 [sdpfrag]=4096
                  [backplane]=8192 [mjpeg]=16384 [go2rtc]=8192 [rtsp]=8192 [remote]=8192 [turn]=8192 [ogg]=8192
                  [stun]=2048)

if [ -n "${FUZZ_INSTRUMENT:-}" ]; then
  # Instrumented dependencies must never land in target/, where `cargo test` would link them.
  target_dir=${FUZZ_TARGET_DIR:-$root/fuzz/target-instrumented}
else
  target_dir=${FUZZ_TARGET_DIR:-$root/target}
fi
bin_dir=$target_dir/debug
start=$(date +%s)
# cargo-fuzz 0.13.2's RUSTFLAGS for `--sanitizer none` on Linux, given by
# tests/fuzz/rustc-wrapper to the crates under test only.
fuzz_rustflags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
fuzz_rustflags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
fuzz_rustflags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
fuzz_rustflags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
fuzz_rustflags+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
fuzz_rustflags+=" -Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions"
if [ "${FUZZ_NO_BUILD:-0}" = 1 ]; then
  echo "FUZZ_NO_BUILD=1: running the targets already in $bin_dir"
else
  echo "building fuzz targets (coverage on: snaprtcd ${FUZZ_INSTRUMENT:-}) into $target_dir ..."
  # No --target, so the dependencies are target/'s own dev build; the wrapper keeps the flags
  # off build scripts itself.
  FUZZ_RUSTFLAGS="$fuzz_rustflags" FUZZ_REPO_ROOT="$root" RUSTC_WRAPPER="$root/tests/fuzz/rustc-wrapper" \
    cargo build -p snaprtcd-fuzz --locked --bins --target-dir "$target_dir" \
    || { echo "FAIL: building the fuzz targets failed" >&2; exit 1; }
  echo "built in $(( $(date +%s) - start ))s"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/snaprtcd-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Targets run side by side, FUZZ_JOBS at a time (default: one per core); each is one process.
jobs_max=${FUZZ_JOBS:-$(nproc)}
run_target() {
  local t=$1
  "$bin_dir/$t" -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" \
    -rss_limit_mb="$FUZZ_RSS_MB" -max_len="${max_len[$t]:-8192}" \
    -artifact_prefix="$work/$t/artifacts/" -print_final_stats=1 \
    "$work/$t/corpus" >"$work/$t/log" 2>&1
  echo $? >"$work/$t/rc"
}
for t in "${targets[@]}"; do
  [ -x "$bin_dir/$t" ] || continue
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  cp -r "$root/fuzz/corpus/$t/." "$work/$t/corpus/"
  find "$work/$t/corpus" -type f | wc -l >"$work/$t/seeds"
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n; done
  run_target "$t" &
done
wait

passed=0 failed=0
for t in "${targets[@]}"; do
  if [ ! -f "$work/$t/rc" ]; then
    echo "FAIL: no fuzz target $t" >&2; failed=$((failed + 1)); continue
  fi
  rc=$(cat "$work/$t/rc")
  seeds=$(cat "$work/$t/seeds")
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$work/$t/log" | tail -1)
  units=$(find "$work/$t/corpus" -type f | wc -l)
  if [ "$rc" = 0 ]; then
    echo "ok   $t: ${runs:-?} runs in ${FUZZ_SECONDS}s, $cov, corpus $seeds -> $units"
    passed=$((passed + 1))
  else
    echo "FAIL $t (libFuzzer exit $rc); the end of its log:"
    grep -v '^#[0-9]' "$work/$t/log" | tail -40
    # Kept past this run (fuzz/artifacts/ is ignored by git).
    mkdir -p "$root/fuzz/artifacts/$t"
    for a in "$work/$t/artifacts"/*; do
      [ -f "$a" ] || continue
      cp "$a" "$root/fuzz/artifacts/$t/"
      a="$root/fuzz/artifacts/$t/$(basename "$a")"
      echo "--- input $a ($(stat -c %s "$a") bytes), base64:"
      base64 -w 100 "$a"
    done
    failed=$((failed + 1))
  fi
done
echo "fuzz suite took $(( $(date +%s) - start ))s"
echo "$passed passed, $failed failed"
[ $failed = 0 ]
