//! The pipeline: one per camera. The capture thread (see `capture`) owns the source; the
//! `media` thread owns everything else: the encoder, the keyframe policy, the latest picture for
//! stills, the "no signal" slate, and the status. It publishes each access unit once on the
//! broadcast; viewers share the same `Bytes`.
//!
//! ```text
//! source ─(capture thread, bounded 2)─▶ media thread ─▶ broadcast ─▶ viewers
//!            ▲ force key frame                 ▲ keyframe requests, still requests (bounded)
//! ```
//!
//! Whatever the camera does, the pipeline runs: a lost camera turns into the slate (10 fps, an
//! IDR first), and the capture thread retries with backoff. Only cancellation stops it.
//!
//! The software encoder only runs while the broadcast has a receiver (someone watches):
//! capture, stills, the measured rate and the watchdog's progress go on regardless, but an
//! unwatched picture is not encoded (nor an MJPEG one decoded). The first picture encoded after
//! such an idle spell is an IDR, whatever the keyframe rate limit, so a new viewer starts at
//! once. H.264 passed through costs nothing and is always forwarded.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::encoder::{EncodeError, OpenH264Encoder, SoftwareSettings, VideoEncoder};
use super::keyframe::{KeyframePolicy, MIN_FORCED_GAP};
use super::still::Latest;
use super::{
    channel, CameraState, ChannelLimits, EncodedFrame, KeyframeCause, MediaCounters, MediaHandle,
    MediaPorts, StillError,
};
use crate::capture::{
    self, testsrc, CaptureEvent, CaptureThread, CapturedFrame, Payload, SourceSpec,
};
use crate::config::{Config, EncoderKind};
use crate::picture::annexb::ParamSetInserter;
use crate::picture::yuv::{even, I420};
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
    #[error("cannot start a pipeline thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error(transparent)]
    Encoder(#[from] EncodeError),
}

/// Owns the pipeline's threads. `join()` (or drop) stops them and waits.
pub struct PipelineGuard {
    cancel: CancellationToken,
    capture: Option<CaptureThread>,
    media: Option<OwnedThread>,
}

impl PipelineGuard {
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
    let (capture, events) = CaptureThread::spawn(
        spec.clone(),
        config.camera.clone(),
        kf_rx,
        ports.counters.capture_counters(),
        token.clone(),
    )?;
    let media = MediaLoop::new(config, &spec, ports, kf_tx)?;
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
        },
    ))
}

/// State owned by the media thread.
struct MediaLoop {
    ports: MediaPorts,
    counters: Arc<MediaCounters>,
    kind: EncoderKind,
    software: SoftwareSettings,
    quality: u8,
    start: Instant,
    policy: KeyframePolicy,
    encoder: Option<OpenH264Encoder>,
    /// Decoder for H.264 input when `kind = "software"` (re-encoding was asked for).
    decoder: Option<openh264::decoder::Decoder>,
    params: ParamSetInserter,
    /// Passthrough waits for the camera's IDR after (re)start before sending its frames.
    passthrough_synced: bool,
    camera_keyframe: SyncSender<()>,
    last_camera_keyframe_request: Option<Instant>,
    /// The next software-encoded picture must be an IDR (the stream switched source, or
    /// encoding resumes after nobody watched).
    force_idr: bool,
    /// Nobody watched the last picture, so it was not encoded.
    idle: bool,
    /// `force_idr` was set because encoding resumed (the IDR is counted as a new viewer's).
    resumed: bool,
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
        };
        // Fail early (at start, not at the first frame) if openh264 cannot be set up.
        let encoder = Some(OpenH264Encoder::new(software)?);
        let counters = ports.counters.clone();
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
            start: now,
            policy: KeyframePolicy::new(config.encoder.keyframe_interval, MIN_FORCED_GAP),
            encoder,
            decoder: None,
            params: ParamSetInserter::new(),
            passthrough_synced: false,
            camera_keyframe,
            last_camera_keyframe_request: None,
            force_idr: true,
            idle: false,
            resumed: false,
            latest: Latest::None,
            state: CameraState::Starting,
            slate_size: (even(cam.width), even(cam.height)),
            next_slate: now + FIRST_FRAME_GRACE,
            fps_window: (now, 0),
            warned_reencode: false,
        })
    }

    fn run(mut self, events: Receiver<CaptureEvent>, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let now = Instant::now();
            let wait = if self.state == CameraState::Streaming {
                TICK
            } else {
                self.next_slate.saturating_duration_since(now).min(TICK)
            };
            match events.recv_timeout(wait) {
                Ok(event) => self.handle_event(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if self.state != CameraState::Streaming && now >= self.next_slate {
                self.next_slate = now.max(self.next_slate) + Duration::from_secs(1) / SLATE_FPS;
                self.publish_slate(now);
            }
            self.take_keyframe_requests();
            while let Ok(req) = self.ports.stills.try_recv() {
                let still = self.latest.still(self.quality, req.max_bytes);
                if still.is_ok() {
                    self.counters
                        .stills
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = req.reply.send(still);
            }
            self.update_fps(now);
            self.counters.record_progress();
        }
        // Requests still queued get a clear answer rather than a dropped channel.
        while let Ok(req) = self.ports.stills.try_recv() {
            let _ = req.reply.send(Err(StillError::Stopped));
        }
        self.ports.status.send_modify(|s| {
            s.state = CameraState::Stopped;
            s.fps_measured = 0.0;
        });
    }

    fn handle_event(&mut self, event: CaptureEvent) {
        match event {
            CaptureEvent::Started(info) => {
                self.passthrough_synced = false;
                self.ports.status.send_modify(|s| {
                    s.source = info.name.clone();
                    s.format = info.format.clone();
                    if info.width > 0 && info.height > 0 {
                        (s.width, s.height) = (info.width, info.height);
                    }
                });
            }
            CaptureEvent::Frame(frame) => self.handle_frame(frame),
            CaptureEvent::Lost { reason, .. } => {
                if self.state != CameraState::NoSignal {
                    self.counters
                        .camera_losses
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(%reason, "no signal");
                    self.set_state(CameraState::NoSignal);
                    self.force_idr = true;
                    self.next_slate = Instant::now();
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

    fn handle_frame(&mut self, frame: CapturedFrame) {
        if self.state != CameraState::Streaming {
            self.set_state(CameraState::Streaming);
            // The slate's encoder stream ends; whatever comes next starts with an IDR.
            self.force_idr = true;
        }
        self.fps_window.1 += 1;
        let now = Instant::now();
        let timestamp = frame.captured_at.saturating_duration_since(self.start);
        match frame.payload {
            Payload::I420(picture) => {
                self.warn_if_passthrough_impossible("raw");
                self.encode(&picture, timestamp, now, false);
                self.latest = Latest::Raw(picture);
            }
            Payload::Mjpeg(jpeg) => {
                self.warn_if_passthrough_impossible("MJPEG");
                // Unwatched, the JPEG is kept for stills without being decoded.
                if self.watched() {
                    match super::jpeg::decode_to_i420(&jpeg) {
                        Ok(picture) => self.encode(&picture, timestamp, now, false),
                        Err(e) => tracing::debug!(error = %e, "bad MJPEG frame skipped"),
                    }
                }
                self.latest = Latest::Jpeg(jpeg);
            }
            Payload::H264(au) if self.kind == EncoderKind::Software => {
                self.reencode(au, timestamp, now)
            }
            Payload::H264(au) => self.pass_through(au, timestamp, now),
        }
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
        if keyframe && self.params.ready() {
            self.passthrough_synced = true;
        }
        if !self.passthrough_synced {
            // Until the camera's first IDR (after start or a slate), its pictures are useless.
            self.ask_camera_for_keyframe(now);
            return;
        }
        self.set_encoder_name("passthrough");
        self.latest.push_h264(data.clone(), keyframe);
        if keyframe {
            let cause = self
                .policy
                .poll_keyframe(now)
                .unwrap_or(KeyframeCause::Periodic);
            self.counters.record_keyframe(cause);
            self.policy.handle_keyframe_sent(now);
        } else if self.policy.has_pending() {
            self.ask_camera_for_keyframe(now);
        }
        self.publish(data, keyframe, timestamp);
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
        if self.decoder.is_none() {
            self.decoder = openh264::decoder::Decoder::new().ok();
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        let picture = match decoder.decode(&au) {
            Ok(Some(yuv)) => crate::picture::yuv::from_yuv_source(&yuv).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "H.264 decode failed");
                None
            }
        };
        if let Some(picture) = picture {
            self.encode(&picture, timestamp, now, false);
            self.latest = Latest::Raw(picture);
        }
    }

    fn publish_slate(&mut self, now: Instant) {
        let picture = testsrc::slate(self.slate_size.0, self.slate_size.1);
        let timestamp = now.saturating_duration_since(self.start);
        self.encode(&picture, timestamp, now, true);
        self.latest = Latest::Raw(picture);
    }

    /// Whether anyone receives the broadcast. When not, software encoding pauses; when someone
    /// comes back, the next encoded picture is forced to be an IDR.
    fn watched(&mut self) -> bool {
        let watched = self.ports.frames.receiver_count() > 0;
        if !watched {
            // The status names the encoder that will run (systemd status line, /health).
            self.set_encoder_name(encoder_name(self.state != CameraState::Streaming));
        }
        if watched && self.idle {
            self.force_idr = true;
            self.resumed = true;
        }
        self.idle = !watched;
        watched
    }

    fn encode(&mut self, picture: &I420, timestamp: Duration, now: Instant, slate: bool) {
        let size = (picture.width(), picture.height());
        if !slate && self.slate_size != size {
            self.slate_size = size;
        }
        self.ports.status.send_if_modified(|s| {
            let changed = (s.width, s.height) != size;
            (s.width, s.height) = size;
            changed
        });
        if !self.watched() {
            return;
        }
        if self.encoder.is_none() {
            match OpenH264Encoder::new(self.software) {
                Ok(e) => self.encoder = Some(e),
                Err(e) => {
                    tracing::error!(error = %e, "software encoder unavailable");
                    return;
                }
            }
        }
        // Requests that arrived with this picture (a new viewer's) are answered by it.
        self.take_keyframe_requests();
        let Some(encoder) = self.encoder.as_mut() else {
            return;
        };
        let due = self.policy.poll_keyframe(now);
        let force = due.is_some() || self.force_idr;
        let started = Instant::now();
        let result = encoder.encode(picture, timestamp.as_millis() as u64, force);
        self.counters.record_encode_time(started.elapsed());
        match result {
            Ok(Some(out)) => {
                if out.keyframe {
                    // After an idle spell the IDR is forced because someone subscribed.
                    let fallback = if std::mem::take(&mut self.resumed) {
                        KeyframeCause::NewViewer
                    } else {
                        KeyframeCause::Periodic
                    };
                    self.counters.record_keyframe(due.unwrap_or(fallback));
                    self.policy.handle_keyframe_sent(now);
                    self.force_idr = false;
                }
                if slate {
                    self.counters
                        .frames_slate
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.set_encoder_name(encoder_name(slate));
                self.publish(out.data, out.keyframe, timestamp);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "encoding failed; frame skipped");
                // A fresh encoder next time, starting with an IDR.
                self.encoder = None;
                self.force_idr = true;
            }
        }
    }

    fn take_keyframe_requests(&mut self) {
        while let Ok(cause) = self.ports.keyframes.try_recv() {
            self.policy.handle_request(cause);
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

    fn publish(&mut self, data: Bytes, keyframe: bool, timestamp: Duration) {
        self.counters
            .frames_encoded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

fn encoder_name(_slate: bool) -> &'static str {
    "openh264"
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
    })?;
    let mut policy = KeyframePolicy::new(encoder.keyframe_interval, MIN_FORCED_GAP);
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(frames as usize);
    for n in 0..frames {
        let at = Duration::from_secs(n) / fps.max(1);
        let now = t0 + at;
        let picture = source.picture(n, std::time::UNIX_EPOCH + at);
        let force = policy.poll_keyframe(now).is_some();
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
