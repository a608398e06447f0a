//! WebRTC: every viewer is a `str0m::Rtc` owned by one engine task on one UDP port.
//!
//! - [`core`]: the engine's sans-IO state (every viewer's `Rtc`, the GOP cache, routing):
//!   `handle_*(now, …)` in, `poll_transmit`/`poll_event`/`poll_timeout` out; demultiplexes
//!   datagrams with `Rtc::accepts` (after any [`core::Sidecar`], e.g. STUN or TURN, claims its
//!   server's) and drains each `Rtc` after every input (str0m's single-mutation rule).
//! - [`engine`]: the thin tokio shell that owns the socket, the frame subscription and the
//!   still tasks, and moves bytes and events between them and the core.
//! - [`viewer`]: one peer: video writes, data channel stills, liveness.
//! - [`offer`]: what an offer asks for (pure SDP text inspection).
//! - [`whep`]: WHEP over HTTP (RFC 9725) as functions from request to response.
//! - [`candidates`]: which local addresses are announced as host candidates.
//! - [`ice_servers`]: `[ice]` servers as RFC 9725 `Link` headers for browsers (REST
//!   credentials made from a TURN secret, never the secret).
//! - [`stun`]: server-reflexive candidates from STUN Binding requests (a [`core::Sidecar`]).
//! - [`turn`]: one TURN allocation shared by every viewer (relayed candidates), a pure core
//!   around `turn-client-proto`.
//!
//! Callers hold an [`RtcHandle`]: [`RtcHandle::answer`] builds an `Rtc` from an offer in the
//! caller's task, registers it with the engine (so early STUN is not dropped) and only then
//! returns the answer with every server candidate in it (no trickle needed).

pub mod candidates;
pub mod core;
pub mod engine;
pub mod ice_servers;
pub mod offer;
pub mod stun;
pub mod turn;
pub mod turn_stream;
pub mod viewer;
pub mod whep;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::Pt;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::sync::{mpsc, oneshot};

pub use engine::{Engine, EngineSettings};
pub use offer::SdpLimits;

/// Largest JPEG a peer is ever sent, whatever its `max-message-size` says.
pub const MAX_STILL_BYTES: usize = 256 * 1024;

/// How a viewer came in; decides what an offer must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerKind {
    /// `POST /whep`: the offer must have H.264 video.
    Whep,
    /// The built-in SnapRTC capture member in hub session `session`: stills over the data
    /// channel; video too when the offer has a video m-line that can take H.264.
    SnapRtc {
        /// The hub session (for logs).
        session: String,
    },
    /// An offer over go2rtc's WebSocket API (`/api/ws`): H.264 video required, as for WHEP.
    /// go2rtc's players also offer audio (recvonly, and sendonly for two-way audio); with
    /// `[audio]` off those m-lines are answered rejected, with it the recvonly one gets Opus.
    Go2rtc,
}

/// A viewer's unguessable id (it is a WHEP resource URL): 128 random bits in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewerId(u128);

impl ViewerId {
    /// A fresh random id (128 bits from the OS: a WHEP resource URL is its only secret, so a
    /// guessable one would let another client PATCH or DELETE the viewer).
    pub fn random() -> Result<Self, crate::ids::RandomError> {
        Ok(ViewerId(u128::from_le_bytes(crate::ids::random_bytes()?)))
    }

    /// Parse the 32 hex digits of a WHEP resource path.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(ViewerId)
    }
}

impl fmt::Display for ViewerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// An accepted offer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The new viewer (its WHEP resource is `/whep/{id}`).
    pub id: ViewerId,
    /// The SDP answer, every server candidate included.
    pub sdp: String,
    /// WHEP entity tag of the ICE session (changes on ICE restart).
    pub etag: String,
}

/// Why the engine refused a request. Each maps to one HTTP status in [`whep`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcError {
    /// The offer is not SDP, is over an SDP budget, or str0m refused it (400).
    #[error("bad SDP offer: {0}")]
    BadOffer(String),
    /// A WHEP offer without video (406).
    #[error("the offer has no video m-line")]
    NoVideo,
    /// A WHEP offer whose video cannot be H.264 packetization-mode 1 (406).
    #[error("the offer's video has no H.264 with packetization-mode=1")]
    NoH264,
    /// A SnapRTC offer with neither usable video nor a data channel (406).
    #[error("the offer has neither video nor a data channel")]
    NothingToSend,
    /// `max_viewers` viewers already (503); no `Rtc` was built.
    #[error("too many viewers (max {max})")]
    Full {
        /// `[server] max_viewers`.
        max: usize,
    },
    /// No viewer with that id (404).
    #[error("no such viewer")]
    NotFound,
    /// A PATCH with a stale `If-Match` (412).
    #[error("If-Match does not match the ETag")]
    PreconditionFailed,
    /// A PATCH without `If-Match` (428).
    #[error("If-Match is required")]
    PreconditionRequired,
    /// A trickle fragment over a budget or with a bad candidate (400).
    #[error("bad trickle ICE fragment: {0}")]
    BadFragment(String),
    /// The engine task is gone (503).
    #[error("the WebRTC engine is not running")]
    Stopped,
    /// No id could be minted: the OS gave no randomness (503).
    #[error("cannot mint a viewer id: {0}")]
    NoRandomness(#[from] crate::ids::RandomError),
}

/// Counters for `/metrics` and `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtcStats {
    /// Viewers registered now (WHEP and SnapRTC together).
    pub viewers: usize,
    /// Of those, viewers whose ICE+DTLS is up.
    pub connected: usize,
    /// Video frames written to viewers (one per frame per viewer).
    pub frames_sent: u64,
    /// 20 ms Opus frames written to viewers (per frame per viewer that takes audio, however
    /// many share a packet).
    pub audio_frames_sent: u64,
    /// UDP payload bytes sent.
    pub bytes_out: u64,
    /// JPEG stills sent over data channels.
    pub stills_sent: u64,
    /// Viewers removed because ICE failed or they fell silent.
    pub timed_out: u64,
    /// `Rtc`s built (each a DTLS key and certificate): never more than viewers admitted.
    pub rtc_built: u64,
    /// Datagrams no viewer accepted (junk, strays, late packets of removed viewers).
    pub datagrams_unrouted: u64,
    /// Route lookups (syscalls) made to learn which local address a viewer sent to.
    pub local_addr_lookups: u64,
    /// STUN clients and TURN allocations beside the viewers (`[ice]`), one entry each.
    pub ice: Vec<core::SidecarHealth>,
    /// The TURN allocation(s) (`[ice] turn_servers`): state and relayed bytes.
    pub turn: Vec<turn::TurnStatus>,
    /// Connected viewers by their selected candidate pair's type, in
    /// [`viewer::PairType::ALL`] order (host, srflx, prflx, relay).
    pub pair_types: [usize; 4],
}

/// Commands to the engine task (bounded queue).
pub(crate) enum Command {
    Register {
        viewer: Box<viewer::Viewer>,
        reply: oneshot::Sender<Result<(), RtcError>>,
    },
    Close {
        id: ViewerId,
        reply: oneshot::Sender<Result<(), RtcError>>,
    },
    Patch {
        id: ViewerId,
        if_match: Option<String>,
        candidates: Vec<Candidate>,
        /// The server's candidates found since the peer was last told (see
        /// [`RtcHandle::patch`]).
        reply: oneshot::Sender<Result<Vec<Candidate>, RtcError>>,
    },
    Stats {
        reply: oneshot::Sender<RtcStats>,
    },
    /// Answer `true` once viewer `id` is connected (at once if it is), `false` once it is
    /// gone without connecting or if there is no such viewer.
    WatchConnected {
        id: ViewerId,
        reply: oneshot::Sender<bool>,
    },
}

/// The cloneable way in to the engine (HTTP handlers, the hub's capture member).
#[derive(Clone)]
pub struct RtcHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// What every new `Rtc` is built with (fixed at start), and the admission counters callers
/// update before building one.
pub(crate) struct Shared {
    /// Host candidates on the engine's one UDP port.
    pub candidates: Vec<Candidate>,
    pub max_viewers: usize,
    pub snapshot_on_connect: bool,
    pub silence_timeout: Duration,
    /// Budgets for offers and trickle fragments.
    pub sdp_limits: SdpLimits,
    /// Full ICE instead of ICE-lite (`[ice] mode`).
    pub full_ice: bool,
    /// Candidates found at run time (server-reflexive, relayed), published by the engine.
    pub extra_candidates: tokio::sync::watch::Receiver<Vec<Candidate>>,
    /// The daemon has audio: offers' audio m-lines are answered with Opus (else rejected).
    pub audio: std::sync::atomic::AtomicBool,
    /// Viewer slots taken (see [`ViewerSlot`]): checked before an `Rtc` is built, so a flood
    /// of offers over `max_viewers` costs no DTLS key or certificate.
    pub slots: Arc<AtomicUsize>,
    /// `Rtc`s built, for [`RtcStats::rtc_built`].
    pub rtc_built: AtomicU64,
}

/// One of the `max_viewers` places, taken before an `Rtc` is built and given back when it is
/// dropped: with a viewer the engine removed, or with an offer that failed on the way.
#[derive(Debug)]
pub(crate) struct ViewerSlot {
    taken: Arc<AtomicUsize>,
}

impl ViewerSlot {
    /// Take a place, or [`RtcError::Full`] when all `max` are taken.
    fn take(taken: &Arc<AtomicUsize>, max: usize) -> Result<Self, RtcError> {
        taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| ViewerSlot {
                taken: taken.clone(),
            })
            .map_err(|_| RtcError::Full { max })
    }
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// H.264 payload types we answer with: Constrained Baseline first, Baseline as a fallback
/// (a CB stream is valid Baseline), both packetization-mode 1.
const H264_CB: (u8, u8, u32) = (108, 109, 0x42e01f);
const H264_BASELINE: (u8, u8, u32) = (127, 121, 0x42001f);

/// How long a viewer may send nothing (browsers send ICE consent checks every few seconds and
/// RTCP every second) before it is dropped; default of [`EngineSettings::silence_timeout`].
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(15);

impl RtcHandle {
    /// Accept `offer_sdp` and return the answer, once the new viewer is registered.
    ///
    /// Cheapest checks first: the SDP budgets and what the offer asks for (one pass over the
    /// text), then a viewer slot, and only then str0m's parser and the `Rtc` (a DTLS key and
    /// certificate).
    pub async fn answer(&self, offer_sdp: String, kind: ViewerKind) -> Result<Answer, RtcError> {
        let (viewer, answer) = accept_offer(&self.shared, &offer_sdp, kind, Instant::now())?;
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Register {
                viewer: Box::new(viewer),
                reply,
            })
            .await
            .map_err(|_| RtcError::Stopped)?;
        rx.await.map_err(|_| RtcError::Stopped)??;
        Ok(answer)
    }

    /// Resolves to `true` once viewer `id` is connected (ICE and DTLS up; at once if it
    /// already is), `false` once it is gone without connecting, if there is no such viewer,
    /// or if the engine stopped. Owns what it needs: it may outlive this handle.
    pub fn connected(
        &self,
        id: ViewerId,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let commands = self.commands.clone();
        async move {
            let (reply, rx) = oneshot::channel();
            if commands
                .send(Command::WatchConnected { id, reply })
                .await
                .is_err()
            {
                return false;
            }
            rx.await.unwrap_or(false)
        }
    }

    /// Remove a viewer and free everything it held.
    pub async fn close(&self, id: ViewerId) -> Result<(), RtcError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close { id, reply }).await?;
        rx.await.map_err(|_| RtcError::Stopped)?
    }

    /// WHEP trickle: add remote candidates, checking `If-Match` against the viewer's ETag.
    /// Returns the server's candidates found since the peer was last told (in its answer or
    /// an earlier PATCH): trickle in the other direction.
    pub async fn patch(
        &self,
        id: ViewerId,
        if_match: Option<String>,
        fragment: &str,
    ) -> Result<Vec<Candidate>, RtcError> {
        let candidates = offer::parse_sdpfrag(fragment, &self.shared.sdp_limits)
            .map_err(|e| RtcError::BadFragment(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Patch {
            id,
            if_match,
            candidates,
            reply,
        })
        .await?;
        rx.await.map_err(|_| RtcError::Stopped)?
    }

    /// Counters for `/metrics` and `/health`.
    pub async fn stats(&self) -> Result<RtcStats, RtcError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats { reply }).await?;
        rx.await.map_err(|_| RtcError::Stopped)
    }

    /// The most viewers at once.
    pub fn max_viewers(&self) -> usize {
        self.shared.max_viewers
    }

    /// Candidates the engine found at run time (server-reflexive from `[ice] stun_servers`,
    /// relayed from TURN): in every answer made from now on.
    pub fn extra_candidates(&self) -> Vec<Candidate> {
        self.shared.extra_candidates.borrow().clone()
    }

    /// A receiver of [`RtcHandle::extra_candidates`] to wait on (`changed`, `wait_for`).
    pub fn watch_extra_candidates(&self) -> tokio::sync::watch::Receiver<Vec<Candidate>> {
        self.shared.extra_candidates.clone()
    }

    /// The host candidates' addresses (the engine's UDP port on each announced address).
    pub fn candidate_addrs(&self) -> Vec<SocketAddr> {
        self.shared.candidates.iter().map(|c| c.addr()).collect()
    }

    async fn send(&self, cmd: Command) -> Result<(), RtcError> {
        self.commands.send(cmd).await.map_err(|_| RtcError::Stopped)
    }
}

/// Build a viewer from an offer, and the answer to send back: pure apart from the randomness
/// of ids and DTLS keys, so the core's tests use it as the handles do.
///
/// Cheapest checks first: the SDP budgets and what the offer asks for (one pass over the
/// text), then a viewer slot, and only then str0m's parser and the `Rtc` (a DTLS key and
/// certificate).
pub(crate) fn accept_offer(
    shared: &Shared,
    offer_sdp: &str,
    kind: ViewerKind,
    now: Instant,
) -> Result<(viewer::Viewer, Answer), RtcError> {
    let (cleaned, summary) = offer::inspect_with(offer_sdp, &shared.sdp_limits)
        .map_err(|e| RtcError::BadOffer(e.to_string()))?;
    check_kind(&kind, &summary)?;
    let slot = ViewerSlot::take(&shared.slots, shared.max_viewers)?;
    let (id, etag_id) = (ViewerId::random()?, ViewerId::random()?);
    let offer =
        SdpOffer::from_sdp_string(&cleaned).map_err(|e| RtcError::BadOffer(e.to_string()))?;

    let mut rtc = new_rtc(now, shared.full_ice, shared.audio.load(Ordering::Relaxed));
    shared.rtc_built.fetch_add(1, Ordering::Relaxed);
    for c in &shared.candidates {
        rtc.add_local_candidate(c.clone());
    }
    let told: Vec<SocketAddr> = shared
        .extra_candidates
        .borrow()
        .iter()
        .map(|c| {
            rtc.add_local_candidate(c.clone());
            c.addr()
        })
        .collect();
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| RtcError::BadOffer(e.to_string()))?;
    let sdp = answer.to_sdp_string();

    let etag = format!("\"{etag_id}\"");
    let max_message = summary.max_message_size.min(MAX_STILL_BYTES);
    let viewer = viewer::Viewer::new(
        id,
        kind,
        rtc,
        etag.clone(),
        viewer::ViewerOptions {
            max_message,
            snapshot_on_connect: shared.snapshot_on_connect,
            silence_timeout: shared.silence_timeout,
            expects_video: summary.has_video && summary.has_h264,
            remote_candidates: summary.candidates,
        },
        slot,
        now,
    );
    let mut viewer = viewer;
    viewer.told_candidates = told;
    let remote: Vec<Candidate> = offer::fragment_candidates(&cleaned)
        .into_iter()
        .filter_map(|l| Candidate::from_sdp_string(l).ok())
        .collect();
    viewer.note_remote_candidates(remote.iter(), shared.sdp_limits.max_candidates);
    Ok((viewer, Answer { id, sdp, etag }))
}

/// WHEP and go2rtc need H.264 video; SnapRTC needs a data channel or H.264 video.
fn check_kind(kind: &ViewerKind, summary: &offer::OfferSummary) -> Result<(), RtcError> {
    if matches!(kind, ViewerKind::Whep | ViewerKind::Go2rtc) {
        if !summary.has_video {
            return Err(RtcError::NoVideo);
        }
        if !summary.has_h264 {
            return Err(RtcError::NoH264);
        }
    } else if !(summary.has_data || (summary.has_video && summary.has_h264)) {
        return Err(RtcError::NothingToSend);
    }
    Ok(())
}

/// A fresh `Rtc` as every viewer gets it: ICE-lite unless `full_ice` (with host candidates
/// only the browser does the checks; with STUN/TURN servers both sides check pairs), H.264 CB
/// only (and Opus with `audio`: an offer's audio m-line is then answered sendonly/sendrecv,
/// else rejected, and str0m's stats run once a second for the receiver's audio loss), room for
/// a 256 KiB still in the SCTP buffer.
/// How often str0m reports a viewer's stats when it may take audio (the receiver's audio loss
/// steers the Opus encoder's FEC).
const AUDIO_STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn new_rtc(now: Instant, full_ice: bool, audio: bool) -> Rtc {
    // str0m's standard map without transport-wide congestion control: the stream is encoded
    // once for every viewer at the configured bitrate, so there is no per-viewer bandwidth
    // estimate to feed. With it each viewer sends a feedback packet every ~100 ms (10–17 a
    // second, most of what the engine receives), each of which wakes the engine to be
    // decrypted and parsed for nothing, and every packet sent carries and records a sequence
    // number.
    let mut exts = ExtensionMap::empty();
    for (id, ext) in ExtensionMap::standard().iter() {
        if *ext != Extension::TransportSequenceNumber {
            exts.set(id, ext.clone());
        }
    }
    // Lets the player render at once instead of buffering (live camera, LAN).
    exts.set(14, Extension::PlayoutDelay);
    let mut cfg = RtcConfig::new()
        .set_ice_lite(!full_ice)
        .clear_codecs()
        .set_sctp_max_buffered_amount(2 * MAX_STILL_BYTES)
        .set_extension_map(exts);
    let codecs = cfg.codec_config();
    for (pt, rtx, profile) in [H264_CB, H264_BASELINE] {
        codecs.add_h264(pt.into(), Some(rtx.into()), true, profile);
    }
    if audio {
        codecs.enable_opus(true, false);
        cfg = cfg.set_stats_interval(Some(AUDIO_STATS_INTERVAL));
    }
    // Nor its `a=rtcp-fb:… transport-cc` (see above).
    for p in cfg.codec_config().iter_mut() {
        p.set_fb_transport_cc(false);
    }
    cfg.build(now)
}

/// The payload type str0m negotiated for Opus on an audio writer, if any.
pub(crate) fn opus_pt<'a>(
    mut params: impl Iterator<Item = &'a str0m::format::PayloadParams>,
) -> Option<Pt> {
    params
        .find(|p| p.spec().codec == Codec::Opus)
        .map(|p| p.pt())
}

/// The payload type str0m negotiated for H.264 on a video writer, if any.
pub(crate) fn h264_pt<'a>(
    mut params: impl Iterator<Item = &'a str0m::format::PayloadParams>,
) -> Option<Pt> {
    params
        .find(|p| p.spec().codec == Codec::H264)
        .map(|p| p.pt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_ids_round_trip_and_reject_junk() {
        let id = ViewerId::random().unwrap();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(ViewerId::parse(&s), Some(id));
        assert_ne!(ViewerId::random().unwrap(), id);
        assert_eq!(ViewerId::parse("xyz"), None);
        assert_eq!(ViewerId::parse(&"g".repeat(32)), None);
        assert_eq!(ViewerId::parse("+0000000000000000000000000000000"), None);
    }

    #[test]
    fn viewer_slots_are_bounded_and_given_back_on_drop() {
        let taken = Arc::new(AtomicUsize::new(0));
        let a = ViewerSlot::take(&taken, 2).unwrap();
        let b = ViewerSlot::take(&taken, 2).unwrap();
        assert_eq!(
            ViewerSlot::take(&taken, 2).unwrap_err(),
            RtcError::Full { max: 2 }
        );
        assert_eq!(taken.load(Ordering::Acquire), 2, "a refusal takes nothing");
        drop(a);
        let _c = ViewerSlot::take(&taken, 2).unwrap();
        drop(b);
        assert_eq!(taken.load(Ordering::Acquire), 1);
    }
}
