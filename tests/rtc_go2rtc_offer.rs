//! An offer shaped like the ones go2rtc's player sends from Chromium: recvonly video, recvonly
//! audio, and a sendonly audio m-line (two-way audio: the browser's microphone). The camera has
//! no audio, so both audio m-lines must come back rejected while the video is answered.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use snaprtcd::media::{self, ChannelLimits};
use snaprtcd::rtc::{Engine, ViewerKind};
use tokio_util::sync::CancellationToken;

#[path = "support/rtc.rs"]
mod support;

const OFFER: &str = include_str!("fixtures/go2rtc-two-way-audio-offer.sdp");

/// The answer's m-lines, each as (its `m=` line, its direction attribute).
fn m_lines(sdp: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in sdp.lines() {
        if line.starts_with("m=") {
            out.push((line.to_owned(), String::new()));
        } else if let Some(last) = out.last_mut() {
            if ["a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"].contains(&line) {
                last.1 = line.to_owned();
            }
        }
    }
    out
}

/// An engine on loopback with a fake pipeline, and its answer to [`OFFER`].
async fn answer_offer(cancel: &CancellationToken) -> String {
    let (media, ports) = media::channel(ChannelLimits::default());
    support::spawn_fake_pipeline(ports, cancel.clone(), 1000, None);
    let engine = Engine::bind(support::loopback_settings(), media)
        .await
        .unwrap();
    let rtc = engine.handle();
    tokio::spawn(engine.run(cancel.clone()));
    let offer = OFFER.replace('\n', "\r\n");
    rtc.answer(offer, ViewerKind::Go2rtc).await.unwrap().sdp
}

#[tokio::test]
async fn a_two_way_audio_offer_is_answered_with_its_audio_rejected() {
    let cancel = CancellationToken::new();
    let sdp = answer_offer(&cancel).await;
    let lines = m_lines(&sdp);
    assert_eq!(
        lines.len(),
        3,
        "one answer m-line per offered one:\n{}",
        sdp
    );
    assert!(lines[0].0.starts_with("m=video 9 "), "{lines:?}");
    assert_eq!(lines[0].1, "a=sendonly", "{lines:?}");
    assert!(sdp.contains("H264/90000"));
    // A rejected m-line leaves the BUNDLE group (RFC 8843), or browsers refuse the answer.
    assert!(sdp.contains("a=group:BUNDLE 0\r\n"), "{}", sdp);
    for (m, _) in &lines[1..] {
        assert!(
            m.starts_with("m=audio 0 "),
            "audio rejected (port 0): {lines:?}"
        );
    }
    cancel.cancel();
}

/// The stream is encoded once at the configured bitrate for every viewer: there is no
/// per-viewer bandwidth estimate, so the answer asks for no transport-wide congestion feedback
/// (a packet every ~100 ms from each viewer, for nothing), while keeping NACK and PLI.
#[tokio::test]
async fn the_answer_asks_for_no_transport_wide_congestion_feedback() {
    let cancel = CancellationToken::new();
    let sdp = answer_offer(&cancel).await;
    assert!(
        OFFER.contains("transport-wide-cc") && OFFER.contains("a=rtcp-fb:96 transport-cc"),
        "the offer asks for it"
    );
    assert!(!sdp.contains("transport-wide-cc"), "{sdp}");
    assert!(!sdp.contains("transport-cc"), "{sdp}");
    assert!(sdp.contains(" nack pli\r\n"), "{sdp}");
    assert!(sdp.contains("urn:ietf:params:rtp-hdrext:sdes:mid"), "{sdp}");
    assert!(sdp.contains("playout-delay"), "{sdp}");
    cancel.cancel();
}
