//! Dial-out: the device as the capture side of a session on a remote SnapRTC hub
//! (`[[remote]]`). Pure: no tokio, no sockets, no clock (time comes in as `Instant`).
//!
//! A [`Remote`] is one remote session's client state: the SignalR JSON protocol as a client
//! (handshake, keep-alive pings, server timeout, reconnection with backoff) and the capture
//! side's duty in the session. The shell ([`dialout`](super::dialout)) negotiates and opens
//! the WebSocket when asked ([`RemoteOutput::Connect`]), writes [`RemoteOutput::Send`] frames,
//! drops the socket on [`RemoteOutput::Close`], hands offers ([`RemoteOutput::Offer`]) to the
//! engine and the answers back ([`Remote::handle_answer`]). **Draining rule:** after every
//! `handle_*` call, drain [`Remote::poll_output`], then re-arm the timer from
//! [`Remote::poll_timeout`].
//!
//! ## Capture first, initiator later
//!
//! In the SnapRTC protocol an initiator waits for the `signalStart` that a capture side's
//! `Sync(session, true)` sends to the session, and it cannot be seen before its first message
//! (`Sync(session, false)` tells the others nothing). A device that waits in its session
//! therefore *announces*:
//!
//! - **Idle**, on a hub that cannot start initiators itself (the original .NET server), the
//!   device says `Sync(session, true)` on joining and again every `announce_interval`, so an
//!   initiator that joins later gets `signalStart` within that interval.
//! - **Never twice to one initiator while it makes its offer.** An initiator that got
//!   `signalStart` gathers and sends its offer (`signalCapture`); a second `signalStart` would
//!   make a stock page build a second peer. So announces are at least `announce_interval`
//!   apart (longer than an initiator gathers: simple-peer gives up after 5 s), and from the
//!   first offer on the device does not announce at all (**Serving**: the session is busy, one
//!   initiator at a time) until it has answered, the initiator's viewer has connected and one
//!   more `announce_interval` has passed (the initiator leaves the hub once connected), or
//!   until `exchange_timeout` when no answer comes. How long connecting takes is not ours to
//!   guess (through TURN and NATs it can pass any interval), so the engine's word that the
//!   viewer is connected ([`Remote::handle_viewer_connected`]) or gone
//!   ([`Remote::handle_viewer_gone`]) is waited for, up to `exchange_timeout` after the
//!   answer. Offers that arrive while busy are dropped: their answers would reach both
//!   initiators.
//! - **On a snaprtcd hub** (its negotiate response says `x-snaprtc-start-on-join: 1`), the hub
//!   itself sends `signalStart` to an initiator that joins while a ready capture side waits.
//!   The device then announces once per connection and does not repeat; while busy it says
//!   `Sync(session, false)` so the hub holds new initiators back, and `Sync(session, true)`
//!   when free again, which starts those that joined meanwhile.
//!
//! The original server sends every relayed message back to its sender too. The capture side
//! acts on `signalCapture` only, which only initiators send, so the echo of its own
//! `signalStart` and `signalInitiator` (and any other capture side's) is counted and ignored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::hub::{RawJson, SessionId};
use super::signalr::{check_depth, CodecError, RecordReader, RECORD_SEPARATOR};

/// The response header by which a snaprtcd hub says it starts initiators that join a session
/// where a ready capture side waits (value `1`).
pub const START_ON_JOIN_HEADER: &str = "x-snaprtc-start-on-join";

/// The first reconnection delay; it doubles up to `reconnect_max`.
pub const RECONNECT_MIN: Duration = Duration::from_secs(1);

/// Deepest nesting of a hub message accepted (SignalR messages nest 2-3 deep).
const MAX_JSON_DEPTH: usize = 8;

/// Timings and limits of one remote session.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// The session to wait in.
    pub session: SessionId,
    /// Gap between announces while idle (and the settle time after an answer).
    pub announce_interval: Duration,
    /// Longest wait from an offer to its answer.
    pub exchange_timeout: Duration,
    /// Negotiate + WebSocket + handshake deadline.
    pub connect_timeout: Duration,
    /// Longest gap between reconnection attempts.
    pub reconnect_max: Duration,
    /// A ping goes out after this long without sending.
    pub keepalive: Duration,
    /// The connection is dropped after this long without hearing from the hub.
    pub server_timeout: Duration,
    /// Largest record from the hub.
    pub max_message_bytes: usize,
}

/// What the remote session is doing, for `/health`, the status line and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteState {
    /// First connection attempt under way.
    Connecting,
    /// Joined, waiting for an initiator.
    Idle,
    /// An initiator is being served; the session is busy.
    Serving,
    /// The link dropped or an attempt failed; waiting to try again, or trying.
    Reconnecting,
}

impl RemoteState {
    /// The state's name in `/health` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteState::Connecting => "connecting",
            RemoteState::Idle => "idle",
            RemoteState::Serving => "serving",
            RemoteState::Reconnecting => "reconnecting",
        }
    }

    /// The metric value: 0 connecting, 1 idle, 2 serving, 3 reconnecting.
    pub fn as_number(self) -> u8 {
        self as u8
    }
}

/// Counts of what happened on one remote session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteCounters {
    /// Connections that completed the handshake.
    pub connects: u64,
    /// Connections lost or attempts that failed.
    pub failures: u64,
    /// `Sync(session, true)` sent.
    pub announces: u64,
    /// Offers handed to the engine.
    pub offers: u64,
    /// Answers sent.
    pub answers: u64,
    /// Offers dropped because the session was busy.
    pub busy_offers: u64,
    /// Echoes (`signalStart`, `signalInitiator`) ignored.
    pub echoes: u64,
}

/// What the shell must do, drained with [`Remote::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteOutput {
    /// Negotiate and open the WebSocket now; then [`Remote::handle_open`] or
    /// [`Remote::handle_failed`].
    Connect,
    /// Write this text frame (one record, separator included).
    Send(Bytes),
    /// Drop the WebSocket (the state machine already counts it as gone).
    Close,
    /// An initiator's offer (the `signalCapture` argument, a JSON string): answer it and
    /// hand the reply to [`Remote::handle_answer`].
    Offer(RawJson),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    /// No connection; try again at `retry_at`.
    Down { retry_at: Instant },
    /// Negotiating / opening the WebSocket.
    Opening { deadline: Instant },
    /// WebSocket open, handshake sent.
    Handshaking { deadline: Instant },
    /// Handshake done.
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Duty {
    /// Waiting for an initiator; the next announce is due at `next_announce` (`None`: no more
    /// on this connection).
    Idle { next_announce: Option<Instant> },
    /// Busy with one initiator until `until`; `connecting`: answered, its viewer not yet
    /// connected.
    Serving { until: Instant, connecting: bool },
}

/// Why the link dropped, in words for `/health` and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The shell could not connect, or the socket failed (its words).
    #[error("{0}")]
    Transport(String),
    /// Negotiate, WebSocket and handshake took longer than `connect_timeout`.
    #[error("no connection within connect_timeout ({0:?})")]
    ConnectTimeout(Duration),
    /// Nothing heard from the hub for `server_timeout`.
    #[error("hub silent for {0:?} (server timeout)")]
    ServerTimeout(Duration),
    /// The hub refused the handshake.
    #[error("hub refused the handshake: {0}")]
    Handshake(String),
    /// The hub closed the connection (its reason).
    #[error("hub closed the connection: {0}")]
    Closed(String),
    /// The hub answered a call with an error.
    #[error("hub refused {method}: {error}")]
    Refused {
        /// The hub method called.
        method: &'static str,
        /// The hub's words.
        error: String,
    },
    /// Bytes that are not the SignalR JSON protocol, or over the size limit.
    #[error("bad message from the hub: {0}")]
    Codec(#[from] CodecError),
}

/// A message from the hub, typed as far as the capture side needs.
#[derive(Debug, Clone, PartialEq)]
pub enum HubMessage {
    /// `type: 1`: a client method called, with the target's name as sent.
    Invocation {
        /// The client method.
        target: String,
        /// Its arguments, raw.
        arguments: Vec<RawJson>,
    },
    /// `type: 3`: the answer to one of our calls.
    Completion {
        /// Which call.
        invocation_id: String,
        /// The hub's error, if it failed.
        error: Option<String>,
    },
    /// `type: 6`.
    Ping,
    /// `type: 7`.
    Close {
        /// The hub's reason.
        error: Option<String>,
    },
    /// Any other type (streaming, acks, future ones): ignored.
    Other(u64),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage {
    #[serde(rename = "type")]
    kind: Option<u64>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    arguments: Option<Vec<Box<RawValue>>>,
    #[serde(default)]
    invocation_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

impl HubMessage {
    /// Decode one record (without its separator).
    pub fn decode(record: &[u8]) -> Result<HubMessage, CodecError> {
        check_depth(record, MAX_JSON_DEPTH)?;
        let wire: WireMessage =
            serde_json::from_slice(record).map_err(|e| CodecError::Json(e.to_string()))?;
        match wire.kind.ok_or(CodecError::MissingType)? {
            1 => Ok(HubMessage::Invocation {
                target: wire
                    .target
                    .ok_or(CodecError::Malformed("invocation without 'target'"))?,
                arguments: wire
                    .arguments
                    .unwrap_or_default()
                    .into_iter()
                    .map(RawJson::from)
                    .collect(),
            }),
            3 => Ok(HubMessage::Completion {
                invocation_id: wire
                    .invocation_id
                    .ok_or(CodecError::Malformed("completion without 'invocationId'"))?,
                error: wire.error,
            }),
            6 => Ok(HubMessage::Ping),
            7 => Ok(HubMessage::Close { error: wire.error }),
            other => Ok(HubMessage::Other(other)),
        }
    }
}

/// The handshake response: `{}` or `{"error":"…"}`.
fn decode_handshake(record: &[u8]) -> Result<Option<String>, CodecError> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(default)]
        error: Option<String>,
    }
    check_depth(record, MAX_JSON_DEPTH)?;
    let wire: Wire = serde_json::from_slice(record).map_err(|e| CodecError::Json(e.to_string()))?;
    Ok(wire.error)
}

/// The client's handshake record.
pub fn handshake_record() -> Bytes {
    Bytes::from_static(b"{\"protocol\":\"json\",\"version\":1}\x1e")
}

/// An `invoke` record: `{"type":1,"invocationId":…,"target":…,"arguments":[…]}␞`.
fn invocation_record(id: u64, target: &str, arguments: &[serde_json::Value]) -> Bytes {
    let mut out = serde_json::to_vec(&serde_json::json!({
        "type": 1,
        "invocationId": id.to_string(),
        "target": target,
        "arguments": arguments,
    }))
    .unwrap_or_default();
    out.push(RECORD_SEPARATOR);
    Bytes::from(out)
}

/// One remote session's state (see the module docs).
#[derive(Debug)]
pub struct Remote {
    settings: RemoteSettings,
    link: Link,
    duty: Duty,
    /// The hub starts joining initiators itself (snaprtcd hub).
    start_on_join: bool,
    reader: RecordReader,
    last_sent: Instant,
    last_heard: Instant,
    last_announce: Option<Instant>,
    /// In the session's group on this connection (a `Sync` went out).
    joined: bool,
    next_id: u64,
    /// Our pending calls: invocation id → method.
    calls: Vec<(String, &'static str)>,
    /// Failures in a row (for the backoff).
    streak: u32,
    ever_up: bool,
    error: Option<String>,
    counters: RemoteCounters,
    outputs: VecDeque<RemoteOutput>,
    jitter: u64,
}

impl Remote {
    /// A remote session that starts connecting now. `seed` spreads reconnection delays (any
    /// value; random in the daemon, so a fleet does not reconnect in step).
    pub fn new(settings: RemoteSettings, now: Instant, seed: u64) -> Self {
        let reader = RecordReader::new(settings.max_message_bytes);
        let mut remote = Self {
            link: Link::Opening {
                deadline: now + settings.connect_timeout,
            },
            duty: Duty::Idle {
                next_announce: None,
            },
            settings,
            start_on_join: false,
            reader,
            last_sent: now,
            last_heard: now,
            last_announce: None,
            joined: false,
            next_id: 0,
            calls: Vec::new(),
            streak: 0,
            ever_up: false,
            error: None,
            counters: RemoteCounters::default(),
            outputs: VecDeque::new(),
            jitter: seed | 1,
        };
        remote.outputs.push_back(RemoteOutput::Connect);
        remote
    }

    /// The session waited in.
    pub fn session(&self) -> &SessionId {
        &self.settings.session
    }

    /// What it is doing now.
    pub fn state(&self) -> RemoteState {
        match (self.link, self.duty) {
            (Link::Up, Duty::Idle { .. }) => RemoteState::Idle,
            (Link::Up, Duty::Serving { .. }) => RemoteState::Serving,
            _ if self.ever_up || self.counters.failures > 0 => RemoteState::Reconnecting,
            _ => RemoteState::Connecting,
        }
    }

    /// Why the link last dropped or an attempt last failed (cleared by a good handshake).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Whether the hub starts joining initiators itself.
    pub fn start_on_join(&self) -> bool {
        self.start_on_join
    }

    /// What happened so far.
    pub fn counters(&self) -> RemoteCounters {
        self.counters
    }

    /// Input: the WebSocket is open. `start_on_join`: the negotiate response carried
    /// [`START_ON_JOIN_HEADER`].
    pub fn handle_open(&mut self, start_on_join: bool, now: Instant) {
        let Link::Opening { deadline } = self.link else {
            return;
        };
        self.link = Link::Handshaking { deadline };
        self.start_on_join = start_on_join;
        self.reader = RecordReader::new(self.settings.max_message_bytes);
        self.calls.clear();
        self.joined = false;
        self.last_heard = now;
        self.send(handshake_record(), now);
    }

    /// Input: connecting failed, or the open socket failed or closed (`error` says how).
    pub fn handle_failed(&mut self, error: &str, now: Instant) {
        if matches!(self.link, Link::Down { .. }) {
            return;
        }
        self.drop_link(RemoteError::Transport(error.to_owned()), false, now);
    }

    /// Input: a text (or binary) frame from the hub.
    pub fn handle_text(&mut self, data: &[u8], now: Instant) {
        if !matches!(self.link, Link::Handshaking { .. } | Link::Up) {
            return;
        }
        self.last_heard = now;
        let mut records = Vec::new();
        if let Err(e) = self.reader.feed(data, &mut records) {
            self.drop_link(e.into(), true, now);
            return;
        }
        for record in records {
            if let Err(e) = self.handle_record(&record, now) {
                self.drop_link(e, true, now);
                return;
            }
        }
    }

    /// Input: the engine's reply to the last [`RemoteOutput::Offer`] (a JSON string: the
    /// answer or an error signal, from the capture member's code). It goes out as
    /// `SignalInitiator`. `viewer`: the engine made a viewer for it, and the shell will say
    /// when it connects or goes ([`Remote::handle_viewer_connected`],
    /// [`Remote::handle_viewer_gone`]); the session stays busy until then (at most
    /// `exchange_timeout`) and one `announce_interval` more, while the initiator leaves the
    /// hub. Without a viewer (an error signal), one `announce_interval` from now.
    pub fn handle_answer(&mut self, payload: RawJson, viewer: bool, now: Instant) {
        if self.link != Link::Up {
            return;
        }
        let payload = serde_json::from_str::<serde_json::Value>(payload.get())
            .unwrap_or(serde_json::Value::Null);
        self.invoke(
            "SignalInitiator",
            &[self.settings.session.as_str().into(), payload],
            now,
        );
        self.counters.answers += 1;
        self.duty = Duty::Serving {
            until: now
                + if viewer {
                    self.settings
                        .exchange_timeout
                        .max(self.settings.announce_interval)
                } else {
                    self.settings.announce_interval
                },
            connecting: viewer,
        };
    }

    /// Input: the viewer made for the last answer is connected: the session stays busy one
    /// `announce_interval` more, while the initiator leaves the hub.
    pub fn handle_viewer_connected(&mut self, now: Instant) {
        if let Duty::Serving {
            connecting: true, ..
        } = self.duty
        {
            self.duty = Duty::Serving {
                until: now + self.settings.announce_interval,
                connecting: false,
            };
        }
    }

    /// Input: the viewer made for the last answer is gone without connecting (ICE failed, or
    /// silent): the session is free again (the next announce keeps its interval from the last).
    pub fn handle_viewer_gone(&mut self, now: Instant) {
        if let Duty::Serving {
            connecting: true, ..
        } = self.duty
        {
            if self.link == Link::Up {
                self.become_idle(now);
            }
        }
    }

    /// Input: the time; timers due at or before `now` fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.link {
            Link::Down { retry_at } if now >= retry_at => {
                self.link = Link::Opening {
                    deadline: now + self.settings.connect_timeout,
                };
                self.outputs.push_back(RemoteOutput::Connect);
            }
            Link::Opening { deadline } | Link::Handshaking { deadline } if now >= deadline => {
                let e = RemoteError::ConnectTimeout(self.settings.connect_timeout);
                self.drop_link(e, true, now);
            }
            Link::Up => self.up_timers(now),
            _ => {}
        }
    }

    /// When [`Remote::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.link {
            Link::Down { retry_at } => Some(retry_at),
            Link::Opening { deadline } | Link::Handshaking { deadline } => Some(deadline),
            Link::Up => {
                let mut next = (self.last_heard + self.settings.server_timeout)
                    .min(self.last_sent + self.settings.keepalive);
                match self.duty {
                    Duty::Idle {
                        next_announce: Some(at),
                    } => next = next.min(at),
                    Duty::Serving { until, .. } => next = next.min(until),
                    Duty::Idle {
                        next_announce: None,
                    } => {}
                }
                Some(next)
            }
        }
    }

    /// The next thing for the shell to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<RemoteOutput> {
        self.outputs.pop_front()
    }

    fn up_timers(&mut self, now: Instant) {
        if now >= self.last_heard + self.settings.server_timeout {
            let e = RemoteError::ServerTimeout(self.settings.server_timeout);
            self.drop_link(e, true, now);
            return;
        }
        match self.duty {
            Duty::Serving { until, .. } if now >= until => self.become_idle(now),
            Duty::Idle {
                next_announce: Some(at),
            } if now >= at => self.announce(now),
            _ => {}
        }
        if now >= self.last_sent + self.settings.keepalive {
            self.send(Bytes::from_static(b"{\"type\":6}\x1e"), now);
        }
    }

    fn handle_record(&mut self, record: &[u8], now: Instant) -> Result<(), RemoteError> {
        if let Link::Handshaking { .. } = self.link {
            if let Some(error) = decode_handshake(record)? {
                return Err(RemoteError::Handshake(error));
            }
            self.link = Link::Up;
            self.ever_up = true;
            self.streak = 0;
            self.error = None;
            self.counters.connects += 1;
            // (Re)joining: announce now, unless an announce went out less than an interval
            // ago (a link that dropped right after it: an initiator may be gathering).
            self.duty = Duty::Idle {
                next_announce: None,
            };
            self.become_idle(now);
            return Ok(());
        }
        match HubMessage::decode(record)? {
            HubMessage::Invocation { target, arguments } => {
                self.handle_invocation(&target, arguments, now)
            }
            HubMessage::Completion {
                invocation_id,
                error,
            } => {
                let method = self
                    .calls
                    .iter()
                    .position(|(id, _)| *id == invocation_id)
                    .map(|i| self.calls.swap_remove(i).1);
                match (method, error) {
                    (Some(method), Some(error)) => Err(RemoteError::Refused { method, error }),
                    _ => Ok(()),
                }
            }
            HubMessage::Ping | HubMessage::Other(_) => Ok(()),
            HubMessage::Close { error } => Err(RemoteError::Closed(
                error.unwrap_or_else(|| "no reason given".to_owned()),
            )),
        }
    }

    fn handle_invocation(
        &mut self,
        target: &str,
        arguments: Vec<RawJson>,
        now: Instant,
    ) -> Result<(), RemoteError> {
        if target.eq_ignore_ascii_case("signalCapture") {
            let Ok([payload]) = <[RawJson; 1]>::try_from(arguments) else {
                return Err(CodecError::Malformed("signalCapture takes one argument").into());
            };
            if !payload.get().starts_with('"') {
                return Err(
                    CodecError::Malformed("signalCapture's argument is not a string").into(),
                );
            }
            match self.duty {
                Duty::Idle { .. } => {
                    self.counters.offers += 1;
                    self.duty = Duty::Serving {
                        until: now + self.settings.exchange_timeout,
                        connecting: false,
                    };
                    if self.start_on_join {
                        // Hold new initiators back while this one is served.
                        let session = self.settings.session.as_str().into();
                        self.invoke("Sync", &[session, false.into()], now);
                    }
                    self.outputs.push_back(RemoteOutput::Offer(payload));
                }
                Duty::Serving { .. } => self.counters.busy_offers += 1,
            }
        } else if target.eq_ignore_ascii_case("signalStart")
            || target.eq_ignore_ascii_case("signalInitiator")
        {
            // Our own echo (the original server relays to the sender too), or another
            // capture side's: nothing for a capture side to do.
            self.counters.echoes += 1;
        }
        Ok(())
    }

    /// Free for the next initiator: announce now, or as soon as the last announce is an
    /// interval old.
    fn become_idle(&mut self, now: Instant) {
        let due = match self.last_announce {
            Some(last) => (last + self.settings.announce_interval).max(now),
            None => now,
        };
        self.duty = Duty::Idle {
            next_announce: Some(due),
        };
        if due <= now {
            self.announce(now);
        } else if !self.joined {
            // Join the group now (an offer for us must reach us), ready later.
            let session = self.settings.session.as_str().into();
            self.invoke("Sync", &[session, false.into()], now);
            self.joined = true;
        }
    }

    fn announce(&mut self, now: Instant) {
        let session = self.settings.session.as_str().into();
        self.invoke("Sync", &[session, true.into()], now);
        self.counters.announces += 1;
        self.last_announce = Some(now);
        self.joined = true;
        self.duty = Duty::Idle {
            next_announce: (!self.start_on_join).then(|| now + self.settings.announce_interval),
        };
    }

    fn invoke(&mut self, method: &'static str, arguments: &[serde_json::Value], now: Instant) {
        self.next_id += 1;
        let id = self.next_id;
        // Completions the hub never sends must not pile up.
        if self.calls.len() >= 64 {
            self.calls.remove(0);
        }
        self.calls.push((id.to_string(), method));
        self.send(invocation_record(id, method, arguments), now);
    }

    fn send(&mut self, record: Bytes, now: Instant) {
        self.last_sent = now;
        self.outputs.push_back(RemoteOutput::Send(record));
    }

    fn drop_link(&mut self, error: RemoteError, close: bool, now: Instant) {
        if close {
            self.outputs.push_back(RemoteOutput::Close);
        }
        self.counters.failures += 1;
        self.error = Some(error.to_string());
        self.streak = self.streak.saturating_add(1);
        self.link = Link::Down {
            retry_at: now + self.backoff(),
        };
        // An offer in flight cannot be answered on this link; the next connection starts idle.
        self.duty = Duty::Idle {
            next_announce: None,
        };
        self.calls.clear();
    }

    /// 1 s, 2 s, 4 s … up to `reconnect_max`, each shortened by up to a quarter at random.
    fn backoff(&mut self) -> Duration {
        let exp = self.streak.saturating_sub(1).min(20);
        let base = RECONNECT_MIN
            .saturating_mul(1u32 << exp)
            .min(self.settings.reconnect_max);
        // xorshift64: enough to spread a fleet.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let quarter = base / 4;
        let cut = quarter.mul_f64((self.jitter % 1024) as f64 / 1024.0);
        base - cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn settings() -> RemoteSettings {
        RemoteSettings {
            session: SessionId::parse("dev-1").unwrap(),
            announce_interval: 10 * S,
            exchange_timeout: 30 * S,
            connect_timeout: 10 * S,
            reconnect_max: 30 * S,
            keepalive: 15 * S,
            server_timeout: 30 * S,
            max_message_bytes: 4096,
        }
    }

    fn drain(r: &mut Remote) -> Vec<RemoteOutput> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    /// The records sent, as text.
    fn sent(outputs: &[RemoteOutput]) -> Vec<String> {
        outputs
            .iter()
            .filter_map(|o| match o {
                RemoteOutput::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn announces(outputs: &[RemoteOutput]) -> usize {
        sent(outputs)
            .iter()
            .filter(|s| s.contains("\"Sync\"") && s.contains("true"))
            .count()
    }

    fn offers(outputs: &[RemoteOutput]) -> usize {
        outputs
            .iter()
            .filter(|o| matches!(o, RemoteOutput::Offer(_)))
            .count()
    }

    /// Step virtual time from `from` to `to` in `step`s, the hub pinging at each step, firing
    /// timers; all outputs.
    fn run(r: &mut Remote, from: Instant, to: Instant, step: Duration) -> Vec<RemoteOutput> {
        let mut out = Vec::new();
        let mut now = from;
        while now <= to {
            r.handle_text(b"{\"type\":6}\x1e", now);
            r.handle_timeout(now);
            out.extend(drain(r));
            now += step;
        }
        out
    }

    /// A remote that completed its handshake at `t0` (hub kind per `start_on_join`).
    fn connected(start_on_join: bool) -> (Remote, Instant, Vec<RemoteOutput>) {
        let t0 = Instant::now();
        let mut r = Remote::new(settings(), t0, 7);
        assert_eq!(drain(&mut r), vec![RemoteOutput::Connect]);
        r.handle_open(start_on_join, t0);
        let hs = drain(&mut r);
        assert_eq!(
            sent(&hs),
            vec!["{\"protocol\":\"json\",\"version\":1}\u{1e}"]
        );
        assert_eq!(r.state(), RemoteState::Connecting);
        r.handle_text(b"{}\x1e", t0);
        let out = drain(&mut r);
        (r, t0, out)
    }

    const OFFER: &[u8] = b"{\"type\":1,\"target\":\"signalCapture\",\"arguments\":[\"N4Ig\"]}\x1e";

    #[test]
    fn joins_as_the_capture_side_after_the_handshake() {
        let (r, _, out) = connected(false);
        assert_eq!(
            sent(&out),
            vec![
                "{\"arguments\":[\"dev-1\",true],\"invocationId\":\"1\",\"target\":\"Sync\",\"type\":1}\u{1e}"
            ]
        );
        assert_eq!(r.state(), RemoteState::Idle);
        assert_eq!(r.counters().connects, 1);
    }

    #[test]
    fn a_dotnet_hub_gets_an_announce_every_interval_while_idle() {
        let (mut r, t0, out) = connected(false);
        assert_eq!(announces(&out), 1);
        // 0 s (above), then 10, 20, 30, 40, 50, 60 s.
        let out = run(&mut r, t0, t0 + 60 * S, S / 2);
        assert_eq!(announces(&out), 6);
        // Pings go out only when nothing else was sent for 15 s: announces every 10 s are
        // traffic enough.
        assert!(!sent(&out).iter().any(|s| s.contains("\"type\":6")));
    }

    #[test]
    fn a_snaprtcd_hub_gets_one_announce_per_connection() {
        let (mut r, t0, out) = connected(true);
        assert_eq!(announces(&out), 1);
        let mut out = Vec::new();
        for second in 1..=60 {
            let now = t0 + second * S;
            if second % 10 == 0 {
                r.handle_text(b"{\"type\":6}\x1e", now);
            }
            r.handle_timeout(now);
            out.extend(drain(&mut r));
        }
        assert_eq!(announces(&out), 0);
        // Keep-alive pings instead, every 15 s.
        let pings = sent(&out)
            .iter()
            .filter(|s| *s == "{\"type\":6}\u{1e}")
            .count();
        assert_eq!(pings, 4, "{out:?}");
        assert_eq!(r.state(), RemoteState::Idle);
    }

    #[test]
    fn no_second_signal_start_while_an_initiator_offers() {
        let (mut r, t0, _) = connected(false);
        // An initiator got the announce at 0 s and offers at 9.5 s (gathering took long).
        let out = run(&mut r, t0, t0 + 9 * S, S / 2);
        assert_eq!(announces(&out), 0, "no announce within the interval");
        r.handle_text(OFFER, t0 + 9 * S + S / 2);
        let out = drain(&mut r);
        assert_eq!(offers(&out), 1);
        assert_eq!(r.state(), RemoteState::Serving);
        // The engine takes 2 s to answer; nothing is announced meanwhile.
        let out = run(&mut r, t0 + 10 * S, t0 + 11 * S, S / 4);
        assert_eq!(announces(&out), 0);
        r.handle_answer(
            RawJson::from_string("\"ANSWER\"".into()).unwrap(),
            false,
            t0 + 11 * S,
        );
        let out = drain(&mut r);
        let texts = sent(&out);
        assert_eq!(texts.len(), 1);
        assert!(texts[0].contains("\"SignalInitiator\""));
        assert!(texts[0].contains("[\"dev-1\",\"ANSWER\"]"));
        // Busy one more interval while the initiator connects and leaves; then free again.
        let out = run(&mut r, t0 + 11 * S, t0 + 21 * S - S / 4, S / 4);
        assert_eq!(announces(&out), 0);
        assert_eq!(r.state(), RemoteState::Serving);
        let out = run(&mut r, t0 + 21 * S, t0 + 21 * S, S);
        assert_eq!(announces(&out), 1);
        assert_eq!(r.state(), RemoteState::Idle);
    }

    /// On a .NET-like hub: an offer at 1 s, answered at 2 s with a viewer still connecting.
    fn answered_with_a_viewer() -> (Remote, Instant) {
        let (mut r, t0, _) = connected(false);
        r.handle_text(OFFER, t0 + S);
        let answer = RawJson::from_string("\"ANSWER\"".into()).unwrap();
        r.handle_answer(answer, true, t0 + 2 * S);
        drain(&mut r);
        (r, t0)
    }

    #[test]
    fn a_slow_connection_gets_no_second_signal_start_before_its_viewer_connects() {
        let (mut r, t0) = answered_with_a_viewer();
        // Through TURN and two NATs the viewer takes 18 s to connect: an announce one
        // interval after the answer (12 s) would reach a page that has not yet left the hub.
        let out = run(&mut r, t0 + 2 * S, t0 + 20 * S, S / 4);
        assert_eq!(announces(&out), 0);
        assert_eq!(r.state(), RemoteState::Serving);
        r.handle_viewer_connected(t0 + 20 * S);
        // Then one interval while the initiator leaves, and free again.
        let out = run(&mut r, t0 + 20 * S, t0 + 30 * S - S / 4, S / 4);
        assert_eq!(announces(&out), 0);
        let out = run(&mut r, t0 + 30 * S, t0 + 30 * S, S);
        assert_eq!(announces(&out), 1);
        assert_eq!(r.state(), RemoteState::Idle);
        // A late word about a viewer changes nothing once idle.
        r.handle_viewer_gone(t0 + 31 * S);
        r.handle_viewer_connected(t0 + 31 * S);
        assert_eq!(r.state(), RemoteState::Idle);
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn a_viewer_that_fails_or_never_says_frees_the_session() {
        // Gone without connecting: free at once (the last announce was long enough ago).
        let (mut r, t0) = answered_with_a_viewer();
        let out = run(&mut r, t0 + 2 * S, t0 + 16 * S, S);
        assert_eq!(announces(&out), 0);
        r.handle_viewer_gone(t0 + 17 * S);
        assert_eq!(announces(&drain(&mut r)), 1);
        assert_eq!(r.state(), RemoteState::Idle);

        // No word at all: free `exchange_timeout` after the answer.
        let (mut r, t0) = answered_with_a_viewer();
        let out = run(&mut r, t0 + 2 * S, t0 + 32 * S - S / 4, S / 4);
        assert_eq!(announces(&out), 0);
        let out = run(&mut r, t0 + 32 * S, t0 + 32 * S, S);
        assert_eq!(announces(&out), 1);
    }

    #[test]
    fn one_initiator_at_a_time_offers_while_busy_are_dropped() {
        let (mut r, t0, _) = connected(false);
        r.handle_text(OFFER, t0 + S);
        r.handle_text(OFFER, t0 + 2 * S);
        let out = drain(&mut r);
        assert_eq!(offers(&out), 1);
        assert_eq!(r.counters().busy_offers, 1);
    }

    #[test]
    fn an_unanswered_offer_frees_the_session_after_the_exchange_timeout() {
        let (mut r, t0, _) = connected(false);
        r.handle_text(OFFER, t0 + S);
        drain(&mut r);
        let out = run(&mut r, t0 + S, t0 + 31 * S - S / 4, S / 4);
        assert_eq!(announces(&out), 0);
        let out = run(&mut r, t0 + 31 * S, t0 + 31 * S, S);
        assert_eq!(announces(&out), 1);
        // The answer of the timed-out exchange still goes out if it comes.
        r.handle_answer(
            RawJson::from_string("\"late\"".into()).unwrap(),
            false,
            t0 + 32 * S,
        );
        assert_eq!(sent(&drain(&mut r)).len(), 1);
    }

    #[test]
    fn a_snaprtcd_hub_is_told_the_session_is_busy_and_free_again() {
        let (mut r, t0, _) = connected(true);
        r.handle_text(OFFER, t0 + S);
        let out = drain(&mut r);
        assert!(sent(&out)[0].contains("[\"dev-1\",false]"), "{out:?}");
        r.handle_answer(
            RawJson::from_string("\"A\"".into()).unwrap(),
            false,
            t0 + 2 * S,
        );
        drain(&mut r);
        let out = run(&mut r, t0 + 2 * S, t0 + 12 * S, S);
        assert_eq!(
            announces(&out),
            1,
            "ready again once the initiator had its interval"
        );
        let out = run(&mut r, t0 + 13 * S, t0 + 60 * S, S);
        assert_eq!(announces(&out), 0);
    }

    #[test]
    fn echoes_are_ignored() {
        let (mut r, t0, _) = connected(false);
        r.handle_text(
            b"{\"type\":1,\"target\":\"signalStart\",\"arguments\":[]}\x1e",
            t0,
        );
        r.handle_text(b"{\"type\":3,\"invocationId\":\"1\"}\x1e", t0);
        r.handle_text(OFFER, t0 + S);
        drain(&mut r);
        r.handle_answer(
            RawJson::from_string("\"A\"".into()).unwrap(),
            false,
            t0 + 2 * S,
        );
        drain(&mut r);
        // The original server echoes our answer back to us.
        r.handle_text(
            b"{\"type\":1,\"target\":\"signalInitiator\",\"arguments\":[\"A\"]}\x1e",
            t0 + 2 * S,
        );
        let out = drain(&mut r);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(r.counters().echoes, 2);
        assert_eq!(r.state(), RemoteState::Serving);
    }

    #[test]
    fn reconnects_with_backoff_and_syncs_again() {
        let (mut r, t0, _) = connected(false);
        r.handle_failed("connection reset", t0 + S);
        assert_eq!(r.state(), RemoteState::Reconnecting);
        assert_eq!(r.error(), Some("connection reset"));
        assert!(drain(&mut r).is_empty());
        // The first retry comes within 1 s (shortened by up to a quarter).
        let retry = r.poll_timeout().unwrap();
        assert!(retry > t0 + S + S / 2 && retry <= t0 + 2 * S, "{retry:?}");
        r.handle_timeout(retry);
        assert_eq!(drain(&mut r), vec![RemoteOutput::Connect]);
        // That attempt fails too: the next wait is longer.
        r.handle_failed("refused", retry);
        let second = r.poll_timeout().unwrap() - retry;
        assert!(second > S + S / 2 && second <= 2 * S, "{second:?}");
        r.handle_timeout(retry + second);
        assert_eq!(drain(&mut r), vec![RemoteOutput::Connect]);
        let t = retry + second;
        r.handle_open(false, t);
        drain(&mut r);
        r.handle_text(b"{}\x1e", t);
        let out = drain(&mut r);
        // Back in the session at once, but not ready yet: the announce at 0 s is less than an
        // interval old, and an initiator that got it may still be gathering.
        assert_eq!(announces(&out), 0, "{out:?}");
        assert!(sent(&out)[0].contains("[\"dev-1\",false]"), "{out:?}");
        assert_eq!(r.state(), RemoteState::Idle);
        let out = run(&mut r, t, t0 + 10 * S - S / 10, S / 10);
        assert_eq!(announces(&out), 0);
        let out = run(&mut r, t0 + 10 * S, t0 + 10 * S, S);
        assert_eq!(announces(&out), 1, "re-Sync after the drop");
        assert_eq!(r.error(), None);
        assert_eq!(r.counters().connects, 2);
    }

    #[test]
    fn backoff_is_capped() {
        let t0 = Instant::now();
        let mut r = Remote::new(settings(), t0, 99);
        let mut now = t0;
        for _ in 0..12 {
            drain(&mut r);
            r.handle_failed("refused", now);
            let wait = r.poll_timeout().unwrap() - now;
            assert!(wait <= 30 * S, "{wait:?}");
            now += wait;
            r.handle_timeout(now);
        }
        assert!(r.poll_timeout().unwrap() - now <= 10 * S);
    }

    #[test]
    fn a_silent_hub_is_dropped_after_the_server_timeout() {
        let (mut r, t0, _) = connected(true);
        r.handle_timeout(t0 + 30 * S - S / 10);
        assert!(!drain(&mut r).contains(&RemoteOutput::Close));
        r.handle_timeout(t0 + 30 * S);
        assert!(drain(&mut r).contains(&RemoteOutput::Close));
        assert_eq!(r.state(), RemoteState::Reconnecting);
        assert!(r.error().unwrap().contains("server timeout"));
    }

    #[test]
    fn hub_pings_keep_the_link() {
        let (mut r, t0, _) = connected(true);
        let mut now = t0;
        for _ in 0..10 {
            now += 15 * S;
            r.handle_text(b"{\"type\":6}\x1e", now);
            r.handle_timeout(now);
        }
        assert_eq!(r.state(), RemoteState::Idle);
    }

    #[test]
    fn a_stalled_connect_times_out() {
        let t0 = Instant::now();
        let mut r = Remote::new(settings(), t0, 1);
        drain(&mut r);
        r.handle_timeout(t0 + 10 * S);
        assert_eq!(drain(&mut r), vec![RemoteOutput::Close]);
        assert!(r.error().unwrap().contains("connect_timeout"));
    }

    #[test]
    fn refusals_and_junk_drop_the_link() {
        let cases: &[&[u8]] = &[
            b"{\"type\":3,\"invocationId\":\"1\",\"error\":\"Session is full (3 members).\"}\x1e",
            b"{\"type\":7,\"error\":\"bye\"}\x1e",
            b"not json\x1e",
            b"{\"type\":1,\"target\":\"signalCapture\",\"arguments\":[1]}\x1e",
            b"[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]\x1e",
            b"{\"target\":\"x\"}\x1e",
        ];
        for case in cases {
            let (mut r, t0, _) = connected(false);
            r.handle_text(case, t0);
            let out = drain(&mut r);
            assert_eq!(
                out,
                vec![RemoteOutput::Close],
                "{}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(r.state(), RemoteState::Reconnecting);
        }
    }

    #[test]
    fn a_refused_handshake_is_reported() {
        let t0 = Instant::now();
        let mut r = Remote::new(settings(), t0, 1);
        r.handle_open(false, t0);
        drain(&mut r);
        r.handle_text(
            b"{\"error\":\"Requested protocol 'json' is not available.\"}\x1e",
            t0,
        );
        assert_eq!(drain(&mut r), vec![RemoteOutput::Close]);
        assert!(r.error().unwrap().contains("not available"));
    }

    #[test]
    fn an_oversized_record_drops_the_link_without_holding_it() {
        let (mut r, t0, _) = connected(false);
        let chunk = vec![b'a'; 1000];
        for _ in 0..4 {
            r.handle_text(&chunk, t0);
        }
        assert!(drain(&mut r).is_empty());
        r.handle_text(&chunk, t0);
        assert_eq!(drain(&mut r), vec![RemoteOutput::Close]);
        assert!(r.error().unwrap().contains("larger than the limit"));
    }

    #[test]
    fn unknown_message_types_and_targets_are_ignored() {
        let (mut r, t0, _) = connected(false);
        r.handle_text(b"{\"type\":2,\"invocationId\":\"9\",\"item\":1}\x1e", t0);
        r.handle_text(
            b"{\"type\":1,\"target\":\"newThing\",\"arguments\":[]}\x1e",
            t0,
        );
        r.handle_text(
            b"{\"type\":3,\"invocationId\":\"77\",\"error\":\"not ours\"}\x1e",
            t0,
        );
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.state(), RemoteState::Idle);
    }
}
