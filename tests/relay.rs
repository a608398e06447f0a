//! The relay role (`[camera] source = "none"`): a hub with no camera. It is ready before any
//! camera work (there is none), binds no UDP socket, relays the SnapRTC exchange, and serves
//! only the hub, `/health`, `/metrics` and a front page that says it is a relay.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Instant;

use common::signalr::{Client, Read};
use common::{bin, Daemon, TempDir};
use serde_json::json;

/// `join_sessions` is left at its default ("all") on purpose: it must have no effect here.
const RELAY: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[camera]\nsource = \"none\"\n";

fn completion(id: &str) -> Read {
    Read::Record(json!({"type":3,"invocationId":id}))
}

fn invocation(target: &str, args: serde_json::Value) -> Read {
    Read::Record(json!({"type":1,"target":target,"arguments":args}))
}

/// Inodes of the UDP sockets (IPv4 and IPv6) in this network namespace.
fn udp_inodes() -> HashSet<String> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    inodes
}

/// How many of `pid`'s open files are UDP sockets.
fn udp_sockets_of(pid: u32) -> usize {
    let udp = udp_inodes();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned();
            Some(inode)
        })
        .filter(|inode| udp.contains(inode))
        .count()
}

fn health_json(d: &Daemon) -> serde_json::Value {
    let r = d.http("GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn a_relay_is_ready_at_once_binds_no_udp_and_serves_only_the_hub_health_and_metrics() {
    let spawned = Instant::now();
    let d = Daemon::start(RELAY);
    let health = health_json(&d);
    let took = spawned.elapsed();
    println!("relay: spawn to first /health answer: {took:?}");
    assert_eq!(health["role"], "relay", "{health}");
    assert!(health.get("camera").is_none(), "{health}");
    assert!(health.get("viewers").is_none(), "{health}");
    // The ordering that makes it quick: ready is announced with no camera work before it, and
    // none after it either (no media pipeline, no RTC engine).
    let log = d.log.join("\n");
    let relay_at = log.find("relay role").expect("the relay role is logged");
    let ready_at = log.find(" ready").expect("ready");
    assert!(relay_at < ready_at, "{log}");
    assert!(
        log.contains("join_sessions = \"all\" has no effect in the relay role"),
        "{log}"
    );
    for camera_work in ["webrtc udp listening", "capture started", "camera found"] {
        assert!(!log.contains(camera_work), "{camera_work:?} in\n{log}");
    }
    // Generous bound for a loaded 2-core CI machine running a debug build; the printed figure
    // is the number to watch (tens of milliseconds).
    assert!(took.as_secs() < 5, "took {took:?}");

    assert_eq!(
        udp_sockets_of(d.child.id()),
        0,
        "a relay binds no UDP socket"
    );

    // The SnapRTC exchange between two clients, with nobody else joining.
    let mut init = Client::open(d.addr).await;
    let mut cap = Client::open(d.addr).await;
    init.invoke("0", "Sync", json!(["room", false])).await;
    assert_eq!(init.read_non_ping().await, completion("0"));
    cap.invoke("0", "Sync", json!(["room", true])).await;
    assert_eq!(
        init.read_non_ping().await,
        invocation("signalStart", json!([])),
        "the first signalStart is the phone's: the relay never joins as the capture side"
    );
    assert_eq!(cap.read_non_ping().await, completion("0"));
    init.invoke("1", "SignalCapture", json!(["room", "offer"]))
        .await;
    assert_eq!(
        cap.read_non_ping().await,
        invocation("signalCapture", json!(["offer"]))
    );
    assert_eq!(init.read_non_ping().await, completion("1"));
    cap.invoke("1", "SignalInitiator", json!(["room", "answer"]))
        .await;
    assert_eq!(
        init.read_non_ping().await,
        invocation("signalInitiator", json!(["answer"]))
    );
    assert_eq!(cap.read_non_ping().await, completion("1"));
    assert_eq!(health_json(&d)["signaling"]["sessions"], 1);

    // Camera routes are 404; the front page says what this is.
    let whep = d.http(
        "POST /whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n",
    );
    assert_eq!(whep.status, 404, "{}", whep.text());
    for path in ["/snapshot.jpg", "/index.html", "/whep/abc"] {
        let r = d.http(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.status, 404, "{path}");
    }
    let page = d.http("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("relay"), "{}", page.text());
    assert!(page.text().contains("/snaprtc-hub"), "{}", page.text());
    let metrics = d.http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("\nsnaprtcd_role{role=\"relay\"} 1\n"),
        "{}",
        metrics.text()
    );
    assert!(metrics.text().contains("\nsnaprtcd_hub_connections 2\n"));
    let plain = d.http("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(plain.status, 200);
}

#[test]
fn a_camera_answers_health_with_its_role_and_binds_its_udp_port() {
    // The other side of the UDP check above: the same probe sees the engine's socket.
    let mut d = Daemon::start("");
    assert_eq!(health_json(&d)["role"], "camera");
    d.wait_for_log("webrtc udp listening", common::START_TIMEOUT);
    assert_eq!(udp_sockets_of(d.child.id()), 1);
}

#[test]
fn check_config_accepts_the_shipped_relay_config_and_refuses_camera_settings() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/relay.toml");
    let out = Command::new(bin())
        .args(["check-config", shipped])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");

    let dir = TempDir::new("relay");
    let path = dir.path("bad.toml");
    std::fs::write(
        &path,
        "[camera]\nsource = \"none\"\ndevice = \"/dev/video2\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "{}:3:10: camera.device: \"/dev/video2\" is a camera setting, but [camera] source = \"none\"",
            path.display()
        )),
        "{err}"
    );
}

/// `systemctl reload` from a camera to a relay and back: the services are rebuilt in-process
/// in the other role, the UDP socket is closed and opened again, the process stays.
#[test]
fn sighup_switches_between_the_camera_and_relay_roles() {
    let wait = std::time::Duration::from_secs(10);
    let mut d = Daemon::start("");
    let path = d.dir.path("snaprtcd.toml");
    let camera = std::fs::read_to_string(&path).unwrap();
    d.wait_for_log("webrtc udp listening", wait);
    assert_eq!(health_json(&d)["role"], "camera");

    let relay = "[server]\nlisten = \"127.0.0.1:0\"\n[mdns]\nenabled = false\n[camera]\nsource = \"none\"\n";
    std::fs::write(&path, relay).unwrap();
    d.signal("HUP");
    d.wait_for_log("config reloaded", wait);
    assert_eq!(health_json(&d)["role"], "relay");
    assert_eq!(
        udp_sockets_of(d.child.id()),
        0,
        "the engine's socket is closed"
    );

    std::fs::write(&path, camera).unwrap();
    d.log.clear();
    d.signal("HUP");
    d.wait_for_log("config reloaded", wait);
    assert_eq!(health_json(&d)["role"], "camera");
    assert_eq!(udp_sockets_of(d.child.id()), 1);
    assert!(d.child.try_wait().unwrap().is_none(), "still running");
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1, a relay's STATUS= line, and
/// WATCHDOG=1 pings, though no media or RTC loop runs (the hub answering stands in for them).
#[test]
fn a_relay_tells_systemd_it_is_ready_and_keeps_the_watchdog_fed() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("relay-notify");
    let path = dir.path("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let _d = Daemon::start_with_env(
        RELAY,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            // Pings every 2 s: the shortest period the idle loops always meet.
            ("WATCHDOG_USEC", "4000000"),
        ],
    );
    let deadline = Instant::now() + std::time::Duration::from_secs(15);
    let mut seen: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let pings = |seen: &[String]| seen.iter().filter(|l| *l == "WATCHDOG=1").count();
    while pings(&seen) < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no two WATCHDOG=1 in time; got {seen:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            seen.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
    assert!(seen.iter().any(|l| l == "READY=1"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l == "STATUS=relay: 0 hub connections, 0 sessions"),
        "{seen:?}"
    );
}
