//! SnapRTC payloads (`snaprtcd::signaling::snappeer::decode`): lz-string
//! `compressToEncodedURIComponent` or plain JSON, holding a simple-peer signal.
//!
//! The input is the payload text. Invariants, besides not panicking: a decoded SDP stays
//! within the payload budget (`[signaling] max_payload_bytes`, 256 KiB by default: issue 11
//! item 1), and an answer this side encodes decodes back to the same SDP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snaprtcd::signaling::snappeer::{decode, encode_answer, Encoding, Signal};

/// The default `[signaling] max_payload_bytes`: no decoded payload may be larger.
const BUDGET: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((signal, encoding)) = decode(payload, BUDGET) else {
        return;
    };
    let sdp = match signal {
        Signal::Offer { sdp } | Signal::Answer { sdp } => sdp,
        Signal::Candidate | Signal::Renegotiate | Signal::Other(_) => return,
    };
    assert!(
        sdp.len() <= BUDGET,
        "decoded an SDP of {} bytes from a payload of {} ({encoding:?})",
        sdp.len(),
        payload.len()
    );
    // Our answer goes back in the encoding the offer came in; it must read back as sent.
    // (Short ones only: JSON escapes can make a long SDP's payload outgrow the budget.)
    if sdp.len() <= 4096 {
        for encoding in [encoding, Encoding::Json, Encoding::LzUri] {
            let packed = encode_answer(&sdp, encoding);
            match decode(&packed, BUDGET) {
                Ok((Signal::Answer { sdp: back }, e)) => {
                    assert_eq!(back, sdp, "answer changed on the way ({encoding:?})");
                    assert_eq!(e, encoding);
                }
                other => panic!("our own {encoding:?} answer does not decode: {other:?}"),
            }
        }
    }
});
