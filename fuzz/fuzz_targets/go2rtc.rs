//! go2rtc's WebSocket protocol (`snaprtcd::signaling::go2rtc::Session`) fed a socket's worth of
//! messages, with the engine's answers and the clock driven by the input.
//!
//! Input: messages separated by `0xff` (never in UTF-8 text). A message's first byte picks
//! what it is: text (the rest, lossily UTF-8), binary, a ping, a tick of the clock, or the
//! engine's answer (accepted or refused) when an offer is out.
//! Invariants, besides not panicking: at most one offer reaches the engine; candidates reach
//! the viewer only after its answer; nothing comes out after a close; each input gives a
//! bounded number of outputs; every message sent is JSON with a `type`.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use snaprtcd::signaling::go2rtc::{Answered, Output, Session, SessionConfig};

fuzz_target!(|data: &[u8]| {
    let config = SessionConfig {
        max_message_bytes: 2048,
        max_pending_candidates: 4,
        offer_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
    };
    let mut now = Instant::now();
    let src = data
        .first()
        .map(|b| if b % 4 == 0 { "other" } else { "camera" });
    let mut s = Session::new(config, src, now);
    let (mut offers, mut answered, mut closed, mut awaiting) = (0, false, false, false);
    for message in data.split(|&b| b == 0xff) {
        let Some((&kind, rest)) = message.split_first() else {
            continue;
        };
        match kind % 8 {
            0..=3 => s.handle_text(&String::from_utf8_lossy(rest), now),
            4 => s.handle_binary(rest.len(), now),
            5 => s.handle_activity(now),
            6 => {
                now += Duration::from_secs(u64::from(rest.first().copied().unwrap_or(1)));
                s.handle_timeout(now);
            }
            _ => {
                let ok = rest.first().is_some_and(|b| b % 2 == 0);
                if awaiting && ok {
                    answered = true;
                }
                awaiting = false;
                let answer = if ok {
                    Ok(Answered {
                        sdp: "v=0\r\n".into(),
                        candidates: vec!["candidate:1 1 udp 1 10.0.0.1 5000 typ host".into()],
                    })
                } else {
                    Err("refused".into())
                };
                s.handle_answer(answer, now);
            }
        }
        let mut n = 0;
        while let Some(out) = s.poll_output() {
            n += 1;
            assert!(n <= 8, "too many outputs for one input");
            assert!(!closed, "output after close: {out:?}");
            match out {
                Output::Send(json) => {
                    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
                    assert!(v.get("type").and_then(|t| t.as_str()).is_some(), "{json}");
                }
                Output::Offer(_) => {
                    offers += 1;
                    awaiting = true;
                    assert_eq!(offers, 1, "a second offer reached the engine");
                }
                Output::Candidates(c) => {
                    assert!(answered, "candidates before the answer");
                    assert!(!c.is_empty() && c.len() <= 4);
                    assert!(c
                        .iter()
                        .all(|l| l.starts_with("candidate:") && !l.contains(['\r', '\n'])));
                }
                Output::Close(..) => closed = true,
            }
        }
        if s.is_closed() {
            assert_eq!(s.poll_timeout(), None);
        }
    }
});
