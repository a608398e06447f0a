//! The WebRTC engine against a real str0m peer over loopback UDP: the peer offers recvonly
//! H.264 video plus a data channel, and must get video frames, a JPEG on open, a JPEG per
//! `snap`, and a JSON error for anything else. A fake pipeline feeds Annex-B frames through
//! `media::channel()` and answers still requests.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::time::{Duration, Instant};

use snaprtcd::media::{self, ChannelLimits, KeyframeCause, MediaHandle};
use snaprtcd::rtc::{Engine, EngineSettings, RtcError, RtcHandle, ViewerKind};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::{Event, Rtc};
use tokio_util::sync::CancellationToken;

#[path = "support/rtc.rs"]
mod support;

use support::{loopback_settings, spawn_fake_pipeline, Peer};

const FAKE_JPEG_LEN: usize = 20_000;

async fn start(max_viewers: usize) -> (RtcHandle, MediaHandle, CancellationToken) {
    start_with(max_viewers, Duration::from_secs(15)).await
}

async fn start_with(
    max_viewers: usize,
    silence_timeout: Duration,
) -> (RtcHandle, MediaHandle, CancellationToken) {
    let settings = EngineSettings {
        max_viewers,
        silence_timeout,
        ..loopback_settings()
    };
    start_settings(settings, FAKE_JPEG_LEN).await
}

async fn start_settings(
    settings: EngineSettings,
    jpeg_len: usize,
) -> (RtcHandle, MediaHandle, CancellationToken) {
    start_full(settings, jpeg_len, None).await
}

async fn start_full(
    settings: EngineSettings,
    jpeg_len: usize,
    keyframe_causes: Option<tokio::sync::mpsc::UnboundedSender<KeyframeCause>>,
) -> (RtcHandle, MediaHandle, CancellationToken) {
    let (media, ports) = media::channel(ChannelLimits::default());
    let cancel = CancellationToken::new();
    spawn_fake_pipeline(ports, cancel.clone(), jpeg_len, keyframe_causes);
    let engine = Engine::bind(settings, media.clone()).await.unwrap();
    let handle = engine.handle();
    tokio::spawn(engine.run(cancel.clone()));
    (handle, media, cancel)
}

#[derive(Default, Debug)]
struct Seen {
    frames: usize,
    jpegs: usize,
    errors: usize,
}

#[tokio::test]
async fn str0m_peer_gets_h264_frames_and_jpegs_on_the_data_channel() {
    let (rtc, _media, cancel) = start(4).await;
    let (mut peer, offer, pending) = Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(answer.sdp.contains("H264/90000"), "{}", answer.sdp);
    assert!(
        answer.sdp.contains("profile-level-id=42e01f"),
        "{}",
        answer.sdp
    );
    assert!(
        answer.sdp.contains("packetization-mode=1"),
        "{}",
        answer.sdp
    );
    assert!(
        answer.sdp.contains("a=candidate:"),
        "server candidates in the answer"
    );
    peer.accept(pending, &answer.sdp);

    let started = Instant::now();
    let mut seen = Seen::default();
    let mut sent_snap = false;
    peer.drive(Duration::from_secs(15), |rtc, e| {
        match e {
            Event::MediaData(d) => {
                assert_eq!(d.params.spec().codec, str0m::format::Codec::H264);
                seen.frames += 1;
            }
            Event::ChannelData(d) if d.binary => {
                assert_eq!(&d.data[..2], &[0xff, 0xd8], "a JPEG");
                seen.jpegs += 1;
                let mut ch = rtc.channel(d.id).unwrap();
                if !sent_snap {
                    assert!(ch.write(false, b"snap").unwrap());
                    assert!(ch.write(false, b"bogus").unwrap());
                    assert!(ch.write(true, b"snap").unwrap());
                    sent_snap = true;
                }
            }
            Event::ChannelData(d) => {
                let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                assert!(v["error"].is_string(), "{v}");
                seen.errors += 1;
            }
            _ => {}
        }
        seen.frames >= 20 && seen.jpegs >= 2 && seen.errors >= 2
    })
    .await;
    eprintln!("peer got {seen:?} in {:?}", started.elapsed());

    let stats = rtc.stats().await.unwrap();
    assert_eq!((stats.viewers, stats.connected), (1, 1));
    assert!(
        stats.frames_sent >= 20 && stats.stills_sent >= 2,
        "{stats:?}"
    );

    rtc.close(answer.id).await.unwrap();
    assert_eq!(rtc.stats().await.unwrap().viewers, 0);
    assert_eq!(rtc.close(answer.id).await, Err(RtcError::NotFound));
    cancel.cancel();
}

#[tokio::test]
async fn pli_and_fir_from_a_viewer_become_keyframe_requests_with_their_cause() {
    let (tx, mut causes) = tokio::sync::mpsc::unbounded_channel();
    let (rtc, _media, cancel) = start_full(loopback_settings(), FAKE_JPEG_LEN, Some(tx)).await;
    let (mut peer, offer, pending) = Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    peer.accept(pending, &answer.sdp);
    let mut mid: Option<Mid> = None;
    let mut got = 0;
    peer.drive(Duration::from_secs(10), |_, e| {
        if let Event::MediaData(d) = e {
            mid = Some(d.mid);
            got += 1;
        }
        got >= 5
    })
    .await;
    // Whatever the engine asked for while starting (a new viewer's IDR) is not under test.
    while causes.try_recv().is_ok() {}
    let mid = mid.unwrap();
    for (kind, want) in [
        (KeyframeRequestKind::Pli, KeyframeCause::Pli),
        (KeyframeRequestKind::Fir, KeyframeCause::Fir),
    ] {
        let mut w = peer.rtc.writer(mid).expect("writer");
        assert!(w.is_request_keyframe_possible(kind), "{kind:?} negotiated");
        w.request_keyframe(None, kind).unwrap();
        // Keep the peer running (the request leaves on its next timeout) until the pipeline
        // hears of it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            tokio::select! {
                Some(cause) = causes.recv() => { assert_eq!(cause, want); break; }
                _ = peer.frames(1) => {}
                _ = tokio::time::sleep_until(deadline) => panic!("no {want:?} keyframe request"),
            }
        }
    }
    cancel.cancel();
}

/// `a=max-message-size` of a str0m offer replaced by `size` (removed when `None`).
fn with_max_message_size(offer: &str, size: Option<usize>) -> String {
    let out: Vec<String> = offer
        .split("\r\n")
        .filter_map(|l| {
            if l.starts_with("a=max-message-size:") {
                size.map(|n| format!("a=max-message-size:{n}"))
            } else {
                Some(l.to_owned())
            }
        })
        .collect();
    let out = out.join("\r\n");
    assert!(
        size.is_none() || out.contains("a=max-message-size:"),
        "str0m's offer has no max-message-size to replace"
    );
    out
}

#[tokio::test]
async fn stills_fit_the_peers_max_message_size_64k_when_absent() {
    // The pipeline would make 1 MiB stills; each must be cut to what the peer takes.
    let (rtc, _media, cancel) = start_settings(loopback_settings(), 1 << 20).await;
    for (size, want) in [
        (None, 65_536),
        (Some(30_000), 30_000),
        (Some(4 << 20), snaprtcd::rtc::MAX_STILL_BYTES),
    ] {
        let (mut peer, offer, pending) = Peer::new().await;
        let answer = rtc
            .answer(with_max_message_size(&offer, size), ViewerKind::Whep)
            .await
            .unwrap();
        peer.accept(pending, &answer.sdp);
        let still = peer.first_still().await;
        assert_eq!(still.len(), want, "max-message-size {size:?}");
        rtc.close(answer.id).await.unwrap();
    }
    cancel.cancel();
}

#[tokio::test]
async fn mdns_candidates_in_an_offer_or_a_patch_never_fail_it() {
    let (rtc, _media, cancel) = start(4).await;
    let (mut peer, offer, pending) = Peer::new().await;
    // As Chrome sends them by default: the host address hidden behind a random .local name.
    let mdns = "a=candidate:3 1 udp 2113937151 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.local 54321 typ host\r\n";
    let at = offer
        .find("a=candidate:")
        .expect("the peer's own candidate");
    let offer = format!("{}{mdns}{}", &offer[..at], &offer[at..]);
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    peer.accept(pending, &answer.sdp);
    peer.frames(5).await;
    // A trickled .local candidate is skipped too.
    rtc.patch(answer.id, Some(answer.etag.clone()), mdns)
        .await
        .unwrap();
    peer.frames(5).await;
    cancel.cancel();
}

#[tokio::test]
async fn public_addrs_are_announced_as_host_candidates() {
    let mut config = snaprtcd::config::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.rtc_udp_port = 0;
    config.server.public_addrs = vec!["203.0.113.9".parse().unwrap()];
    let settings = EngineSettings::from_config(&config);
    let (rtc, _media, cancel) = start_settings(settings, FAKE_JPEG_LEN).await;
    let addrs = rtc.candidate_addrs();
    let port = addrs[0].port();
    assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
    let (_peer, offer, _) = Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(
        answer
            .sdp
            .contains(&format!(" 203.0.113.9 {port} typ host")),
        "{}",
        answer.sdp
    );
    assert!(answer.sdp.contains(&format!(" 127.0.0.1 {port} typ host")));
    cancel.cancel();
}

#[tokio::test]
async fn a_connected_peer_that_falls_silent_is_removed() {
    assert!(snaprtcd::rtc::SILENCE_TIMEOUT <= Duration::from_secs(30));
    let (rtc, _media, cancel) = start_with(4, Duration::from_millis(1500)).await;
    let (mut peer, offer, pending) = Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    peer.accept(pending, &answer.sdp);
    peer.frames(10).await;
    assert_eq!(rtc.stats().await.unwrap().connected, 1);
    // The peer goes away without a word (tab killed, Wi-Fi gone).
    drop(peer);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = rtc.stats().await.unwrap();
        if s.viewers == 0 {
            assert_eq!(s.timed_out, 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "viewer not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
}

#[tokio::test]
async fn bad_offers_and_limits_are_refused_with_reasons() {
    let (rtc, _media, cancel) = start(1).await;
    assert!(matches!(
        rtc.answer("garbage".into(), ViewerKind::Whep).await,
        Err(RtcError::BadOffer(_))
    ));
    let audio_only = {
        let mut r = Rtc::builder().build(Instant::now());
        let mut api = r.sdp_api();
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        api.apply().unwrap().0.to_sdp_string()
    };
    assert_eq!(
        rtc.answer(audio_only, ViewerKind::Whep).await.unwrap_err(),
        RtcError::NoVideo
    );
    let vp8_only = {
        let mut r = Rtc::builder()
            .clear_codecs()
            .enable_vp8(true)
            .build(Instant::now());
        let mut api = r.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.apply().unwrap().0.to_sdp_string()
    };
    assert_eq!(
        rtc.answer(vp8_only, ViewerKind::Whep).await.unwrap_err(),
        RtcError::NoH264
    );

    // A data-channel-only offer is fine for SnapRTC, not for WHEP.
    let (_p1, offer1, _) = Peer::new().await;
    let first = rtc
        .answer(
            offer1,
            ViewerKind::SnapRtc {
                session: "s".into(),
            },
        )
        .await
        .unwrap();
    let (_p2, offer2, _) = Peer::new().await;
    assert_eq!(
        rtc.answer(offer2, ViewerKind::Whep).await.unwrap_err(),
        RtcError::Full { max: 1 }
    );
    rtc.close(first.id).await.unwrap();
    let (_p3, offer3, _) = Peer::new().await;
    let third = rtc.answer(offer3, ViewerKind::Whep).await.unwrap();

    // WHEP trickle ETag rules.
    let frag = "a=candidate:1 1 udp 2113937151 127.0.0.1 40000 typ host\r\n";
    assert_eq!(
        rtc.patch(third.id, None, frag).await,
        Err(RtcError::PreconditionRequired)
    );
    assert_eq!(
        rtc.patch(third.id, Some("\"stale\"".into()), frag).await,
        Err(RtcError::PreconditionFailed)
    );
    rtc.patch(third.id, Some(third.etag.clone()), frag)
        .await
        .unwrap();
    cancel.cancel();
}

#[tokio::test]
async fn a_peer_that_never_speaks_is_removed_after_the_silence_timeout() {
    let (rtc, _media, cancel) = start_with(4, Duration::from_millis(300)).await;
    let (_peer, offer, _) = Peer::new().await;
    rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert_eq!(rtc.stats().await.unwrap().viewers, 1);
    // The engine wakes at least once a second to look at liveness.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = rtc.stats().await.unwrap();
        if s.viewers == 0 {
            assert_eq!(s.timed_out, 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "viewer not removed");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
}

/// Engine turns are serial: a command answered after `stats` means the previous command's turn
/// (and its sweep, which takes or drops the frame stream) is complete.
async fn subscribers_after_settling(rtc: &RtcHandle, media: &MediaHandle) -> usize {
    rtc.stats().await.unwrap();
    media.subscriber_count()
}

#[tokio::test]
async fn the_frame_stream_is_held_only_while_a_viewer_has_video() {
    let (rtc, media, cancel) = start(4).await;
    assert_eq!(
        subscribers_after_settling(&rtc, &media).await,
        0,
        "no viewer: no subscription, so the pipeline does not encode"
    );

    // A data-channel-only SnapRTC viewer takes no video: still no subscription.
    let data_only = {
        let mut r = Rtc::builder().build(Instant::now());
        let mut api = r.sdp_api();
        api.add_channel("snap".into());
        api.apply().unwrap().0.to_sdp_string()
    };
    let stills_viewer = rtc
        .answer(
            data_only,
            ViewerKind::SnapRtc {
                session: "s".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(subscribers_after_settling(&rtc, &media).await, 0);

    for round in 0..2 {
        // The first video viewer subscribes as soon as it is added (before ICE and DTLS), so
        // the pipeline's IDR is on its way while the peer connects.
        let (mut a, offer, pending) = Peer::new().await;
        let answer_a = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
        assert_eq!(subscribers_after_settling(&rtc, &media).await, 1);
        a.accept(pending, &answer_a.sdp);
        a.frames(5).await;

        // A second viewer shares the one subscription.
        let (mut b, offer, pending) = Peer::new().await;
        let answer_b = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
        b.accept(pending, &answer_b.sdp);
        b.frames(5).await;
        assert_eq!(subscribers_after_settling(&rtc, &media).await, 1);

        rtc.close(answer_a.id).await.unwrap();
        assert_eq!(
            subscribers_after_settling(&rtc, &media).await,
            1,
            "b still watches"
        );
        rtc.close(answer_b.id).await.unwrap();
        assert_eq!(
            subscribers_after_settling(&rtc, &media).await,
            0,
            "round {round}: the last video viewer left, the subscription is dropped at once"
        );
    }
    rtc.close(stills_viewer.id).await.unwrap();
    cancel.cancel();
}

#[tokio::test]
async fn offers_and_fragments_over_an_sdp_budget_are_refused_naming_the_key() {
    let mut settings = loopback_settings();
    // A str0m peer offers two m-lines (video, data channel) and one candidate.
    settings.sdp_limits = snaprtcd::rtc::SdpLimits {
        max_bytes: 8192,
        max_media: 2,
        max_candidates: 2,
    };
    let (rtc, _media, cancel) = start_settings(settings, FAKE_JPEG_LEN).await;
    let refused = |offer: String| {
        let rtc = rtc.clone();
        async move {
            match rtc.answer(offer, ViewerKind::Whep).await {
                Err(RtcError::BadOffer(why)) => why,
                other => panic!("not refused as a bad offer: {other:?}"),
            }
        }
    };
    let (_p, offer, _) = Peer::new().await;
    let big = format!("{offer}{}", "a=x-padding:0\r\n".repeat(600));
    assert!(refused(big).await.contains("server.max_sdp_bytes"));
    let media = format!("{offer}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:9\r\n");
    assert!(refused(media).await.contains("server.max_sdp_media"));
    let cand = "a=candidate:9 1 udp 2113937151 127.0.0.1 40000 typ host\r\n";
    let candidates = format!("{offer}{}", cand.repeat(2));
    assert!(refused(candidates)
        .await
        .contains("server.max_sdp_candidates"));
    assert_eq!(
        rtc.stats().await.unwrap().rtc_built,
        0,
        "budgets are checked before an Rtc is built"
    );

    // One candidate in the offer: one more may trickle in, not two.
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    let etag = Some(answer.etag.clone());
    match rtc.patch(answer.id, etag.clone(), &cand.repeat(2)).await {
        Err(RtcError::BadFragment(why)) => assert!(why.contains("server.max_sdp_candidates")),
        other => panic!("{other:?}"),
    }
    rtc.patch(answer.id, etag.clone(), cand).await.unwrap();
    match rtc.patch(answer.id, etag, cand).await {
        Err(RtcError::BadFragment(why)) => {
            assert!(why.contains("server.max_sdp_candidates"), "{why}")
        }
        other => panic!("a viewer's candidates are bounded in all: {other:?}"),
    }
    cancel.cancel();
}

#[tokio::test]
async fn offers_over_max_viewers_build_no_rtc() {
    let (rtc, _media, cancel) = start(1).await;
    let (_p, offer, _) = Peer::new().await;
    let first = rtc.answer(offer.clone(), ViewerKind::Whep).await.unwrap();
    let flood: Vec<_> = (0..50)
        .map(|_| {
            let (rtc, offer) = (rtc.clone(), offer.clone());
            tokio::spawn(async move { rtc.answer(offer, ViewerKind::Whep).await })
        })
        .collect();
    for t in flood {
        assert_eq!(t.await.unwrap().unwrap_err(), RtcError::Full { max: 1 });
    }
    let s = rtc.stats().await.unwrap();
    assert_eq!((s.viewers, s.rtc_built), (1, 1), "{s:?}");
    // The place comes back when the viewer goes.
    rtc.close(first.id).await.unwrap();
    rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert_eq!(rtc.stats().await.unwrap().rtc_built, 2);
    cancel.cancel();
}
