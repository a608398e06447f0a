//! One peer: its `Rtc`, the video it is sent, its data channels and whether it is alive.
//!
//! The viewer does no IO. The engine feeds it inputs (`handle_*(…, now)`, frame writes) and,
//! after each one, calls [`Viewer::poll_output`] until it returns `None`: each output is a
//! datagram to send or a [`ViewerEvent`] for the engine (keyframe and still requests). Then
//! [`Viewer::poll_timeout`] says when it next needs [`Viewer::handle_timeout`].

use std::time::{Duration, Instant};

use str0m::channel::ChannelId;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid, Pt};
use str0m::net::Transmit;
use str0m::{Candidate, CandidateKind, Event, IceConnectionState, Input, Output, Rtc};

use super::{RtcError, ViewerId, ViewerKind, ViewerSlot};
use crate::audio::AudioFrame;
use crate::media::{EncodedFrame, KeyframeCause};

/// Stills a viewer may have in flight at once; more `snap`s get a "busy" reply.
pub const MAX_PENDING_STILLS: usize = 2;

/// Most a player should buffer before rendering (RTP playout-delay extension).
const PLAYOUT_DELAY_MAX: MediaTime = MediaTime::from_millis(100);
/// Timeouts due at once that one drain of [`Viewer::poll_output`] hands str0m before it waits
/// (str0m asks for one after each write; more in a row would be a busy loop).
const MAX_DUE_NOW: u8 = 4;

/// An encoded frame as viewers are written it: the bytes shared (one copy for every viewer),
/// the RTP time in 90 kHz ticks.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    /// The Annex-B access unit.
    pub data: std::sync::Arc<[u8]>,
    /// An IDR (with SPS and PPS).
    pub keyframe: bool,
    /// RTP time, 90 kHz.
    pub ticks: u64,
}

impl VideoFrame {
    /// `frame` as viewers are written it: its bytes shared as they are (no copy).
    pub fn new(frame: &EncodedFrame) -> Self {
        Self {
            data: frame.data.clone(),
            keyframe: frame.keyframe,
            ticks: (frame.timestamp.as_micros() * 9 / 100) as u64,
        }
    }
}

/// What a viewer wants from the engine after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerEvent {
    /// ICE and DTLS are up: video may flow.
    Connected,
    /// The peer asked for a keyframe (PLI/FIR).
    Keyframe(KeyframeCause),
    /// Send a still of at most `max_bytes` on channel `channel`.
    Still {
        /// The channel the still goes back on.
        channel: ChannelId,
        /// The peer's `max-message-size` (capped).
        max_bytes: usize,
    },
    /// The peer's receiver reports give this percentage of the audio packets lost, rounded up
    /// (str0m's stats, once a second while audio flows): the encoder's FEC follows it.
    AudioLoss(u8),
}

/// What [`Viewer::poll_output`] hands the engine.
#[derive(Debug)]
pub enum ViewerOutput {
    /// A datagram to send from the engine's socket.
    Transmit(Transmit),
    /// Something only the engine can do.
    Event(ViewerEvent),
}

/// One WebRTC peer.
pub struct Viewer {
    /// The viewer's id (WHEP resource).
    pub id: ViewerId,
    /// WHEP or a SnapRTC session.
    pub kind: ViewerKind,
    /// The peer connection; the engine asks it `accepts` and disconnects it.
    pub rtc: Rtc,
    /// WHEP ETag of the ICE session.
    pub etag: String,
    /// Video m-line we send on, with the negotiated H.264 payload type.
    video: Option<(Mid, Option<Pt>)>,
    /// Audio m-line we send on (the offer had one and the daemon has audio), with Opus's PT.
    audio: Option<(Mid, Option<Pt>)>,
    /// Largest data channel message the peer takes (capped at `MAX_STILL_BYTES`).
    max_message: usize,
    snapshot_on_connect: bool,
    /// The offer had H.264 video (known before str0m reports the m-line).
    expects_video: bool,
    connected: bool,
    /// Skip frames until an IDR (joined mid-GOP).
    needs_keyframe: bool,
    /// Last datagram from the peer (or creation): silence beyond `silence_timeout` ends it.
    last_rx: Instant,
    silence_timeout: Duration,
    /// str0m's next timeout.
    next_timeout: Instant,
    /// Time of the latest input: a timeout str0m reports in the past is moved after it.
    now: Instant,
    /// Timeouts str0m asked for at `now` and got at once in this drain (bounded: see
    /// [`Viewer::poll_output`]).
    due_now: u8,
    pending_stills: usize,
    /// Remote candidates from the offer and trickle fragments: bounded by
    /// `max_sdp_candidates`, since str0m keeps each one.
    remote_candidates: usize,
    /// This viewer's place among `max_viewers`, given back when it is dropped.
    _slot: ViewerSlot,
    /// When the viewer was added (for time-to-connect and time-to-first-frame logs).
    pub created: Instant,
    /// Video frames written.
    pub frames_sent: u64,
    /// 20 ms Opus frames written (a packet of a 40 ms period counts two).
    pub audio_frames_sent: u64,
    /// Stills sent on data channels.
    pub stills_sent: u64,
    /// UDP payload bytes sent.
    pub bytes_out: u64,
    /// Run-time candidates (server-reflexive, relayed) the peer has been told of, in the
    /// answer or in a PATCH response; the others go back in its next PATCH response.
    pub told_candidates: Vec<std::net::SocketAddr>,
    /// The peer's candidates (offer and trickle) by address, to name the selected pair's type;
    /// bounded by `max_sdp_candidates` like the count above.
    remote_kinds: Vec<(std::net::SocketAddr, CandidateKind)>,
    /// Source and destination of the latest datagram sent: once connected, str0m sends only
    /// on the nominated pair.
    last_send: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
}

/// The type of a viewer's selected candidate pair, as browsers name candidate types: the
/// "furthest" of its two ends (a relay anywhere makes it `relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PairType {
    /// Both ends host candidates (LAN).
    Host,
    /// The peer's address was learnt from its checks (NAT between, no STUN on its side).
    Prflx,
    /// The peer's server-reflexive candidate (its STUN-found public address).
    Srflx,
    /// Through a TURN relay (ours or the peer's).
    Relay,
}

impl PairType {
    /// Every type, in metric order.
    pub const ALL: [PairType; 4] = [
        PairType::Host,
        PairType::Srflx,
        PairType::Prflx,
        PairType::Relay,
    ];

    /// `host`, `srflx`, `prflx` or `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            PairType::Host => "host",
            PairType::Prflx => "prflx",
            PairType::Srflx => "srflx",
            PairType::Relay => "relay",
        }
    }
}

/// How a viewer behaves (from the engine's settings and the peer's offer).
#[derive(Debug, Clone, Copy)]
pub struct ViewerOptions {
    /// Largest data channel message the peer takes (capped at `MAX_STILL_BYTES`).
    pub max_message: usize,
    /// Send a still when a data channel opens.
    pub snapshot_on_connect: bool,
    /// Remove the viewer after this long without a datagram from it.
    pub silence_timeout: Duration,
    /// The offer has H.264 video: the viewer will take frames once connected (str0m reports
    /// the video m-line only then).
    pub expects_video: bool,
    /// Remote candidates in the offer (they count against `max_sdp_candidates`).
    pub remote_candidates: usize,
}

impl Viewer {
    /// A viewer for `rtc`, holding `slot` for its life.
    pub(crate) fn new(
        id: ViewerId,
        kind: ViewerKind,
        rtc: Rtc,
        etag: String,
        opts: ViewerOptions,
        slot: ViewerSlot,
        now: Instant,
    ) -> Self {
        let ViewerOptions {
            max_message,
            snapshot_on_connect,
            silence_timeout,
            expects_video,
            remote_candidates,
        } = opts;
        Self {
            id,
            kind,
            rtc,
            etag,
            video: None,
            audio: None,
            max_message,
            snapshot_on_connect,
            expects_video,
            connected: false,
            needs_keyframe: true,
            last_rx: now,
            silence_timeout,
            next_timeout: now,
            now,
            due_now: 0,
            pending_stills: 0,
            remote_candidates,
            _slot: slot,
            created: now,
            frames_sent: 0,
            audio_frames_sent: 0,
            stills_sent: 0,
            bytes_out: 0,
            told_candidates: Vec::new(),
            remote_kinds: Vec::new(),
            last_send: None,
        }
    }

    /// Remember the peer's candidates' types (from its offer), at most `max`.
    pub(crate) fn note_remote_candidates<'a>(
        &mut self,
        candidates: impl Iterator<Item = &'a Candidate>,
        max: usize,
    ) {
        for c in candidates {
            if self.remote_kinds.len() >= max {
                break;
            }
            self.remote_kinds.push((c.addr(), c.kind()));
        }
    }

    /// The addresses of the peer's candidates (offer and trickle).
    pub fn remote_addrs(&self) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        self.remote_kinds.iter().map(|(a, _)| *a)
    }

    /// The selected pair's type, once connected; `relayed` are our relayed addresses.
    pub fn pair_type(&self, relayed: &[std::net::SocketAddr]) -> Option<PairType> {
        if !self.connected {
            return None;
        }
        let (local, remote) = self.last_send?;
        if relayed.contains(&local) {
            return Some(PairType::Relay);
        }
        let kind = self
            .remote_kinds
            .iter()
            .find(|(a, _)| *a == remote)
            .map(|(_, k)| *k);
        Some(match kind {
            Some(CandidateKind::Host) => PairType::Host,
            Some(CandidateKind::ServerReflexive) => PairType::Srflx,
            Some(CandidateKind::Relayed) => PairType::Relay,
            Some(CandidateKind::PeerReflexive) | None => PairType::Prflx,
        })
    }

    /// ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether this viewer takes, or will take once connected, video frames: the engine holds
    /// the frame stream (and so the pipeline encodes) while any viewer does.
    pub fn has_video(&self) -> bool {
        self.video.is_some() || self.expects_video
    }

    /// Whether this viewer takes video frames (connected with a sending video m-line).
    pub fn wants_video(&self) -> bool {
        self.connected && self.video.is_some()
    }

    /// Whether this viewer takes audio frames (connected with a sending Opus m-line).
    pub fn wants_audio(&self) -> bool {
        self.connected && self.audio.is_some()
    }

    /// Write one Opus frame at its capture time on the shared media clock (48 kHz RTP time), so
    /// the peer lines it up with the video written at its own capture time.
    pub fn write_audio(&mut self, frame: &AudioFrame, now: Instant) {
        self.now = now;
        if !self.wants_audio() {
            return;
        }
        let Some((mid, pt)) = &mut self.audio else {
            return;
        };
        let Some(writer) = self.rtc.writer(*mid) else {
            return;
        };
        if pt.is_none() {
            *pt = super::opus_pt(writer.payload_params());
        }
        let Some(pt) = *pt else {
            return;
        };
        let ticks = (frame.timestamp.as_nanos() * 48_000 / 1_000_000_000) as u64;
        let time = MediaTime::new(ticks, Frequency::FORTY_EIGHT_KHZ);
        match writer.write(pt, now, time, frame.data.to_vec()) {
            Ok(()) => self.audio_frames_sent += frame.frames(),
            Err(e) => tracing::debug!(viewer = %self.id, error = %e, "audio write failed"),
        }
    }

    /// When [`Viewer::handle_timeout`] is next due (as of the last [`Viewer::poll_output`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_timeout)
    }

    /// When this viewer counts as silent unless a datagram arrives first.
    pub fn silent_at(&self) -> Instant {
        self.last_rx + self.silence_timeout
    }

    /// Alive: str0m has not given up, and the peer spoke within the silence timeout.
    pub fn is_alive(&self, now: Instant) -> bool {
        self.rtc.is_alive() && now.saturating_duration_since(self.last_rx) < self.silence_timeout
    }

    /// A datagram this viewer accepted (`Rtc::accepts` was true).
    pub fn handle_input(&mut self, input: Input, now: Instant) {
        self.now = now;
        self.last_rx = now;
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(viewer = %self.id, error = %e, "viewer input failed; disconnecting");
            self.rtc.disconnect();
        }
    }

    /// Time passed: str0m's timers (ICE consent, RTCP, retransmits).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(viewer = %self.id, error = %e, "viewer timeout failed; disconnecting");
            self.rtc.disconnect();
        }
    }

    /// WHEP trickle: add remote candidates, refusing more than `max` from this viewer in all.
    pub fn handle_candidates(
        &mut self,
        candidates: Vec<Candidate>,
        max: usize,
        now: Instant,
    ) -> Result<(), RtcError> {
        self.now = now;
        let total = self.remote_candidates + candidates.len();
        if total > max {
            return Err(RtcError::BadFragment(format!(
                "the viewer would have {total} remote candidates, more than {max} \
                 (server.max_sdp_candidates)"
            )));
        }
        self.remote_candidates = total;
        for c in candidates {
            self.remote_kinds.push((c.addr(), c.kind()));
            self.rtc.add_remote_candidate(c);
        }
        Ok(())
    }

    /// Write one live frame (skipped until this viewer's first keyframe).
    pub fn write_frame(&mut self, frame: &VideoFrame, now: Instant) {
        self.now = now;
        if !self.wants_video() {
            return;
        }
        if self.needs_keyframe {
            if !frame.keyframe {
                return;
            }
            self.needs_keyframe = false;
            tracing::debug!(viewer = %self.id, after = ?now.duration_since(self.created), "first keyframe out");
        }
        self.write_at(frame, frame.ticks, now);
    }

    /// Write a cached frame of the current GOP at RTP time `ticks` (the engine squeezes the
    /// catch-up burst just before the live edge, so the player shows the live picture at once
    /// instead of replaying the GOP). The first one must be the GOP's keyframe.
    pub fn write_catch_up(&mut self, frame: &VideoFrame, ticks: u64, now: Instant) {
        self.now = now;
        if !self.wants_video() {
            return;
        }
        if frame.keyframe && self.needs_keyframe {
            self.needs_keyframe = false;
            tracing::debug!(viewer = %self.id, after = ?now.duration_since(self.created), "started from the cached GOP");
        }
        if !self.needs_keyframe {
            self.write_at(frame, ticks, now);
        }
    }

    fn write_at(&mut self, frame: &VideoFrame, ticks: u64, now: Instant) {
        let Some((mid, pt)) = &mut self.video else {
            return;
        };
        let Some(writer) = self.rtc.writer(*mid) else {
            return;
        };
        if pt.is_none() {
            *pt = super::h264_pt(writer.payload_params());
        }
        let Some(pt) = *pt else {
            return;
        };
        let writer = writer.playout_delay(MediaTime::ZERO, PLAYOUT_DELAY_MAX);
        match writer.write(pt, now, MediaTime::from_90khz(ticks), frame.data.clone()) {
            Ok(()) => self.frames_sent += 1,
            Err(e) => tracing::debug!(viewer = %self.id, error = %e, "video write failed"),
        }
    }

    /// A still the pipeline made (or why it could not): send it (or the error text) on
    /// `channel`; returns whether the still was sent.
    pub fn handle_still(
        &mut self,
        channel: ChannelId,
        still: Result<bytes::Bytes, String>,
        now: Instant,
    ) -> bool {
        self.now = now;
        self.pending_stills = self.pending_stills.saturating_sub(1);
        let Some(mut ch) = self.rtc.channel(channel) else {
            return false;
        };
        match still {
            Ok(jpeg) if jpeg.len() <= self.max_message => match ch.write(true, &jpeg) {
                Ok(true) => {
                    self.stills_sent += 1;
                    true
                }
                Ok(false) => {
                    let _ = ch.write(
                        false,
                        error_json("busy: data channel buffer full").as_bytes(),
                    );
                    false
                }
                Err(e) => {
                    tracing::debug!(viewer = %self.id, error = %e, "still write failed");
                    false
                }
            },
            Ok(jpeg) => {
                let msg = format!(
                    "still of {} bytes exceeds max-message-size {}",
                    jpeg.len(),
                    self.max_message
                );
                let _ = ch.write(false, error_json(&msg).as_bytes());
                false
            }
            Err(reason) => {
                let _ = ch.write(false, error_json(&reason).as_bytes());
                false
            }
        }
    }

    /// The next thing the engine must do for this viewer, consumed; `None` once str0m has
    /// nothing more until its next timeout (see [`Viewer::poll_timeout`]). Call it until
    /// `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ViewerOutput> {
        loop {
            if !self.rtc.is_alive() {
                self.due_now = 0;
                self.next_timeout = self.now;
                return None;
            }
            let out = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(viewer = %self.id, error = %e, "poll_output failed; disconnecting");
                    self.rtc.disconnect();
                    continue;
                }
            };
            match out {
                Output::Timeout(t) if t <= self.now && self.due_now < MAX_DUE_NOW => {
                    // str0m's pacer sends what was just written on its next timeout, which it
                    // asks for at once: give it now, in this turn, rather than wake the engine
                    // again a millisecond later to send the frame then.
                    self.due_now += 1;
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(self.now)) {
                        tracing::debug!(viewer = %self.id, error = %e, "viewer timeout failed; disconnecting");
                        self.rtc.disconnect();
                    }
                }
                Output::Timeout(t) => {
                    // Never busy-loop on a timeout in the past.
                    self.due_now = 0;
                    self.next_timeout = t.max(self.now + Duration::from_millis(1));
                    return None;
                }
                Output::Transmit(t) => {
                    self.bytes_out += t.contents.len() as u64;
                    self.last_send = Some((t.source, t.destination));
                    return Some(ViewerOutput::Transmit(t));
                }
                Output::Event(e) => {
                    if let Some(e) = self.handle_event(e) {
                        return Some(ViewerOutput::Event(e));
                    }
                }
            }
        }
    }

    /// Act on a str0m event; what the engine must do about it, if anything.
    fn handle_event(&mut self, e: Event) -> Option<ViewerEvent> {
        match e {
            Event::Connected => {
                self.connected = true;
                self.needs_keyframe = true;
                return Some(ViewerEvent::Connected);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                tracing::debug!(viewer = %self.id, "ICE disconnected");
            }
            Event::MediaAdded(m) => {
                let sends = matches!(m.direction, Direction::SendOnly | Direction::SendRecv);
                if m.kind == MediaKind::Video && sends && self.video.is_none() {
                    self.video = Some((m.mid, None));
                }
                if m.kind == MediaKind::Audio && sends && self.audio.is_none() {
                    self.audio = Some((m.mid, None));
                }
            }
            Event::MediaEgressStats(s)
                if self.audio.as_ref().is_some_and(|(mid, _)| *mid == s.mid) =>
            {
                if let Some(loss) = s.loss.filter(|l| l.is_finite()) {
                    let percent = (loss.clamp(0.0, 1.0) * 100.0).ceil() as u8;
                    return Some(ViewerEvent::AudioLoss(percent));
                }
            }
            Event::KeyframeRequest(req) => {
                let cause = match req.kind {
                    KeyframeRequestKind::Pli => KeyframeCause::Pli,
                    KeyframeRequestKind::Fir => KeyframeCause::Fir,
                };
                return Some(ViewerEvent::Keyframe(cause));
            }
            Event::ChannelOpen(id, label) => {
                tracing::debug!(viewer = %self.id, %label, "data channel open");
                if self.snapshot_on_connect {
                    return self.want_still(id);
                }
            }
            Event::ChannelData(d) => {
                if d.binary {
                    self.reply_error(
                        d.id,
                        "binary messages are not understood; send the text \"snap\"",
                    );
                } else if d.data.trim_ascii() == b"snap" {
                    return self.want_still(d.id);
                } else {
                    self.reply_error(d.id, "unknown command; send the text \"snap\"");
                }
            }
            _ => {}
        }
        None
    }

    fn want_still(&mut self, channel: ChannelId) -> Option<ViewerEvent> {
        if self.pending_stills >= MAX_PENDING_STILLS {
            self.reply_error(channel, "busy: a still is already on its way");
            return None;
        }
        self.pending_stills += 1;
        Some(ViewerEvent::Still {
            channel,
            max_bytes: self.max_message,
        })
    }

    fn reply_error(&mut self, channel: ChannelId, msg: &str) {
        if let Some(mut ch) = self.rtc.channel(channel) {
            let _ = ch.write(false, error_json(msg).as_bytes());
        }
    }
}

/// `{"error":"…"}` as sent on the data channel.
pub fn error_json(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_are_json() {
        let v: serde_json::Value = serde_json::from_str(&error_json("a \"b\"")).unwrap();
        assert_eq!(v["error"], "a \"b\"");
    }
}
