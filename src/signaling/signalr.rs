//! The SignalR JSON hub protocol, version 1, as `@microsoft/signalr` speaks it. Pure: no tokio,
//! no sockets, no clock (time comes in as `Instant`).
//!
//! A [`Connection`] is one client's protocol state: it takes WebSocket frames
//! ([`Connection::handle_text`], [`Connection::handle_binary`]) and the time
//! ([`Connection::handle_timeout`]) and yields [`ConnOutput`]s: bytes to write, typed hub
//! requests, or "close now". **Draining rule:** after every `handle_*` call, call
//! [`Connection::poll_output`] until it returns `None`, then re-arm the timer from
//! [`Connection::poll_timeout`].
//!
//! Records are JSON texts each ended by `0x1E`; one frame may carry several and a record may
//! span frames. Spec: dotnet/aspnetcore `src/SignalR/docs/specs/HubProtocol.md`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[cfg(test)]
use super::hub::SessionId;
use super::hub::{RawJson, Request};

/// Ends every record.
pub const RECORD_SEPARATOR: u8 = 0x1e;

/// What can go wrong while decoding a client's bytes. Each closes that connection only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A record over `signaling.max_message_bytes`.
    #[error("message of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Bytes seen so far.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Arrays and objects nested deeper than `signaling.max_json_depth`.
    #[error("message nests arrays and objects deeper than the limit of {limit}")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Not JSON, or not the shape of a hub message (serde_json's words).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A `type` this protocol does not have.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// No `type` field.
    #[error("message has no 'type'")]
    MissingType,
    /// A field the message type needs is missing.
    #[error("{0}")]
    Malformed(&'static str),
}

/// Splits a byte stream into `0x1E`-terminated records, holding at most `limit` bytes of an
/// unfinished record.
#[derive(Debug)]
pub struct RecordReader {
    pending: Vec<u8>,
    limit: usize,
}

impl RecordReader {
    /// A reader holding nothing, for records of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            pending: Vec::new(),
            limit,
        }
    }

    /// Append `data`, pushing every completed record (without its separator) to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), CodecError> {
        while let Some(end) = data.iter().position(|&b| b == RECORD_SEPARATOR) {
            let size = self.pending.len() + end;
            if size > self.limit {
                return Err(CodecError::TooLarge {
                    size,
                    limit: self.limit,
                });
            }
            let mut record = std::mem::take(&mut self.pending);
            record.extend_from_slice(&data[..end]);
            out.push(record);
            data = &data[end + 1..];
        }
        let size = self.pending.len() + data.len();
        if size > self.limit {
            return Err(CodecError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        self.pending.extend_from_slice(data);
        Ok(())
    }

    /// Bytes of an unfinished record held.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Refuse a record whose arrays and objects nest deeper than `limit`, before it is parsed.
///
/// serde_json has a recursion limit of its own (128), but that guards its stack, not this
/// protocol: SignalR records nest 2 deep. One pass over the bytes, brackets inside strings
/// skipped; a record that is not JSON at all is left to the parser to reject.
pub fn check_depth(record: &[u8], limit: usize) -> Result<(), CodecError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in record {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(CodecError::TooDeep { limit });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The first record a client sends.
#[derive(Debug, Deserialize)]
struct HandshakeRequest {
    protocol: String,
    version: u32,
}

/// The server's handshake response that refuses: `{"error":"…"}`.
#[derive(Serialize)]
struct HandshakeError<'a> {
    error: &'a str,
}

impl HandshakeError<'_> {
    /// The record, separator included.
    fn encode(&self) -> Bytes {
        // Serialising a struct of one string cannot fail; an empty record would be a bug.
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(RECORD_SEPARATOR);
        Bytes::from(out)
    }
}

/// A client message, after the handshake.
#[derive(Debug)]
pub enum ClientMessage {
    /// `type: 1`. `invocation_id` is present for `invoke`, absent for `send`.
    Invocation {
        /// The id its Completion must carry; `None` for `send`.
        invocation_id: Option<String>,
        /// The hub method, as the client spelled it.
        target: String,
        /// The arguments, unparsed.
        arguments: Vec<Box<RawValue>>,
    },
    /// `type: 4`: the client wants a stream; this hub has none.
    StreamInvocation {
        /// The id its error Completion must carry.
        invocation_id: String,
    },
    /// `type: 5`: nothing to cancel; ignored.
    CancelInvocation,
    /// `type: 6`.
    Ping,
    /// `type: 7`.
    Close {
        /// Why the client closes, if it says.
        error: Option<String>,
    },
}

/// Wire shape of every client message; only the fields this server reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage<'a> {
    #[serde(rename = "type")]
    kind: Option<u64>,
    #[serde(borrow, default)]
    invocation_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    target: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    arguments: Option<Vec<Box<RawValue>>>,
    #[serde(default)]
    error: Option<String>,
}

impl ClientMessage {
    /// Decode one record.
    pub fn decode(record: &[u8]) -> Result<ClientMessage, CodecError> {
        let wire: WireMessage<'_> =
            serde_json::from_slice(record).map_err(|e| CodecError::Json(e.to_string()))?;
        match wire.kind {
            None => Err(CodecError::MissingType),
            Some(1) => Ok(ClientMessage::Invocation {
                invocation_id: wire.invocation_id.map(|s| s.into_owned()),
                target: wire
                    .target
                    .ok_or(CodecError::Malformed("invocation has no 'target'"))?
                    .into_owned(),
                arguments: wire
                    .arguments
                    .ok_or(CodecError::Malformed("invocation has no 'arguments'"))?,
            }),
            Some(4) => Ok(ClientMessage::StreamInvocation {
                invocation_id: wire
                    .invocation_id
                    .ok_or(CodecError::Malformed(
                        "stream invocation has no 'invocationId'",
                    ))?
                    .into_owned(),
            }),
            Some(5) => Ok(ClientMessage::CancelInvocation),
            Some(6) => Ok(ClientMessage::Ping),
            Some(7) => Ok(ClientMessage::Close { error: wire.error }),
            Some(other) => Err(CodecError::UnknownType(other)),
        }
    }
}

/// A message the server sends to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `type: 1` without an id: the hub calling a client method (`signalStart`, ...).
    Invocation {
        /// The client method (`signalStart`, `signalCapture`, `signalInitiator`).
        target: &'static str,
        /// Each argument as raw JSON, relayed byte for byte.
        arguments: Vec<RawJson>,
    },
    /// `type: 3`: the answer to an `invoke`. No result means success of a void method.
    Completion {
        /// The `invocationId` of the call.
        invocation_id: String,
        /// Why the call failed; `None` for success.
        error: Option<String>,
    },
    /// `type: 6`.
    Ping,
    /// `type: 7`.
    Close {
        /// Why the server closes, shown by the client.
        error: Option<String>,
        /// Whether a client with automatic reconnect should reconnect (a server going away
        /// for a restart), rather than stop (a client the server refuses).
        allow_reconnect: bool,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireInvocation<'a> {
    #[serde(rename = "type")]
    kind: u8,
    target: &'a str,
    arguments: &'a [RawJson],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireCompletion<'a> {
    #[serde(rename = "type")]
    kind: u8,
    invocation_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireClose<'a> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    allow_reconnect: bool,
}

impl ServerMessage {
    /// The record, separator included.
    pub fn encode(&self) -> Bytes {
        let mut out = match self {
            ServerMessage::Invocation { target, arguments } => {
                serde_json::to_vec(&WireInvocation {
                    kind: 1,
                    target,
                    arguments,
                })
            }
            ServerMessage::Completion {
                invocation_id,
                error,
            } => serde_json::to_vec(&WireCompletion {
                kind: 3,
                invocation_id,
                error: error.as_deref(),
            }),
            ServerMessage::Ping => Ok(br#"{"type":6}"#.to_vec()),
            ServerMessage::Close {
                error,
                allow_reconnect,
            } => serde_json::to_vec(&WireClose {
                kind: 7,
                error: error.as_deref(),
                allow_reconnect: *allow_reconnect,
            }),
        }
        // Serialising these plain structs cannot fail; an empty record would be a bug, not a panic.
        .unwrap_or_default();
        out.push(RECORD_SEPARATOR);
        Bytes::from(out)
    }
}

/// Limits and intervals of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionConfig {
    /// Largest record.
    pub max_message_bytes: usize,
    /// Deepest nesting of arrays and objects in a record ([`check_depth`]).
    pub max_json_depth: usize,
    /// Send a Ping after this long without sending anything (as ASP.NET Core's hub does: a
    /// busy connection is never pinged).
    pub keepalive: Duration,
    /// Drop a client silent this long.
    pub client_timeout: Duration,
    /// Time to complete the handshake after the socket opened.
    pub handshake_timeout: Duration,
}

/// What the shell must do, drained with [`Connection::poll_output`].
#[derive(Debug, PartialEq)]
pub enum ConnOutput {
    /// Write this as one WebSocket text frame.
    Send(Bytes),
    /// Hand this request to the hub.
    Request(Request),
    /// Close the WebSocket now (anything to tell the client was queued before).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHandshake,
    Open,
    Closed,
}

/// One client's SignalR protocol state.
#[derive(Debug)]
pub struct Connection {
    config: ConnectionConfig,
    state: State,
    reader: RecordReader,
    /// Handshake deadline while `AwaitingHandshake`.
    handshake_deadline: Instant,
    /// When the client last sent anything.
    last_received: Instant,
    /// When the next server Ping is due: `keepalive` after the last thing sent.
    next_ping: Instant,
    outputs: VecDeque<ConnOutput>,
    /// Why the connection closed, for the log.
    close_reason: Option<String>,
}

impl Connection {
    /// A connection whose socket just opened.
    pub fn new(config: ConnectionConfig, now: Instant) -> Self {
        Self {
            config,
            state: State::AwaitingHandshake,
            reader: RecordReader::new(config.max_message_bytes),
            handshake_deadline: now + config.handshake_timeout,
            last_received: now,
            next_ping: now + config.keepalive,
            outputs: VecDeque::new(),
            close_reason: None,
        }
    }

    /// True once the handshake succeeded and until the connection closes.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// True once the connection has closed; the shell stops after draining.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Why it closed, if it did.
    pub fn close_reason(&self) -> Option<&str> {
        self.close_reason.as_deref()
    }

    /// A text frame arrived.
    pub fn handle_text(&mut self, data: &[u8], now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.last_received = now;
        let mut records = Vec::new();
        if let Err(e) = self.reader.feed(data, &mut records) {
            // Complete records before the oversized one still count.
            for record in records {
                self.handle_record(&record, now);
            }
            self.fail(e.to_string());
            return;
        }
        for record in records {
            if self.state == State::Closed {
                break;
            }
            self.handle_record(&record, now);
        }
    }

    /// A binary frame arrived: this server negotiated text only.
    pub fn handle_binary(&mut self, _data: &[u8], _now: Instant) {
        self.fail("binary frames are not supported by the json protocol".to_owned());
    }

    /// The client sent a WebSocket ping/pong or other control frame: it is alive.
    pub fn handle_activity(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// The shell wrote something to the client (a record of ours or one relayed by the hub):
    /// the client knows the server is alive, so the next Ping can wait.
    pub fn handle_sent(&mut self, now: Instant) {
        self.next_ping = now + self.config.keepalive;
    }

    /// The socket closed or failed; nothing more is sent.
    pub fn handle_disconnect(&mut self, reason: &str) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.close_reason.get_or_insert_with(|| reason.to_owned());
        }
    }

    /// The shell refuses this client (a slow reader, a hub that gave up on it): tell it why; it
    /// must not reconnect automatically.
    pub fn handle_close(&mut self, error: Option<&str>) {
        self.close(error, false);
    }

    /// The server is going away (shutdown, restart, an instance replaced): close with
    /// `allowReconnect`, so that a client built `withAutomaticReconnect()` reconnects (through
    /// a load balancer, to another instance) and Syncs again, as ASP.NET Core SignalR's
    /// graceful shutdown lets it.
    pub fn handle_shutdown(&mut self) {
        self.close(Some("Server is shutting down."), true);
    }

    fn close(&mut self, error: Option<&str>, allow_reconnect: bool) {
        if self.state == State::Open {
            self.outputs.push_back(ConnOutput::Send(
                ServerMessage::Close {
                    error: error.map(str::to_owned),
                    allow_reconnect,
                }
                .encode(),
            ));
        }
        self.finish(error.unwrap_or("closed by server").to_owned());
    }

    /// Time passed: ping, or drop a silent client.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => {}
            State::AwaitingHandshake => {
                if now >= self.handshake_deadline {
                    self.finish("handshake timed out".to_owned());
                }
            }
            State::Open => {
                if now >= self.last_received + self.config.client_timeout {
                    self.handle_close(Some(
                        "Server timeout elapsed without receiving a message from the client.",
                    ));
                    return;
                }
                if now >= self.next_ping {
                    self.outputs
                        .push_back(ConnOutput::Send(ServerMessage::Ping.encode()));
                    // Also reset by `handle_sent` once the shell wrote it; never a burst after
                    // a long stall.
                    self.next_ping = now + self.config.keepalive;
                }
            }
        }
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitingHandshake => Some(self.handshake_deadline),
            State::Open => Some(
                self.next_ping
                    .min(self.last_received + self.config.client_timeout),
            ),
        }
    }

    /// The next thing for the shell to do, removed from the queue (see the draining rule).
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ConnOutput> {
        self.outputs.pop_front()
    }

    fn handle_record(&mut self, record: &[u8], now: Instant) {
        if let Err(e) = check_depth(record, self.config.max_json_depth) {
            self.fail(e.to_string());
            return;
        }
        match self.state {
            State::AwaitingHandshake => self.handle_handshake(record),
            State::Open => match ClientMessage::decode(record) {
                Ok(message) => self.handle_message(message, now),
                Err(e) => self.fail(e.to_string()),
            },
            State::Closed => {}
        }
    }

    fn handle_handshake(&mut self, record: &[u8]) {
        let error = match serde_json::from_slice::<HandshakeRequest>(record) {
            Ok(h) if h.protocol == "json" && h.version == 1 => None,
            Ok(h) if h.protocol == "json" => Some(format!(
                "The server does not support version {} of the 'json' protocol.",
                h.version
            )),
            Ok(h) => Some(format!(
                "The protocol '{}' is not supported; this server speaks 'json' only.",
                h.protocol
            )),
            Err(e) => Some(format!("Invalid handshake request: {e}")),
        };
        match error {
            None => {
                self.state = State::Open;
                self.outputs
                    .push_back(ConnOutput::Send(Bytes::from_static(b"{}\x1e")));
            }
            Some(error) => self.refuse_handshake(error),
        }
    }

    fn handle_message(&mut self, message: ClientMessage, _now: Instant) {
        match message {
            ClientMessage::Ping | ClientMessage::CancelInvocation => {}
            ClientMessage::Close { error } => {
                self.finish(error.unwrap_or_else(|| "client closed".to_owned()));
            }
            ClientMessage::StreamInvocation { invocation_id } => {
                self.complete_with_error(
                    Some(invocation_id),
                    "Streaming methods are not supported by this hub.".to_owned(),
                );
            }
            ClientMessage::Invocation {
                invocation_id,
                target,
                arguments,
            } => match Request::parse(invocation_id.clone(), &target, arguments) {
                Ok(request) => self.outputs.push_back(ConnOutput::Request(request)),
                Err(error) => self.complete_with_error(invocation_id, error.to_string()),
            },
        }
    }

    fn complete_with_error(&mut self, invocation_id: Option<String>, error: String) {
        // `send` has no id and gets no reply, even for an error.
        if let Some(invocation_id) = invocation_id {
            self.outputs.push_back(ConnOutput::Send(
                ServerMessage::Completion {
                    invocation_id,
                    error: Some(error),
                }
                .encode(),
            ));
        }
    }

    /// Answer the handshake with `{"error":…}` and close.
    fn refuse_handshake(&mut self, error: String) {
        self.outputs
            .push_back(ConnOutput::Send(HandshakeError { error: &error }.encode()));
        self.finish(error);
    }

    /// A protocol error: tell the client (once open) and close.
    fn fail(&mut self, reason: String) {
        match self.state {
            State::Open => {
                self.handle_close(Some(&format!("Connection closed with an error: {reason}")))
            }
            State::AwaitingHandshake => self.refuse_handshake(reason),
            State::Closed => {}
        }
    }

    fn finish(&mut self, reason: String) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.close_reason = Some(reason);
            self.outputs.push_back(ConnOutput::Close);
        }
    }
}

/// Build the negotiate response body (negotiateVersion 1, WebSockets only).
pub fn negotiate_response(connection_id: &str, connection_token: &str) -> Bytes {
    let body = serde_json::json!({
        "connectionId": connection_id,
        "connectionToken": connection_token,
        "negotiateVersion": 1,
        "availableTransports": [
            { "transport": "WebSockets", "transferFormats": ["Text", "Binary"] }
        ]
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// A `SessionId` used by the codec tests.
#[cfg(test)]
fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::hub::Method;

    fn config() -> ConnectionConfig {
        ConnectionConfig {
            max_message_bytes: 1024,
            max_json_depth: 32,
            keepalive: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
        }
    }

    fn drain(c: &mut Connection) -> Vec<ConnOutput> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn sent(outputs: &[ConnOutput]) -> Vec<String> {
        outputs
            .iter()
            .filter_map(|o| match o {
                ConnOutput::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn open(now: Instant) -> Connection {
        let mut c = Connection::new(config(), now);
        c.handle_text(b"{\"protocol\":\"json\",\"version\":1}\x1e", now);
        assert_eq!(sent(&drain(&mut c)), vec!["{}\x1e"]);
        assert!(c.is_open());
        c
    }

    #[test]
    fn records_split_within_and_across_frames() {
        let mut r = RecordReader::new(100);
        let mut out = Vec::new();
        r.feed(b"{\"a\":1}\x1e{\"b\"", &mut out).unwrap();
        assert_eq!(out, vec![b"{\"a\":1}".to_vec()]);
        out.clear();
        r.feed(b":2}", &mut out).unwrap();
        assert!(out.is_empty());
        r.feed(b"\x1e\x1e", &mut out).unwrap();
        assert_eq!(out, vec![b"{\"b\":2}".to_vec(), Vec::new()]);
        assert_eq!(r.pending_len(), 0);
    }

    #[test]
    fn record_over_the_limit_is_refused_even_when_split() {
        let mut r = RecordReader::new(10);
        let mut out = Vec::new();
        r.feed(b"123456", &mut out).unwrap();
        assert_eq!(
            r.feed(b"78901", &mut out),
            Err(CodecError::TooLarge {
                size: 11,
                limit: 10
            })
        );
        let mut r = RecordReader::new(10);
        assert!(r.feed(b"12345678901\x1e", &mut out).is_err());
    }

    #[test]
    fn handshake_and_message_in_one_frame() {
        let now = Instant::now();
        let mut c = Connection::new(config(), now);
        c.handle_text(
            b"{\"protocol\":\"json\",\"version\":1}\x1e{\"type\":1,\"invocationId\":\"0\",\"target\":\"sync\",\"arguments\":[\"abc\",true]}\x1e",
            now,
        );
        let out = drain(&mut c);
        assert_eq!(out[0], ConnOutput::Send(Bytes::from_static(b"{}\x1e")));
        assert_eq!(
            out[1],
            ConnOutput::Request(Request {
                invocation_id: Some("0".into()),
                method: Method::Sync {
                    session: sid("abc"),
                    ready: true
                }
            })
        );
    }

    #[test]
    fn handshake_with_other_protocol_gets_an_error_then_close() {
        let now = Instant::now();
        let mut c = Connection::new(config(), now);
        c.handle_text(b"{\"protocol\":\"messagepack\",\"version\":1}\x1e", now);
        let out = drain(&mut c);
        let text = sent(&out);
        assert!(
            text[0].starts_with("{\"error\":\"The protocol 'messagepack'"),
            "{text:?}"
        );
        assert!(text[0].ends_with("\x1e"));
        assert_eq!(out.last(), Some(&ConnOutput::Close));
        assert!(c.is_closed());
    }

    #[test]
    fn garbage_before_handshake_closes() {
        let now = Instant::now();
        let mut c = Connection::new(config(), now);
        c.handle_text(b"hello\x1e", now);
        let out = drain(&mut c);
        assert!(sent(&out)[0].contains("Invalid handshake request"));
        assert_eq!(out.last(), Some(&ConnOutput::Close));
    }

    #[test]
    fn garbage_after_handshake_sends_close_record() {
        let now = Instant::now();
        for garbage in [
            &b"not json\x1e"[..],
            b"{\"type\":99}\x1e",
            b"{}\x1e",
            b"[1,2]\x1e",
        ] {
            let mut c = open(now);
            c.handle_text(garbage, now);
            let out = drain(&mut c);
            let text = sent(&out);
            assert!(
                text[0].starts_with("{\"type\":7,\"error\":\"Connection closed with an error:"),
                "{text:?}"
            );
            assert_eq!(out.last(), Some(&ConnOutput::Close));
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_closes_before_parsing() {
        let now = Instant::now();
        // `levels` deep in all, with brackets inside a string that do not count.
        let nested = |levels: usize| {
            format!(
                "{{\"type\":1,\"target\":\"Sync\",\"arguments\":[\"s\",true],\"x\":{}\"[[{{\\\"\"{}}}\x1e",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        let deep = nested(33);
        let mut c = open(now);
        c.handle_text(deep.as_bytes(), now);
        let out = drain(&mut c);
        assert_eq!(
            sent(&out),
            vec![
                "{\"type\":7,\"error\":\"Connection closed with an error: message nests arrays and objects deeper than the limit of 32\",\"allowReconnect\":false}\x1e"
            ]
        );
        assert_eq!(out.last(), Some(&ConnOutput::Close));
        // At the limit it is parsed (and is a valid Sync with an extra field).
        let ok = nested(32);
        let mut c = open(now);
        c.handle_text(ok.as_bytes(), now);
        assert!(
            matches!(drain(&mut c)[..], [ConnOutput::Request(_)]),
            "{ok}"
        );
        // Before the handshake too: the handshake gets an error record.
        let mut c = Connection::new(config(), now);
        c.handle_text(
            format!("{}{}\x1e", "[".repeat(40), "]".repeat(40)).as_bytes(),
            now,
        );
        let out = drain(&mut c);
        assert_eq!(
            sent(&out),
            vec![
                "{\"error\":\"message nests arrays and objects deeper than the limit of 32\"}\x1e"
            ]
        );
        assert_eq!(out.last(), Some(&ConnOutput::Close));
    }

    #[test]
    fn depth_scan_skips_strings_and_escapes() {
        assert_eq!(check_depth(br#"[[["]]]]]]]\"[[[[["]]]"#, 3), Ok(()));
        assert_eq!(
            check_depth(br#"[[[["#, 3),
            Err(CodecError::TooDeep { limit: 3 })
        );
        assert_eq!(check_depth(br#"{"a\\":[[[]]]}"#, 4), Ok(()));
        assert_eq!(
            check_depth(br#"{"a\\":[[[[]]]]}"#, 4),
            Err(CodecError::TooDeep { limit: 4 })
        );
    }

    #[test]
    fn binary_frame_closes() {
        let now = Instant::now();
        let mut c = open(now);
        c.handle_binary(b"\x01\x02", now);
        assert_eq!(drain(&mut c).last(), Some(&ConnOutput::Close));
        assert!(c.is_closed());
    }

    #[test]
    fn oversized_record_closes_with_error() {
        let now = Instant::now();
        let mut c = open(now);
        let big = format!("{{\"type\":6,\"x\":\"{}\"}}\x1e", "a".repeat(2000));
        c.handle_text(big.as_bytes(), now);
        let out = drain(&mut c);
        assert!(
            sent(&out)[0].contains("larger than the limit of 1024 bytes"),
            "{:?}",
            sent(&out)
        );
        assert_eq!(out.last(), Some(&ConnOutput::Close));
    }

    #[test]
    fn invoke_unknown_method_gets_error_completion_send_gets_nothing() {
        let now = Instant::now();
        let mut c = open(now);
        c.handle_text(
            b"{\"type\":1,\"invocationId\":\"7\",\"target\":\"Nope\",\"arguments\":[]}\x1e",
            now,
        );
        assert_eq!(
            sent(&drain(&mut c)),
            vec!["{\"type\":3,\"invocationId\":\"7\",\"error\":\"Unknown hub method 'Nope'\"}\x1e"]
        );
        c.handle_text(
            b"{\"type\":1,\"target\":\"Nope\",\"arguments\":[]}\x1e",
            now,
        );
        assert!(drain(&mut c).is_empty());
        assert!(c.is_open(), "a bad send does not close the connection");
    }

    #[test]
    fn wrong_argument_types_get_error_completion() {
        let now = Instant::now();
        let mut c = open(now);
        for args in ["[1,true]", "[\"s\"]", "[\"s\",\"yes\"]", "[\"s\",true,3]"] {
            let msg = format!("{{\"type\":1,\"invocationId\":\"1\",\"target\":\"Sync\",\"arguments\":{args}}}\x1e");
            c.handle_text(msg.as_bytes(), now);
            let text = sent(&drain(&mut c));
            assert!(text[0].contains("\"error\":"), "{args}: {text:?}");
        }
        c.handle_text(b"{\"type\":1,\"invocationId\":\"2\",\"target\":\"SignalCapture\",\"arguments\":[\"s\",{}]}\x1e", now);
        assert!(sent(&drain(&mut c))[0].contains("\"error\":"));
        assert!(c.is_open());
    }

    #[test]
    fn invalid_session_id_gets_error_completion() {
        let now = Instant::now();
        let mut c = open(now);
        let long = "a".repeat(129);
        for s in ["", "a b", "é", long.as_str()] {
            let msg = format!("{{\"type\":1,\"invocationId\":\"1\",\"target\":\"Sync\",\"arguments\":[{},false]}}\x1e", serde_json::to_string(s).unwrap());
            c.handle_text(msg.as_bytes(), now);
            let text = sent(&drain(&mut c));
            assert!(text[0].contains("session id"), "{s:?}: {text:?}");
        }
    }

    #[test]
    fn payload_is_kept_byte_for_byte() {
        let now = Instant::now();
        let mut c = open(now);
        c.handle_text(b"{\"type\":1,\"invocationId\":\"3\",\"target\":\"signalcapture\",\"arguments\":[\"s\", \"caf\\u00e9\\n\"]}\x1e", now);
        match drain(&mut c).pop() {
            Some(ConnOutput::Request(Request {
                method: Method::SignalCapture { payload, .. },
                ..
            })) => assert_eq!(payload.get(), "\"caf\\u00e9\\n\""),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keepalive_pings_and_silent_client_is_dropped() {
        let t0 = Instant::now();
        let mut c = open(t0);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(15)));
        c.handle_timeout(t0 + Duration::from_secs(15));
        assert_eq!(sent(&drain(&mut c)), vec!["{\"type\":6}\x1e"]);
        // The client pings back at 20 s: the drop deadline moves.
        c.handle_text(b"{\"type\":6}\x1e", t0 + Duration::from_secs(20));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(sent(&drain(&mut c)), vec!["{\"type\":6}\x1e"]);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(45)));
        c.handle_timeout(t0 + Duration::from_secs(45));
        assert_eq!(sent(&drain(&mut c)), vec!["{\"type\":6}\x1e"]);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(50)));
        c.handle_timeout(t0 + Duration::from_secs(50));
        let out = drain(&mut c);
        assert!(sent(&out)[0].starts_with("{\"type\":7,\"error\":\"Server timeout elapsed"));
        assert_eq!(out.last(), Some(&ConnOutput::Close));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn a_connection_that_was_sent_something_is_not_pinged() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = open(t0);
        // The hub relayed records at 10 s and 20 s: no Ping until 15 s after the last one.
        c.handle_sent(t0 + s(10));
        c.handle_text(b"{\"type\":6}\x1e", t0 + s(10));
        assert_eq!(c.poll_timeout(), Some(t0 + s(25)));
        c.handle_timeout(t0 + s(15));
        assert!(drain(&mut c).is_empty());
        c.handle_sent(t0 + s(20));
        c.handle_text(b"{\"type\":6}\x1e", t0 + s(20));
        c.handle_timeout(t0 + s(25));
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.poll_timeout(), Some(t0 + s(35)));
        c.handle_timeout(t0 + s(35));
        assert_eq!(sent(&drain(&mut c)), vec!["{\"type\":6}\x1e"]);
    }

    #[test]
    fn handshake_timeout_closes() {
        let t0 = Instant::now();
        let mut c = Connection::new(config(), t0);
        c.handle_timeout(t0 + Duration::from_secs(14));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(t0 + Duration::from_secs(15));
        assert_eq!(drain(&mut c), vec![ConnOutput::Close]);
    }

    #[test]
    fn client_close_message_closes_quietly() {
        let now = Instant::now();
        let mut c = open(now);
        c.handle_text(b"{\"type\":7}\x1e", now);
        assert_eq!(drain(&mut c), vec![ConnOutput::Close]);
    }

    #[test]
    fn server_messages_encode_as_the_client_expects() {
        let raw = RawJson::from_string("\"p\\u00e9\"".into()).unwrap();
        assert_eq!(
            ServerMessage::Invocation {
                target: "signalCapture",
                arguments: vec![raw]
            }
            .encode(),
            Bytes::from_static(
                b"{\"type\":1,\"target\":\"signalCapture\",\"arguments\":[\"p\\u00e9\"]}\x1e"
            )
        );
        assert_eq!(
            ServerMessage::Completion {
                invocation_id: "1".into(),
                error: None
            }
            .encode(),
            Bytes::from_static(b"{\"type\":3,\"invocationId\":\"1\"}\x1e")
        );
        assert_eq!(
            ServerMessage::Close {
                error: None,
                allow_reconnect: false
            }
            .encode(),
            Bytes::from_static(b"{\"type\":7,\"allowReconnect\":false}\x1e")
        );
    }

    proptest::proptest! {
        #[test]
        fn codec_never_panics(frames in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..200), 0..8)) {
            let now = Instant::now();
            let mut c = Connection::new(config(), now);
            let mut first = true;
            for f in frames {
                if first {
                    c.handle_text(b"{\"protocol\":\"json\",\"version\":1}\x1e", now);
                    first = false;
                }
                c.handle_text(&f, now);
                while c.poll_output().is_some() {}
            }
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,300}") {
            let _ = ClientMessage::decode(s.as_bytes());
        }

        #[test]
        fn structured_messages_never_panic(kind in 0u64..10, id in proptest::option::of("[0-9]{1,3}"), target in "[A-Za-z]{0,20}", args in "\\[(\"[a-z_-]{0,10}\"|true|1|null|\\{\\}|,){0,5}\\]") {
            let now = Instant::now();
            let mut c = open(now);
            let id = id.map(|i| format!(",\"invocationId\":\"{i}\"")).unwrap_or_default();
            let msg = format!("{{\"type\":{kind}{id},\"target\":\"{target}\",\"arguments\":{args}}}\x1e");
            c.handle_text(msg.as_bytes(), now);
            while c.poll_output().is_some() {}
        }
    }
}
