//! Bytes from the TURN server's address (`snaprtcd::rtc::turn::TurnAllocation`): what an
//! attacker who spoofs the server's UDP address, or a hostile TURN server, can send.
//!
//! The input is cut into pieces (a length byte, then that many bytes), each given to a UDP
//! core and to a TCP core (the stream is the pieces back to back), with the clock moving a
//! little after each. Invariants, besides not panicking: the output queue stays within its
//! bound, and a payload is only ever handed on for a peer that was added.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use snaprtcd::rtc::turn::{TurnAllocation, TurnAuth, TurnLimits, TurnOutput, TurnTransport};

const MAX_QUEUED: usize = 16;

fn core(transport: TurnTransport, now: Instant) -> TurnAllocation {
    let mut c = TurnAllocation::new(
        "198.51.100.1:3478".parse().unwrap(),
        transport,
        "192.0.2.10:40000".parse().unwrap(),
        TurnAuth::LongTerm {
            username: "user".into(),
            credential: "pass".into(),
        },
        TurnLimits {
            max_peers: 4,
            max_queued: MAX_QUEUED,
            ..TurnLimits::default()
        },
        1_800_000_000,
        now,
    );
    c.handle_timeout(now);
    if transport.is_stream() {
        c.handle_connected("192.0.2.10:40001".parse().unwrap(), now);
    }
    c.add_peer("203.0.113.7:6000".parse().unwrap(), now);
    c
}

fn drain(c: &mut TurnAllocation) {
    let mut n = 0;
    while let Some(o) = c.poll_output() {
        n += 1;
        // State changes bypass the bound; there are at most a few per input.
        assert!(n <= MAX_QUEUED + 4, "output queue beyond its bound");
        if let TurnOutput::Received { peer, .. } = o {
            assert_eq!(
                peer.ip().to_string(),
                "203.0.113.7",
                "data from a peer never added"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut udp = core(TurnTransport::Udp, now);
    let mut tcp = core(TurnTransport::Tcp, now);
    drain(&mut udp);
    drain(&mut tcp);
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        rest = tail;
        udp.handle_server_bytes(piece, now);
        tcp.handle_server_bytes(piece, now);
        drain(&mut udp);
        drain(&mut tcp);
        now += Duration::from_millis(u64::from(len) * 7);
        udp.handle_timeout(now);
        tcp.handle_timeout(now);
        drain(&mut udp);
        drain(&mut tcp);
    }
});
