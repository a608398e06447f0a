//! A real V4L2 driver: the kernel's `vivid` camera inside a VM (`tests/vivid/run.sh` boots it
//! and runs this test binary there with SNAPRTCD_VIVID=1 and `--ignored`). A plain `cargo test`
//! lists these tests as ignored (never as passed); run by hand outside the VM, they fail.
//!
//! Checks: YUYV and NV12 at 640x480 and 1280x720 give valid H.264 (ffprobe) and a JPEG still;
//! a USB-style disconnect, `rmmod vivid` and `modprobe vivid` give the slate, then frames again
//! within 5 s of the device's return, the pipeline never stopping; dropped buffers and buffers
//! flagged as errors do not stop the stream; the daemon binary itself reports the camera in
//! `/health`, serves `/snapshot.jpg` and outlives an unplug, `rmmod` and `modprobe`.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use snaprtcd::config::{CaptureFormat, Config, SourceKind};
use snaprtcd::media::jpeg::decode_to_i420;
use snaprtcd::media::pipeline::spawn;
use snaprtcd::media::{CameraState, FrameSubscriber, MediaCounters, MediaHandle};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Generous: the VM runs under software emulation.
const WAIT: Duration = Duration::from_secs(60);
const DEVICE: &str = "/dev/video0";

/// What a test run outside the VM says.
const IN_VM: &str = "needs the vivid VM: tests/vivid/run.sh runs it there with --ignored";

/// Fails (never skips) when run outside the VM.
fn assert_in_vivid_vm() {
    assert!(
        std::env::var_os("SNAPRTCD_VIVID").is_some(),
        "{IN_VM} (SNAPRTCD_VIVID is not set)"
    );
}

fn config(format: CaptureFormat, width: u32, height: u32) -> Config {
    let mut c = Config::default();
    c.camera.source = SourceKind::V4l2;
    c.camera.device = PathBuf::from(DEVICE);
    c.camera.format = format;
    c.camera.width = width;
    c.camera.height = height;
    c.camera.fps = 30;
    c.encoder.keyframe_interval = Duration::from_secs(1);
    c
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn next(sub: &mut FrameSubscriber) -> snaprtcd::media::EncodedFrame {
    timeout(WAIT, sub.recv())
        .await
        .expect("frame in time")
        .expect("pipeline running")
}

async fn wait_state(media: &MediaHandle, state: CameraState, within: Duration) -> Duration {
    let started = Instant::now();
    let mut rx = media.watch_status();
    timeout(within, rx.wait_for(|s| s.state == state))
        .await
        .unwrap_or_else(|_| panic!("{state:?} within {within:?}; now {:?}", media.status()))
        .unwrap();
    started.elapsed()
}

fn ffprobe(file: &std::path::Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
        ])
        .arg("stream=profile,width,height,nb_read_frames")
        .args(["-of", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the vivid VM: tests/vivid/run.sh"]
async fn vivid_formats_and_sizes_give_h264_and_stills() {
    assert_in_vivid_vm();
    for (format, name) in [(CaptureFormat::Yuyv, "YUYV"), (CaptureFormat::Nv12, "NV12")] {
        for (w, h) in [(640u32, 480u32), (1280, 720)] {
            let cancel = CancellationToken::new();
            let (media, guard) = spawn(&config(format, w, h), cancel.clone()).unwrap();
            let mut sub = media.subscribe();
            let mut bytes = Vec::new();
            for _ in 0..8 {
                bytes.extend_from_slice(&next(&mut sub).await.data);
            }
            let status = media.status();
            assert_eq!(status.format, name);
            assert_eq!((status.width, status.height), (w, h), "{status:?}");
            let file = std::env::temp_dir().join(format!("vivid-{name}-{w}x{h}.h264"));
            std::fs::write(&file, &bytes).unwrap();
            let probe = ffprobe(&file);
            let stream = &probe["streams"][0];
            assert_eq!(stream["profile"], "Constrained Baseline");
            assert_eq!(
                (stream["width"].as_u64(), stream["height"].as_u64()),
                (Some(w as u64), Some(h as u64))
            );
            assert_eq!(stream["nb_read_frames"], "8", "every access unit decodes");
            let jpeg = timeout(WAIT, media.still(256 * 1024))
                .await
                .unwrap()
                .unwrap();
            let picture = decode_to_i420(&jpeg).unwrap();
            assert!(picture.width() <= w && picture.width() >= w / 4);
            println!("vivid {name} {w}x{h}: 8 frames ({} bytes) decode as Constrained Baseline; still {} bytes", bytes.len(), jpeg.len());
            cancel.cancel();
            guard.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the vivid VM: tests/vivid/run.sh"]
async fn vivid_unplug_unload_and_reload_resume_the_stream() {
    assert_in_vivid_vm();
    let vivid_opts = std::env::var("SNAPRTCD_VIVID_OPTS").unwrap_or_default();
    let cancel = CancellationToken::new();
    let (media, guard) = spawn(&config(CaptureFormat::Yuyv, 640, 480), cancel.clone()).unwrap();
    let mut sub = media.subscribe();
    wait_state(&media, CameraState::Streaming, WAIT).await;
    let _ = next(&mut sub).await;

    sh(&format!("v4l2-ctl -d {DEVICE} -c disconnect=1"));
    wait_state(&media, CameraState::NoSignal, WAIT).await;
    // Viewers keep getting (slate) frames while the camera is away.
    let slate = MediaCounters::get(&media.counters().frames_slate);
    let _ = next(&mut sub).await;
    // The capture thread closes the device when it reports the loss, but its retry may hold
    // it open a moment (a slow VM): rmmod until it is free.
    let since = Instant::now();
    while !Command::new("rmmod")
        .arg("vivid")
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(since.elapsed() < WAIT, "rmmod vivid: still in use");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Slate pictures keep coming with the module gone. The frames `sub` holds may predate the
    // count above (it queued while wait_state polled), so wait on the count itself.
    let since = Instant::now();
    loop {
        let _ = next(&mut sub).await;
        if MediaCounters::get(&media.counters().frames_slate) > slate {
            break;
        }
        assert!(
            since.elapsed() < WAIT,
            "no slate picture counted after rmmod"
        );
    }
    assert_eq!(media.status().state, CameraState::NoSignal);

    sh(&format!("modprobe vivid {vivid_opts}"));
    let back_at = Instant::now();
    while !std::path::Path::new(DEVICE).exists() {
        assert!(back_at.elapsed() < WAIT, "vivid came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = wait_state(&media, CameraState::Streaming, Duration::from_secs(5)).await;
    let frames = MediaCounters::get(&media.counters().frames_captured);
    let _ = next(&mut sub).await;
    println!(
        "vivid reload: streaming again {:?} after the device returned (loss count {})",
        back_at.elapsed().min(took + Duration::from_secs(1)),
        MediaCounters::get(&media.counters().camera_losses)
    );
    assert!(frames > 0);
    cancel.cancel();
    guard.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the vivid VM: tests/vivid/run.sh"]
async fn vivid_dropped_and_corrupt_buffers_do_not_stop_the_stream() {
    assert_in_vivid_vm();
    let mut c = config(CaptureFormat::Yuyv, 640, 480);
    // A V4L2 control set through [camera.controls].
    c.camera
        .controls
        .insert("percentage_of_dropped_buffers".into(), 20);
    let cancel = CancellationToken::new();
    let (media, guard) = spawn(&c, cancel.clone()).unwrap();
    let mut sub = media.subscribe();
    for i in 0..40 {
        if i % 5 == 0 {
            sh(&format!(
                "v4l2-ctl -d {DEVICE} -c inject_v4l2_buf_flag_error=1"
            ));
        }
        let _ = next(&mut sub).await;
    }
    assert_eq!(media.status().state, CameraState::Streaming);
    assert_eq!(MediaCounters::get(&media.counters().camera_losses), 0);
    let out = Command::new("v4l2-ctl")
        .args(["-d", DEVICE, "-C", "percentage_of_dropped_buffers"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("20"),
        "control applied"
    );
    cancel.cancel();
    guard.join();
}

/// `snaprtcd list-devices` and `snaprtcd snapshot` against the real driver (no daemon).
#[test]
#[ignore = "needs the vivid VM: tests/vivid/run.sh"]
fn vivid_cli_lists_the_device_and_takes_a_snapshot() {
    assert_in_vivid_vm();
    let bin = env!("CARGO_BIN_EXE_snaprtcd");
    let out = Command::new(bin).arg("list-devices").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}");
    assert!(table.starts_with("DEVICE"), "{table}");
    let yuyv = table
        .lines()
        .find(|l| l.starts_with(DEVICE) && l.contains(" YUYV "))
        .unwrap_or_else(|| panic!("no YUYV line for {DEVICE}:\n{table}"));
    assert!(yuyv.contains("640x480@"), "{yuyv}");
    assert!(yuyv.contains("1280x720@"), "{yuyv}");

    let dir = std::env::temp_dir();
    let conf = dir.join("vivid-cli.toml");
    std::fs::write(
        &conf,
        format!("[camera]\nsource = \"v4l2\"\ndevice = \"{DEVICE}\"\nformat = \"yuyv\"\nwidth = 1280\nheight = 720\n"),
    )
    .unwrap();
    let still = dir.join("vivid-cli.jpg");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&conf)
        .args(["snapshot", "-o"])
        .arg(&still)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let picture = decode_to_i420(&std::fs::read(&still).unwrap()).unwrap();
    assert_eq!((picture.width(), picture.height()), (1280, 720));
    println!("vivid snapshot: 1280x720 JPEG from {DEVICE}");
}

fn health(d: &common::Daemon) -> serde_json::Value {
    let r = d.http(
        "GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).expect("health JSON")
}

/// Poll `/health` until the camera is in `state` (the log line comes from the capture thread a
/// moment before the media thread publishes the state); how long it took.
fn wait_camera_state(d: &common::Daemon, state: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = health(d)["camera"]["state"].clone();
        if now == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "camera {state} within {within:?}; now {now}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs the vivid VM: tests/vivid/run.sh"]
fn vivid_daemon_streams_serves_stills_and_outlives_the_camera() {
    assert_in_vivid_vm();
    let vivid_opts = std::env::var("SNAPRTCD_VIVID_OPTS").unwrap_or_default();
    let mut d = common::Daemon::start(&format!(
        "[camera]\nsource = \"v4l2\"\ndevice = \"{DEVICE}\"\nwidth = 640\nheight = 480\nfps = 30\n"
    ));
    wait_camera_state(&d, "streaming", WAIT);
    let camera = health(&d)["camera"].clone();
    assert_eq!(
        (camera["width"].as_u64(), camera["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert!(
        camera["source"].as_str().unwrap_or("").contains(DEVICE),
        "{camera}"
    );

    let r = d.http("GET /snapshot.jpg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    let picture = snaprtcd::media::jpeg::decode_to_i420(&r.body).expect("a JPEG");
    assert_eq!((picture.width(), picture.height()), (640, 480));

    // Unplug (vivid's disconnect control acts like a USB unplug), unload, load again.
    sh(&format!("v4l2-ctl -d {DEVICE} -c disconnect=1"));
    d.wait_for_log("camera lost", WAIT);
    wait_camera_state(&d, "no_signal", WAIT);
    sh("rmmod vivid");
    sh(&format!("modprobe vivid {vivid_opts}"));
    let took = wait_camera_state(&d, "streaming", Duration::from_secs(5));
    d.wait_for_log("camera is back", WAIT);
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    let r = d.http("GET /snapshot.jpg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    println!(
        "vivid daemon: streaming, still {} bytes; camera back {took:?} after modprobe",
        r.body.len()
    );
}
