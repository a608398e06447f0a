//! The SignalR JSON hub protocol: `RecordReader`, `ClientMessage::decode` and the whole
//! `Connection` state machine, driven by WebSocket frames and a virtual clock.
//!
//! The input is a script, so that seeds can be written by hand (tests/fuzz/make_seeds.mjs):
//! byte 0 picks the record limit, then each operation is one byte `op` and its operands:
//! - `op % 8 == 0`: a text frame: u16 little-endian length `n`, then `n` bytes;
//! - `1`: a binary frame, same shape;
//! - `2`: the clock moves on by a u16 LE count of 4 ms steps, then `handle_timeout`;
//! - `3`: the timer fires: the clock moves to `poll_timeout()`, then `handle_timeout`;
//! - `4`: a WebSocket ping or pong (`handle_activity`); `5`: the shell wrote (`handle_sent`);
//! - `6`: the shell closes (`close`); `7`: the socket drops (`handle_disconnect`).
//!
//! Invariants, besides not panicking: every record sent is one JSON text ending in the only
//! `0x1E` it holds; nothing but the handshake reply comes before a request; `Close` comes
//! once, last, and only when the connection is closed; a closed connection asks for no timer
//! and an open one never for a time already handled (no busy loop); the record reader keeps
//! every byte, in order, and never holds or yields more than its limit.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use snaprtcd::signaling::signalr::{
    ClientMessage, ConnOutput, Connection, ConnectionConfig, RecordReader, RECORD_SEPARATOR,
};

/// Record limits: the daemon's minimum and default (`[signaling] max_message_bytes`), and a
/// small one that reaches the too-large paths with short inputs.
const LIMITS: [usize; 3] = [64, 1024, 65_536];

struct Script<'a>(&'a [u8]);

impl<'a> Script<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        let lo = self.byte().unwrap_or(0);
        let hi = self.byte().unwrap_or(0);
        u16::from_le_bytes([lo, hi])
    }

    fn bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16()).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }
}

/// What the shell has seen so far, to check the outputs against.
#[derive(Default)]
struct Seen {
    handshake_reply: bool,
    close: bool,
    /// The shell itself dropped the socket: no `Close` output is owed.
    disconnected: bool,
}

fn drain(conn: &mut Connection, seen: &mut Seen) {
    while let Some(output) = conn.poll_output() {
        assert!(!seen.close, "output after Close: {output:?}");
        match output {
            ConnOutput::Send(bytes) => {
                let (last, record) = bytes.split_last().expect("an empty record was sent");
                assert_eq!(*last, RECORD_SEPARATOR, "record not terminated: {bytes:?}");
                assert!(
                    !record.contains(&RECORD_SEPARATOR),
                    "separator inside a record: {bytes:?}"
                );
                let json: serde_json::Value =
                    serde_json::from_slice(record).expect("a record sent is JSON");
                assert!(json.is_object(), "record is not an object: {json}");
                if record == b"{}" {
                    assert!(!seen.handshake_reply, "handshake answered twice");
                    seen.handshake_reply = true;
                }
            }
            ConnOutput::Request(request) => {
                assert!(
                    seen.handshake_reply,
                    "request before the handshake: {request:?}"
                );
            }
            ConnOutput::Close => seen.close = true,
        }
    }
    assert!(!(conn.is_open() && conn.is_closed()));
    if seen.close {
        assert!(
            conn.is_closed(),
            "Close sent but the connection is not closed"
        );
    }
    if conn.is_closed() {
        assert!(
            seen.close || seen.disconnected,
            "closed without telling the shell"
        );
        assert_eq!(
            conn.poll_timeout(),
            None,
            "a closed connection wants a timer"
        );
    } else {
        assert!(
            conn.poll_timeout().is_some(),
            "a live connection has no timer"
        );
    }
}

/// Feeds the same frames to a lone reader and checks it keeps every byte in order.
struct ReaderCheck {
    reader: RecordReader,
    limit: usize,
    /// Every byte fed since the reader was made.
    fed: Vec<u8>,
    /// The records it yielded, each with its separator put back.
    yielded: Vec<u8>,
}

impl ReaderCheck {
    fn new(limit: usize) -> Self {
        Self {
            reader: RecordReader::new(limit),
            limit,
            fed: Vec::new(),
            yielded: Vec::new(),
        }
    }

    fn feed(&mut self, frame: &[u8]) {
        let mut records = Vec::new();
        let result = self.reader.feed(frame, &mut records);
        for record in &records {
            assert!(record.len() <= self.limit, "record over the limit");
            let _ = ClientMessage::decode(record);
        }
        if result.is_err() {
            // The connection closes here; a new one starts from nothing.
            *self = Self::new(self.limit);
            return;
        }
        self.fed.extend_from_slice(frame);
        for record in records {
            self.yielded.extend_from_slice(&record);
            self.yielded.push(RECORD_SEPARATOR);
        }
        let pending = self.reader.pending_len();
        assert!(pending <= self.limit, "reader holds {pending} bytes");
        assert_eq!(self.yielded.len() + pending, self.fed.len(), "bytes lost");
        assert_eq!(
            self.yielded,
            self.fed[..self.yielded.len()],
            "bytes changed"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut script = Script(data);
    let limit = LIMITS[usize::from(script.byte().unwrap_or(1)) % LIMITS.len()];
    let config = ConnectionConfig {
        max_message_bytes: limit,
        keepalive: Duration::from_secs(15),
        client_timeout: Duration::from_secs(30),
        handshake_timeout: Duration::from_secs(15),
        max_json_depth: 32,
    };
    let mut now = Instant::now();
    let mut conn = Connection::new(config, now);
    let mut seen = Seen::default();
    let mut reader = ReaderCheck::new(limit);
    drain(&mut conn, &mut seen);

    while let Some(op) = script.byte() {
        let mut timer_handled = None;
        match op % 8 {
            0 => {
                let frame = script.bytes();
                reader.feed(frame);
                conn.handle_text(frame, now);
            }
            1 => conn.handle_binary(script.bytes(), now),
            2 => {
                now += Duration::from_millis(4 * u64::from(script.u16()));
                conn.handle_timeout(now);
                timer_handled = Some(now);
            }
            3 => {
                if let Some(at) = conn.poll_timeout() {
                    now = now.max(at);
                }
                conn.handle_timeout(now);
                timer_handled = Some(now);
            }
            4 => conn.handle_activity(now),
            5 => conn.handle_sent(now),
            6 => conn.handle_close(Some("server shutting down")),
            _ => {
                conn.handle_disconnect("socket closed");
                seen.disconnected = true;
            }
        }
        drain(&mut conn, &mut seen);
        if let (Some(handled), Some(next)) = (timer_handled, conn.poll_timeout()) {
            assert!(next > handled, "timer re-armed for a time already handled");
        }
    }
});
