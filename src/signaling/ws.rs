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
    AdmissionError, Admissions, Hub, HubConfig, HubOutput, MemberId, Outbound, Request,
    RequestError, SessionId,
};
use super::redis::{self as backplane_task, BackplaneCounters, Event, Op};
use super::signalr::{ConnOutput, Connection, ConnectionConfig};
use crate::config::{BackplaneConfig, BackplaneKind, JoinSessions, SignalingConfig};
use crate::ids::random_token;

/// Commands to the hub task.
enum Command {
    Negotiate {
        reply: oneshot::Sender<Result<(String, String), AdmissionError>>,
    },
    Check {
        token: Option<String>,
        reply: oneshot::Sender<Result<(), AdmissionError>>,
    },
    /// The token is in the backplane's Redis: only that copy is valid.
    Forget {
        token: String,
        reply: oneshot::Sender<()>,
    },
    /// The backplane handed over a token another instance negotiated.
    Adopt {
        token: String,
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
    /// Hub WebSocket connections open now.
    pub connections: usize,
    /// Sessions (SignalR groups) open now.
    pub sessions: usize,
    /// The Redis backplane, when one is configured.
    pub backplane: Option<BackplaneStats>,
}

/// The Redis backplane's state and counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackplaneStats {
    /// Connected to Redis now.
    pub up: bool,
    /// Envelopes published.
    pub published: u64,
    /// Pipelines of commands written to Redis.
    pub writes: u64,
    /// Envelopes received from Redis.
    pub received: u64,
    /// Messages dropped (queues full, Redis down, or refused as malformed or too large).
    pub dropped: u64,
}

/// Why the signaling service could not do something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The hub did not admit the connection.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// The hub task is gone (shutting down).
    #[error("the signaling service has stopped")]
    Stopped,
}

/// Cloneable handle to the hub task.
#[derive(Clone)]
pub struct SignalingHandle {
    commands: mpsc::Sender<Command>,
    config: Arc<SignalingConfig>,
    /// To the backplane task (tokens), when there is one.
    backplane: Option<mpsc::Sender<Op>>,
    /// The hub starts initiators on join (negotiate says so).
    start_on_join: bool,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Start the hub task. It stops when `cancel` fires; connection tasks are tracked by `tracker`.
///
/// With an `answerer` and `join_sessions = "all"`, the daemon joins every session an initiator
/// opens as its capture side; otherwise the hub is a pure relay. With `[backplane] kind =
/// "redis"` the hub shares its sessions with every instance on that Redis, through the
/// backplane task ([`super::redis`]).
pub fn spawn(
    config: SignalingConfig,
    backplane: &BackplaneConfig,
    answerer: Option<Arc<dyn Answerer>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> Result<SignalingHandle, backplane_task::BackplaneError> {
    // Every connection sends through this queue; a full queue slows readers, never the hub.
    let (tx, rx) = mpsc::channel(1024);
    let answerer = answerer.filter(|_| config.join_sessions == JoinSessions::All);
    let hub_config = HubConfig {
        max_sessions: config.max_sessions,
        max_members_per_session: config.max_members_per_session,
        capture_wanted: answerer.is_some(),
    };
    let (hub, link) = match backplane.kind {
        BackplaneKind::None => (Hub::new(hub_config), None),
        BackplaneKind::Redis => {
            // Unique in the fleet, and no `.` (connection ids are `{instance}.{member}`).
            let instance = random_token()
                .map_err(|e| backplane_task::BackplaneError::Url(format!("no instance id: {e}")))?;
            let link = backplane_task::spawn(
                backplane_task::Settings {
                    config: backplane.clone(),
                    instance: instance.clone(),
                    max_members_per_session: config.max_members_per_session,
                    max_message_bytes: config.max_payload_bytes,
                    token_lifetime: config.handshake_timeout,
                    start_on_join: backplane.start_on_join && !config.echo_to_sender,
                },
                cancel.clone(),
                &tracker,
            )?;
            let hub = Hub::with_backplane(hub_config, &instance);
            let hub = match backplane.start_on_join {
                true => hub.start_across(),
                false => hub,
            };
            (hub, Some(link))
        }
    };
    let hub = match config.echo_to_sender {
        true => hub.echo_to_sender(),
        false => hub,
    };
    let (backplane_link, events) = match link {
        Some(link) => (
            Some(BackplaneLink {
                ops: link.ops,
                counters: link.counters,
            }),
            Some(link.events),
        ),
        None => (None, None),
    };
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
        backplane: backplane_link.clone(),
        backplane_up: false,
        stalled: false,
    };
    let start_on_join = task.hub.starts_on_join();
    tracker.spawn(task.run(rx, replies, events, cancel.clone()));
    Ok(SignalingHandle {
        commands: tx,
        config: Arc::new(config),
        backplane: backplane_link.map(|link| link.ops),
        start_on_join,
        cancel,
        tracker,
    })
}

/// The hub task's end of the backplane task.
#[derive(Clone)]
struct BackplaneLink {
    ops: mpsc::Sender<Op>,
    counters: Arc<BackplaneCounters>,
}

/// How long the HTTP side waits for Redis (storing or taking a token) before going on
/// without it.
const TOKEN_WAIT: Duration = Duration::from_secs(1);

impl SignalingHandle {
    /// Reserve a connection: `(connectionId, connectionToken)`. With the backplane up, the
    /// token is kept in Redis, so the WebSocket may reach any instance; otherwise it is valid
    /// here only.
    pub async fn negotiate(&self) -> Result<(String, String), ServiceError> {
        let (reply, rx) = oneshot::channel();
        let (id, token) = self.call(Command::Negotiate { reply }, rx).await??;
        if let Some(ops) = &self.backplane {
            let (reply, rx) = oneshot::channel();
            let op = Op::StoreToken {
                token: token.clone(),
                reply,
            };
            let stored = ops.try_send(op).is_ok()
                && matches!(tokio::time::timeout(TOKEN_WAIT, rx).await, Ok(Ok(true)));
            if stored {
                let (reply, rx) = oneshot::channel();
                let forget = Command::Forget {
                    token: token.clone(),
                    reply,
                };
                self.call(forget, rx).await?;
            } else {
                debug!(
                    "negotiate: backplane unavailable; the token is valid on this instance only"
                );
            }
        }
        Ok((id, token))
    }

    /// Would an upgrade with this token be admitted? With the backplane up, a token is taken
    /// from Redis (whichever instance negotiated it) and so can be used once in the fleet.
    pub async fn check(&self, token: Option<String>) -> Result<(), ServiceError> {
        if let (Some(ops), Some(token)) = (&self.backplane, &token) {
            let (reply, rx) = oneshot::channel();
            let op = Op::TakeToken {
                token: token.clone(),
                reply,
            };
            let taken = match ops.try_send(op) {
                Ok(()) => tokio::time::timeout(TOKEN_WAIT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten(),
                Err(_) => None,
            };
            if taken == Some(true) {
                let (reply, rx) = oneshot::channel();
                let adopt = Command::Adopt {
                    token: token.clone(),
                    reply,
                };
                return self.call(adopt, rx).await?.map_err(Into::into);
            }
            // Not in Redis (used, expired, or negotiated while Redis was away) or Redis
            // unavailable: only a token kept here can be valid.
        }
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

    /// Whether this hub starts initiators that join a session where a ready capture side
    /// waits ([`Hub::starts_on_join`]): yes without a backplane, and with one when
    /// `[backplane] start_on_join` is on (unless `echo_to_sender`). Negotiate says so to clients
    /// in the [`START_ON_JOIN_HEADER`](super::remote::START_ON_JOIN_HEADER) header.
    pub fn starts_on_join(&self) -> bool {
        self.start_on_join
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

    /// Serve one upgraded WebSocket: register with the hub, then run its [`Connection`].
    async fn run_connection(self, upgraded: Upgraded, token: Option<String>) {
        let mut ws = accept_websocket(upgraded, self.config.max_message_bytes).await;
        let Some((member, outbound, kill)) = self.register(token, &mut ws).await else {
            return;
        };
        debug!(member = member.0, "hub connection open");
        let conn = Connection::new(self.connection_config(), Instant::now().into_std());
        let mut shell = ConnectionShell {
            handle: &self,
            member,
            ws,
            conn,
            outbound,
            kill,
        };
        shell.run().await;
        debug!(
            member = member.0,
            reason = shell.conn.close_reason().unwrap_or(""),
            "hub connection closed"
        );
        let _ = self.commands.send(Command::Disconnected { member }).await;
    }

    /// Ask the hub to admit this socket; `None` (and the socket closed) when it does not.
    async fn register(
        &self,
        token: Option<String>,
        ws: &mut Socket,
    ) -> Option<(MemberId, mpsc::Receiver<Bytes>, CancellationToken)> {
        let (outbound_tx, outbound) = mpsc::channel(self.config.max_queued_messages);
        let kill = self.cancel.child_token();
        let (reply, rx) = oneshot::channel();
        let connect = Command::Connect {
            token,
            outbound: outbound_tx,
            kill: kill.clone(),
            reply,
        };
        match self.call(connect, rx).await {
            Ok(Ok(member)) => Some((member, outbound, kill)),
            Ok(Err(e)) => {
                debug!(error = %e, "websocket refused after upgrade");
                let _ = ws.close(None).await;
                None
            }
            Err(_) => None,
        }
    }

    fn connection_config(&self) -> ConnectionConfig {
        ConnectionConfig {
            max_message_bytes: self.config.max_message_bytes,
            max_json_depth: self.config.max_json_depth,
            keepalive: self.config.keepalive,
            client_timeout: self.config.client_timeout,
            handshake_timeout: self.config.handshake_timeout,
        }
    }
}

/// The server side of one hub WebSocket.
type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Largest WebSocket frame or message for records of up to `max_message_bytes`: a record plus
/// slack, so an oversized record still reaches the codec and gets a Close record. tungstenite
/// checks a frame's length in its header and refuses a larger one before buffering any of it.
fn max_frame_bytes(max_message_bytes: usize) -> usize {
    max_message_bytes * 2 + 65536
}

/// Wrap an upgraded connection as a server WebSocket with this hub's size limits.
async fn accept_websocket(upgraded: Upgraded, max_message_bytes: usize) -> Socket {
    let limit = max_frame_bytes(max_message_bytes);
    // Small read buffers keep 10 000 idle connections cheap.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        // Frames are written out at each flush: records queued together leave in one write.
        .write_buffer_size(65536)
        .max_write_buffer_size(limit)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config)).await
}

/// Whether the connection's loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Moves bytes between one socket and its [`Connection`], and hub traffic to the socket.
struct ConnectionShell<'a> {
    handle: &'a SignalingHandle,
    member: MemberId,
    ws: Socket,
    conn: Connection,
    /// What the hub relays to this client.
    outbound: mpsc::Receiver<Bytes>,
    /// Fired by the hub when it gives up on this client, or at shutdown.
    kill: CancellationToken,
}

impl ConnectionShell<'_> {
    async fn run(&mut self) {
        // Long-lived futures, polled in place: re-creating a timer entry and a cancellation
        // waiter on every pass of the loop costs more than the relay itself.
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        let kill = self.kill.clone();
        let killed = kill.cancelled();
        tokio::pin!(killed);
        let mut armed: Option<Instant> = None;
        loop {
            // The draining rule: every output of the last input first, then the timer.
            if self.perform_outputs().await == Flow::Stop {
                return;
            }
            // Deadlines move later with every record (the keep-alive, the client timeout): a
            // timer armed earlier just fires early and `handle_timeout` finds nothing due, so
            // it is re-armed about once per keep-alive interval, not once per record.
            let deadline = self.conn.poll_timeout().map(Instant::from_std);
            let later = matches!((deadline, armed), (Some(d), Some(a)) if d >= a);
            if deadline != armed && !later {
                timer.as_mut().reset(deadline.unwrap_or(far));
                armed = deadline;
            }
            let flow = tokio::select! {
                biased;
                _ = &mut killed => self.handle_killed(),
                message = self.outbound.recv() => self.relay(message).await,
                frame = self.ws.next() => self.handle_frame(frame),
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    timer.as_mut().reset(far);
                    self.conn.handle_timeout(Instant::now().into_std());
                    Flow::Continue
                }
            };
            if flow == Flow::Stop {
                return;
            }
        }
    }

    /// Drain [`Connection::poll_output`]: write records, hand requests to the hub, close.
    async fn perform_outputs(&mut self) -> Flow {
        while let Some(output) = self.conn.poll_output() {
            match output {
                ConnOutput::Send(bytes) => {
                    let shutting_down = self.handle.cancel.is_cancelled();
                    if !send_text(&mut self.ws, bytes, &self.kill, shutting_down).await {
                        self.conn.handle_disconnect("write failed");
                        return Flow::Stop;
                    }
                    self.conn.handle_sent(Instant::now().into_std());
                }
                ConnOutput::Request(request) => {
                    let member = self.member;
                    let command = Command::Request { member, request };
                    if self.handle.commands.send(command).await.is_err() {
                        return Flow::Stop;
                    }
                }
                ConnOutput::Close => {
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.ws.close(None)).await;
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }

    /// The kill token fired: shutdown (say goodbye) or the hub gave up on this client.
    fn handle_killed(&mut self) -> Flow {
        if self.handle.cancel.is_cancelled() {
            self.conn.handle_shutdown();
            Flow::Continue
        } else {
            // The hub gave up on this client (its queue was full): don't wait on it.
            self.conn.handle_disconnect("outbound queue full");
            Flow::Stop
        }
    }

    /// Write what the hub relayed (and whatever else it queued meanwhile).
    async fn relay(&mut self, message: Option<Bytes>) -> Flow {
        match message {
            Some(bytes) => {
                if !send_queued(&mut self.ws, bytes, &mut self.outbound, &self.kill).await {
                    self.conn.handle_disconnect("write failed");
                    return Flow::Stop;
                }
                self.conn.handle_sent(Instant::now().into_std());
            }
            None => self.conn.handle_close(Some("Disconnected by the server.")),
        }
        Flow::Continue
    }

    /// A frame (or the end of the stream) from the client.
    fn handle_frame(
        &mut self,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Flow {
        let now = Instant::now().into_std();
        match frame {
            Some(Ok(Message::Text(text))) => self.conn.handle_text(text.as_bytes(), now),
            Some(Ok(Message::Binary(data))) => self.conn.handle_binary(&data, now),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                self.conn.handle_activity(now)
            }
            Some(Ok(Message::Close(_))) | None => {
                self.conn.handle_disconnect("client went away");
                return Flow::Stop;
            }
            Some(Err(e)) => {
                self.conn.handle_disconnect(&e.to_string());
                return Flow::Stop;
            }
        }
        Flow::Continue
    }
}

/// Write one text frame. Gives up when `kill` fires because the hub dropped this client (it
/// does not read); during shutdown the last records get a short grace period instead.
async fn send_text(
    ws: &mut Socket,
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
    ws: &mut Socket,
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
    /// To the backplane task, when sessions span instances.
    backplane: Option<BackplaneLink>,
    /// The backplane task says Redis is reachable.
    backplane_up: bool,
    /// A subscription or a count could not be queued for the backplane task (its queue was
    /// full): the hub is held down until the queue has drained, then brought up again, which
    /// subscribes and restates everything.
    stalled: bool,
}

/// How often a stalled backplane queue is looked at.
const STALL_RETRY: Duration = Duration::from_millis(100);

impl HubTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut replies: Option<mpsc::Receiver<capture::Reply>>,
        mut events: Option<mpsc::Receiver<Event>>,
        cancel: CancellationToken,
    ) {
        info!(
            capture = self.capture.is_some(),
            backplane = self.backplane.is_some(),
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
                Some(event) = recv_opt(&mut events) => self.backplane_event(event),
                _ = tokio::time::sleep(STALL_RETRY), if self.stalled => self.retry_stalled(),
                _ = cancel.cancelled() => break,
            }
        }
        debug!("signaling hub stopped");
    }

    /// What the backplane task reports: its state, a message from another instance, or the
    /// answer to a reservation.
    fn backplane_event(&mut self, event: Event) {
        match event {
            Event::Up => {
                self.backplane_up = true;
                if !self.stalled {
                    self.hub.handle_backplane(true);
                }
            }
            Event::Down => {
                self.backplane_up = false;
                self.hub.handle_backplane(false);
            }
            Event::Message { session, envelope } => {
                let now = Instant::now().into_std();
                if let Err(e) = self.hub.handle_remote(&session, &envelope, now) {
                    debug!(%session, error = %e, "backplane message not delivered");
                    if let Some(link) = &self.backplane {
                        link.counters
                            .dropped
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            Event::Reserved {
                member,
                session,
                result,
            } => self.hub.handle_reservation(member, session, result),
            Event::Start { session, message } => self.hub.handle_start(&session, message),
        }
        self.drain();
    }

    /// Hand one of the hub's backplane intents to the backplane task without waiting: a full
    /// queue drops it (counted); a reservation that cannot be queued is refused at once.
    fn send_backplane(&mut self, op: Op) {
        let Some(link) = &self.backplane else {
            return;
        };
        if let Err(e) = link.ops.try_send(op) {
            link.counters
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match e.into_inner() {
                Op::Reserve { member, session } => {
                    warn!(%session, "backplane queue full; join refused");
                    self.hub.handle_reservation(
                        member,
                        session,
                        Err(RequestError::BackplaneUnavailable),
                    );
                }
                // A lost message is counted; nothing else depends on it.
                Op::Publish { .. } => {}
                // A lost subscription or count would leave a session deaf or miscounted:
                // hold the hub down until the queue drains, then restate everything.
                _ if !self.stalled => {
                    warn!("backplane queue full; holding joins until it drains, then subscribing and restating every session");
                    self.stalled = true;
                    self.hub.handle_backplane(false);
                }
                _ => {}
            }
        }
    }

    /// The backplane queue was full: once it is at most half full (and Redis is up), bring the
    /// hub up again, which subscribes every session and restates its places.
    fn retry_stalled(&mut self) {
        let Some(link) = &self.backplane else {
            return;
        };
        if link.ops.capacity() * 2 >= link.ops.max_capacity() {
            info!("backplane queue drained; subscribing and restating every session");
            self.stalled = false;
            if self.backplane_up {
                self.hub.handle_backplane(true);
                self.drain();
            }
        }
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
        match self.hub.join_local(member, session.clone()) {
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
                let (Ok(token), Ok(id)) = (random_token(), random_token()) else {
                    // Dropping `reply` answers 503: no guessable tokens.
                    warn!("OS randomness unavailable; refusing to negotiate");
                    return;
                };
                let result = self
                    .admissions
                    .negotiate(token, now)
                    .map(|token| (id, token));
                let _ = reply.send(result);
            }
            Command::Check { token, reply } => {
                let _ = reply.send(self.admissions.check(token.as_deref(), now));
            }
            Command::Forget { token, reply } => {
                self.admissions.forget(&token);
                let _ = reply.send(());
            }
            Command::Adopt { token, reply } => {
                let _ = reply.send(self.admissions.adopt(token, now));
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
                let load =
                    |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
                let _ = reply.send(SignalingStats {
                    connections: self.admissions.active(),
                    sessions: self.hub.session_count(),
                    backplane: self.backplane.as_ref().map(|link| BackplaneStats {
                        up: self.hub.backplane_up(),
                        published: load(&link.counters.published),
                        writes: load(&link.counters.writes),
                        received: load(&link.counters.received),
                        dropped: load(&link.counters.dropped),
                    }),
                });
            }
        }
    }

    /// The draining rule for the hub: after every hub input, take every [`Hub::poll_output`]
    /// until `None` and carry it out. Clients found not reading are removed afterwards (which
    /// is a hub input again, drained in turn).
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
                HubOutput::Subscribe(session) => self.send_backplane(Op::Subscribe(session)),
                HubOutput::Unsubscribe(session) => self.send_backplane(Op::Unsubscribe(session)),
                HubOutput::Publish { session, envelope } => match envelope.encode() {
                    Ok(bytes) => self.send_backplane(Op::Publish { session, bytes }),
                    Err(e) => warn!(%session, error = %e, "cannot encode a backplane message"),
                },
                HubOutput::Reserve { member, session } => {
                    self.send_backplane(Op::Reserve { member, session })
                }
                HubOutput::Release(session) => self.send_backplane(Op::Release(session)),
                HubOutput::Resync(sessions) => self.send_backplane(Op::Resync(sessions)),
                HubOutput::PublishStart { session, message } => {
                    let bytes = message.encode(&session);
                    self.send_backplane(Op::PublishStart { session, bytes })
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
    message.to_record()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::hub::Method;

    /// A hub task with remote clients 1 and 2 (and the receivers of their queues).
    fn task_with_two_clients(
        hub: Hub,
        capture: Option<mpsc::Sender<capture::Incoming>>,
        backplane: Option<BackplaneLink>,
    ) -> (HubTask, Vec<mpsc::Receiver<Bytes>>) {
        let mut task = HubTask {
            hub,
            admissions: Admissions::new(10, Duration::from_secs(15)),
            clients: HashMap::new(),
            next_member: 100,
            max_queued: 64,
            capture,
            backplane,
            backplane_up: false,
            stalled: false,
        };
        let mut receivers = Vec::new();
        for member in [1, 2] {
            let (outbound, rx) = mpsc::channel(64);
            receivers.push(rx);
            let kill = CancellationToken::new();
            task.clients
                .insert(MemberId(member), Client::Remote { outbound, kill });
        }
        (task, receivers)
    }

    fn sync(member: u64, session: &str, ready: bool) -> Command {
        Command::Request {
            member: MemberId(member),
            request: Request {
                invocation_id: None,
                method: Method::Sync {
                    session: SessionId::parse(session).unwrap(),
                    ready,
                },
            },
        }
    }

    /// A session full of initiators and no capture side: every re-sent `Sync(s, false)` asks for
    /// the capture member, whose join fails. It must leave nothing behind.
    #[test]
    fn a_capture_join_that_fails_leaves_no_local_member() {
        let (capture, _incoming) = mpsc::channel(8);
        let hub = Hub::new(HubConfig {
            max_sessions: 10,
            max_members_per_session: 2,
            capture_wanted: true,
        });
        let (mut task, _receivers) = task_with_two_clients(hub, Some(capture), None);
        // A capture phone first (so the daemon stays out), then an initiator: full.
        task.handle(sync(1, "s", true));
        task.handle(sync(2, "s", false));
        assert_eq!(task.hub.local_count(), 0);
        // The phone re-syncs as an initiator: no capture side in a full session.
        for _ in 0..5 {
            task.handle(sync(1, "s", false));
        }
        assert_eq!(task.hub.local_count(), 0);
        assert_eq!(task.clients.len(), 2, "no local client recorded");
        assert_eq!(task.hub.members(&SessionId::parse("s").unwrap()).len(), 2);
    }

    /// A full backplane queue never loses a subscription for good: the hub is held down
    /// (joins refused) until the queue drains, then every session is subscribed again.
    #[test]
    fn a_full_backplane_queue_holds_joins_then_resubscribes_everything() {
        let (ops, mut queued) = mpsc::channel(2);
        let counters = Arc::new(BackplaneCounters::default());
        let hub = Hub::with_backplane(
            HubConfig {
                max_sessions: 10,
                max_members_per_session: 8,
                capture_wanted: false,
            },
            "i",
        );
        let link = BackplaneLink {
            ops,
            counters: counters.clone(),
        };
        let (mut task, _receivers) = task_with_two_clients(hub, None, Some(link));
        task.backplane_event(Event::Up);
        // Member 1's Subscribe and Reserve fill the queue; member 2's Subscribe does not fit.
        task.handle(sync(1, "a", false));
        task.handle(sync(2, "b", false));
        assert!(task.stalled);
        assert!(!task.hub.backplane_up(), "joins are held");
        assert!(counters.dropped.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        // Still full: nothing changes.
        task.retry_stalled();
        assert!(task.stalled);
        // The backplane task takes what was queued; the hub comes up and subscribes again.
        let mut taken = Vec::new();
        while let Ok(op) = queued.try_recv() {
            taken.push(op);
        }
        assert!(matches!(
            taken.as_slice(),
            [Op::Subscribe(_), Op::Reserve { .. }]
        ));
        task.retry_stalled();
        assert!(!task.stalled && task.hub.backplane_up());
        let again = std::iter::from_fn(|| queued.try_recv().ok()).collect::<Vec<_>>();
        assert!(
            matches!(again.as_slice(), [Op::Resync(all)] if all.len() == 1 && all[0].0.as_str() == "a"),
            "one resync, with session a: {again:?}"
        );
    }
}
