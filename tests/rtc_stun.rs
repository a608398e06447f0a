//! Server-reflexive candidates end to end on loopback: a tiny STUN responder task (it answers
//! Binding requests with a made-up public address, as a NAT would show one) and the engine
//! configured with `[ice] stun_servers` pointing at it. The mapped address must reach new
//! answers as a `typ srflx` candidate and the engine's stats (`/health`); a dead server must
//! show as failing. Without `stun_servers` nothing is sent and the answer stays ICE-lite.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use snaprtcd::config::IceConfig;
use snaprtcd::media::{self, ChannelLimits};
use snaprtcd::rtc::{Engine, EngineSettings, RtcHandle, ViewerKind};
use stun_proto::types::attribute::{ErrorCode, XorMappedAddress};
use stun_proto::types::message::{Message, MessageClass, MessageWriteVec, BINDING};
use stun_proto::types::prelude::*;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[path = "support/rtc.rs"]
mod support;

const MAPPED: &str = "198.51.100.7:40123";

/// A STUN responder on loopback: answers every Binding request with [`MAPPED`] (or, with
/// `refuse`, a 401 error response) and reports each request's source on `seen`.
async fn stun_responder(
    cancel: CancellationToken,
    refuse: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    // Always open (a receiver keeps the last value after its sender is gone).
    let gate = tokio::sync::watch::channel(true).1;
    gated_responder(cancel, refuse, gate).await
}

/// [`stun_responder`] that drops requests while `gate` holds `false` (a slow server: the
/// engine's retransmits get the answer once it opens).
async fn gated_responder(
    cancel: CancellationToken,
    refuse: bool,
    gate: tokio::sync::watch::Receiver<bool>,
) -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, from) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = socket.recv_from(&mut buf) => r.unwrap(),
            };
            let Ok(req) = Message::from_bytes(&buf[..n]) else {
                continue;
            };
            if !(req.has_class(MessageClass::Request) && req.has_method(BINDING)) {
                continue;
            }
            let _ = tx.send(from);
            if !*gate.borrow() {
                continue;
            }
            if refuse {
                let mut resp = Message::builder_error(&req, MessageWriteVec::new());
                let code = ErrorCode::builder(401)
                    .reason("Unauthorized")
                    .build()
                    .unwrap();
                resp.add_attribute(&code).unwrap();
                socket.send_to(&resp.finish(), from).await.unwrap();
                continue;
            }
            let mut resp = Message::builder_success(&req, MessageWriteVec::new());
            resp.add_attribute(&XorMappedAddress::new(
                MAPPED.parse().unwrap(),
                req.transaction_id(),
            ))
            .unwrap();
            socket.send_to(&resp.finish(), from).await.unwrap();
        }
    });
    (addr, seen)
}

async fn engine(ice: IceConfig, cancel: &CancellationToken) -> (RtcHandle, SocketAddr) {
    let (media, ports) = media::channel(ChannelLimits::default());
    support::spawn_fake_pipeline(ports, cancel.clone(), 1000, None);
    let settings = EngineSettings {
        ice,
        ..support::loopback_settings()
    };
    let engine = Engine::bind(settings, media).await.unwrap();
    let (handle, addr) = (engine.handle(), engine.local_addr().unwrap());
    tokio::spawn(engine.run(cancel.clone()));
    (handle, addr)
}

#[tokio::test]
async fn a_stun_server_gives_a_srflx_candidate_in_answers_and_health() {
    let cancel = CancellationToken::new();
    let (server, mut seen) = stun_responder(cancel.clone(), false).await;
    let ice = IceConfig {
        stun_servers: vec![format!("stun:{server}")],
        ..IceConfig::default()
    };
    let (rtc, engine_addr) = engine(ice, &cancel).await;
    let from = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("a Binding request within 5 s")
        .unwrap();
    assert_eq!(from, engine_addr, "sent from the engine's one UDP socket");
    let mut watch = rtc.watch_extra_candidates();
    tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|c| !c.is_empty()))
        .await
        .expect("a candidate within 5 s")
        .unwrap();
    let stats = rtc.stats().await.unwrap();
    assert_eq!(stats.ice.len(), 1, "{stats:?}");
    assert_eq!(stats.ice[0].state, "ok");
    assert_eq!(stats.ice[0].candidate, Some(MAPPED.parse().unwrap()));

    let (_, offer, _) = support::Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(
        answer.sdp.contains("198.51.100.7 40123 typ srflx"),
        "{}",
        answer.sdp
    );
    assert!(
        !answer.sdp.contains("a=ice-lite"),
        "full ICE with a STUN server: {}",
        answer.sdp
    );
    cancel.cancel();
}

#[tokio::test]
async fn a_candidate_found_after_the_answer_goes_back_in_the_next_patch_response() {
    let cancel = CancellationToken::new();
    let (open, gate) = tokio::sync::watch::channel(false);
    let (server, mut seen) = gated_responder(cancel.clone(), false, gate).await;
    let ice = IceConfig {
        stun_servers: vec![format!("stun:{server}")],
        ..IceConfig::default()
    };
    let (rtc, _) = engine(ice, &cancel).await;
    tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("a Binding request within 5 s")
        .unwrap();
    let (_, offer, _) = support::Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(
        !answer.sdp.contains("srflx"),
        "not known yet: {}",
        answer.sdp
    );
    let etag = Some(answer.etag.clone());
    assert!(rtc
        .patch(answer.id, etag.clone(), "")
        .await
        .unwrap()
        .is_empty());

    open.send_replace(true); // the engine's next retransmit is answered
    let mut watch = rtc.watch_extra_candidates();
    tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|c| !c.is_empty()))
        .await
        .expect("a candidate within 5 s")
        .unwrap();
    let late = rtc.patch(answer.id, etag.clone(), "").await.unwrap();
    assert_eq!(
        late.iter().map(|c| c.addr()).collect::<Vec<_>>(),
        vec![MAPPED.parse::<SocketAddr>().unwrap()]
    );
    assert!(
        rtc.patch(answer.id, etag, "").await.unwrap().is_empty(),
        "each candidate is sent once"
    );
    cancel.cancel();
}

#[tokio::test]
async fn a_refusing_stun_server_shows_as_failing_and_adds_no_candidate() {
    let cancel = CancellationToken::new();
    let (server, mut seen) = stun_responder(cancel.clone(), true).await;
    let ice = IceConfig {
        stun_servers: vec![format!("stun:{server}")],
        ..IceConfig::default()
    };
    let (rtc, _) = engine(ice, &cancel).await;
    tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("a Binding request within 5 s")
        .unwrap();
    // The refusal is in flight; engine turns are serial, so ask until it has been handled
    // (each `stats` is one turn; the datagram is read in one of them).
    let health = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = rtc.stats().await.unwrap();
            if s.ice[0].state != "starting" {
                return s.ice[0].clone();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the refusal handled within 5 s");
    assert_eq!(health.state, "failing");
    assert!(
        health.error.as_deref().unwrap_or("").contains("401"),
        "{health:?}"
    );
    assert!(rtc.extra_candidates().is_empty());
    cancel.cancel();
}

#[tokio::test]
async fn without_servers_the_answer_is_ice_lite_with_host_candidates() {
    let cancel = CancellationToken::new();
    let (rtc, _) = engine(IceConfig::default(), &cancel).await;
    let (_, offer, _) = support::Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(answer.sdp.contains("a=ice-lite"), "{}", answer.sdp);
    assert!(!answer.sdp.contains("srflx"), "{}", answer.sdp);
    assert!(rtc.stats().await.unwrap().ice.is_empty());
    cancel.cancel();
}
