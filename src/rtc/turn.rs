//! One TURN allocation shared by every viewer: relayed candidates for peers that no host or
//! server-reflexive candidate reaches (symmetric NATs, UDP blocked).
//!
//! A pure core in the project's vocabulary (`handle_*(…, now)`, `poll_output`,
//! `poll_timeout`); no sockets, no tokio, no clock. The protocol work (ALLOCATE with the 401
//! and 438 nonce retries, REFRESH before expiry, CREATE-PERMISSION and CHANNEL-BIND and their
//! refreshes, ChannelData and Send/Data indications) is `turn-client-proto`'s sans-IO client;
//! this module owns one such client at a time and adds what the daemon needs around it:
//!
//! - a state for `/health` and metrics ([`AllocationState`]), with the server's error code
//!   and reason when an allocation is refused (`failed: 401 Unauthorized`);
//! - re-allocation with backoff after a failure or a lost allocation (a new client, a new
//!   relayed address), and for TCP/TLS the request to (re)connect ([`TurnOutput::Connect`]);
//! - coturn's REST credentials for `{url, secret}` servers ([`rest_credentials`]);
//! - bounds: at most [`TurnLimits::max_peers`] permissions/channels, at most
//!   [`TurnLimits::max_queued`] outputs waiting to be polled (more are dropped and counted);
//! - byte counters for what was relayed each way.
//!
//! # Datagram paths
//!
//! The owner (the engine) routes every datagram whose source is the TURN server's address
//! (UDP), or every chunk read from the TCP/TLS stream to the server, to
//! [`TurnAllocation::handle_server_bytes`] before str0m sees it. What a peer sent through the
//! relay comes out as [`TurnOutput::Received`]; the owner gives it to str0m with source =
//! the peer and destination = the relayed address. A str0m transmit whose source is the
//! relayed address goes to [`TurnAllocation::handle_send`], which wraps it (ChannelData when
//! a channel is bound, a Send indication otherwise) into a [`TurnOutput::Transmit`] for the
//! server.
//!
//! # Time
//!
//! `turn-client-proto` counts time in its own `Instant` (nanoseconds from an arbitrary zero).
//! The core maps `std::time::Instant`s onto it from the instant it was built, so callers and
//! tests use `std::time::Instant` throughout.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use turn_client_proto::api::{TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::prelude::*;
use turn_client_proto::stun::agent::Transmit as StunTransmit;
use turn_client_proto::stun::types::attribute::ErrorCode;
use turn_client_proto::stun::types::attribute::MessageIntegrity;
use turn_client_proto::stun::types::message::{Message, MessageClass, Method, TransactionId};
use turn_client_proto::stun::types::prelude::AttributeStaticType;
use turn_client_proto::stun::types::TransportType;
use turn_client_proto::tcp::TurnClientTcp;
use turn_client_proto::types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use turn_client_proto::types::TurnCredentials;
use turn_client_proto::udp::TurnClientUdp;

use super::core::{CoreTransmit, Sidecar, SidecarEvent, SidecarHealth, StreamState, Via};

type ProtoInstant = turn_client_proto::stun::Instant;

/// How the daemon reaches the TURN server (the `?transport=` of a `turn:` URL, and `turns:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnTransport {
    /// `turn:host:port?transport=udp` (the default): datagrams from the engine's one UDP socket.
    Udp,
    /// `turn:host:port?transport=tcp`: STUN/ChannelData framed on one TCP connection.
    Tcp,
    /// `turns:host:port`: the TCP framing inside TLS.
    Tls,
}

impl TurnTransport {
    /// Whether the server is reached over a stream (TCP or TLS): the shell then owns a
    /// connection and honours [`TurnOutput::Connect`].
    pub fn is_stream(self) -> bool {
        !matches!(self, TurnTransport::Udp)
    }
}

impl fmt::Display for TurnTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        })
    }
}

/// coturn's REST API credentials (`use-auth-secret`): the username is `<expiry>:<name>`
/// (expiry in Unix seconds), the password base64(HMAC-SHA1(secret, username)).
pub fn rest_credentials(secret: &str, name: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{name}");
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let password = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    (username, password)
}

/// How the daemon authenticates to one TURN server.
#[derive(Clone, PartialEq, Eq)]
pub enum TurnAuth {
    /// Long-term credentials as configured.
    LongTerm {
        /// TURN username.
        username: String,
        /// TURN password.
        credential: String,
    },
    /// coturn's `static-auth-secret`: fresh [`rest_credentials`] for every allocation.
    Secret {
        /// The shared secret (never logged, never sent).
        secret: String,
        /// The name part of the username (`<expiry>:<name>`).
        name: String,
        /// How long each generated username is valid.
        ttl: Duration,
    },
}

impl fmt::Debug for TurnAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TurnAuth::LongTerm { username, .. } => f
                .debug_struct("LongTerm")
                .field("username", username)
                .finish_non_exhaustive(),
            TurnAuth::Secret { name, ttl, .. } => f
                .debug_struct("Secret")
                .field("name", name)
                .field("ttl", ttl)
                .finish_non_exhaustive(),
        }
    }
}

/// Bounds of one allocation's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnLimits {
    /// Most remote peers (permission + channel each) at once. When the table is full and
    /// every peer in it has been idle for [`TurnLimits::peer_idle`] (no viewer uses the relay
    /// now), the allocation is made afresh without them; otherwise more are refused and
    /// counted.
    pub max_peers: usize,
    /// A peer with no traffic either way for this long is no longer in use: it may go at the
    /// next re-allocation.
    pub peer_idle: Duration,
    /// Most outputs waiting in the queue for the owner; more are dropped and counted.
    pub max_queued: usize,
    /// First wait before a new allocation after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for TurnLimits {
    fn default() -> Self {
        TurnLimits {
            max_peers: 64,
            peer_idle: Duration::from_secs(60),
            max_queued: 512,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Where the allocation stands (for `/health`, metrics and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationState {
    /// A stream transport waits for its connection to the server.
    Connecting,
    /// ALLOCATE sent; no relayed address yet.
    Allocating,
    /// Allocated: this is the relayed transport address (the relayed candidate).
    Ready(SocketAddr),
    /// The last attempt failed (the server's code and reason when it gave one); the next
    /// attempt is at the backoff deadline.
    Failed(String),
}

impl AllocationState {
    /// The metric value: 0 connecting/allocating, 1 ready, 2 failed.
    pub fn metric(&self) -> u8 {
        match self {
            AllocationState::Connecting | AllocationState::Allocating => 0,
            AllocationState::Ready(_) => 1,
            AllocationState::Failed(_) => 2,
        }
    }
}

impl fmt::Display for AllocationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocationState::Connecting => f.write_str("connecting"),
            AllocationState::Allocating => f.write_str("allocating"),
            AllocationState::Ready(addr) => write!(f, "ready {addr}"),
            AllocationState::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// What the core asks its owner to do, or tells it.
#[derive(Debug, PartialEq, Eq)]
pub enum TurnOutput {
    /// Send these bytes to the server: one datagram over UDP, or write them to the stream.
    Transmit(Vec<u8>),
    /// Open a (new) connection to the server, then call
    /// [`TurnAllocation::handle_connected`] or [`TurnAllocation::handle_disconnected`]
    /// (stream transports only). Any connection open before is to be closed first.
    Connect,
    /// A peer sent this payload through the relay: hand it to str0m with source = `peer` and
    /// destination = the relayed address.
    Received {
        /// The remote peer's address as the TURN server saw it.
        peer: SocketAddr,
        /// The payload (STUN, DTLS, SRTP…).
        data: Vec<u8>,
    },
    /// The allocation's state changed (log it; `/health` reads [`TurnAllocation::state`]).
    State(AllocationState),
}

/// Why a payload could not be relayed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TurnSendError {
    /// No allocation right now (allocating, failed, reconnecting).
    #[error("no TURN allocation")]
    NoAllocation,
    /// The peer has no permission (not announced with [`TurnAllocation::add_peer`], refused by
    /// the limit, or not yet installed).
    #[error("no TURN permission for {0}")]
    NoPermission(SocketAddr),
}

/// Counters of one allocation core (kept across re-allocations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Payload bytes received from peers through the relay.
    pub bytes_in: u64,
    /// Payload bytes sent to peers through the relay.
    pub bytes_out: u64,
    /// Allocations made (1 normally; more after losses).
    pub allocations: u64,
    /// Peers refused because [`TurnLimits::max_peers`] were installed and some were in use.
    pub peers_refused: u64,
    /// Fresh allocations made to drop idle peers' permissions (a full table, none in use).
    pub recycles: u64,
    /// Outputs dropped because the queue was full.
    pub dropped: u64,
    /// Datagrams from the server's address that were not TURN (junk, or for nobody).
    pub ignored: u64,
}

#[derive(Debug)]
enum Client {
    Udp(TurnClientUdp),
    Tcp(TurnClientTcp),
}

macro_rules! with_client {
    ($c:expr, $v:ident => $body:expr) => {
        match $c {
            Client::Udp($v) => $body,
            Client::Tcp($v) => $body,
        }
    };
}

#[derive(Debug)]
enum Phase {
    /// Waiting until the instant to start (UDP) or to ask for a connection (stream).
    Backoff(Instant),
    /// Stream: [`TurnOutput::Connect`] was emitted; waiting for the owner's answer.
    Connecting,
    /// A client exists (allocating or ready).
    Running(Box<Client>),
}

/// One TURN allocation for the whole engine. See the module doc for the data paths.
#[derive(Debug)]
pub struct TurnAllocation {
    server: SocketAddr,
    transport: TurnTransport,
    /// The engine's UDP socket address (UDP); replaced by the stream's local address.
    local: SocketAddr,
    auth: TurnAuth,
    limits: TurnLimits,
    /// `std` instant that maps onto the protocol crate's zero.
    base: Instant,
    /// Unix seconds at `base` (for REST credentials' expiry).
    unix_at_base: u64,
    phase: Phase,
    state: AllocationState,
    /// The last error response the server gave to an ALLOCATE, for the failed state.
    last_error: Option<String>,
    backoff: Duration,
    /// Transaction ids of the signed ALLOCATE requests sent by the current client: a 401 to
    /// one of them means the credentials are wrong (the first, unsigned one is the challenge).
    signed_allocates: VecDeque<TransactionId>,
    /// Transaction ids and methods of the current client's last requests on its allocation
    /// (REFRESH, CREATE_PERMISSION, CHANNEL_BIND; at most [`RECENT_REQUESTS`]): an answer
    /// saying the allocation is gone counts only when it answers one of them, so a spoofed
    /// datagram cannot make the device drop its allocation.
    recent_requests: VecDeque<(TransactionId, Method)>,
    /// The running client's next deadline, read at the end of every drive.
    wake: Option<Instant>,
    /// Stream transports: bytes of a frame not yet complete (at most one frame, < 64 KiB + 24).
    stream_buf: Vec<u8>,
    /// Remote peers wanted by viewers, with their last traffic (kept across re-allocations
    /// and re-installed).
    peers: BTreeMap<SocketAddr, Instant>,
    /// A delete of the current allocation is under way to make a fresh one (recycling).
    recycling: bool,
    out: VecDeque<TurnOutput>,
    stats: TurnStats,
}

impl TurnAllocation {
    /// A core for `server` reached over `transport`. `local` is the engine's UDP socket
    /// address (only used for UDP). `unix_now` is the wall clock at `now` in Unix seconds
    /// (for REST credentials). The first attempt starts at `now`.
    pub fn new(
        server: SocketAddr,
        transport: TurnTransport,
        local: SocketAddr,
        auth: TurnAuth,
        limits: TurnLimits,
        unix_now: u64,
        now: Instant,
    ) -> Self {
        let limits = TurnLimits {
            max_peers: limits.max_peers.max(1),
            peer_idle: limits.peer_idle,
            max_queued: limits.max_queued.max(8),
            min_backoff: limits.min_backoff.max(Duration::from_millis(10)),
            max_backoff: limits.max_backoff.max(limits.min_backoff),
        };
        TurnAllocation {
            server,
            transport,
            local,
            auth,
            limits,
            base: now,
            unix_at_base: unix_now,
            phase: Phase::Backoff(now),
            state: if transport.is_stream() {
                AllocationState::Connecting
            } else {
                AllocationState::Allocating
            },
            last_error: None,
            backoff: limits.min_backoff,
            wake: None,
            signed_allocates: VecDeque::new(),
            recent_requests: VecDeque::new(),
            stream_buf: Vec::new(),
            peers: BTreeMap::new(),
            recycling: false,
            out: VecDeque::new(),
            stats: TurnStats::default(),
        }
    }

    /// The TURN server's address: the engine routes datagrams from it here.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// How the server is reached.
    pub fn transport(&self) -> TurnTransport {
        self.transport
    }

    /// Where the allocation stands.
    pub fn state(&self) -> &AllocationState {
        &self.state
    }

    /// The relayed address when allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            AllocationState::Ready(a) => Some(a),
            _ => None,
        }
    }

    /// Counters.
    pub fn stats(&self) -> TurnStats {
        self.stats
    }

    /// How many peers are installed (or wanted).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    fn proto(&self, now: Instant) -> ProtoInstant {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        ProtoInstant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    fn std_instant(&self, t: ProtoInstant) -> Instant {
        let nanos = u64::try_from(t.as_nanos()).unwrap_or(0);
        self.base + Duration::from_nanos(nanos)
    }

    fn push(&mut self, o: TurnOutput) {
        if self.out.len() >= self.limits.max_queued {
            self.stats.dropped += 1;
            return;
        }
        self.out.push_back(o);
    }

    fn set_state(&mut self, s: AllocationState) {
        if self.state != s {
            self.state = s.clone();
            // State changes are few and matter: never dropped for a full queue.
            self.out.push_back(TurnOutput::State(s));
        }
    }

    fn credentials(&self, now: Instant) -> TurnCredentials {
        match &self.auth {
            TurnAuth::LongTerm {
                username,
                credential,
            } => TurnCredentials::new(username, credential),
            TurnAuth::Secret { secret, name, ttl } => {
                let unix = self.unix_at_base + now.saturating_duration_since(self.base).as_secs();
                let (u, p) = rest_credentials(secret, name, unix + ttl.as_secs());
                TurnCredentials::new(&u, &p)
            }
        }
    }

    /// Start a client on `local` (the UDP socket or the stream's local address).
    fn start_client(&mut self, now: Instant) {
        let config = TurnConfig::new(self.credentials(now));
        let client = match self.transport {
            TurnTransport::Udp => {
                Client::Udp(TurnClientUdp::allocate(self.local, self.server, config))
            }
            TurnTransport::Tcp | TurnTransport::Tls => {
                Client::Tcp(TurnClientTcp::allocate(self.local, self.server, config))
            }
        };
        self.last_error = None;
        self.signed_allocates.clear();
        self.recent_requests.clear();
        self.stream_buf.clear();
        self.phase = Phase::Running(Box::new(client));
        self.set_state(AllocationState::Allocating);
        self.drive(now);
    }

    /// Give up on the current client and try again after the backoff.
    fn fail(&mut self, why: String, now: Instant) {
        let wait = self.backoff;
        self.recycling = false;
        self.backoff = (self.backoff * 2).min(self.limits.max_backoff);
        self.phase = Phase::Backoff(now + wait);
        self.set_state(AllocationState::Failed(why));
    }

    /// A datagram from the server (UDP) or bytes read from the server stream (TCP/TLS).
    /// Junk is counted and dropped; it never changes the state. On a stream, bytes that are
    /// neither a STUN message nor ChannelData break the framing: the connection is given up
    /// (and made again after the backoff) rather than buffered without end.
    pub fn handle_server_bytes(&mut self, bytes: &[u8], now: Instant) {
        if !self.transport.is_stream() {
            self.handle_frame(bytes, now);
            return;
        }
        if !matches!(self.phase, Phase::Running(_)) {
            self.stats.ignored += 1;
            return;
        }
        self.stream_buf.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            match frame_len(&self.stream_buf[at..]) {
                Frame::Partial => break,
                Frame::Junk => {
                    self.stats.ignored += 1;
                    self.stream_buf.clear();
                    self.fail("the server's stream is not TURN framing".to_owned(), now);
                    return;
                }
                Frame::Complete { len, padded } => {
                    let frame = self.stream_buf[at..at + len].to_vec();
                    at += padded;
                    self.handle_frame(&frame, now);
                    if !matches!(self.phase, Phase::Running(_)) {
                        self.stream_buf.clear();
                        return;
                    }
                }
            }
        }
        self.stream_buf.drain(..at);
    }

    /// One whole datagram or stream frame.
    fn handle_frame(&mut self, bytes: &[u8], now: Instant) {
        let pnow = self.proto(now);
        let (from, to) = (self.server, self.local);
        let transport = match self.transport {
            TurnTransport::Udp => TransportType::Udp,
            _ => TransportType::Tcp,
        };
        let allocated = self.relayed().is_some();
        let Phase::Running(client) = &mut self.phase else {
            self.stats.ignored += 1;
            return;
        };
        // Remember the server's reason when it refuses an ALLOCATE (a datagram; over TCP the
        // whole response usually arrives in one read, and when it does not only the reason in
        // the log is lost, never the failure).
        let mut wrong_credentials = false;
        let mut lost = None;
        if let Ok(msg) = Message::from_bytes(bytes) {
            if msg.has_class(MessageClass::Error) {
                if let Ok(code) = msg.attribute::<ErrorCode>() {
                    self.last_error = Some(format!("{} {}", code.code(), code.reason()));
                    // The client would wait for its transaction to time out (some 40 s);
                    // a 401 to our signed ALLOCATE is a final answer.
                    wrong_credentials = code.code() == ErrorCode::UNAUTHORIZED
                        && self.signed_allocates.contains(&msg.transaction_id());
                    let txid = msg.transaction_id();
                    let method = self
                        .recent_requests
                        .iter()
                        .find(|(t, _)| *t == txid)
                        .map(|(_, m)| *m);
                    if let Some(method) = method.filter(|m| allocation_gone(*m, code.code())) {
                        lost = Some(format!(
                            "allocation lost: the server answered {} {} to {}",
                            code.code(),
                            code.reason(),
                            method_name(method)
                        ));
                    }
                }
            }
        }
        if wrong_credentials {
            let why = self.last_error.take().unwrap_or_default();
            self.fail(format!("{why} (wrong username or credential?)"), now);
            return;
        }
        if let Some(why) = lost.filter(|_| allocated) {
            // The server forgot the allocation (restarted, or closed it: coturn closes one
            // whose relayed send failed) while the client would go on refreshing a ghost until
            // its REFRESH fails, minutes later. Allocate afresh now; the peers stay wanted
            // and are installed on the new one.
            self.last_error = None;
            self.fail(why, now);
            return;
        }
        let mut received: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let ignored = with_client!(client.as_mut(), c => {
            let ret = c.recv(StunTransmit::new(bytes, transport, from, to), pnow);
            let ignored = match ret {
                TurnRecvRet::Handled | TurnRecvRet::PeerIcmp { .. } => false,
                TurnRecvRet::Ignored(_) => true,
                TurnRecvRet::PeerData(d) => {
                    received.push((d.peer, d.data().to_vec()));
                    false
                }
            };
            while let Some(d) = c.poll_recv(pnow) {
                received.push((d.peer, d.data().to_vec()));
            }
            ignored
        });
        if ignored {
            self.stats.ignored += 1;
        }
        for (peer, data) in received {
            self.stats.bytes_in += data.len() as u64;
            if let Some(last) = self.peers.get_mut(&peer) {
                *last = now;
            }
            self.push(TurnOutput::Received { peer, data });
        }
        self.drive(now);
    }

    /// Relay `payload` (a str0m transmit whose source is the relayed address) to `peer`.
    pub fn handle_send(
        &mut self,
        peer: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), TurnSendError> {
        let pnow = self.proto(now);
        if self.relayed().is_none() {
            return Err(TurnSendError::NoAllocation);
        }
        let Phase::Running(client) = &mut self.phase else {
            return Err(TurnSendError::NoAllocation);
        };
        let built = with_client!(client.as_mut(), c => {
            c.send_to(TransportType::Udp, peer, payload, pnow)
        });
        match built {
            Ok(Some(t)) => {
                self.stats.bytes_out += payload.len() as u64;
                if let Some(last) = self.peers.get_mut(&peer) {
                    *last = now;
                }
                let mut bytes = t.build().data;
                // Over a stream, ChannelData is padded to a multiple of 4 (RFC 8656 §12.5);
                // the crate leaves that to the caller.
                if self.transport.is_stream() && matches!(bytes.first(), Some(0x40..=0x7f)) {
                    bytes.resize(bytes.len().next_multiple_of(4), 0);
                }
                self.push(TurnOutput::Transmit(bytes));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(turn_client_proto::api::SendError::NoAllocation) => {
                Err(TurnSendError::NoAllocation)
            }
            Err(_) => Err(TurnSendError::NoPermission(peer)),
        }
    }

    /// A viewer's remote candidate: install a permission for its IP and bind a channel to it
    /// (now if allocated, else as soon as the allocation is ready). Returns `false` when the
    /// peer limit refuses it.
    ///
    /// Permissions and channels live as long as the allocation (the client refreshes them),
    /// so a long-running device would fill the table with peers of viewers long gone. When it
    /// is full and every peer has been idle for [`TurnLimits::peer_idle`], no viewer uses the
    /// relay now: the allocation is deleted and made afresh (a new relayed candidate) with
    /// only this peer. While some peer is in use, a new one is refused.
    pub fn add_peer(&mut self, peer: SocketAddr, now: Instant) -> bool {
        if self.peers.contains_key(&peer) {
            return true;
        }
        if self.peers.len() >= self.limits.max_peers {
            let idle =
                |last: &Instant| now.saturating_duration_since(*last) >= self.limits.peer_idle;
            if self.recycling || !self.peers.values().all(idle) || !self.recycle(now) {
                self.stats.peers_refused += 1;
                return false;
            }
        }
        self.peers.insert(peer, now);
        if self.relayed().is_some() && !self.recycling {
            self.install(&[peer], now);
            self.drive(now);
        }
        true
    }

    /// Delete the current allocation (its permissions and channels with it) and forget every
    /// peer; a fresh allocation follows when the delete is done ([`Self::drive`]). `false`
    /// when there is no allocation to delete.
    fn recycle(&mut self, now: Instant) -> bool {
        if self.relayed().is_none() {
            return false;
        }
        let pnow = self.proto(now);
        let Phase::Running(client) = &mut self.phase else {
            return false;
        };
        if with_client!(client.as_mut(), c => c.delete(pnow)).is_err() {
            return false;
        }
        tracing::debug!(server = %self.server, peers = self.peers.len(), "TURN peer table full of idle peers: making a fresh allocation");
        self.peers.clear();
        self.recycling = true;
        self.stats.recycles += 1;
        self.drive(now);
        true
    }

    /// Install `new` (peers of [`Self::peers`] not installed on this allocation yet): one
    /// permission per IP address (a viewer's candidates often share one; asking again while
    /// the first request is pending is an error the client logs), a channel per peer.
    fn install(&mut self, new: &[SocketAddr], now: Instant) {
        let pnow = self.proto(now);
        let mut asked: BTreeSet<IpAddr> = self
            .peers
            .keys()
            .filter(|p| !new.contains(p))
            .map(|p| p.ip())
            .collect();
        let Phase::Running(client) = &mut self.phase else {
            return;
        };
        with_client!(client.as_mut(), c => {
            for peer in new {
                if asked.insert(peer.ip()) && !c.have_permission(TransportType::Udp, peer.ip()) {
                    let _ = c.create_permission(TransportType::Udp, peer.ip(), pnow);
                }
                // A channel makes every relayed packet 4 bytes instead of 36; failure to bind
                // one (the server's channel numbers, a pending bind) leaves Send indications
                // working.
                let _ = c.bind_channel(TransportType::Udp, *peer, pnow);
            }
        });
    }

    /// The stream transport's connection is up, from `local` (its local address).
    pub fn handle_connected(&mut self, local: SocketAddr, now: Instant) {
        if !self.transport.is_stream() || !matches!(self.phase, Phase::Connecting) {
            return;
        }
        self.local = local;
        self.start_client(now);
    }

    /// The stream transport's connection failed or closed (`why` for the state).
    pub fn handle_disconnected(&mut self, why: &str, now: Instant) {
        if !self.transport.is_stream() {
            return;
        }
        if matches!(self.phase, Phase::Backoff(_)) {
            return;
        }
        self.fail(format!("connection: {why}"), now);
    }

    /// Timers: retransmissions, refreshes, the next attempt after a failure.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Backoff(at) = self.phase {
            if now >= at {
                if self.transport.is_stream() {
                    self.phase = Phase::Connecting;
                    self.set_state(AllocationState::Connecting);
                    self.push(TurnOutput::Connect);
                } else {
                    self.start_client(now);
                }
            }
            return;
        }
        self.drive(now);
    }

    /// When to call [`TurnAllocation::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Backoff(at) => Some(*at),
            Phase::Connecting => None,
            // The deadline the client gave at the end of the last drive.
            Phase::Running(_) => self.wake,
        }
    }

    /// Next output, if any. Drain after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<TurnOutput> {
        self.out.pop_front()
    }

    /// Move the client forward at `now`: its transmits, events and closing.
    fn drive(&mut self, now: Instant) {
        let pnow = self.proto(now);
        let mut closed = false;
        let mut events = Vec::new();
        let mut transmits = Vec::new();
        let mut wake = None;
        if let Phase::Running(client) = &mut self.phase {
            with_client!(client.as_mut(), c => {
                // Bounded: the client's own queues are bounded by its requests in flight.
                for _ in 0..1024 {
                    let mut progress = false;
                    match c.poll(pnow) {
                        TurnPollRet::Closed => closed = true,
                        TurnPollRet::AllocateTcpSocket { .. } | TurnPollRet::TcpClose { .. } => {
                            progress = true
                        }
                        TurnPollRet::WaitUntil(t) => wake = Some(t),
                    }
                    while let Some(t) = c.poll_transmit(pnow) {
                        transmits.push(t.data.to_vec());
                        progress = true;
                    }
                    while let Some(e) = c.poll_event() {
                        events.push(e);
                        progress = true;
                    }
                    if !progress || closed {
                        break;
                    }
                }
            });
        }
        self.wake = wake.map(|t| self.std_instant(t).max(now));
        for t in transmits {
            if let Ok(msg) = Message::from_bytes(&t) {
                if msg.has_method(ALLOCATE)
                    && msg.has_class(MessageClass::Request)
                    && msg.has_attribute(MessageIntegrity::TYPE)
                {
                    if self.signed_allocates.len() >= 8 {
                        self.signed_allocates.pop_front();
                    }
                    self.signed_allocates.push_back(msg.transaction_id());
                }
                let method = msg.method();
                if msg.has_class(MessageClass::Request)
                    && [REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method)
                {
                    if self.recent_requests.len() >= RECENT_REQUESTS {
                        self.recent_requests.pop_front();
                    }
                    self.recent_requests
                        .push_back((msg.transaction_id(), method));
                }
            }
            self.push(TurnOutput::Transmit(t));
        }
        let mut ready = None;
        let mut failed = false;
        for e in events {
            match e {
                TurnEvent::AllocationCreated(TransportType::Udp, relayed) => ready = Some(relayed),
                TurnEvent::AllocationCreateFailed(_) => failed = true,
                _ => {}
            }
        }
        if let Some(relayed) = ready {
            self.stats.allocations += 1;
            self.backoff = self.limits.min_backoff;
            self.set_state(AllocationState::Ready(relayed));
            let peers: Vec<SocketAddr> = self.peers.keys().copied().collect();
            self.install(&peers, now);
            // The installs queued requests: send them now.
            if !self.peers.is_empty() {
                self.drive(now);
            }
            return;
        }
        if closed && self.recycling {
            // The delete is done: allocate afresh now (a stream reconnects: one allocation
            // per connection).
            self.recycling = false;
            self.phase = Phase::Backoff(now);
            self.handle_timeout(now);
            return;
        }
        if failed || closed {
            let why = match (&self.state, self.last_error.take()) {
                (AllocationState::Ready(_), _) => "allocation lost (refresh failed)".to_owned(),
                (_, Some(e)) => e,
                (_, None) => "no answer from the server".to_owned(),
            };
            self.fail(why, now);
        }
    }
}

/// How many of the client's requests on its allocation are remembered (by transaction id) to
/// recognise an answer that says the allocation is gone: more than the requests one viewer's
/// candidates make at once, and retransmissions reuse their ids.
const RECENT_REQUESTS: usize = 64;

/// Whether an error `code` answering a `method` request on an allocation means the server has
/// no allocation for this client any more: 437 Allocation Mismatch to anything (RFC 8656), and
/// 400 to CREATE_PERMISSION, which coturn answers when it has no allocation for the 5-tuple (it
/// sends 400 for CHANNEL_BIND then too, but there 400 also means a channel number clash, so
/// CHANNEL_BIND alone does not decide).
fn allocation_gone(method: Method, code: u16) -> bool {
    code == ErrorCode::ALLOCATION_MISMATCH
        || (code == ErrorCode::BAD_REQUEST && method == CREATE_PERMISSION)
}

fn method_name(method: Method) -> &'static str {
    if method == REFRESH {
        "REFRESH"
    } else if method == CREATE_PERMISSION {
        "CREATE_PERMISSION"
    } else if method == CHANNEL_BIND {
        "CHANNEL_BIND"
    } else {
        "a request"
    }
}

/// What `/health` and `/metrics` show of the TURN allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnStatus {
    /// The configured URL (never the credential).
    pub url: String,
    /// `allocating`, `ready <relayed addr>`, `failed: <why>`…
    pub state: String,
    /// 0 connecting/allocating, 1 ready, 2 failed (`snaprtcd_turn_allocation_state`).
    pub state_code: u8,
    /// Payload bytes relayed from peers.
    pub bytes_in: u64,
    /// Payload bytes relayed to peers.
    pub bytes_out: u64,
    /// Peers with a permission and channel now (at most [`TurnLimits::max_peers`]).
    pub peers: usize,
    /// Fresh allocations made to drop idle peers ([`TurnStats::recycles`]).
    pub recycles: u64,
}

/// A [`TurnAllocation`] as a component beside str0m on the engine ([`Sidecar`]): its
/// server's datagrams come to it, its relayed address becomes a relayed candidate, viewers'
/// transmits from that address go through it, and what peers relay goes to the viewers.
/// A viewer's first send to a peer installs the permission and channel for it (full ICE
/// sends checks from every local candidate, so every remote candidate a viewer pairs with
/// the relayed one is installed); sends before the permission is up are dropped and str0m
/// retransmits.
pub struct TurnSidecar {
    alloc: TurnAllocation,
    url: String,
    host: String,
    transmits: VecDeque<CoreTransmit>,
    events: VecDeque<SidecarEvent>,
    /// The relayed candidate offered now.
    offered: Option<SocketAddr>,
    /// The last failure logged (each distinct reason is logged once, not every retry).
    logged_failure: Option<String>,
}

impl TurnSidecar {
    /// `url` is the configured URL (for logs and `/health`), `host` its host (the TLS name).
    pub fn new(alloc: TurnAllocation, url: String, host: String) -> Self {
        let mut s = TurnSidecar {
            alloc,
            url,
            host,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            offered: None,
            logged_failure: None,
        };
        s.pump();
        s
    }

    /// The allocation inside.
    pub fn allocation(&self) -> &TurnAllocation {
        &self.alloc
    }

    fn via(&self) -> Via {
        match self.alloc.transport() {
            TurnTransport::Udp => Via::Udp,
            t => Via::Stream {
                server: self.alloc.server(),
                tls: t == TurnTransport::Tls,
            },
        }
    }

    /// Move the allocation's outputs into the sidecar's two queues.
    fn pump(&mut self) {
        let via = self.via();
        let server = self.alloc.server();
        while let Some(o) = self.alloc.poll_output() {
            match o {
                TurnOutput::Transmit(contents) => self.transmits.push_back(CoreTransmit {
                    via,
                    destination: server,
                    contents,
                }),
                TurnOutput::Connect => {
                    if let Via::Stream { server, tls } = via {
                        self.events.push_back(SidecarEvent::Connect {
                            server,
                            tls,
                            host: self.host.clone(),
                        });
                    }
                }
                TurnOutput::Received { peer, data } => {
                    if let Some(relayed) = self.alloc.relayed() {
                        self.events.push_back(SidecarEvent::Relayed {
                            peer,
                            relayed,
                            contents: data,
                        });
                    }
                }
                TurnOutput::State(state) => self.state_changed(state),
            }
        }
    }

    fn state_changed(&mut self, state: AllocationState) {
        if let Some(old) = self.offered.take() {
            self.events
                .push_back(SidecarEvent::CandidateGone { addr: old });
        }
        match &state {
            AllocationState::Ready(relayed) => {
                self.logged_failure = None;
                tracing::info!(url = %self.url, %relayed, "TURN allocation ready: relayed candidate");
                match str0m::Candidate::relayed(*relayed, self.alloc.local, "udp") {
                    Ok(candidate) => {
                        self.offered = Some(*relayed);
                        self.events.push_back(SidecarEvent::Candidate { candidate });
                    }
                    Err(e) => tracing::warn!(%relayed, error = %e, "relayed address not usable"),
                }
            }
            AllocationState::Failed(why) => {
                if self.logged_failure.as_deref() != Some(why) {
                    tracing::warn!(url = %self.url, "TURN allocation failed: {why} (retrying with backoff)");
                    self.logged_failure = Some(why.clone());
                }
            }
            AllocationState::Allocating | AllocationState::Connecting => {
                tracing::debug!(url = %self.url, "TURN {state}");
            }
        }
    }

    /// The stream transport connected or closed.
    pub fn handle_stream(&mut self, now: Instant, state: StreamState) {
        match state {
            StreamState::Connected(local) => self.alloc.handle_connected(local, now),
            StreamState::Disconnected(why) => self.alloc.handle_disconnected(&why, now),
        }
        self.pump();
    }
}

impl Sidecar for TurnSidecar {
    fn name(&self) -> &str {
        "turn"
    }

    fn claims(&self, via: Via, source: SocketAddr) -> bool {
        source == self.alloc.server()
            && match via {
                Via::Udp => self.alloc.transport() == TurnTransport::Udp,
                Via::Stream { server, .. } => {
                    server == self.alloc.server() && self.alloc.transport().is_stream()
                }
            }
    }

    fn handle_datagram(&mut self, now: Instant, _via: Via, _source: SocketAddr, contents: &[u8]) {
        self.alloc.handle_server_bytes(contents, now);
        self.pump();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.alloc.handle_timeout(now);
        self.pump();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.alloc.poll_timeout()
    }

    fn poll_transmit(&mut self) -> Option<CoreTransmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<SidecarEvent> {
        self.events.pop_front()
    }

    fn relayed_addr(&self) -> Option<SocketAddr> {
        self.alloc.relayed()
    }

    fn send_relayed(&mut self, now: Instant, peer: SocketAddr, contents: &[u8]) -> bool {
        let ok =
            self.alloc.add_peer(peer, now) && self.alloc.handle_send(peer, contents, now).is_ok();
        self.pump();
        ok
    }

    fn handle_stream(&mut self, now: Instant, state: StreamState) {
        TurnSidecar::handle_stream(self, now, state);
    }

    fn handle_remote_candidate(&mut self, now: Instant, peer: SocketAddr) {
        // The relayed address is IPv4 (the allocation asks for IPv4): IPv6 peers cannot use it.
        if peer.is_ipv4() {
            self.alloc.add_peer(peer, now);
            self.pump();
        }
    }

    fn health(&self) -> SidecarHealth {
        let state = self.alloc.state();
        let st = self.alloc.stats();
        let text = state.to_string();
        SidecarHealth {
            kind: "turn",
            server: self.url.clone(),
            error: (state.metric() == 2).then(|| text.clone()),
            up: state.metric() == 1,
            state: text,
            candidate: self.alloc.relayed(),
            bytes_relayed: st.bytes_in + st.bytes_out,
        }
    }

    fn turn_status(&self) -> Option<TurnStatus> {
        let st = self.alloc.stats();
        Some(TurnStatus {
            url: self.url.clone(),
            state: self.alloc.state().to_string(),
            state_code: self.alloc.state().metric(),
            bytes_in: st.bytes_in,
            bytes_out: st.bytes_out,
            peers: self.alloc.peer_count(),
            recycles: st.recycles,
        })
    }
}

/// How much of a server stream's buffer is the next frame.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// Not all of it has arrived.
    Partial,
    /// `len` bytes of frame, `padded` bytes to consume (ChannelData is padded to 4 on a stream).
    Complete { len: usize, padded: usize },
    /// Neither a STUN message nor ChannelData: the framing is lost.
    Junk,
}

/// Frame a server stream: a STUN message (20-byte header with its length and the magic
/// cookie) or ChannelData (channel number 0x4000–0x7FFF, length, padding to 4).
fn frame_len(buf: &[u8]) -> Frame {
    let Some(head) = buf.get(..4) else {
        return Frame::Partial;
    };
    let body = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] >> 6 {
        0 => {
            let Some(cookie) = buf.get(4..8) else {
                return Frame::Partial;
            };
            if cookie != [0x21, 0x12, 0xa4, 0x42] || body % 4 != 0 {
                return Frame::Junk;
            }
            let len = 20 + body;
            if buf.len() < len {
                Frame::Partial
            } else {
                Frame::Complete { len, padded: len }
            }
        }
        1 => {
            let len = 4 + body;
            let padded = len.next_multiple_of(4);
            if buf.len() < padded {
                Frame::Partial
            } else {
                Frame::Complete { len, padded }
            }
        }
        _ => Frame::Junk,
    }
}

#[cfg(test)]
mod tests {
    //! The core against `turn-server-proto`'s sans-IO server, on virtual time.
    use super::*;
    use turn_client_proto::stun::types::message::{MessageWrite, MessageWriteExt, MessageWriteVec};
    use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
    use turn_server_proto::server::TurnServer;

    const CLIENT: &str = "192.0.2.10:40000";
    const SERVER: &str = "198.51.100.1:3478";
    const RELAYED: &str = "198.51.100.1:50000";
    const PEER: &str = "203.0.113.7:6000";
    const PEER2: &str = "203.0.113.8:6000";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A TURN server and a remote peer beside it; `online = false` drops everything the
    /// client sends (a server that went away).
    struct Net {
        server: TurnServer,
        stransport: TransportType,
        base: Instant,
        now: Instant,
        online: bool,
        /// What reached the peer: (from, payload).
        peer_inbox: Vec<(SocketAddr, Vec<u8>)>,
        /// Every output the client gave, in order.
        outputs: Vec<TurnOutput>,
        /// Bytes the server sent to the client, split into chunks of this size (TCP tests).
        chunk: usize,
        /// Error responses the server sent the client, by code.
        errors: BTreeMap<u16, usize>,
        /// Answer the next request of this method with this error code in the server's
        /// place (as coturn answers once it has dropped the allocation), then pass again.
        refuse_next: Option<(Method, u16)>,
    }

    impl Net {
        fn new(transport: TransportType, user: (&str, &str)) -> (Net, Instant) {
            let now = Instant::now();
            let mut server = TurnServer::new(transport, a(SERVER), "realm".into());
            server.add_user(user.0.into(), user.1.into());
            (
                Net {
                    server,
                    stransport: transport,
                    base: now,
                    now,
                    online: true,
                    peer_inbox: Vec::new(),
                    outputs: Vec::new(),
                    chunk: usize::MAX,
                    errors: BTreeMap::new(),
                    refuse_next: None,
                },
                now,
            )
        }

        fn snow(&self) -> ProtoInstant {
            ProtoInstant::from_nanos(self.now.duration_since(self.base).as_nanos() as i64)
        }

        fn client_addr(&self, c: &TurnAllocation) -> SocketAddr {
            c.local
        }

        fn deliver(&mut self, c: &mut TurnAllocation, bytes: &[u8]) {
            // …and writes it without: pad it as a compliant server (coturn) does.
            let mut bytes = bytes.to_vec();
            if self.stransport == TransportType::Tcp && matches!(bytes.first(), Some(0x40..=0x7f)) {
                bytes.resize(bytes.len().next_multiple_of(4), 0);
            }
            let bytes = bytes.as_slice();
            for chunk in bytes.chunks(self.chunk.min(bytes.len().max(1))) {
                c.handle_server_bytes(chunk, self.now);
            }
        }

        fn route(
            &mut self,
            c: &mut TurnAllocation,
            to: SocketAddr,
            from: SocketAddr,
            data: Vec<u8>,
        ) {
            if to == self.client_addr(c) {
                if let Ok(m) = Message::from_bytes(&data) {
                    if let Ok(e) = m.attribute::<ErrorCode>() {
                        *self.errors.entry(e.code()).or_default() += 1;
                    }
                }
                self.deliver(c, &data);
            } else {
                self.peer_inbox.push((from, data));
            }
        }

        /// Move everything that can move at the current time.
        fn settle(&mut self, c: &mut TurnAllocation) {
            for _ in 0..1000 {
                let mut progress = false;
                while let Some(o) = c.poll_output() {
                    progress = true;
                    match &o {
                        TurnOutput::Transmit(bytes) if self.online => {
                            // turn-server-proto reads ChannelData without the padding a
                            // stream has (RFC 8656 §12.5; coturn has it): take it off here.
                            let mut bytes = bytes.clone();
                            if self.stransport == TransportType::Tcp
                                && matches!(bytes.first(), Some(0x40..=0x7f))
                            {
                                let len = 4 + usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
                                bytes.truncate(len);
                            }
                            if let Some(err) = self.refusal(&bytes) {
                                let (to, from) = (self.client_addr(c), a(SERVER));
                                self.route(c, to, from, err);
                                self.outputs.push(o);
                                continue;
                            }
                            let from = self.client_addr(c);
                            let t = StunTransmit::new(
                                bytes.as_slice(),
                                self.stransport,
                                from,
                                a(SERVER),
                            );
                            if let Some(reply) = self.server.recv(t, self.snow()) {
                                let reply = reply.build();
                                let (to, from, data) = (reply.to, reply.from, reply.data);
                                self.route(c, to, from, data);
                            }
                        }
                        TurnOutput::Connect if self.online => {
                            let local = self.client_addr(c);
                            c.handle_connected(local, self.now);
                        }
                        TurnOutput::Connect => c.handle_disconnected("refused", self.now),
                        _ => {}
                    }
                    self.outputs.push(o);
                }
                while let TurnServerPollRet::AllocateSocket {
                    transport,
                    listen_addr,
                    client_addr,
                    allocation_transport,
                    family,
                } = self.server.poll(self.snow())
                {
                    self.server.allocated_socket(
                        transport,
                        listen_addr,
                        client_addr,
                        allocation_transport,
                        family,
                        Ok(a(RELAYED)),
                        self.snow(),
                    );
                    progress = true;
                }
                while let Some(t) = self.server.poll_transmit(self.snow()) {
                    progress = true;
                    if self.online {
                        self.route(c, t.to, t.from, t.data);
                    }
                }
                if !progress {
                    return;
                }
            }
            panic!("no quiescence");
        }

        /// The server loses every allocation (a coturn that closed it, or restarted).
        fn forget_allocations(&mut self) {
            let mut server = TurnServer::new(self.stransport, a(SERVER), "realm".into());
            server.add_user("user".into(), "pass".into());
            self.server = server;
        }

        /// The error response standing in for the server's answer to `bytes`, if refused.
        fn refusal(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
            let (method, code) = self.refuse_next?;
            let req = Message::from_bytes(bytes).ok()?;
            if !req.has_class(MessageClass::Request) || !req.has_method(method) {
                return None;
            }
            self.refuse_next = None;
            let mut resp = Message::builder_error(&req, MessageWriteVec::new());
            resp.add_attribute(&ErrorCode::builder(code).build().unwrap())
                .unwrap();
            Some(resp.finish())
        }

        /// Run timers up to `until`.
        fn advance(&mut self, c: &mut TurnAllocation, until: Instant) {
            self.settle(c);
            loop {
                let next = c.poll_timeout().unwrap_or(until).min(until).max(self.now);
                if std::env::var("TURN_DEBUG").is_ok() {
                    eprintln!(
                        "t={:?} next={:?} state={}",
                        self.now - self.base,
                        next - self.base,
                        c.state()
                    );
                }
                self.now = next;
                c.handle_timeout(self.now);
                self.settle(c);
                if self.now >= until {
                    return;
                }
            }
        }

        /// The peer sends `data` to the relayed address.
        fn peer_sends(&mut self, c: &mut TurnAllocation, data: &[u8]) {
            let t = StunTransmit::new(data, TransportType::Udp, a(PEER), a(RELAYED));
            if let Some(fwd) = self.server.recv(t, self.snow()) {
                let fwd = fwd.build();
                self.route(c, fwd.to, fwd.from, fwd.data);
            }
            self.settle(c);
        }

        fn received(&self) -> Vec<(SocketAddr, Vec<u8>)> {
            self.outputs
                .iter()
                .filter_map(|o| match o {
                    TurnOutput::Received { peer, data } => Some((*peer, data.clone())),
                    _ => None,
                })
                .collect()
        }

        fn states(&self) -> Vec<String> {
            self.outputs
                .iter()
                .filter_map(|o| match o {
                    TurnOutput::State(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect()
        }
    }

    fn client(transport: TurnTransport, password: &str, now: Instant) -> TurnAllocation {
        TurnAllocation::new(
            a(SERVER),
            transport,
            a(CLIENT),
            TurnAuth::LongTerm {
                username: "user".into(),
                credential: password.into(),
            },
            TurnLimits::default(),
            1_800_000_000,
            now,
        )
    }

    fn ready(transport: TurnTransport, t: TransportType) -> (Net, TurnAllocation) {
        let (mut net, now) = Net::new(t, ("user", "pass"));
        let mut c = client(transport, "pass", now);
        net.advance(&mut c, now + Duration::from_secs(1));
        assert_eq!(
            c.state(),
            &AllocationState::Ready(a(RELAYED)),
            "{:?}",
            net.states()
        );
        (net, c)
    }

    #[test]
    fn allocates_after_the_401_nonce_challenge() {
        let (net, c) = ready(TurnTransport::Udp, TransportType::Udp);
        assert_eq!(net.states(), ["ready 198.51.100.1:50000"]);
        // One unauthenticated ALLOCATE (answered 401 with realm and nonce), then one signed.
        let sent = net
            .outputs
            .iter()
            .filter(|o| matches!(o, TurnOutput::Transmit(_)))
            .count();
        assert_eq!(sent, 2);
        assert_eq!(c.stats().allocations, 1);
        assert_eq!(c.relayed(), Some(a(RELAYED)));
    }

    #[test]
    fn data_flows_both_ways_through_permission_and_channel() {
        let (mut net, mut c) = ready(TurnTransport::Udp, TransportType::Udp);
        // No permission yet: refused, nothing sent.
        assert_eq!(
            c.handle_send(a(PEER), b"early", net.now),
            Err(TurnSendError::NoPermission(a(PEER)))
        );
        assert!(c.add_peer(a(PEER), net.now));
        let t = net.now + Duration::from_secs(1);
        net.advance(&mut c, t);
        c.handle_send(a(PEER), b"hello peer", net.now).unwrap();
        net.settle(&mut c);
        assert_eq!(net.peer_inbox, vec![(a(RELAYED), b"hello peer".to_vec())]);
        net.peer_sends(&mut c, b"hello daemon");
        assert_eq!(net.received(), vec![(a(PEER), b"hello daemon".to_vec())]);
        assert_eq!(c.stats().bytes_out, 10);
        assert_eq!(c.stats().bytes_in, 12);
        // The channel is bound: what goes to the server is ChannelData (4-byte header).
        let before = net.outputs.len();
        c.handle_send(a(PEER), b"xyz!", net.now).unwrap();
        net.settle(&mut c);
        let Some(TurnOutput::Transmit(bytes)) = net.outputs.get(before) else {
            panic!("no transmit: {:?}", &net.outputs[before..]);
        };
        assert_eq!(bytes.len(), 8);
        assert!((0x40..0x80).contains(&bytes[0]), "channel number prefix");
    }

    #[test]
    fn a_peer_without_permission_reaches_nobody() {
        let (mut net, mut c) = ready(TurnTransport::Udp, TransportType::Udp);
        net.peer_sends(&mut c, b"who are you");
        assert!(net.received().is_empty());
    }

    #[test]
    fn refreshes_keep_the_allocation_and_channel_for_an_hour_across_stale_nonces() {
        let (mut net, mut c) = ready(TurnTransport::Udp, TransportType::Udp);
        // Nonces go stale every 100 s: every refresh meets a 438 first and retries.
        net.server
            .set_nonce_expiry_duration(Duration::from_secs(100));
        c.add_peer(a(PEER), net.now);
        let t = net.now + Duration::from_secs(3600);
        net.advance(&mut c, t);
        assert_eq!(c.state(), &AllocationState::Ready(a(RELAYED)));
        assert_eq!(net.states(), ["ready 198.51.100.1:50000"], "never lost");
        assert!(
            net.errors.get(&438).copied().unwrap_or(0) >= 1,
            "{:?}",
            net.errors
        );
        assert_eq!(c.stats().allocations, 1);
        // The permission (5 min) and channel (10 min) were refreshed too.
        c.handle_send(a(PEER), b"still here", net.now).unwrap();
        net.settle(&mut c);
        assert_eq!(
            net.peer_inbox.last(),
            Some(&(a(RELAYED), b"still here".to_vec()))
        );
        net.peer_sends(&mut c, b"me too");
        assert_eq!(net.received().last(), Some(&(a(PEER), b"me too".to_vec())));
    }

    #[test]
    fn a_wrong_password_fails_with_the_servers_reason_then_retries_with_backoff() {
        let (mut net, now) = Net::new(TransportType::Udp, ("user", "pass"));
        let mut c = client(TurnTransport::Udp, "wrong", now);
        net.advance(&mut c, now + Duration::from_millis(500));
        let AllocationState::Failed(why) = c.state() else {
            panic!("{:?}", c.state());
        };
        assert!(why.starts_with("401"), "{why}");
        assert_eq!(c.state().metric(), 2);
        assert_eq!(
            c.handle_send(a(PEER), b"x", net.now),
            Err(TurnSendError::NoAllocation)
        );
        // Retries: 1 s, then 2 s, then 4 s… (never a tight loop).
        net.advance(&mut c, now + Duration::from_secs(8));
        let attempts = net.states().iter().filter(|s| *s == "allocating").count();
        assert!((2..=4).contains(&attempts), "{:?}", net.states());
    }

    #[test]
    fn a_lost_allocation_is_made_again_when_the_server_is_back() {
        let (mut net, mut c) = ready(TurnTransport::Udp, TransportType::Udp);
        c.add_peer(a(PEER), net.now);
        net.online = false;
        let t = net.now + Duration::from_secs(4000);
        net.advance(&mut c, t);
        assert!(
            matches!(c.state(), AllocationState::Failed(_)),
            "{:?}",
            c.state()
        );
        assert!(
            net.states().iter().any(|s| s.starts_with("failed")),
            "{:?}",
            net.states()
        );
        // A new server (the old one forgot us), back online.
        net.server = TurnServer::new(TransportType::Udp, a(SERVER), "realm".into());
        net.server.add_user("user".into(), "pass".into());
        net.online = true;
        let t = net.now + Duration::from_secs(120);
        net.advance(&mut c, t);
        assert_eq!(c.state(), &AllocationState::Ready(a(RELAYED)));
        assert_eq!(c.stats().allocations, 2);
        // The peers wanted before were installed again on the new allocation.
        c.handle_send(a(PEER), b"again", net.now).unwrap();
        net.settle(&mut c);
        assert_eq!(
            net.peer_inbox.last(),
            Some(&(a(RELAYED), b"again".to_vec()))
        );
    }

    /// coturn closes an allocation whose relayed send failed (ENETUNREACH to a peer's private
    /// address) and answers the client's next requests from a fresh session: 438 (no nonce
    /// yet), then 400 to CREATE_PERMISSION. The client is re-allocated at once, not minutes
    /// later when a REFRESH fails, and the wanted peers are installed on the new allocation.
    #[test]
    fn a_400_to_create_permission_means_the_allocation_is_gone_and_it_is_made_again() {
        let (mut net, mut c) = ready(TurnTransport::Udp, TransportType::Udp);
        assert!(c.add_peer(a(PEER), net.now));
        let t = net.now + Duration::from_secs(1);
        net.advance(&mut c, t);
        net.forget_allocations();
        net.refuse_next = Some((CREATE_PERMISSION, 400));
        assert!(c.add_peer(a(PEER2), net.now));
        let t = net.now + Duration::from_millis(100);
        net.advance(&mut c, t);
        let states = net.states();
        assert!(
            states.iter().any(|s| s.starts_with(
                "failed: allocation lost: the server answered 400 Bad Request to CREATE_PERMISSION"
            )),
            "{states:?}"
        );
        let t = net.now + Duration::from_secs(2);
        net.advance(&mut c, t);
        assert_eq!(
            c.state(),
            &AllocationState::Ready(a(RELAYED)),
            "{:?}",
            net.states()
        );
        assert_eq!(c.stats().allocations, 2);
        // Both peers work on the new allocation.
        for p in [PEER, PEER2] {
            c.handle_send(a(p), b"again", net.now).unwrap();
        }
        net.settle(&mut c);
        assert_eq!(net.peer_inbox.len(), 2, "{:?}", net.peer_inbox);
    }

    #[test]
    fn a_437_to_a_refresh_means_the_allocation_is_gone() {
        let (mut net, mut c) = ready(TurnTransport::Udp, TransportType::Udp);
        net.forget_allocations();
        net.refuse_next = Some((REFRESH, 437));
        // The client refreshes its allocation well before its lifetime ends.
        let t = net.now + Duration::from_secs(3600);
        net.advance(&mut c, t);
        assert!(
            net.states()
                .iter()
                .any(|s| s.contains("437") && s.contains("REFRESH")),
            "{:?}",
            net.states()
        );
        assert_eq!(c.state(), &AllocationState::Ready(a(RELAYED)));
        assert_eq!(c.stats().allocations, 2);
    }

    /// A viewer's candidates often share an IP address: one CREATE_PERMISSION for them (a
    /// second while the first is pending is refused by the client, with an ERROR in the log),
    /// a channel each, and both reachable.
    #[test]
    fn peers_on_one_address_share_one_permission_request() {
        #[derive(Clone, Default)]
        struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let (mut net, mut c) = ready(TurnTransport::Udp, TransportType::Udp);
        let same_ip = a("203.0.113.7:6001");
        tracing::subscriber::with_default(subscriber, || {
            assert!(c.add_peer(a(PEER), net.now));
            assert!(c.add_peer(same_ip, net.now));
            let t = net.now + Duration::from_secs(1);
            net.advance(&mut c, t);
        });
        let errors = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
        assert!(errors.is_empty(), "{errors}");
        let requests = |method| {
            net.outputs
                .iter()
                .filter(|o| match o {
                    TurnOutput::Transmit(b) => Message::from_bytes(b)
                        .is_ok_and(|m| m.has_class(MessageClass::Request) && m.has_method(method)),
                    _ => false,
                })
                .count()
        };
        assert_eq!(requests(CREATE_PERMISSION), 1);
        assert_eq!(requests(CHANNEL_BIND), 2);
        for p in [a(PEER), same_ip] {
            c.handle_send(p, b"hi", net.now).unwrap();
        }
        net.settle(&mut c);
        assert_eq!(net.peer_inbox.len(), 2);
    }

    /// Only answers to the client's own requests count: a 437 or 400 with a transaction id it
    /// never sent (spoofed from the server's address) changes nothing.
    #[test]
    fn an_allocation_mismatch_for_a_request_never_sent_changes_nothing() {
        let (mut net, mut c) = ready(TurnTransport::Udp, TransportType::Udp);
        for (method, code) in [(REFRESH, 437), (CREATE_PERMISSION, 400)] {
            let req = Message::builder_request(method, MessageWriteVec::new()).finish();
            let req = Message::from_bytes(&req).unwrap();
            let mut resp = Message::builder_error(&req, MessageWriteVec::new());
            resp.add_attribute(&ErrorCode::builder(code).build().unwrap())
                .unwrap();
            c.handle_server_bytes(&resp.finish(), net.now);
            net.settle(&mut c);
        }
        assert_eq!(net.states(), ["ready 198.51.100.1:50000"]);
        assert_eq!(c.stats().allocations, 1);
    }

    #[test]
    fn junk_from_the_servers_address_is_counted_and_changes_nothing() {
        let (mut net, mut c) = ready(TurnTransport::Udp, TransportType::Udp);
        let mut seed = 7u32;
        for len in 0..600usize {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            c.handle_server_bytes(&junk, net.now);
        }
        // A STUN-shaped message and a ChannelData for an unbound channel, too.
        c.handle_server_bytes(
            &[
                0x01, 0x13, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
            net.now,
        );
        c.handle_server_bytes(&[0x4f, 0xff, 0, 4, 1, 2, 3, 4], net.now);
        net.settle(&mut c);
        assert_eq!(c.state(), &AllocationState::Ready(a(RELAYED)));
        assert!(net.received().is_empty());
        assert!(c.stats().ignored >= 590, "{:?}", c.stats());
    }

    #[test]
    fn the_peer_limit_refuses_and_counts() {
        let (mut net, now) = Net::new(TransportType::Udp, ("user", "pass"));
        let mut c = TurnAllocation::new(
            a(SERVER),
            TurnTransport::Udp,
            a(CLIENT),
            TurnAuth::LongTerm {
                username: "user".into(),
                credential: "pass".into(),
            },
            TurnLimits {
                max_peers: 2,
                ..TurnLimits::default()
            },
            0,
            now,
        );
        net.advance(&mut c, now + Duration::from_secs(1));
        assert!(c.add_peer(a("203.0.113.1:1"), net.now));
        assert!(c.add_peer(a("203.0.113.2:1"), net.now));
        assert!(c.add_peer(a("203.0.113.2:1"), net.now), "known peer");
        assert!(!c.add_peer(a("203.0.113.3:1"), net.now));
        assert_eq!(c.peer_count(), 2);
        assert_eq!(c.stats().peers_refused, 1);
    }

    /// A long-running device: viewers come and go, each with new peer addresses. A full table
    /// of idle peers is recycled (fresh allocation, only the new peer installed, counted);
    /// a full table with a peer in use refuses, as before.
    #[test]
    fn a_full_table_of_idle_peers_is_recycled_by_a_fresh_allocation() {
        let (mut net, now) = Net::new(TransportType::Udp, ("user", "pass"));
        let mut c = TurnAllocation::new(
            a(SERVER),
            TurnTransport::Udp,
            a(CLIENT),
            TurnAuth::LongTerm {
                username: "user".into(),
                credential: "pass".into(),
            },
            TurnLimits {
                max_peers: 2,
                ..TurnLimits::default()
            },
            0,
            now,
        );
        net.advance(&mut c, now + Duration::from_secs(1));
        assert!(c.add_peer(a("203.0.113.1:1"), net.now));
        assert!(c.add_peer(a(PEER), net.now));
        // The viewer behind PEER is live: traffic both ways for a while.
        for _ in 0..30 {
            let t = net.now + Duration::from_secs(5);
            net.advance(&mut c, t);
            c.handle_send(a(PEER), b"rtp", net.now).unwrap();
            net.settle(&mut c);
        }
        assert!(!c.add_peer(a("203.0.113.3:1"), net.now), "PEER is in use");
        assert_eq!(c.stats().peers_refused, 1);
        assert_eq!(c.stats().recycles, 0);
        // The viewer leaves; a minute later a new viewer's peer comes.
        let t = net.now + Duration::from_secs(61);
        net.advance(&mut c, t);
        assert!(c.add_peer(a(PEER2), net.now), "idle table recycled");
        assert_eq!(c.stats().recycles, 1);
        let t = net.now + Duration::from_secs(2);
        net.advance(&mut c, t);
        assert_eq!(c.state(), &AllocationState::Ready(a(RELAYED)));
        assert_eq!(c.stats().allocations, 2, "a fresh allocation");
        assert_eq!(c.peer_count(), 1, "only the new peer");
        // The new peer works; the old ones have no permission on the new allocation.
        c.handle_send(a(PEER2), b"new viewer", net.now).unwrap();
        assert_eq!(
            c.handle_send(a(PEER), b"gone", net.now),
            Err(TurnSendError::NoPermission(a(PEER)))
        );
        net.settle(&mut c);
        assert_eq!(
            net.peer_inbox.last(),
            Some(&(a(RELAYED), b"new viewer".to_vec()))
        );
        assert!(c.add_peer(a("203.0.113.4:1"), net.now));
        assert_eq!(c.peer_count(), 2);
    }

    #[test]
    fn over_tcp_in_small_reads() {
        let (mut net, now) = Net::new(TransportType::Tcp, ("user", "pass"));
        net.chunk = 3;
        let mut c = client(TurnTransport::Tcp, "pass", now);
        assert_eq!(c.state(), &AllocationState::Connecting);
        net.advance(&mut c, now + Duration::from_secs(1));
        assert_eq!(
            c.state(),
            &AllocationState::Ready(a(RELAYED)),
            "{:?}",
            net.states()
        );
        assert_eq!(net.states(), ["allocating", "ready 198.51.100.1:50000"]);
        c.add_peer(a(PEER), net.now);
        let t = net.now + Duration::from_secs(1);
        net.advance(&mut c, t);
        c.handle_send(a(PEER), b"over tcp", net.now).unwrap();
        net.settle(&mut c);
        assert_eq!(net.peer_inbox, vec![(a(RELAYED), b"over tcp".to_vec())]);
        net.peer_sends(&mut c, b"back over tcp");
        assert_eq!(net.received(), vec![(a(PEER), b"back over tcp".to_vec())]);
    }

    #[test]
    fn a_stream_that_cannot_connect_backs_off() {
        let (mut net, now) = Net::new(TransportType::Tcp, ("user", "pass"));
        net.online = false;
        let mut c = client(TurnTransport::Tls, "pass", now);
        net.advance(&mut c, now + Duration::from_secs(10));
        let connects = net
            .outputs
            .iter()
            .filter(|o| **o == TurnOutput::Connect)
            .count();
        // t = 0, 1, 3, 7 s.
        assert_eq!(connects, 4, "{:?}", net.outputs);
        assert_eq!(
            c.state(),
            &AllocationState::Failed("connection: refused".into())
        );
    }

    const REST_VECTOR: &str = "rjUjNxoVhnnerr7a2Eg+uzyPlMw=";

    #[test]
    fn rest_credentials_match_coturns_formula() {
        // base64(HMAC-SHA1("secret", "1700000000:cam")), computed with Python's hmac.
        let (u, p) = rest_credentials("secret", "cam", 1_700_000_000);
        assert_eq!(u, "1700000000:cam");
        assert_eq!(p, REST_VECTOR);
    }

    #[test]
    fn secret_credentials_allocate() {
        let (mut net, now) = Net::new(TransportType::Udp, ("x", "y"));
        let unix = 1_800_000_000u64;
        let (u, p) = rest_credentials("s3cret", "snaprtcd", unix + 3600);
        net.server.add_user(u, p);
        let mut c = TurnAllocation::new(
            a(SERVER),
            TurnTransport::Udp,
            a(CLIENT),
            TurnAuth::Secret {
                secret: "s3cret".into(),
                name: "snaprtcd".into(),
                ttl: Duration::from_secs(3600),
            },
            TurnLimits::default(),
            unix,
            now,
        );
        net.advance(&mut c, now + Duration::from_millis(500));
        assert_eq!(c.state(), &AllocationState::Ready(a(RELAYED)));
        assert!(!format!(
            "{:?}",
            TurnAuth::Secret {
                secret: "s3cret".into(),
                name: "n".into(),
                ttl: Duration::ZERO
            }
        )
        .contains("s3cret"));
    }

    #[test]
    fn stream_framing() {
        let stun = [0x01, 0x01, 0, 4, 0x21, 0x12, 0xa4, 0x42];
        assert_eq!(frame_len(&stun[..3]), Frame::Partial);
        assert_eq!(frame_len(&stun), Frame::Partial);
        let mut whole = stun.to_vec();
        whole.resize(24, 0);
        assert_eq!(
            frame_len(&whole),
            Frame::Complete {
                len: 24,
                padded: 24
            }
        );
        assert_eq!(frame_len(&[0x01, 0x01, 0, 4, 0, 0, 0, 0]), Frame::Junk);
        assert_eq!(
            frame_len(&[0x40, 0x00, 0, 5, 1, 2, 3, 4, 5]),
            Frame::Partial
        );
        assert_eq!(
            frame_len(&[0x40, 0x00, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0]),
            Frame::Complete { len: 9, padded: 12 }
        );
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Frame::Junk);
    }

    #[test]
    fn junk_on_the_stream_gives_up_the_connection_and_reconnects() {
        let (mut net, now) = Net::new(TransportType::Tcp, ("user", "pass"));
        let mut c = client(TurnTransport::Tcp, "pass", now);
        net.advance(&mut c, now + Duration::from_secs(1));
        assert!(c.relayed().is_some());
        c.handle_server_bytes(b"\xffHTTP/1.1 400 Bad Request\r\n", net.now);
        assert_eq!(
            c.state(),
            &AllocationState::Failed("the server's stream is not TURN framing".into())
        );
        // A new server (the old connection's allocation is gone with it).
        net.server = TurnServer::new(TransportType::Tcp, a(SERVER), "realm".into());
        net.server.add_user("user".into(), "pass".into());
        let t = net.now + Duration::from_secs(2);
        net.advance(&mut c, t);
        assert_eq!(c.state(), &AllocationState::Ready(a(RELAYED)));
        assert_eq!(c.stats().allocations, 2);
    }
}
