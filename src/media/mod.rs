//! Media: what the capture pipeline hands to everyone who shows video.
//!
//! The pipeline (one per camera) owns the encoder and publishes [`EncodedFrame`]s on a bounded
//! broadcast. Its users are few, not one per viewer: the RTC engine holds a single
//! [`FrameSubscriber`] for all of its WebRTC viewers, taken while at least one of them wants
//! video (see `rtc::engine`). Each frame's bytes are one `Arc<[u8]>`, made once by the pipeline
//! and shared as they are by every subscriber and by every viewer's str0m writer (no copy per
//! frame after the encoder's); str0m packetises and encrypts it per viewer (each viewer has its
//! own RTP packets and SRTP keys), which copies the bytes once per viewer.
//!
//! A subscriber that falls behind loses its place in the broadcast (bounded memory), skips to
//! the next keyframe and asks for one; it never makes the pipeline wait. Keyframe requests and
//! still requests go back to the pipeline as typed messages on bounded channels; the pipeline's
//! keyframe policy coalesces and rate-limits them. With no subscriber the software encoder
//! idles (capture and stills go on); the first picture encoded for a new subscriber is an IDR.

pub mod encoder;
pub mod jpeg;
pub mod keyframe;
pub mod pipeline;
pub mod still;

pub use pipeline::{spawn, PipelineError, PipelineGuard};

/// Blocks at least this large come from `mmap` (glibc's `M_MMAP_THRESHOLD`): 4 MiB, above a
/// camera JPEG or an access unit within the default `max_access_unit_bytes` and above a 1080p
/// I420 picture (3 MiB). Also within glibc's limit on 32-bit (armhf).
const HEAP_MMAP_THRESHOLD: i32 = 4 << 20;
/// Free memory kept at the top of a heap instead of given back to the kernel (glibc's
/// `M_TRIM_THRESHOLD`): twice the mmap threshold, the ratio glibc's own dynamic rule keeps.
const HEAP_TRIM_THRESHOLD: i32 = 8 << 20;

/// Keep memory freed by one frame for the next, instead of handing it back to the kernel and
/// faulting it in again. Frame-sized blocks are freed and re-taken on every frame by code the
/// daemon does not own: the JPEG decoder's per-frame working memory (zune-jpeg's per-MCU-row
/// buffers when it was the decoder, libjpeg-turbo's pools now), the RTC engine's copy of
/// every access unit and str0m's packet buffers (what `perf record -e page-faults` showed).
/// With glibc's defaults (mmap threshold 128 KiB, trim threshold 128 KiB, both raised
/// only when an mmapped block is freed), the heap tops were trimmed and regrown every frame: 21
/// minor page faults a frame in the MJPEG decode alone (`cargo bench --bench conversions`), and
/// setting only the trim threshold (which turns glibc's dynamic rule off) still left 0.4 a
/// frame in the RTC engine's threads (`bench/camera_path`, per-thread faults). Both thresholds
/// fixed: 0 in the decode, 0.02–0.07 a frame left in the RTC engine, where its heap still grows
/// (docs/BENCHMARKS.md, "Camera path"). Memory kept is what the daemon's bounded buffers used at their
/// peak, at most 8 MiB of slack per heap. Process-wide: the daemon calls it once at start. A
/// no-op where the C library is not glibc.
pub fn keep_heap_slack() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes two integers and has no memory-safety preconditions; glibc
    // serialises it against allocations in other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD);
    }
}
pub use still::{snapshot_once, SnapshotError};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::capture::CaptureCounters;
use crate::progress::ProgressStamp;

/// One H.264 access unit in Annex-B form, as every viewer receives it.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// Annex-B access unit; an IDR is preceded by SPS and PPS. One allocation per access unit,
    /// made by the pipeline and shared as it is by every consumer: the broadcast, RTSP, the
    /// RTC engine's GOP cache and every viewer's str0m writer (which takes an `Arc<[u8]>`).
    pub data: Arc<[u8]>,
    /// True for an IDR access unit (a viewer can start decoding here).
    pub keyframe: bool,
    /// Capture time relative to the pipeline's start (monotonic; drives RTP timestamps).
    pub timestamp: Duration,
}

/// Why a keyframe was asked for (counted in `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyframeCause {
    /// A viewer joined and needs an IDR to start.
    NewViewer,
    /// A viewer lost packets (RTCP PLI).
    Pli,
    /// A viewer asked for a full refresh (RTCP FIR).
    Fir,
    /// A viewer fell behind the broadcast and skipped ahead.
    Lagged,
    /// The GOP interval elapsed.
    Periodic,
}

impl KeyframeCause {
    /// Every cause, in the order of [`MediaCounters::keyframes`].
    pub const ALL: [KeyframeCause; 5] = [
        KeyframeCause::NewViewer,
        KeyframeCause::Pli,
        KeyframeCause::Fir,
        KeyframeCause::Lagged,
        KeyframeCause::Periodic,
    ];

    /// Index into [`MediaCounters::keyframes`].
    pub fn index(self) -> usize {
        match self {
            KeyframeCause::NewViewer => 0,
            KeyframeCause::Pli => 1,
            KeyframeCause::Fir => 2,
            KeyframeCause::Lagged => 3,
            KeyframeCause::Periodic => 4,
        }
    }

    /// Label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyframeCause::NewViewer => "new_viewer",
            KeyframeCause::Pli => "pli",
            KeyframeCause::Fir => "fir",
            KeyframeCause::Lagged => "lagged",
            KeyframeCause::Periodic => "periodic",
        }
    }
}

/// A request for a JPEG still no larger than `max_bytes`.
#[derive(Debug)]
pub struct StillRequest {
    /// Upper bound on the JPEG's size (a data channel's max-message-size).
    pub max_bytes: usize,
    /// Where the still (or why there is none) goes.
    pub reply: oneshot::Sender<Result<Bytes, StillError>>,
}

/// Why no still could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StillError {
    /// The camera has not delivered a picture yet.
    #[error("no frame captured yet")]
    NoFrame,
    /// The picture cannot be shrunk below the asked size.
    #[error("the still cannot be made to fit {0} bytes")]
    TooLarge(usize),
    /// The H.264 source's pictures are larger than a still is decoded at (its SPS says so;
    /// nothing was decoded).
    #[error("the source's pictures are {width}x{height}; stills are decoded up to {max_side}x{max_side}")]
    PictureTooLarge {
        /// Width the SPS announces.
        width: u32,
        /// Height the SPS announces.
        height: u32,
        /// The budget: see `still::max_still_side`.
        max_side: u32,
    },
    /// The pipeline's queue of still requests is full: ask again shortly.
    #[error("too many stills are being made; try again shortly")]
    Busy,
    /// The pipeline has stopped (or never started).
    #[error("the media pipeline is not running")]
    Stopped,
    /// The JPEG encoder (or the H.264 decoder behind it) failed.
    #[error("JPEG encoding failed: {0}")]
    Encode(String),
}

/// Camera state as shown in `/health`, `/metrics`, logs and the systemd status line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MediaStatus {
    /// `starting`, `streaming`, `no_signal` (camera lost; slate shown), `stopped`.
    pub state: CameraState,
    /// Human name of the source, e.g. `testsrc`, `/dev/video0 (YUYV)`, `exec rpicam-vid`.
    pub source: String,
    /// Input format, e.g. `YUYV`, `MJPEG`, `H264`, `I420`.
    pub format: String,
    /// Width of the pictures being sent.
    pub width: u32,
    /// Height of the pictures being sent.
    pub height: u32,
    /// Frames per second measured over the last seconds.
    pub fps_measured: f32,
    /// Encoder in use: `passthrough`, `openh264`.
    pub encoder: String,
}

/// The camera's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CameraState {
    /// No frame yet (the slate follows after a grace second).
    #[default]
    Starting,
    /// Frames are coming from the camera.
    Streaming,
    /// The camera is lost; the "no signal" slate is sent while it is retried.
    NoSignal,
    /// The pipeline has stopped.
    Stopped,
}

impl CameraState {
    /// Label used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Starting => "starting",
            CameraState::Streaming => "streaming",
            CameraState::NoSignal => "no_signal",
            CameraState::Stopped => "stopped",
        }
    }
}

/// Upper bounds (milliseconds) of the encode-time histogram buckets; the last bucket is +Inf.
pub const ENCODE_BUCKETS_MS: [u64; 7] = [1, 2, 5, 10, 20, 50, 100];

/// Monotonic counters the pipeline bumps and `/metrics` and the systemd watchdog read.
/// Written by the pipeline threads only (relaxed atomics: each value is independent).
#[derive(Debug)]
pub struct MediaCounters {
    /// Frames the source delivered (shared with the capture thread's [`CaptureCounters`]).
    pub frames_captured: Arc<AtomicU64>,
    /// Frames dropped between capture and encoder because the encoder was busy (shared with
    /// the capture thread's [`CaptureCounters`]).
    pub frames_dropped: Arc<AtomicU64>,
    /// Camera frames that could not be decoded (a truncated or corrupt MJPEG frame) and were
    /// skipped; the stream goes on with the next one.
    pub frames_corrupt: AtomicU64,
    /// Access units published to viewers (camera and slate). Flat while nobody watches a
    /// software-encoded source: unwatched pictures are not encoded.
    pub frames_encoded: AtomicU64,
    /// Pictures given to the software encoder that it produced nothing for (openh264's rate
    /// control skipping a picture). Stays 0: skipping is off, a skipped picture is a stall.
    pub frames_encoder_skipped: AtomicU64,
    /// Of those, "no signal" slate pictures.
    pub frames_slate: AtomicU64,
    /// IDRs sent, by cause (index with [`KeyframeCause::index`]).
    pub keyframes: [AtomicU64; 5],
    /// Software encode time histogram: counts per [`ENCODE_BUCKETS_MS`] bucket, then +Inf.
    pub encode_time_buckets: [AtomicU64; 8],
    /// Total software encode time in microseconds (the histogram's sum).
    pub encode_time_micros: AtomicU64,
    /// JPEG stills served.
    pub stills: AtomicU64,
    /// Times the camera was lost.
    pub camera_losses: AtomicU64,
    /// When the media loop last went round (the systemd watchdog's media probe).
    progress: ProgressStamp,
}

impl Default for MediaCounters {
    fn default() -> Self {
        Self {
            frames_captured: Arc::default(),
            frames_dropped: Arc::default(),
            frames_corrupt: AtomicU64::new(0),
            frames_encoded: AtomicU64::new(0),
            frames_encoder_skipped: AtomicU64::new(0),
            frames_slate: AtomicU64::new(0),
            keyframes: Default::default(),
            encode_time_buckets: Default::default(),
            encode_time_micros: AtomicU64::new(0),
            stills: AtomicU64::new(0),
            camera_losses: AtomicU64::new(0),
            progress: ProgressStamp::default(),
        }
    }
}

impl MediaCounters {
    /// The media loop went round (a frame or slate was published, or it is waiting normally).
    pub fn record_progress(&self) {
        self.progress.record();
    }

    /// Time since the media loop last made progress: the systemd watchdog is only fed while
    /// this is small.
    pub fn since_progress(&self) -> Duration {
        self.progress.age()
    }

    /// The counters the capture thread bumps: the same atomics as
    /// [`frames_captured`](Self::frames_captured) and [`frames_dropped`](Self::frames_dropped).
    pub fn capture_counters(&self) -> CaptureCounters {
        CaptureCounters {
            frames_captured: self.frames_captured.clone(),
            frames_dropped: self.frames_dropped.clone(),
        }
    }

    /// Count one software encode that took `took`.
    pub fn record_encode_time(&self, took: Duration) {
        let ms = took.as_millis() as u64;
        let bucket = ENCODE_BUCKETS_MS
            .iter()
            .position(|&b| ms < b)
            .unwrap_or(ENCODE_BUCKETS_MS.len());
        self.encode_time_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.encode_time_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Count one IDR sent for `cause`.
    pub fn record_keyframe(&self, cause: KeyframeCause) {
        self.keyframes[cause.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The cloneable handle to one camera's pipeline, given to the RTC engine, HTTP and the daemon.
#[derive(Clone)]
pub struct MediaHandle {
    /// Weak, so the broadcast closes (subscribers see the end) when the pipeline stops.
    frames: broadcast::WeakSender<EncodedFrame>,
    keyframes: mpsc::Sender<KeyframeCause>,
    stills: mpsc::Sender<StillRequest>,
    status: watch::Receiver<MediaStatus>,
    counters: Arc<MediaCounters>,
    epoch: Instant,
}

/// The pipeline's side of a [`MediaHandle`]: where it publishes and what it receives.
pub struct MediaPorts {
    /// Publish encoded frames here (`send` never blocks; lagging receivers lose frames).
    pub frames: broadcast::Sender<EncodedFrame>,
    /// Keyframe requests from viewers.
    pub keyframes: mpsc::Receiver<KeyframeCause>,
    /// Still requests.
    pub stills: mpsc::Receiver<StillRequest>,
    /// Publish state changes here.
    pub status: watch::Sender<MediaStatus>,
    /// Counters shared with the handle (metrics, watchdog).
    pub counters: Arc<MediaCounters>,
    /// Time zero of [`EncodedFrame::timestamp`] (and of the audio's timestamps, so lips match).
    pub epoch: Instant,
}

/// Bounds of the channels between the pipeline and its users.
#[derive(Debug, Clone, Copy)]
pub struct ChannelLimits {
    /// Encoded frames buffered for the slowest viewer before it loses its place.
    pub frames: usize,
    /// Pending keyframe requests (extra ones are dropped: one pending request is enough).
    pub keyframes: usize,
    /// Pending still requests; more get an error at once.
    pub stills: usize,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        Self {
            frames: 64,
            keyframes: 16,
            stills: 16,
        }
    }
}

/// Make the two ends: the handle for users, the ports for the pipeline.
pub fn channel(limits: ChannelLimits) -> (MediaHandle, MediaPorts) {
    let (frames, _) = broadcast::channel(limits.frames.max(1));
    let (kf_tx, kf_rx) = mpsc::channel(limits.keyframes.max(1));
    let (st_tx, st_rx) = mpsc::channel(limits.stills.max(1));
    let (status_tx, status_rx) = watch::channel(MediaStatus::default());
    let counters = Arc::new(MediaCounters::default());
    let epoch = Instant::now();
    (
        MediaHandle {
            frames: frames.downgrade(),
            keyframes: kf_tx,
            stills: st_tx,
            status: status_rx,
            counters: counters.clone(),
            epoch,
        },
        MediaPorts {
            frames,
            keyframes: kf_rx,
            stills: st_rx,
            status: status_tx,
            counters,
            epoch,
        },
    )
}

impl MediaHandle {
    /// A new viewer's frame stream. It starts at the next keyframe, and one is requested.
    ///
    /// The pipeline encodes only while the broadcast has subscribers; the first picture it
    /// encodes for a subscriber after none is an IDR. Drop the subscriber when nobody watches.
    pub fn subscribe(&self) -> FrameSubscriber {
        // The request goes first, so the pipeline has it when it sees the new receiver.
        self.request_keyframe(KeyframeCause::NewViewer);
        let rx = match self.frames.upgrade() {
            Some(tx) => tx.subscribe(),
            // The pipeline stopped: a stream that is already closed.
            None => broadcast::channel(1).1,
        };
        FrameSubscriber {
            rx,
            waiting_for_keyframe: true,
            keyframes: self.keyframes.clone(),
            skipped: 0,
        }
    }

    /// Ask for an IDR soon; never blocks (a full queue already holds a request).
    pub fn request_keyframe(&self, cause: KeyframeCause) {
        let _ = self.keyframes.try_send(cause);
    }

    /// The latest still as a JPEG of at most `max_bytes`; [`StillError::Busy`] at once when
    /// the pipeline's queue of still requests is full.
    pub async fn still(&self, max_bytes: usize) -> Result<Bytes, StillError> {
        let (reply, rx) = oneshot::channel();
        self.stills
            .try_send(StillRequest { max_bytes, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StillError::Busy,
                mpsc::error::TrySendError::Closed(_) => StillError::Stopped,
            })?;
        rx.await.map_err(|_| StillError::Stopped)?
    }

    /// The camera's state now.
    pub fn status(&self) -> MediaStatus {
        self.status.borrow().clone()
    }

    /// Watch the camera's state (for the systemd status line and logs).
    pub fn watch_status(&self) -> watch::Receiver<MediaStatus> {
        self.status.clone()
    }

    /// The pipeline's counters (metrics, watchdog progress).
    pub fn counters(&self) -> &Arc<MediaCounters> {
        &self.counters
    }

    /// Time zero of every [`EncodedFrame::timestamp`]: the audio pipeline stamps its frames
    /// from the same instant, so a receiver lines sound up with pictures.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// How many frame subscribers exist (viewers holding a stream).
    pub fn subscriber_count(&self) -> usize {
        self.frames.upgrade().map_or(0, |tx| tx.receiver_count())
    }
}

/// A viewer's place in the frame broadcast.
pub struct FrameSubscriber {
    rx: broadcast::Receiver<EncodedFrame>,
    waiting_for_keyframe: bool,
    keyframes: mpsc::Sender<KeyframeCause>,
    skipped: u64,
}

impl FrameSubscriber {
    /// The next frame this viewer can decode; `None` once the pipeline has stopped.
    ///
    /// After falling behind, frames up to the next keyframe are skipped (a decoder cannot use
    /// them) and a keyframe is requested so the wait is short.
    pub async fn recv(&mut self) -> Option<EncodedFrame> {
        loop {
            match self.rx.recv().await {
                Ok(frame) => {
                    if let Some(frame) = self.accept(frame) {
                        return Some(frame);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Frames this viewer skipped because it fell behind or joined mid-GOP.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn accept(&mut self, frame: EncodedFrame) -> Option<EncodedFrame> {
        if self.waiting_for_keyframe && !frame.keyframe {
            self.skipped += 1;
            return None;
        }
        self.waiting_for_keyframe = false;
        Some(frame)
    }

    fn lagged(&mut self, n: u64) {
        self.skipped += n;
        if !self.waiting_for_keyframe {
            self.waiting_for_keyframe = true;
            let _ = self.keyframes.try_send(KeyframeCause::Lagged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// The pipeline behind a [`FrameSubscriber`] has stopped.
    #[derive(Debug, PartialEq, Eq)]
    struct SubscriberClosed;

    impl FrameSubscriber {
        /// The next decodable frame if one is ready, `Err` once the pipeline stopped.
        fn try_recv(&mut self) -> Result<Option<EncodedFrame>, SubscriberClosed> {
            loop {
                match self.rx.try_recv() {
                    Ok(frame) => {
                        if let Some(frame) = self.accept(frame) {
                            return Ok(Some(frame));
                        }
                    }
                    Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => self.lagged(n),
                    Err(broadcast::error::TryRecvError::Closed) => return Err(SubscriberClosed),
                }
            }
        }
    }

    fn frame(n: u64, keyframe: bool) -> EncodedFrame {
        EncodedFrame {
            data: Arc::from(vec![n as u8; 4]),
            keyframe,
            timestamp: Duration::from_millis(n * 33),
        }
    }

    #[test]
    fn new_subscriber_starts_at_a_keyframe_and_asks_for_one() {
        let (media, mut ports) = channel(ChannelLimits::default());
        let mut sub = media.subscribe();
        assert_eq!(
            ports.keyframes.try_recv().ok(),
            Some(KeyframeCause::NewViewer)
        );
        ports.frames.send(frame(1, false)).unwrap();
        ports.frames.send(frame(2, true)).unwrap();
        ports.frames.send(frame(3, false)).unwrap();
        assert_eq!(sub.try_recv().unwrap().unwrap().data[0], 2);
        assert_eq!(sub.try_recv().unwrap().unwrap().data[0], 3);
        assert!(sub.try_recv().unwrap().is_none());
        assert_eq!(sub.skipped(), 1);
    }

    #[test]
    fn lagging_subscriber_skips_to_the_next_keyframe_and_memory_stays_bounded() {
        let limits = ChannelLimits {
            frames: 4,
            ..ChannelLimits::default()
        };
        let (media, mut ports) = channel(limits);
        let mut slow = media.subscribe();
        let _ = ports.keyframes.try_recv();
        ports.frames.send(frame(0, true)).unwrap();
        assert_eq!(slow.try_recv().unwrap().unwrap().data[0], 0);
        // The pipeline never waits: 100 frames go out while the viewer reads nothing.
        for n in 1..100 {
            ports.frames.send(frame(n, n == 97)).unwrap();
        }
        assert_eq!(
            ports.frames.len(),
            4,
            "the broadcast holds only its capacity"
        );
        let next = slow.try_recv().unwrap().unwrap();
        assert_eq!(
            next.data[0], 97,
            "resumes at the keyframe, not in the middle of a GOP"
        );
        assert_eq!(ports.keyframes.try_recv().ok(), Some(KeyframeCause::Lagged));
        assert!(slow.skipped() >= 96);
    }

    #[test]
    fn closed_pipeline_ends_the_stream() {
        let (media, ports) = channel(ChannelLimits::default());
        let mut sub = media.subscribe();
        drop(ports);
        drop(media);
        assert_eq!(sub.try_recv().unwrap_err(), SubscriberClosed);
    }

    #[test]
    fn a_full_still_queue_is_busy_not_stopped() {
        let limits = ChannelLimits {
            stills: 1,
            ..ChannelLimits::default()
        };
        let (media, ports) = channel(limits);
        // The first request waits in the queue (nobody serves it); the second finds it full.
        assert!(media.still(1000).now_or_never().is_none());
        assert_eq!(
            media.still(1000).now_or_never(),
            Some(Err(StillError::Busy))
        );
        drop(ports);
        assert_eq!(
            media.still(1000).now_or_never(),
            Some(Err(StillError::Stopped))
        );
    }
}
