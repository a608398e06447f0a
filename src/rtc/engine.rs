//! The one task that owns the UDP socket and every viewer's `Rtc`.
//!
//! Inputs (datagrams, frames, stills, commands, timeouts) arrive in one `select!`; after each
//! input to a viewer the engine takes the viewer's `poll_output` until `None` (the draining
//! rule; str0m's single-mutation rule underneath), then re-reads its `poll_timeout`.
//!
//! A datagram is routed with `Rtc::accepts` before anything else is done for it: one from a
//! source no viewer knows costs a parse and one `accepts` per viewer, never a syscall or an
//! entry in a cache viewers use.
//!
//! Frames come from one [`FrameSubscriber`] held while any viewer takes video: the encoder
//! runs once, each viewer costs packetisation and SRTP only.
//!
//! The subscription is taken when the first viewer with H.264 video is added (before ICE and
//! DTLS finish, so the pipeline's IDR is usually cached by the time the viewer connects) and
//! dropped, with the GOP cache, as soon as the last one is gone: with no subscriber the
//! pipeline does not encode.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::{DatagramRecv, Protocol, Receive, Transmit};
use str0m::{Candidate, Input};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::candidates::{host_addrs, HostAddr, LocalAddrPicker};
use super::offer::SdpLimits;
use super::viewer::{VideoFrame, Viewer, ViewerEvent, ViewerOutput};
use super::{Command, RtcError, RtcHandle, RtcStats, Shared, ViewerId};
use crate::config::Config;
use crate::media::{EncodedFrame, FrameSubscriber, MediaHandle, StillError};
use crate::progress::Heartbeat;

/// Commands waiting for the engine; senders wait (HTTP handlers), never the engine.
const COMMAND_QUEUE: usize = 64;
/// Finished stills waiting to be written.
const STILL_QUEUE: usize = 16;
/// Largest UDP datagram read.
const RECV_BUF: usize = 2048;
/// Longest the loop sleeps without looking at liveness.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Bounds of the GOP cache; a longer GOP is not cached (viewers wait for an IDR instead).
const GOP_MAX_FRAMES: usize = 150;
const GOP_MAX_BYTES: usize = 4 * 1024 * 1024;

/// What the engine is built from (see [`EngineSettings::from_config`]).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Where the one UDP socket binds (port 0 in tests).
    pub bind: SocketAddr,
    /// Addresses announced as host candidates (with the bound port).
    pub hosts: Vec<HostAddr>,
    /// `[server] max_viewers`.
    pub max_viewers: usize,
    /// `[snapshot] on_connect`: a still when a data channel opens.
    pub snapshot_on_connect: bool,
    /// A viewer silent this long is removed ([`super::SILENCE_TIMEOUT`]; tests shorten it).
    pub silence_timeout: Duration,
    /// `[server] max_sdp_*`: budgets for offers and trickle fragments.
    pub sdp_limits: SdpLimits,
}

impl EngineSettings {
    /// From `[server]` and `[snapshot]`: binds `0.0.0.0:rtc_udp_port`; announces every up
    /// IPv4 interface address (loopback only when `listen` is loopback) plus `public_addrs`.
    pub fn from_config(config: &Config) -> Self {
        let s = &config.server;
        let loopback = s.listen.ip().is_loopback();
        Self {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, s.rtc_udp_port)),
            hosts: host_addrs(loopback, &s.public_addrs),
            max_viewers: s.max_viewers,
            snapshot_on_connect: config.snapshot.on_connect,
            silence_timeout: super::SILENCE_TIMEOUT,
            sdp_limits: SdpLimits::from_config(s),
        }
    }
}

/// The bound engine; [`Engine::run`] it on a task, hand [`Engine::handle`]s to callers.
pub struct Engine {
    socket: UdpSocket,
    port: u16,
    handle: RtcHandle,
    commands: mpsc::Receiver<Command>,
    media: MediaHandle,
    hosts: Vec<HostAddr>,
    /// Beaten every turn of the loop: the systemd watchdog is fed only while it advances.
    heartbeat: Heartbeat,
}

impl Engine {
    /// Bind the UDP socket. Fails if the port is taken.
    pub async fn bind(settings: EngineSettings, media: MediaHandle) -> io::Result<Self> {
        init_crypto();
        let socket = UdpSocket::bind(settings.bind).await?;
        let port = socket.local_addr()?.port();
        let mut candidates = Vec::new();
        for h in &settings.hosts {
            match Candidate::host(SocketAddr::from((h.ip, port)), "udp") {
                Ok(c) => candidates.push(c),
                Err(e) => tracing::warn!(ip = %h.ip, error = %e, "not a usable host candidate"),
            }
        }
        tracing::info!(
            port,
            candidates = ?candidates.iter().map(|c| c.addr()).collect::<Vec<_>>(),
            "webrtc udp listening"
        );
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let handle = RtcHandle {
            commands: tx,
            shared: Arc::new(Shared {
                candidates,
                max_viewers: settings.max_viewers,
                snapshot_on_connect: settings.snapshot_on_connect,
                silence_timeout: settings.silence_timeout,
                sdp_limits: settings.sdp_limits,
                slots: Arc::default(),
                rtc_built: Default::default(),
            }),
        };
        Ok(Self {
            socket,
            port,
            handle,
            commands,
            media,
            hosts: settings.hosts,
            heartbeat: Heartbeat::default(),
        })
    }

    /// Beat `heartbeat` every turn of the loop (the daemon registers it with the watchdog).
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// A way in for callers (cloneable).
    pub fn handle(&self) -> RtcHandle {
        self.handle.clone()
    }

    /// The bound UDP address (the port viewers send to).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serve until `cancel` fires (or every handle is gone).
    pub async fn run(self, cancel: CancellationToken) {
        let Engine {
            socket,
            port,
            handle,
            mut commands,
            media,
            hosts,
            heartbeat,
        } = self;
        // The engine keeps no sender: it stops when every caller's handle is gone.
        let shared = handle.shared.clone();
        drop(handle);
        let (still_tx, mut still_rx) = mpsc::channel(STILL_QUEUE);
        let mut st = State::new(
            socket,
            port,
            LocalAddrPicker::new(hosts),
            media,
            still_tx,
            shared,
        );
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let deadline = st.poll_timeout(Instant::now());
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => st.handle_command(cmd, Instant::now()),
                    None => break,
                },
                r = st.socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => st.handle_datagram(&buf[..n], source, Instant::now()),
                    Err(e) => tracing::debug!(error = %e, "udp recv failed"),
                },
                frame = next_frame(&mut st.subscriber) => match frame {
                    Some(frame) => st.handle_frame(&frame, Instant::now()),
                    None => {
                        // The pipeline stopped; never subscribe again (it would end at once).
                        st.subscriber = None;
                        st.pipeline_stopped = true;
                    }
                },
                Some((id, channel, still)) = still_rx.recv() => {
                    st.handle_still(id, channel, still, Instant::now());
                }
                Some(_) = st.tasks.join_next(), if !st.tasks.is_empty() => {}
                _ = tokio::time::sleep_until(deadline.into()) => st.handle_timeout(Instant::now()),
            }
            st.sweep(Instant::now());
            heartbeat.beat();
        }
        for v in &mut st.viewers {
            v.rtc.disconnect();
        }
        st.tasks.shutdown().await;
        tracing::info!(viewers = st.viewers.len(), "webrtc engine stopped");
    }
}

type StillResult = (
    ViewerId,
    str0m::channel::ChannelId,
    Result<bytes::Bytes, String>,
);

struct State {
    socket: UdpSocket,
    port: u16,
    picker: LocalAddrPicker,
    viewers: Vec<Viewer>,
    /// Held while any viewer takes video or will once connected; the pipeline encodes only
    /// while someone holds one.
    subscriber: Option<FrameSubscriber>,
    /// The frame stream ended: the pipeline is gone.
    pipeline_stopped: bool,
    /// Frames since the last keyframe: a joining viewer starts from here at once.
    gop: Gop,
    media: MediaHandle,
    still_tx: mpsc::Sender<StillResult>,
    /// Still requests waiting on the pipeline (bounded by its still queue).
    tasks: JoinSet<()>,
    /// Limits and admission counters shared with the handles.
    shared: Arc<Shared>,
    /// Counters of viewers already removed, plus engine-level ones.
    totals: RtcStats,
}

async fn next_frame(sub: &mut Option<FrameSubscriber>) -> Option<EncodedFrame> {
    match sub {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// UDP is lossy anyway: a full socket buffer drops the datagram rather than stall every viewer.
fn send(socket: &UdpSocket, t: &Transmit) {
    if let Err(e) = socket.try_send_to(&t.contents, t.destination) {
        tracing::trace!(error = %e, dest = %t.destination, "udp send dropped");
    }
}

impl State {
    fn new(
        socket: UdpSocket,
        port: u16,
        picker: LocalAddrPicker,
        media: MediaHandle,
        still_tx: mpsc::Sender<StillResult>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            socket,
            port,
            picker,
            viewers: Vec::new(),
            subscriber: None,
            pipeline_stopped: false,
            gop: Gop::default(),
            media,
            still_tx,
            tasks: JoinSet::new(),
            shared,
            totals: RtcStats::default(),
        }
    }

    /// The earliest viewer timeout, at most [`MAX_IDLE`] away (liveness is checked then).
    fn poll_timeout(&self, now: Instant) -> Instant {
        self.viewers
            .iter()
            .filter_map(Viewer::poll_timeout)
            .fold(now + MAX_IDLE, Instant::min)
    }

    fn handle_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Register { viewer, reply } => {
                let _ = reply.send(self.register(*viewer, now));
            }
            Command::Close { id, reply } => {
                let r = match self.viewers.iter().position(|v| v.id == id) {
                    Some(i) => {
                        let mut v = self.viewers.swap_remove(i);
                        v.rtc.disconnect();
                        self.retire(&v, "closed");
                        Ok(())
                    }
                    None => Err(RtcError::NotFound),
                };
                let _ = reply.send(r);
            }
            Command::Patch {
                id,
                if_match,
                candidates,
                reply,
            } => {
                let _ = reply.send(self.patch(id, if_match, candidates, now));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
        }
    }

    fn register(&mut self, viewer: Viewer, now: Instant) -> Result<(), RtcError> {
        // The caller's `ViewerSlot` already keeps to the limit; this is a second fence.
        let max = self.shared.max_viewers;
        if self.viewers.len() >= max {
            return Err(RtcError::Full { max });
        }
        tracing::info!(viewer = %viewer.id, kind = ?viewer.kind, "viewer added");
        self.viewers.push(viewer);
        self.process_outputs(self.viewers.len() - 1, now);
        Ok(())
    }

    fn patch(
        &mut self,
        id: ViewerId,
        if_match: Option<String>,
        candidates: Vec<str0m::Candidate>,
        now: Instant,
    ) -> Result<(), RtcError> {
        let i = self
            .viewers
            .iter()
            .position(|v| v.id == id)
            .ok_or(RtcError::NotFound)?;
        let v = &mut self.viewers[i];
        super::whep::check_if_match(&v.etag, if_match.as_deref())?;
        let max = self.shared.sdp_limits.max_candidates;
        v.handle_candidates(candidates, max, now)?;
        self.process_outputs(i, now);
        Ok(())
    }

    /// Route a datagram to the viewer whose `Rtc` accepts it. `accepts` reads only the
    /// source and the contents, so the local address it arrived on (a route lookup, see
    /// [`LocalAddrPicker`]) is looked up only for a datagram a viewer took.
    fn handle_datagram(&mut self, data: &[u8], source: SocketAddr, now: Instant) {
        let contents = match DatagramRecv::try_from(data) {
            Ok(c) if source.is_ipv4() => c,
            _ => {
                self.totals.datagrams_unrouted += 1;
                return;
            }
        };
        let mut input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port)),
                contents,
            },
        );
        let Some(i) = self.viewers.iter().position(|v| v.rtc.accepts(&input)) else {
            self.totals.datagrams_unrouted += 1;
            tracing::trace!(%source, "datagram for no viewer");
            return;
        };
        if let Input::Receive(_, r) = &mut input {
            r.destination = self.picker.pick(source, self.port);
        }
        self.viewers[i].handle_input(input, now);
        self.process_outputs(i, now);
    }

    fn handle_frame(&mut self, frame: &EncodedFrame, now: Instant) {
        let skipped = self.subscriber.as_ref().map_or(0, FrameSubscriber::skipped);
        let frame = VideoFrame::new(frame);
        self.gop.push(&frame, skipped);
        for i in 0..self.viewers.len() {
            if self.viewers[i].wants_video() {
                self.viewers[i].write_frame(&frame, now);
                self.process_outputs(i, now);
            }
        }
    }

    /// A viewer just connected: replay the cached GOP to it (squeezed before the live edge),
    /// or ask for a keyframe when there is none.
    fn start_video(&mut self, i: usize, now: Instant) {
        if self.subscriber.is_none() {
            // Normally taken when the viewer was added; subscribing asks for a keyframe itself.
            self.follow_video_viewers();
            return;
        }
        let frames = self.gop.frames.clone();
        let Some(last) = frames.last() else {
            self.media
                .request_keyframe(crate::media::KeyframeCause::NewViewer);
            return;
        };
        let k = frames.len() as u64;
        for (n, f) in frames.iter().enumerate() {
            let ticks = last.ticks.saturating_sub(k - 1 - n as u64);
            self.viewers[i].write_catch_up(f, ticks, now);
            self.process_outputs(i, now);
        }
    }

    fn handle_still(
        &mut self,
        id: ViewerId,
        channel: str0m::channel::ChannelId,
        still: Result<bytes::Bytes, String>,
        now: Instant,
    ) {
        if let Some(i) = self.viewers.iter().position(|v| v.id == id) {
            self.viewers[i].handle_still(channel, still, now);
            self.process_outputs(i, now);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.viewers.len() {
            if self.viewers[i].poll_timeout().is_some_and(|t| t <= now) {
                self.viewers[i].handle_timeout(now);
                self.process_outputs(i, now);
            }
        }
    }

    /// The draining rule for viewer `i` after an input: act on each of its outputs until it
    /// has none (its `poll_timeout` is then current).
    fn process_outputs(&mut self, i: usize, now: Instant) {
        let mut connected = false;
        while let Some(out) = self.viewers[i].poll_output() {
            match out {
                ViewerOutput::Transmit(t) => send(&self.socket, &t),
                ViewerOutput::Event(ViewerEvent::Connected) => {
                    let v = &self.viewers[i];
                    tracing::info!(viewer = %v.id, after = ?now.duration_since(v.created), "viewer connected");
                    connected = true;
                }
                ViewerOutput::Event(ViewerEvent::Keyframe(cause)) => {
                    self.media.request_keyframe(cause)
                }
                ViewerOutput::Event(ViewerEvent::Still { channel, max_bytes }) => {
                    self.request_still(self.viewers[i].id, channel, max_bytes)
                }
            }
        }
        // Whether it takes video is known once every output of this turn is handled.
        if connected && self.viewers[i].wants_video() {
            self.start_video(i, now);
        }
    }

    /// Ask the pipeline for a still on a task; it comes back through `still_tx`.
    fn request_still(&mut self, id: ViewerId, channel: str0m::channel::ChannelId, max: usize) {
        let media = self.media.clone();
        let tx = self.still_tx.clone();
        self.tasks.spawn(async move {
            let still = media.still(max).await.map_err(|e| match e {
                StillError::NoFrame => "no frame captured yet".to_owned(),
                other => other.to_string(),
            });
            let _ = tx.send((id, channel, still)).await;
        });
    }

    /// Hold the frame stream exactly while some viewer has video: subscribe for the first
    /// (the pipeline resumes encoding with an IDR), let go with the last (it stops encoding).
    fn follow_video_viewers(&mut self) {
        let video = self.viewers.iter().any(Viewer::has_video);
        if video && self.subscriber.is_none() && !self.pipeline_stopped {
            tracing::debug!("first video viewer: subscribing to the frame stream");
            self.subscriber = Some(self.media.subscribe());
            self.gop = Gop::default();
        } else if !video && self.subscriber.is_some() {
            tracing::debug!("no video viewer left: the frame stream is released");
            self.subscriber = None;
            self.gop = Gop::default();
        }
    }

    /// Remove dead and silent viewers; hold the frame stream only while a viewer has video.
    fn sweep(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.viewers.len() {
            if self.viewers[i].is_alive(now) {
                i += 1;
                continue;
            }
            let mut v = self.viewers.swap_remove(i);
            v.rtc.disconnect();
            self.totals.timed_out += 1;
            self.retire(&v, "ICE failed or silent");
        }
        self.follow_video_viewers();
    }

    fn retire(&mut self, v: &Viewer, why: &str) {
        tracing::info!(viewer = %v.id, kind = ?v.kind, frames = v.frames_sent, why, "viewer removed");
        self.totals.frames_sent += v.frames_sent;
        self.totals.bytes_out += v.bytes_out;
        self.totals.stills_sent += v.stills_sent;
    }

    fn stats(&self) -> RtcStats {
        let mut s = self.totals.clone();
        s.viewers = self.viewers.len();
        s.connected = self.viewers.iter().filter(|v| v.is_connected()).count();
        s.rtc_built = self.shared.rtc_built.load(Ordering::Relaxed);
        s.local_addr_lookups = self.picker.lookups();
        for v in &self.viewers {
            s.frames_sent += v.frames_sent;
            s.bytes_out += v.bytes_out;
            s.stills_sent += v.stills_sent;
        }
        s
    }
}

/// The frames since the last keyframe, while they fit the bounds.
#[derive(Default)]
struct Gop {
    frames: Vec<VideoFrame>,
    bytes: usize,
    /// The subscriber's skip count when the cache started: a skip means a hole in it.
    skipped: u64,
}

impl Gop {
    fn push(&mut self, frame: &VideoFrame, skipped: u64) {
        if frame.keyframe {
            self.frames.clear();
            self.bytes = 0;
            self.skipped = skipped;
        } else if self.frames.is_empty() {
            return;
        }
        let fits =
            self.frames.len() < GOP_MAX_FRAMES && self.bytes + frame.data.len() <= GOP_MAX_BYTES;
        if skipped != self.skipped || !fits {
            // A hole (this engine fell behind) or too long a GOP: no cache until the next IDR.
            self.frames.clear();
            self.bytes = 0;
            return;
        }
        self.bytes += frame.data.len();
        self.frames.push(frame.clone());
    }
}

/// str0m needs a process-wide crypto provider (aws-lc-rs); installing twice is harmless.
fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(keyframe: bool, len: usize, ticks: u64) -> VideoFrame {
        VideoFrame {
            data: Arc::from(vec![0u8; len]),
            keyframe,
            ticks,
        }
    }

    #[test]
    fn gop_starts_at_a_keyframe_and_restarts_at_the_next() {
        let mut g = Gop::default();
        g.push(&f(false, 10, 1), 0);
        assert!(g.frames.is_empty(), "no cache before a keyframe");
        g.push(&f(true, 10, 2), 0);
        g.push(&f(false, 10, 3), 0);
        assert_eq!(g.frames.len(), 2);
        g.push(&f(true, 10, 4), 0);
        assert_eq!(g.frames.len(), 1);
        assert!(g.frames[0].keyframe);
    }

    #[test]
    fn gop_is_dropped_on_a_hole_or_when_too_big() {
        let mut g = Gop::default();
        g.push(&f(true, 10, 1), 0);
        g.push(&f(false, 10, 2), 3);
        assert!(
            g.frames.is_empty(),
            "the engine skipped frames: the cache has a hole"
        );
        g.push(&f(false, 10, 3), 3);
        assert!(g.frames.is_empty(), "stays empty until the next keyframe");
        g.push(&f(true, GOP_MAX_BYTES, 4), 3);
        assert_eq!(g.frames.len(), 1);
        g.push(&f(false, 1, 5), 3);
        assert!(g.frames.is_empty(), "over the byte bound");
        g.push(&f(true, 1, 6), 3);
        for t in 0..GOP_MAX_FRAMES as u64 {
            g.push(&f(false, 1, 7 + t), 3);
        }
        assert!(g.frames.is_empty(), "over the frame bound");
    }
}
