//! Dial-out (`[[remote]]`): a camera daemon connects to a snaprtcd relay (a second process on
//! loopback) as a SignalR client, waits in its session as the capture side, and an initiator
//! that joins later (a SignalR client plus a str0m peer, as a browser page would be) gets
//! `signalStart`, an answer, a still and video. Also: the daemon reconnects and re-joins after
//! the relay restarts; the relay emulating the original server's echo (case g of issue 13):
//! initiators one after another, each with exactly one `signalStart`; hostile hubs.
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
    let extra = exchange(&mut init, session, frames).await;
    assert_eq!(extra, 0, "a second signalStart during the exchange");
    init
}

/// After `signalStart`: offer, take the answer, get a still (and `frames` frames). Returns how
/// many more `signalStart`s came meanwhile (a stock page would have built a second peer).
async fn exchange(init: &mut Client, session: &str, frames: usize) -> usize {
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
    // What else reached the page by the time it has its picture (and would leave the hub).
    let mut after = Vec::new();
    while let Some(Read::Record(r)) = init.read_within(Duration::from_millis(100)).await {
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
    let mut cam = device(addr, "dev-2", "");
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
        exchange(&mut a, "dev-3", 0).await,
        0,
        "A got a second signalStart"
    );
    let a_done = std::time::Instant::now();
    drop(a); // a stock page leaves the hub once connected

    // B starts only now, once.
    let (_, before) = until(&mut b, "signalStart").await;
    assert!(
        a_done.elapsed() > Duration::from_secs(1),
        "B started while A was being served"
    );
    assert!(!before.iter().any(|r| r["target"] == "signalStart"));
    assert_eq!(
        exchange(&mut b, "dev-3", 0).await,
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
