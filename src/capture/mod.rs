//! Capture: where pictures come from. Every source sits behind [`Source`], a blocking
//! `next_frame()` that runs on the capture thread ([`CaptureThread`]), which owns the source,
//! reopens it with backoff when it fails, and hands frames to the pipeline over a bounded
//! channel. It counts what it does in [`CaptureCounters`], handed in by the owner (the media
//! pipeline shares them with `/metrics`), so capture imports nothing above it. Sources: [`testsrc`] (a test pattern), [`v4l2`] (cameras), [`exec`] (a program's
//! H.264 or MJPEG stdout, e.g. `rpicam-vid`).

pub mod exec;
pub mod testsrc;
pub mod v4l2;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::{CameraConfig, SourceKind};
use crate::picture::yuv::I420;
use crate::thread::OwnedThread;

pub use v4l2::list_devices;

/// What a source hands over: a raw picture or a compressed frame to pass through.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A raw picture (converted from YUYV/NV12 by the source).
    I420(I420),
    /// One JPEG (MJPEG camera or program).
    Mjpeg(Bytes),
    /// One H.264 access unit in Annex-B form.
    H264(Bytes),
}

impl Payload {
    /// The payload's format as `/health` and logs name it.
    pub fn format(&self) -> &'static str {
        match self {
            Payload::I420(_) => "I420",
            Payload::Mjpeg(_) => "MJPEG",
            Payload::H264(_) => "H264",
        }
    }
}

/// One frame and when it was captured.
#[derive(Debug, Clone)]
pub struct CapturedFrame {
    /// The picture or access unit.
    pub payload: Payload,
    /// When the source handed it over (drives timestamps and the capture-to-send delay).
    pub captured_at: Instant,
}

/// Describes an opened source for `/health` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// e.g. `testsrc`, `/dev/video0 (vivid)`, `exec rpicam-vid`.
    pub name: String,
    /// Camera format, e.g. `YUYV`, `MJPEG`, `H264`.
    pub format: String,
    /// Picture width in pixels.
    pub width: u32,
    /// Picture height in pixels.
    pub height: u32,
}

/// Why a source could not be opened or stopped delivering.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The device or program could not be opened or started.
    #[error("cannot open the source: {0}")]
    Open(String),
    /// The device offers no format and size this daemon can use.
    #[error("no usable format: {0}")]
    NoFormat(String),
    /// Reading from the device or program failed.
    #[error("the source failed: {0}")]
    Io(#[from] std::io::Error),
    /// The program exited or the device went away.
    #[error("the source ended: {0}")]
    Ended(String),
    /// Nothing arrived for this long (the thread checks for cancellation and retries).
    #[error("no frame for {0:?}")]
    Stalled(Duration),
    /// V4L2 asked for on a system without it.
    #[error("V4L2 is only available on Linux")]
    Unsupported,
}

/// A source of frames. `next_frame` blocks until a frame arrives (at most about a second: it
/// returns `Stalled` rather than hang, so its thread can notice cancellation).
pub trait Source: Send {
    /// What was opened, for `/health` and logs.
    fn info(&self) -> SourceInfo;

    /// The next frame, blocking for at most about a second.
    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError>;

    /// Ask the camera for a keyframe (H.264 cameras); false if it cannot.
    fn request_keyframe(&mut self) -> bool {
        false
    }
}

/// Which source to (re)open: `auto` resolved to a concrete kind once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The built-in test pattern.
    Testsrc,
    /// The V4L2 device at this node.
    V4l2(std::path::PathBuf),
    /// The `[camera.exec]` program.
    Exec,
    /// No camera (`source = "none"`, the relay role): opening it is an error.
    None,
}

impl SourceSpec {
    /// How errors and logs name the source: `testsrc`, the device path, `exec PROGRAM`.
    pub fn label(&self, camera: &CameraConfig) -> String {
        match self {
            SourceSpec::Testsrc => "testsrc".into(),
            SourceSpec::V4l2(path) => path.display().to_string(),
            SourceSpec::Exec => format!(
                "exec {}",
                camera.exec.command.first().map_or("", |s| s.as_str())
            ),
            SourceSpec::None => "none (relay)".into(),
        }
    }
}

/// Resolve `[camera] source` to what will be opened, logging the `auto` choice.
pub fn resolve(camera: &CameraConfig) -> SourceSpec {
    match camera.source {
        SourceKind::Testsrc => SourceSpec::Testsrc,
        SourceKind::Exec => SourceSpec::Exec,
        SourceKind::V4l2 => SourceSpec::V4l2(camera.device.clone()),
        SourceKind::None => SourceSpec::None,
        SourceKind::Auto => match v4l2::first_usable_device(camera) {
            Some(path) => {
                tracing::info!(device = %path.display(), "camera found");
                SourceSpec::V4l2(path)
            }
            None => {
                tracing::warn!(
                    "no usable V4L2 camera found; showing the test pattern. Plug in a camera and \
                     restart, or set [camera] source = \"v4l2\" with device = \"/dev/videoN\" \
                     (see `snaprtcd list-devices`), or source = \"exec\" for rpicam-vid"
                );
                SourceSpec::Testsrc
            }
        },
    }
}

/// Open a source once.
pub fn open(spec: &SourceSpec, camera: &CameraConfig) -> Result<Box<dyn Source>, CaptureError> {
    Ok(match spec {
        SourceSpec::Testsrc => Box::new(testsrc::TestSource::new(
            camera.width,
            camera.height,
            camera.fps,
        )?),
        SourceSpec::V4l2(path) => Box::new(v4l2::V4l2Source::open(path, camera)?),
        SourceSpec::Exec => Box::new(exec::ExecSource::spawn(camera)?),
        SourceSpec::None => {
            return Err(CaptureError::Open(
                "[camera] source = \"none\": this daemon is a relay with no camera".into(),
            ))
        }
    })
}

/// Retry delays after a failure: 1 s, 2 s, 5 s, then every 5 s.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = match self.failures {
            0 => 1,
            1 => 2,
            _ => 5,
        };
        self.failures = self.failures.saturating_add(1);
        Duration::from_secs(d)
    }

    /// The source delivered: start over at 1 s next time.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What the capture thread tells the pipeline.
#[derive(Debug)]
pub enum CaptureEvent {
    /// The source opened.
    Started(SourceInfo),
    /// A frame.
    Frame(CapturedFrame),
    /// The source failed or could not be opened; retrying after `retry_in`.
    Lost {
        /// What went wrong, for the log.
        reason: String,
        /// When the next attempt is made.
        retry_in: Duration,
    },
}

/// What the capture thread counts. The owner makes them and may share the atomics (the media
/// pipeline's counters hold the same ones, so `/metrics` reads them).
#[derive(Debug, Clone, Default)]
pub struct CaptureCounters {
    /// Frames the source delivered.
    pub frames_captured: Arc<AtomicU64>,
    /// Frames dropped between capture and encoder because the encoder was busy.
    pub frames_dropped: Arc<AtomicU64>,
}

/// The named thread that owns the source. Dropping it cancels and joins the thread.
pub struct CaptureThread {
    thread: OwnedThread,
}

/// Frames buffered between capture and encoder; a slow encoder makes capture drop frames.
const FRAME_QUEUE: usize = 2;

/// Buffers a source's pool keeps: as many as can be alive at once when the encoder lags, so a
/// returned buffer is never freed only for the next frame to allocate (and fault in) a new one:
/// the frame being captured, `FRAME_QUEUE` (2) in the channel, the one the media thread works on,
/// and the latest kept for stills.
pub const SOURCE_POOL: usize = FRAME_QUEUE + 3;

impl CaptureThread {
    /// Start capturing `spec`; events arrive on the returned receiver.
    pub fn spawn(
        spec: SourceSpec,
        camera: CameraConfig,
        keyframe_requests: Receiver<()>,
        counters: CaptureCounters,
        cancel: CancellationToken,
    ) -> std::io::Result<(Self, Receiver<CaptureEvent>)> {
        let (tx, rx) = mpsc::sync_channel(FRAME_QUEUE);
        let token = cancel.clone();
        let thread = OwnedThread::spawn("capture", cancel, move || {
            run(spec, camera, tx, keyframe_requests, counters, token)
        })?;
        Ok((Self { thread }, rx))
    }

    /// Stop and wait for the thread (a panic is logged).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Sleep up to `d`, waking early on cancellation. Returns false if cancelled.
pub(crate) fn sleep_unless_cancelled(d: Duration, cancel: &CancellationToken) -> bool {
    let end = Instant::now() + d;
    while !cancel.is_cancelled() {
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
    false
}

/// Wait `d` before the next attempt, but retry at once when a missing device node reappears
/// (a re-plugged camera resumes without waiting out the backoff). False if cancelled.
fn wait_for_retry(d: Duration, spec: &SourceSpec, cancel: &CancellationToken) -> bool {
    let SourceSpec::V4l2(path) = spec else {
        return sleep_unless_cancelled(d, cancel);
    };
    if path.exists() {
        return sleep_unless_cancelled(d, cancel);
    }
    let end = Instant::now() + d;
    while Instant::now() < end {
        if !sleep_unless_cancelled(Duration::from_millis(100), cancel) {
            return false;
        }
        if path.exists() {
            // udev may still be setting permissions: a short grace, then try.
            return sleep_unless_cancelled(Duration::from_millis(200), cancel);
        }
    }
    true
}

fn run(
    spec: SourceSpec,
    camera: CameraConfig,
    tx: SyncSender<CaptureEvent>,
    keyframe_requests: Receiver<()>,
    counters: CaptureCounters,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut warned = false;
    while !cancel.is_cancelled() {
        let failure = match open(&spec, &camera) {
            Ok(mut source) => {
                let info = source.info();
                if warned {
                    tracing::info!(source = %info.name, format = %info.format, "camera is back");
                } else {
                    tracing::info!(source = %info.name, format = %info.format, width = info.width, height = info.height, "capture started");
                }
                if tx.send(CaptureEvent::Started(info)).is_err() {
                    return;
                }
                stream(
                    source.as_mut(),
                    &tx,
                    &keyframe_requests,
                    &counters,
                    &cancel,
                    &mut backoff,
                )
            }
            Err(e) => e.to_string(),
        };
        if cancel.is_cancelled() {
            return;
        }
        let retry_in = backoff.next_delay();
        if !warned {
            tracing::warn!(reason = %failure, ?retry_in, "camera lost; showing the no-signal slate and retrying");
            warned = true;
        } else {
            tracing::debug!(reason = %failure, ?retry_in, "camera still unavailable");
        }
        if tx
            .send(CaptureEvent::Lost {
                reason: failure,
                retry_in,
            })
            .is_err()
        {
            return;
        }
        if !wait_for_retry(retry_in, &spec, &cancel) {
            return;
        }
    }
}

/// Pump frames until the source fails (returns why) or cancellation.
fn stream(
    source: &mut dyn Source,
    tx: &SyncSender<CaptureEvent>,
    keyframe_requests: &Receiver<()>,
    counters: &CaptureCounters,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> String {
    while !cancel.is_cancelled() {
        if keyframe_requests.try_iter().count() > 0 {
            source.request_keyframe();
        }
        match source.next_frame() {
            Ok(frame) => {
                backoff.reset();
                counters.frames_captured.fetch_add(1, Ordering::Relaxed);
                if matches!(frame.payload, Payload::H264(_)) {
                    // H.264 pictures depend on each other: never drop one, wait instead
                    // (passthrough is cheap, so the wait is short).
                    if tx.send(CaptureEvent::Frame(frame)).is_err() {
                        return "pipeline stopped".into();
                    }
                    continue;
                }
                match tx.try_send(CaptureEvent::Frame(frame)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Disconnected(_)) => return "pipeline stopped".into(),
                }
            }
            Err(e) => return e.to_string(),
        }
    }
    "cancelled".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_1_2_5_then_5_and_resets() {
        let mut b = Backoff::default();
        let secs: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 5, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
