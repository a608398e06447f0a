//! The HTTP server under abuse, black-box: the token is checked before a body is read,
//! slowloris clients are closed after `header_read_timeout` while everyone else is served,
//! `max_http_connections`, `max_header_bytes` and `keepalive_idle_timeout` hold, and the route
//! table's access policy (`/metrics`, JSON `/health`, `metrics_auth`).
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::signalr::{Client, Read, RS};
use common::{Daemon, TempDir};
use serde_json::json;

/// A `[server]` section on port 0 with `extra` keys.
fn server(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\n{extra}\n")
}

/// `[server]` with `auth = "token"` and a token file holding `token`.
fn with_token(dir: &TempDir, token: &str, extra: &str) -> String {
    let file = dir.path("token");
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    server(&format!(
        "auth = \"token\"\nauth_token_file = \"{}\"\n{extra}",
        file.display()
    ))
}

/// Read a response head (up to the blank line) within `timeout`; `None` when the socket
/// closed, failed or timed out first.
fn read_head(s: &mut TcpStream, timeout: Duration) -> Option<String> {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Block until the peer closes `s` (EOF or reset); `None` if it is still open at `deadline`.
fn wait_closed(s: &mut TcpStream, deadline: Instant) -> Option<Instant> {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(Instant::now()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(_) => return Some(Instant::now()),
        }
    }
}

/// Raise this process's soft fd limit to at least `want` (the daemon inherits it).
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            assert!(
                lim.rlim_max >= want,
                "the hard fd limit {} is below the {want} this test needs",
                lim.rlim_max
            );
            lim.rlim_cur = want;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

#[test]
fn a_wrong_token_gets_401_before_any_body_byte_is_read() {
    let dir = TempDir::new("abuse-auth");
    let d = Daemon::start(&with_token(&dir, "right", ""));
    let heads = [
        // Within max_body_bytes, but never sent: reading it first would wait forever.
        "POST /whep HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Type: application/sdp\r\nContent-Length: 60000\r\n\r\n",
        // Far over max_body_bytes: 401, not 413 (a stranger learns nothing about limits).
        "POST /whep HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Type: application/sdp\r\nContent-Length: 1000000000\r\n\r\n",
        // A chunked body that never ends.
        "POST /whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n",
        "PATCH /whep/00000000000000000000000000000000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Type: application/trickle-ice-sdpfrag\r\nContent-Length: 50000\r\n\r\n",
        "POST /snaprtc-hub/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
    ];
    for head in heads {
        let mut s = TcpStream::connect(d.addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let started = Instant::now();
        let response = read_head(&mut s, Duration::from_secs(5));
        let first_line = head.lines().next().unwrap();
        let response = response.unwrap_or_else(|| panic!("{first_line}: no answer within 5 s"));
        assert!(
            response.starts_with("HTTP/1.1 401"),
            "{first_line}: {response}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{first_line}: 401 took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn each_route_follows_its_access_policy() {
    let dir = TempDir::new("abuse-policy");
    let get = |d: &Daemon, path: &str, extra: &str| {
        d.http(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"))
            .status
    };
    let json = "Accept: application/json\r\n";
    let bearer = "Authorization: Bearer right\r\n";
    let d = Daemon::start(&with_token(&dir, "right", ""));
    assert_eq!(get(&d, "/health", ""), 200, "plain /health stays open");
    assert_eq!(
        get(&d, "/health", json),
        401,
        "JSON /health needs the token"
    );
    assert_eq!(get(&d, "/health", &format!("{json}{bearer}")), 200);
    assert_eq!(get(&d, "/metrics", ""), 401, "/metrics needs the token");
    assert_eq!(get(&d, "/metrics", bearer), 200);
    assert_eq!(get(&d, "/metrics?access_token=right", ""), 200);
    assert_eq!(get(&d, "/snapshot.jpg", ""), 401);
    assert_eq!(
        get(&d, "/", ""),
        200,
        "the page is open and asks for the token"
    );
    drop(d);

    let d = Daemon::start(&with_token(&dir, "right", "metrics_auth = false"));
    assert_eq!(
        get(&d, "/metrics", ""),
        200,
        "metrics_auth = false opens /metrics"
    );
    assert_eq!(get(&d, "/health", json), 200);
    assert_eq!(get(&d, "/snapshot.jpg", ""), 401, "but not the pictures");
    drop(d);

    let d = Daemon::start("");
    assert_eq!(get(&d, "/metrics", ""), 200, "auth = none: all open");
    assert_eq!(get(&d, "/health", json), 200);
}

/// The SnapRTC exchange between two hub clients (relay: the daemon does not join).
async fn snaprtc_exchange(addr: SocketAddr) {
    let mut init = Client::open(addr).await;
    let mut cap = Client::open(addr).await;
    init.invoke("0", "Sync", json!(["abuse", false])).await;
    assert_eq!(
        init.read_non_ping().await,
        Read::Record(json!({"type":3,"invocationId":"0"}))
    );
    cap.invoke("0", "Sync", json!(["abuse", true])).await;
    assert_eq!(
        init.read_non_ping().await,
        Read::Record(json!({"type":1,"target":"signalStart","arguments":[]}))
    );
    init.send_raw(&format!(
        r#"{{"type":1,"target":"SignalCapture","arguments":["abuse","offer"]}}{RS}"#
    ))
    .await;
    let mut got = cap.read_non_ping().await;
    if got == Read::Record(json!({"type":3,"invocationId":"0"})) {
        got = cap.read_non_ping().await;
    }
    assert_eq!(
        got,
        Read::Record(json!({"type":1,"target":"signalCapture","arguments":["offer"]}))
    );
    cap.send_call("SignalInitiator", json!(["abuse", "answer"]))
        .await;
    assert_eq!(
        init.read_non_ping().await,
        Read::Record(json!({"type":1,"target":"signalInitiator","arguments":["answer"]}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_header_timeout() {
    const SLOW: usize = 500;
    const TIMEOUT: Duration = Duration::from_secs(3);
    raise_fd_limit(4096);
    let mut d = Daemon::start(&format!(
        "{}[signaling]\njoin_sessions = \"none\"\n",
        server("header_read_timeout = \"3s\"\nmax_http_connections = 1024")
    ));
    let rss_before = d.rss_kib();
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|i| {
            let mut s = TcpStream::connect(d.addr).unwrap_or_else(|e| panic!("connect {i}: {e}"));
            // Part of a head, never finished.
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let all_open = opened.elapsed();

    // Everyone else is still served while they hang.
    let addr = d.addr;
    let health = tokio::task::spawn_blocking(move || {
        common::http(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status
    })
    .await
    .unwrap();
    assert_eq!(health, 200);
    snaprtc_exchange(d.addr).await;
    let served = opened.elapsed();
    let rss_during = d.rss_kib();
    assert!(
        served < TIMEOUT,
        "the health check and the exchange took {served:?}: too slow to show they ran while \
         the slow connections were open"
    );

    // Then each slow connection is closed, at the header timeout and not before.
    let deadline = opened + TIMEOUT + Duration::from_secs(5);
    let slow_result = tokio::task::spawn_blocking(move || {
        let closed: Vec<Option<Instant>> =
            slow.iter_mut().map(|s| wait_closed(s, deadline)).collect();
        closed
    })
    .await
    .unwrap();
    let still_open = slow_result.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        still_open,
        0,
        "{still_open} of {SLOW} slow connections still open {:?} after opening",
        deadline - opened
    );
    let times: Vec<Duration> = slow_result.iter().flatten().map(|t| *t - opened).collect();
    let first = times.iter().min().copied().unwrap_or_default();
    let last = times.iter().max().copied().unwrap_or_default();
    assert!(
        first + all_open >= TIMEOUT,
        "a slow connection was closed after {first:?}, before header_read_timeout"
    );
    let rss_after = d.rss_kib();
    let health = tokio::task::spawn_blocking(move || {
        common::http(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status
    })
    .await
    .unwrap();
    assert_eq!(health, 200);
    eprintln!(
        "slowloris: {SLOW} connections opened in {all_open:?}; /health and the SnapRTC \
         exchange done after {served:?}; closed between {first:?} and {last:?} after opening \
         (header_read_timeout {TIMEOUT:?}); daemon RSS {rss_before} KiB before, {rss_during} KiB \
         with them open, {rss_after} KiB after"
    );
    d.wait_for_log("header_read_timeout", Duration::from_secs(5));
}

#[test]
fn connections_over_max_http_connections_are_closed_at_once() {
    let d = Daemon::start(&server(
        "max_http_connections = 4\nheader_read_timeout = \"30s\"",
    ));
    // Four connections that hold their slots (they send nothing yet).
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(d.addr).unwrap())
        .collect();
    let mut fifth = TcpStream::connect(d.addr).unwrap();
    fifth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok();
    let started = Instant::now();
    let refused = wait_closed(&mut fifth, started + Duration::from_secs(5));
    assert!(
        refused.is_some(),
        "a fifth connection was kept open over max_http_connections = 4"
    );
    // A held connection still works, and once it is gone its slot is free again.
    let mut first = held.remove(0);
    first
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let head = read_head(&mut first, Duration::from_secs(5)).expect("a held connection is served");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(first);
    // The freed slot is taken by the next connection that comes after the daemon saw the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(d.addr).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        match read_head(&mut s, Duration::from_secs(5)) {
            Some(h) if h.starts_with("HTTP/1.1 200") => break,
            other => assert!(
                Instant::now() < deadline,
                "the slot never came back: {other:?}"
            ),
        }
    }
}

#[test]
fn a_head_over_max_header_bytes_gets_431() {
    let d = Daemon::start(&server("max_header_bytes = 4096"));
    let big = "a".repeat(8192);
    let r = d.http(&format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
    ));
    assert_eq!(r.status, 431);
    let small = "a".repeat(2048);
    let r = d.http(&format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {small}\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn an_idle_keepalive_connection_is_closed_and_a_websocket_is_not() {
    const IDLE: Duration = Duration::from_secs(1);
    let d = Daemon::start(&format!(
        "{}[signaling]\njoin_sessions = \"none\"\n",
        server("keepalive_idle_timeout = \"1s\"\nheader_read_timeout = \"20s\"")
    ));
    let mut ws = Client::open(d.addr).await;
    let addr = d.addr;
    let (answered, closed) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let head = read_head(&mut s, Duration::from_secs(5)).expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let answered = Instant::now();
        // The body is short and already here; then the connection idles until closed.
        let closed = wait_closed(&mut s, answered + Duration::from_secs(10));
        (answered, closed)
    })
    .await
    .unwrap();
    let closed = closed.expect("an idle keep-alive connection stayed open for 10 s");
    let idle = closed - answered;
    assert!(
        idle >= IDLE - Duration::from_millis(100) && idle < IDLE + Duration::from_secs(3),
        "closed {idle:?} after the response, keepalive_idle_timeout is {IDLE:?}"
    );
    // The WebSocket, idle for longer than that, still works.
    ws.invoke("1", "Sync", json!(["idle", false])).await;
    assert_eq!(
        ws.read_non_ping().await,
        Read::Record(json!({"type":3,"invocationId":"1"}))
    );
}
