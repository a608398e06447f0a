//! The SnapRTC hub: sessions (SignalR groups) and the relay between their members. Pure: no
//! tokio, no sockets, no clock.
//!
//! | client calls                        | hub does                                             |
//! |-------------------------------------|------------------------------------------------------|
//! | `Sync(session, ready)`              | joins `session`; when `ready`, `signalStart` to the others; not ready, `signalStart` to it when a ready capture side waits ([`Hub::starts_on_join`]) |
//! | `SignalCapture(session, payload)`   | `signalCapture(payload)` to the others                |
//! | `SignalInitiator(session, payload)` | `signalInitiator(payload)` to the others              |
//!
//! The original server also echoes relayed messages to the sender; no SnapRTC client reacts to
//! its own echo, so this hub does not send it (unless asked to, [`Hub::echo_to_sender`], to
//! test clients against the original). Payloads are relayed byte for byte (raw JSON).
//!
//! Members are remote connections or the daemon's own capture side: both use the same member
//! API ([`Hub::join`] or [`Hub::join_local`], [`Hub::signal`]), and the hub tells the shell, through
//! [`HubOutput::CaptureWanted`], when an initiator waits in a session that has no capture side.
//! **Draining rule:** after every `handle_*` or member call, drain [`Hub::poll_output`].
//!
//! **Across instances** ([`Hub::with_backplane`]): members of one session may be connected to
//! different instances. The hub then also asks its shell to [`HubOutput::Subscribe`] to a
//! session when its first member here asks to join (before the join is answered, so nothing
//! published after the member's Completion can be missed) and to [`HubOutput::Unsubscribe`]
//! when its last one leaves, and to [`HubOutput::Publish`] every relayed message (`signalStart`,
//! `signalCapture`, `signalInitiator`) as a [`backplane`](super::backplane) envelope that
//! excludes the sender. What other instances publish comes in through [`Hub::handle_remote`]
//! and goes to this instance's members of the session. Each member has a fleet-wide
//! connection id, `{instance}.{member}`, so the hub recognises (and drops) its own messages
//! when the backplane hands them back: nothing is echoed or delivered twice. The decision to
//! join as the capture side ([`HubOutput::CaptureWanted`]) still sees local members only.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::value::RawValue;

use super::backplane::Envelope;
use super::signalr::{ServerMessage, RECORD_SEPARATOR};

/// A validated session id: 1-128 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 128;

    /// Validate a client's session id.
    pub fn parse(s: &str) -> Result<SessionId, RequestError> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(SessionId(Arc::from(s)))
        } else {
            Err(RequestError::BadSession)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A JSON value kept exactly as it arrived, so relays are byte for byte. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RawJson(Arc<RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Wrap JSON text that is known to be valid (e.g. produced by `serde_json`).
    pub fn from_string(json: String) -> Result<RawJson, serde_json::Error> {
        RawValue::from_string(json).map(|raw| RawJson(Arc::from(raw)))
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        RawJson(Arc::from(raw))
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl serde::Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// A hub method call, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// `Sync(session, ready)`: join `session`; `ready` marks the capture side.
    Sync {
        /// The session (SignalR group) to join.
        session: SessionId,
        /// True for the capture side: the others get `signalStart`.
        ready: bool,
    },
    /// `SignalCapture(session, payload)`: initiator → capture.
    SignalCapture {
        /// The session to relay in.
        session: SessionId,
        /// The simple-peer signal, a JSON string relayed byte for byte.
        payload: RawJson,
    },
    /// `SignalInitiator(session, payload)`: capture → initiator.
    SignalInitiator {
        /// The session to relay in.
        session: SessionId,
        /// The simple-peer signal, a JSON string relayed byte for byte.
        payload: RawJson,
    },
}

/// A client's call: the method and, for `invoke`, the id its Completion must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Present for `invoke` (a Completion is owed), absent for `send`.
    pub invocation_id: Option<String>,
    /// What is called, with typed arguments.
    pub method: Method,
}

/// Why a call was refused; the text goes to the client in an error Completion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No such method (the name as the client sent it).
    #[error("Unknown hub method '{0}'")]
    UnknownMethod(String),
    /// The wrong number of arguments.
    #[error("Invocation provides {given} argument(s) but target expects {expected}.")]
    ArgumentCount {
        /// Arguments sent.
        given: usize,
        /// Arguments the method takes.
        expected: usize,
    },
    /// An argument of the wrong JSON type.
    #[error("Error binding arguments: argument {index} of '{method}' must be {expected}.")]
    ArgumentType {
        /// The method called.
        method: &'static str,
        /// Which argument, from 0.
        index: usize,
        /// What it must be, in words.
        expected: &'static str,
    },
    /// A session id outside `[A-Za-z0-9_-]{1,128}`.
    #[error("Invalid session id: use 1-128 characters of A-Z, a-z, 0-9, '_' and '-'.")]
    BadSession,
    /// `signaling.max_sessions` sessions are open.
    #[error("Too many sessions on this server ({0}); try again later.")]
    TooManySessions(usize),
    /// The session has `signaling.max_members_per_session` members (on every instance, with
    /// a backplane).
    #[error("Session is full ({0} members).")]
    SessionFull(usize),
    /// With a backplane: Redis cannot be reached, so a call that needs the other instances
    /// (joining a session, or a message for members elsewhere) cannot be carried out.
    #[error("The backplane (Redis) is unavailable; try again.")]
    BackplaneUnavailable,
}

impl Request {
    /// Type the arguments of `target` (matched case-insensitively).
    pub fn parse(
        invocation_id: Option<String>,
        target: &str,
        arguments: Vec<Box<RawValue>>,
    ) -> Result<Request, RequestError> {
        let method = if target.eq_ignore_ascii_case("Sync") {
            let [session, ready] = take_args::<2>(arguments)?;
            let session = string_arg("Sync", 0, &session)?;
            let ready: bool =
                serde_json::from_str(ready.get()).map_err(|_| RequestError::ArgumentType {
                    method: "Sync",
                    index: 1,
                    expected: "a boolean",
                })?;
            Method::Sync {
                session: SessionId::parse(&session)?,
                ready,
            }
        } else if target.eq_ignore_ascii_case("SignalCapture") {
            let (session, payload) = session_and_payload("SignalCapture", arguments)?;
            Method::SignalCapture { session, payload }
        } else if target.eq_ignore_ascii_case("SignalInitiator") {
            let (session, payload) = session_and_payload("SignalInitiator", arguments)?;
            Method::SignalInitiator { session, payload }
        } else {
            return Err(RequestError::UnknownMethod(target.to_owned()));
        };
        Ok(Request {
            invocation_id,
            method,
        })
    }
}

fn take_args<const N: usize>(
    arguments: Vec<Box<RawValue>>,
) -> Result<[Box<RawValue>; N], RequestError> {
    let given = arguments.len();
    arguments
        .try_into()
        .map_err(|_| RequestError::ArgumentCount { given, expected: N })
}

fn string_arg(method: &'static str, index: usize, raw: &RawValue) -> Result<String, RequestError> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| RequestError::ArgumentType {
        method,
        index,
        expected: "a string",
    })
}

fn session_and_payload(
    method: &'static str,
    arguments: Vec<Box<RawValue>>,
) -> Result<(SessionId, RawJson), RequestError> {
    let [session, payload] = take_args::<2>(arguments)?;
    let session = SessionId::parse(&string_arg(method, 0, &session)?)?;
    // The payload must be a JSON string; it is kept raw so it is relayed byte for byte.
    if !payload.get().starts_with('"') {
        return Err(RequestError::ArgumentType {
            method,
            index: 1,
            expected: "a string",
        });
    }
    Ok((session, RawJson::from(payload)))
}

/// A hub member: a remote connection, or the daemon's own capture side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(pub u64);

/// A message for one member.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// `signalStart()`: the capture side is ready.
    SignalStart,
    /// `signalCapture(payload)`: initiator → capture.
    SignalCapture(RawJson),
    /// `signalInitiator(payload)`: capture → initiator.
    SignalInitiator(RawJson),
    /// The answer to an `invoke`.
    Completion {
        /// The `invocationId` of the call.
        invocation_id: String,
        /// Why the call failed; `None` for success.
        error: Option<String>,
    },
}

impl Outbound {
    /// The JSON hub protocol record for this message, with its `0x1E` terminator.
    pub fn to_record(&self) -> Bytes {
        match self {
            Outbound::SignalStart => ServerMessage::Invocation {
                target: "signalStart",
                arguments: Vec::new(),
            },
            Outbound::SignalCapture(payload) => ServerMessage::Invocation {
                target: "signalCapture",
                arguments: vec![payload.clone()],
            },
            Outbound::SignalInitiator(payload) => ServerMessage::Invocation {
                target: "signalInitiator",
                arguments: vec![payload.clone()],
            },
            Outbound::Completion {
                invocation_id,
                error,
            } => ServerMessage::Completion {
                invocation_id: invocation_id.clone(),
                error: error.clone(),
            },
        }
        .encode()
    }

    /// A relayed message from another instance's JSON record (`signalStart()`,
    /// `signalCapture(payload)`, `signalInitiator(payload)`; method names in any case).
    pub fn from_remote_record(record: &[u8]) -> Result<Outbound, RemoteError> {
        #[derive(serde::Deserialize)]
        struct Wire {
            #[serde(rename = "type")]
            kind: u8,
            target: String,
            #[serde(default)]
            arguments: Vec<Box<RawValue>>,
        }
        let json = record.strip_suffix(&[RECORD_SEPARATOR]).unwrap_or(record);
        let wire: Wire =
            serde_json::from_slice(json).map_err(|e| RemoteError::BadRecord(e.to_string()))?;
        if wire.kind != 1 {
            return Err(RemoteError::NotAnInvocation(wire.kind));
        }
        let payload =
            |arguments: Vec<Box<RawValue>>| match <[Box<RawValue>; 1]>::try_from(arguments) {
                Ok([payload]) if payload.get().starts_with('"') => Ok(RawJson::from(payload)),
                _ => Err(RemoteError::BadArguments(wire.target.clone())),
            };
        let target = wire.target.as_str();
        if target.eq_ignore_ascii_case("signalStart") {
            match wire.arguments.is_empty() {
                true => Ok(Outbound::SignalStart),
                false => Err(RemoteError::BadArguments(wire.target.clone())),
            }
        } else if target.eq_ignore_ascii_case("signalCapture") {
            payload(wire.arguments).map(Outbound::SignalCapture)
        } else if target.eq_ignore_ascii_case("signalInitiator") {
            payload(wire.arguments).map(Outbound::SignalInitiator)
        } else {
            Err(RemoteError::UnknownTarget(wire.target.clone()))
        }
    }
}

/// Why a message from another instance was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The envelope has no `json` serialization.
    #[error("no json serialization in the backplane message")]
    NoJson,
    /// The JSON record does not parse.
    #[error("backplane record is not a SignalR JSON message: {0}")]
    BadRecord(String),
    /// A record that is not an invocation (`type` 1).
    #[error("backplane record of type {0} is not an invocation")]
    NotAnInvocation(u8),
    /// A client method this hub never sends.
    #[error("backplane invocation of unknown client method {0:?}")]
    UnknownTarget(String),
    /// Arguments that do not fit the method.
    #[error("backplane invocation of {0} with bad arguments")]
    BadArguments(String),
}

/// What the hub asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum HubOutput {
    /// Deliver `message` to `to`.
    Deliver {
        /// The member to send to.
        to: MemberId,
        /// What to send.
        message: Outbound,
    },
    /// An initiator waits in `session` and no capture side is there: the daemon's capture
    /// member may join (only when [`HubConfig::capture_wanted`] is on).
    CaptureWanted {
        /// The session waiting for a capture side.
        session: SessionId,
    },
    /// Every remote member left `session`, so the local `member` was taken out of it too.
    LocalLeft {
        /// The local member taken out.
        member: MemberId,
        /// The session it was in (now freed).
        session: SessionId,
    },
    /// With a backplane: the first member here joined `session`; receive what other
    /// instances publish for it (and hand it to [`Hub::handle_remote`]).
    Subscribe(SessionId),
    /// With a backplane: the last member here left `session`; stop receiving it.
    Unsubscribe(SessionId),
    /// With a backplane: publish `envelope` on `session`'s group channel, in the order of
    /// these outputs (that is what keeps each sender's messages in order).
    Publish {
        /// The session (group) it is for.
        session: SessionId,
        /// The message and who must not receive it.
        envelope: Envelope,
    },
    /// With a backplane: `member` asks to join `session`. Take a place for it under the
    /// fleet-wide `max_members_per_session`, then answer with [`Hub::handle_reservation`]
    /// (always: a refusal or an unreachable Redis is an answer too).
    Reserve {
        /// Who joins.
        member: MemberId,
        /// The session it joins.
        session: SessionId,
    },
    /// With a backplane: a member here left `session` (or was granted a place it no longer
    /// wants); give one place back.
    Release(SessionId),
    /// With a backplane and starting on join across instances ([`Hub::start_across`]):
    /// publish `message` on the fleet's start channel (snaprtcd's own; the original server
    /// never reads it), for `session`.
    PublishStart {
        /// The session it is about.
        session: SessionId,
        /// An initiator asking, or a capture side's instance granting.
        message: StartMessage,
    },
    /// With a backplane that has just (re)connected: every session this instance needs, with
    /// the places its members here hold (the daemon's own capture side is not counted).
    /// Subscribe them all and restate the places, so that what Redis lost or missed while it
    /// was away is put right. One output for all of them, however many there are.
    Resync(Vec<(SessionId, usize)>),
}

/// Starting initiators on join across instances: what goes over the fleet's start channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum StartMessage {
    /// An initiator (fleet-wide connection id `c`) joined the session, not ready: an instance
    /// with a ready capture connection there answers with [`StartMessage::Grant`].
    Ask {
        /// The initiator's connection id, `{instance}.{member}`.
        c: String,
    },
    /// A ready capture side waits: the instance of connection `c` sends it `signalStart`.
    Grant {
        /// The initiator's connection id.
        c: String,
    },
}

impl StartMessage {
    /// Largest start message read.
    pub const MAX_BYTES: usize = 512;

    /// The wire form (JSON).
    pub fn encode(&self, session: &SessionId) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            s: &'a str,
            #[serde(flatten)]
            m: &'a StartMessage,
        }
        serde_json::to_vec(&Wire {
            s: session.as_str(),
            m: self,
        })
        .unwrap_or_default()
    }

    /// Read the wire form: the session and the message (`None` for anything else).
    pub fn decode(bytes: &[u8]) -> Option<(SessionId, StartMessage)> {
        #[derive(serde::Deserialize)]
        struct Wire {
            s: String,
            #[serde(flatten)]
            m: StartMessage,
        }
        if bytes.len() > Self::MAX_BYTES {
            return None;
        }
        let wire: Wire = serde_json::from_slice(bytes).ok()?;
        Some((SessionId::parse(&wire.s).ok()?, wire.m))
    }
}

/// Limits and behaviour of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Most sessions at once (`signaling.max_sessions`).
    pub max_sessions: usize,
    /// Most members in one session (`signaling.max_members_per_session`).
    pub max_members_per_session: usize,
    /// Emit [`HubOutput::CaptureWanted`] (`join_sessions = "all"` with a capture member).
    pub capture_wanted: bool,
}

#[derive(Debug, Default)]
struct Session {
    /// Members in join order, with whether each said `ready` (is a capture side).
    members: Vec<(MemberId, bool)>,
}

/// Sessions and their members.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    sessions: HashMap<SessionId, Session>,
    /// Sessions each member is in, so a disconnect leaves them all.
    memberships: HashMap<MemberId, Vec<SessionId>>,
    /// Members that are the daemon itself; they never keep a session alive on their own.
    locals: std::collections::HashSet<MemberId>,
    outputs: VecDeque<HubOutput>,
    /// With a backplane: this instance's id, the first part of its members' connection ids.
    instance: Option<Arc<str>>,
    /// With a backplane: whether Redis is reachable now ([`Hub::handle_backplane`]).
    backplane_up: bool,
    /// With a backplane: joins waiting for their [`HubOutput::Reserve`] answer.
    pending: HashMap<(MemberId, SessionId), PendingJoin>,
    /// With a backplane: sessions subscribed (members here, or joins pending).
    subscribed: std::collections::HashSet<SessionId>,
    /// An initiator that joins a session where a ready capture side waits gets `signalStart`
    /// at once ([`Hub::starts_on_join`]); not yet across a backplane.
    start_on_join: bool,
    /// Relayed messages go back to their sender too, as on the original server
    /// ([`Hub::echo_to_sender`]).
    echo: bool,
    /// With a backplane: start on join across instances ([`Hub::start_across`]).
    start_across: bool,
    /// Initiators here that asked the fleet for a start and have not had one.
    asking: std::collections::HashSet<(MemberId, SessionId)>,
}

/// A `Sync` waiting for its fleet-wide place.
#[derive(Debug)]
struct PendingJoin {
    /// The latest `ready` asked for.
    ready: bool,
    /// Invocation ids owed a Completion when the answer comes.
    invocations: Vec<String>,
}

impl Hub {
    /// A hub with no sessions.
    pub fn new(config: HubConfig) -> Self {
        Self {
            config,
            sessions: HashMap::new(),
            memberships: HashMap::new(),
            locals: std::collections::HashSet::new(),
            outputs: VecDeque::new(),
            instance: None,
            backplane_up: false,
            pending: HashMap::new(),
            subscribed: std::collections::HashSet::new(),
            start_on_join: true,
            echo: false,
            start_across: false,
            asking: std::collections::HashSet::new(),
        }
    }

    /// With a backplane, start on join across instances too (`[backplane] start_on_join`):
    /// an initiator that joins here, not ready, is asked about on the fleet's start channel
    /// ([`HubOutput::PublishStart`]); an instance with a ready capture connection in the
    /// session grants it, and this instance sends the initiator `signalStart`, once. Only for
    /// fleets of snaprtcd instances: an instance of the original server neither asks nor
    /// grants. Without a backplane this changes nothing.
    pub fn start_across(mut self) -> Self {
        if self.instance.is_some() && !self.echo {
            self.start_on_join = true;
            self.start_across = true;
        }
        self
    }

    /// Input: a message from the fleet's start channel ([`StartMessage`]).
    pub fn handle_start(&mut self, session: &SessionId, message: StartMessage) {
        if !self.start_across {
            return;
        }
        match message {
            StartMessage::Ask { c } => {
                let Some(instance) = &self.instance else {
                    return;
                };
                if c.split_once('.').is_some_and(|(i, _)| i == &**instance) {
                    return; // our own ask: a capture side here was already looked for
                }
                let waits = self.sessions.get(session).is_some_and(|s| {
                    s.members
                        .iter()
                        .any(|&(m, ready)| ready && !self.locals.contains(&m))
                });
                if waits {
                    self.outputs.push_back(HubOutput::PublishStart {
                        session: session.clone(),
                        message: StartMessage::Grant { c },
                    });
                }
            }
            StartMessage::Grant { c } => {
                let Some(instance) = &self.instance else {
                    return;
                };
                let member = match c.split_once('.') {
                    Some((i, m)) if i == &**instance => m.parse().ok().map(MemberId),
                    _ => None,
                };
                let Some(member) = member else { return };
                // Once: several instances may grant the same ask.
                if self.asking.remove(&(member, session.clone())) {
                    self.outputs.push_back(HubOutput::Deliver {
                        to: member,
                        message: Outbound::SignalStart,
                    });
                }
            }
        }
    }

    /// Behave like the original ASP.NET server (`[signaling] echo_to_sender`): every relayed
    /// message, `signalStart` included, also goes to its sender (when it is a connection), and
    /// initiators are not started on join. For testing clients against that behaviour.
    pub fn echo_to_sender(mut self) -> Self {
        self.echo = true;
        self.start_on_join = false;
        self.start_across = false;
        self
    }

    /// Whether an initiator that `Sync`s (not ready) into a session where a ready capture side
    /// already waits gets `signalStart` at once, from the hub. The original server does not do
    /// this (the initiator waits for the capture side's next `Sync(session, true)`); stock
    /// pages take it like any `signalStart`. On with no backplane; with one, only with
    /// [`Hub::start_across`] (the ready capture side may be on another instance), else a hub
    /// with a backplane behaves like the original one and capture sides that dial out keep
    /// announcing.
    pub fn starts_on_join(&self) -> bool {
        self.start_on_join
    }

    /// A hub that shares its sessions with other instances through a backplane. `instance`
    /// must be unique in the fleet (random, from the shell) and contain no `.`. It starts with
    /// the backplane down: joins are refused until [`Hub::handle_backplane`] says it is up.
    pub fn with_backplane(config: HubConfig, instance: &str) -> Self {
        Self {
            instance: Some(Arc::from(instance)),
            start_on_join: false,
            ..Self::new(config)
        }
    }

    /// The fleet-wide connection id of a member here (with a backplane).
    fn connection_id(&self, member: MemberId) -> Option<String> {
        self.instance
            .as_ref()
            .map(|instance| format!("{instance}.{}", member.0))
    }

    /// Input: `envelope` arrived on `session`'s channel from the backplane. It goes to this
    /// instance's members of the session that it does not exclude; a message this instance
    /// published itself (it excludes one of this instance's connection ids) is dropped.
    pub fn handle_remote(
        &mut self,
        session: &SessionId,
        envelope: &Envelope,
        _now: Instant,
    ) -> Result<(), RemoteError> {
        let Some(instance) = &self.instance else {
            return Ok(());
        };
        if envelope.is_from(instance) {
            return Ok(());
        }
        let record = envelope.json_record().ok_or(RemoteError::NoJson)?;
        let message = Outbound::from_remote_record(record)?;
        let Some(s) = self.sessions.get(session) else {
            return Ok(());
        };
        for &(to, _) in &s.members {
            let excluded = self
                .connection_id(to)
                .is_some_and(|id| envelope.excluded.contains(&id));
            if !excluded {
                if message == Outbound::SignalStart {
                    self.asking.remove(&(to, session.clone()));
                }
                self.outputs.push_back(HubOutput::Deliver {
                    to,
                    message: message.clone(),
                });
            }
        }
        Ok(())
    }

    /// Member API: the daemon's own capture side joins `session` (ready). When the last remote
    /// member of the session leaves, it leaves with it ([`HubOutput::LocalLeft`]). A join that
    /// fails (the session is full) leaves no trace of `member`.
    pub fn join_local(&mut self, member: MemberId, session: SessionId) -> Result<(), RequestError> {
        self.join(member, session, true)?;
        self.locals.insert(member);
        Ok(())
    }

    /// Local members now (each is in one session).
    pub fn local_count(&self) -> usize {
        self.locals.len()
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Members of `session` now, in join order.
    pub fn members(&self, session: &SessionId) -> Vec<MemberId> {
        self.sessions
            .get(session)
            .map(|s| s.members.iter().map(|(m, _)| *m).collect())
            .unwrap_or_default()
    }

    /// A client's call.
    pub fn handle_request(&mut self, from: MemberId, request: Request) {
        let result = match request.method {
            Method::Sync { session, ready } => {
                if self.instance.is_some() && !self.is_member(from, &session) {
                    // Across instances a join first takes a fleet-wide place: the Completion
                    // comes with the answer (`handle_reservation`).
                    match self.request_join(from, session, ready, request.invocation_id) {
                        Ok(()) => return,
                        Err((invocation_id, e)) => {
                            self.complete(from, invocation_id, Err(e));
                            return;
                        }
                    }
                }
                self.join(from, session, ready)
            }
            Method::SignalCapture { session, payload } => {
                self.relay(from, &session, Outbound::SignalCapture(payload))
            }
            Method::SignalInitiator { session, payload } => {
                self.relay(from, &session, Outbound::SignalInitiator(payload))
            }
        };
        self.complete(from, request.invocation_id, result);
    }

    /// The Completion owed for an `invoke` (nothing for a `send`).
    fn complete(
        &mut self,
        to: MemberId,
        invocation_id: Option<String>,
        result: Result<(), RequestError>,
    ) {
        if let Some(invocation_id) = invocation_id {
            self.outputs.push_back(HubOutput::Deliver {
                to,
                message: Outbound::Completion {
                    invocation_id,
                    error: result.err().map(|e| e.to_string()),
                },
            });
        }
    }

    fn is_member(&self, member: MemberId, session: &SessionId) -> bool {
        self.sessions
            .get(session)
            .is_some_and(|s| s.members.iter().any(|(m, _)| *m == member))
    }

    /// With a backplane: check what can be checked here, then ask for a fleet-wide place.
    /// On refusal, the invocation id comes back with the error.
    fn request_join(
        &mut self,
        member: MemberId,
        session: SessionId,
        ready: bool,
        invocation_id: Option<String>,
    ) -> Result<(), (Option<String>, RequestError)> {
        if !self.backplane_up {
            return Err((invocation_id, RequestError::BackplaneUnavailable));
        }
        if let Some(pending) = self.pending.get_mut(&(member, session.clone())) {
            pending.ready = ready;
            pending.invocations.extend(invocation_id);
            return Ok(());
        }
        match self.sessions.get(&session) {
            None if self.sessions.len() >= self.config.max_sessions => {
                let e = RequestError::TooManySessions(self.config.max_sessions);
                return Err((invocation_id, e));
            }
            Some(s) if s.members.len() >= self.config.max_members_per_session => {
                let e = RequestError::SessionFull(self.config.max_members_per_session);
                return Err((invocation_id, e));
            }
            _ => {}
        }
        self.pending.insert(
            (member, session.clone()),
            PendingJoin {
                ready,
                invocations: invocation_id.into_iter().collect(),
            },
        );
        // Subscribed before the place is asked for: the shell carries these out in order, so
        // by the time the member hears its Sync succeeded, what others publish reaches it.
        self.subscribe(&session);
        self.outputs
            .push_back(HubOutput::Reserve { member, session });
        Ok(())
    }

    fn subscribe(&mut self, session: &SessionId) {
        if self.instance.is_some() && self.subscribed.insert(session.clone()) {
            self.outputs
                .push_back(HubOutput::Subscribe(session.clone()));
        }
    }

    /// Unsubscribe from `session` if nothing here needs it any more (no members, no joins
    /// pending).
    fn unsubscribe_if_unused(&mut self, session: &SessionId) {
        let used =
            self.sessions.contains_key(session) || self.pending.keys().any(|(_, s)| s == session);
        if !used && self.subscribed.remove(session) {
            self.outputs
                .push_back(HubOutput::Unsubscribe(session.clone()));
        }
    }

    /// Input: the answer to [`HubOutput::Reserve`]: `Ok` when `member` has its fleet-wide
    /// place in `session`, else [`RequestError::SessionFull`] or
    /// [`RequestError::BackplaneUnavailable`]. The member joins (or its `Sync` fails) now; a
    /// place granted to a member that has gone meanwhile is given back.
    pub fn handle_reservation(
        &mut self,
        member: MemberId,
        session: SessionId,
        result: Result<(), RequestError>,
    ) {
        let Some(pending) = self.pending.remove(&(member, session.clone())) else {
            if result.is_ok() {
                self.outputs.push_back(HubOutput::Release(session.clone()));
            }
            self.unsubscribe_if_unused(&session);
            return;
        };
        let result = result.and_then(|()| {
            self.join(member, session.clone(), pending.ready)
                .inspect_err(|_| self.outputs.push_back(HubOutput::Release(session.clone())))
        });
        for invocation_id in pending.invocations {
            self.complete(member, Some(invocation_id), result.clone());
        }
        self.unsubscribe_if_unused(&session);
    }

    /// Input: the backplane went up (`true`) or down. Going up, every session here is
    /// subscribed again and its places restated; while down, joins are refused and messages
    /// that only members elsewhere would get fail.
    pub fn handle_backplane(&mut self, up: bool) {
        if self.instance.is_none() || up == self.backplane_up {
            return;
        }
        self.backplane_up = up;
        if up {
            let mut sessions: Vec<(SessionId, usize)> = self
                .subscribed
                .iter()
                .map(|session| {
                    let count = self.sessions.get(session).map_or(0, |s| {
                        s.members
                            .iter()
                            .filter(|(m, _)| !self.locals.contains(m))
                            .count()
                    });
                    (session.clone(), count)
                })
                .collect();
            sessions.sort();
            if !sessions.is_empty() {
                self.outputs.push_back(HubOutput::Resync(sessions));
            }
        }
    }

    /// Whether the backplane is up (always `false` without one).
    pub fn backplane_up(&self) -> bool {
        self.backplane_up
    }

    /// A client's `SignalCapture`/`SignalInitiator`: fails when the backplane is down and no
    /// other member of the session is here (only members elsewhere could have got it).
    fn relay(
        &mut self,
        from: MemberId,
        session: &SessionId,
        message: Outbound,
    ) -> Result<(), RequestError> {
        let delivered = self.signal(from, session, message);
        if self.instance.is_some() && !self.backplane_up && delivered == 0 {
            return Err(RequestError::BackplaneUnavailable);
        }
        Ok(())
    }

    /// A member is gone: it leaves every session; empty sessions are freed.
    pub fn handle_disconnect(&mut self, member: MemberId) {
        self.asking.retain(|(m, _)| *m != member);
        // A pending join keeps its subscription until its answer comes (handle_reservation).
        self.pending.retain(|(m, _), _| *m != member);
        for session in self.memberships.remove(&member).unwrap_or_default() {
            self.remove_from_session(member, &session);
        }
    }

    /// Member API: join `session` (creating it); `ready` marks the capture side, which makes
    /// the hub send `signalStart` to the others. Joining again updates `ready`.
    pub fn join(
        &mut self,
        member: MemberId,
        session: SessionId,
        ready: bool,
    ) -> Result<(), RequestError> {
        let is_new = !self.sessions.contains_key(&session);
        if is_new && self.sessions.len() >= self.config.max_sessions {
            return Err(RequestError::TooManySessions(self.config.max_sessions));
        }
        let entry = self.sessions.entry(session.clone()).or_default();
        match entry.members.iter_mut().find(|(m, _)| *m == member) {
            Some(existing) => existing.1 = ready,
            None => {
                if entry.members.len() >= self.config.max_members_per_session {
                    return Err(RequestError::SessionFull(
                        self.config.max_members_per_session,
                    ));
                }
                entry.members.push((member, ready));
                self.memberships
                    .entry(member)
                    .or_default()
                    .push(session.clone());
                if is_new {
                    self.subscribe(&session);
                }
            }
        }
        // A ready capture side that is a connection (the daemon's own member serves the one
        // initiator it joined for, and answers every offer it sees).
        let capture_waits = self.sessions.get(&session).is_some_and(|s| {
            s.members
                .iter()
                .any(|&(other, ready)| ready && other != member && !self.locals.contains(&other))
        });
        if ready {
            self.signal(member, &session, Outbound::SignalStart);
        } else if self.start_on_join && capture_waits {
            // A ready capture side already waits (one that dialled out, say): this initiator
            // starts now instead of waiting for the capture side to announce again.
            self.outputs.push_back(HubOutput::Deliver {
                to: member,
                message: Outbound::SignalStart,
            });
        } else if self.start_across && self.backplane_up {
            // The capture side may wait on another instance: ask the fleet.
            if let Some(c) = self.connection_id(member) {
                self.asking.insert((member, session.clone()));
                self.outputs.push_back(HubOutput::PublishStart {
                    session,
                    message: StartMessage::Ask { c },
                });
            }
        } else if self.config.capture_wanted && !entry_has_capture(&self.sessions, &session) {
            self.outputs.push_back(HubOutput::CaptureWanted { session });
        }
        Ok(())
    }

    /// Member API: leave one session.
    pub fn leave(&mut self, member: MemberId, session: &SessionId) {
        self.asking.remove(&(member, session.clone()));
        if let Some(list) = self.memberships.get_mut(&member) {
            list.retain(|s| s != session);
            if list.is_empty() {
                self.memberships.remove(&member);
            }
        }
        self.remove_from_session(member, session);
    }

    /// Member API: send `message` to every member of `session` but `from`; with a backplane
    /// that is up, also publish it for the members on other instances. Returns how many
    /// members here it went to.
    pub fn signal(&mut self, from: MemberId, session: &SessionId, message: Outbound) -> usize {
        if let Some(sender) = self.connection_id(from).filter(|_| self.backplane_up) {
            self.outputs.push_back(HubOutput::Publish {
                session: session.clone(),
                envelope: Envelope::json(vec![sender], message.to_record()),
            });
        }
        let Some(s) = self.sessions.get(session) else {
            return 0;
        };
        let mut delivered = 0;
        for &(to, _) in &s.members {
            let echo = self.echo && !self.locals.contains(&to);
            if to != from || echo {
                delivered += 1;
                self.outputs.push_back(HubOutput::Deliver {
                    to,
                    message: message.clone(),
                });
            }
        }
        delivered
    }

    /// The next thing for the shell to do, removed from the queue (see the draining rule).
    #[must_use]
    pub fn poll_output(&mut self) -> Option<HubOutput> {
        self.outputs.pop_front()
    }

    fn remove_from_session(&mut self, member: MemberId, session: &SessionId) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let before = s.members.len();
        s.members.retain(|(m, _)| *m != member);
        if self.instance.is_some() && s.members.len() < before && !self.locals.contains(&member) {
            self.outputs.push_back(HubOutput::Release(session.clone()));
        }
        if s.members.iter().all(|(m, _)| self.locals.contains(m)) {
            let locals: Vec<MemberId> = s.members.iter().map(|(m, _)| *m).collect();
            self.sessions.remove(session);
            self.unsubscribe_if_unused(session);
            for local in locals {
                self.locals.remove(&local);
                self.memberships.remove(&local);
                self.outputs.push_back(HubOutput::LocalLeft {
                    member: local,
                    session: session.clone(),
                });
            }
        }
    }
}

fn entry_has_capture(sessions: &HashMap<SessionId, Session>, session: &SessionId) -> bool {
    sessions
        .get(session)
        .is_some_and(|s| s.members.iter().any(|(_, ready)| *ready))
}

/// Admission of hub connections: negotiate tokens (single use, expiring) and the connection
/// limit. Pure; randomness and time come in from the caller.
#[derive(Debug)]
pub struct Admissions {
    /// Unused tokens and when they expire. Each holds a place under `max_connections`.
    pending: HashMap<String, Instant>,
    active: usize,
    max_connections: usize,
    token_lifetime: Duration,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// `signaling.max_connections` are open or reserved.
    #[error("too many connections")]
    Full,
    /// The token was never issued, was used, or expired.
    #[error("no such connection token")]
    UnknownToken,
}

impl Admissions {
    /// No connections yet; tokens live `token_lifetime` (the handshake timeout).
    pub fn new(max_connections: usize, token_lifetime: Duration) -> Self {
        Self {
            pending: HashMap::new(),
            active: 0,
            max_connections,
            token_lifetime,
        }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Negotiate: reserve a place under a new token (`token` comes from a CSPRNG).
    pub fn negotiate(&mut self, token: String, now: Instant) -> Result<String, AdmissionError> {
        self.handle_timeout(now);
        if self.active + self.pending.len() >= self.max_connections {
            return Err(AdmissionError::Full);
        }
        self.pending
            .insert(token.clone(), now + self.token_lifetime);
        Ok(token)
    }

    /// Upgrade: `Some(token)` must be a live negotiated token (used up here); `None` is
    /// skipNegotiation and needs a free place.
    pub fn connect(&mut self, token: Option<&str>, now: Instant) -> Result<(), AdmissionError> {
        self.handle_timeout(now);
        match token {
            Some(token) => {
                self.pending
                    .remove(token)
                    .ok_or(AdmissionError::UnknownToken)?;
            }
            None => {
                if self.active + self.pending.len() >= self.max_connections {
                    return Err(AdmissionError::Full);
                }
            }
        }
        self.active += 1;
        Ok(())
    }

    /// Would a connection be admitted now (checked before answering an upgrade)?
    pub fn check(&mut self, token: Option<&str>, now: Instant) -> Result<(), AdmissionError> {
        self.handle_timeout(now);
        match token {
            Some(token) if self.pending.contains_key(token) => Ok(()),
            Some(_) => Err(AdmissionError::UnknownToken),
            None if self.active + self.pending.len() >= self.max_connections => {
                Err(AdmissionError::Full)
            }
            None => Ok(()),
        }
    }

    /// The token is kept elsewhere (in the backplane's Redis, where any instance takes it):
    /// free its place here.
    pub fn forget(&mut self, token: &str) {
        self.pending.remove(token);
    }

    /// Another instance negotiated `token` and the backplane handed it over: hold a place for
    /// it here, as if negotiated here (refused when this instance is full).
    pub fn adopt(&mut self, token: String, now: Instant) -> Result<(), AdmissionError> {
        if self.pending.contains_key(&token) {
            return Ok(());
        }
        self.negotiate(token, now).map(drop)
    }

    /// A connection closed.
    pub fn disconnect(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    /// Forget expired tokens.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pending.retain(|_, expires| *expires > now);
    }

    /// When the next token expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> RawJson {
        RawJson::from_string(s.to_owned()).unwrap()
    }

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    fn hub() -> Hub {
        Hub::new(HubConfig {
            max_sessions: 3,
            max_members_per_session: 3,
            capture_wanted: false,
        })
    }

    fn drain(h: &mut Hub) -> Vec<HubOutput> {
        std::iter::from_fn(|| h.poll_output()).collect()
    }

    fn deliver(to: u64, message: Outbound) -> HubOutput {
        HubOutput::Deliver {
            to: MemberId(to),
            message,
        }
    }

    fn call(h: &mut Hub, from: u64, id: Option<&str>, method: Method) {
        h.handle_request(
            MemberId(from),
            Request {
                invocation_id: id.map(str::to_owned),
                method,
            },
        );
    }

    fn sync(session: &str, ready: bool) -> Method {
        Method::Sync {
            session: sid(session),
            ready,
        }
    }

    fn capture(session: &str, payload: RawJson) -> Method {
        Method::SignalCapture {
            session: sid(session),
            payload,
        }
    }

    fn initiator(session: &str, payload: RawJson) -> Method {
        Method::SignalInitiator {
            session: sid(session),
            payload,
        }
    }

    fn ok(id: &str) -> Outbound {
        Outbound::Completion {
            invocation_id: id.into(),
            error: None,
        }
    }

    fn err(id: &str, e: &RequestError) -> Outbound {
        Outbound::Completion {
            invocation_id: id.into(),
            error: Some(e.to_string()),
        }
    }

    #[test]
    fn snaprtc_exchange_between_initiator_and_capture() {
        let mut h = hub();
        let (init, cap) = (1, 2);
        call(&mut h, init, Some("0"), sync("s1", false));
        assert_eq!(drain(&mut h), vec![deliver(init, ok("0"))]);
        call(&mut h, cap, Some("0"), sync("s1", true));
        assert_eq!(
            drain(&mut h),
            vec![deliver(init, Outbound::SignalStart), deliver(cap, ok("0"))]
        );
        let offer = raw("\"N4Ig\"");
        call(&mut h, init, Some("1"), capture("s1", offer.clone()));
        assert_eq!(
            drain(&mut h),
            vec![
                deliver(cap, Outbound::SignalCapture(offer)),
                deliver(init, ok("1"))
            ]
        );
        let answer = raw("\"answer\"");
        call(&mut h, cap, None, initiator("s1", answer.clone()));
        assert_eq!(
            drain(&mut h),
            vec![deliver(init, Outbound::SignalInitiator(answer))],
            "send: no Completion, no echo"
        );
    }

    #[test]
    fn sessions_are_isolated() {
        let mut h = hub();
        call(&mut h, 1, None, sync("a", false));
        call(&mut h, 2, None, sync("b", false));
        call(&mut h, 3, None, sync("b", true));
        assert_eq!(drain(&mut h), vec![deliver(2, Outbound::SignalStart)]);
        call(&mut h, 1, None, capture("a", raw("\"x\"")));
        assert!(drain(&mut h).is_empty(), "nobody else is in a");
    }

    #[test]
    fn disconnect_leaves_and_frees_empty_sessions() {
        let mut h = hub();
        call(&mut h, 1, None, sync("a", false));
        call(&mut h, 1, None, sync("b", false));
        call(&mut h, 2, None, sync("b", false));
        assert_eq!(h.session_count(), 2);
        h.handle_disconnect(MemberId(1));
        assert_eq!(h.session_count(), 1);
        assert_eq!(h.members(&sid("b")), vec![MemberId(2)]);
        h.handle_disconnect(MemberId(2));
        assert_eq!(h.session_count(), 0);
        assert!(h.memberships.is_empty());
    }

    #[test]
    fn sync_twice_does_not_duplicate_membership() {
        let mut h = hub();
        call(&mut h, 1, None, sync("a", false));
        call(&mut h, 1, None, sync("a", false));
        assert_eq!(h.members(&sid("a")), vec![MemberId(1)]);
        h.leave(MemberId(1), &sid("a"));
        assert_eq!(h.session_count(), 0);
    }

    #[test]
    fn session_limit_gives_error_completion() {
        let mut h = hub();
        for (i, s) in ["a", "b", "c"].into_iter().enumerate() {
            call(
                &mut h,
                i as u64,
                None,
                Method::Sync {
                    session: sid(s),
                    ready: false,
                },
            );
        }
        drain(&mut h);
        call(&mut h, 9, Some("5"), sync("d", false));
        assert_eq!(
            drain(&mut h),
            vec![deliver(
                9,
                Outbound::Completion {
                    invocation_id: "5".into(),
                    error: Some("Too many sessions on this server (3); try again later.".into())
                }
            )]
        );
        // Joining an existing session is still fine.
        call(&mut h, 9, Some("6"), sync("a", false));
        assert_eq!(drain(&mut h), vec![deliver(9, ok("6"))]);
    }

    #[test]
    fn member_limit_gives_error_completion() {
        let mut h = hub();
        for m in 1..=3 {
            call(&mut h, m, None, sync("a", false));
        }
        call(&mut h, 4, Some("1"), sync("a", false));
        assert_eq!(
            drain(&mut h),
            vec![deliver(
                4,
                Outbound::Completion {
                    invocation_id: "1".into(),
                    error: Some("Session is full (3 members).".into())
                }
            )]
        );
        assert_eq!(h.members(&sid("a")).len(), 3);
    }

    #[test]
    fn an_initiator_joining_a_waiting_capture_side_starts_at_once() {
        let mut h = hub();
        assert!(h.starts_on_join());
        // The capture side (a device that dialled out) waits first.
        call(&mut h, 1, None, sync("a", true));
        assert!(drain(&mut h).is_empty());
        // An initiator joins later: signalStart to it alone, at once.
        call(&mut h, 2, None, sync("a", false));
        assert_eq!(drain(&mut h), vec![deliver(2, Outbound::SignalStart)]);
        // The capture side is busy (Sync false): the next initiator waits...
        call(&mut h, 1, None, sync("a", false));
        assert!(drain(&mut h).is_empty());
        call(&mut h, 3, None, sync("b", false));
        call(&mut h, 3, None, sync("a", false));
        drain(&mut h);
        // ...until the capture side is ready again, which starts everyone there (the first
        // initiator has left the hub by then, as stock pages do).
        h.handle_disconnect(MemberId(2));
        call(&mut h, 1, None, sync("a", true));
        assert_eq!(drain(&mut h), vec![deliver(3, Outbound::SignalStart)]);
        // Another capture side joining as not ready gets nothing; no capture side, nothing.
        call(&mut h, 4, None, sync("c", false));
        assert!(drain(&mut h).is_empty());
    }

    #[test]
    fn echo_to_sender_behaves_like_the_original_server() {
        let mut h = hub().echo_to_sender();
        assert!(!h.starts_on_join());
        call(&mut h, 1, None, sync("a", true));
        assert_eq!(drain(&mut h), vec![deliver(1, Outbound::SignalStart)]);
        call(&mut h, 2, None, sync("a", false));
        assert!(drain(&mut h).is_empty(), "no start on join");
        let p = raw("\"x\"");
        call(
            &mut h,
            2,
            None,
            Method::SignalCapture {
                session: sid("a"),
                payload: p.clone(),
            },
        );
        assert_eq!(
            drain(&mut h),
            vec![
                deliver(1, Outbound::SignalCapture(p.clone())),
                deliver(2, Outbound::SignalCapture(p)),
            ]
        );
    }

    #[test]
    fn with_a_backplane_initiators_wait_for_the_announce_as_on_the_original_server() {
        let mut h = Hub::with_backplane(
            HubConfig {
                max_sessions: 10,
                max_members_per_session: 8,
                capture_wanted: false,
            },
            "i1",
        );
        assert!(!h.starts_on_join());
        h.join(MemberId(1), sid("a"), true).unwrap();
        drain(&mut h);
        h.join(MemberId(2), sid("a"), false).unwrap();
        let outputs = drain(&mut h);
        assert!(
            !outputs
                .iter()
                .any(|o| matches!(o, HubOutput::Deliver { .. })),
            "{outputs:?}"
        );
    }

    #[test]
    fn capture_wanted_only_when_no_capture_is_present() {
        let mut h = Hub::new(HubConfig {
            max_sessions: 10,
            max_members_per_session: 8,
            capture_wanted: true,
        });
        call(&mut h, 1, None, sync("a", false));
        assert_eq!(
            drain(&mut h),
            vec![HubOutput::CaptureWanted { session: sid("a") }]
        );
        // The daemon's capture member joins through the member API (as the shell does).
        h.join_local(MemberId(100), sid("a")).unwrap();
        assert_eq!(drain(&mut h), vec![deliver(1, Outbound::SignalStart)]);
        call(&mut h, 2, None, sync("a", false));
        assert!(drain(&mut h).is_empty(), "a capture side is already there");
    }

    #[test]
    fn local_member_leaves_with_the_last_remote_member() {
        let mut h = Hub::new(HubConfig {
            max_sessions: 10,
            max_members_per_session: 8,
            capture_wanted: true,
        });
        call(&mut h, 1, None, sync("a", false));
        drain(&mut h);
        h.join_local(MemberId(100), sid("a")).unwrap();
        drain(&mut h);
        let offer = raw("\"o\"");
        call(&mut h, 1, None, capture("a", offer.clone()));
        assert_eq!(
            drain(&mut h),
            vec![deliver(100, Outbound::SignalCapture(offer))]
        );
        h.signal(
            MemberId(100),
            &sid("a"),
            Outbound::SignalInitiator(raw("\"ans\"")),
        );
        assert_eq!(
            drain(&mut h),
            vec![deliver(1, Outbound::SignalInitiator(raw("\"ans\"")))]
        );
        h.handle_disconnect(MemberId(1));
        assert_eq!(
            drain(&mut h),
            vec![HubOutput::LocalLeft {
                member: MemberId(100),
                session: sid("a")
            }]
        );
        assert_eq!(h.session_count(), 0);
        assert!(h.memberships.is_empty() && h.locals.is_empty());
    }

    #[test]
    fn request_parsing_is_case_insensitive_and_typed() {
        let args = |s: &str| -> Vec<Box<RawValue>> {
            serde_json::from_str::<Vec<Box<RawValue>>>(s).unwrap()
        };
        let r = Request::parse(None, "SIGNALINITIATOR", args("[\"a\",\"p\"]")).unwrap();
        assert!(matches!(r.method, Method::SignalInitiator { .. }));
        assert_eq!(
            Request::parse(None, "sync", args("[\"a\"]")),
            Err(RequestError::ArgumentCount {
                given: 1,
                expected: 2
            })
        );
        assert_eq!(
            Request::parse(None, "sync", args("[\"a\",1]"))
                .unwrap_err()
                .to_string(),
            "Error binding arguments: argument 1 of 'Sync' must be a boolean."
        );
        assert_eq!(
            Request::parse(None, "Sync", args("[\"a/b\",true]")),
            Err(RequestError::BadSession)
        );
        assert!(Request::parse(None, "signalcapture", args("[\"a\",null]")).is_err());
        assert!(SessionId::parse(&"x".repeat(128)).is_ok());
        assert!(SessionId::parse(&"x".repeat(129)).is_err());
    }

    /// Hubs on several instances and an in-memory Redis: published envelopes go, as bytes and
    /// in publish order, to every hub subscribed to the session, the publisher included (as
    /// Redis pub/sub does), and places are counted per session and instance, as the backplane
    /// task's script counts them. Deliveries are collected per instance.
    struct Fleet {
        hubs: Vec<Hub>,
        subscribed: Vec<std::collections::HashSet<SessionId>>,
        delivered: Vec<Vec<HubOutput>>,
        /// Envelopes published, as bytes, in order.
        wire: VecDeque<(SessionId, Vec<u8>)>,
        /// Places taken per session, per instance.
        places: HashMap<SessionId, Vec<usize>>,
        /// The fleet-wide `max_members_per_session`.
        max: usize,
    }

    impl Fleet {
        fn new(n: usize) -> Fleet {
            Fleet::with_limits(n, 8, 8)
        }

        /// `max` members per session on the fleet, `local_max` on each instance.
        fn with_limits(n: usize, max: usize, local_max: usize) -> Fleet {
            let config = HubConfig {
                max_sessions: 10,
                max_members_per_session: local_max,
                capture_wanted: false,
            };
            let mut hubs: Vec<Hub> = (0..n)
                .map(|i| Hub::with_backplane(config, &format!("inst{i}")))
                .collect();
            for hub in &mut hubs {
                hub.handle_backplane(true);
                assert!(drain(hub).is_empty(), "no sessions to resync yet");
            }
            Fleet {
                hubs,
                subscribed: vec![Default::default(); n],
                delivered: vec![Vec::new(); n],
                wire: VecDeque::new(),
                places: HashMap::new(),
                max,
            }
        }

        fn places(&self, session: &str) -> Vec<usize> {
            let n = self.hubs.len();
            self.places
                .get(&sid(session))
                .cloned()
                .unwrap_or(vec![0; n])
        }

        fn call(&mut self, hub: usize, from: u64, id: Option<&str>, method: Method) {
            call(&mut self.hubs[hub], from, id, method);
            self.settle();
        }

        fn disconnect(&mut self, hub: usize, member: u64) {
            self.hubs[hub].handle_disconnect(MemberId(member));
            self.settle();
        }

        /// Drain every hub, carry publishes over the wire and answer reservations, until
        /// nothing moves.
        fn settle(&mut self) {
            let n = self.hubs.len();
            loop {
                let mut answers = Vec::new();
                // The start channel: every instance is subscribed to it.
                let mut starts = Vec::new();
                for i in 0..n {
                    while let Some(output) = self.hubs[i].poll_output() {
                        match output {
                            HubOutput::Subscribe(s) => {
                                self.subscribed[i].insert(s);
                            }
                            HubOutput::Unsubscribe(s) => assert!(self.subscribed[i].remove(&s)),
                            HubOutput::Publish { session, envelope } => {
                                self.wire.push_back((session, envelope.encode().unwrap()));
                            }
                            HubOutput::Reserve { member, session } => {
                                let places =
                                    self.places.entry(session.clone()).or_insert(vec![0; n]);
                                let result = if places.iter().sum::<usize>() >= self.max {
                                    Err(RequestError::SessionFull(self.max))
                                } else {
                                    places[i] += 1;
                                    Ok(())
                                };
                                answers.push((i, member, session, result));
                            }
                            HubOutput::Release(session) => {
                                let places = self.places.get_mut(&session).unwrap();
                                places[i] = places[i].checked_sub(1).expect("released once");
                            }
                            HubOutput::Resync(sessions) => {
                                for (session, count) in sessions {
                                    self.subscribed[i].insert(session.clone());
                                    self.places.entry(session).or_insert(vec![0; n])[i] = count;
                                }
                            }
                            HubOutput::PublishStart { session, message } => {
                                starts.push(message.encode(&session));
                            }
                            other => self.delivered[i].push(other),
                        }
                    }
                }
                let moved = !answers.is_empty() || !starts.is_empty();
                for (i, member, session, result) in answers {
                    self.hubs[i].handle_reservation(member, session, result);
                }
                for bytes in starts {
                    let (session, message) = StartMessage::decode(&bytes).unwrap();
                    for hub in &mut self.hubs {
                        hub.handle_start(&session, message.clone());
                    }
                }
                let Some((session, bytes)) = self.wire.pop_front() else {
                    if moved {
                        continue;
                    }
                    return;
                };
                for i in 0..self.hubs.len() {
                    if self.subscribed[i].contains(&session) {
                        let envelope = Envelope::decode(&bytes, 262_144).unwrap();
                        self.hubs[i]
                            .handle_remote(&session, &envelope, Instant::now())
                            .unwrap();
                    }
                }
            }
        }

        fn take(&mut self, hub: usize) -> Vec<HubOutput> {
            std::mem::take(&mut self.delivered[hub])
        }
    }

    #[test]
    fn start_on_join_across_instances_starts_an_initiator_once() {
        let mut f = Fleet::new(3);
        for hub in &mut f.hubs {
            *hub = std::mem::replace(
                hub,
                Hub::new(HubConfig {
                    max_sessions: 1,
                    max_members_per_session: 1,
                    capture_wanted: false,
                }),
            )
            .start_across();
            assert!(hub.starts_on_join());
        }
        // Two devices that dialled out wait in session s, on instances 1 and 2.
        f.call(1, 1, None, sync("s", true));
        f.call(2, 1, None, sync("s", true));
        f.take(1);
        f.take(2);
        // An initiator joins on instance 0: both grant; it gets signalStart once.
        f.call(0, 1, Some("0"), sync("s", false));
        assert_eq!(
            f.take(0),
            vec![deliver(1, ok("0")), deliver(1, Outbound::SignalStart)]
        );
        // Busy devices (Sync false) grant nothing: the next initiator waits...
        f.call(1, 1, None, sync("s", false));
        f.call(2, 1, None, sync("s", false));
        f.call(0, 2, Some("0"), sync("s", false));
        assert_eq!(f.take(0), vec![deliver(2, ok("0"))]);
        // ...for a device that is ready again, whose signalStart reaches it (and the first
        // initiator, had it not left the hub, as on the original server).
        f.disconnect(0, 1);
        f.call(1, 1, None, sync("s", true));
        assert_eq!(f.take(0), vec![deliver(2, Outbound::SignalStart)]);
        // A grant for an initiator that has had its start changes nothing.
        f.hubs[0].handle_start(
            &sid("s"),
            StartMessage::Grant {
                c: "inst0.2".into(),
            },
        );
        assert!(f.hubs[0].poll_output().is_none());
        // Junk on the channel is refused before it reaches a hub.
        assert!(StartMessage::decode(b"{\"s\":\"s\",\"t\":\"boom\"}").is_none());
        assert!(StartMessage::decode(&[b' '; 600]).is_none());
    }

    #[test]
    fn snaprtc_exchange_across_two_instances_without_echo_or_duplicates() {
        let mut f = Fleet::new(2);
        let (a, b) = (0, 1);
        // Member numbers are per instance: both sides are member 1, on different hubs.
        f.call(a, 1, Some("0"), sync("s1", false));
        assert_eq!(f.take(a), vec![deliver(1, ok("0"))]);
        f.call(b, 1, Some("0"), sync("s1", true));
        assert_eq!(f.take(a), vec![deliver(1, Outbound::SignalStart)]);
        assert_eq!(
            f.take(b),
            vec![deliver(1, ok("0"))],
            "no echo of signalStart"
        );
        let offer = raw("\"N4Ig\\u00e9\"");
        f.call(a, 1, Some("1"), capture("s1", offer.clone()));
        assert_eq!(f.take(a), vec![deliver(1, ok("1"))], "no echo of the offer");
        assert_eq!(f.take(b), vec![deliver(1, Outbound::SignalCapture(offer))]);
        let answer = raw("\"answer\"");
        f.call(b, 1, None, initiator("s1", answer.clone()));
        assert_eq!(
            f.take(a),
            vec![deliver(1, Outbound::SignalInitiator(answer))]
        );
        assert!(f.take(b).is_empty(), "send: no Completion, no echo");
        // The capture side leaves: its instance unsubscribes and hears nothing more.
        f.disconnect(b, 1);
        assert!(f.subscribed[b].is_empty() && f.subscribed[a].contains(&sid("s1")));
        f.call(a, 1, None, capture("s1", raw("\"late\"")));
        assert!(f.take(a).is_empty() && f.take(b).is_empty());
    }

    #[test]
    fn each_senders_messages_arrive_once_and_in_order_on_every_instance() {
        let mut f = Fleet::new(3);
        f.call(0, 1, None, sync("s", false));
        f.call(0, 2, None, sync("s", false));
        f.call(1, 1, None, sync("s", true));
        f.call(2, 1, None, sync("s", false));
        for hub in 0..3 {
            f.take(hub);
        }
        let sent: Vec<RawJson> = (0..20).map(|i| raw(&format!("\"p{i}\""))).collect();
        for p in &sent {
            f.call(0, 1, None, capture("s", p.clone()));
        }
        let want: Vec<HubOutput> = sent
            .iter()
            .map(|p| deliver(1, Outbound::SignalCapture(p.clone())))
            .collect();
        let same_instance: Vec<HubOutput> = sent
            .iter()
            .map(|p| deliver(2, Outbound::SignalCapture(p.clone())))
            .collect();
        assert_eq!(
            f.take(0),
            same_instance,
            "the other member on the sender's instance"
        );
        assert_eq!(f.take(1), want);
        assert_eq!(f.take(2), want);
    }

    #[test]
    fn subscriptions_follow_the_first_and_last_member_here() {
        let mut h = Hub::with_backplane(
            HubConfig {
                max_sessions: 10,
                max_members_per_session: 8,
                capture_wanted: false,
            },
            "x",
        );
        h.handle_backplane(true);
        let reserve = |m: u64| HubOutput::Reserve {
            member: MemberId(m),
            session: sid("s"),
        };
        // Subscribed before the place is asked for, so the member can miss nothing once its
        // Sync is answered.
        call(&mut h, 1, None, sync("s", false));
        assert_eq!(
            drain(&mut h),
            vec![HubOutput::Subscribe(sid("s")), reserve(1)]
        );
        h.handle_reservation(MemberId(1), sid("s"), Ok(()));
        assert!(drain(&mut h).is_empty());
        call(&mut h, 2, None, sync("s", false));
        assert_eq!(drain(&mut h), vec![reserve(2)]);
        h.handle_reservation(MemberId(2), sid("s"), Ok(()));
        assert!(drain(&mut h).is_empty());
        h.handle_disconnect(MemberId(1));
        assert_eq!(drain(&mut h), vec![HubOutput::Release(sid("s"))]);
        h.handle_disconnect(MemberId(2));
        assert_eq!(
            drain(&mut h),
            vec![
                HubOutput::Release(sid("s")),
                HubOutput::Unsubscribe(sid("s"))
            ]
        );
        // A signal to a session with nobody here is still published, as .NET's Group send is.
        h.signal(MemberId(3), &sid("t"), Outbound::SignalStart);
        assert!(matches!(
            drain(&mut h).as_slice(),
            [HubOutput::Publish { session, envelope }]
                if *session == sid("t") && envelope.excluded == ["x.3"]
        ));
    }

    #[test]
    fn max_members_per_session_holds_across_the_fleet() {
        // 3 places in the fleet, 8 on each instance: the fourth member is refused on the
        // instance where it would have been the first.
        let mut f = Fleet::with_limits(3, 3, 8);
        f.call(0, 1, Some("a"), sync("s", true));
        f.call(1, 1, Some("b"), sync("s", false));
        f.call(1, 2, Some("c"), sync("s", false));
        assert_eq!(f.places("s"), vec![1, 2, 0]);
        f.call(2, 1, Some("d"), sync("s", false));
        assert_eq!(
            f.take(2),
            vec![deliver(1, err("d", &RequestError::SessionFull(3)))]
        );
        assert!(
            !f.subscribed[2].contains(&sid("s")),
            "refused: no subscription"
        );
        // Re-syncing a member already in does not take a second place.
        f.call(1, 2, Some("e"), sync("s", true));
        assert_eq!(f.places("s"), vec![1, 2, 0]);
        // One leaves on instance 1: the place is free for instance 2.
        f.disconnect(1, 1);
        assert_eq!(f.places("s"), vec![1, 1, 0]);
        f.take(2);
        f.call(2, 1, Some("f"), sync("s", false));
        assert_eq!(f.take(2)[0], deliver(1, ok("f")));
        assert_eq!(f.places("s"), vec![1, 1, 1]);
    }

    #[test]
    fn with_the_backplane_down_only_what_needs_other_instances_fails() {
        let mut f = Fleet::new(2);
        f.call(0, 1, None, sync("local", false));
        f.call(0, 2, None, sync("local", true));
        f.call(0, 3, None, sync("spans", false));
        f.call(1, 1, None, sync("spans", true));
        for hub in 0..2 {
            f.take(hub);
        }
        f.hubs[0].handle_backplane(false);
        let unavailable = RequestError::BackplaneUnavailable;
        // Joining needs the fleet-wide count: refused at once.
        f.call(0, 4, Some("j"), sync("new", false));
        assert_eq!(f.take(0), vec![deliver(4, err("j", &unavailable))]);
        // A session whose members are all here works as before, and publishes nothing.
        f.call(0, 1, Some("l"), capture("local", raw("\"o\"")));
        assert_eq!(
            f.take(0),
            vec![
                deliver(2, Outbound::SignalCapture(raw("\"o\""))),
                deliver(1, ok("l"))
            ]
        );
        assert!(f.wire.is_empty());
        // A message only a member elsewhere would get fails.
        f.call(0, 3, Some("x"), capture("spans", raw("\"o\"")));
        assert_eq!(f.take(0), vec![deliver(3, err("x", &unavailable))]);
        assert!(f.take(1).is_empty());
        // Up again: every session here is subscribed again and its places restated.
        f.places.clear();
        f.subscribed[0].clear();
        f.hubs[0].handle_backplane(true);
        f.settle();
        assert!(f.subscribed[0].contains(&sid("local")) && f.subscribed[0].contains(&sid("spans")));
        assert_eq!(f.places("local"), vec![2, 0]);
        assert_eq!(f.places("spans"), vec![1, 0]);
        f.call(0, 3, Some("y"), capture("spans", raw("\"o2\"")));
        assert_eq!(f.take(0), vec![deliver(3, ok("y"))]);
        assert_eq!(
            f.take(1),
            vec![deliver(1, Outbound::SignalCapture(raw("\"o2\"")))]
        );
    }

    #[test]
    fn a_place_granted_to_a_member_that_left_is_given_back() {
        let mut h = Hub::with_backplane(
            HubConfig {
                max_sessions: 10,
                max_members_per_session: 8,
                capture_wanted: false,
            },
            "x",
        );
        h.handle_backplane(true);
        call(&mut h, 1, Some("a"), sync("s", false));
        call(&mut h, 1, Some("b"), sync("s", true));
        let reserve = HubOutput::Reserve {
            member: MemberId(1),
            session: sid("s"),
        };
        assert_eq!(
            drain(&mut h),
            vec![HubOutput::Subscribe(sid("s")), reserve.clone()],
            "one place asked for"
        );
        // Both invocations are answered by the one grant, with the latest `ready`.
        h.handle_reservation(MemberId(1), sid("s"), Ok(()));
        assert_eq!(
            drain(&mut h),
            vec![
                HubOutput::Publish {
                    session: sid("s"),
                    envelope: Envelope::json(vec!["x.1".into()], Outbound::SignalStart.to_record()),
                },
                deliver(1, ok("a")),
                deliver(1, ok("b")),
            ]
        );
        // Member 2 asks, then disconnects before the answer: the place goes back.
        call(&mut h, 2, Some("c"), sync("s", false));
        assert_eq!(drain(&mut h).len(), 1);
        h.handle_disconnect(MemberId(2));
        h.handle_reservation(MemberId(2), sid("s"), Ok(()));
        assert_eq!(drain(&mut h), vec![HubOutput::Release(sid("s"))]);
        assert_eq!(h.members(&sid("s")), vec![MemberId(1)]);
        // Redis unreachable while a join waited: the Sync fails, nothing joins.
        call(&mut h, 3, Some("d"), sync("s", false));
        drain(&mut h);
        h.handle_reservation(
            MemberId(3),
            sid("s"),
            Err(RequestError::BackplaneUnavailable),
        );
        assert_eq!(
            drain(&mut h),
            vec![deliver(3, err("d", &RequestError::BackplaneUnavailable))]
        );
        assert_eq!(h.members(&sid("s")), vec![MemberId(1)]);
        // A refused first join here gives its subscription back.
        call(&mut h, 4, Some("e"), sync("other", false));
        assert_eq!(drain(&mut h)[0], HubOutput::Subscribe(sid("other")));
        h.handle_reservation(MemberId(4), sid("other"), Err(RequestError::SessionFull(8)));
        assert_eq!(
            drain(&mut h),
            vec![
                deliver(4, err("e", &RequestError::SessionFull(8))),
                HubOutput::Unsubscribe(sid("other"))
            ]
        );
    }

    #[test]
    fn messages_from_a_dotnet_server_reach_every_member_here() {
        let mut f = Fleet::new(1);
        f.call(0, 1, None, sync("room-1", false));
        f.call(0, 2, None, sync("room-1", false));
        f.take(0);
        // What the original server publishes for `Clients.Group("room-1").SendAsync(
        // "signalInitiator", "ans")`: no exclusions (it echoes to its sender).
        let record = b"{\"type\":1,\"target\":\"signalInitiator\",\"arguments\":[\"ans\"]}\x1e";
        let mut bytes = vec![0x92, 0x90, 0x81, 0xa4, b'j', b's', b'o', b'n', 0xc4];
        bytes.push(record.len() as u8);
        bytes.extend_from_slice(record);
        let envelope = Envelope::decode(&bytes, 1 << 20).unwrap();
        f.hubs[0]
            .handle_remote(&sid("room-1"), &envelope, Instant::now())
            .unwrap();
        f.settle();
        let ans = Outbound::SignalInitiator(raw("\"ans\""));
        assert_eq!(f.take(0), vec![deliver(1, ans.clone()), deliver(2, ans)]);
        // Excluded ids that are another instance's (or .NET's) leave members here alone,
        // while one of this instance's own makes it an echo, dropped whole.
        let other = Envelope::json(vec!["inst9.1".into()], Bytes::from_static(record));
        f.hubs[0]
            .handle_remote(&sid("room-1"), &other, Instant::now())
            .unwrap();
        f.settle();
        assert_eq!(f.take(0).len(), 2);
        let echo = Envelope::json(vec!["inst0.7".into()], Bytes::from_static(record));
        f.hubs[0]
            .handle_remote(&sid("room-1"), &echo, Instant::now())
            .unwrap();
        f.settle();
        assert!(f.take(0).is_empty());
    }

    #[test]
    fn bad_remote_records_are_errors_and_deliver_nothing() {
        let mut f = Fleet::new(1);
        f.call(0, 1, None, sync("s", false));
        f.take(0);
        let now = Instant::now();
        type Expected = fn(&RemoteError) -> bool;
        let cases: [(&[u8], Expected); 5] = [
            (b"not json\x1e", |e| matches!(e, RemoteError::BadRecord(_))),
            (b"{\"type\":3,\"target\":\"x\",\"arguments\":[]}", |e| {
                matches!(e, RemoteError::NotAnInvocation(3))
            }),
            (
                b"{\"type\":1,\"target\":\"evil\",\"arguments\":[]}\x1e",
                |e| matches!(e, RemoteError::UnknownTarget(_)),
            ),
            (
                b"{\"type\":1,\"target\":\"signalCapture\",\"arguments\":[1]}\x1e",
                |e| matches!(e, RemoteError::BadArguments(_)),
            ),
            (
                b"{\"type\":1,\"target\":\"signalStart\",\"arguments\":[\"x\"]}\x1e",
                |e| matches!(e, RemoteError::BadArguments(_)),
            ),
        ];
        for (record, expected) in cases {
            let envelope = Envelope::json(Vec::new(), Bytes::from_static(record));
            let err = f.hubs[0]
                .handle_remote(&sid("s"), &envelope, now)
                .unwrap_err();
            assert!(expected(&err), "{err}");
        }
        let no_json = Envelope {
            excluded: Vec::new(),
            serialized: vec![("messagepack".into(), Bytes::from_static(b"\x93"))],
        };
        assert_eq!(
            f.hubs[0].handle_remote(&sid("s"), &no_json, now),
            Err(RemoteError::NoJson)
        );
        f.settle();
        assert!(f.take(0).is_empty());
    }

    #[test]
    fn tokens_are_single_use_expire_and_count_against_the_limit() {
        let t0 = Instant::now();
        let mut a = Admissions::new(2, Duration::from_secs(15));
        a.negotiate("t1".into(), t0).unwrap();
        a.negotiate("t2".into(), t0).unwrap();
        assert_eq!(a.negotiate("t3".into(), t0), Err(AdmissionError::Full));
        assert_eq!(a.connect(None, t0), Err(AdmissionError::Full));
        a.connect(Some("t1"), t0).unwrap();
        assert_eq!(
            a.connect(Some("t1"), t0),
            Err(AdmissionError::UnknownToken),
            "single use"
        );
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(15)));
        assert_eq!(
            a.check(Some("t2"), t0 + Duration::from_secs(15)),
            Err(AdmissionError::UnknownToken),
            "expired"
        );
        a.connect(None, t0 + Duration::from_secs(15)).unwrap();
        assert_eq!(a.active(), 2);
        a.disconnect();
        assert_eq!(a.active(), 1);
    }

    #[test]
    fn tokens_kept_in_redis_free_their_place_here_and_adopted_ones_take_one() {
        let t0 = Instant::now();
        let mut a = Admissions::new(2, Duration::from_secs(15));
        a.negotiate("mine".into(), t0).unwrap();
        a.forget("mine");
        assert_eq!(
            a.check(Some("mine"), t0),
            Err(AdmissionError::UnknownToken),
            "only the fleet's copy is valid now"
        );
        a.adopt("theirs".into(), t0).unwrap();
        a.adopt("theirs".into(), t0).unwrap();
        a.adopt("third".into(), t0).unwrap();
        assert_eq!(
            a.adopt("fourth".into(), t0),
            Err(AdmissionError::Full),
            "max_connections holds for handed-over tokens"
        );
        a.connect(Some("theirs"), t0).unwrap();
        assert_eq!(a.active(), 1);
    }
}
