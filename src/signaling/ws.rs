//! The signaling shell: one task owns the [`Hub`] and the [`Admissions`]; one task per
//! WebSocket moves bytes between the socket and its [`Connection`]. They talk through bounded
//! channels of typed commands; nothing here decides protocol questions.
//!
//! Back-pressure: each connection has a bounded outbound queue
//! (`signaling.max_queued_messages`). The hub task never waits on a client: when a queue is
//! full, that client is disconnected. A client that stops reading therefore costs at most its
//! queue plus the socket buffers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::capture::{self, Answerer};
use super::hub::{
    AdmissionError, Admissions, Hub, HubConfig, HubOutput, MemberId, Outbound, Request, SessionId,
};
use super::signalr::{ConnOutput, Connection, ConnectionConfig, ServerMessage};
use crate::config::{JoinSessions, SignalingConfig};

/// Commands to the hub task.
enum Command {
    Negotiate {
        reply: oneshot::Sender<Result<(String, String), AdmissionError>>,
    },
    Check {
        token: Option<String>,
        reply: oneshot::Sender<Result<(), AdmissionError>>,
    },
    Connect {
        token: Option<String>,
        outbound: mpsc::Sender<Bytes>,
        kill: CancellationToken,
        reply: oneshot::Sender<Result<MemberId, AdmissionError>>,
    },
    Request {
        member: MemberId,
        request: Request,
    },
    Disconnected {
        member: MemberId,
    },
    Stats {
        reply: oneshot::Sender<SignalingStats>,
    },
}

/// Counts for `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalingStats {
    pub connections: usize,
    pub sessions: usize,
}

/// Why the signaling service could not do something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error("the signaling service has stopped")]
    Stopped,
}

/// Cloneable handle to the hub task.
#[derive(Clone)]
pub struct SignalingHandle {
    commands: mpsc::Sender<Command>,
    config: Arc<SignalingConfig>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Start the hub task. It stops when `cancel` fires; connection tasks are tracked by `tracker`.
///
/// With an `answerer` and `join_sessions = "all"`, the daemon joins every session an initiator
/// opens as its capture side; otherwise the hub is a pure relay.
pub fn spawn(
    config: SignalingConfig,
    answerer: Option<Arc<dyn Answerer>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> SignalingHandle {
    // Every connection sends through this queue; a full queue slows readers, never the hub.
    let (tx, rx) = mpsc::channel(1024);
    let answerer = answerer.filter(|_| config.join_sessions == JoinSessions::All);
    let hub = Hub::new(HubConfig {
        max_sessions: config.max_sessions,
        max_members_per_session: config.max_members_per_session,
        capture_wanted: answerer.is_some(),
    });
    let admissions = Admissions::new(config.max_connections, config.handshake_timeout);
    let (capture, replies) = match answerer {
        Some(answerer) => {
            let (in_tx, in_rx) = mpsc::channel(64);
            let (reply_tx, reply_rx) = mpsc::channel(64);
            tracker.spawn(capture::run(
                answerer,
                config.max_payload_bytes,
                in_rx,
                reply_tx,
                cancel.clone(),
            ));
            (Some(in_tx), Some(reply_rx))
        }
        None => (None, None),
    };
    let task = HubTask {
        hub,
        admissions,
        clients: HashMap::new(),
        next_member: 1,
        max_queued: config.max_queued_messages,
        capture,
    };
    tracker.spawn(task.run(rx, replies, cancel.clone()));
    SignalingHandle {
        commands: tx,
        config: Arc::new(config),
        cancel,
        tracker,
    }
}

impl SignalingHandle {
    /// Reserve a connection: `(connectionId, connectionToken)`.
    pub async fn negotiate(&self) -> Result<(String, String), ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.call(Command::Negotiate { reply }, rx)
            .await?
            .map_err(Into::into)
    }

    /// Would an upgrade with this token be admitted?
    pub async fn check(&self, token: Option<String>) -> Result<(), ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.call(Command::Check { token, reply }, rx)
            .await?
            .map_err(Into::into)
    }

    /// Connection and session counts.
    pub async fn stats(&self) -> Result<SignalingStats, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.call(Command::Stats { reply }, rx).await
    }

    /// The path of the hub.
    pub fn hub_path(&self) -> &str {
        &self.config.hub_path
    }

    /// Run a WebSocket that has just been upgraded, on a tracked task.
    pub fn serve(&self, upgrade: hyper::upgrade::OnUpgrade, token: Option<String>) {
        let this = self.clone();
        self.tracker.spawn(async move {
            match upgrade.await {
                Ok(upgraded) => this.run_connection(upgraded, token).await,
                Err(e) => debug!(error = %e, "websocket upgrade failed"),
            }
        });
    }

    async fn call<T>(&self, command: Command, rx: oneshot::Receiver<T>) -> Result<T, ServiceError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }

    async fn run_connection(self, upgraded: Upgraded, token: Option<String>) {
        let limit = self.config.max_message_bytes;
        // Small read buffers keep 10 000 idle connections cheap; a frame may still be as large as
        // a record plus slack, so an oversized record reaches the codec and gets a Close record.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4096)
            // Frames are written out at each flush: records queued together leave in one write.
            .write_buffer_size(65536)
            .max_write_buffer_size(limit * 2 + 65536)
            .max_message_size(Some(limit * 2 + 65536))
            .max_frame_size(Some(limit * 2 + 65536));
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
                .await;

        let (outbound_tx, mut outbound) = mpsc::channel(self.config.max_queued_messages);
        let kill = self.cancel.child_token();
        let (reply, rx) = oneshot::channel();
        let connect = Command::Connect {
            token,
            outbound: outbound_tx,
            kill: kill.clone(),
            reply,
        };
        let member = match self.call(connect, rx).await {
            Ok(Ok(member)) => member,
            Ok(Err(e)) => {
                debug!(error = %e, "websocket refused after upgrade");
                let _ = ws.close(None).await;
                return;
            }
            Err(_) => return,
        };
        debug!(member = member.0, "hub connection open");

        let now = Instant::now().into_std();
        let mut conn = Connection::new(
            ConnectionConfig {
                max_message_bytes: limit,
                max_json_depth: self.config.max_json_depth,
                keepalive: self.config.keepalive,
                client_timeout: self.config.client_timeout,
                handshake_timeout: self.config.handshake_timeout,
            },
            now,
        );
        // Long-lived futures, polled in place: re-creating a timer entry and a cancellation
        // waiter on every pass of the loop costs more than the relay itself.
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        let killed = kill.cancelled();
        tokio::pin!(killed);
        let mut armed: Option<Instant> = None;
        'run: loop {
            while let Some(output) = conn.poll_output() {
                match output {
                    ConnOutput::Send(bytes) => {
                        if !send_text(&mut ws, bytes, &kill, self.cancel.is_cancelled()).await {
                            conn.handle_disconnect("write failed");
                            break 'run;
                        }
                        conn.handle_sent(Instant::now().into_std());
                    }
                    ConnOutput::Request(request) => {
                        if self
                            .commands
                            .send(Command::Request { member, request })
                            .await
                            .is_err()
                        {
                            break 'run;
                        }
                    }
                    ConnOutput::Close => {
                        let _ = tokio::time::timeout(SHUTDOWN_GRACE, ws.close(None)).await;
                        break 'run;
                    }
                }
            }
            // Deadlines move later with every record (the keep-alive, the client timeout): a
            // timer armed earlier just fires early and `handle_timeout` finds nothing due, so
            // it is re-armed about once per keep-alive interval, not once per record.
            let deadline = conn.poll_timeout().map(Instant::from_std);
            let later = matches!((deadline, armed), (Some(d), Some(a)) if d >= a);
            if deadline != armed && !later {
                timer.as_mut().reset(deadline.unwrap_or(far));
                armed = deadline;
            }
            tokio::select! {
                biased;
                _ = &mut killed => {
                    if self.cancel.is_cancelled() {
                        conn.close(Some("Server is shutting down."));
                    } else {
                        // The hub gave up on this client (its queue was full): don't wait on it.
                        conn.handle_disconnect("outbound queue full");
                        break 'run;
                    }
                }
                message = outbound.recv() => match message {
                    Some(bytes) => {
                        if !send_queued(&mut ws, bytes, &mut outbound, &kill).await {
                            conn.handle_disconnect("write failed");
                            break 'run;
                        }
                        conn.handle_sent(Instant::now().into_std());
                    }
                    None => conn.close(Some("Disconnected by the server.")),
                },
                frame = ws.next() => {
                    let now = Instant::now().into_std();
                    match frame {
                        Some(Ok(Message::Text(text))) => conn.handle_text(text.as_bytes(), now),
                        Some(Ok(Message::Binary(data))) => conn.handle_binary(&data, now),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => conn.handle_activity(now),
                        Some(Ok(Message::Close(_))) | None => { conn.handle_disconnect("client went away"); break 'run; }
                        Some(Err(e)) => { conn.handle_disconnect(&e.to_string()); break 'run; }
                    }
                }
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    timer.as_mut().reset(far);
                    conn.handle_timeout(Instant::now().into_std());
                }
            }
        }
        debug!(
            member = member.0,
            reason = conn.close_reason().unwrap_or(""),
            "hub connection closed"
        );
        let _ = self.commands.send(Command::Disconnected { member }).await;
    }
}

/// Write one text frame. Gives up when `kill` fires because the hub dropped this client (it
/// does not read); during shutdown the last records get a short grace period instead.
async fn send_text(
    ws: &mut WebSocketStream<TokioIo<Upgraded>>,
    bytes: Bytes,
    kill: &CancellationToken,
    shutting_down: bool,
) -> bool {
    let Ok(text) = Utf8Bytes::try_from(bytes) else {
        return false;
    };
    if shutting_down {
        return matches!(
            tokio::time::timeout(SHUTDOWN_GRACE, ws.send(Message::Text(text))).await,
            Ok(Ok(()))
        );
    }
    tokio::select! {
        biased;
        result = ws.send(Message::Text(text)) => result.is_ok(),
        _ = kill.cancelled() => false,
    }
}

/// Write `first` and whatever else the hub has queued for this client already, one frame per
/// record, with a single flush (one write to the socket when they fit its buffer).
async fn send_queued(
    ws: &mut WebSocketStream<TokioIo<Upgraded>>,
    first: Bytes,
    outbound: &mut mpsc::Receiver<Bytes>,
    kill: &CancellationToken,
) -> bool {
    let write = async {
        let mut next = Some(first);
        while let Some(bytes) = next {
            let text = Utf8Bytes::try_from(bytes).map_err(|_| ())?;
            ws.feed(Message::Text(text)).await.map_err(|_| ())?;
            next = outbound.try_recv().ok();
        }
        ws.flush().await.map_err(|_| ())
    };
    tokio::select! {
        biased;
        result = write => result.is_ok(),
        _ = kill.cancelled() => false,
    }
}

/// How long a closing connection may take to send its Close record at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A hub member as the hub task knows it.
enum Client {
    /// A WebSocket connection.
    Remote {
        outbound: mpsc::Sender<Bytes>,
        kill: CancellationToken,
    },
    /// The daemon's capture side in one session.
    Local { session: SessionId },
}

struct HubTask {
    hub: Hub,
    admissions: Admissions,
    clients: HashMap<MemberId, Client>,
    next_member: u64,
    max_queued: usize,
    /// To the capture-member task, when the daemon joins sessions.
    capture: Option<mpsc::Sender<capture::Incoming>>,
}

impl HubTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut replies: Option<mpsc::Receiver<capture::Reply>>,
        cancel: CancellationToken,
    ) {
        info!(
            capture = self.capture.is_some(),
            max_queued = self.max_queued,
            "signaling hub running"
        );
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(reply) = recv_opt(&mut replies) => self.local_signal(reply),
                _ = cancel.cancelled() => break,
            }
        }
        debug!("signaling hub stopped");
    }

    /// The capture member answered: relay as `signalInitiator` if it is still in the session.
    fn local_signal(&mut self, reply: capture::Reply) {
        if matches!(self.clients.get(&reply.member), Some(Client::Local { .. })) {
            self.hub.signal(
                reply.member,
                &reply.session,
                Outbound::SignalInitiator(reply.payload),
            );
            self.drain();
        }
    }

    /// An initiator waits alone: join the session as its capture side.
    fn join_capture(&mut self, session: SessionId) {
        let member = MemberId(self.next_member);
        self.next_member += 1;
        self.hub.mark_local(member);
        match self.hub.join(member, session.clone(), true) {
            Ok(()) => {
                info!(%session, "joined the session as its capture side");
                self.clients.insert(member, Client::Local { session });
            }
            Err(e) => warn!(%session, error = %e, "cannot join the session as its capture side"),
        }
    }

    fn handle(&mut self, command: Command) {
        let now = Instant::now().into_std();
        match command {
            Command::Negotiate { reply } => {
                let result = self
                    .admissions
                    .negotiate(random_token(), now)
                    .map(|token| (random_token(), token));
                let _ = reply.send(result);
            }
            Command::Check { token, reply } => {
                let _ = reply.send(self.admissions.check(token.as_deref(), now));
            }
            Command::Connect {
                token,
                outbound,
                kill,
                reply,
            } => {
                let result = self.admissions.connect(token.as_deref(), now).map(|()| {
                    let member = MemberId(self.next_member);
                    self.next_member += 1;
                    self.clients
                        .insert(member, Client::Remote { outbound, kill });
                    member
                });
                let _ = reply.send(result);
            }
            Command::Request { member, request } => {
                if self.clients.contains_key(&member) {
                    self.hub.handle_request(member, request);
                    self.drain();
                }
            }
            Command::Disconnected { member } => self.remove(member),
            Command::Stats { reply } => {
                let _ = reply.send(SignalingStats {
                    connections: self.admissions.active(),
                    sessions: self.hub.session_count(),
                });
            }
        }
    }

    fn drain(&mut self) {
        let mut dropped = Vec::new();
        while let Some(output) = self.hub.poll_output() {
            match output {
                HubOutput::Deliver { to, message } => match self.clients.get(&to) {
                    Some(Client::Remote { outbound, .. }) => {
                        let delivered = outbound.try_send(encode(message)).is_ok();
                        if !delivered {
                            warn!(
                                member = to.0,
                                "client is not reading its messages; disconnecting it"
                            );
                            dropped.push(to);
                        }
                    }
                    Some(Client::Local { session }) => {
                        if let (Outbound::SignalCapture(payload), Some(capture)) =
                            (message, &self.capture)
                        {
                            let incoming = capture::Incoming {
                                member: to,
                                session: session.clone(),
                                payload,
                            };
                            if capture.try_send(incoming).is_err() {
                                warn!(%session, "capture side is busy; offer dropped");
                            }
                        }
                    }
                    None => {}
                },
                HubOutput::CaptureWanted { session } => self.join_capture(session),
                HubOutput::LocalLeft { member, session } => {
                    debug!(%session, "initiator gone; capture side leaves the session");
                    self.clients.remove(&member);
                }
            }
        }
        for member in dropped {
            self.remove(member);
        }
    }

    fn remove(&mut self, member: MemberId) {
        if let Some(Client::Remote { kill, .. }) = self.clients.get(&member) {
            kill.cancel();
            self.clients.remove(&member);
            self.admissions.disconnect();
            self.hub.handle_disconnect(member);
            self.drain();
        }
    }
}

fn encode(message: Outbound) -> Bytes {
    match message {
        Outbound::SignalStart => ServerMessage::Invocation {
            target: "signalStart",
            arguments: Vec::new(),
        },
        Outbound::SignalCapture(payload) => ServerMessage::Invocation {
            target: "signalCapture",
            arguments: vec![payload],
        },
        Outbound::SignalInitiator(payload) => ServerMessage::Invocation {
            target: "signalInitiator",
            arguments: vec![payload],
        },
        Outbound::Completion {
            invocation_id,
            error,
        } => ServerMessage::Completion {
            invocation_id,
            error,
        },
    }
    .encode()
}

/// 128 random bits, URL-safe hex. Falls back to a time-and-counter mix only if the OS has no
/// randomness at all, which never happens on Linux after boot.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        warn!("OS randomness unavailable; tokens are weaker");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = t.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
