//! The running pipeline: testsrc through openh264 to a subscriber, stills, cancellation;
//! H.264 from a program passed through without the software encoder; MJPEG from a program
//! decoded (on the decode thread) and encoded, stills its own JPEGs; a program that dies
//! turns into the "no signal" slate and comes back; nothing is encoded while nobody subscribes,
//! and a subscriber after an idle spell starts at an IDR at once.
//!
//! The `exec` tests need `ffmpeg` with libx264 (Debian package `ffmpeg`): under CI=true its
//! absence fails them; elsewhere they are skipped with a message.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

mod common;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use snaprtcd::config::{Config, EncoderKind, ExecFormat, SourceKind};
use snaprtcd::media::pipeline::spawn;
use snaprtcd::media::{
    CameraState, FrameSubscriber, KeyframeCause, MediaCounters, MediaHandle, StillError,
};
use snaprtcd::picture::annexb::{nal, nal_type, nal_units};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn testsrc_config() -> Config {
    let mut c = Config::default();
    c.camera.source = SourceKind::Testsrc;
    c.camera.width = 320;
    c.camera.height = 240;
    c.camera.fps = 30;
    c
}

/// [`testsrc_config`] with an `exec` source running `command`, whose stdout is `format`.
fn exec_config(command: Vec<String>, format: ExecFormat) -> Config {
    let mut c = testsrc_config();
    c.camera.source = SourceKind::Exec;
    c.camera.exec.command = command;
    c.camera.exec.format = format;
    c
}

/// argv of ffmpeg writing `testsrc2` of `size` at 30 fps to stdout, paced, with `output`
/// options.
fn ffmpeg_testsrc2(size: &str, output: &[&str]) -> Vec<String> {
    let source = format!("testsrc2=size={size}:rate=30");
    let input = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        &source,
    ];
    input
        .iter()
        .chain(output)
        .chain(&["-"])
        .map(|a| a.to_string())
        .collect()
}

/// ffmpeg writing 640x480 H.264 (libx264, Constrained Baseline) to stdout; `extra` output
/// options go before the codec's.
fn ffmpeg_x264(extra: &[&str]) -> Vec<String> {
    let x264 = [
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-tune",
        "zerolatency",
        "-f",
        "h264",
    ];
    let output: Vec<&str> = extra.iter().chain(&x264).copied().collect();
    ffmpeg_testsrc2("640x480", &output)
}

/// A still of at most `max` bytes, which must be a JPEG.
async fn still_jpeg(media: &MediaHandle, max: usize) -> bytes::Bytes {
    let jpeg = timeout(WAIT, media.still(max))
        .await
        .expect("a still within the timeout")
        .expect("a still");
    assert_eq!(&jpeg[..2], &[0xff, 0xd8], "a JPEG");
    jpeg
}

async fn next(sub: &mut FrameSubscriber) -> snaprtcd::media::EncodedFrame {
    timeout(WAIT, sub.recv())
        .await
        .expect("a frame within the timeout")
        .expect("pipeline running")
}

/// Wait until `counter` reaches `at_least` (polling: the counters are plain atomics).
async fn wait_counter(counter: &AtomicU64, at_least: u64) {
    let deadline = Instant::now() + WAIT;
    while MediaCounters::get(counter) < at_least {
        assert!(
            Instant::now() < deadline,
            "counter at {} after {WAIT:?}, want {at_least}",
            MediaCounters::get(counter)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_state(media: &MediaHandle, state: CameraState) {
    let mut rx = media.watch_status();
    timeout(WAIT, rx.wait_for(|s| s.state == state))
        .await
        .unwrap_or_else(|_| panic!("state {state:?} within {WAIT:?}; now {:?}", media.status()))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testsrc_frames_reach_a_subscriber_and_stills_work() {
    let cancel = CancellationToken::new();
    let (media, guard) = spawn(&testsrc_config(), cancel.clone()).unwrap();
    let mut sub = media.subscribe();
    let first = next(&mut sub).await;
    assert!(first.keyframe, "a subscriber starts at an IDR");
    let types: Vec<u8> = nal_units(&first.data)
        .iter()
        .filter_map(|n| nal_type(n))
        .collect();
    assert!(types.starts_with(&[nal::SPS, nal::PPS]), "{types:?}");
    let mut last = first.timestamp;
    for _ in 0..30 {
        let f = next(&mut sub).await;
        assert!(f.timestamp > last, "timestamps increase");
        last = f.timestamp;
    }
    let status = media.status();
    assert_eq!(status.state, CameraState::Streaming);
    assert_eq!(status.encoder, "openh264");
    assert_eq!(status.source, "testsrc");

    let jpeg = still_jpeg(&media, 256 * 1024).await;
    assert!(jpeg.len() <= 256 * 1024);

    cancel.cancel();
    // The stream ends (no hang), and the guard joins the threads.
    while timeout(WAIT, sub.recv()).await.unwrap().is_some() {}
    guard.join();
    assert_eq!(media.status().state, CameraState::Stopped);
    assert!(
        matches!(media.still(1000).await, Err(StillError::Stopped)),
        "a still from a stopped pipeline says the pipeline is not running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_h264_is_passed_through_without_the_software_encoder() {
    if !common::require_tool("ffmpeg", "ffmpeg") {
        return;
    }
    let mut config = exec_config(ffmpeg_x264(&[]), ExecFormat::H264);
    config.encoder.kind = EncoderKind::Auto;
    let cancel = CancellationToken::new();
    let (media, guard) = spawn(&config, cancel.clone()).unwrap();
    let mut sub = media.subscribe();
    // Until ffmpeg's first picture the pipeline shows the slate (openh264, 10 fps); on a busy
    // machine ffmpeg may take seconds to start. Wait for the event (libx264's own SEI, in its
    // first IDR), with WAIT per frame as the only deadline, not for a count of frames.
    let first = next(&mut sub).await;
    assert!(first.keyframe, "a subscriber starts at an IDR");
    let mut f = first;
    let mut seen = 1;
    while !f.data.windows(4).any(|w| w == b"x264") {
        assert!(
            seen < 600,
            "the bytes are libx264's own (its SEI), not a re-encode: none in {seen} frames"
        );
        f = next(&mut sub).await;
        seen += 1;
    }
    assert!(f.keyframe, "libx264's SEI comes with its IDR");
    let status = media.status();
    assert_eq!(status.encoder, "passthrough");
    assert_eq!(status.format, "H264");
    let c = media.counters();
    let sw_encodes: u64 = c.encode_time_buckets.iter().map(MediaCounters::get).sum();
    assert_eq!(
        sw_encodes,
        MediaCounters::get(&c.frames_slate),
        "openh264 encoded nothing but the slate shown before the program's first frame"
    );
    // A still of an H.264 source is decoded on demand.
    still_jpeg(&media, 256 * 1024).await;
    cancel.cancel();
    guard.join();
}

/// `[camera.exec] format = "yuyv"`: raw pictures of the configured size from a program are
/// converted and encoded like a YUYV camera's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_raw_yuyv_is_encoded_like_a_yuyv_camera() {
    if !common::require_tool("ffmpeg", "ffmpeg") {
        return;
    }
    let config = exec_config(
        ffmpeg_testsrc2("320x240", &["-pix_fmt", "yuyv422", "-f", "rawvideo"]),
        ExecFormat::Yuyv,
    );
    let cancel = CancellationToken::new();
    let (media, guard) = spawn(&config, cancel.clone()).unwrap();
    let mut sub = media.subscribe();
    wait_state(&media, CameraState::Streaming).await;
    // Pictures from the program (not the slate) reach the encoder and the subscriber. The
    // encoder opens for the first picture after someone subscribed, so its name is read after
    // that picture (read at once, it raced the media thread: "" under load).
    let first = next(&mut sub).await;
    assert!(first.keyframe, "a subscriber starts at an IDR");
    let status = media.status();
    assert_eq!(status.format, "YUYV");
    assert_eq!(status.encoder, "openh264");
    let captured = MediaCounters::get(&media.counters().frames_captured);
    assert!(captured > 0, "no picture captured");
    still_jpeg(&media, 256 * 1024).await;
    cancel.cancel();
    guard.join();
}

/// `[camera.exec] format = "mjpeg"`: the program's JPEGs are decoded (on the decode thread,
/// while someone watches) and encoded; a still is one of the program's own JPEGs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_mjpeg_is_decoded_and_encoded_and_stills_are_its_jpegs() {
    if !common::require_tool("ffmpeg", "ffmpeg") {
        return;
    }
    let config = exec_config(
        ffmpeg_testsrc2(
            "320x240",
            &["-c:v", "mjpeg", "-pix_fmt", "yuvj420p", "-f", "mjpeg"],
        ),
        ExecFormat::Mjpeg,
    );
    let cancel = CancellationToken::new();
    let (media, guard) = spawn(&config, cancel.clone()).unwrap();
    let mut sub = media.subscribe();
    wait_state(&media, CameraState::Streaming).await;
    let first = next(&mut sub).await;
    assert!(first.keyframe, "a subscriber starts at an IDR");
    // Past the first frames (those sent before the decode thread knew someone watches, which
    // the media thread decodes itself), pictures keep coming.
    for _ in 0..10 {
        next(&mut sub).await;
    }
    let status = media.status();
    assert_eq!(status.format, "MJPEG");
    assert_eq!((status.width, status.height), (320, 240));
    assert_eq!(MediaCounters::get(&media.counters().frames_corrupt), 0);
    still_jpeg(&media, 256 * 1024).await;
    cancel.cancel();
    guard.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_dies_shows_the_slate_and_is_restarted() {
    if !common::require_tool("ffmpeg", "ffmpeg") {
        return;
    }
    // One second of video, then the program exits; it is restarted after 1 s.
    let config = exec_config(ffmpeg_x264(&["-t", "1"]), ExecFormat::H264);
    let cancel = CancellationToken::new();
    let (media, guard) = spawn(&config, cancel.clone()).unwrap();
    let mut sub = media.subscribe();
    wait_state(&media, CameraState::Streaming).await;
    wait_state(&media, CameraState::NoSignal).await;
    let slate_before = MediaCounters::get(&media.counters().frames_slate);
    // Viewers keep receiving (slate) frames while the camera is gone.
    let _ = next(&mut sub).await;
    wait_state(&media, CameraState::Streaming).await;
    assert!(MediaCounters::get(&media.counters().frames_slate) >= slate_before);
    assert!(MediaCounters::get(&media.counters().camera_losses) >= 1);
    assert!(media.counters().since_progress() < Duration::from_secs(1));
    cancel.cancel();
    guard.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_encoded_while_nobody_subscribes_and_a_subscriber_starts_at_an_idr() {
    let cancel = CancellationToken::new();
    let (media, guard) = spawn(&testsrc_config(), cancel.clone()).unwrap();
    let c = media.counters().clone();
    let encodes =
        |c: &MediaCounters| -> u64 { c.encode_time_buckets.iter().map(MediaCounters::get).sum() };

    // Nobody watches: the camera is captured (stills, fps, watchdog) but never encoded.
    wait_state(&media, CameraState::Streaming).await;
    let captured = MediaCounters::get(&c.frames_captured);
    wait_counter(&c.frames_captured, captured + 20).await;
    assert_eq!(MediaCounters::get(&c.frames_encoded), 0);
    assert_eq!(encodes(&c), 0, "openh264 never ran");
    assert!(c.since_progress() < Duration::from_secs(1));
    assert_eq!(
        media.status().encoder,
        "openh264",
        "the status still names the encoder"
    );
    still_jpeg(&media, 256 * 1024).await;

    for round in 0..2 {
        // A subscriber: the very first picture encoded is an IDR (nothing skipped to reach it),
        // also right after the previous IDR (round 1), despite the keyframe rate limit.
        let new_viewer = MediaCounters::get(&c.keyframes[KeyframeCause::NewViewer.index()]);
        let mut sub = media.subscribe();
        let first = next(&mut sub).await;
        assert!(first.keyframe, "round {round}: the first frame is an IDR");
        assert_eq!(sub.skipped(), 0, "round {round}: no P-frame came before it");
        let types: Vec<u8> = nal_units(&first.data)
            .iter()
            .filter_map(|n| nal_type(n))
            .collect();
        assert!(types.starts_with(&[nal::SPS, nal::PPS]), "{types:?}");
        for _ in 0..5 {
            assert!(!next(&mut sub).await.keyframe, "then P-frames");
        }
        assert!(
            MediaCounters::get(&c.keyframes[KeyframeCause::NewViewer.index()]) > new_viewer,
            "the IDR is counted as a new viewer's"
        );

        // The subscriber leaves: encoding stops again while capture goes on.
        drop(sub);
        let captured = MediaCounters::get(&c.frames_captured);
        wait_counter(&c.frames_captured, captured + 2).await;
        let encoded = MediaCounters::get(&c.frames_encoded);
        wait_counter(&c.frames_captured, captured + 20).await;
        assert_eq!(
            MediaCounters::get(&c.frames_encoded),
            encoded,
            "round {round}: nothing encoded after the last subscriber left"
        );
    }
    cancel.cancel();
    guard.join();
}
