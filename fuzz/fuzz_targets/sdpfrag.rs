//! WHEP `PATCH` bodies (`application/trickle-ice-sdpfrag`): the candidate lines
//! `snaprtcd::rtc::offer::fragment_candidates` picks, each parsed by str0m as
//! `RtcHandle::patch` does, and the `If-Match` and path checks the same request goes through.
//!
//! The input is the fragment text. Invariants, besides not panicking: only `a=candidate:`
//! lines come out, without their `a=` and without `.local` (mDNS) addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snaprtcd::rtc::offer::{fragment_candidates, parse_sdpfrag};
use snaprtcd::rtc::whep::{check_if_match, route};
use snaprtcd::rtc::SdpLimits;
use str0m::Candidate;

fuzz_target!(|data: &[u8]| {
    let Ok(frag) = std::str::from_utf8(data) else {
        return;
    };
    let candidates = fragment_candidates(frag);
    assert!(candidates.len() <= frag.lines().count());
    for line in candidates {
        assert!(line.starts_with("candidate:"), "{line:?}");
        let address = line.split_whitespace().nth(4).unwrap_or("");
        assert!(
            !address.to_ascii_lowercase().ends_with(".local"),
            "{line:?}"
        );
        let _ = Candidate::from_sdp_string(line);
    }
    // What the engine does with a PATCH body: the budgets, then str0m's parser.
    let limits = SdpLimits::default();
    if let Ok(parsed) = parse_sdpfrag(frag, &limits) {
        assert!(
            parsed.len() <= limits.max_candidates,
            "{} candidates",
            parsed.len()
        );
    }
    // The same request's other outside strings: its If-Match header and its path.
    let first = frag.lines().next().unwrap_or("");
    let _ = check_if_match("\"3bc1e29d\"", Some(first));
    let _ = route(first);
});
