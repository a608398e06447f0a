//! The pipeline: one per camera. The capture thread (see `capture`) owns the source, and its
//! decode thread turns MJPEG into I420 while pictures are wanted; the `media` thread owns
//! everything else: the encoder, the keyframe policy, the latest picture for stills, the
//! "no signal" slate, and the status. It publishes each access unit once on the broadcast;
//! viewers share the same `Bytes`.
//!
//! ```text
//! source ─▶ capture thread ─▶ decode thread ─(at most 2 on the way)─▶ media thread ─▶ broadcast ─▶ viewers
//!           ▲ force key frame  MJPEG → I420 while ◀── "pictures wanted"   encodes
//!                              (a flag the media thread sets)             ▲ keyframe requests,
//!                                                                           still requests (bounded)
//! ```
//!
//! For MJPEG the decode and media threads are the two stages of a pipeline: while the media
//! thread encodes picture N, the decode thread decodes picture N+1, so at 1080p30 decode
//! (~20 ms) and encode (~11 ms) each fit the 33 ms a frame has, on two cores, where one thread
//! doing both would not. It decodes only while the media thread says pictures are wanted (it
//! encodes: someone watches), and the capture thread drops a frame that would be a third on its
//! way before it is decoded; the pictures come from one pool that both return them to. A JPEG
//! that arrives undecoded while someone watches (sent before the flag was seen: the first
//! frames after a viewer comes) is decoded on the media thread, so a new viewer waits for
//! nothing.
//!
//! Whatever the camera does, the pipeline runs: a lost camera turns into the slate (10 fps, an
//! IDR first), and the capture thread retries with backoff. Only cancellation stops it.
//!
//! The software encoder only runs while the broadcast has a receiver (someone watches):
//! capture, stills, the measured rate and the watchdog's progress go on regardless, but an
//! unwatched picture is not encoded (nor an MJPEG one decoded). The first picture encoded after
//! such an idle spell is an IDR, whatever the keyframe rate limit, so a new viewer starts at
//! once. H.264 passed through costs nothing and is always forwarded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::encoder::{EncodeError, OpenH264Encoder, SoftwareSettings};
use super::jpeg::{DecodeError, MjpegDecoder};
use super::keyframe::{KeyframePolicy, MIN_FORCED_GAP};
use super::still::Latest;
use super::{
    channel, CameraState, ChannelLimits, EncodedFrame, KeyframeCause, MediaCounters, MediaHandle,
    MediaPorts, StillError,
};
use crate::capture::{
    self, testsrc, CaptureEvent, CaptureEvents, CaptureThread, CapturedFrame, MjpegDecoding,
    Payload, SourceSpec,
};
use crate::config::{Config, EncoderKind};
use crate::picture::annexb::{largest_sps_dimensions, ParamSetInserter};
use crate::picture::yuv::{even, BufferPool, I420};
use crate::thread::OwnedThread;

/// Slate pictures a second while the camera is gone (cheap, and enough to keep players alive).
const SLATE_FPS: u32 = 10;
/// Before the first camera frame, wait this long before showing the slate.
const FIRST_FRAME_GRACE: Duration = Duration::from_millis(1000);
/// The media loop wakes at least this often (cancellation, requests, watchdog).
const TICK: Duration = Duration::from_millis(100);

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The capture or media thread could not be started.
    #[error("cannot start a pipeline thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The software encoder could not be set up.
    #[error(transparent)]
    Encoder(#[from] EncodeError),
}

/// Owns the pipeline's threads. `join()` (or drop) stops them and waits.
pub struct PipelineGuard {
    cancel: CancellationToken,
    capture: Option<CaptureThread>,
    media: Option<OwnedThread>,
    camera_device: Option<std::path::PathBuf>,
}

impl PipelineGuard {
    /// The V4L2 device the pipeline captures from (`auto` resolved), if it is one: where
    /// `[audio] source = "auto"` looks for the camera's own microphone.
    pub fn camera_device(&self) -> Option<&std::path::Path> {
        self.camera_device.as_deref()
    }

    /// Stop the pipeline (if the token did not already) and wait for its threads.
    pub fn join(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(c) = self.capture.take() {
            c.join();
        }
        if let Some(m) = self.media.take() {
            // A panic is logged with the thread's name.
            let _ = m.join();
        }
    }
}

impl Drop for PipelineGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start the pipeline for `config.camera`; it runs until `cancel` fires or the guard is dropped.
pub fn spawn(
    config: &Config,
    cancel: CancellationToken,
) -> Result<(MediaHandle, PipelineGuard), PipelineError> {
    let spec = capture::resolve(&config.camera);
    spawn_with(config, spec, cancel)
}

/// [`spawn`] with the source already chosen (tests and benchmarks).
pub fn spawn_with(
    config: &Config,
    spec: SourceSpec,
    cancel: CancellationToken,
) -> Result<(MediaHandle, PipelineGuard), PipelineError> {
    let token = cancel.child_token();
    let (handle, ports) = channel(ChannelLimits::default());
    let (kf_tx, kf_rx) = std::sync::mpsc::sync_channel(1);
    let counters = ports.counters.capture_counters();
    let media = MediaLoop::new(config, &spec, ports, kf_tx)?;
    let (capture, events) = CaptureThread::spawn(
        spec.clone(),
        config.camera.clone(),
        kf_rx,
        counters,
        media.capture_decoding(),
        token.clone(),
    )?;
    let media_token = token.clone();
    let media = OwnedThread::spawn("media", token.clone(), move || {
        media.run(events, media_token)
    })?;
    Ok((
        handle,
        PipelineGuard {
            cancel: token,
            capture: Some(capture),
            media: Some(media),
            camera_device: match spec {
                SourceSpec::V4l2(path) => Some(path),
                _ => None,
            },
        },
    ))
}

/// What the media thread does with the pictures it gets: whether the encoder runs, whether an
/// IDR is owed because the encoded stream restarted, whether passthrough has found its IDR.
/// The one place that state lives (the keyframe policy keeps the viewers' requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Raw pictures (camera or slate) and nobody watching: they are not encoded.
    Idle,
    /// Raw pictures encoded in software. `pending_idr`: the next encoded picture must be an IDR
    /// whatever the policy's rate limit, because the encoded stream restarted (a new source, a
    /// new encoder, someone watching again); counted under this cause unless the policy names one.
    Encoding { pending_idr: Option<KeyframeCause> },
    /// The camera's H.264 forwarded as it comes. `synced`: the camera's first IDR since it
    /// (re)started has been seen; pictures before it are useless to a decoder and dropped.
    Passthrough { synced: bool },
}

/// Name shown in the status while the camera's H.264 is forwarded unchanged.
const PASSTHROUGH: &str = "passthrough";

/// State owned by the media thread.
struct MediaLoop {
    ports: MediaPorts,
    counters: Arc<MediaCounters>,
    kind: EncoderKind,
    software: SoftwareSettings,
    quality: u8,
    /// Largest side H.264 is decoded at, for a still or to re-encode (its SPS is read first).
    max_decode_side: u32,
    /// The last SPS of re-encoded H.264 was over `max_decode_side`: its pictures are dropped
    /// until an SPS within it comes.
    oversize_sps: Option<(u32, u32)>,
    start: Instant,
    mode: Mode,
    policy: KeyframePolicy,
    encoder: Option<OpenH264Encoder>,
    /// Decoder for H.264 input when `kind = "software"` (re-encoding was asked for).
    decoder: Option<openh264::decoder::Decoder>,
    /// MJPEG frames to I420 for the frames that come undecoded while someone watches (the
    /// decode thread decodes the others); its pictures come from the pool the decode thread's
    /// decoder uses (no per-frame allocation of a picture's size).
    mjpeg: MjpegDecoder,
    /// Set while pictures are encoded ([`Mode::Encoding`]): the decode thread decodes MJPEG
    /// only then. Written by this thread alone, after every frame.
    pictures_wanted: Arc<AtomicBool>,
    /// CPUs the decode thread keeps busy while pictures are encoded (1 for an MJPEG source):
    /// the encoder's `auto` thread count leaves them to it.
    decode_cores: usize,
    params: ParamSetInserter,
    camera_keyframe: SyncSender<()>,
    last_camera_keyframe_request: Option<Instant>,
    latest: Latest,
    state: CameraState,
    slate_size: (u32, u32),
    next_slate: Instant,
    fps_window: (Instant, u32),
    warned_reencode: bool,
}

impl MediaLoop {
    fn new(
        config: &Config,
        spec: &SourceSpec,
        ports: MediaPorts,
        camera_keyframe: SyncSender<()>,
    ) -> Result<Self, PipelineError> {
        let now = Instant::now();
        let cam = &config.camera;
        let software = SoftwareSettings {
            bitrate_kbps: config.encoder.bitrate_kbps,
            fps: cam.fps,
            threads: config.encoder.threads,
        };
        // Fail early (at start, not at the first frame) if openh264 cannot be set up.
        let encoder = Some(OpenH264Encoder::new(software)?);
        let counters = ports.counters.clone();
        let epoch = ports.epoch;
        ports.status.send_modify(|s| {
            s.state = CameraState::Starting;
            s.source = spec.label(cam);
        });
        counters.record_progress();
        Ok(Self {
            ports,
            counters,
            kind: config.encoder.kind,
            software,
            quality: config.snapshot.quality,
            max_decode_side: super::still::max_still_side(cam),
            oversize_sps: None,
            start: epoch,
            mode: Mode::Idle,
            policy: KeyframePolicy::new(config.encoder.keyframe_interval, MIN_FORCED_GAP),
            encoder,
            decoder: None,
            mjpeg: MjpegDecoder::new(BufferPool::new(capture::DECODED_POOL))
                .with_max_side(super::still::max_still_side(cam)),
            pictures_wanted: Arc::new(AtomicBool::new(false)),
            decode_cores: 0,
            params: ParamSetInserter::new(),
            camera_keyframe,
            last_camera_keyframe_request: None,
            latest: Latest::None,
            state: CameraState::Starting,
            slate_size: (even(cam.width), even(cam.height)),
            next_slate: now + FIRST_FRAME_GRACE,
            fps_window: (now, 0),
            warned_reencode: false,
        })
    }

    /// The decode thread's MJPEG stage: a decoder drawing from this loop's pool, told by this
    /// loop when pictures are wanted.
    fn capture_decoding(&self) -> MjpegDecoding {
        MjpegDecoding::new(self.mjpeg.sharing_pool(), self.pictures_wanted.clone())
    }

    fn run(mut self, events: CaptureEvents, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            match events.recv_timeout(self.wait(Instant::now())) {
                Ok(event) => self.handle_event(event, Instant::now()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.handle_timeout(Instant::now());
        }
        self.shut_down();
    }

    /// How long to wait for the next capture event: until the next slate picture while the
    /// camera is not streaming, at most a [`TICK`].
    fn wait(&self, now: Instant) -> Duration {
        if self.state == CameraState::Streaming {
            TICK
        } else {
            self.next_slate.saturating_duration_since(now).min(TICK)
        }
    }

    /// Work that does not wait for a camera frame: the slate, queued requests, the rate, the
    /// watchdog's progress.
    fn handle_timeout(&mut self, now: Instant) {
        if self.state != CameraState::Streaming && now >= self.next_slate {
            self.next_slate = now.max(self.next_slate) + Duration::from_secs(1) / SLATE_FPS;
            self.publish_slate(now);
        }
        self.take_keyframe_requests(now);
        // Drained after the requests: only a camera that makes its own IDRs acts on it now; a
        // software picture asks the policy again when it is encoded.
        self.policy.handle_timeout(now);
        let due = self.policy.poll_output();
        if self.mode == (Mode::Passthrough { synced: true }) {
            self.ask_camera_if_requested(due, now);
        }
        self.serve_stills();
        self.update_fps(now);
        self.counters.record_progress();
    }

    fn serve_stills(&mut self) {
        while let Ok(req) = self.ports.stills.try_recv() {
            let still = self
                .latest
                .still(self.quality, req.max_bytes, self.max_decode_side);
            if still.is_ok() {
                self.counters.stills.fetch_add(1, Ordering::Relaxed);
            }
            let _ = req.reply.send(still);
        }
    }

    /// Cancelled or the capture thread is gone: answer what is queued, say so in the status.
    fn shut_down(&mut self) {
        // Requests still queued get a clear answer rather than a dropped channel.
        while let Ok(req) = self.ports.stills.try_recv() {
            let _ = req.reply.send(Err(StillError::Stopped));
        }
        self.ports.status.send_modify(|s| {
            s.state = CameraState::Stopped;
            s.fps_measured = 0.0;
        });
    }

    fn handle_event(&mut self, event: CaptureEvent, now: Instant) {
        match event {
            CaptureEvent::Started(info) => {
                if let Mode::Passthrough { synced } = &mut self.mode {
                    *synced = false;
                }
                self.ports.status.send_modify(|s| {
                    s.source = info.name.clone();
                    s.format = info.format.clone();
                    if info.width > 0 && info.height > 0 {
                        (s.width, s.height) = (info.width, info.height);
                    }
                });
            }
            CaptureEvent::Frame(frame) => self.handle_frame(frame, now),
            CaptureEvent::Lost { reason, .. } => {
                if self.state != CameraState::NoSignal {
                    self.counters.camera_losses.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%reason, "no signal");
                    self.set_state(CameraState::NoSignal);
                    self.restart_stream();
                    self.next_slate = now;
                }
            }
        }
    }

    fn set_state(&mut self, state: CameraState) {
        if self.state != state {
            self.state = state;
            self.ports.status.send_modify(|s| s.state = state);
        }
    }

    fn handle_frame(&mut self, frame: CapturedFrame, now: Instant) {
        if self.state != CameraState::Streaming {
            self.set_state(CameraState::Streaming);
            // The slate's encoder stream ends; whatever comes next starts with an IDR.
            self.restart_stream();
        }
        self.fps_window.1 += 1;
        let timestamp = frame.captured_at.saturating_duration_since(self.start);
        let mjpeg = matches!(
            frame.payload,
            Payload::Mjpeg(_) | Payload::DecodedMjpeg { .. }
        );
        self.leave_cores_to_decoding(usize::from(mjpeg));
        match frame.payload {
            Payload::I420(picture) => {
                self.warn_if_passthrough_impossible("raw");
                self.handle_picture(&picture, timestamp, now, false);
                self.latest = Latest::Raw(picture);
            }
            Payload::Mjpeg(jpeg) => self.handle_mjpeg(jpeg, None, timestamp, now),
            Payload::DecodedMjpeg { jpeg, picture } => {
                self.handle_mjpeg(jpeg, Some(picture), timestamp, now)
            }
            Payload::H264(au) if self.kind == EncoderKind::Software => {
                self.reencode(au, timestamp, now)
            }
            Payload::H264(au) => self.pass_through(au, timestamp, now),
        }
        // What the decode thread does with the next JPEG follows the mode this frame left.
        let wanted = matches!(self.mode, Mode::Encoding { .. });
        self.pictures_wanted.store(wanted, Ordering::Relaxed);
    }

    /// A camera's JPEG, with the decode thread's decode of it if it made one: encoded if
    /// anyone watches, kept for stills either way. Unwatched, it is not decoded here (one the
    /// decode thread decoded before it saw that nobody watches is dropped).
    fn handle_mjpeg(
        &mut self,
        jpeg: Bytes,
        decoded: Option<Result<I420, DecodeError>>,
        timestamp: Duration,
        now: Instant,
    ) {
        self.warn_if_passthrough_impossible("MJPEG");
        if self.enter_software_mode() {
            // Undecoded while watched: sent before the decode thread saw the flag.
            let decoded = decoded.unwrap_or_else(|| self.mjpeg.decode(&jpeg));
            match decoded {
                Ok(picture) => self.handle_picture(&picture, timestamp, now, false),
                Err(e) => {
                    self.counters.frames_corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "bad MJPEG frame skipped");
                }
            }
        }
        self.latest = Latest::Jpeg(jpeg);
    }

    fn warn_if_passthrough_impossible(&mut self, what: &str) {
        if self.kind == EncoderKind::Passthrough && !self.warned_reencode {
            self.warned_reencode = true;
            tracing::warn!(
                input = what,
                "[encoder] kind = \"passthrough\" needs an H.264 source; encoding in software"
            );
        }
    }

    /// H.264 from the camera, sent as it came (SPS/PPS added before IDRs that lack them).
    fn pass_through(&mut self, au: Bytes, timestamp: Duration, now: Instant) {
        let (data, keyframe) = self.params.process(au);
        let starts = keyframe && self.params.ready();
        let synced = match self.mode {
            Mode::Passthrough { synced } => synced || starts,
            Mode::Idle | Mode::Encoding { .. } => starts,
        };
        self.mode = Mode::Passthrough { synced };
        if !synced {
            // Until the camera's first IDR (after start or a slate), its pictures are useless.
            self.ask_camera_for_keyframe(now);
            return;
        }
        self.set_encoder_name(PASSTHROUGH);
        // Copied once into the form every consumer shares; stills keep the camera's `Bytes`.
        let shared = Arc::from(&data[..]);
        self.latest.push_h264(data, keyframe);
        let due = self.idr_due(now);
        if keyframe {
            self.keyframe_sent(due.unwrap_or(KeyframeCause::Periodic), now);
        } else {
            self.ask_camera_if_requested(due, now);
        }
        self.publish(shared, keyframe, timestamp);
    }

    /// The policy says an IDR is due: a viewer's request goes to the camera; the camera keeps
    /// its own GOP otherwise.
    fn ask_camera_if_requested(&mut self, due: Option<KeyframeCause>, now: Instant) {
        if due.is_some_and(|cause| cause != KeyframeCause::Periodic) {
            self.ask_camera_for_keyframe(now);
        }
    }

    fn ask_camera_for_keyframe(&mut self, now: Instant) {
        let due = self
            .last_camera_keyframe_request
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_FORCED_GAP);
        if due {
            self.last_camera_keyframe_request = Some(now);
            let _ = self.camera_keyframe.try_send(());
        }
    }

    /// H.264 input with `kind = "software"`: decode and encode again (costly; asked for).
    fn reencode(&mut self, au: Bytes, timestamp: Duration, now: Instant) {
        if !self.within_decode_budget(&au) {
            return;
        }
        if self.decoder.is_none() {
            self.decoder = openh264::decoder::Decoder::new().ok();
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        // Every access unit is decoded, watched or not: the next ones refer to it.
        let picture = match decoder.decode(&au) {
            Ok(Some(yuv)) => crate::picture::yuv::from_yuv_source(&yuv).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "H.264 decode failed");
                None
            }
        };
        if let Some(picture) = picture {
            self.handle_picture(&picture, timestamp, now, false);
            self.latest = Latest::Raw(picture);
        }
    }

    /// Whether `au` may be decoded: the decoder allocates for the size its SPS announces, so an
    /// SPS over [`max_still_side`](super::still::max_still_side) stops decoding (and drops the
    /// decoder's state) until an SPS within it comes.
    fn within_decode_budget(&mut self, au: &Bytes) -> bool {
        let max = self.max_decode_side;
        match largest_sps_dimensions([au]) {
            Some((w, h)) if w > max || h > max => {
                if self.oversize_sps != Some((w, h)) {
                    tracing::warn!(
                        width = w,
                        height = h,
                        max_side = max,
                        "H.264 pictures too large to decode; dropped until the source is smaller"
                    );
                }
                self.oversize_sps = Some((w, h));
                self.decoder = None;
            }
            Some(_) => self.oversize_sps = None,
            None => {}
        }
        self.oversize_sps.is_none()
    }

    fn publish_slate(&mut self, now: Instant) {
        let picture = testsrc::slate(self.slate_size.0, self.slate_size.1);
        let timestamp = now.saturating_duration_since(self.start);
        self.handle_picture(&picture, timestamp, now, true);
        self.latest = Latest::Raw(picture);
    }

    /// Whether anyone receives the broadcast (a query: no state changes).
    fn watched(&self) -> bool {
        self.ports.frames.receiver_count() > 0
    }

    /// Raw pictures are coming: encode them ([`Mode::Encoding`]) if anyone watches, else go
    /// [`Mode::Idle`]. Coming out of idle or passthrough, the first encoded picture is an IDR.
    /// Returns whether pictures are encoded now.
    fn enter_software_mode(&mut self) -> bool {
        let watched = self.watched();
        self.mode = match (self.mode, watched) {
            (_, false) => Mode::Idle,
            (Mode::Idle, true) => Mode::Encoding {
                pending_idr: Some(KeyframeCause::NewViewer),
            },
            (Mode::Passthrough { .. }, true) => Mode::Encoding {
                pending_idr: Some(KeyframeCause::Periodic),
            },
            (mode @ Mode::Encoding { .. }, true) => mode,
        };
        // The status names the encoder that runs (or will, once someone watches).
        self.set_encoder_name(OpenH264Encoder::NAME);
        watched
    }

    /// The encoded stream restarts (a new source, a new encoder): the next encoded picture is
    /// an IDR. Idle and passthrough need nothing: leaving them forces one.
    fn restart_stream(&mut self) {
        if let Mode::Encoding { pending_idr } = &mut self.mode {
            pending_idr.get_or_insert(KeyframeCause::Periodic);
        }
    }

    /// Whether the picture at `now` must be an IDR, and the cause it is counted under: a
    /// viewer's request or the GOP (the policy), else a restart of the stream (the mode).
    fn idr_due(&mut self, now: Instant) -> Option<KeyframeCause> {
        // Requests that arrived with this picture (a new viewer's) are answered by it.
        self.take_keyframe_requests(now);
        self.policy.handle_timeout(now);
        let restart = match self.mode {
            Mode::Encoding { pending_idr } => pending_idr,
            Mode::Idle | Mode::Passthrough { .. } => None,
        };
        self.policy.poll_output().or(restart)
    }

    /// An IDR went out at `now`: count it under `cause`; neither the policy nor the mode owes
    /// another.
    fn keyframe_sent(&mut self, cause: KeyframeCause, now: Instant) {
        self.counters.record_keyframe(cause);
        self.policy.handle_keyframe_sent(now);
        if let Mode::Encoding { pending_idr } = &mut self.mode {
            *pending_idr = None;
        }
    }

    /// A raw picture: its size goes to the status; it is encoded if anyone watches.
    fn handle_picture(&mut self, picture: &I420, timestamp: Duration, now: Instant, slate: bool) {
        let size = (picture.width(), picture.height());
        if !slate {
            self.slate_size = size;
        }
        self.ports.status.send_if_modified(|s| {
            let changed = (s.width, s.height) != size;
            (s.width, s.height) = size;
            changed
        });
        if self.enter_software_mode() {
            self.encode(picture, timestamp, now, slate);
        }
    }

    fn encode(&mut self, picture: &I420, timestamp: Duration, now: Instant, slate: bool) {
        let due = self.idr_due(now);
        let Some(encoder) = self.encoder() else {
            return;
        };
        let started = Instant::now();
        let result = encoder.encode(picture, timestamp.as_millis() as u64, due.is_some());
        self.counters.record_encode_time(started.elapsed());
        match result {
            Ok(Some(out)) => {
                if out.keyframe {
                    self.keyframe_sent(due.unwrap_or(KeyframeCause::Periodic), now);
                }
                if slate {
                    self.counters.frames_slate.fetch_add(1, Ordering::Relaxed);
                }
                self.publish(out.data, out.keyframe, timestamp);
            }
            Ok(None) => {
                self.counters
                    .frames_encoder_skipped
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "encoding failed; frame skipped");
                // A fresh encoder next time, starting with an IDR.
                self.encoder = None;
                self.restart_stream();
            }
        }
    }

    /// The software encoder, made again if the last one failed.
    fn encoder(&mut self) -> Option<&mut OpenH264Encoder> {
        if self.encoder.is_none() {
            match OpenH264Encoder::new(self.software) {
                Ok(mut e) => {
                    e.leave_cores(self.decode_cores);
                    self.encoder = Some(e);
                }
                Err(e) => tracing::error!(error = %e, "software encoder unavailable"),
            }
        }
        self.encoder.as_mut()
    }

    /// The source's pictures are decoded on the decode thread (`cores` 1) or not (0). Only
    /// changes when the source does, so the stream restarts with an IDR anyway; if the
    /// encoder's thread count changes with it, the next picture must be one regardless.
    fn leave_cores_to_decoding(&mut self, cores: usize) {
        if self.decode_cores != cores {
            self.decode_cores = cores;
            if let Some(encoder) = self.encoder.as_mut() {
                encoder.leave_cores(cores);
            }
            self.restart_stream();
        }
    }

    fn take_keyframe_requests(&mut self, now: Instant) {
        while let Ok(cause) = self.ports.keyframes.try_recv() {
            self.policy.handle_request(cause, now);
        }
    }

    fn set_encoder_name(&mut self, name: &'static str) {
        self.ports.status.send_if_modified(|s| {
            if s.encoder != name {
                s.encoder = name.to_string();
                true
            } else {
                false
            }
        });
    }

    fn publish(&mut self, data: Arc<[u8]>, keyframe: bool, timestamp: Duration) {
        self.counters.frames_encoded.fetch_add(1, Ordering::Relaxed);
        // No receivers is fine (nobody watching); the frame is simply not kept.
        let _ = self.ports.frames.send(EncodedFrame {
            data,
            keyframe,
            timestamp,
        });
    }

    fn update_fps(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.fps_window.0);
        if elapsed >= Duration::from_secs(1) {
            let fps = self.fps_window.1 as f32 / elapsed.as_secs_f32();
            self.ports.status.send_if_modified(|s| {
                let changed = (s.fps_measured - fps).abs() > 0.05;
                s.fps_measured = fps;
                changed
            });
            self.fps_window = (now, 0);
        }
    }
}

/// Encode `frames` pictures of the test pattern as the pipeline would, on virtual time (picture
/// `n` is at `n / fps` seconds): the keyframe policy, openh264, SPS/PPS on IDRs. Deterministic,
/// for file tests and the benchmark's floor comparison.
pub fn encode_test_pattern(
    width: u32,
    height: u32,
    fps: u32,
    frames: u64,
    encoder: &crate::config::EncoderConfig,
) -> Result<Vec<EncodedFrame>, PipelineError> {
    let source = testsrc::TestSource::new(width, height, fps)
        .map_err(|e| EncodeError::Setup(e.to_string()))?
        .unpaced();
    let mut enc = OpenH264Encoder::new(SoftwareSettings {
        bitrate_kbps: encoder.bitrate_kbps,
        fps,
        threads: encoder.threads,
    })?;
    let mut policy = KeyframePolicy::new(encoder.keyframe_interval, MIN_FORCED_GAP);
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(frames as usize);
    for n in 0..frames {
        let at = Duration::from_secs(n) / fps.max(1);
        let now = t0 + at;
        let picture = source.picture(n, std::time::UNIX_EPOCH + at);
        policy.handle_timeout(now);
        let force = policy.poll_output().is_some();
        if let Some(pic) = enc.encode(&picture, at.as_millis() as u64, force)? {
            if pic.keyframe {
                policy.handle_keyframe_sent(now);
            }
            out.push(EncodedFrame {
                data: pic.data,
                keyframe: pic.keyframe,
                timestamp: at,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CapturedFrame;
    use std::sync::mpsc::Receiver;

    fn media_loop(kind: EncoderKind) -> (MediaLoop, MediaHandle, Receiver<()>) {
        let mut config = Config::default();
        config.camera.width = 160;
        config.camera.height = 120;
        config.encoder.kind = kind;
        let (handle, ports) = channel(ChannelLimits::default());
        let (camera_tx, camera_rx) = std::sync::mpsc::sync_channel(1);
        let media = MediaLoop::new(&config, &SourceSpec::Testsrc, ports, camera_tx).unwrap();
        (media, handle, camera_rx)
    }

    fn frame(payload: Payload, at: Instant) -> CaptureEvent {
        CaptureEvent::Frame(CapturedFrame {
            payload,
            captured_at: at,
        })
    }

    fn raw(at: Instant) -> CaptureEvent {
        frame(
            Payload::I420(I420::filled(160, 120, 80, 100, 150).unwrap()),
            at,
        )
    }

    fn keyframes(handle: &MediaHandle, cause: KeyframeCause) -> u64 {
        MediaCounters::get(&handle.counters().keyframes[cause.index()])
    }

    const FRAME: Duration = Duration::from_millis(33);

    #[test]
    fn software_pictures_idle_unwatched_and_resume_with_a_new_viewers_idr() {
        let (mut media, handle, _) = media_loop(EncoderKind::Auto);
        let t0 = Instant::now();
        media.handle_event(raw(t0), t0);
        assert_eq!(media.mode, Mode::Idle);
        assert_eq!(MediaCounters::get(&handle.counters().frames_encoded), 0);

        let mut sub = handle.subscribe();
        let t1 = t0 + FRAME;
        media.handle_event(raw(t1), t1);
        assert_eq!(media.mode, Mode::Encoding { pending_idr: None });
        assert_eq!(keyframes(&handle, KeyframeCause::NewViewer), 1);
        let first = sub.rx.try_recv().unwrap();
        assert!(first.keyframe);

        // Nobody left, somebody came back 100 ms later: an IDR at once, whatever the 500 ms gap.
        drop(sub);
        let t2 = t1 + FRAME;
        media.handle_event(raw(t2), t2);
        assert_eq!(media.mode, Mode::Idle);
        let mut sub = handle.subscribe();
        let t3 = t2 + FRAME;
        media.handle_event(raw(t3), t3);
        assert!(sub.rx.try_recv().unwrap().keyframe);
        assert_eq!(keyframes(&handle, KeyframeCause::NewViewer), 2);

        // The camera is lost: the slate's first picture is an IDR too, again within the gap.
        let t4 = t3 + FRAME;
        let lost = CaptureEvent::Lost {
            reason: "unplugged".into(),
            retry_in: Duration::from_secs(1),
        };
        media.handle_event(lost, t4);
        assert_eq!(
            media.mode,
            Mode::Encoding {
                pending_idr: Some(KeyframeCause::Periodic)
            }
        );
        media.handle_timeout(t4);
        assert!(
            sub.rx.try_recv().unwrap().keyframe,
            "the slate starts at an IDR"
        );
        assert_eq!(keyframes(&handle, KeyframeCause::Periodic), 1);
    }

    #[test]
    fn corrupt_mjpeg_frames_are_counted_and_skipped_and_the_stream_goes_on() {
        let (mut media, handle, _) = media_loop(EncoderKind::Auto);
        let mut sub = handle.subscribe();
        let picture = I420::filled(160, 120, 80, 100, 150).unwrap();
        let jpeg = Bytes::from(super::super::jpeg::encode_i420(&picture, 80).unwrap());
        let mjpeg = |data: Bytes, at| frame(Payload::Mjpeg(data), at);
        let t0 = Instant::now();
        let bad = [
            jpeg.slice(..jpeg.len() / 2),
            Bytes::from_static(&[0xff, 0xd8, 0xff, 0xd9]),
            Bytes::from_static(b"not a jpeg at all"),
        ];
        for (i, data) in bad.into_iter().enumerate() {
            let at = t0 + FRAME * i as u32;
            media.handle_event(mjpeg(data, at), at);
        }
        let counters = handle.counters();
        assert_eq!(MediaCounters::get(&counters.frames_corrupt), 3);
        assert!(sub.rx.try_recv().is_err(), "nothing was encoded from them");
        let t1 = t0 + FRAME * 3;
        media.handle_event(mjpeg(jpeg, t1), t1);
        assert!(
            sub.rx.try_recv().unwrap().keyframe,
            "the next good frame starts the stream"
        );
        assert_eq!(MediaCounters::get(&counters.frames_corrupt), 3);
        assert_eq!(MediaCounters::get(&counters.frames_encoded), 1);
    }

    #[test]
    fn mjpeg_decoded_by_the_decode_thread_is_encoded_as_it_comes_and_the_flag_follows_viewers() {
        let (mut media, handle, _) = media_loop(EncoderKind::Auto);
        fn media_wanted(media: &MediaLoop) -> bool {
            media.pictures_wanted.load(Ordering::Relaxed)
        }
        // The decode thread's decoder: the same pool, a scratch buffer of its own.
        let mut capture = media.mjpeg.sharing_pool();
        let picture = I420::filled(160, 120, 80, 100, 150).unwrap();
        let jpeg = Bytes::from(super::super::jpeg::encode_i420(&picture, 80).unwrap());
        let mut decoded = |jpeg: &Bytes, at| {
            let payload = Payload::DecodedMjpeg {
                jpeg: jpeg.clone(),
                picture: capture.decode(jpeg),
            };
            frame(payload, at)
        };
        let counters = handle.counters();
        let t0 = Instant::now();

        // Nobody watches: not decoded anywhere, kept for stills.
        media.handle_event(frame(Payload::Mjpeg(jpeg.clone()), t0), t0);
        assert!(!media_wanted(&media));
        assert_eq!(media.mjpeg.frames_decoded(), 0);
        assert!(matches!(&media.latest, Latest::Jpeg(j) if *j == jpeg));

        // A viewer comes; the frame on its way was not decoded: the media thread decodes it
        // (no wait for the new viewer) and tells the decode thread to decode from now on.
        let mut sub = handle.subscribe();
        let t1 = t0 + FRAME;
        media.handle_event(frame(Payload::Mjpeg(jpeg.clone()), t1), t1);
        assert!(sub.rx.try_recv().unwrap().keyframe);
        assert_eq!(media.mjpeg.frames_decoded(), 1);
        assert!(media_wanted(&media));

        // Decoded on the decode thread: encoded as it is, not decoded again here.
        let t2 = t1 + FRAME;
        media.handle_event(decoded(&jpeg, t2), t2);
        assert!(sub.rx.try_recv().is_ok());
        assert_eq!(
            media.mjpeg.frames_decoded(),
            1,
            "decoded once, on the decode thread"
        );

        // A corrupt frame the decode thread could not decode is counted and skipped.
        let t3 = t2 + FRAME;
        media.handle_event(decoded(&jpeg.slice(..jpeg.len() / 2), t3), t3);
        assert!(sub.rx.try_recv().is_err());
        assert_eq!(MediaCounters::get(&counters.frames_corrupt), 1);
        assert_eq!(MediaCounters::get(&counters.frames_encoded), 2);

        // The viewer leaves: the decode thread's last picture is dropped, the flag cleared.
        drop(sub);
        let t4 = t3 + FRAME;
        media.handle_event(decoded(&jpeg, t4), t4);
        assert!(!media_wanted(&media));
        assert_eq!(MediaCounters::get(&counters.frames_encoded), 2);
        assert!(matches!(&media.latest, Latest::Jpeg(j) if *j == jpeg));
    }

    #[test]
    fn reencoding_refuses_h264_whose_sps_is_over_the_decode_budget() {
        let (mut media, handle, _) = media_loop(EncoderKind::Software);
        let _sub = handle.subscribe();
        // SPS for 8192x8192 (512x512 macroblocks), then a PPS and an IDR slice.
        let sps = [
            0x67, 0x42, 0xc0, 0x33, 0xf4, 0x00, 0x40, 0x00, 0x08, 0x03, 0x20,
        ];
        let huge = [
            &[0, 0, 0, 1][..],
            &sps,
            &[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80],
            &[0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x33, 0xff],
        ]
        .concat();
        let t0 = Instant::now();
        media.handle_event(frame(Payload::H264(Bytes::from(huge)), t0), t0);
        assert!(media.decoder.is_none(), "nothing was handed to the decoder");
        assert_eq!(media.oversize_sps, Some((8192, 8192)));
        // A picture of an allowed size decodes and is encoded again.
        let mut enc = OpenH264Encoder::new(media.software).unwrap();
        let pic = I420::filled(160, 120, 80, 100, 150).unwrap();
        let small = Bytes::copy_from_slice(&enc.encode(&pic, 0, true).unwrap().unwrap().data);
        let t1 = t0 + FRAME;
        media.handle_event(frame(Payload::H264(small), t1), t1);
        assert_eq!(media.oversize_sps, None);
        assert!(media.decoder.is_some());
        assert_eq!(MediaCounters::get(&handle.counters().frames_encoded), 1);
    }

    #[test]
    fn passthrough_waits_for_the_cameras_idr_and_forwards_requests_to_the_camera() {
        let (mut media, handle, camera) = media_loop(EncoderKind::Auto);
        let nal = |t: u8, body: &[u8]| [&[0, 0, 0, 1, t][..], body].concat();
        let idr = [
            nal(0x67, &[66, 0xc0, 31]),
            nal(0x68, &[0xce]),
            nal(0x65, &[0x88]),
        ]
        .concat();
        let p = nal(0x41, &[0x9a]);
        let h264 = |au: &Vec<u8>, at| frame(Payload::H264(Bytes::from(au.clone())), at);
        let mut sub = handle.subscribe();
        let t0 = Instant::now();

        media.handle_event(h264(&p, t0), t0);
        assert_eq!(media.mode, Mode::Passthrough { synced: false });
        assert!(camera.try_recv().is_ok(), "asked the camera for its IDR");
        assert!(sub.rx.try_recv().is_err(), "a P-frame before it is useless");

        let t1 = t0 + FRAME;
        media.handle_event(h264(&idr, t1), t1);
        assert_eq!(media.mode, Mode::Passthrough { synced: true });
        assert!(sub.rx.try_recv().unwrap().keyframe);
        assert_eq!(keyframes(&handle, KeyframeCause::NewViewer), 1);
        assert_eq!(handle.status().encoder, PASSTHROUGH);

        // A PLI 100 ms after the IDR waits for the gap, then goes to the camera on a tick.
        handle.request_keyframe(KeyframeCause::Pli);
        let t2 = t1 + Duration::from_millis(100);
        media.handle_event(h264(&p, t2), t2);
        assert!(sub.rx.try_recv().is_ok());
        assert!(camera.try_recv().is_err(), "within 500 ms of the last IDR");
        let t3 = t1 + MIN_FORCED_GAP;
        media.handle_timeout(t3);
        assert!(camera.try_recv().is_ok(), "asked once the gap is over");
        media.handle_event(h264(&idr, t3 + FRAME), t3 + FRAME);
        assert_eq!(keyframes(&handle, KeyframeCause::Pli), 1);
        assert_eq!(
            handle
                .counters()
                .encode_time_buckets
                .iter()
                .map(MediaCounters::get)
                .sum::<u64>(),
            0,
            "openh264 never ran"
        );
    }
}
