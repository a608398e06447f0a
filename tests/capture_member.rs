//! The built-in capture member (`join_sessions = "all"`) in-process, with a stand-in for the
//! WebRTC engine: an initiator that opens a session gets `signalStart`, its lz-string offer is
//! answered in the same encoding, and the capture side leaves when the initiator does.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::signalr::{Client, Read};
use serde_json::json;
use snaprtcd::auth::Auth;
use snaprtcd::config::{Config, JoinSessions};
use snaprtcd::http::{AppState, CameraServices};
use snaprtcd::signaling::capture::{Answerer, Connected, EngineAnswer};
use snaprtcd::signaling::hub::SessionId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Answers every offer with an SDP naming the session and echoing the offer's first line.
struct FakeEngine;

impl Answerer for FakeEngine {
    fn answer(
        &self,
        offer: String,
        session: SessionId,
    ) -> Pin<Box<dyn Future<Output = Result<EngineAnswer, String>> + Send>> {
        Box::pin(async move {
            if offer.contains("reject") {
                return Err("no video".into());
            }
            Ok(EngineAnswer {
                sdp: format!(
                    "answer-for {session} to {}",
                    offer.lines().next().unwrap_or("")
                ),
                connected: Connected::ready(true),
            })
        })
    }
}

async fn start(join: JoinSessions) -> (std::net::SocketAddr, CancellationToken) {
    let mut config = Config::default();
    config.signaling.join_sessions = join;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let signaling = snaprtcd::signaling::spawn(
        config.signaling.clone(),
        &config.backplane,
        Some(Arc::new(FakeEngine)),
        cancel.clone(),
        tracker.clone(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The HTTP state needs an engine and a media handle; neither is used by these tests.
    config.server.rtc_udp_port = 0;
    config.server.listen = addr;
    let (media, _ports) = snaprtcd::media::channel(snaprtcd::media::ChannelLimits::default());
    let engine = snaprtcd::rtc::Engine::bind(
        snaprtcd::rtc::EngineSettings::from_config(&config),
        media.clone(),
    )
    .await
    .unwrap();
    let rtc = engine.handle();
    tokio::spawn(engine.run(cancel.clone()));
    let whep = snaprtcd::rtc::whep::Whep::new(
        rtc.clone(),
        snaprtcd::rtc::whep::WhepSettings::from_config(&config),
    );
    let state = Arc::new(AppState {
        config: Arc::new(config),
        auth: Auth::Open,
        signaling,
        camera: Some(CameraServices {
            rtc,
            whep,
            mjpeg: snaprtcd::http::mjpeg::channel(media.clone(), 5, 8).0,
            media,
            rtsp: None,
            audio: None,
            remotes: Default::default(),
        }),
    });
    tokio::spawn(snaprtcd::http::serve(
        listener,
        state,
        cancel.clone(),
        tracker,
    ));
    (addr, cancel)
}

async fn stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let r = tokio::task::spawn_blocking(move || {
        common::http(
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n",
        )
    })
    .await
    .unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn the_daemon_joins_as_capture_and_answers_lz_offers_in_kind() {
    let (addr, cancel) = start(JoinSessions::All).await;
    let mut init = Client::open(addr).await;
    init.invoke("0", "Sync", json!(["cam-1", false])).await;
    // Our Completion, then signalStart from the built-in capture side that joined.
    assert_eq!(
        init.read_non_ping().await,
        Read::Record(json!({"type":3,"invocationId":"0"}))
    );
    assert_eq!(
        init.read_non_ping().await,
        Read::Record(json!({"type":1,"target":"signalStart","arguments":[]}))
    );

    let offer =
        lz_str::compress_to_encoded_uri_component(r#"{"type":"offer","sdp":"v=0 offer\r\n"}"#);
    init.invoke("1", "SignalCapture", json!(["cam-1", offer]))
        .await;
    let mut answer = None;
    for _ in 0..3 {
        if let Read::Record(v) = init.read_non_ping().await {
            if v["target"] == "signalInitiator" {
                answer = Some(v["arguments"][0].as_str().unwrap().to_owned());
                break;
            }
        }
    }
    let answer = answer.expect("no signalInitiator");
    let json =
        String::from_utf16(&lz_str::decompress_from_encoded_uri_component(&answer).expect("lz"))
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v,
        json!({"type":"answer","sdp":"answer-for cam-1 to v=0 offer"})
    );

    // Plain JSON offers get a plain JSON answer; other simple-peer signals are accepted.
    init.send_call(
        "SignalCapture",
        json!([
            "cam-1",
            r#"{"type":"candidate","candidate":{"candidate":"x"}}"#
        ]),
    )
    .await;
    init.send_call("SignalCapture", json!(["cam-1", r#"{"renegotiate":true}"#]))
        .await;
    init.send_call("SignalCapture", json!(["cam-1", "garbage!!"]))
        .await;
    init.send_call(
        "SignalCapture",
        json!(["cam-1", r#"{"type":"offer","sdp":"plain"}"#]),
    )
    .await;
    // Garbage gets an error signal (in lz-string, since it did not look like JSON), which
    // simple-peer turns into an error on the page instead of a wait for an answer.
    let Read::Record(v) = init.read_non_ping().await else {
        panic!("closed")
    };
    assert_eq!(v["target"], "signalInitiator");
    let error = lz_str::decompress_from_encoded_uri_component(v["arguments"][0].as_str().unwrap())
        .map(|u| String::from_utf16(&u).unwrap())
        .expect("lz");
    let error: serde_json::Value = serde_json::from_str(&error).unwrap();
    assert_eq!(error["type"], "error");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .starts_with("payload is not lz-string"),
        "{error}"
    );
    let Read::Record(v) = init.read_non_ping().await else {
        panic!("closed")
    };
    assert_eq!(v["target"], "signalInitiator");
    assert_eq!(
        v["arguments"][0],
        r#"{"type":"answer","sdp":"answer-for cam-1 to plain"}"#
    );
    assert_eq!(stats(addr).await["signaling"]["sessions"], 1);

    // The initiator leaves: the capture side leaves too and the session is freed.
    drop(init);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stats(addr).await["signaling"]["sessions"] != 0 {
        assert!(std::time::Instant::now() < deadline, "session not freed");
        tokio::task::yield_now().await;
    }
    cancel.cancel();
}

#[tokio::test]
async fn with_join_sessions_none_the_hub_is_a_pure_relay() {
    let (addr, cancel) = start(JoinSessions::None).await;
    let mut init = Client::open(addr).await;
    init.invoke("0", "Sync", json!(["cam-1", false])).await;
    assert_eq!(
        init.read_non_ping().await,
        Read::Record(json!({"type":3,"invocationId":"0"}))
    );
    assert_eq!(
        init.read_within(std::time::Duration::from_millis(300))
            .await,
        None,
        "nobody joined"
    );
    cancel.cancel();
}
