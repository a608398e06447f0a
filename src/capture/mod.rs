//! Capture: where pictures come from. Every source sits behind [`Source`], a blocking
//! `next_frame()` that runs on the capture thread ([`CaptureThread`]), which owns the source,
//! reopens it with backoff when it fails, and hands frames to the pipeline over a bounded
//! channel ([`CaptureEvents`]). It counts what it does in [`CaptureCounters`], handed in by the
//! owner (the media pipeline shares them with `/metrics`), so capture imports nothing above it.
//! Sources: [`testsrc`] (a test pattern), [`v4l2`] (cameras), [`exec`] (a program's H.264 or
//! MJPEG stdout, e.g. `rpicam-vid`).
//!
//! ```text
//! source ─▶ capture thread ─(bounded 2)─▶ decode thread ─(bounded 2)─▶ the pipeline (media thread)
//!           reads, stamps, drops           MJPEG → I420 while
//!           when 2 are on their way        pictures are wanted
//! ```
//!
//! The decode thread ([`MjpegDecoding`]) is the first stage of the MJPEG pipeline: while the
//! media thread encodes (someone watches, which the media thread says through a shared flag),
//! it decodes each JPEG into I420, so picture N+1 is decoded while the media thread encodes
//! picture N, on two cores. Every other event passes through it unchanged and in order. The
//! capture thread never decodes, so it reads the source on time whatever decoding costs (a
//! late read would leave frames waiting in the camera or the pipe: stale, wrongly stamped, and
//! dropped there without being counted). Between them the two channels hold at most two
//! frames: a frame that would be a third is dropped (and counted) by the capture thread before
//! it costs a decode. Unwatched, JPEGs go on undecoded (the pipeline keeps the latest for
//! stills).

pub mod exec;
pub mod testsrc;
pub mod v4l2;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SendError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::{CameraConfig, SourceKind};
use crate::picture::mjpeg::{DecodeError, MjpegDecoder};
use crate::picture::yuv::I420;
use crate::thread::OwnedThread;

pub use v4l2::list_devices;

/// What a source hands over: a raw picture or a compressed frame to pass through.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A raw picture (converted from YUYV/NV12 by the source).
    I420(I420),
    /// One JPEG (MJPEG camera or program), as the source delivers it: not decoded.
    Mjpeg(Bytes),
    /// One JPEG and the capture thread's decode of it ([`MjpegDecoding`], while the pipeline
    /// encodes): the picture, or why the frame is corrupt. The JPEG stays for stills.
    DecodedMjpeg {
        /// The camera's own JPEG.
        jpeg: Bytes,
        /// Its pixels in I420 (from the pool sized with [`DECODED_POOL`]), or the decode error.
        picture: Result<I420, DecodeError>,
    },
    /// One H.264 access unit in Annex-B form.
    H264(Bytes),
}

impl Payload {
    /// The payload's format as `/health` and logs name it.
    pub fn format(&self) -> &'static str {
        match self {
            Payload::I420(_) => "I420",
            Payload::Mjpeg(_) | Payload::DecodedMjpeg { .. } => "MJPEG",
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

/// MJPEG decoding on the decode thread: the first stage of a two-stage pipeline whose second
/// is the media thread's encoder (see the module docs).
pub struct MjpegDecoding {
    /// Set by the media thread while it encodes in software (someone watches): only then is a
    /// JPEG worth decoding. Cleared, frames go on undecoded (no decode while nobody watches).
    wanted: Arc<AtomicBool>,
    /// Its pictures come from a pool of [`DECODED_POOL`] buffers that the media thread's
    /// dropped pictures return to.
    decoder: MjpegDecoder,
}

impl MjpegDecoding {
    /// Decode with `decoder` while `wanted` is set (the media thread sets it).
    pub fn new(decoder: MjpegDecoder, wanted: Arc<AtomicBool>) -> Self {
        Self { wanted, decoder }
    }

    /// `payload` decoded if it is a JPEG and pictures are wanted, else as it was.
    fn handle_payload(&mut self, payload: Payload) -> Payload {
        match payload {
            Payload::Mjpeg(jpeg) if self.wanted.load(Ordering::Relaxed) => {
                let picture = self.decoder.decode(&jpeg);
                Payload::DecodedMjpeg { jpeg, picture }
            }
            other => other,
        }
    }
}

/// The named threads that own the source and decode its JPEGs. Dropping it cancels and joins
/// them.
pub struct CaptureThread {
    capture: OwnedThread,
    decode: OwnedThread,
}

/// Frames buffered between capture and encoder; a slow encoder makes capture drop frames.
const FRAME_QUEUE: usize = 2;

/// Buffers the pool of decoded MJPEG pictures keeps: as many as can be alive at once. The
/// media thread holds one (the picture it encodes, whichever thread decoded it); between the
/// capture and the media thread (in either channel or being decoded) there are at most
/// `FRAME_QUEUE` (2) frames.
pub const DECODED_POOL: usize = FRAME_QUEUE + 1;

/// The capture thread's end of the frames' way to the pipeline, counting the events on it:
/// a channel cannot say whether it is full without taking a frame, a frame must not be decoded
/// only to be dropped, and the way has two channels and a decode between them.
struct FrameQueue {
    tx: SyncSender<CaptureEvent>,
    /// Events sent and not yet received by the pipeline: counted before each send (so never
    /// fewer than are on the way), taken back on a failed send and by [`CaptureEvents`] on
    /// receipt.
    queued: Arc<AtomicUsize>,
}

impl FrameQueue {
    /// Whether a frame sent now would be a third on the way (the media thread lags).
    fn is_full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= FRAME_QUEUE
    }

    /// Send, waiting for room (events that must not be lost).
    fn send(&self, event: CaptureEvent) -> Result<(), SendError<CaptureEvent>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(event).inspect_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// Send if the channel to the decode thread has room.
    fn try_send(&self, event: CaptureEvent) -> Result<(), TrySendError<CaptureEvent>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.try_send(event).inspect_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        })
    }
}

/// The pipeline's end of the frame channel: what the capture thread tells it.
pub struct CaptureEvents {
    rx: Receiver<CaptureEvent>,
    /// Shared with the capture thread's [`FrameQueue`]: one taken back per event received.
    queued: Arc<AtomicUsize>,
}

impl CaptureEvents {
    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<CaptureEvent, RecvTimeoutError> {
        let event = self.rx.recv_timeout(timeout)?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(event)
    }
}

/// The decode thread's ends: events from the capture thread in, to the pipeline out.
struct DecodeStage {
    input: Receiver<CaptureEvent>,
    output: SyncSender<CaptureEvent>,
}

/// The way from the capture thread through the decode thread to the pipeline: two channels of
/// [`FRAME_QUEUE`] events.
fn frame_queue() -> (FrameQueue, DecodeStage, CaptureEvents) {
    let (tx, input) = mpsc::sync_channel(FRAME_QUEUE);
    let (output, rx) = mpsc::sync_channel(FRAME_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        FrameQueue {
            tx,
            queued: queued.clone(),
        },
        DecodeStage { input, output },
        CaptureEvents { rx, queued },
    )
}

/// The decode thread: every event from the capture thread to the pipeline, in order, JPEGs
/// decoded while pictures are wanted. Ends when the capture thread or the pipeline is gone, or
/// on cancellation; returns the decoder (its count is what tests read).
fn decode(
    stage: DecodeStage,
    mut mjpeg: MjpegDecoding,
    cancel: &CancellationToken,
) -> MjpegDecoding {
    const TICK: Duration = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let event = match stage.input.recv_timeout(TICK) {
            Ok(CaptureEvent::Frame(frame)) => CaptureEvent::Frame(CapturedFrame {
                payload: mjpeg.handle_payload(frame.payload),
                captured_at: frame.captured_at,
            }),
            Ok(other) => other,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Waits only if the pipeline holds two already: never for a frame the capture thread
        // may drop (it counted this one on the way), so only H.264 and status events wait.
        if stage.output.send(event).is_err() {
            break;
        }
    }
    mjpeg
}

/// Buffers a source's pool keeps: as many as can be alive at once when the encoder lags, so a
/// returned buffer is never freed only for the next frame to allocate (and fault in) a new one:
/// the frame being captured, `FRAME_QUEUE` (2) in the channel, the one the media thread works on,
/// and the latest kept for stills.
pub const SOURCE_POOL: usize = FRAME_QUEUE + 3;

impl CaptureThread {
    /// Start capturing `spec`; events arrive on the returned receiver. JPEGs are decoded with
    /// `mjpeg` while the pipeline wants pictures.
    pub fn spawn(
        spec: SourceSpec,
        camera: CameraConfig,
        keyframe_requests: Receiver<()>,
        counters: CaptureCounters,
        mjpeg: MjpegDecoding,
        cancel: CancellationToken,
    ) -> std::io::Result<(Self, CaptureEvents)> {
        let (queue, stage, events) = frame_queue();
        let token = cancel.clone();
        let decode = OwnedThread::spawn("decode", cancel.clone(), move || {
            decode(stage, mjpeg, &token);
        })?;
        let token = cancel.clone();
        let capture = OwnedThread::spawn("capture", cancel, move || {
            let sink = Sink { queue, counters };
            run(spec, camera, sink, keyframe_requests, token)
        })?;
        Ok((Self { capture, decode }, events))
    }

    /// Stop and wait for the threads (a panic is logged).
    pub fn join(self) {
        let _ = self.capture.join();
        let _ = self.decode.join();
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

/// Where the capture thread's frames go, and what it counts.
struct Sink {
    queue: FrameQueue,
    counters: CaptureCounters,
}

fn run(
    spec: SourceSpec,
    camera: CameraConfig,
    sink: Sink,
    keyframe_requests: Receiver<()>,
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
                if sink.queue.send(CaptureEvent::Started(info)).is_err() {
                    return;
                }
                stream(
                    source.as_mut(),
                    &sink,
                    &keyframe_requests,
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
        if sink
            .queue
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
    sink: &Sink,
    keyframe_requests: &Receiver<()>,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> String {
    let Sink { queue, counters } = sink;
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
                    if queue.send(CaptureEvent::Frame(frame)).is_err() {
                        return "pipeline stopped".into();
                    }
                    continue;
                }
                if queue.is_full() {
                    // Dropped before it costs a decode: the media thread lags.
                    counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match queue.try_send(CaptureEvent::Frame(frame)) {
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
    use crate::picture::yuv::BufferPool;
    use std::collections::VecDeque;

    /// Hands out `frames`, then cancels `cancel` (ending `stream`).
    struct Frames {
        frames: VecDeque<Payload>,
        cancel: CancellationToken,
    }

    impl Source for Frames {
        fn info(&self) -> SourceInfo {
            SourceInfo {
                name: "frames".into(),
                format: "MJPEG".into(),
                width: 64,
                height: 48,
            }
        }

        fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
            match self.frames.pop_front() {
                Some(payload) => Ok(CapturedFrame {
                    payload,
                    captured_at: Instant::now(),
                }),
                None => {
                    self.cancel.cancel();
                    Err(CaptureError::Stalled(Duration::ZERO))
                }
            }
        }
    }

    /// Runs the capture loop over `frames` on this thread, as the capture thread would.
    fn capture(sink: &Sink, frames: impl IntoIterator<Item = Payload>) {
        let cancel = CancellationToken::new();
        let mut source = Frames {
            frames: frames.into_iter().collect(),
            cancel: cancel.clone(),
        };
        let (_keyframes_tx, keyframes) = mpsc::sync_channel(1);
        stream(
            &mut source,
            sink,
            &keyframes,
            &cancel,
            &mut Backoff::default(),
        );
    }

    /// The next `n` payloads the pipeline receives (waiting for the decode thread).
    fn received(events: &CaptureEvents, n: usize) -> Vec<Payload> {
        (0..n)
            .map(|_| match events.recv_timeout(Duration::from_secs(10)) {
                Ok(CaptureEvent::Frame(frame)) => frame.payload,
                other => panic!("not a frame: {other:?}"),
            })
            .collect()
    }

    fn jpeg() -> Bytes {
        let rgb: Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 85)
            .encode(&rgb, 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        Bytes::from(out)
    }

    #[test]
    fn mjpeg_is_decoded_on_the_decode_thread_only_while_wanted_and_never_to_be_dropped() {
        let (queue, stage, events) = frame_queue();
        let wanted = Arc::new(AtomicBool::new(false));
        let decoder = MjpegDecoder::new(BufferPool::new(DECODED_POOL));
        let mjpeg = MjpegDecoding::new(decoder, wanted.clone());
        let cancel = CancellationToken::new();
        let decode_thread = std::thread::spawn(move || decode(stage, mjpeg, &cancel));
        let counters = CaptureCounters::default();
        let sink = Sink {
            queue,
            counters: counters.clone(),
        };
        let good = jpeg();
        let mjpeg = |jpeg: &Bytes| Payload::Mjpeg(jpeg.clone());

        // Nobody watches: the JPEG goes on as it came, undecoded.
        capture(&sink, [mjpeg(&good)]);
        assert!(matches!(&received(&events, 1)[..], [Payload::Mjpeg(j)] if *j == good));

        // The media thread encodes: it receives pictures decoded before it (on the decode
        // thread), and the decode error of a corrupt frame (for it to count).
        wanted.store(true, Ordering::Relaxed);
        let corrupt = good.slice(..good.len() / 2);
        capture(&sink, [mjpeg(&good), mjpeg(&corrupt)]);
        match &received(&events, 2)[..] {
            [Payload::DecodedMjpeg {
                jpeg: a,
                picture: Ok(picture),
            }, Payload::DecodedMjpeg {
                jpeg: b,
                picture: Err(_),
            }] => {
                assert_eq!((a, b), (&good, &corrupt), "the JPEGs stay for stills");
                assert_eq!((picture.width(), picture.height()), (64, 48));
            }
            other => panic!("{other:?}"),
        }

        // The media thread lags (nothing is received): two frames are on their way, the next
        // ones are dropped by the capture thread, before any decode.
        capture(&sink, (0..5).map(|_| mjpeg(&good)));
        assert_eq!(counters.frames_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(counters.frames_captured.load(Ordering::Relaxed), 8);
        let late = received(&events, 2);
        assert!(late
            .iter()
            .all(|p| matches!(p, Payload::DecodedMjpeg { picture: Ok(_), .. })));

        // Raw pictures and H.264 pass as they are, in order.
        let raw = I420::filled(64, 48, 16, 128, 128).unwrap();
        let au = Bytes::from_static(&[0, 0, 0, 1, 0x65, 0x88]);
        capture(&sink, [Payload::I420(raw), Payload::H264(au.clone())]);
        match &received(&events, 2)[..] {
            [Payload::I420(p), Payload::H264(h)] => assert_eq!((p.width(), h), (64, &au)),
            other => panic!("{other:?}"),
        }
        assert_eq!(sink.queue.queued.load(Ordering::Relaxed), 0, "all received");

        // The capture thread's end gone, the decode thread ends. Of the 8 JPEGs captured, it
        // decoded the 4 it was sent while wanted: none of the 3 dropped.
        drop(sink);
        let mjpeg = decode_thread.join().unwrap();
        assert_eq!(mjpeg.decoder.frames_decoded(), 4);
    }

    #[test]
    fn backoff_is_1_2_5_then_5_and_resets() {
        let mut b = Backoff::default();
        let secs: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 5, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
