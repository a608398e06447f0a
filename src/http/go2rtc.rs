//! go2rtc's HTTP API, as much of it as go2rtc's players and the Home Assistant WebRTC card use:
//! `GET /api`, `GET /api/streams`, `GET /api/frame.jpeg?src=camera` and the WebSocket
//! `/api/ws?src=camera` (WebRTC only). The camera is the one stream, named
//! [`STREAM_NAME`](crate::signaling::go2rtc::STREAM_NAME).
//!
//! The WebSocket's protocol is [`Session`] (pure); this is its shell: it moves frames between
//! the socket and the session, takes offers to the RTC engine (a go2rtc viewer is one more
//! viewer of the one encode) and hands trickled candidates to the viewer.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::{AppState, CameraServices};
use crate::auth::query_param;
use crate::response::{json, text, Body};
use crate::rtc::{RtcHandle, ViewerId, ViewerKind};
use crate::signaling::go2rtc::{
    Answered, CloseCode, Output, Session, SessionConfig, STREAM_NAME, STREAM_NOT_FOUND,
};

/// How long one message may take to leave (go2rtc allows 5 s too); a client that does not
/// read is dropped after it.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes read and dropped after a frame is refused for its size.
const DISCARD_BYTES: usize = 8 << 20;

/// The go2rtc WebSockets open now: at most `[server] max_viewers`, as each carries one offer.
pub(super) struct Sockets {
    permits: Arc<Semaphore>,
}

impl Sockets {
    pub(super) fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

/// `GET /api`: what go2rtc's `/api` says about itself, as far as it applies.
pub(super) fn info(req: &Request<Incoming>) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    json(
        StatusCode::OK,
        &serde_json::json!({
            "name": "snaprtcd",
            "version": env!("CARGO_PKG_VERSION"),
            "host": host,
        }),
    )
}

/// `GET /api/streams`: the camera as go2rtc lists a stream (producers and consumers).
pub(super) async fn streams(camera: &CameraServices) -> Response<Body> {
    let status = camera.media.status();
    let viewers = camera.rtc.stats().await.unwrap_or_default().viewers;
    json(
        StatusCode::OK,
        &serde_json::json!({
            STREAM_NAME: {
                "producers": [{
                    "url": status.source,
                    "format_name": "h264",
                    "width": status.width,
                    "height": status.height,
                    "state": status.state.as_str(),
                }],
                "consumers": [],
                "viewers": viewers,
            }
        }),
    )
}

/// `GET /api/frame.jpeg?src=camera`: the still `/snapshot.jpg` gives.
pub(super) async fn frame(req: &Request<Incoming>, camera: &CameraServices) -> Response<Body> {
    if query_param(req.uri().query(), "src").as_deref() != Some(STREAM_NAME) {
        return text(StatusCode::NOT_FOUND, format!("{STREAM_NOT_FOUND}\n"));
    }
    super::handlers::snapshot(camera).await
}

/// `/api/ws?src=…`: check the upgrade and a socket slot, then run the socket on a tracked task.
pub(super) fn upgrade(
    req: Request<Incoming>,
    state: &AppState,
    camera: &CameraServices,
    sockets: &Sockets,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Response<Body> {
    let Some(accept) = websocket_accept(req.headers()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "go2rtc's /api/ws speaks WebSockets only: connect with a WebSocket (version 13)\n",
        );
    };
    let Ok(permit) = sockets.permits.clone().try_acquire_owned() else {
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many go2rtc WebSockets; try again later\n",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let src = query_param(req.uri().query(), "src");
    let config = session_config(state);
    let rtc = camera.rtc.clone();
    let cancel = cancel.clone();
    let upgrade = hyper::upgrade::on(req);
    tracker.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                run(upgraded, config, src, rtc, cancel, permit).await;
                // Its slot is free again by now (the permit went with `run`).
                debug!("go2rtc websocket closed");
            }
            Err(e) => debug!(error = %e, "go2rtc websocket upgrade failed"),
        }
    });
    super::handlers::switching_protocols(&accept)
}

/// The `Sec-WebSocket-Accept` for a valid version-13 upgrade request, else `None`.
fn websocket_accept(headers: &http::HeaderMap) -> Option<String> {
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    (is_websocket && version_ok).then(|| derive_accept_key(key.as_bytes()))
}

/// A session's limits from the config: an offer is at most `max_sdp_bytes`, which JSON
/// escaping can double; the offer and idle timeouts are the hub's.
fn session_config(state: &AppState) -> SessionConfig {
    let server = &state.config.server;
    let signaling = &state.config.signaling;
    SessionConfig {
        max_message_bytes: 2 * server.max_sdp_bytes + 4096,
        max_pending_candidates: server.max_sdp_candidates,
        offer_timeout: signaling.handshake_timeout,
        idle_timeout: signaling.client_timeout,
    }
}

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// The viewer made for this socket's offer: where trickled candidates go.
struct Viewer {
    id: ViewerId,
    etag: String,
}

/// Serve one go2rtc WebSocket until the session closes it, the client goes, or the server
/// stops. Holds its socket slot (`_permit`) until then.
async fn run(
    upgraded: Upgraded,
    config: SessionConfig,
    src: Option<String>,
    rtc: RtcHandle,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    // Frames up to twice the session's limit reach it (and get a 1009 close from it); larger
    // ones are refused from their header by tungstenite before they are buffered.
    let limit = 2 * config.max_message_bytes + 65536;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let mut ws: Socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
            .await;
    let mut session = Session::new(config, src.as_deref(), Instant::now().into_std());
    let mut viewer: Option<Viewer> = None;
    let mut answering: Option<std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>> =
        None;
    debug!(src = src.as_deref().unwrap_or(""), "go2rtc websocket open");
    loop {
        // The draining rule: every output of the last input, then wait for the next.
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(json) => {
                    let sent = tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(json)));
                    if !matches!(sent.await, Ok(Ok(()))) {
                        debug!("go2rtc websocket: write failed or timed out");
                        return;
                    }
                }
                Output::Offer(sdp) => {
                    let rtc = rtc.clone();
                    answering = Some(Box::pin(async move {
                        rtc.answer(sdp, ViewerKind::Go2rtc).await
                    }));
                }
                Output::Candidates(lines) => {
                    if let Some(v) = &viewer {
                        let fragment: String = lines.iter().map(|l| format!("a={l}\r\n")).collect();
                        if let Err(e) = rtc.patch(v.id, Some(v.etag.clone()), &fragment).await {
                            debug!(viewer = %v.id, error = %e, "go2rtc candidate not added");
                        }
                    }
                }
                Output::Close(code, why) => {
                    debug!(
                        code = code.code(),
                        why, "go2rtc websocket closed by the server"
                    );
                    close(&mut ws, code, why).await;
                    return;
                }
            }
        }
        let deadline = session.poll_timeout().map(Instant::from_std);
        let expire = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let pending_answer = async {
            match answering.as_mut() {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                let frame = CloseFrame { code: WsCloseCode::Away, reason: "shutting down".into() };
                let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(Some(frame))).await;
                return;
            }
            result = pending_answer => {
                answering = None;
                let now = Instant::now().into_std();
                let answered = match result {
                    Ok(answer) => {
                        debug!(viewer = %answer.id, "go2rtc offer answered");
                        let candidates = server_candidates(&answer.sdp);
                        viewer = Some(Viewer { id: answer.id, etag: answer.etag });
                        Ok(Answered { sdp: answer.sdp, candidates })
                    }
                    Err(e) => Err(e.to_string()),
                };
                session.handle_answer(answered, now);
            }
            frame = ws.next() => {
                let now = Instant::now().into_std();
                match frame {
                    Some(Ok(Message::Text(t))) => session.handle_text(t.as_str(), now),
                    Some(Ok(Message::Binary(b))) => session.handle_binary(b.len(), now),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        session.handle_activity(now)
                    }
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(e)) => {
                        debug!(error = %e, "go2rtc websocket: read failed");
                        if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                            close(&mut ws, CloseCode::TooBig, "message too big").await;
                            discard_rest(&mut ws).await;
                        }
                        return;
                    }
                }
            }
            () = expire => session.handle_timeout(Instant::now().into_std()),
        }
    }
}

/// Send a close frame and wait (briefly) for the client's.
async fn close(ws: &mut Socket, code: CloseCode, why: &'static str) {
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: why.into(),
    };
    let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(Some(frame))).await;
}

/// After refusing a frame from its header: read and drop what the client is still sending, for
/// at most [`DISCARD_BYTES`] or [`SEND_TIMEOUT`], so that closing the socket with unread data
/// does not reset the connection before the client has read the close frame.
async fn discard_rest(ws: &mut Socket) {
    use tokio::io::AsyncReadExt;
    let io = ws.get_mut();
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = DISCARD_BYTES;
    let drain = async {
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(SEND_TIMEOUT, drain).await;
}

/// The answer's `a=candidate:` lines without `a=`, as go2rtc sends its own.
fn server_candidates(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_candidates_come_from_the_answer() {
        let sdp = "v=0\r\nm=video 9 x\r\na=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\n\
                   a=mid:0\r\na=candidate:2 1 udp 2130706431 127.0.0.1 5000 typ host\r\n";
        assert_eq!(
            server_candidates(sdp),
            vec![
                "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host",
                "candidate:2 1 udp 2130706431 127.0.0.1 5000 typ host"
            ]
        );
    }

    #[test]
    fn only_version_13_upgrades_are_accepted() {
        let mut h = http::HeaderMap::new();
        assert_eq!(websocket_accept(&h), None);
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(websocket_accept(&h), None);
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        // RFC 6455's example.
        assert_eq!(
            websocket_accept(&h).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }
}
