//! The SignalR hub over real sockets: the SnapRTC exchange, errors, limits, keep-alive, auth,
//! CORS, shutdown; and the HTTP server's body limit. The official JavaScript client is exercised in tests/node/.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use std::time::{Duration, Instant};

use common::signalr::{Client, Read, RS};
use common::{negotiate, token_of, Daemon, WsExt};
use serde_json::json;
use tokio_tungstenite::tungstenite;

fn completion(id: &str) -> Read {
    Read::Record(json!({"type":3,"invocationId":id}))
}

fn invocation(target: &str, args: serde_json::Value) -> Read {
    Read::Record(json!({"type":1,"target":target,"arguments":args}))
}

const RELAY: &str = "[signaling]\njoin_sessions = \"none\"\n";

#[tokio::test]
async fn snaprtc_exchange_is_relayed_without_echo() {
    let d = Daemon::start(RELAY);
    let mut init = Client::open(d.addr).await;
    let mut cap = Client::open(d.addr).await;
    init.invoke("0", "Sync", json!(["room-1", false])).await;
    assert_eq!(init.read_non_ping().await, completion("0"));
    cap.invoke("0", "sync", json!(["room-1", true])).await;
    assert_eq!(
        init.read_non_ping().await,
        invocation("signalStart", json!([]))
    );
    assert_eq!(cap.read_non_ping().await, completion("0"));

    // The payload goes through byte for byte: escapes are not re-encoded.
    let offer = r#"{"type":1,"invocationId":"1","target":"SignalCapture","arguments":["room-1","N4Ig\u00e9\n\/"]}"#;
    init.send_raw(&format!("{offer}{RS}")).await;
    let raw = loop {
        match cap.ws.next_raw().await {
            t if t.contains("signalCapture") => break t,
            _ => continue,
        }
    };
    assert_eq!(
        raw,
        format!(r#"{{"type":1,"target":"signalCapture","arguments":["N4Ig\u00e9\n\/"]}}{RS}"#)
    );
    assert_eq!(init.read_non_ping().await, completion("1"));

    cap.send_call("SignalInitiator", json!(["room-1", "answer"]))
        .await;
    assert_eq!(
        init.read_non_ping().await,
        invocation("signalInitiator", json!(["answer"]))
    );
    // No echo to the capture side, and `send` gets no Completion: the hub handles one
    // command at a time and each client's records in order, so anything it had for `cap`
    // would come before the Completion of the next call.
    cap.invoke("2", "Sync", json!(["room-1", true])).await;
    assert_eq!(cap.read_non_ping().await, completion("2"));
}

#[tokio::test]
async fn sessions_are_isolated() {
    let d = Daemon::start(RELAY);
    let mut a = Client::open(d.addr).await;
    let mut b = Client::open(d.addr).await;
    let mut c = Client::open(d.addr).await;
    a.invoke("0", "Sync", json!(["one", false])).await;
    b.invoke("0", "Sync", json!(["two", false])).await;
    assert_eq!(a.read_non_ping().await, completion("0"));
    assert_eq!(b.read_non_ping().await, completion("0"));
    c.invoke("0", "Sync", json!(["two", true])).await;
    assert_eq!(
        b.read_non_ping().await,
        invocation("signalStart", json!([]))
    );
    c.send_call("SignalInitiator", json!(["two", "x"])).await;
    assert_eq!(
        b.read_non_ping().await,
        invocation("signalInitiator", json!(["x"]))
    );
    // `b` heard the relay, so the hub has handled it; anything it sent `a` would come before
    // the Completion of `a`'s next call.
    a.invoke("1", "Sync", json!(["one", false])).await;
    assert_eq!(
        a.read_non_ping().await,
        completion("1"),
        "session one heard nothing"
    );
}

#[tokio::test]
async fn invoke_errors_are_completions_and_the_connection_survives() {
    let d = Daemon::start(RELAY);
    let mut c = Client::open(d.addr).await;
    let cases = [
        ("Nope", json!([])),
        ("Sync", json!(["s"])),
        ("Sync", json!([1, true])),
        ("Sync", json!(["s", "yes"])),
        ("Sync", json!(["", true])),
        ("Sync", json!(["a b", true])),
        ("Sync", json!(["x".repeat(129), true])),
        ("SignalCapture", json!(["s", {"type":"offer"}])),
    ];
    for (i, (target, args)) in cases.into_iter().enumerate() {
        let id = i.to_string();
        c.invoke(&id, target, args.clone()).await;
        match c.read_non_ping().await {
            Read::Record(v) => {
                assert_eq!(v["type"], 3, "{target} {args}");
                assert_eq!(v["invocationId"], id.as_str());
                assert!(
                    v["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{target} {args}: {v}"
                );
            }
            Read::Closed => panic!("closed after {target} {args}"),
        }
    }
    c.send_call("Nope", json!([])).await;
    c.invoke("ok", "Sync", json!(["fine", false])).await;
    assert_eq!(
        c.read_non_ping().await,
        completion("ok"),
        "send got no reply; the connection still works"
    );
}

#[tokio::test]
async fn session_and_member_limits_give_error_completions() {
    let d = Daemon::start(
        "[signaling]\njoin_sessions = \"none\"\nmax_sessions = 1\nmax_members_per_session = 2\n",
    );
    let mut a = Client::open(d.addr).await;
    let mut b = Client::open(d.addr).await;
    let mut c = Client::open(d.addr).await;
    a.invoke("0", "Sync", json!(["s", false])).await;
    assert_eq!(a.read_non_ping().await, completion("0"));
    a.invoke("1", "Sync", json!(["t", false])).await;
    let Read::Record(v) = a.read_non_ping().await else {
        panic!()
    };
    assert!(
        v["error"].as_str().unwrap().contains("Too many sessions"),
        "{v}"
    );
    b.invoke("0", "Sync", json!(["s", true])).await;
    assert_eq!(b.read_non_ping().await, completion("0"));
    c.invoke("0", "Sync", json!(["s", false])).await;
    let Read::Record(v) = c.read_non_ping().await else {
        panic!()
    };
    assert!(
        v["error"].as_str().unwrap().contains("Session is full"),
        "{v}"
    );
}

#[tokio::test]
async fn oversized_message_closes_only_that_connection() {
    let d = Daemon::start("[signaling]\njoin_sessions = \"none\"\nmax_message_bytes = 2048\n");
    let mut big = Client::open(d.addr).await;
    let mut other = Client::open(d.addr).await;
    big.invoke("0", "SignalCapture", json!(["s", "x".repeat(3000)]))
        .await;
    match big.read_non_ping().await {
        Read::Record(v) => {
            assert_eq!(v["type"], 7);
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("larger than the limit of 2048 bytes"),
                "{v}"
            );
        }
        Read::Closed => panic!("no Close record"),
    }
    assert_eq!(big.read().await, Read::Closed);
    other.invoke("1", "Sync", json!(["s", false])).await;
    assert_eq!(other.read_non_ping().await, completion("1"));
}

#[tokio::test]
async fn garbage_closes_that_connection_and_the_daemon_keeps_serving() {
    let d = Daemon::start(RELAY);
    // Before the handshake.
    for bad in [
        "hello\u{1e}",
        "{\"protocol\":\"messagepack\",\"version\":1}\u{1e}",
        "{\"protocol\":\"json\",\"version\":2}\u{1e}",
    ] {
        let mut c = Client::connect(&d.ws_url("/snaprtc-hub")).await.unwrap();
        c.send_raw(bad).await;
        match c.read().await {
            Read::Record(v) => assert!(v["error"].as_str().is_some(), "{bad}: {v}"),
            Read::Closed => panic!("{bad}: closed without an error"),
        }
        assert_eq!(c.read().await, Read::Closed, "{bad}");
    }
    // After the handshake.
    for bad in [
        "not json\u{1e}",
        "{\"type\":42}\u{1e}",
        "{\"type\":1}\u{1e}",
        "[]\u{1e}",
    ] {
        let mut c = Client::open(d.addr).await;
        c.send_raw(bad).await;
        let Read::Record(v) = c.read_non_ping().await else {
            panic!("{bad}: no Close record")
        };
        assert_eq!(v["type"], 7, "{bad}: {v}");
        assert_eq!(c.read().await, Read::Closed, "{bad}");
    }
    let mut c = Client::open(d.addr).await;
    c.ws.send_binary(vec![1, 2, 3]).await;
    let Read::Record(v) = c.read_non_ping().await else {
        panic!("binary: no Close record")
    };
    assert!(v["error"].as_str().unwrap().contains("binary"), "{v}");
    assert_eq!(
        d.http("GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
    let mut ok = Client::open(d.addr).await;
    ok.invoke("0", "Sync", json!(["after", false])).await;
    assert_eq!(ok.read_non_ping().await, completion("0"));
}

/// The intervals themselves are checked in virtual time by the codec's unit tests
/// (`signalr::tests::keepalive_pings_and_silent_client_is_dropped`); here, that the shell acts
/// on them, waiting on the records rather than on the clock.
#[tokio::test]
async fn keepalive_pings_and_silent_clients_are_dropped() {
    let d = Daemon::start(
        "[signaling]\njoin_sessions = \"none\"\nkeepalive = \"200ms\"\nclient_timeout = \"1s\"\n",
    );
    let mut alive = Client::open(d.addr).await;
    let mut silent = Client::open(d.addr).await;
    // Both are pinged; `alive` answers every Ping with one of its own (paced by the server's
    // pings, well inside client_timeout), `silent` never says anything.
    let mut silent_pings = 0;
    let close = loop {
        assert_eq!(
            alive.read().await,
            Read::Record(json!({"type":6})),
            "a pinging client was dropped"
        );
        alive.send(json!({"type":6})).await;
        // Whatever `silent` has been sent by now, without waiting.
        match silent.read_within(Duration::ZERO).await {
            Some(Read::Record(v)) if v["type"] == 6 => silent_pings += 1,
            Some(other) => break other,
            None => {}
        }
    };
    let Read::Record(v) = close else {
        panic!("closed without a Close record")
    };
    assert_eq!(v["type"], 7);
    assert!(v["error"].as_str().unwrap().contains("timeout"), "{v}");
    assert!(silent_pings >= 1, "the silent client was never pinged");
    assert_eq!(silent.read().await, Read::Closed);
    // The client that pinged is still served.
    alive.invoke("0", "Sync", json!(["s", false])).await;
    assert_eq!(alive.read_non_ping().await, completion("0"));
}

/// A busy client (the server writes to it more often than `keepalive`) is not pinged. Paced by
/// events: it calls back to back while a quiet client opened with it gets two Pings (two
/// keep-alive intervals), and in that time it must see Completions only.
#[tokio::test]
async fn a_client_the_server_keeps_writing_to_is_not_pinged() {
    let d = Daemon::start(
        "[signaling]\njoin_sessions = \"none\"\nkeepalive = \"500ms\"\nclient_timeout = \"5s\"\n",
    );
    let mut busy = Client::open(d.addr).await;
    let mut quiet = Client::open(d.addr).await;
    let mut quiet_pings = 0;
    let mut calls = 0;
    while quiet_pings < 2 {
        let id = calls.to_string();
        busy.invoke(&id, "Sync", json!(["busy", false])).await;
        assert_eq!(busy.read().await, completion(&id), "pinged while busy");
        calls += 1;
        if let Some(r) = quiet.read_within(Duration::ZERO).await {
            assert_eq!(r, Read::Record(json!({"type":6})));
            quiet_pings += 1;
        }
    }
    // Now quiet: a Ping comes once a keep-alive interval passes.
    assert_eq!(busy.read().await, Read::Record(json!({"type":6})));
}

/// A client that sends a body over `max_body_bytes` without waiting (no `Expect: 100-continue`,
/// as browsers' fetch) must still read the 413: the daemon drains what it refused.
#[test]
fn an_oversized_body_gets_413_while_the_client_is_still_sending_it() {
    use std::io::{Read as _, Write as _};
    let d = Daemon::start(RELAY);
    let body = vec![b'a'; 3 << 20];
    for chunked in [false, true] {
        let mut s = std::net::TcpStream::connect(d.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let length = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {}", body.len())
        };
        write!(
            s,
            "POST /whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n{length}\r\n\r\n"
        )
        .unwrap();
        let sent = if chunked {
            body.chunks(64 << 10).try_for_each(|c| {
                write!(s, "{:x}\r\n", c.len())?;
                s.write_all(c)?;
                s.write_all(b"\r\n")
            })
        } else {
            s.write_all(&body)
        };
        sent.unwrap_or_else(|e| panic!("chunked={chunked}: the body could not be sent: {e}"));
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("chunked={chunked}: no response: {e}"));
            assert!(n > 0, "chunked={chunked}: closed without a response");
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 413"),
            "chunked={chunked}: {head}"
        );
    }
}

#[tokio::test]
async fn negotiate_tokens_are_single_use_and_unknown_ones_get_404() {
    let d = Daemon::start(RELAY);
    let token = token_of(&negotiate(d.addr, ""));
    assert!(token.len() >= 32, "128 bits as hex: {token}");
    let url = d.ws_url(&format!("/snaprtc-hub?id={token}"));
    let mut first = Client::connect(&url).await.unwrap();
    first.handshake().await;
    let again = Client::connect(&url).await;
    assert!(
        matches!(again, Err(tungstenite::Error::Http(ref r)) if r.status() == 404),
        "{:?}",
        again.err()
    );
    let unknown =
        Client::connect(&d.ws_url("/snaprtc-hub?id=00000000000000000000000000000000")).await;
    assert!(matches!(unknown, Err(tungstenite::Error::Http(ref r)) if r.status() == 404));
    // skipNegotiation: no id at all.
    let mut skip = Client::connect(&d.ws_url("/snaprtc-hub")).await.unwrap();
    skip.handshake().await;
    let get = d.http("GET /snaprtc-hub/negotiate HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
}

#[tokio::test]
async fn unused_tokens_expire_after_the_handshake_timeout() {
    let mut d = Daemon::start("[signaling]\njoin_sessions = \"none\"\nhandshake_timeout = \"300ms\"\nmax_connections = 1\n");
    let token = token_of(&negotiate(d.addr, ""));
    // While the token is live it holds the only place.
    assert_eq!(negotiate(d.addr, "").status, 503);
    // Wait for the expiry by watching the clock, not by sleeping a guessed amount.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = negotiate(d.addr, "");
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the token never expired");
        d.wait_for_log("", Duration::from_millis(50));
        std::thread::yield_now();
    }
    let old = Client::connect(&d.ws_url(&format!("/snaprtc-hub?id={token}"))).await;
    assert!(matches!(old, Err(tungstenite::Error::Http(ref r)) if r.status() == 404));
}

#[tokio::test]
async fn connection_limit_gives_503_at_negotiate_and_upgrade() {
    let d = Daemon::start("[signaling]\njoin_sessions = \"none\"\nmax_connections = 2\n");
    let _a = Client::open(d.addr).await;
    let _b = Client::open(d.addr).await;
    let r = negotiate(d.addr, "");
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    let up = Client::connect(&d.ws_url("/snaprtc-hub")).await;
    assert!(
        matches!(up, Err(tungstenite::Error::Http(ref r)) if r.status() == 503),
        "{:?}",
        up.err()
    );
    drop(_a);
    // The place comes back once the hub has seen the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while negotiate(d.addr, "").status != 200 {
        assert!(
            Instant::now() < deadline,
            "the closed connection's place never came back"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn token_auth_guards_negotiate_and_upgrade_but_not_health() {
    let dir = common::TempDir::new("auth");
    let token_file = dir.path("token");
    std::fs::write(&token_file, "let-me-in\n").unwrap();
    let d = Daemon::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nauth = \"token\"\nauth_token_file = \"{}\"\n[signaling]\njoin_sessions = \"none\"\n",
        token_file.display()
    ));
    assert_eq!(negotiate(d.addr, "").status, 401);
    assert_eq!(
        negotiate(d.addr, "Authorization: Bearer nope\r\n").status,
        401
    );
    let r = negotiate(d.addr, "Authorization: Bearer let-me-in\r\n");
    assert_eq!(r.status, 200);
    let token = token_of(&r);
    let no_auth = Client::connect(&d.ws_url(&format!("/snaprtc-hub?id={token}"))).await;
    assert!(matches!(no_auth, Err(tungstenite::Error::Http(ref r)) if r.status() == 401));
    let mut c =
        Client::connect(&d.ws_url(&format!("/snaprtc-hub?id={token}&access_token=let-me-in")))
            .await
            .unwrap();
    c.handshake().await;
    assert_eq!(
        d.http("GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
}

#[tokio::test]
async fn missing_token_file_is_created_private_and_logged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::TempDir::new("auth");
    let token_file = dir.path("state/token");
    let mut d = Daemon::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nauth = \"token\"\nauth_token_file = \"{}\"\n",
        token_file.display()
    ));
    let line = d.wait_for_log("created a new access token", Duration::from_secs(1));
    assert!(line.contains(&token_file.display().to_string()), "{line}");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.trim().len() >= 32);
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let r = negotiate(
        d.addr,
        &format!("Authorization: Bearer {}\r\n", token.trim()),
    );
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn cors_preflight_answers_listed_origins_only() {
    let d = Daemon::start(
        "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\ncors_origins = [\"https://app.example\"]\n",
    );
    let preflight = |origin: &str| {
        d.http(&format!(
            "OPTIONS /snaprtc-hub/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: x-requested-with, x-signalr-user-agent, authorization\r\n\r\n"
        ))
    };
    let ok = preflight("https://app.example");
    assert!(ok.status == 204 || ok.status == 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    let headers = ok
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in ["x-requested-with", "x-signalr-user-agent", "authorization"] {
        assert!(headers.contains(h), "{headers}");
    }
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let other = preflight("https://evil.example");
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(other.header("access-control-allow-methods"), None);
    let post = negotiate(d.addr, "Origin: https://app.example\r\n");
    assert_eq!(
        post.header("access-control-allow-origin"),
        Some("https://app.example")
    );
}

#[tokio::test]
async fn health_has_a_timestamp_and_the_version() {
    let d = Daemon::start("");
    let r = d.http("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(body.starts_with("20") && body.contains('T'), "{body}");
    assert!(body.contains(env!("CARGO_PKG_VERSION")), "{body}");
    let r = d.http("GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["viewers"], 0, "{v}");
    assert!(v["name"].as_str().is_some_and(|n| !n.is_empty()), "{v}");
    assert_eq!(d.http("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").status, 404);
}

#[tokio::test]
async fn sigterm_sends_close_records_and_exits_within_two_seconds() {
    let mut d = Daemon::start(RELAY);
    let mut c = Client::open(d.addr).await;
    c.invoke("0", "Sync", json!(["s", false])).await;
    assert_eq!(c.read_non_ping().await, completion("0"));
    let start = Instant::now();
    d.signal("TERM");
    let Read::Record(v) = c.read_non_ping().await else {
        panic!("no Close record")
    };
    assert_eq!(v["type"], 7, "{v}");
    // Going away, not refusing: clients with automatic reconnect come back (to another
    // instance behind a load balancer, or to this one after its restart).
    assert_eq!(v["allowReconnect"], true, "{v}");
    assert_eq!(v["error"], "Server is shutting down.", "{v}");
    let status = d
        .wait_exit(Duration::from_secs(2))
        .expect("still running 2 s after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(d.log.iter().any(|l| l.contains("stopped")));
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected_and_memory_stays_bounded() {
    let d = Daemon::start("[signaling]\njoin_sessions = \"none\"\nmax_queued_messages = 8\nmax_message_bytes = 65536\n");
    // The stuck reader: a tiny receive buffer, and it never reads after joining.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(d.addr).await.unwrap();
    let (mut stuck, _) = tokio_tungstenite::client_async(d.ws_url("/snaprtc-hub"), stream)
        .await
        .unwrap();
    use futures_util::SinkExt;
    stuck
        .send(tungstenite::Message::text(format!("{{\"protocol\":\"json\",\"version\":1}}{RS}{{\"type\":1,\"target\":\"Sync\",\"arguments\":[\"flood\",true]}}{RS}")))
        .await
        .unwrap();
    let mut sender = Client::open(d.addr).await;
    sender.invoke("0", "Sync", json!(["flood", false])).await;
    // (The stuck reader's Sync may land first and send signalStart.)
    loop {
        if let Read::Record(v) = sender.read_non_ping().await {
            if v["type"] == 3 {
                break;
            }
        }
    }
    let rss_before = d.rss_kib();
    let payload = "p".repeat(60_000);
    let mut disconnected = false;
    for i in 0..400 {
        sender
            .send_call("SignalCapture", json!(["flood", payload]))
            .await;
        if i % 20 == 19 {
            let r = d.http("GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n");
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            if v["signaling"]["connections"] == 1 {
                disconnected = true;
                break;
            }
        }
    }
    assert!(disconnected, "the stuck client was never dropped");
    let grown = d.rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // The sender is unaffected. (A signalStart from the stuck reader's Sync may still be
    // queued ahead of the Completion if that Sync landed after the sender's.)
    sender.invoke("1", "Sync", json!(["other", false])).await;
    let reply = loop {
        match sender.read_non_ping().await {
            Read::Record(v) if v["target"] == "signalStart" => continue,
            other => break other,
        }
    };
    assert_eq!(reply, completion("1"));
}
