//! Offer inspection (`snaprtcd::rtc::offer::inspect`), then str0m's SDP parser on what
//! inspection lets through, as the engine does with every offer from outside (WHEP `POST`,
//! SnapRTC `signalCapture`).
//!
//! The input is the SDP text. Invariants, besides not panicking: the cleaned offer holds every
//! line but the `.local` candidates it counted, is itself an offer with the same summary and
//! nothing left to clean (so str0m never sees an mDNS name), and H.264 implies video.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snaprtcd::rtc::offer::inspect;
use str0m::change::SdpOffer;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((cleaned, summary)) = inspect(sdp) else {
        return;
    };
    assert!(!summary.has_h264 || summary.has_video, "{summary:?}");
    assert!(summary.max_message_size > 0);
    assert_eq!(
        cleaned.lines().count() + summary.mdns_candidates_dropped,
        sdp.lines().count(),
        "lines lost or added"
    );
    let (again, summary_again) = inspect(&cleaned).expect("a cleaned offer is an offer");
    assert_eq!(again, cleaned, "cleaning is not idempotent");
    assert_eq!(
        summary_again.mdns_candidates_dropped, 0,
        "mDNS left in {cleaned:?}"
    );
    assert_eq!(
        (
            summary_again.has_video,
            summary_again.has_h264,
            summary_again.has_data
        ),
        (summary.has_video, summary.has_h264, summary.has_data)
    );
    assert_eq!(summary_again.max_message_size, summary.max_message_size);
    let _ = SdpOffer::from_sdp_string(&cleaned);
});
