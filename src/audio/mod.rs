//! Audio: one microphone, captured once and encoded once to Opus, fanned out to everyone who
//! sends sound (the RTC engine, each RTSP session) on a bounded broadcast, like video.
//!
//! One named thread (`audio`) owns the source ([`AudioSource`]: ALSA, an `exec` program, or the
//! test tone) and the encoder ([`encoder::OpusEncoder`]: 20 ms frames, in-band FEC). It wakes
//! once per `[audio] period_ms` (40 by default), encodes that period's 20 ms frames, joins
//! them into one Opus packet ([`encoder::OpusEncoder::combine`]; one datagram per receiver per
//! period) and publishes that as one [`AudioBatch`], so whoever sends it wakes once per period
//! too. Frames that cannot share a packet go in the same batch one packet each;
//! [`AudioSubscriber`] hands a batch out packet by packet. It behaves
//! like the camera's capture thread when the source goes away: it warns once, sends silence
//! (so receivers keep a running clock and the stream stays continuous) and reopens the source
//! with backoff, resuming by itself. While nobody subscribes, blocks are read and dropped (the
//! source keeps its pace) and nothing is encoded.
//!
//! Timestamps come from the video pipeline's clock ([`crate::media::MediaHandle::epoch`], handed
//! in as an `Instant`): a frame's [`AudioFrame::timestamp`] is the capture instant of its first
//! sample since that epoch, the same reckoning as [`crate::media::EncodedFrame::timestamp`],
//! so lips match at the receiver. [`Timeline`] keeps packets their length apart and re-anchors
//! when the source's clock drifts from the monotonic clock.

pub mod alsa;
pub mod encoder;
pub mod exec;
pub mod ogg;
pub mod tone;

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{AudioConfig, AudioExecFormat, AudioSourceKind};
use crate::thread::OwnedThread;

use encoder::{frame_samples, LossPlan, OpusEncoder, FRAME_MS};

/// RTP clock rate of Opus (RFC 7587): 48 kHz whatever the capture rate.
pub const RTP_CLOCK: u32 = 48_000;
/// One frame's length.
pub const FRAME: Duration = Duration::from_millis(FRAME_MS as u64);
/// One frame's length in RTP time (48 kHz).
pub const FRAME_RTP_SAMPLES: u32 = RTP_CLOCK / (1000 / FRAME_MS);
/// Frames buffered for the slowest subscriber (one second) before it loses its place.
pub const BROADCAST_FRAMES: usize = 50;
/// Longest period (`[audio] period_ms`): three frames.
pub const MAX_PERIOD_FRAMES: usize = 3;
/// A timeline this far off the clock is re-anchored (a source's clock drifts, or it stalled).
const RESYNC: Duration = Duration::from_millis(60);

/// One Opus packet, as every receiver gets it: a period's 20 ms frames joined (40 ms by
/// default), or one frame where they could not be joined, or what an Ogg/Opus program sent.
#[derive(Debug, Clone)]
pub struct AudioFrame {
    /// The Opus packet.
    pub data: Bytes,
    /// Capture instant of its first sample, since the shared media epoch (drives RTP time).
    pub timestamp: Duration,
    /// Its length in 48 kHz samples (960 per 20 ms frame).
    pub samples: u32,
}

impl AudioFrame {
    /// The 20 ms frames it carries, as counters count them (a shorter packet counts one).
    pub fn frames(&self) -> u64 {
        u64::from(self.samples.div_ceil(FRAME_RTP_SAMPLES).max(1))
    }
}

/// Why an audio source failed.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The device or program could not be opened.
    #[error("cannot open the audio source: {0}")]
    Open(String),
    /// The device went away or the program ended.
    #[error("the audio source ended: {0}")]
    Ended(String),
    /// Nothing arrived for this long.
    #[error("no audio for {0:?}")]
    Stalled(Duration),
    /// Reading failed.
    #[error("reading audio failed: {0}")]
    Io(#[from] std::io::Error),
    /// The Opus encoder refused its settings or a frame.
    #[error("Opus encoder: {0}")]
    Encoder(String),
}

/// The frames of one period (one wake-up of the audio thread), as the broadcast carries them.
pub type AudioBatch = Arc<[AudioFrame]>;

/// What a source hands over.
#[derive(Debug)]
pub enum Block {
    /// The caller's buffer now holds one period of samples (whole 20 ms frames); `at` is its
    /// first sample's capture instant.
    Pcm {
        /// When the first sample was captured.
        at: Instant,
    },
    /// An Opus packet to pass through (Ogg/Opus from a program).
    Opus {
        /// The packet.
        packet: Bytes,
        /// When it arrived.
        at: Instant,
    },
}

/// A source of sound: `read` blocks for one period (at most about a second).
pub trait AudioSource {
    /// How logs and `/health` name it.
    fn name(&self) -> String;
    /// Fill `pcm` (one period, interleaved) or hand over a packet.
    fn read(&mut self, pcm: &mut [i16]) -> Result<Block, AudioError>;
}

/// What `[audio] source` resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSpec {
    /// No audio.
    None,
    /// This ALSA capture device.
    Alsa(String),
    /// The `[audio] exec` program.
    Exec,
    /// The test tone.
    Test,
}

/// Resolve `[audio] source`: `auto` looks for the ALSA card on the camera's USB device
/// (`camera`: the V4L2 node the pipeline opened, if any).
pub fn resolve(audio: &AudioConfig, camera: Option<&Path>) -> AudioSpec {
    match audio.source {
        AudioSourceKind::None => AudioSpec::None,
        AudioSourceKind::Alsa => AudioSpec::Alsa(audio.device.clone()),
        AudioSourceKind::Exec => AudioSpec::Exec,
        AudioSourceKind::Test => AudioSpec::Test,
        AudioSourceKind::Auto => {
            match camera.and_then(|c| alsa::camera_microphone(Path::new("/sys"), c)) {
                Some(device) => {
                    tracing::info!(%device, "the camera's microphone found");
                    AudioSpec::Alsa(device)
                }
                None => AudioSpec::None,
            }
        }
    }
}

/// The audio state as `/health` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AudioStatus {
    /// `starting`, `capturing`, `lost` (silence sent, retrying), `stopped`.
    pub state: &'static str,
    /// e.g. `alsa hw:CARD=C920,DEV=0`, `test tone`.
    pub source: String,
}

impl AudioStatus {
    /// Every [`state`](Self::state), in the order `/metrics` lists them.
    pub const STATES: [&'static str; 4] = ["starting", "capturing", "lost", "stopped"];
}

/// The audio pipeline's state and counters at one instant, for `/health` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AudioReport {
    /// The state and the source's name.
    pub status: AudioStatus,
    /// Channels captured (1 or 2).
    pub channels: u32,
    /// Opus frames published (captured and silence).
    pub frames: u64,
    /// Of those, silence sent while the source was gone.
    pub silence: u64,
    /// Times the source was lost.
    pub losses: u64,
    /// Subscriptions to the frames now: one per RTSP session playing the audio track, and one
    /// for the WebRTC engine while any viewer takes audio (it fans out to all of them).
    pub listeners: u64,
    /// Packet loss in-band FEC is coded for, in percent: the worst a receiver reported lately
    /// (0: none reported, no redundancy sent).
    pub fec_loss_percent: u8,
}

/// Counters the audio thread bumps.
#[derive(Debug, Default)]
pub struct AudioCounters {
    /// 20 ms Opus frames published (captured and silence), however they were packed.
    pub frames: AtomicU64,
    /// Of those, silence sent while the source was gone.
    pub silence: AtomicU64,
    /// Times the source was lost.
    pub losses: AtomicU64,
    /// Times the timeline was re-anchored to the clock.
    pub resyncs: AtomicU64,
    /// Packet loss the encoder codes in-band FEC for now, in percent.
    pub fec_loss_percent: AtomicU8,
}

/// Keeps frame timestamps exactly one frame apart while the source keeps time, and re-anchors
/// them to the capture clock when it does not (pure: instants come in).
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    next: Option<Duration>,
}

impl Timeline {
    /// The timestamp of a frame of `len` whose first sample was captured at `at` (since the
    /// epoch); true in the second value when the timeline was re-anchored.
    pub fn stamp(&mut self, at: Duration, len: Duration) -> (Duration, bool) {
        let (t, resync) = match self.next {
            Some(next) if next.abs_diff(at) <= RESYNC => (next, false),
            Some(_) => (at, true),
            None => (at, false),
        };
        self.next = Some(t + len);
        (t, resync)
    }

    /// The source restarted: the next frame anchors afresh.
    pub fn reset(&mut self) {
        self.next = None;
    }
}

/// RTP time (48 kHz) of a timestamp since the epoch, offset by a stream's random base.
pub fn rtp_time(base: u32, t: Duration) -> u32 {
    let ticks = t.as_nanos() * u128::from(RTP_CLOCK) / 1_000_000_000;
    base.wrapping_add(ticks as u32)
}

/// The cloneable handle to the audio pipeline.
#[derive(Clone)]
pub struct AudioHandle {
    frames: broadcast::WeakSender<AudioBatch>,
    /// Frames in a batch: a lagged batch is this many frames lost.
    batch_frames: usize,
    /// Receivers' loss reports, in percent: the worst since the audio thread last looked.
    loss_reports: Arc<AtomicU8>,
    status: watch::Receiver<AudioStatus>,
    counters: Arc<AudioCounters>,
    channels: u32,
}

impl AudioHandle {
    /// A receiver's stream of frames, from the next one on.
    pub fn subscribe(&self) -> AudioSubscriber {
        let rx = match self.frames.upgrade() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        };
        AudioSubscriber {
            rx,
            batch: None,
            next: 0,
            batch_frames: self.batch_frames,
            skipped: 0,
        }
    }

    /// The audio state now.
    pub fn status(&self) -> AudioStatus {
        self.status.borrow().clone()
    }

    /// Subscriptions to the frames now (0 once the thread has stopped).
    pub fn listeners(&self) -> u64 {
        self.frames
            .upgrade()
            .map_or(0, |tx| tx.receiver_count() as u64)
    }

    /// A receiver lost this percentage of the audio packets lately (an RTCP receiver report's
    /// "fraction lost"): the encoder plans in-band FEC for the worst receiver's loss (see
    /// [`encoder::LossPlan`]).
    pub fn report_loss(&self, percent: u8) {
        self.loss_reports.fetch_max(percent, Ordering::Relaxed);
    }

    /// The state and counters now.
    pub fn report(&self) -> AudioReport {
        let c = &self.counters;
        AudioReport {
            status: self.status(),
            channels: self.channels,
            frames: c.frames.load(Ordering::Relaxed),
            silence: c.silence.load(Ordering::Relaxed),
            losses: c.losses.load(Ordering::Relaxed),
            listeners: self.listeners(),
            fec_loss_percent: c.fec_loss_percent.load(Ordering::Relaxed),
        }
    }

    /// The thread's counters.
    pub fn counters(&self) -> &Arc<AudioCounters> {
        &self.counters
    }

    /// Channels captured (1 or 2): SDP says `stereo=1` for 2.
    pub fn channels(&self) -> u32 {
        self.channels
    }
}

/// One receiver's place in the broadcast. Audio packets stand alone: one that falls behind
/// skips what it lost and goes on. Batches (a period: one joined packet, or its frames one
/// packet each) come in whole and go out packet by packet, so a period is handled in one
/// wake-up of the receiving task.
pub struct AudioSubscriber {
    rx: broadcast::Receiver<AudioBatch>,
    /// The batch being handed out, and the index of its next frame.
    batch: Option<AudioBatch>,
    next: usize,
    batch_frames: usize,
    skipped: u64,
}

impl AudioSubscriber {
    /// The next frame; `None` once the pipeline has stopped. Cancel-safe: a frame is only
    /// taken from the batch when it is returned.
    pub async fn recv(&mut self) -> Option<AudioFrame> {
        loop {
            if let Some(f) = self.take_buffered() {
                return Some(f);
            }
            match self.rx.recv().await {
                Ok(b) => self.hold(b),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lost(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next period's frames at once (what is left of it after [`recv`](Self::recv));
    /// `None` once the pipeline has stopped. Cancel-safe.
    pub async fn recv_batch(&mut self) -> Option<AudioBatch> {
        if let Some(batch) = self.batch.take() {
            let rest = batch.get(self.next..).unwrap_or_default();
            if !rest.is_empty() {
                return Some(if self.next == 0 {
                    batch
                } else {
                    Arc::from(rest)
                });
            }
        }
        loop {
            match self.rx.recv().await {
                Ok(b) => return Some(b),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lost(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next frame if one is waiting (`Ok(None)`: none yet; `Err`: the pipeline stopped).
    pub fn try_recv(&mut self) -> Result<Option<AudioFrame>, AudioStopped> {
        loop {
            if let Some(f) = self.take_buffered() {
                return Ok(Some(f));
            }
            match self.rx.try_recv() {
                Ok(b) => self.hold(b),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lost(n),
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Closed) => return Err(AudioStopped),
            }
        }
    }

    fn take_buffered(&mut self) -> Option<AudioFrame> {
        let frame = self.batch.as_ref()?.get(self.next).cloned();
        match frame {
            Some(_) => self.next += 1,
            None => self.batch = None,
        }
        frame
    }

    fn hold(&mut self, batch: AudioBatch) {
        self.batch = Some(batch);
        self.next = 0;
    }

    fn lost(&mut self, batches: u64) {
        self.skipped += batches.saturating_mul(self.batch_frames as u64);
    }

    /// Frames lost by falling behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// The audio pipeline has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audio pipeline has stopped")]
pub struct AudioStopped;

/// Owns the audio thread: dropping it cancels and joins.
pub struct AudioGuard {
    thread: Option<OwnedThread>,
}

impl AudioGuard {
    /// Stop and wait for the thread.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start the audio thread for `spec`; `epoch` is the video pipeline's time zero.
pub fn spawn(
    config: &AudioConfig,
    spec: AudioSpec,
    epoch: Instant,
    cancel: CancellationToken,
) -> std::io::Result<(AudioHandle, AudioGuard)> {
    // Ogg/Opus from a program is passed through a packet at a time.
    let batch_frames = if spec == AudioSpec::Exec && config.exec_format == AudioExecFormat::Ogg {
        1
    } else {
        period_frames(config)
    };
    let (tx, _) = broadcast::channel((BROADCAST_FRAMES / batch_frames).max(1));
    let (status_tx, status_rx) = watch::channel(AudioStatus {
        state: "starting",
        source: String::new(),
    });
    let counters = Arc::new(AudioCounters::default());
    let loss_reports = Arc::new(AtomicU8::new(0));
    let handle = AudioHandle {
        frames: tx.downgrade(),
        batch_frames,
        loss_reports: loss_reports.clone(),
        status: status_rx,
        counters: counters.clone(),
        channels: config.channels,
    };
    let worker = Worker {
        config: config.clone(),
        spec,
        epoch,
        frames: tx,
        status: status_tx,
        counters,
        timeline: Timeline::default(),
        encoder: None,
        loss_reports,
        loss_plan: LossPlan::default(),
    };
    let token = cancel.clone();
    let thread = OwnedThread::spawn("audio", cancel, move || worker.run(&token))?;
    Ok((
        handle,
        AudioGuard {
            thread: Some(thread),
        },
    ))
}

/// 20 ms frames in one period (`[audio] period_ms`), 1..=[`MAX_PERIOD_FRAMES`].
fn period_frames(config: &AudioConfig) -> usize {
    ((config.period_ms / FRAME_MS) as usize).clamp(1, MAX_PERIOD_FRAMES)
}

/// Open the source `spec` names.
fn open(spec: &AudioSpec, config: &AudioConfig) -> Result<Box<dyn AudioSource>, AudioError> {
    let n = period_frames(config);
    let frames = frame_samples(config.rate) * n;
    Ok(match spec {
        AudioSpec::None => return Err(AudioError::Open("[audio] source = \"none\"".into())),
        AudioSpec::Alsa(device) => Box::new(alsa::AlsaSource::open(
            device,
            config.rate,
            config.channels,
            frames,
        )?),
        AudioSpec::Exec => Box::new(exec::ExecAudio::spawn(
            &config.exec,
            config.exec_format,
            FRAME * n as u32,
        )?),
        AudioSpec::Test => Box::new(tone::ToneSource::new(
            config.rate,
            config.channels,
            FRAME * n as u32,
        )),
    })
}

struct Worker {
    config: AudioConfig,
    spec: AudioSpec,
    epoch: Instant,
    frames: broadcast::Sender<AudioBatch>,
    status: watch::Sender<AudioStatus>,
    counters: Arc<AudioCounters>,
    timeline: Timeline,
    encoder: Option<OpusEncoder>,
    loss_reports: Arc<AtomicU8>,
    loss_plan: LossPlan,
}

impl Worker {
    fn run(mut self, cancel: &CancellationToken) {
        let mut backoff = Backoff::default();
        let mut warned = false;
        let period = frame_samples(self.config.rate)
            * self.config.channels as usize
            * period_frames(&self.config);
        let mut pcm = vec![0i16; period];
        while !cancel.is_cancelled() {
            let failure = match open(&self.spec, &self.config) {
                Ok(mut source) => {
                    let name = source.name();
                    if warned {
                        tracing::info!(source = %name, "microphone is back");
                    } else {
                        tracing::info!(source = %name, rate = self.config.rate, channels = self.config.channels, "audio capture started");
                    }
                    self.status.send_replace(AudioStatus {
                        state: "capturing",
                        source: name,
                    });
                    self.timeline.reset();
                    self.pump(source.as_mut(), &mut pcm, cancel, &mut backoff)
                }
                Err(e) => e.to_string(),
            };
            if cancel.is_cancelled() {
                break;
            }
            let retry_in = backoff.next();
            if !warned {
                tracing::warn!(reason = %failure, ?retry_in, "microphone lost; sending silence and retrying");
                warned = true;
            } else {
                tracing::debug!(reason = %failure, ?retry_in, "microphone still unavailable");
            }
            self.counters.losses.fetch_add(1, Ordering::Relaxed);
            self.status.send_modify(|s| s.state = "lost");
            self.timeline.reset();
            if !self.silence(retry_in, &mut pcm, cancel) {
                break;
            }
        }
        self.status.send_modify(|s| s.state = "stopped");
    }

    /// Read, encode and publish until the source fails (returns why) or cancellation.
    fn pump(
        &mut self,
        source: &mut dyn AudioSource,
        pcm: &mut [i16],
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> String {
        while !cancel.is_cancelled() {
            match source.read(pcm) {
                Ok(Block::Pcm { at }) => {
                    backoff.reset();
                    if let Err(e) = self.publish_pcm(pcm, at) {
                        return e.to_string();
                    }
                }
                Ok(Block::Opus { packet, at }) => {
                    backoff.reset();
                    let samples = opus::packet::get_nb_samples(&packet, RTP_CLOCK)
                        .ok()
                        .filter(|&n| n > 0 && n <= 5760)
                        .unwrap_or(960) as u32;
                    let frame = self.frame(packet, at, samples);
                    self.send(Arc::from([frame]));
                }
                Err(AudioError::Stalled(_)) => continue,
                Err(e) => return e.to_string(),
            }
        }
        "cancelled".into()
    }

    /// Encode one period's frames (only while someone listens) and publish them as one batch.
    fn publish_pcm(&mut self, pcm: &[i16], at: Instant) -> Result<(), AudioError> {
        let frames = pcm.len()
            / frame_samples(self.config.rate).max(1)
            / self.config.channels.max(1) as usize;
        if self.frames.receiver_count() == 0 {
            // Nobody listens: keep the timeline, encode nothing.
            for i in 0..frames {
                let _ = self.stamp(at + FRAME * i as u32, FRAME);
            }
            return Ok(());
        }
        let encoder = match &mut self.encoder {
            Some(e) => e,
            None => self.encoder.insert(OpusEncoder::new(
                self.config.rate,
                self.config.channels,
                self.config.bitrate_kbps,
                self.config.complexity,
            )?),
        };
        let now = Instant::now();
        let reported = self.loss_reports.swap(0, Ordering::Relaxed);
        self.loss_plan.handle_report(now, reported);
        let planned = self.loss_plan.poll_percent(now);
        if planned != encoder.expected_loss() {
            tracing::debug!(
                from = encoder.expected_loss(),
                to = planned,
                "in-band FEC now planned for this % packet loss"
            );
            encoder.set_expected_loss(planned)?;
            self.counters
                .fec_loss_percent
                .store(planned, Ordering::Relaxed);
        }
        let len = encoder.frame_len();
        let mut packets = [const { Bytes::new() }; MAX_PERIOD_FRAMES];
        let mut n = 0;
        for (slot, chunk) in packets.iter_mut().zip(pcm.chunks_exact(len)) {
            *slot = encoder.encode(chunk)?;
            n += 1;
        }
        let packets = &packets[..n];
        let batch: AudioBatch = match encoder.combine(packets) {
            // The period in one packet: one datagram per receiver per period.
            Some(joined) => Arc::from([self.frame(joined, at, FRAME_RTP_SAMPLES * n as u32)]),
            None => packets
                .iter()
                .enumerate()
                .map(|(i, p)| self.frame(p.clone(), at + FRAME * i as u32, FRAME_RTP_SAMPLES))
                .collect(),
        };
        self.send(batch);
        Ok(())
    }

    fn stamp(&mut self, at: Instant, len: Duration) -> Duration {
        let (t, resynced) = self
            .timeline
            .stamp(at.saturating_duration_since(self.epoch), len);
        if resynced {
            self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        t
    }

    /// One packet of `samples` (48 kHz), stamped on the timeline; its 20 ms frames counted.
    fn frame(&mut self, data: Bytes, at: Instant, samples: u32) -> AudioFrame {
        let len = Duration::from_micros(u64::from(samples) * 1_000_000 / u64::from(RTP_CLOCK));
        let timestamp = self.stamp(at, len);
        let frame = AudioFrame {
            data,
            timestamp,
            samples,
        };
        self.counters
            .frames
            .fetch_add(frame.frames(), Ordering::Relaxed);
        frame
    }

    fn send(&mut self, batch: AudioBatch) {
        // No receiver is fine: nobody listens right now.
        let _ = self.frames.send(batch);
    }

    /// Send silence, a period at a time, for `d` (receivers keep a running stream). False if
    /// cancelled.
    fn silence(&mut self, d: Duration, pcm: &mut [i16], cancel: &CancellationToken) -> bool {
        pcm.fill(0);
        let end = Instant::now() + d;
        let mut next = Instant::now();
        while Instant::now() < end {
            if cancel.is_cancelled() {
                return false;
            }
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            let at = next;
            next += FRAME * period_frames(&self.config) as u32;
            let before = self.counters.frames.load(Ordering::Relaxed);
            if self.publish_pcm(pcm, at).is_err() {
                continue;
            }
            let sent = self.counters.frames.load(Ordering::Relaxed) - before;
            self.counters.silence.fetch_add(sent, Ordering::Relaxed);
        }
        !cancel.is_cancelled()
    }
}

/// Retry delays: 1 s, 2 s, then every 5 s (the camera's rule).
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = match self.failures {
            0 => 1,
            1 => 2,
            _ => 5,
        };
        self.failures = self.failures.saturating_add(1);
        Duration::from_secs(d)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_keeps_frames_20_ms_apart_and_reanchors_on_drift() {
        let mut t = Timeline::default();
        let ms = Duration::from_millis;
        assert_eq!(t.stamp(ms(1000), FRAME), (ms(1000), false));
        // Jitter in when blocks arrive does not move the timestamps.
        assert_eq!(t.stamp(ms(1027), FRAME), (ms(1020), false));
        assert_eq!(t.stamp(ms(1035), FRAME), (ms(1040), false));
        // A stall of half a second: re-anchored to the clock.
        assert_eq!(t.stamp(ms(1600), FRAME), (ms(1600), true));
        assert_eq!(t.stamp(ms(1620), FRAME), (ms(1620), false));
        t.reset();
        assert_eq!(t.stamp(ms(5000), FRAME), (ms(5000), false));
    }

    #[test]
    fn rtp_time_is_48_khz_from_the_base_and_wraps() {
        assert_eq!(rtp_time(100, Duration::from_millis(20)), 100 + 960);
        assert_eq!(rtp_time(u32::MAX, Duration::from_millis(20)), 959);
        // Video at 90 kHz and audio at 48 kHz name the same instant: 1 s is 48 000 ticks.
        assert_eq!(rtp_time(0, Duration::from_secs(1)), 48_000);
    }

    #[tokio::test]
    async fn test_tone_is_encoded_once_and_fanned_out_with_shared_timestamps() {
        let config = AudioConfig {
            source: AudioSourceKind::Test,
            ..AudioConfig::default()
        };
        let epoch = Instant::now();
        let cancel = CancellationToken::new();
        let (audio, guard) = spawn(&config, AudioSpec::Test, epoch, cancel.clone()).unwrap();
        let (mut a, mut b) = (audio.subscribe(), audio.subscribe());
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut pcm = Vec::new();
        let mut last = None;
        // A second of the default 40 ms period: each packet two 20 ms frames.
        for _ in 0..25 {
            let fa = tokio::time::timeout(Duration::from_secs(5), a.recv())
                .await
                .unwrap()
                .unwrap();
            let fb = b.recv().await.unwrap();
            // Encoded once: both receivers hold the same bytes.
            assert_eq!(fa.data.as_ptr(), fb.data.as_ptr());
            assert_eq!(fa.samples, 1920);
            assert_eq!(opus::packet::get_nb_frames(&fa.data).unwrap(), 2);
            if let Some(prev) = last {
                assert_eq!(fa.timestamp - prev, FRAME * 2, "a period apart");
            }
            last = Some(fa.timestamp);
            let mut out = vec![0i16; 1920];
            let n = decoder.decode(&fa.data, &mut out, false).unwrap();
            assert_eq!(n, 1920);
            pcm.extend_from_slice(&out[..n]);
        }
        // The first timestamp is within a frame or two of when it was captured.
        assert!(last.unwrap() <= epoch.elapsed());
        let hz = dominant_hz(&pcm[4800..], 48_000);
        assert!(
            (hz - 1000.0).abs() < 20.0 || (hz - 2000.0).abs() < 40.0,
            "{hz} Hz"
        );
        assert_eq!(audio.status().state, "capturing");
        let report = audio.report();
        assert_eq!(report.status.source, "test tone");
        assert_eq!(report.listeners, 2, "a and b");
        assert!(report.frames >= 50, "{report:?}");
        assert_eq!((report.silence, report.losses, report.channels), (0, 0, 1));
        drop(b);
        assert_eq!(audio.listeners(), 1);
        cancel.cancel();
        guard.join();
        assert_eq!(audio.report().status.state, "stopped");
        assert_eq!(audio.listeners(), 0, "the thread is gone");
    }

    #[tokio::test]
    async fn a_period_of_three_frames_arrives_as_one_opus_packet() {
        let config = AudioConfig {
            source: AudioSourceKind::Test,
            period_ms: 60,
            ..AudioConfig::default()
        };
        let cancel = CancellationToken::new();
        let (audio, guard) =
            spawn(&config, AudioSpec::Test, Instant::now(), cancel.clone()).unwrap();
        let mut sub = audio.subscribe();
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut last = None;
        for _ in 0..3 {
            let packet = tokio::time::timeout(Duration::from_secs(5), sub.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(packet.samples, 2880);
            assert_eq!(opus::packet::get_nb_frames(&packet.data).unwrap(), 3);
            let mut out = vec![0i16; 5760];
            assert_eq!(decoder.decode(&packet.data, &mut out, false).unwrap(), 2880);
            if let Some(prev) = last {
                assert_eq!(packet.timestamp - prev, FRAME * 3);
            }
            last = Some(packet.timestamp);
            assert!(
                sub.try_recv().unwrap().is_none(),
                "the next period is 60 ms away"
            );
        }
        assert!(audio.report().frames >= 9, "frames counted, not packets");
        assert_eq!(sub.skipped(), 0);
        cancel.cancel();
        guard.join();
    }

    #[test]
    fn a_batch_is_handed_out_packet_by_packet_or_whole() {
        // Frames libopus would not join (a mode switch inside a period) come as one batch.
        let (tx, rx) = broadcast::channel::<AudioBatch>(4);
        let mut sub = AudioSubscriber {
            rx,
            batch: None,
            next: 0,
            batch_frames: 3,
            skipped: 0,
        };
        let frame = |ms| AudioFrame {
            data: Bytes::from_static(b"x"),
            timestamp: Duration::from_millis(ms),
            samples: 960,
        };
        for at in [0, 60] {
            tx.send(Arc::from([frame(at), frame(at + 20), frame(at + 40)]))
                .unwrap();
        }
        let first = sub.try_recv().unwrap().unwrap();
        // The rest of the first batch without another wake-up, then the next one whole.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let rest = rt.block_on(sub.recv_batch()).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].timestamp - first.timestamp, FRAME);
        let next = rt.block_on(sub.recv_batch()).unwrap();
        assert_eq!(next.len(), 3);
        assert_eq!(next[0].timestamp - rest[1].timestamp, FRAME);
        assert!(sub.try_recv().unwrap().is_none());
        assert_eq!(sub.skipped(), 0);
    }

    #[test]
    fn a_lagging_subscriber_counts_the_frames_of_the_batches_it_lost() {
        let (tx, rx) = broadcast::channel::<AudioBatch>(1);
        let frame = |ms| AudioFrame {
            data: Bytes::from_static(b"x"),
            timestamp: Duration::from_millis(ms),
            samples: 960,
        };
        let mut sub = AudioSubscriber {
            rx,
            batch: None,
            next: 0,
            batch_frames: 2,
            skipped: 0,
        };
        for at in [0, 40, 80] {
            tx.send(Arc::from([frame(at), frame(at + 20)])).unwrap();
        }
        // Capacity 1: the first two batches (four frames) are gone.
        assert_eq!(
            sub.try_recv().unwrap().unwrap().timestamp,
            Duration::from_millis(80)
        );
        assert_eq!(
            sub.try_recv().unwrap().unwrap().timestamp,
            Duration::from_millis(100)
        );
        assert_eq!(sub.skipped(), 4);
        assert!(sub.try_recv().unwrap().is_none());
        drop(tx);
        assert_eq!(sub.try_recv().unwrap_err(), AudioStopped);
    }

    /// The strongest frequency in `x` by a plain DFT scan over 100..4000 Hz, 5 Hz apart.
    pub(crate) fn dominant_hz(x: &[i16], rate: u32) -> f64 {
        let mut best = (0.0, 0.0);
        let mut f = 100.0;
        while f < 4000.0 {
            let w = std::f64::consts::TAU * f / f64::from(rate);
            let (mut re, mut im) = (0.0, 0.0);
            for (i, &v) in x.iter().enumerate() {
                re += f64::from(v) * (w * i as f64).cos();
                im += f64::from(v) * (w * i as f64).sin();
            }
            let p = re * re + im * im;
            if p > best.1 {
                best = (f, p);
            }
            f += 5.0;
        }
        best.0
    }
}
