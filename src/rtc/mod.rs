//! WebRTC: every viewer is a `str0m::Rtc` owned by one engine task on one UDP port.
//!
//! - [`engine`]: the task that owns the socket and every `Rtc`; demultiplexes datagrams with
//!   `Rtc::accepts` and drains `poll_output` after every input (str0m's single-mutation rule).
//! - [`viewer`]: one peer: video writes, data channel stills, liveness.
//! - [`offer`]: what an offer asks for (pure SDP text inspection).
//! - [`whep`]: WHEP over HTTP (RFC 9725) as functions from request to response.
//! - [`candidates`]: which local addresses are announced as host candidates.
//!
//! Callers hold an [`RtcHandle`]: [`RtcHandle::answer`] builds an `Rtc` from an offer in the
//! caller's task, registers it with the engine (so early STUN is not dropped) and only then
//! returns the answer with every server candidate in it (no trickle needed).

pub mod candidates;
pub mod engine;
pub mod offer;
pub mod viewer;
pub mod whep;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::Pt;
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::sync::{mpsc, oneshot};

pub use engine::{Engine, EngineSettings};

/// Largest JPEG a peer is ever sent, whatever its `max-message-size` says.
pub const MAX_STILL_BYTES: usize = 256 * 1024;

/// How a viewer came in; decides what an offer must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerKind {
    /// `POST /whep`: the offer must have H.264 video.
    Whep,
    /// The built-in SnapRTC capture member in hub session `session`: stills over the data
    /// channel; video too when the offer has a video m-line that can take H.264.
    SnapRtc { session: String },
}

/// A viewer's unguessable id (it is a WHEP resource URL): 128 random bits in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewerId(u128);

impl ViewerId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        // No OS randomness is a broken system, not bad input; a counter keeps ids unique.
        if getrandom::fill(&mut b).is_err() {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(1);
            let n = N.fetch_add(1, Ordering::Relaxed);
            b[..8].copy_from_slice(&n.to_le_bytes());
        }
        ViewerId(u128::from_le_bytes(b))
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
    pub id: ViewerId,
    /// The SDP answer, every server candidate included.
    pub sdp: String,
    /// WHEP entity tag of the ICE session (changes on ICE restart).
    pub etag: String,
}

/// Why the engine refused a request. Each maps to one HTTP status in [`whep`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcError {
    #[error("unparsable SDP offer: {0}")]
    BadOffer(String),
    #[error("the offer has no video m-line")]
    NoVideo,
    #[error("the offer's video has no H.264 with packetization-mode=1")]
    NoH264,
    #[error("the offer has neither video nor a data channel")]
    NothingToSend,
    #[error("too many viewers (max {max})")]
    Full { max: usize },
    #[error("no such viewer")]
    NotFound,
    #[error("If-Match does not match the ETag")]
    PreconditionFailed,
    #[error("If-Match is required")]
    PreconditionRequired,
    #[error("bad trickle ICE fragment: {0}")]
    BadFragment(String),
    #[error("the WebRTC engine is not running")]
    Stopped,
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
    /// UDP payload bytes sent.
    pub bytes_out: u64,
    /// JPEG stills sent over data channels.
    pub stills_sent: u64,
    /// Viewers removed because ICE failed or they fell silent.
    pub timed_out: u64,
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
        reply: oneshot::Sender<Result<(), RtcError>>,
    },
    Stats {
        reply: oneshot::Sender<RtcStats>,
    },
}

/// The cloneable way in to the engine (HTTP handlers, the hub's capture member).
#[derive(Clone)]
pub struct RtcHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// Immutable after start: what every new `Rtc` is built with.
pub(crate) struct Shared {
    /// Host candidates on the engine's one UDP port.
    pub candidates: Vec<Candidate>,
    pub max_viewers: usize,
    pub snapshot_on_connect: bool,
    pub silence_timeout: Duration,
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
    pub async fn answer(&self, offer_sdp: String, kind: ViewerKind) -> Result<Answer, RtcError> {
        let (cleaned, summary) =
            offer::inspect(&offer_sdp).map_err(|e| RtcError::BadOffer(e.to_string()))?;
        if kind == ViewerKind::Whep {
            if !summary.has_video {
                return Err(RtcError::NoVideo);
            }
            if !summary.has_h264 {
                return Err(RtcError::NoH264);
            }
        } else if !(summary.has_data || (summary.has_video && summary.has_h264)) {
            return Err(RtcError::NothingToSend);
        }
        let offer =
            SdpOffer::from_sdp_string(&cleaned).map_err(|e| RtcError::BadOffer(e.to_string()))?;

        let now = Instant::now();
        let mut rtc = new_rtc(now);
        for c in &self.shared.candidates {
            rtc.add_local_candidate(c.clone());
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| RtcError::BadOffer(e.to_string()))?;
        let sdp = answer.to_sdp_string();

        let id = ViewerId::random();
        let etag = format!("\"{}\"", ViewerId::random());
        let max_message = summary.max_message_size.min(MAX_STILL_BYTES);
        let viewer = viewer::Viewer::new(
            id,
            kind,
            rtc,
            etag.clone(),
            viewer::ViewerOptions {
                max_message,
                snapshot_on_connect: self.shared.snapshot_on_connect,
                silence_timeout: self.shared.silence_timeout,
                expects_video: summary.has_video && summary.has_h264,
            },
            now,
        );
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Register {
                viewer: Box::new(viewer),
                reply,
            })
            .await
            .map_err(|_| RtcError::Stopped)?;
        rx.await.map_err(|_| RtcError::Stopped)??;
        Ok(Answer { id, sdp, etag })
    }

    /// Remove a viewer and free everything it held.
    pub async fn close(&self, id: ViewerId) -> Result<(), RtcError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close { id, reply }).await?;
        rx.await.map_err(|_| RtcError::Stopped)?
    }

    /// WHEP trickle: add remote candidates, checking `If-Match` against the viewer's ETag.
    pub async fn patch(
        &self,
        id: ViewerId,
        if_match: Option<String>,
        fragment: &str,
    ) -> Result<(), RtcError> {
        let mut candidates = Vec::new();
        for line in offer::fragment_candidates(fragment) {
            match Candidate::from_sdp_string(line) {
                Ok(c) => candidates.push(c),
                Err(e) => return Err(RtcError::BadFragment(e.to_string())),
            }
        }
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

    /// The host candidates' addresses (the engine's UDP port on each announced address).
    pub fn candidate_addrs(&self) -> Vec<SocketAddr> {
        self.shared.candidates.iter().map(|c| c.addr()).collect()
    }

    async fn send(&self, cmd: Command) -> Result<(), RtcError> {
        self.commands.send(cmd).await.map_err(|_| RtcError::Stopped)
    }
}

/// A fresh `Rtc` as every viewer gets it: ICE-lite (the device has only host candidates and
/// the browser does the checks), H.264 CB only, room for a 256 KiB still in the SCTP buffer.
fn new_rtc(now: Instant) -> Rtc {
    let mut cfg = RtcConfig::new()
        .set_ice_lite(true)
        .clear_codecs()
        .set_sctp_max_buffered_amount(2 * MAX_STILL_BYTES)
        // Lets the player render at once instead of buffering (live camera, LAN).
        .set_extension(14, str0m::rtp::Extension::PlayoutDelay);
    let codecs = cfg.codec_config();
    for (pt, rtx, profile) in [H264_CB, H264_BASELINE] {
        codecs.add_h264(pt.into(), Some(rtx.into()), true, profile);
    }
    cfg.build(now)
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
        let id = ViewerId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(ViewerId::parse(&s), Some(id));
        assert_ne!(ViewerId::random(), id);
        assert_eq!(ViewerId::parse("xyz"), None);
        assert_eq!(ViewerId::parse(&"g".repeat(32)), None);
        assert_eq!(ViewerId::parse("+0000000000000000000000000000000"), None);
    }
}
