//! Dial-out's tokio shell: one task per `[[remote]]` entry around its pure
//! [`Remote`]. It negotiates (`POST {hub}/negotiate?negotiateVersion=1`,
//! following at most [`MAX_REDIRECTS`] redirects), opens the WebSocket (`wss://` through
//! rustls with the system's root certificates for `https://` hubs), carries frames both ways,
//! and has the WebRTC engine answer offers through the same [`Answerer`] and payload code as
//! the built-in capture member ([`capture::run`]). Every read from the hub is bounded by
//! `max_message_bytes` (negotiate body, WebSocket frames and messages, SignalR records), and
//! every step by `connect_timeout` or the keep-alive interval.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::capture::{self, Answerer};
use super::hub::{MemberId, SessionId};
use super::remote::{
    Remote, RemoteCounters, RemoteOutput, RemoteSettings, RemoteState, START_ON_JOIN_HEADER,
};
use crate::config::{RemoteConfig, RemoteUrl, REMOTE_SESSION_DEVICE_ID};

/// Most negotiate redirects (`{"url": …}` answers) followed before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// One remote session's state, for `/health`, the status line and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RemoteStatus {
    /// The hub URL as configured.
    pub url: String,
    /// The session waited in.
    pub session: String,
    /// What it is doing.
    #[serde(serialize_with = "state_name")]
    pub state: RemoteState,
    /// Why the link last dropped, while not connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the hub starts initiators itself (a snaprtcd hub).
    pub start_on_join: bool,
    /// What happened so far.
    #[serde(skip)]
    pub counters: RemoteCounters,
}

fn state_name<S: serde::Serializer>(state: &RemoteState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.as_str())
}

/// The remote sessions' states; empty without `[[remote]]` entries.
#[derive(Debug, Clone, Default)]
pub struct DialoutHandle {
    remotes: Vec<watch::Receiver<RemoteStatus>>,
}

impl DialoutHandle {
    /// Every remote session's state now, in config order.
    pub fn statuses(&self) -> Vec<RemoteStatus> {
        self.remotes.iter().map(|r| r.borrow().clone()).collect()
    }
}

/// The session a `[[remote]]` entry waits in (`"device-id"` is the device's stable id).
pub fn session_of(remote: &RemoteConfig, device_id: &str) -> Option<SessionId> {
    let name = if remote.session == REMOTE_SESSION_DEVICE_ID {
        device_id
    } else {
        &remote.session
    };
    SessionId::parse(name).ok()
}

/// Start one task per remote (tracked by `tracker`, stopped by `cancel`). Logs each session id
/// once, for the initiator page.
pub fn spawn(
    remotes: &[RemoteConfig],
    device_id: &str,
    answerer: Arc<dyn Answerer>,
    max_payload_bytes: usize,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> DialoutHandle {
    let mut handle = DialoutHandle::default();
    let mut tls = None;
    for remote in remotes {
        let (Ok(url), Some(session)) =
            (RemoteUrl::parse(&remote.url), session_of(remote, device_id))
        else {
            // Validation refuses both; a device id that is no session id is the one way here.
            warn!(url = %remote.url, session = %remote.session, device_id, "remote hub: no usable session id; entry skipped");
            continue;
        };
        info!(
            url = %remote.url,
            %session,
            "remote hub: this device waits in session {session} on {}; give that id to the initiator page",
            remote.url
        );
        let connector = match url.tls {
            true => tls
                .get_or_insert_with(|| crate::tls::client_connector("remote hub"))
                .clone()
                .ok(),
            false => None,
        };
        let settings = RemoteSettings {
            session: session.clone(),
            announce_interval: remote.announce_interval,
            exchange_timeout: remote.exchange_timeout,
            connect_timeout: remote.connect_timeout,
            reconnect_max: remote.reconnect_max,
            keepalive: remote.keepalive,
            server_timeout: remote.server_timeout,
            max_message_bytes: remote.max_message_bytes,
        };
        let status = RemoteStatus {
            url: remote.url.clone(),
            session: session.to_string(),
            state: RemoteState::Connecting,
            error: None,
            start_on_join: false,
            counters: RemoteCounters::default(),
        };
        let (status_tx, status_rx) = watch::channel(status);
        handle.remotes.push(status_rx);
        let task = Task {
            target: Target::from_url(&url),
            token: (!remote.token.is_empty()).then(|| remote.token.clone()),
            limit: remote.max_message_bytes,
            connector,
            settings,
            answerer: answerer.clone(),
            max_payload_bytes,
            status: status_tx,
        };
        tracker.spawn(task.run(cancel.child_token()));
    }
    handle
}

/// Where to negotiate: a hub URL split up (a redirect may add a query).
#[derive(Debug, Clone, PartialEq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
    query: Option<String>,
}

impl Target {
    fn from_url(url: &RemoteUrl) -> Self {
        Self {
            tls: url.tls,
            host: url.host.clone(),
            port: url.port,
            path: url.path.clone(),
            query: None,
        }
    }

    /// A negotiate redirect's `url` (http(s), or ws(s) as some servers write it).
    fn from_redirect(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("negotiate redirect to a bad URL {url:?}"))?;
        let tls = match uri.scheme_str() {
            Some("https" | "wss") => true,
            Some("http" | "ws") => false,
            _ => return Err(format!("negotiate redirect to a non-http URL {url:?}")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("negotiate redirect without a host: {url:?}"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            tls,
            host,
            port,
            path: uri.path().trim_end_matches('/').to_owned(),
            query: uri.query().map(str::to_owned),
        })
    }

    fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }

    /// `path?query&extra` (extra: already encoded pairs).
    fn path_and_query(&self, path_suffix: &str, extra: &[(&str, &str)]) -> String {
        let mut out = format!("{}{path_suffix}", self.path);
        let mut pairs: Vec<String> = self.query.iter().cloned().collect();
        pairs.extend(extra.iter().map(|(k, v)| format!("{k}={}", encode(v))));
        if !pairs.is_empty() {
            out.push('?');
            out.push_str(&pairs.join("&"));
        }
        out
    }
}

/// Percent-encode a query value (everything but RFC 3986 unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Stream = Box<dyn Io>;
type Ws = WebSocketStream<Stream>;

/// A connection attempt under way: the socket, and whether the hub starts initiators itself.
type Connecting<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(Ws, bool), String>> + Send + 'a>>;

/// The negotiate response fields dial-out reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Negotiation {
    connection_token: Option<String>,
    connection_id: Option<String>,
    url: Option<String>,
    access_token: Option<String>,
    error: Option<String>,
    available_transports: Option<Vec<Transport>>,
}

#[derive(Deserialize)]
struct Transport {
    transport: String,
}

/// What negotiating found out.
struct Negotiated {
    target: Target,
    token: Option<String>,
    id: Option<String>,
    start_on_join: bool,
}

struct Task {
    target: Target,
    token: Option<String>,
    limit: usize,
    connector: Option<tokio_rustls::TlsConnector>,
    settings: RemoteSettings,
    answerer: Arc<dyn Answerer>,
    max_payload_bytes: usize,
    status: watch::Sender<RemoteStatus>,
}

impl Task {
    async fn run(self, cancel: CancellationToken) {
        let (offers_tx, offers_rx) = mpsc::channel(2);
        let (replies_tx, replies_rx) = mpsc::channel(2);
        let capture = capture::run(
            self.answerer.clone(),
            self.max_payload_bytes,
            offers_rx,
            replies_tx,
            cancel.clone(),
        );
        tokio::join!(capture, self.drive(offers_tx, replies_rx, cancel.clone()));
    }

    async fn drive(
        &self,
        offers: mpsc::Sender<capture::Incoming>,
        mut replies: mpsc::Receiver<capture::Reply>,
        cancel: CancellationToken,
    ) {
        let seed = crate::ids::random_bytes::<8>().map_or(1, u64::from_le_bytes);
        let mut remote = Remote::new(self.settings.clone(), Instant::now(), seed);
        let mut ws: Option<Ws> = None;
        let mut connecting: Option<Connecting<'_>> = None;
        // The viewer made for the last answer, until it connects or goes.
        let mut viewer: Option<capture::Connected> = None;
        let mut logged = (RemoteState::Connecting, None::<String>);
        loop {
            while let Some(output) = remote.poll_output() {
                match output {
                    RemoteOutput::Connect => {
                        ws = None;
                        connecting = Some(Box::pin(self.connect()));
                    }
                    RemoteOutput::Send(record) => {
                        let Some(socket) = ws.as_mut() else { continue };
                        if let Err(e) = self.send(socket, record).await {
                            ws = None;
                            remote.handle_failed(&e, Instant::now());
                        }
                    }
                    RemoteOutput::Close => {
                        if let Some(mut socket) = ws.take() {
                            // Best effort, bounded: a hub that does not read is not waited on.
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_secs(1),
                                socket.close(None),
                            )
                            .await;
                        }
                        connecting = None;
                    }
                    RemoteOutput::Offer(payload) => {
                        let incoming = capture::Incoming {
                            member: MemberId(0),
                            session: self.settings.session.clone(),
                            payload,
                        };
                        if offers.try_send(incoming).is_err() {
                            debug!(session = %self.settings.session, "remote hub: offer dropped, the engine is busy");
                        }
                    }
                }
            }
            self.publish(&remote, &mut logged);
            let deadline = remote
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + self.settings.keepalive);
            tokio::select! {
                _ = cancel.cancelled() => break,
                result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                    connecting = None;
                    match result {
                        Ok((socket, start_on_join)) => {
                            ws = Some(socket);
                            remote.handle_open(start_on_join, Instant::now());
                        }
                        Err(e) => remote.handle_failed(&e, Instant::now()),
                    }
                }
                frame = async { ws.as_mut().expect("guarded").next().await }, if ws.is_some() => {
                    match frame {
                        Some(Ok(Message::Text(text))) => remote.handle_text(text.as_bytes(), Instant::now()),
                        Some(Ok(Message::Binary(data))) => remote.handle_text(&data, Instant::now()),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(frame))) => {
                            ws = None;
                            let why = frame.map(|f| f.to_string()).unwrap_or_default();
                            remote.handle_failed(&format!("hub closed the WebSocket {why}"), Instant::now());
                        }
                        Some(Err(e)) => {
                            ws = None;
                            remote.handle_failed(&format!("WebSocket: {e}"), Instant::now());
                        }
                        None => {
                            ws = None;
                            remote.handle_failed("hub closed the connection", Instant::now());
                        }
                    }
                }
                Some(reply) = replies.recv() => {
                    remote.handle_answer(reply.payload, reply.connected.is_some(), Instant::now());
                    viewer = reply.connected;
                }
                connected = async { viewer.as_mut().expect("guarded").await }, if viewer.is_some() => {
                    viewer = None;
                    if connected {
                        remote.handle_viewer_connected(Instant::now());
                    } else {
                        remote.handle_viewer_gone(Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => remote.handle_timeout(Instant::now()),
            }
        }
        drop(connecting);
        if let Some(mut socket) = ws {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), socket.close(None)).await;
        }
    }

    /// Write one frame, giving up after the keep-alive interval (a hub that does not read).
    async fn send(&self, socket: &mut Ws, record: Bytes) -> Result<(), String> {
        let text = String::from_utf8(record.to_vec()).unwrap_or_default();
        match tokio::time::timeout(self.settings.keepalive, socket.send(Message::text(text))).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("WebSocket: {e}")),
            Err(_) => Err("the hub does not read (send timed out)".to_owned()),
        }
    }

    /// Update the status watch, then log a change of state or error (in that order, so
    /// whoever reads the log line finds `/health` saying the same).
    fn publish(&self, remote: &Remote, logged: &mut (RemoteState, Option<String>)) {
        let state = remote.state();
        let error = remote.error().map(str::to_owned);
        let start_on_join = remote.start_on_join();
        let counters = remote.counters();
        self.status.send_if_modified(|s| {
            let next = RemoteStatus {
                url: s.url.clone(),
                session: s.session.clone(),
                state,
                error: error.clone().filter(|_| state == RemoteState::Reconnecting),
                start_on_join,
                counters,
            };
            let changed = *s != next;
            *s = next;
            changed
        });
        if (state, &error) == (logged.0, &logged.1) {
            return;
        }
        let (url, session) = (self.status.borrow().url.clone(), &self.settings.session);
        match (&error, state) {
            (Some(e), RemoteState::Reconnecting) => {
                warn!(%url, %session, error = %e, "remote hub: reconnecting")
            }
            _ => info!(
                %url,
                %session,
                connects = counters.connects,
                "remote hub: {}",
                state.as_str()
            ),
        }
        *logged = (state, error);
    }

    /// Negotiate and open the WebSocket, within `connect_timeout`.
    async fn connect(&self) -> Result<(Ws, bool), String> {
        let attempt = async {
            let negotiated = self.negotiate().await?;
            let ws = self.open_websocket(&negotiated).await?;
            Ok((ws, negotiated.start_on_join))
        };
        match tokio::time::timeout(self.settings.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no connection within connect_timeout ({:?})",
                self.settings.connect_timeout
            )),
        }
    }

    async fn stream(&self, target: &Target) -> Result<Stream, String> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("connecting to {}: {e}", target.authority()))?;
        let _ = tcp.set_nodelay(true);
        if !target.tls {
            return Ok(Box::new(tcp));
        }
        let connector = match &self.connector {
            Some(c) => c.clone(),
            // An http:// hub that redirected to https://, or a TLS setup that failed.
            None => crate::tls::client_connector("remote hub").map_err(|e| e.to_string())?,
        };
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("{:?} is no TLS server name: {e}", target.host))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", target.authority()))?;
        Ok(Box::new(tls))
    }

    /// `POST {hub}/negotiate?negotiateVersion=1`, following redirects.
    async fn negotiate(&self) -> Result<Negotiated, String> {
        let mut target = self.target.clone();
        let mut token = self.token.clone();
        for _ in 0..=MAX_REDIRECTS {
            let (start_on_join, body) = self.post_negotiate(&target, token.as_deref()).await?;
            let n: Negotiation = serde_json::from_slice(&body)
                .map_err(|e| format!("negotiate answered with no negotiate response: {e}"))?;
            if let Some(error) = n.error {
                return Err(format!("negotiate refused: {error}"));
            }
            if let Some(url) = n.url {
                target = Target::from_redirect(&url)?;
                token = n.access_token.or(token);
                continue;
            }
            if let Some(transports) = &n.available_transports {
                if !transports.iter().any(|t| t.transport == "WebSockets") {
                    return Err("the hub offers no WebSockets transport".to_owned());
                }
            }
            return Ok(Negotiated {
                target,
                token,
                id: n.connection_token.or(n.connection_id),
                start_on_join,
            });
        }
        Err(format!("more than {MAX_REDIRECTS} negotiate redirects"))
    }

    /// One negotiate request: whether the hub starts initiators itself, and the body (at most
    /// `limit` bytes).
    async fn post_negotiate(
        &self,
        target: &Target,
        token: Option<&str>,
    ) -> Result<(bool, Bytes), String> {
        let stream = self.stream(target).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("negotiate: {e}"))?;
        let path = target.path_and_query("/negotiate", &[("negotiateVersion", "1")]);
        let mut request = http::Request::post(path)
            .header(http::header::HOST, target.authority())
            .header(http::header::CONTENT_LENGTH, "0")
            .header("x-requested-with", "XMLHttpRequest")
            .header(
                http::header::USER_AGENT,
                concat!("snaprtcd/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| format!("negotiate request: {e}"))?;
        let limit = self.limit;
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("negotiate: {e}"))?;
            let status = response.status();
            let start_on_join = response
                .headers()
                .get(START_ON_JOIN_HEADER)
                .is_some_and(|v| v.as_bytes() == b"1");
            if status != http::StatusCode::OK {
                return Err(format!("negotiate answered {status}"));
            }
            let body = http_body_util::Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("negotiate response: {e}"))?
                .to_bytes();
            Ok((start_on_join, body))
        };
        tokio::pin!(exchange);
        tokio::select! {
            result = &mut exchange => result,
            _ = conn => exchange.await,
        }
    }

    async fn open_websocket(&self, n: &Negotiated) -> Result<Ws, String> {
        let mut extra = Vec::new();
        if let Some(id) = &n.id {
            extra.push(("id", id.as_str()));
        }
        if let Some(token) = &n.token {
            extra.push(("access_token", token.as_str()));
        }
        let scheme = if n.target.tls { "wss" } else { "ws" };
        let url = format!(
            "{scheme}://{}{}",
            n.target.authority(),
            n.target.path_and_query("", &extra)
        );
        let request = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("WebSocket request: {e}"))?;
        let stream = self.stream(&n.target).await?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.limit))
            .max_frame_size(Some(self.limit));
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| format!("WebSocket: {e}"))?;
        Ok(ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_like_the_official_client() {
        let url = RemoteUrl::parse("https://hub.example.com:8443/x/hub").unwrap();
        let t = Target::from_url(&url);
        assert_eq!(
            t.path_and_query("/negotiate", &[("negotiateVersion", "1")]),
            "/x/hub/negotiate?negotiateVersion=1"
        );
        assert_eq!(
            t.path_and_query("", &[("id", "a+b/c="), ("access_token", "t t")]),
            "/x/hub?id=a%2Bb%2Fc%3D&access_token=t%20t"
        );
        let r = Target::from_redirect("https://svc.example.net/client/?hub=snap").unwrap();
        assert_eq!(r.authority(), "svc.example.net:443");
        assert_eq!(
            r.path_and_query("/negotiate", &[("negotiateVersion", "1")]),
            "/client/negotiate?hub=snap&negotiateVersion=1"
        );
        assert!(Target::from_redirect("ftp://x").is_err());
        let v6 = Target::from_url(&RemoteUrl::parse("http://[::1]:9/").unwrap());
        assert_eq!(v6.authority(), "[::1]:9");
    }

    #[test]
    fn device_id_stands_for_the_session() {
        let mut r = RemoteConfig::default();
        assert_eq!(session_of(&r, "abc123").unwrap().as_str(), "abc123");
        r.session = "fixed".into();
        assert_eq!(session_of(&r, "abc123").unwrap().as_str(), "fixed");
        r.session = REMOTE_SESSION_DEVICE_ID.into();
        assert!(session_of(&r, "not a session").is_none());
    }
}
