//! Dial-out's client side of the SignalR protocol: the whole `Remote` state machine (what a
//! remote hub sends, connection failures, answers from the engine, a virtual clock), and
//! `HubMessage::decode` on every record.
//!
//! The input is a script: each operation is one byte `op` and its operands:
//! - `op % 8 == 0`: a frame from the hub: u16 little-endian length `n`, then `n` bytes;
//! - `1`: the clock moves on by a u16 LE count of 16 ms steps, then `handle_timeout`;
//! - `2`: the timer fires: the clock moves to `poll_timeout()`, then `handle_timeout`;
//! - `3`: the link fails (`handle_failed`); `4`: the socket opens (`handle_open`, the next
//!   byte's low bit says whether the hub starts initiators itself);
//! - `5`: the engine, by the next byte `% 4`: answers without a viewer (`handle_answer`, 0) or
//!   with one (1), or says that viewer connected (2, `handle_viewer_connected`) or is gone (3,
//!   `handle_viewer_gone`); `6`: a well-formed offer arrives;
//! - `7`: the handshake response `{}` arrives.
//!
//! Invariants, besides not panicking: every record sent is one JSON object ending in the only
//! `0x1E` it holds; two `Sync(session, true)` (announces) are never less than
//! `announce_interval` apart, across reconnections too; none goes out while an offer waits
//! for its answer (less than `exchange_timeout`), nor while an answered viewer connects (less
//! than `exchange_timeout` after the answer), nor within `announce_interval` after it
//! connected; every `Offer` is counted; the state machine always has a timer, and never one
//! for a time already handled.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use snaprtcd::signaling::hub::{RawJson, SessionId};
use snaprtcd::signaling::remote::{HubMessage, Remote, RemoteOutput, RemoteSettings, RemoteState};
use snaprtcd::signaling::signalr::RECORD_SEPARATOR;

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

const INTERVAL: Duration = Duration::from_secs(6);
const EXCHANGE: Duration = Duration::from_secs(5);

struct Checks {
    last_announce: Option<Instant>,
    /// When the offer that waits for its answer came.
    awaiting_answer: Option<Instant>,
    /// An answered viewer is connecting (the engine has not said how it went).
    connecting: bool,
    /// No announce before this (an answered viewer connecting, or just connected).
    quiet_until: Option<Instant>,
    offers: u64,
}

fn drain(remote: &mut Remote, now: Instant, checks: &mut Checks) {
    while let Some(output) = remote.poll_output() {
        match output {
            RemoteOutput::Send(bytes) => {
                let (last, record) = bytes.split_last().expect("an empty record was sent");
                assert_eq!(*last, RECORD_SEPARATOR, "record not terminated: {bytes:?}");
                assert!(
                    !record.contains(&RECORD_SEPARATOR),
                    "separator inside: {bytes:?}"
                );
                let json: serde_json::Value =
                    serde_json::from_slice(record).expect("a record sent is JSON");
                assert!(json.is_object(), "not an object: {json}");
                if json["target"] == "Sync" && json["arguments"][1] == true {
                    if let Some(since) = checks.awaiting_answer {
                        assert!(now >= since + EXCHANGE, "announce while an offer waits");
                    }
                    if let Some(last) = checks.last_announce {
                        assert!(now >= last + INTERVAL, "announces {:?} apart", now - last);
                    }
                    if let Some(until) = checks.quiet_until {
                        assert!(now >= until, "announce while the answered viewer connects");
                    }
                    checks.last_announce = Some(now);
                }
                if json["target"] == "SignalInitiator" {
                    checks.awaiting_answer = None;
                }
            }
            RemoteOutput::Offer(payload) => {
                assert!(payload.get().starts_with('"'));
                checks.offers += 1;
                checks.awaiting_answer = Some(now);
            }
            RemoteOutput::Connect | RemoteOutput::Close => {}
        }
    }
    if remote.state() != RemoteState::Serving {
        // The exchange ended (timed out, or the link dropped).
        checks.awaiting_answer = None;
        checks.connecting = false;
        checks.quiet_until = None;
    }
    assert_eq!(remote.counters().offers, checks.offers, "offers miscounted");
    assert!(remote.poll_timeout().is_some(), "no timer");
}

fuzz_target!(|data: &[u8]| {
    let mut script = Script(data);
    let settings = RemoteSettings {
        session: SessionId::parse("dev").expect("a session id"),
        announce_interval: INTERVAL,
        exchange_timeout: EXCHANGE,
        connect_timeout: Duration::from_secs(2),
        reconnect_max: Duration::from_secs(8),
        keepalive: Duration::from_secs(3),
        server_timeout: Duration::from_secs(7),
        max_message_bytes: 1024,
    };
    let mut now = Instant::now();
    let mut remote = Remote::new(settings, now, 42);
    let mut checks = Checks {
        last_announce: None,
        awaiting_answer: None,
        connecting: false,
        quiet_until: None,
        offers: 0,
    };
    drain(&mut remote, now, &mut checks);
    while let Some(op) = script.byte() {
        let mut timer_handled = None;
        match op % 8 {
            0 => {
                let frame = script.bytes();
                for record in frame.split(|&b| b == RECORD_SEPARATOR) {
                    let _ = HubMessage::decode(record);
                }
                remote.handle_text(frame, now);
            }
            1 => {
                now += Duration::from_millis(16 * u64::from(script.u16()));
                remote.handle_timeout(now);
                timer_handled = Some(now);
            }
            2 => {
                if let Some(at) = remote.poll_timeout() {
                    now = now.max(at);
                }
                remote.handle_timeout(now);
                timer_handled = Some(now);
            }
            3 => remote.handle_failed("socket closed", now),
            4 => remote.handle_open(script.byte().unwrap_or(0) & 1 == 1, now),
            5 => match script.byte().unwrap_or(0) % 4 {
                how @ (0 | 1) => {
                    let answer = RawJson::from_string("\"answer\"".to_owned()).expect("JSON");
                    let viewer = how == 1;
                    remote.handle_answer(answer, viewer, now);
                    let serving = remote.state() == RemoteState::Serving;
                    checks.connecting = viewer && serving;
                    checks.quiet_until = checks.connecting.then(|| now + EXCHANGE.max(INTERVAL));
                }
                2 => {
                    remote.handle_viewer_connected(now);
                    if checks.connecting {
                        checks.connecting = false;
                        checks.quiet_until = Some(now + INTERVAL);
                    }
                }
                _ => {
                    remote.handle_viewer_gone(now);
                    if checks.connecting {
                        checks.connecting = false;
                        checks.quiet_until = None;
                    }
                }
            },
            6 => remote.handle_text(
                b"{\"type\":1,\"target\":\"signalCapture\",\"arguments\":[\"offer\"]}\x1e",
                now,
            ),
            _ => remote.handle_text(b"{}\x1e", now),
        }
        drain(&mut remote, now, &mut checks);
        if let (Some(handled), Some(next)) = (timer_handled, remote.poll_timeout()) {
            assert!(next > handled, "timer re-armed for a time already handled");
        }
    }
});
