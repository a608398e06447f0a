//! The daemon's own capture side for SnapRTC sessions (`[signaling] join_sessions = "all"`).
//!
//! The hub task joins a local member to a session when an initiator waits there with no
//! capture side, and forwards what the initiator sends to this task. This task decodes the
//! simple-peer payload, has the WebRTC engine answer the offer (every server candidate in the
//! SDP: SnapRTC initiators use `trickle: false`), and sends the answer back through the hub,
//! encoded the way the offer came.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
}

/// From the hub task: the initiator's payload for the local `member` of `session`.
#[derive(Debug)]
pub struct Incoming {
    pub member: MemberId,
    pub session: SessionId,
    pub payload: RawJson,
}

/// To the hub task: send `payload` as `signalInitiator` from `member` to `session`.
#[derive(Debug)]
pub struct Reply {
    pub member: MemberId,
    pub session: SessionId,
    pub payload: RawJson,
}

/// Run until `cancel` fires or the hub goes away. Answers run concurrently, one per offer.
pub async fn run(
    answerer: Arc<dyn Answerer>,
    mut incoming: mpsc::Receiver<Incoming>,
    replies: mpsc::Sender<Reply>,
    cancel: CancellationToken,
) {
    let mut answering = JoinSet::new();
    loop {
        tokio::select! {
            message = incoming.recv() => match message {
                Some(message) => handle(&answerer, message, &replies, &mut answering),
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
    message: Incoming,
    replies: &mpsc::Sender<Reply>,
    answering: &mut JoinSet<()>,
) {
    let Incoming {
        member,
        session,
        payload,
    } = message;
    let Ok(text) = serde_json::from_str::<String>(payload.get()) else {
        debug!(%session, "capture: payload is not a string");
        return;
    };
    let (signal, encoding) = match snappeer::decode(&text) {
        Ok(decoded) => decoded,
        Err(e) => {
            warn!(%session, error = %e, "capture: cannot read the initiator's signal");
            return;
        }
    };
    match signal {
        Signal::Offer { sdp } => {
            let answerer = answerer.clone();
            let replies = replies.clone();
            answering.spawn(async move {
                match answerer.answer(sdp, session.clone()).await {
                    Ok(answer) => {
                        let packed = snappeer::encode_answer(&answer, encoding);
                        let Ok(payload) = RawJson::from_string(
                            serde_json::to_string(&packed).unwrap_or_default(),
                        ) else {
                            return;
                        };
                        info!(%session, "capture: answered the initiator's offer");
                        let _ = replies
                            .send(Reply {
                                member,
                                session,
                                payload,
                            })
                            .await;
                    }
                    Err(e) => warn!(%session, error = %e, "capture: cannot answer the offer"),
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
