//! The daemon's own capture side for SnapRTC sessions (`[signaling] join_sessions = "all"`).
//!
//! The hub task joins a local member to a session when an initiator waits there with no
//! capture side, and forwards what the initiator sends to this task. This task decodes the
//! simple-peer payload, has the WebRTC engine answer the offer (every server candidate in the
//! SDP: SnapRTC initiators use `trickle: false`), and sends the answer back through the hub,
//! encoded the way the offer came.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::hub::{MemberId, RawJson, SessionId};
use super::snappeer::{self, Signal};

/// What answers SDP offers: the WebRTC engine. A trait so the hub does not depend on it.
pub trait Answerer: Send + Sync + 'static {
    /// Answer `offer` for a SnapRTC `session`; the error text is logged.
    fn answer(
        &self,
        offer: String,
        session: SessionId,
    ) -> Pin<Box<dyn Future<Output = Result<EngineAnswer, String>> + Send>>;
}

/// An answer, and the word on the viewer made for it.
#[derive(Debug)]
pub struct EngineAnswer {
    /// The SDP answer.
    pub sdp: String,
    /// Resolves once that viewer is connected.
    pub connected: Connected,
}

/// Resolves to `true` once a viewer is connected (ICE and DTLS up), `false` if it is gone
/// without (failed, silent, closed) or the engine stopped.
pub struct Connected(Pin<Box<dyn Future<Output = bool> + Send>>);

impl Connected {
    /// Wrap the engine's future.
    pub fn new(f: impl Future<Output = bool> + Send + 'static) -> Self {
        Self(Box::pin(f))
    }

    /// Already decided (a stand-in engine, or nothing to wait for).
    pub fn ready(connected: bool) -> Self {
        Self::new(std::future::ready(connected))
    }
}

impl Future for Connected {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Connected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connected")
    }
}

/// From the hub task: the initiator's payload for the local `member` of `session`.
#[derive(Debug)]
pub struct Incoming {
    /// The local member the payload was relayed to.
    pub member: MemberId,
    /// The session it came through.
    pub session: SessionId,
    /// The `signalCapture` argument: a JSON string, as relayed.
    pub payload: RawJson,
}

/// To the hub task: send `payload` as `signalInitiator` from `member` to `session`.
#[derive(Debug)]
pub struct Reply {
    /// The local member that answers.
    pub member: MemberId,
    /// The session to answer in.
    pub session: SessionId,
    /// The `signalInitiator` argument: a JSON string.
    pub payload: RawJson,
    /// For an answer (not an error signal): when the viewer made for it connects. A dial-out
    /// session stays busy until then; the hub's own capture member drops it unpolled.
    pub connected: Option<Connected>,
}

/// Run until `cancel` fires or the hub goes away. Answers run concurrently, one per offer.
///
/// Payloads are decoded on this task: the decoder stops at `max_payload_bytes` of output, so a
/// decode costs at most that much memory and time linear in it and in the record (7 ms in a
/// debug build for the worst 64 KiB payload against the 256 KiB default), which cannot stall
/// the runtime's workers the way the unbounded decode did (seconds, 2.3 GB). A `spawn_blocking`
/// per payload would add a thread hand-off for no gain at that size.
pub async fn run(
    answerer: Arc<dyn Answerer>,
    max_payload_bytes: usize,
    mut incoming: mpsc::Receiver<Incoming>,
    replies: mpsc::Sender<Reply>,
    cancel: CancellationToken,
) {
    let mut answering = JoinSet::new();
    loop {
        tokio::select! {
            message = incoming.recv() => match message {
                Some(message) => handle(&answerer, max_payload_bytes, message, &replies, &mut answering),
                None => break,
            },
            Some(_) = answering.join_next(), if !answering.is_empty() => {}
            _ = cancel.cancelled() => break,
        }
    }
    answering.abort_all();
}

fn handle(
    answerer: &Arc<dyn Answerer>,
    max_payload_bytes: usize,
    message: Incoming,
    replies: &mpsc::Sender<Reply>,
    answering: &mut JoinSet<()>,
) {
    let Incoming {
        member,
        session,
        payload,
    } = message;
    // The hub only relays JSON strings (`Request::parse` checks the argument's type).
    let Ok(text) = serde_json::from_str::<String>(payload.get()) else {
        debug!(%session, "capture: payload is not a string");
        return;
    };
    let (signal, encoding) = match snappeer::decode(&text, max_payload_bytes) {
        Ok(decoded) => decoded,
        Err(e) => {
            warn!(%session, error = %e, "capture: cannot read the initiator's signal");
            let reply = error_reply(
                member,
                session,
                &e.to_string(),
                snappeer::encoding_of(&text),
            );
            // A full reply queue means the hub is flooded; the initiator then learns nothing,
            // as with any dropped relay.
            if let Some(reply) = reply {
                let _ = replies.try_send(reply);
            }
            return;
        }
    };
    match signal {
        Signal::Offer { sdp } => {
            let answer = answer_offer(answerer.clone(), sdp, member, session, encoding);
            let replies = replies.clone();
            answering.spawn(async move {
                if let Some(reply) = answer.await {
                    let _ = replies.send(reply).await;
                }
            });
        }
        Signal::Candidate | Signal::Renegotiate => {
            debug!(%session, ?signal, "capture: signal needs no action")
        }
        Signal::Answer { .. } | Signal::Other(_) => {
            debug!(%session, ?signal, "capture: unexpected signal ignored")
        }
    }
}

/// Have the engine answer `sdp`; the reply for the initiator: the answer, or an error signal.
async fn answer_offer(
    answerer: Arc<dyn Answerer>,
    sdp: String,
    member: MemberId,
    session: SessionId,
    encoding: snappeer::Encoding,
) -> Option<Reply> {
    match answerer.answer(sdp, session.clone()).await {
        Ok(answer) => {
            info!(%session, "capture: answered the initiator's offer");
            let mut reply = reply_with(
                member,
                session,
                snappeer::encode_answer(&answer.sdp, encoding),
            )?;
            reply.connected = Some(answer.connected);
            Some(reply)
        }
        Err(e) => {
            warn!(%session, error = %e, "capture: cannot answer the offer");
            let error = format!("cannot answer the offer: {e}");
            error_reply(member, session, &error, encoding)
        }
    }
}

/// A `signalInitiator` reply carrying `packed` (a payload string).
fn reply_with(member: MemberId, session: SessionId, packed: String) -> Option<Reply> {
    let payload = RawJson::from_string(serde_json::to_string(&packed).ok()?).ok()?;
    Some(Reply {
        member,
        session,
        payload,
        connected: None,
    })
}

/// Tell the initiator its signal was of no use, so its page fails instead of waiting.
fn error_reply(
    member: MemberId,
    session: SessionId,
    error: &str,
    encoding: snappeer::Encoding,
) -> Option<Reply> {
    reply_with(member, session, snappeer::encode_error(error, encoding))
}
