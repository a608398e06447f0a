//! The engine's sans-IO core: every viewer, the GOP cache and the routing of datagrams, as a
//! plain struct driven by inputs and drained of outputs (str0m's own pattern, one level up).
//!
//! # Inputs and outputs
//! - Inputs: [`Core::handle_datagram`] (bytes from the UDP socket), [`Core::handle_frame`]
//!   (an encoded frame), `Core::handle_command` (from an [`RtcHandle`](super::RtcHandle)),
//!   [`Core::handle_still`] (a still the pipeline made), [`Core::handle_frames_ended`] (the
//!   frame stream closed) and [`Core::handle_timeout`].
//! - Outputs: [`Core::poll_transmit`] (datagrams to send), [`Core::poll_event`] (what only the
//!   shell can do: take or drop the frame subscription, ask for a keyframe or a still; and
//!   notices of viewers connected and removed) and [`Core::poll_timeout`].
//!
//! **Draining rule:** after every input, take [`Core::poll_transmit`] and [`Core::poll_event`]
//! until both are `None`, then read [`Core::poll_timeout`] again. The core drains each viewer's
//! str0m `Rtc` itself (str0m's single-mutation rule) into those two queues, so they hold at
//! most one input's worth of output.
//!
//! The core owns no socket, task or clock: `now` comes with every input, so tests drive it on
//! virtual time against in-process str0m peers (see the tests at the end of this file).
//!
//! # Routing
//! A datagram goes, in this order, to: a [`Sidecar`] that claims its source (a STUN or TURN
//! server the device talks to; a TURN allocation hands back the peer data it unwraps, which is
//! then routed as if it came in on the relayed address), else the viewer whose `Rtc` accepts it.
//! One from a source nobody knows costs a parse and one `accepts` per viewer, never a syscall.
//! A viewer's transmit whose source is a sidecar's relayed address is handed to that sidecar
//! to wrap (a TURN Send indication or ChannelData) instead of going out as is.
//!
//! # Adding a media input
//! Video is [`Core::handle_frame`] → each viewer's [`Viewer::write_frame`]. A second input
//! (audio) is the same shape: `handle_audio(now, frames)` looping over viewers that negotiated
//! it, a writer on the viewer for that m-line, and (if it has its own source) a pair of
//! subscribe/release events like [`CoreEvent::SubscribeVideo`].

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::channel::ChannelId;
use str0m::net::{DatagramRecv, Protocol, Receive, Transmit};
use str0m::Input;
use tokio::sync::oneshot;

use super::candidates::LocalAddrPicker;
use super::viewer::{VideoFrame, Viewer, ViewerEvent, ViewerOutput};
use super::{Command, RtcError, RtcStats, Shared, ViewerId};
use crate::audio::AudioFrame;
use crate::media::{EncodedFrame, KeyframeCause};

/// Bounds of the GOP cache; a longer GOP is not cached (viewers wait for an IDR instead).
const GOP_MAX_FRAMES: usize = 150;
const GOP_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Which local address a datagram that arrived on a socket bound to the unspecified address
/// was sent to (str0m needs it: a STUN request must arrive "on" one of its candidates).
///
/// [`LocalAddrPicker`] asks the kernel's routing table; tests give fixed answers.
pub trait LocalAddrs: Send {
    /// The local address (with `port`) that `remote` most likely sent to.
    fn local_addr(&mut self, remote: SocketAddr, port: u16) -> SocketAddr;
    /// Lookups that cost a syscall, for [`RtcStats::local_addr_lookups`].
    fn lookups(&self) -> u64 {
        0
    }
}

impl LocalAddrs for LocalAddrPicker {
    fn local_addr(&mut self, remote: SocketAddr, port: u16) -> SocketAddr {
        self.pick(remote, port)
    }

    fn lookups(&self) -> u64 {
        LocalAddrPicker::lookups(self)
    }
}

/// How a datagram goes out (or came in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The engine's one UDP socket.
    Udp,
    /// A stream (TCP, or TLS over TCP) to a server that the shell keeps open; `server` is its
    /// address, which the shell maps to the connection. Framing is the sidecar's business.
    Stream {
        /// The server at the other end.
        server: SocketAddr,
        /// TLS over the TCP connection (`turns:`).
        tls: bool,
    },
}

/// A datagram the shell must send.
#[derive(Debug)]
pub struct CoreTransmit {
    /// Which socket or connection.
    pub via: Via,
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: Vec<u8>,
}

impl CoreTransmit {
    fn udp(t: Transmit) -> Self {
        Self {
            via: Via::Udp,
            destination: t.destination,
            contents: t.contents.into(),
        }
    }
}

/// A component beside str0m on the engine's socket: a STUN binding client or a TURN
/// allocation. It owns its servers' addresses; the core routes their datagrams to it and
/// hands it the transmits of viewers that send from its relayed address.
///
/// Same vocabulary as the core: after each `handle_*`, the core drains `poll_transmit` and
/// `poll_event` until `None`.
pub trait Sidecar: Send {
    /// A short name for logs and `/health` ("stun", "turn").
    fn name(&self) -> &str;
    /// Whether a datagram from `source` arriving `via` is this component's (its server).
    /// Cheap: an address comparison, no parsing.
    fn claims(&self, via: Via, source: SocketAddr) -> bool;
    /// Whether `contents`, from a source it claims, is an answer it waits for (a response to
    /// its own STUN transaction). When several sidecars claim one server (coturn serves STUN
    /// and TURN on one port), the one that expects the datagram gets it, else the first that
    /// claims the source. Cheap: a look at the header, no parsing.
    fn expects(&self, _contents: &[u8]) -> bool {
        false
    }
    /// A datagram it claimed.
    fn handle_datagram(&mut self, now: Instant, via: Via, source: SocketAddr, contents: &[u8]);
    /// Time passed.
    fn handle_timeout(&mut self, now: Instant);
    /// When [`Sidecar::handle_timeout`] is next due.
    fn poll_timeout(&self) -> Option<Instant>;
    /// A datagram to send to its server.
    fn poll_transmit(&mut self) -> Option<CoreTransmit>;
    /// What it learnt.
    fn poll_event(&mut self) -> Option<SidecarEvent>;
    /// The relayed address this component sends from for viewers, if it has one (TURN).
    fn relayed_addr(&self) -> Option<SocketAddr> {
        None
    }
    /// Send `contents` from the relayed address to `peer` (wrapped for the server; it comes
    /// out of [`Sidecar::poll_transmit`]). False when it cannot (no allocation): dropped.
    fn send_relayed(&mut self, _now: Instant, _peer: SocketAddr, _contents: &[u8]) -> bool {
        false
    }
    /// A viewer's remote candidate (from its offer or a PATCH): a TURN allocation may install
    /// a permission for it before the peer's first check arrives. Drained like any input.
    fn handle_remote_candidate(&mut self, _now: Instant, _addr: SocketAddr) {}
    /// Its state for `/health` and `/metrics`.
    fn health(&self) -> SidecarHealth;
    /// The stream to its server (asked for with [`SidecarEvent::Connect`]) connected or
    /// closed.
    fn handle_stream(&mut self, _now: Instant, _state: StreamState) {}
    /// Its TURN allocation's state and counters, if it is one (for `/health`, `/metrics`).
    fn turn_status(&self) -> Option<super::turn::TurnStatus> {
        None
    }
}

/// A [`Sidecar`]'s state as `/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SidecarHealth {
    /// `stun` or `turn`.
    pub kind: &'static str,
    /// The server as configured (URL; never credentials).
    pub server: String,
    /// One word: `starting`, `ok`, `failing` (STUN); the allocation's state (TURN, e.g.
    /// `allocating`, `ready`, `failed`).
    pub state: String,
    /// Working: the STUN server answers, the TURN allocation holds.
    pub up: bool,
    /// The candidate it provides now (server-reflexive or relayed address).
    pub candidate: Option<SocketAddr>,
    /// The last error, while failing.
    pub error: Option<String>,
    /// Payload bytes relayed through it (TURN), both directions.
    pub bytes_relayed: u64,
}

/// What became of a stream the shell opened for a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamState {
    /// Connected, from this local address.
    Connected(SocketAddr),
    /// The connect failed or the connection closed (why).
    Disconnected(String),
}

/// What a [`Sidecar`] tells the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SidecarEvent {
    /// Open a (new) stream to `server` (TURN over TCP or TLS); the answer comes back through
    /// [`Core::handle_stream`].
    Connect {
        /// The server.
        server: SocketAddr,
        /// TLS over the TCP connection (`turns:`).
        tls: bool,
        /// The TLS server name.
        host: String,
    },
    /// A local candidate to offer viewers (server-reflexive or relayed); `base` is the local
    /// address it stands for.
    Candidate {
        /// The candidate.
        candidate: str0m::Candidate,
    },
    /// A candidate it offered earlier no longer holds (mapping changed, allocation gone).
    CandidateGone {
        /// The candidate's address.
        addr: SocketAddr,
    },
    /// Data a TURN server relayed from `peer` to our relayed address `relayed`: routed to the
    /// viewers as a datagram that arrived on `relayed`.
    Relayed {
        /// The remote peer.
        peer: SocketAddr,
        /// Our relayed address.
        relayed: SocketAddr,
        /// The unwrapped datagram.
        contents: Vec<u8>,
    },
}

/// What only the shell can do, or wants to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// A sidecar wants a (new) stream to `server`: close any open one, connect, and report
    /// with [`Core::handle_stream`]; bytes read go to [`Core::handle_datagram`] with
    /// [`Via::Stream`].
    Connect {
        /// The server.
        server: SocketAddr,
        /// TLS over the TCP connection (`turns:`).
        tls: bool,
        /// The TLS server name.
        host: String,
    },
    /// A viewer needs video: take a frame subscription (the pipeline resumes with an IDR) and
    /// feed its frames to [`Core::handle_frame`].
    SubscribeVideo,
    /// No viewer has video: drop the subscription (the pipeline stops encoding).
    ReleaseVideo,
    /// A viewer takes audio: subscribe to the audio frames and feed them to
    /// [`Core::handle_audio`].
    SubscribeAudio,
    /// No viewer takes audio: drop the audio subscription (the encoder idles).
    ReleaseAudio,
    /// Ask the pipeline for a keyframe.
    Keyframe(KeyframeCause),
    /// A viewer's receiver reports give this percentage of its audio packets lost: tell the
    /// audio encoder ([`crate::audio::AudioHandle::report_loss`]).
    AudioLoss(u8),
    /// Make a still of at most `max_bytes` and hand it to [`Core::handle_still`].
    Still {
        /// For whom.
        viewer: ViewerId,
        /// The data channel it goes back on.
        channel: ChannelId,
        /// The peer's `max-message-size` (capped).
        max_bytes: usize,
    },
    /// ICE and DTLS are up for a viewer.
    ViewerConnected {
        /// Which.
        viewer: ViewerId,
        /// Since it was added.
        after: Duration,
    },
    /// A viewer is gone (closed, failed or silent); its slot is free again.
    ViewerRemoved {
        /// Which.
        viewer: ViewerId,
        /// Why.
        why: RemoveReason,
    },
    /// The local candidates offered to new viewers changed (see [`Core::local_candidates`]).
    CandidatesChanged,
}

/// Why a viewer was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// `DELETE` or the signaling side closed it.
    Closed,
    /// ICE failed, str0m gave up, or the peer fell silent.
    Dead,
}

/// The engine's state: every viewer, the GOP cache, routing and counters. No IO.
pub struct Core {
    /// The engine's UDP port (a datagram's destination is that port on some local address).
    port: u16,
    local_addrs: Box<dyn LocalAddrs>,
    viewers: Vec<Viewer>,
    /// Components beside str0m (STUN, TURN), routed to by source address.
    sidecars: Vec<Box<dyn Sidecar>>,
    /// Local candidates found at run time (server-reflexive, relayed), for new viewers.
    extra_candidates: Vec<str0m::Candidate>,
    /// The shell holds a frame subscription (we asked for one and did not release it).
    subscribed: bool,
    /// The frame stream ended: the pipeline is gone, never subscribe again.
    pipeline_stopped: bool,
    /// The shell holds an audio subscription.
    audio_subscribed: bool,
    /// Who waits to hear that a viewer connected ([`Command::WatchConnected`]); each entry is
    /// answered when its viewer connects or goes, so there are never more than callers
    /// waiting on live viewers.
    watchers: Vec<(ViewerId, oneshot::Sender<bool>)>,
    /// Frames since the last keyframe: a joining viewer starts from here at once.
    gop: Gop,
    /// Limits and admission counters shared with the handles.
    shared: Arc<Shared>,
    /// Counters of viewers already removed, plus engine-level ones.
    totals: RtcStats,
    transmits: VecDeque<CoreTransmit>,
    events: VecDeque<CoreEvent>,
}

impl Core {
    /// A core for an engine on UDP `port`; `local_addrs` resolves the destination of
    /// datagrams that arrive on the unspecified address.
    pub(crate) fn new(port: u16, local_addrs: Box<dyn LocalAddrs>, shared: Arc<Shared>) -> Self {
        Self {
            port,
            local_addrs,
            viewers: Vec::new(),
            sidecars: Vec::new(),
            extra_candidates: Vec::new(),
            subscribed: false,
            pipeline_stopped: false,
            audio_subscribed: false,
            watchers: Vec::new(),
            gop: Gop::default(),
            shared,
            totals: RtcStats::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Put a component beside str0m (see [`Sidecar`]); its first outputs are drained at once.
    pub fn add_sidecar(&mut self, sidecar: Box<dyn Sidecar>, now: Instant) {
        self.sidecars.push(sidecar);
        let i = self.sidecars.len() - 1;
        self.sidecars[i].handle_timeout(now);
        self.drain_sidecar(i, now);
    }

    /// The components beside str0m (for `/health`).
    pub fn sidecars(&self) -> impl Iterator<Item = &dyn Sidecar> {
        self.sidecars.iter().map(|s| s.as_ref())
    }

    /// Local candidates found at run time (server-reflexive, relayed), for new viewers.
    pub fn local_candidates(&self) -> &[str0m::Candidate] {
        &self.extra_candidates
    }

    /// Viewers registered now.
    pub fn viewer_count(&self) -> usize {
        self.viewers.len()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<CoreTransmit> {
        self.transmits.pop_front()
    }

    /// The next thing for the shell to do.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// When [`Core::handle_timeout`] is next due: the earliest of every viewer's str0m timer
    /// and silence deadline and every sidecar's timer. `None` with nothing to wait for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let viewers = self
            .viewers
            .iter()
            .flat_map(|v| [v.poll_timeout(), Some(v.silent_at())])
            .flatten();
        let sidecars = self.sidecars.iter().filter_map(|s| s.poll_timeout());
        viewers.chain(sidecars).min()
    }

    /// A command from a handle; its reply is sent before this returns.
    pub(crate) fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Register { viewer, reply } => {
                let _ = reply.send(self.register(*viewer, now));
            }
            Command::Close { id, reply } => {
                let _ = reply.send(self.close(id));
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
            Command::WatchConnected { id, reply } => {
                match self.viewers.iter().find(|v| v.id == id) {
                    Some(v) if !v.is_connected() => self.watchers.push((id, reply)),
                    Some(_) => {
                        let _ = reply.send(true);
                    }
                    None => {
                        let _ = reply.send(false);
                    }
                }
            }
        }
        self.sweep(now);
    }

    /// A datagram that arrived `via` from `source` at `destination` (the socket's bound
    /// address; when that is unspecified, the local address is looked up only for a datagram
    /// a viewer takes).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        via: Via,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        let claimed = self
            .sidecars
            .iter()
            .position(|s| s.claims(via, source) && s.expects(contents))
            .or_else(|| self.sidecars.iter().position(|s| s.claims(via, source)));
        if let Some(i) = claimed {
            self.sidecars[i].handle_datagram(now, via, source, contents);
            self.drain_sidecar(i, now);
        } else if via == Via::Udp {
            self.route_to_viewer(now, source, Some(destination), contents);
        } else {
            self.totals.datagrams_unrouted += 1;
        }
        self.sweep(now);
    }

    /// The stream to `server` that a sidecar asked for connected or closed.
    pub fn handle_stream(&mut self, now: Instant, server: SocketAddr, state: StreamState) {
        let claims = |s: &dyn Sidecar| {
            [false, true]
                .into_iter()
                .any(|tls| s.claims(Via::Stream { server, tls }, server))
        };
        if let Some(i) = self.sidecars.iter().position(|s| claims(s.as_ref())) {
            self.sidecars[i].handle_stream(now, state);
            self.drain_sidecar(i, now);
        }
        self.sweep(now);
    }

    /// Give a datagram to the viewer whose `Rtc` accepts it. `destination` is `None` when
    /// it is a relayed address already known to be ours.
    fn route_to_viewer(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: Option<SocketAddr>,
        data: &[u8],
    ) {
        let contents = match DatagramRecv::try_from(data) {
            Ok(c) if source.is_ipv4() => c,
            _ => {
                self.totals.datagrams_unrouted += 1;
                return;
            }
        };
        let unspecified = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, self.port));
        let mut input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: destination.unwrap_or(unspecified),
                contents,
            },
        );
        let Some(i) = self.viewers.iter().position(|v| v.rtc.accepts(&input)) else {
            self.totals.datagrams_unrouted += 1;
            tracing::trace!(%source, "datagram for no viewer");
            return;
        };
        if let Input::Receive(_, r) = &mut input {
            if r.destination.ip().is_unspecified() {
                r.destination = self.local_addrs.local_addr(source, self.port);
            }
        }
        self.viewers[i].handle_input(input, now);
        self.process_outputs(i, now);
    }

    /// An encoded frame from the subscription; `skipped` is the subscriber's count of frames
    /// it lost so far (a change means a hole in the GOP cache).
    pub fn handle_frame(&mut self, now: Instant, frame: &EncodedFrame, skipped: u64) {
        let frame = VideoFrame::new(frame);
        self.gop.push(&frame, skipped);
        for i in 0..self.viewers.len() {
            if self.viewers[i].wants_video() {
                self.viewers[i].write_frame(&frame, now);
                self.process_outputs(i, now);
            }
        }
        self.sweep(now);
    }

    /// Opus frames from the audio subscription (one period's, in order): written to every
    /// viewer that takes audio, all of them before its output is drained, so a period costs
    /// each viewer one turn of str0m, not one per frame.
    pub fn handle_audio(&mut self, now: Instant, frames: &[AudioFrame]) {
        for i in 0..self.viewers.len() {
            if self.viewers[i].wants_audio() {
                for frame in frames {
                    self.viewers[i].write_audio(frame, now);
                }
                self.process_outputs(i, now);
            }
        }
        self.sweep(now);
    }

    /// The frame stream ended: the pipeline is gone; never ask to subscribe again (a new
    /// subscription would end at once).
    pub fn handle_frames_ended(&mut self, now: Instant) {
        self.subscribed = false;
        self.pipeline_stopped = true;
        self.sweep(now);
    }

    /// A still the pipeline made for `viewer` (or why not), asked for by
    /// [`CoreEvent::Still`].
    pub fn handle_still(
        &mut self,
        now: Instant,
        viewer: ViewerId,
        channel: ChannelId,
        still: Result<bytes::Bytes, String>,
    ) {
        if let Some(i) = self.viewers.iter().position(|v| v.id == viewer) {
            self.viewers[i].handle_still(channel, still, now);
            self.process_outputs(i, now);
        }
        self.sweep(now);
    }

    /// Time passed: every due viewer and sidecar timer, then liveness.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.viewers.len() {
            if self.viewers[i].poll_timeout().is_some_and(|t| t <= now) {
                self.viewers[i].handle_timeout(now);
                self.process_outputs(i, now);
            }
        }
        for i in 0..self.sidecars.len() {
            if self.sidecars[i].poll_timeout().is_some_and(|t| t <= now) {
                self.sidecars[i].handle_timeout(now);
                self.drain_sidecar(i, now);
            }
        }
        self.sweep(now);
    }

    /// Register a viewer built by [`super::accept_offer`].
    pub(crate) fn register(&mut self, viewer: Viewer, now: Instant) -> Result<(), RtcError> {
        // The caller's `ViewerSlot` already keeps to the limit; this is a second fence.
        let max = self.shared.max_viewers;
        if self.viewers.len() >= max {
            return Err(RtcError::Full { max });
        }
        tracing::info!(viewer = %viewer.id, kind = ?viewer.kind, "viewer added");
        let mut viewer = viewer;
        // Candidates found while its `Rtc` was being built (str0m drops the redundant).
        for c in &self.extra_candidates {
            viewer.rtc.add_local_candidate(c.clone());
        }
        let remotes: Vec<SocketAddr> = viewer.remote_addrs().collect();
        self.viewers.push(viewer);
        let i = self.viewers.len() - 1;
        // str0m's ICE agent schedules nothing until its first timeout: without this call a
        // full-ICE viewer would send no connectivity check before the peer's first datagram,
        // and behind a NAT that datagram never comes (tests/natlab case a).
        self.viewers[i].handle_timeout(now);
        self.process_outputs(i, now);
        self.tell_sidecars_remotes(&remotes, now);
        Ok(())
    }

    /// Hand the viewers' remote candidates to the sidecars (TURN permissions).
    fn tell_sidecars_remotes(&mut self, remotes: &[SocketAddr], now: Instant) {
        for i in 0..self.sidecars.len() {
            for a in remotes {
                self.sidecars[i].handle_remote_candidate(now, *a);
            }
            self.drain_sidecar(i, now);
        }
    }

    fn close(&mut self, id: ViewerId) -> Result<(), RtcError> {
        let i = self
            .viewers
            .iter()
            .position(|v| v.id == id)
            .ok_or(RtcError::NotFound)?;
        let mut v = self.viewers.swap_remove(i);
        v.rtc.disconnect();
        self.retire(&v, RemoveReason::Closed);
        Ok(())
    }

    /// Trickle from the peer; returns the run-time candidates it has not been told of yet.
    fn patch(
        &mut self,
        id: ViewerId,
        if_match: Option<String>,
        candidates: Vec<str0m::Candidate>,
        now: Instant,
    ) -> Result<Vec<str0m::Candidate>, RtcError> {
        let i = self
            .viewers
            .iter()
            .position(|v| v.id == id)
            .ok_or(RtcError::NotFound)?;
        let v = &mut self.viewers[i];
        super::whep::check_if_match(&v.etag, if_match.as_deref())?;
        let max = self.shared.sdp_limits.max_candidates;
        let remotes: Vec<SocketAddr> = candidates.iter().map(|c| c.addr()).collect();
        v.handle_candidates(candidates, max, now)?;
        let late: Vec<str0m::Candidate> = self
            .extra_candidates
            .iter()
            .filter(|c| !v.told_candidates.contains(&c.addr()))
            .cloned()
            .collect();
        v.told_candidates.extend(late.iter().map(|c| c.addr()));
        self.process_outputs(i, now);
        self.tell_sidecars_remotes(&remotes, now);
        Ok(late)
    }

    /// A viewer just connected: replay the cached GOP to it (squeezed before the live edge),
    /// or ask for a keyframe when there is none.
    fn start_video(&mut self, i: usize, now: Instant) {
        if !self.subscribed {
            // Normally taken when the viewer was added; subscribing asks for a keyframe itself.
            self.follow_video_viewers();
            return;
        }
        let frames = self.gop.frames.clone();
        let Some(last) = frames.last() else {
            self.events
                .push_back(CoreEvent::Keyframe(KeyframeCause::NewViewer));
            return;
        };
        let k = frames.len() as u64;
        for (n, f) in frames.iter().enumerate() {
            let ticks = last.ticks.saturating_sub(k - 1 - n as u64);
            self.viewers[i].write_catch_up(f, ticks, now);
            self.process_outputs(i, now);
        }
    }

    /// The draining rule for viewer `i` after an input: act on each of its outputs until it
    /// has none (its `poll_timeout` is then current).
    fn process_outputs(&mut self, i: usize, now: Instant) {
        let mut connected = false;
        while let Some(out) = self.viewers[i].poll_output() {
            match out {
                ViewerOutput::Transmit(t) => self.transmit_for_viewer(t, now),
                ViewerOutput::Event(ViewerEvent::Connected) => {
                    let relayed: Vec<SocketAddr> = self
                        .sidecars
                        .iter()
                        .filter_map(|c| c.relayed_addr())
                        .collect();
                    let v = &self.viewers[i];
                    let after = now.saturating_duration_since(v.created);
                    let pair = v.pair_type(&relayed).map_or("?", |p| p.as_str());
                    tracing::info!(viewer = %v.id, ?after, pair, "viewer connected");
                    let id = v.id;
                    self.events
                        .push_back(CoreEvent::ViewerConnected { viewer: id, after });
                    self.tell_watchers(id, true);
                    connected = true;
                }
                ViewerOutput::Event(ViewerEvent::Keyframe(cause)) => {
                    self.events.push_back(CoreEvent::Keyframe(cause));
                }
                ViewerOutput::Event(ViewerEvent::AudioLoss(percent)) => {
                    self.events.push_back(CoreEvent::AudioLoss(percent));
                }
                ViewerOutput::Event(ViewerEvent::Still { channel, max_bytes }) => {
                    self.events.push_back(CoreEvent::Still {
                        viewer: self.viewers[i].id,
                        channel,
                        max_bytes,
                    });
                }
            }
        }
        // Whether it takes video is known once every output of this turn is handled.
        if connected && self.viewers[i].wants_video() {
            self.start_video(i, now);
        }
    }

    /// A viewer's datagram: out of the UDP socket, or through the sidecar whose relayed
    /// address it is sent from.
    fn transmit_for_viewer(&mut self, t: Transmit, now: Instant) {
        let relay = self
            .sidecars
            .iter()
            .position(|s| s.relayed_addr() == Some(t.source));
        match relay {
            Some(r) => {
                if !self.sidecars[r].send_relayed(now, t.destination, &t.contents) {
                    tracing::trace!(dest = %t.destination, "relayed send dropped");
                }
                while let Some(t) = self.sidecars[r].poll_transmit() {
                    self.transmits.push_back(t);
                }
            }
            None => self.transmits.push_back(CoreTransmit::udp(t)),
        }
    }

    /// Drain sidecar `i` after an input: its transmits out, its candidates kept, relayed data
    /// routed to viewers.
    fn drain_sidecar(&mut self, i: usize, now: Instant) {
        while let Some(t) = self.sidecars[i].poll_transmit() {
            self.transmits.push_back(t);
        }
        while let Some(e) = self.sidecars[i].poll_event() {
            match e {
                SidecarEvent::Connect { server, tls, host } => {
                    self.events
                        .push_back(CoreEvent::Connect { server, tls, host });
                }
                SidecarEvent::Candidate { candidate } => self.add_local_candidate(candidate),
                SidecarEvent::CandidateGone { addr } => {
                    let before = self.extra_candidates.len();
                    self.extra_candidates.retain(|c| c.addr() != addr);
                    if self.extra_candidates.len() != before {
                        self.events.push_back(CoreEvent::CandidatesChanged);
                    }
                }
                SidecarEvent::Relayed {
                    peer,
                    relayed,
                    contents,
                } => self.route_to_viewer(now, peer, Some(relayed), &contents),
            }
            while let Some(t) = self.sidecars[i].poll_transmit() {
                self.transmits.push_back(t);
            }
        }
    }

    /// A new local candidate: offered to new viewers, and added to every current one (str0m
    /// pairs it with their remote candidates; the signaling side trickles it where it can).
    fn add_local_candidate(&mut self, candidate: str0m::Candidate) {
        if self
            .extra_candidates
            .iter()
            .any(|c| c.addr() == candidate.addr() && c.kind() == candidate.kind())
        {
            return;
        }
        for v in &mut self.viewers {
            v.rtc.add_local_candidate(candidate.clone());
        }
        self.extra_candidates.push(candidate);
        self.events.push_back(CoreEvent::CandidatesChanged);
    }

    /// Hold the frame stream exactly while some viewer has video: subscribe for the first
    /// (the pipeline resumes encoding with an IDR), let go with the last (it stops encoding).
    fn follow_video_viewers(&mut self) {
        let video = self.viewers.iter().any(Viewer::has_video);
        if video && !self.subscribed && !self.pipeline_stopped {
            tracing::debug!("first video viewer: subscribing to the frame stream");
            self.subscribed = true;
            self.gop = Gop::default();
            self.events.push_back(CoreEvent::SubscribeVideo);
        } else if !video && self.subscribed {
            tracing::debug!("no video viewer left: the frame stream is released");
            self.subscribed = false;
            self.gop = Gop::default();
            self.events.push_back(CoreEvent::ReleaseVideo);
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
            self.retire(&v, RemoveReason::Dead);
        }
        self.follow_video_viewers();
        self.follow_audio_viewers();
    }

    /// Hold the audio stream exactly while some connected viewer takes audio.
    fn follow_audio_viewers(&mut self) {
        let audio = self.viewers.iter().any(Viewer::wants_audio);
        if audio && !self.audio_subscribed {
            self.audio_subscribed = true;
            self.events.push_back(CoreEvent::SubscribeAudio);
        } else if !audio && self.audio_subscribed {
            self.audio_subscribed = false;
            self.events.push_back(CoreEvent::ReleaseAudio);
        }
    }

    fn retire(&mut self, v: &Viewer, why: RemoveReason) {
        let reason = match why {
            RemoveReason::Closed => "closed",
            RemoveReason::Dead => "ICE failed or silent",
        };
        tracing::info!(viewer = %v.id, kind = ?v.kind, frames = v.frames_sent, why = reason, "viewer removed");
        self.totals.frames_sent += v.frames_sent;
        self.totals.audio_frames_sent += v.audio_frames_sent;
        self.totals.bytes_out += v.bytes_out;
        self.totals.stills_sent += v.stills_sent;
        self.events
            .push_back(CoreEvent::ViewerRemoved { viewer: v.id, why });
        self.tell_watchers(v.id, false);
    }

    /// Answer everyone waiting on `viewer`'s connection.
    fn tell_watchers(&mut self, viewer: ViewerId, connected: bool) {
        let mut i = 0;
        while i < self.watchers.len() {
            if self.watchers[i].0 == viewer {
                let (_, reply) = self.watchers.swap_remove(i);
                let _ = reply.send(connected);
            } else {
                i += 1;
            }
        }
    }

    /// Counters for `/metrics` and `/health`.
    pub fn stats(&self) -> RtcStats {
        let mut s = self.totals.clone();
        s.viewers = self.viewers.len();
        s.connected = self.viewers.iter().filter(|v| v.is_connected()).count();
        s.rtc_built = self.shared.rtc_built.load(Ordering::Relaxed);
        s.local_addr_lookups = self.local_addrs.lookups();
        s.ice = self.sidecars.iter().map(|c| c.health()).collect();
        s.turn = self
            .sidecars
            .iter()
            .filter_map(|x| x.turn_status())
            .collect();
        let relayed: Vec<SocketAddr> = self
            .sidecars
            .iter()
            .filter_map(|c| c.relayed_addr())
            .collect();
        for v in &self.viewers {
            if let Some(t) = v.pair_type(&relayed) {
                if let Some(i) = super::viewer::PairType::ALL.iter().position(|p| *p == t) {
                    s.pair_types[i] += 1;
                }
            }
        }
        for v in &self.viewers {
            s.frames_sent += v.frames_sent;
            s.audio_frames_sent += v.audio_frames_sent;
            s.bytes_out += v.bytes_out;
            s.stills_sent += v.stills_sent;
        }
        s
    }

    /// Disconnect every viewer (the engine is stopping); their last datagrams are queued.
    pub fn disconnect_all(&mut self) {
        for v in &mut self.viewers {
            v.rtc.disconnect();
        }
    }
}

/// A fixed answer for [`LocalAddrs`]: every datagram reached `addr`'s IP.
#[derive(Debug, Clone, Copy)]
pub struct FixedLocalAddr(pub SocketAddrV4);

impl LocalAddrs for FixedLocalAddr {
    fn local_addr(&mut self, _remote: SocketAddr, port: u16) -> SocketAddr {
        SocketAddr::from((*self.0.ip(), port))
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

#[cfg(test)]
mod tests;
