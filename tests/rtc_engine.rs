//! The WebRTC engine against a real str0m peer over loopback UDP: the peer offers recvonly
//! H.264 video plus a data channel, and must get video frames, a JPEG on open, a JPEG per
//! `snap`, and a JSON error for anything else. A fake pipeline feeds Annex-B frames through
//! `media::channel()` and answers still requests.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use snaprtcd::media::{self, ChannelLimits, EncodedFrame, KeyframeCause, MediaHandle, MediaPorts};
use snaprtcd::rtc::candidates::HostAddr;
use snaprtcd::rtc::{Engine, EngineSettings, RtcError, RtcHandle, ViewerKind};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const FAKE_JPEG_LEN: usize = 20_000;

/// A pipeline stand-in: 30 frames/s, an IDR every 30 frames or when asked, stills on request
/// (`jpeg_len` bytes, or the request's `max_bytes` when that is smaller, as `fit` does).
fn spawn_fake_pipeline(
    mut ports: MediaPorts,
    cancel: CancellationToken,
    jpeg_len: usize,
    keyframe_causes: Option<tokio::sync::mpsc::UnboundedSender<KeyframeCause>>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        let mut n: u64 = 0;
        let mut idr_due = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(cause) = ports.keyframes.recv() => {
                    idr_due = true;
                    if let Some(tx) = &keyframe_causes {
                        let _ = tx.send(cause);
                    }
                }
                Some(req) = ports.stills.recv() => {
                    let len = jpeg_len.min(req.max_bytes);
                    let mut jpeg = vec![0x55u8; len];
                    jpeg[..2].copy_from_slice(&[0xff, 0xd8]);
                    jpeg[len - 2..].copy_from_slice(&[0xff, 0xd9]);
                    let _ = req.reply.send(Ok(Bytes::from(jpeg)));
                }
                _ = tick.tick() => {
                    let key = idr_due || n % 30 == 0;
                    idr_due = false;
                    let _ = ports.frames.send(fake_frame(n, key));
                    n += 1;
                }
            }
        }
    });
}

/// An Annex-B access unit: SPS+PPS+IDR for keyframes, one non-IDR slice otherwise.
fn fake_frame(n: u64, keyframe: bool) -> EncodedFrame {
    let mut d = Vec::new();
    if keyframe {
        d.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0xda, 0x02, 0x80]);
        d.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        d.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        d.extend(std::iter::repeat_n(0x11, 3000));
    } else {
        d.extend_from_slice(&[0, 0, 0, 1, 0x41]);
        d.extend(std::iter::repeat_n(0x22, 800));
    }
    EncodedFrame {
        data: Bytes::from(d),
        keyframe,
        timestamp: Duration::from_millis(n * 33),
    }
}

async fn start(max_viewers: usize) -> (RtcHandle, MediaHandle, CancellationToken) {
    start_with(max_viewers, Duration::from_secs(15)).await
}

async fn start_with(
    max_viewers: usize,
    silence_timeout: Duration,
) -> (RtcHandle, MediaHandle, CancellationToken) {
    let settings = EngineSettings {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        hosts: vec![HostAddr {
            ip: Ipv4Addr::LOCALHOST,
            netmask: Ipv4Addr::new(255, 0, 0, 0),
        }],
        max_viewers,
        snapshot_on_connect: true,
        silence_timeout,
    };
    start_settings(settings, FAKE_JPEG_LEN).await
}

async fn start_settings(
    settings: EngineSettings,
    jpeg_len: usize,
) -> (RtcHandle, MediaHandle, CancellationToken) {
    start_full(settings, jpeg_len, None).await
}

fn loopback_settings() -> EngineSettings {
    EngineSettings {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        hosts: vec![HostAddr {
            ip: Ipv4Addr::LOCALHOST,
            netmask: Ipv4Addr::new(255, 0, 0, 0),
        }],
        max_viewers: 4,
        snapshot_on_connect: true,
        silence_timeout: Duration::from_secs(15),
    }
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

/// A str0m peer like a browser: full ICE, offers recvonly video and a data channel.
struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
}

impl Peer {
    async fn new() -> (Self, String, str0m::change::SdpPendingOffer) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().enable_h264(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.add_channel("snap".into());
        let (offer, pending) = api.apply().unwrap();
        (Self { rtc, socket, local }, offer.to_sdp_string(), pending)
    }
}

impl Peer {
    /// Take the engine's answer to this peer's offer.
    fn accept(&mut self, pending: str0m::change::SdpPendingOffer, answer: &str) {
        self.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(answer).unwrap())
            .unwrap();
    }

    /// Run the peer like a browser's event loop (drain it, then wait for a datagram or its
    /// timeout) and hand every event to `on_event` until it returns true; panics after `limit`.
    async fn drive(&mut self, limit: Duration, mut on_event: impl FnMut(&mut Rtc, Event) -> bool) {
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let timeout = loop {
                match self.rtc.poll_output().unwrap() {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        self.socket
                            .send_to(&t.contents, t.destination)
                            .await
                            .unwrap();
                    }
                    Output::Event(e) => {
                        if on_event(&mut self.rtc, e) {
                            return;
                        }
                    }
                }
            };
            let wait = tokio::time::Instant::from_std(timeout);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, source) = r.unwrap();
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents: DatagramRecv::try_from(&buf[..n]).unwrap(),
                    });
                    self.rtc.handle_input(input).unwrap();
                }
                _ = tokio::time::sleep_until(wait) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
                }
                _ = tokio::time::sleep_until(deadline) => panic!("peer timed out after {limit:?}"),
            }
        }
    }

    /// Drive until `n` video frames arrived.
    async fn frames(&mut self, n: usize) {
        let mut got = 0;
        self.drive(Duration::from_secs(10), |_, e| {
            if matches!(e, Event::MediaData(_)) {
                got += 1;
            }
            got >= n
        })
        .await;
    }

    /// Drive until the first binary data channel message (the still sent on open).
    async fn first_still(&mut self) -> Vec<u8> {
        let mut still = None;
        self.drive(Duration::from_secs(10), |_, e| {
            if let Event::ChannelData(d) = e {
                if d.binary {
                    still = Some(d.data);
                } else {
                    panic!(
                        "error instead of a still: {}",
                        String::from_utf8_lossy(&d.data)
                    );
                }
            }
            still.is_some()
        })
        .await;
        still.unwrap()
    }
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
