//! Dial-out (`[[remote]]`): a camera daemon connects to a snaprtcd relay (a second process on
//! loopback) as a SignalR client, waits in its session as the capture side, and an initiator
//! that joins later (a SignalR client plus a str0m peer, as a browser page would be) gets
//! `signalStart`, an answer, a still and video. Also: the daemon reconnects and re-joins after
//! the relay restarts; the relay emulating the original server's echo (case g of issue 13):
//! initiators one after another, each with exactly one `signalStart`, also one whose viewer
//! takes longer than an announce interval to connect; hostile hubs.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

#[path = "support/rtc.rs"]
mod support;

use std::time::Duration;

use common::signalr::{Client, Read};
use common::Daemon;
use serde_json::json;

const RELAY: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[camera]\nsource = \"none\"\n";

fn health(d: &Daemon) -> serde_json::Value {
    let r = d.http("GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n");
    serde_json::from_str(&r.text()).unwrap()
}

fn device(hub: std::net::SocketAddr, session: &str, extra: &str) -> Daemon {
    Daemon::start(&format!(
        "[[remote]]\nurl = \"http://{hub}\"\nsession = \"{session}\"\n{extra}"
    ))
}

/// Records until `target` is invoked; the ones before it.
async fn until(client: &mut Client, target: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut before = Vec::new();
    loop {
        match client.read_non_ping().await {
            Read::Record(r) if r["type"] == 1 && r["target"] == target => return (r, before),
            Read::Record(r) => before.push(r),
            Read::Closed => panic!("closed while waiting for {target}; saw {before:?}"),
        }
    }
}

/// One stock-like initiator: join `session`, wait for `signalStart`, offer, take the answer,
/// get a still (and `frames` video frames). Returns its SignalR client (still connected).
async fn initiate(hub: std::net::SocketAddr, session: &str, frames: usize) -> Client {
    let mut init = Client::open(hub).await;
    init.invoke("1", "Sync", json!([session, false])).await;
    until(&mut init, "signalStart").await;
    let extra = exchange(&mut init, session, frames, Duration::from_millis(100)).await;
    assert_eq!(extra, 0, "a second signalStart during the exchange");
    init
}

/// After `signalStart`: offer, take the answer, get a still (and `frames` frames), stay in the
/// hub `linger` longer (a page leaves the hub once connected; over a TURN relay that can take
/// seconds). Returns how many more `signalStart`s came meanwhile (a stock page would have
/// built a second peer).
async fn exchange(init: &mut Client, session: &str, frames: usize, linger: Duration) -> usize {
    let (mut peer, offer, pending) = support::Peer::new().await;
    let payload = json!({"type": "offer", "sdp": offer}).to_string();
    init.invoke("2", "SignalCapture", json!([session, payload]))
        .await;
    let (answer, before) = until(init, "signalInitiator").await;
    let signal: serde_json::Value =
        serde_json::from_str(answer["arguments"][0].as_str().unwrap()).unwrap();
    assert_eq!(signal["type"], "answer", "{signal}");
    peer.accept(pending, signal["sdp"].as_str().unwrap());
    let still = peer.first_still().await;
    assert_eq!(&still[..2], &[0xff, 0xd8], "a JPEG still");
    if frames > 0 {
        peer.frames(frames).await;
    }
    // What else reached the page until it leaves the hub.
    let mut after = Vec::new();
    let leave = tokio::time::Instant::now() + linger;
    while let Some(Read::Record(r)) = init
        .read_within(leave.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        after.push(r);
    }
    before
        .iter()
        .chain(&after)
        .filter(|r| r["type"] == 1 && r["target"] == "signalStart")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_waiting_on_a_relay_serves_an_initiator_that_joins_later() {
    let relay = Daemon::start(RELAY);
    let mut cam = device(relay.addr, "dev-1", "");
    let line = cam.wait_for_log("give that id to the initiator page", common::START_TIMEOUT);
    assert!(line.contains("session dev-1"), "{line}");
    cam.wait_for_log("remote hub: idle", common::START_TIMEOUT);
    let h = health(&cam);
    assert_eq!(h["remotes"][0]["state"], "idle", "{h}");
    assert_eq!(h["remotes"][0]["session"], "dev-1", "{h}");
    assert_eq!(h["remotes"][0]["start_on_join"], true, "{h}");
    let metrics = cam.http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").text();
    let idle = format!(
        "snaprtcd_remote_state{{url=\"http://{}\",session=\"dev-1\",state=\"idle\"}} 1",
        relay.addr
    );
    assert!(metrics.contains(&idle), "{metrics}");

    // The initiator comes after the device: the relay starts it at once.
    let init = initiate(relay.addr, "dev-1", 10).await;
    let h = health(&cam);
    assert_eq!(h["remotes"][0]["state"], "serving", "{h}");
    drop(init);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_reconnects_and_rejoins_after_the_hub_restarts() {
    let relay = Daemon::start(RELAY);
    let addr = relay.addr;
    // The link drops right after the device's first announce: an initiator that got it may
    // still be gathering, so the device rejoins at once but says it is ready only an
    // announce_interval after that announce (6 s here, the least allowed).
    let mut cam = device(addr, "dev-2", "announce_interval = \"6s\"\n");
    cam.wait_for_log("remote hub: idle", common::START_TIMEOUT);
    drop(relay);
    cam.wait_for_log("remote hub: reconnecting", Duration::from_secs(10));
    assert_eq!(health(&cam)["remotes"][0]["state"], "reconnecting");
    // A new relay on the same port (free again once the first is gone).
    let relay = Daemon::start(&RELAY.replace("127.0.0.1:0", &addr.to_string()));
    assert_eq!(relay.addr, addr);
    let started = std::time::Instant::now();
    let line = cam.wait_for_log("connects=2", Duration::from_secs(40));
    assert!(line.contains("remote hub: idle"), "{line}");
    initiate(addr, "dev-2", 0).await;
    eprintln!("reconnected and served within {:?}", started.elapsed());
}

/// Issue 13 case (g) against a hub that behaves like the original server (echoes, no start on
/// join): initiators one after another each get exactly one `signalStart`, also the one that
/// joins while another is gathering and negotiating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiators_in_turn_on_an_echoing_hub_each_get_one_signal_start() {
    let relay = Daemon::start(&format!("{RELAY}[signaling]\necho_to_sender = true\n"));
    let mut cam = device(relay.addr, "dev-3", "announce_interval = \"6s\"\n");
    cam.wait_for_log("remote hub: idle", common::START_TIMEOUT);
    assert_eq!(health(&cam)["remotes"][0]["start_on_join"], false);
    let started = std::time::Instant::now();

    // A joins, and starts with the device's next announce.
    let mut a = Client::open(relay.addr).await;
    a.invoke("1", "Sync", json!(["dev-3", false])).await;
    until(&mut a, "signalStart").await;
    // B joins while A gathers (a browser may take seconds; simple-peer stops at 5 s).
    let mut b = Client::open(relay.addr).await;
    b.invoke("1", "Sync", json!(["dev-3", false])).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // A's gathering, not a synchronisation
    assert_eq!(
        // A takes 4 s more to connect and leave: past the next announce were it not held.
        exchange(&mut a, "dev-3", 0, Duration::from_secs(4)).await,
        0,
        "A got a second signalStart"
    );
    let a_done = std::time::Instant::now();
    drop(a); // a stock page leaves the hub once connected

    // B starts only now, once.
    let (_, before) = until(&mut b, "signalStart").await;
    assert!(
        a_done.elapsed() > Duration::from_millis(500),
        "B started while A was being served"
    );
    assert!(!before.iter().any(|r| r["target"] == "signalStart"));
    assert_eq!(
        exchange(&mut b, "dev-3", 0, Duration::from_millis(100)).await,
        0,
        "B got a second signalStart"
    );
    drop(b);

    // C comes later, and is served the same way.
    let c = initiate(relay.addr, "dev-3", 0).await;
    drop(c);
    let h = health(&cam);
    eprintln!("three initiators in {:?}; {h}", started.elapsed());
}

/// The session stays busy until the answered initiator's viewer connects, however long that
/// takes: an announce one interval after the answer (the old rule) reached a page still
/// connecting through TURN and two NATs (natlab (e), once), and a stock page builds a second
/// peer on a second `signalStart`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_second_signal_start_while_the_answered_initiator_is_still_connecting() {
    let relay = Daemon::start(&format!("{RELAY}[signaling]\necho_to_sender = true\n"));
    let mut cam = device(relay.addr, "dev-5", "announce_interval = \"6s\"\n");
    cam.wait_for_log("remote hub: idle", common::START_TIMEOUT);
    let mut a = Client::open(relay.addr).await;
    a.invoke("1", "Sync", json!(["dev-5", false])).await;
    until(&mut a, "signalStart").await;
    let (mut peer, offer, pending) = support::Peer::new().await;
    let payload = json!({"type": "offer", "sdp": offer}).to_string();
    a.invoke("2", "SignalCapture", json!(["dev-5", payload]))
        .await;
    let (answer, _) = until(&mut a, "signalInitiator").await;
    // Connecting takes one and a half announce intervals: no word from the device meanwhile.
    let mut meanwhile = Vec::new();
    let connect_at = tokio::time::Instant::now() + Duration::from_secs(9);
    while let Some(Read::Record(r)) = a
        .read_within(connect_at.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        meanwhile.push(r);
    }
    assert!(
        !meanwhile.iter().any(|r| r["target"] == "signalStart"),
        "a second signalStart before the viewer connected: {meanwhile:?}"
    );
    assert_eq!(health(&cam)["remotes"][0]["state"], "serving");
    let signal: serde_json::Value =
        serde_json::from_str(answer["arguments"][0].as_str().unwrap()).unwrap();
    let from = cam.log.len();
    peer.accept(pending, signal["sdp"].as_str().unwrap());
    assert_eq!(&peer.first_still().await[..2], &[0xff, 0xd8]);
    drop(a); // a stock page leaves the hub once connected

    // Free again one interval after the viewer connected.
    cam.wait_for_log_from(from, "viewer connected", Duration::from_secs(5));
    let connected = std::time::Instant::now();
    cam.wait_for_log_from(from, "remote hub: idle", Duration::from_secs(15));
    assert!(
        connected.elapsed() > Duration::from_secs(4),
        "free {:?} after the viewer connected",
        connected.elapsed()
    );
}

/// `https://` hubs: the device speaks TLS (rustls, the system's roots: here `SSL_CERT_FILE`
/// names a test CA) to a TLS front of the relay, negotiates and upgrades to `wss://` through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reaches_an_https_hub_through_the_system_roots() {
    if !common::require_tool("openssl", "openssl") {
        return;
    }
    let relay = Daemon::start(RELAY);
    let dir = common::TempDir::new("tls");
    let ca = dir.path("ca.pem");
    make_certificates(&dir);
    let front = tls_front(&dir, relay.addr).await;
    let ca_env = ca.to_str().unwrap().to_owned();
    let mut cam = tokio::task::spawn_blocking(move || {
        let mut cam = Daemon::start_with_env(
            &format!(
                "[[remote]]\nurl = \"https://localhost:{}\"\nsession = \"dev-tls\"\n",
                front.port()
            ),
            &[("SSL_CERT_FILE", &ca_env)],
        );
        cam.wait_for_log("remote hub: idle", common::START_TIMEOUT);
        cam
    })
    .await
    .unwrap();
    assert_eq!(health(&cam)["remotes"][0]["start_on_join"], true);
    initiate(relay.addr, "dev-tls", 0).await;
    cam.wait_for_log("answered the initiator's offer", Duration::from_secs(5));
}

/// A test CA and a server certificate for `localhost` signed by it, with openssl.
fn make_certificates(dir: &common::TempDir) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "1",
            "-subj",
            "/CN=snaprtcd test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=localhost",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
        ],
    ]
    .concat());
    std::fs::write(
        dir.path("srv.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "srv.ext",
        "-out",
        "srv.pem",
    ]);
}

/// TLS on 127.0.0.1:0 in front of `backend` (plain TCP): what a reverse proxy does.
async fn tls_front(dir: &common::TempDir, backend: std::net::SocketAddr) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.path("srv.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.path("srv.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// `session = "device-id"` (the default) is the stable id the daemon keeps in its state
/// directory (the one mDNS announces); the log names it once, and an initiator reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_id_is_the_session_by_default() {
    let relay = Daemon::start(RELAY);
    let state = common::TempDir::new("state");
    std::fs::write(state.path("device-id"), "0123456789abcdef\n").unwrap();
    let (hub, state_dir) = (relay.addr, state.0.to_str().unwrap().to_owned());
    let cam = tokio::task::spawn_blocking(move || {
        let mut cam = Daemon::start_with_env(
            &format!("[[remote]]\nurl = \"http://{hub}\"\n"),
            &[("STATE_DIRECTORY", &state_dir)],
        );
        cam.wait_for_log("remote hub: idle", common::START_TIMEOUT);
        cam
    })
    .await
    .unwrap();
    let told: Vec<_> = cam
        .log
        .iter()
        .filter(|l| l.contains("give that id"))
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0].contains("waits in session 0123456789abcdef on"),
        "{}",
        told[0]
    );
    initiate(relay.addr, "0123456789abcdef", 0).await;
}

/// `systemctl reload` with a `[[remote]]` added starts dialling out; removed, it stops.
#[test]
fn sighup_adds_and_removes_a_remote() {
    let relay = Daemon::start(RELAY);
    let mut cam = Daemon::start("");
    let path = cam.dir.path("snaprtcd.toml");
    let base = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{base}\n[[remote]]\nurl = \"http://{}\"\nsession = \"hup\"\n",
            relay.addr
        ),
    )
    .unwrap();
    cam.signal("HUP");
    let line = cam.wait_for_log("config reloaded", Duration::from_secs(10));
    assert!(line.contains("remote"), "{line}");
    cam.wait_for_log("remote hub: idle", Duration::from_secs(10));
    assert_eq!(health(&cam)["remotes"][0]["session"], "hup");
    std::fs::write(&path, &base).unwrap();
    cam.signal("HUP");
    // Ask /health until the remote is gone (a poll interval, not a synchronisation sleep: the
    // second reload logs what the first did).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while health(&cam).get("remotes").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the remote outlived the reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
