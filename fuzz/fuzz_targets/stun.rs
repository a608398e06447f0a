//! Datagrams from a configured STUN server's address (anyone can send UDP from a spoofed
//! source): `snaprtcd::rtc::stun::StunClient` fed them between clock ticks, as the engine's
//! core routes them.
//!
//! The input is a sequence of steps: a tag byte, then for datagrams a length byte and that many
//! bytes. Tag 0: time passes (to the client's own timeout); 1: a datagram as it is; 2: the
//! datagram with the current request's transaction id written at bytes 8..20 (so answers to
//! it are reachable). Invariants, besides not panicking: every transmit goes to the server and
//! is one STUN request; candidates are server-reflexive, never the base itself; the client
//! always has a next timeout, in the future of the last tick.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use snaprtcd::rtc::core::{Sidecar, SidecarEvent, Via};
use snaprtcd::rtc::stun::StunClient;

fuzz_target!(|data: &[u8]| {
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let base: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let mut now = Instant::now();
    let mut c = StunClient::new(
        "stun:fuzz".into(),
        server,
        base,
        Duration::from_secs(30),
        now,
    );
    let mut last_request: Vec<u8> = Vec::new();
    let mut rest = data;
    let mut steps = 0;
    while let Some((&tag, tail)) = rest.split_first() {
        steps += 1;
        if steps > 200 {
            break;
        }
        rest = tail;
        match tag % 3 {
            0 => {
                let next = c.poll_timeout().expect("always a next timeout");
                now = now.max(next);
                c.handle_timeout(now);
            }
            t => {
                let Some((&len, tail)) = rest.split_first() else {
                    break;
                };
                let n = usize::from(len).min(tail.len());
                let mut dgram = tail[..n].to_vec();
                rest = &tail[n..];
                if t == 2 && dgram.len() >= 20 && last_request.len() >= 20 {
                    dgram[8..20].copy_from_slice(&last_request[8..20]);
                }
                c.handle_datagram(now, Via::Udp, server, &dgram);
            }
        }
        while let Some(t) = c.poll_transmit() {
            assert_eq!(t.destination, server);
            assert_eq!(t.via, Via::Udp);
            assert!(
                t.contents.len() >= 20 && t.contents[0] & 0xc0 == 0,
                "a STUN message"
            );
            last_request = t.contents;
        }
        while let Some(e) = c.poll_event() {
            if let SidecarEvent::Candidate { candidate } = e {
                assert_eq!(candidate.kind(), str0m::CandidateKind::ServerReflexive);
                assert_ne!(candidate.addr(), base);
            }
        }
        assert!(c.poll_timeout().is_some());
    }
});
