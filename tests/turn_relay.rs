//! A str0m peer reaches the engine only through the TURN relay: the engine has no host
//! candidate (settings with `hosts: []`), `[ice] turn_servers` names a coturn on loopback, and
//! the peer gets H.264 frames and a still, over `turn:…?transport=udp`. (TURN over TCP is
//! shown against coturn by `tests/turn_coturn.rs`.)
//! The answer's only candidate is the relayed one; `/health`'s TURN state says `ready`.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

#[path = "support/coturn.rs"]
mod coturn;
#[path = "support/rtc.rs"]
mod support;

use std::time::Duration;

use snaprtcd::config::{IceConfig, TurnServer};
use snaprtcd::media::{self, ChannelLimits};
use snaprtcd::rtc::{Engine, EngineSettings, RtcHandle, ViewerKind};
use tokio_util::sync::CancellationToken;

use coturn::Coturn;
use support::{loopback_settings, spawn_fake_pipeline, Peer};

async fn start(turn_url: String) -> (RtcHandle, CancellationToken) {
    let settings = EngineSettings {
        hosts: Vec::new(),
        ice: IceConfig {
            turn_servers: vec![TurnServer {
                url: turn_url,
                username: "cam".into(),
                credential: "pass".into(),
                ..TurnServer::default()
            }],
            ..IceConfig::default()
        },
        ..loopback_settings()
    };
    let (media, ports) = media::channel(ChannelLimits::default());
    let cancel = CancellationToken::new();
    spawn_fake_pipeline(ports, cancel.clone(), 20_000, None);
    let engine = Engine::bind(settings, media).await.unwrap();
    let handle = engine.handle();
    tokio::spawn(engine.run(cancel.clone()));
    (handle, cancel)
}

/// Wait until the engine offers a relayed candidate (it is in every answer from then on).
async fn relayed_ready(rtc: &RtcHandle) {
    let mut watch = rtc.watch_extra_candidates();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|c| c.iter().any(|c| c.kind() == str0m::CandidateKind::Relayed)),
    )
    .await
    .expect("no relayed candidate within 10 s")
    .unwrap();
}

async fn video_through_the_relay(transport: &str) {
    if std::env::var("TURN_TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("TURN_TEST_LOG"))
            .with_test_writer()
            .try_init();
    }
    let Some(coturn) = Coturn::start(&["--lt-cred-mech", "--user=cam:pass"]) else {
        return;
    };
    let url = format!("turn:127.0.0.1:{}?transport={transport}", coturn.port);
    let (rtc, cancel) = start(url).await;
    relayed_ready(&rtc).await;

    let (mut peer, offer, pending) = Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(answer.sdp.contains("typ relay"), "{}", answer.sdp);
    assert!(!answer.sdp.contains("typ host"), "{}", answer.sdp);
    peer.accept(pending, &answer.sdp);
    peer.frames(5).await;
    let still = peer.first_still().await;
    assert_eq!(&still[..2], &[0xff, 0xd8]);

    let stats = rtc.stats().await.unwrap();
    assert_eq!(stats.turn.len(), 1);
    let turn = &stats.turn[0];
    assert!(turn.state.starts_with("ready 127.0.0.1:"), "{turn:?}");
    assert!(
        turn.bytes_out > 10_000,
        "video went out through the relay: {turn:?}"
    );
    assert!(turn.bytes_in > 0, "{turn:?}");
    cancel.cancel();
}

#[tokio::test]
async fn a_peer_gets_video_only_through_turn_over_udp() {
    video_through_the_relay("udp").await;
}
