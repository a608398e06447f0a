//! The Redis backplane's IO: one task owns this instance's Redis connection and carries out
//! what the hub asks ([`HubOutput::Subscribe`](super::hub::HubOutput), `Publish`, `Reserve`,
//! …) in the order it asks. Nothing here decides a protocol question: the channel names and
//! envelope are [`backplane`](super::backplane)'s, the decisions the [`Hub`](super::hub::Hub)'s.
//!
//! **One connection, RESP3.** Commands (pipelined) and subscriptions share one connection
//! spoken in RESP3 (Redis 6 or later), where a subscribed connection may still run commands
//! and what is published arrives as push messages between the replies. `Deliveries` takes
//! those pushes as the redis crate's connection driver reads them: it drops this instance's
//! own messages back from Redis and hands the rest straight to the hub. Against a second,
//! RESP2 pub/sub connection that saves, per message, a wake-up of this task and (when the
//! echo of a `PUBLISH` and its reply leave Redis together) a write in Redis and a read here.
//! The wire format is unchanged: the original server's RESP2 subscribers read the same
//! channels and envelopes.
//!
//! **State in Redis** (besides the group channels, which are the ASP.NET server's):
//! - `{prefix}:snaprtcd:places:{session}`: a hash from instance id to the places its members
//!   hold in the session. A join takes a place with one script (`RESERVE`) that sums the
//!   places of the instances still alive, drops those of dead ones, and adds one if the sum is
//!   under `max_members_per_session`: atomic across the fleet.
//! - `{prefix}:snaprtcd:instance:{id}`: this instance's lease, set with an expiry of
//!   `[backplane] instance_ttl` and renewed every third of it. An instance killed with `-9`
//!   stops renewing; once its lease is gone its places no longer count.
//! - `{prefix}:snaprtcd:token:{token}`: a negotiate token, for `handshake_timeout`, taken
//!   with `GETDEL` by whichever instance the WebSocket reaches (single use, fleet-wide).
//!
//! **Pacing.** While commands keep coming, the task writes at most once per
//! `[backplane] write_interval` (see `Pacing`); a command after a quiet spell goes at once.
//!
//! **Faults.** When Redis cannot be reached the task says [`Event::Down`], answers every
//! waiting and new reservation with [`RequestError::BackplaneUnavailable`] (so no call
//! hangs), drops publishes, and reconnects with a backoff of 100 ms doubling to 1 s. When it
//! is back it says [`Event::Up`]; the hub then subscribes every session again and restates its
//! places.
//!
//! **Bounds.** The hub's commands wait in a queue of `[backplane] max_queued_messages` (a full
//! queue drops publishes, refuses reservations, and counts them). Messages from Redis larger
//! than `[signaling] max_payload_bytes` are refused undecoded, and what the hub has not taken
//! waits in a queue of `max_queued_messages` too: when it is full, further messages are
//! dropped and counted, so a flood from other instances never grows this one's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, Msg, ProtocolVersion, PushInfo, PushKind,
    RedisError, Value,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backplane::{group_channel, session_of_channel, Envelope};
use super::hub::{MemberId, RequestError, SessionId, StartMessage};
use crate::config::{BackplaneConfig, RedisUrl};

/// Places are counted in Redis by this script. `KEYS[1]`: the session's places hash.
/// `ARGV`: this instance's id, `max_members_per_session`, the lease key prefix, the hash's
/// expiry in seconds. Returns the places taken after this one, or -1 when the session is full.
const RESERVE: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  if fields[i] == ARGV[1] or redis.call('EXISTS', ARGV[3] .. fields[i]) == 1 then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if total >= tonumber(ARGV[2]) then return -1 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return total + 1
";

/// Give one place back. `KEYS[1]`: the places hash; `ARGV[1]`: this instance's id.
const RELEASE: &str = r"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
";

/// A places hash that no join or leave touches for this long is dropped: it bounds what a
/// crashed instance leaves behind in sessions nobody uses again.
const PLACES_EXPIRY_SECS: u64 = 24 * 3600;

/// How long one Redis round trip may take before the connection counts as lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most commands sent to Redis in one pipeline.
const MAX_BATCH: usize = 256;

/// Sessions per `SUBSCRIBE` and per pipeline when resubscribing after a reconnect.
const RESYNC_CHUNK: usize = 1000;

/// What the hub (through its task) asks of Redis.
#[derive(Debug)]
pub enum Op {
    /// Receive what is published for the session.
    Subscribe(SessionId),
    /// Stop receiving the session.
    Unsubscribe(SessionId),
    /// Publish an encoded [`Envelope`] on the session's group channel.
    Publish {
        /// The session.
        session: SessionId,
        /// The envelope's bytes.
        bytes: Vec<u8>,
    },
    /// Publish a start message ([`StartMessage`], encoded) on the fleet's start channel.
    PublishStart {
        /// The session it is about.
        session: SessionId,
        /// The message's bytes.
        bytes: Vec<u8>,
    },
    /// Take a place for `member` in `session`; answered by [`Event::Reserved`].
    Reserve {
        /// Who joins.
        member: MemberId,
        /// Where.
        session: SessionId,
    },
    /// Give one place in the session back.
    Release(SessionId),
    /// Subscribe every one of these sessions and restate the places this instance holds in
    /// each (after a reconnect).
    Resync(Vec<(SessionId, usize)>),
    /// Store a negotiate token for the fleet; the reply says whether it was stored.
    StoreToken {
        /// The token.
        token: String,
        /// `true` once Redis holds it.
        reply: oneshot::Sender<bool>,
    },
    /// Take (and delete) a token; the reply is `None` when Redis cannot be asked.
    TakeToken {
        /// The token.
        token: String,
        /// `Some(true)` when it was there.
        reply: oneshot::Sender<Option<bool>>,
    },
}

/// What the task tells the hub.
#[derive(Debug)]
pub enum Event {
    /// Connected (again): subscribe and restate everything.
    Up,
    /// Redis is unreachable.
    Down,
    /// Another instance (or this one) published on a subscribed session.
    Message {
        /// The session of the channel.
        session: SessionId,
        /// The envelope.
        envelope: Envelope,
    },
    /// A message on the fleet's start channel (`[backplane] start_on_join`).
    Start {
        /// The session it is about.
        session: SessionId,
        /// What it says.
        message: StartMessage,
    },
    /// The answer to [`Op::Reserve`].
    Reserved {
        /// Who asked.
        member: MemberId,
        /// Where.
        session: SessionId,
        /// A place was taken (`Ok`), the session is full, or Redis is unavailable.
        result: Result<(), RequestError>,
    },
}

/// Counters the task keeps (read for `/metrics`).
#[derive(Debug, Default)]
pub struct BackplaneCounters {
    /// Envelopes published.
    pub published: AtomicU64,
    /// Batches of commands sent to Redis, each in one write unless subscriptions split it
    /// (published ÷ writes: messages per write).
    pub writes: AtomicU64,
    /// Envelopes received from Redis and handed to the hub.
    pub received: AtomicU64,
    /// Messages dropped: a full queue either way, Redis down, or a message over the budget
    /// or malformed.
    pub dropped: AtomicU64,
}

/// The task's names for things in Redis.
struct Keys {
    prefix: String,
    instance: String,
}

impl Keys {
    fn places(&self, session: &SessionId) -> String {
        format!("{}:snaprtcd:places:{session}", self.prefix)
    }
    fn lease_prefix(&self) -> String {
        format!("{}:snaprtcd:instance:", self.prefix)
    }
    fn lease(&self) -> String {
        format!("{}{}", self.lease_prefix(), self.instance)
    }
    fn token(&self, token: &str) -> String {
        format!("{}:snaprtcd:token:{token}", self.prefix)
    }
    /// The fleet's start channel: snaprtcd's own, never read by the original server.
    fn start(&self) -> String {
        format!("{}:snaprtcd:start", self.prefix)
    }
}

/// Why the task could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// The URL is not one the Redis client takes.
    #[error("backplane.url: {0}")]
    Url(String),
}

/// The backplane task's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[backplane]`.
    pub config: BackplaneConfig,
    /// This instance's id in the fleet (random; no `.`).
    pub instance: String,
    /// `[signaling] max_members_per_session`, fleet-wide.
    pub max_members_per_session: usize,
    /// `[signaling] max_payload_bytes`: the largest envelope read from Redis.
    pub max_message_bytes: usize,
    /// `[signaling] handshake_timeout`: how long a stored token lives.
    pub token_lifetime: Duration,
    /// `[backplane] start_on_join`: subscribe the fleet's start channel.
    pub start_on_join: bool,
}

/// The ends of the task the signaling shell holds.
pub struct Link {
    /// Commands to the task.
    pub ops: mpsc::Sender<Op>,
    /// What the task tells the hub.
    pub events: mpsc::Receiver<Event>,
    /// The task's counters.
    pub counters: Arc<BackplaneCounters>,
}

/// Start the backplane task; it runs until `cancel` fires, then gives up its lease.
pub fn spawn(
    settings: Settings,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<Link, BackplaneError> {
    let url_error =
        |e: RedisError| BackplaneError::Url(e.to_string().replace(&settings.config.url, "…"));
    let info = settings
        .config
        .url
        .as_str()
        .into_connection_info()
        .map_err(url_error)?;
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(resp3)).map_err(url_error)?;
    let queue = settings.config.max_queued_messages;
    let (ops_tx, ops) = mpsc::channel(queue);
    let (events, events_rx) = mpsc::channel(queue);
    let counters = Arc::new(BackplaneCounters::default());
    let task = Task {
        where_: RedisUrl::parse(&settings.config.url)
            .map(|u| redacted(&u))
            .unwrap_or_default(),
        keys: Keys {
            prefix: settings.config.prefix.clone(),
            instance: settings.instance.clone(),
        },
        settings,
        client,
        ops,
        events,
        counters: counters.clone(),
    };
    tracker.spawn(task.run(cancel));
    Ok(Link {
        ops: ops_tx,
        events: events_rx,
        counters,
    })
}

/// `host:port/db`, with no credentials, for logs.
fn redacted(url: &RedisUrl) -> String {
    format!(
        "{}{}:{}/{}",
        if url.tls { "rediss://" } else { "redis://" },
        url.host,
        url.port,
        url.db
    )
}

struct Task {
    settings: Settings,
    keys: Keys,
    where_: String,
    client: Client,
    ops: mpsc::Receiver<Op>,
    events: mpsc::Sender<Event>,
    counters: Arc<BackplaneCounters>,
}

/// Why a connected spell ended.
enum End {
    Cancelled,
    Lost(RedisError),
}

struct Connected {
    conn: MultiplexedConnection,
    /// Told by [`Deliveries`] when the connection's driver has lost it.
    lost: Arc<Notify>,
    reserve_sha: String,
    release_sha: String,
}

impl Task {
    async fn run(mut self, cancel: CancellationToken) {
        info!(redis = %self.where_, instance = %self.keys.instance, "backplane starting");
        let mut backoff = Duration::from_millis(100);
        let mut was_up = false;
        loop {
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return,
                result = self.connect() => result,
            };
            let connected = match attempt {
                Ok(connected) => connected,
                Err(e) => {
                    if was_up || backoff == Duration::from_millis(100) {
                        warn!(redis = %self.where_, error = %e, "backplane: cannot reach Redis; retrying");
                    }
                    was_up = false;
                    // While down, answer what waits so nothing hangs.
                    let sleep = tokio::time::sleep(backoff);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = &mut sleep => break,
                            op = self.ops.recv() => match op {
                                Some(op) => self.refuse(op).await,
                                None => return,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            info!(redis = %self.where_, "backplane connected");
            backoff = Duration::from_millis(100);
            was_up = true;
            if self.events.send(Event::Up).await.is_err() {
                return;
            }
            let mut connected = connected;
            let end = self.serve(&mut connected, &cancel).await;
            match end {
                End::Cancelled => {
                    // Give the lease up, so the fleet stops counting this instance's places now.
                    let lease = self.keys.lease();
                    let _ = tokio::time::timeout(
                        Duration::from_millis(500),
                        redis::cmd("DEL")
                            .arg(lease)
                            .query_async::<Value>(&mut connected.conn),
                    )
                    .await;
                    return;
                }
                End::Lost(e) => {
                    warn!(redis = %self.where_, error = %e, "backplane: lost Redis; sessions spanning instances wait for it");
                    if self.events.send(Event::Down).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// The connection, the scripts loaded and the lease taken.
    async fn connect(&self) -> Result<Connected, RedisError> {
        let lost = Arc::new(Notify::new());
        let deliveries = Deliveries {
            prefix: self.keys.prefix.clone(),
            instance: self.keys.instance.clone(),
            start_channel: self.keys.start(),
            max_bytes: self.settings.max_message_bytes,
            events: self.events.clone(),
            counters: self.counters.clone(),
            lost: lost.clone(),
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(deliveries);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if self.settings.start_on_join {
            within(conn.subscribe(self.keys.start())).await?;
        }
        let (reserve_sha, release_sha, ()): (String, String, ()) = redis::pipe()
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(RESERVE)
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(RELEASE)
            .cmd("SET")
            .arg(self.keys.lease())
            .arg(1)
            .arg("PX")
            .arg(self.settings.config.instance_ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(Connected {
            conn,
            lost,
            reserve_sha,
            release_sha,
        })
    }

    /// Run while connected: commands out, the lease renewed; messages in go from
    /// [`Deliveries`] to the hub without passing through here.
    async fn serve(&mut self, connected: &mut Connected, cancel: &CancellationToken) -> End {
        let renew = self.settings.config.instance_ttl / 3;
        let mut lease = tokio::time::interval_at(tokio::time::Instant::now() + renew, renew);
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = connected.lost.clone();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut pacing = Pacing::new(self.settings.config.write_interval);
        // While a batch is held for `write_interval`, until when; what comes meanwhile queues
        // without waking this task, and goes with it.
        let mut held: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return End::Cancelled,
                _ = lost.notified() => {
                    // Answer what is held, so no reservation waits for it.
                    for op in batch.drain(..) {
                        self.refuse(op).await;
                    }
                    return End::Lost(closed_error());
                }
                _ = lease.tick() => {
                    let ttl = self.settings.config.instance_ttl.as_millis() as u64;
                    let renewed = redis::cmd("SET")
                        .arg(self.keys.lease())
                        .arg(1)
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<Value>(&mut connected.conn)
                        .await;
                    if let Err(e) = renewed {
                        return End::Lost(e);
                    }
                }
                _ = tokio::time::sleep_until(held.unwrap_or_else(Instant::now)), if held.is_some() => {
                    held = None;
                    if let Err(e) = self.write(connected, &mut batch, &mut pacing).await {
                        return End::Lost(e);
                    }
                }
                op = self.ops.recv(), if held.is_none() => {
                    let Some(op) = op else { return End::Cancelled };
                    batch.push(op);
                    held = pacing.hold_until(Instant::now());
                    if held.is_none() {
                        if let Err(e) = self.write(connected, &mut batch, &mut pacing).await {
                            return End::Lost(e);
                        }
                    }
                }
            }
        }
    }

    /// Write `batch` and whatever else waits in the queue (up to [`MAX_BATCH`]).
    async fn write(
        &mut self,
        connected: &mut Connected,
        batch: &mut Vec<Op>,
        pacing: &mut Pacing,
    ) -> Result<(), RedisError> {
        while batch.len() < MAX_BATCH {
            match self.ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        pacing.wrote(Instant::now(), batch.len());
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.execute(connected, batch).await
    }

    /// Carry out `batch` in order: subscriptions (consecutive ones in one command, as after a
    /// reconnect), the rest as one pipeline per run between them.
    /// After an error, what is left is refused (reservations and token requests answered).
    async fn execute(&self, c: &mut Connected, batch: &mut Vec<Op>) -> Result<(), RedisError> {
        let mut ops = std::mem::take(batch).into_iter().peekable();
        let mut result = Ok(());
        while let Some(op) = ops.next() {
            if result.is_err() {
                self.refuse(op).await;
                continue;
            }
            result = match op {
                Op::Subscribe(session) => {
                    let mut channels = vec![group_channel(&self.keys.prefix, &session)];
                    while let Some(Op::Subscribe(s)) =
                        ops.next_if(|op| matches!(op, Op::Subscribe(_)))
                    {
                        channels.push(group_channel(&self.keys.prefix, &s));
                    }
                    within(c.conn.subscribe(&channels)).await
                }
                Op::Unsubscribe(session) => {
                    let mut channels = vec![group_channel(&self.keys.prefix, &session)];
                    while let Some(Op::Unsubscribe(s)) =
                        ops.next_if(|op| matches!(op, Op::Unsubscribe(_)))
                    {
                        channels.push(group_channel(&self.keys.prefix, &s));
                    }
                    within(c.conn.unsubscribe(&channels)).await
                }
                Op::Resync(sessions) => self.resync(c, &sessions).await,
                op => {
                    let mut run = vec![op];
                    while let Some(next) = ops.next_if(|op| {
                        !matches!(op, Op::Subscribe(_) | Op::Unsubscribe(_) | Op::Resync(_))
                    }) {
                        run.push(next);
                    }
                    self.pipeline(c, run).await
                }
            };
        }
        result
    }

    /// Subscribe every session again and restate the places held in each, in chunks (one
    /// `SUBSCRIBE` and one pipeline per [`RESYNC_CHUNK`] sessions), whatever their number.
    async fn resync(
        &self,
        c: &mut Connected,
        sessions: &[(SessionId, usize)],
    ) -> Result<(), RedisError> {
        for chunk in sessions.chunks(RESYNC_CHUNK) {
            let channels: Vec<String> = chunk
                .iter()
                .map(|(session, _)| group_channel(&self.keys.prefix, session))
                .collect();
            within(c.conn.subscribe(&channels)).await?;
            let mut pipe = redis::pipe();
            for (session, count) in chunk {
                let key = self.keys.places(session);
                if *count == 0 {
                    pipe.cmd("HDEL").arg(key).arg(&self.keys.instance).ignore();
                } else {
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(&self.keys.instance)
                        .arg(*count)
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&key)
                        .arg(PLACES_EXPIRY_SECS)
                        .ignore();
                }
            }
            pipe.query_async::<()>(&mut c.conn).await?;
        }
        info!(
            sessions = sessions.len(),
            "backplane: sessions subscribed again and places restated"
        );
        Ok(())
    }

    /// One pipeline for `run` (no subscriptions in it), each op answered from its own reply.
    async fn pipeline(&self, c: &mut Connected, run: Vec<Op>) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let (instance, max) = (&self.keys.instance, self.settings.max_members_per_session);
        for op in &run {
            match op {
                Op::Publish { session, bytes } => {
                    pipe.cmd("PUBLISH")
                        .arg(group_channel(&self.keys.prefix, session))
                        .arg(bytes.as_slice());
                }
                Op::PublishStart { bytes, .. } => {
                    pipe.cmd("PUBLISH")
                        .arg(self.keys.start())
                        .arg(bytes.as_slice());
                }
                Op::Reserve { session, .. } => {
                    pipe.cmd("EVALSHA")
                        .arg(&c.reserve_sha)
                        .arg(1)
                        .arg(self.keys.places(session))
                        .arg(instance)
                        .arg(max)
                        .arg(self.keys.lease_prefix())
                        .arg(PLACES_EXPIRY_SECS);
                }
                Op::Release(session) => {
                    pipe.cmd("EVALSHA")
                        .arg(&c.release_sha)
                        .arg(1)
                        .arg(self.keys.places(session))
                        .arg(instance);
                }
                // Never here: `execute` carries these out itself.
                Op::Resync(_) => {
                    pipe.cmd("PING");
                }
                Op::StoreToken { token, .. } => {
                    pipe.cmd("SET")
                        .arg(self.keys.token(token))
                        .arg(1)
                        .arg("PX")
                        .arg(self.settings.token_lifetime.as_millis() as u64)
                        .arg("NX");
                }
                Op::TakeToken { token, .. } => {
                    pipe.cmd("GETDEL").arg(self.keys.token(token));
                }
                // Never here (`execute` sends them as commands of their own); a PING would
                // keep the replies aligned if one were.
                Op::Subscribe(_) | Op::Unsubscribe(_) => {
                    pipe.cmd("PING");
                }
            }
        }
        let replies: Vec<redis::RedisResult<Value>> = match pipe.query_async(&mut c.conn).await {
            Ok(replies) => replies,
            Err(e) => {
                for op in run {
                    self.refuse(op).await;
                }
                return Err(e);
            }
        };
        for (op, reply) in run.into_iter().zip(replies) {
            self.answer(op, reply).await;
        }
        Ok(())
    }

    /// Hand `op`'s reply to whoever waits for it.
    async fn answer(&self, op: Op, reply: redis::RedisResult<Value>) {
        match op {
            Op::Publish { session, .. } | Op::PublishStart { session, .. } => match reply {
                Ok(_) => {
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    debug!(%session, error = %e, "backplane publish failed");
                }
            },
            Op::Reserve { member, session } => {
                let result = match reply {
                    Ok(Value::Int(n)) if n > 0 => Ok(()),
                    Ok(Value::Int(_)) => Err(RequestError::SessionFull(
                        self.settings.max_members_per_session,
                    )),
                    Ok(other) => {
                        warn!(%session, reply = ?other, "backplane: unexpected reply to a reservation");
                        Err(RequestError::BackplaneUnavailable)
                    }
                    Err(e) => {
                        warn!(%session, error = %e, "backplane: reservation failed");
                        Err(RequestError::BackplaneUnavailable)
                    }
                };
                let _ = self
                    .events
                    .send(Event::Reserved {
                        member,
                        session,
                        result,
                    })
                    .await;
            }
            Op::Release(session) => {
                if let Err(e) = reply {
                    warn!(%session, error = %e, "backplane: could not update the session's places");
                }
            }
            Op::StoreToken { reply: tx, .. } => {
                let _ = tx.send(matches!(reply, Ok(Value::Okay)));
            }
            Op::TakeToken { reply: tx, .. } => {
                let _ = tx.send(match reply {
                    Ok(Value::Nil) => Some(false),
                    Ok(_) => Some(true),
                    Err(_) => None,
                });
            }
            Op::Subscribe(_) | Op::Unsubscribe(_) | Op::Resync(_) => {}
        }
    }

    /// Redis cannot be asked: answer `op` so nothing waits for it.
    async fn refuse(&self, op: Op) {
        match op {
            Op::Reserve { member, session } => {
                let _ = self
                    .events
                    .send(Event::Reserved {
                        member,
                        session,
                        result: Err(RequestError::BackplaneUnavailable),
                    })
                    .await;
            }
            Op::Publish { .. } | Op::PublishStart { .. } => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Op::StoreToken { reply, .. } => {
                let _ = reply.send(false);
            }
            Op::TakeToken { reply, .. } => {
                let _ = reply.send(None);
            }
            Op::Subscribe(_) | Op::Unsubscribe(_) | Op::Release(_) | Op::Resync(_) => {}
        }
    }
}

/// What Redis publishes on this instance's subscriptions, taken as the connection's driver
/// reads it (the redis crate calls [`AsyncPushSender::send`] from its driver task, which must
/// not block): decoded within the message budget, this instance's own messages dropped, the
/// rest queued for the hub without waiting. A full queue drops the message and counts it.
struct Deliveries {
    prefix: String,
    instance: String,
    start_channel: String,
    max_bytes: usize,
    events: mpsc::Sender<Event>,
    counters: Arc<BackplaneCounters>,
    lost: Arc<Notify>,
}

impl Deliveries {
    /// One push from Redis: what, if anything, goes to the hub.
    fn event(&self, info: PushInfo) -> Option<Event> {
        if info.kind == PushKind::Disconnection {
            // The driver has lost the connection; the task reconnects.
            self.lost.notify_one();
            return None;
        }
        // Subscription confirmations and other pushes carry nothing for the hub.
        let msg = Msg::from_push_info(info)?;
        if msg.get_channel_name() == self.start_channel {
            return match StartMessage::decode(msg.get_payload_bytes()) {
                Some((session, message)) => Some(Event::Start { session, message }),
                None => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
        }
        let session = session_of_channel(&self.prefix, msg.get_channel_name())?;
        match Envelope::decode(msg.get_payload_bytes(), self.max_bytes) {
            // This instance's own message, back from Redis: the hub would drop it too.
            Ok(envelope) if envelope.is_from(&self.instance) => None,
            Ok(envelope) => Some(Event::Message { session, envelope }),
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                debug!(%session, error = %e, "backplane message dropped");
                None
            }
        }
    }
}

impl AsyncPushSender for Deliveries {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if let Some(event) = self.event(info) {
            let message = matches!(event, Event::Message { .. });
            match self.events.try_send(event) {
                Ok(()) if message => {
                    self.counters.received.fetch_add(1, Ordering::Relaxed);
                }
                Ok(()) => {}
                Err(e) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, mpsc::error::TrySendError::Full(_)) {
                        debug!("backplane message dropped: the hub's queue is full");
                    }
                }
            }
        }
        // The driver ignores the result; what the queue could not take is counted above.
        Ok(())
    }
}

/// When the task writes to Redis (`[backplane] write_interval`): at once after a quiet spell,
/// else once the interval since the last write has passed. While messages keep coming they
/// then leave in one pipeline per interval, which Redis reads at once and whose deliveries it
/// writes to each subscribed instance together: at 1 000 messages a second and 2 ms (which
/// tokio's timer rounds up to the next millisecond tick), one read and one write a side per
/// two or three messages instead of per message. A full pipeline ([`MAX_BATCH`]) is followed
/// at once: more is waiting.
#[derive(Debug)]
struct Pacing {
    interval: Duration,
    /// When the last pipeline that was not full went.
    last: Option<Instant>,
}

impl Pacing {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// A command came `now` and none waits: write at once (`None`), or wait until the instant
    /// returned for what else comes.
    fn hold_until(&self, now: Instant) -> Option<Instant> {
        let due = self.last? + self.interval;
        (due > now).then_some(due)
    }

    /// A pipeline of `len` commands is written `at`.
    fn wrote(&mut self, at: Instant, len: usize) {
        self.last = (len < MAX_BATCH).then_some(at);
    }
}

fn closed_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "the connection closed",
    ))
}

/// A subscription command, bounded by [`RESPONSE_TIMEOUT`].
async fn within(
    f: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> Result<(), RedisError> {
    tokio::time::timeout(RESPONSE_TIMEOUT, f)
        .await
        .map_err(|_| timeout_error())?
}

fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::FutureExt;

    use super::*;

    fn deliveries(queue: usize) -> (Deliveries, mpsc::Receiver<Event>) {
        let (events, rx) = mpsc::channel(queue);
        let d = Deliveries {
            prefix: "Hub".into(),
            instance: "me".into(),
            start_channel: "Hub:snaprtcd:start".into(),
            max_bytes: 1024,
            events,
            counters: Arc::default(),
            lost: Arc::new(Notify::new()),
        };
        (d, rx)
    }

    fn push(kind: PushKind, data: &[&[u8]]) -> PushInfo {
        PushInfo {
            kind,
            data: data.iter().map(|d| Value::BulkString(d.to_vec())).collect(),
        }
    }

    fn message(from: &str) -> PushInfo {
        let envelope = Envelope::json(vec![format!("{from}.1")], Bytes::from_static(b"{}\x1e"));
        let bytes = envelope.encode().expect("encodes");
        push(PushKind::Message, &[b"Hub:group:s1", &bytes])
    }

    fn counts(d: &Deliveries) -> (u64, u64) {
        (
            d.counters.received.load(Ordering::Relaxed),
            d.counters.dropped.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn a_write_after_a_quiet_spell_goes_at_once_and_one_soon_after_another_waits() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut pacing = Pacing::new(ms(2));
        assert_eq!(pacing.hold_until(t0), None, "the first write goes at once");
        pacing.wrote(t0, 1);
        assert_eq!(pacing.hold_until(t0 + ms(1)), Some(t0 + ms(2)));
        assert_eq!(
            pacing.hold_until(t0 + ms(2)),
            None,
            "the interval has passed"
        );
        assert_eq!(pacing.hold_until(t0 + ms(30)), None);
        pacing.wrote(t0 + ms(30), MAX_BATCH);
        assert_eq!(
            pacing.hold_until(t0 + ms(30)),
            None,
            "after a full pipeline, more is waiting: no pause"
        );
        let mut at_once = Pacing::new(Duration::ZERO);
        at_once.wrote(t0, 1);
        assert_eq!(at_once.hold_until(t0), None, "0ms never waits");
    }

    #[test]
    fn another_instances_message_goes_to_the_hub_and_our_own_echo_does_not() {
        let (d, mut rx) = deliveries(8);
        d.send(message("me")).expect("never an error");
        assert!(
            rx.try_recv().is_err(),
            "our own message came back to the hub"
        );
        d.send(message("other")).expect("never an error");
        match rx.try_recv() {
            Ok(Event::Message { session, envelope }) => {
                assert_eq!(session.to_string(), "s1");
                assert!(envelope.is_from("other"));
            }
            other => panic!("expected a message, got {other:?}"),
        }
        assert_eq!(counts(&d), (1, 0));
    }

    #[test]
    fn a_full_hub_queue_drops_and_counts_instead_of_growing() {
        let (d, mut rx) = deliveries(2);
        for _ in 0..10 {
            d.send(message("other")).expect("never an error");
        }
        assert_eq!(counts(&d), (2, 8));
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn junk_and_other_channels_are_not_handed_on() {
        let (d, mut rx) = deliveries(8);
        d.send(push(PushKind::Message, &[b"Hub:group:s1", b"\xc1junk"]))
            .expect("never an error");
        d.send(push(PushKind::Message, &[b"Other:group:s1", b"x"]))
            .expect("never an error");
        d.send(push(PushKind::Message, &[b"Hub:snaprtcd:start", b"x"]))
            .expect("never an error");
        d.send(push(PushKind::Subscribe, &[b"Hub:group:s1"]))
            .expect("never an error");
        d.send(push(PushKind::Message, &[b"Hub:group:s1"]))
            .expect("never an error");
        assert!(rx.try_recv().is_err());
        // The junk envelope and the unreadable start message are counted.
        assert_eq!(counts(&d), (0, 2));
    }

    #[test]
    fn a_lost_connection_wakes_the_task() {
        let (d, _rx) = deliveries(8);
        let lost = d.lost.clone();
        assert!(lost.notified().now_or_never().is_none());
        d.send(PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        })
        .expect("never an error");
        assert!(lost.notified().now_or_never().is_some());
    }
}
