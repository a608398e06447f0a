//! `systemctl reload` (SIGHUP): an invalid config keeps the daemon running on the old one and
//! the log names file:line; a valid one is taken.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

mod common;

use std::time::Duration;

use common::Daemon;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn sighup_with_a_broken_config_keeps_running_and_names_file_and_line() {
    let mut d = Daemon::start("");
    let path = d.dir.path("snaprtcd.toml");
    let good = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, format!("{good}\n[snapshot]\nquality = \"high\"\n")).expect("write");
    d.signal("HUP");
    let line = d.wait_for_log("reload rejected", WAIT);
    let place = format!("{}:", path.display());
    assert!(line.contains(&place), "names the file: {line}");
    let after = line.split(&place).nth(1).unwrap_or_default();
    assert!(
        after
            .split(':')
            .next()
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "file is followed by a line number: {line}"
    );
    assert_eq!(
        d.http("GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );

    // Fixed file: taken, and the daemon still serves.
    std::fs::write(&path, format!("{good}\n[snapshot]\nquality = 40\n")).expect("write");
    d.signal("HUP");
    d.wait_for_log("config reloaded", WAIT);
    assert!(d.child.try_wait().expect("wait").is_none(), "still running");
    assert_eq!(
        d.http("GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
}

/// `GET /health` as JSON.
fn health(addr: std::net::SocketAddr) -> serde_json::Value {
    let r = common::http(
        addr,
        "GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).expect("health JSON")
}

/// Ask `/health` until `want` holds (the restarted pipeline reports its size after its first
/// frame); a poll interval, not a synchronisation sleep.
fn wait_health(addr: std::net::SocketAddr, what: &str, want: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let h = health(addr);
        if want(&h) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/health never showed {what}: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_applies_camera_and_server_changes_by_restarting_the_services_in_process() {
    let mut d = Daemon::start("");
    let path = d.dir.path("snaprtcd.toml");
    let good = std::fs::read_to_string(&path).expect("read config");
    wait_health(d.addr, "320x240", |h| h["camera"]["width"] == 320);
    let pid = d.child.id();

    // Camera size and viewer limit: the services are rebuilt; same process, same HTTP socket.
    let changed = good
        .replace("width = 320\nheight = 240", "width = 160\nheight = 96")
        .replacen("[server]\n", "[server]\nmax_viewers = 3\n", 1);
    std::fs::write(&path, &changed).expect("write");
    d.signal("HUP");
    let line = d.wait_for_log("services restarted", WAIT);
    assert!(line.contains("camera") && line.contains("server"), "{line}");
    wait_health(d.addr, "160x96 and max 3 viewers", |h| {
        h["camera"]["width"] == 160 && h["camera"]["height"] == 96 && h["max_viewers"] == 3
    });
    assert_eq!(d.child.id(), pid);
    assert!(d.child.try_wait().expect("wait").is_none(), "still running");

    // mDNS only: applied live, nothing restarted.
    let before = d.log.len();
    let renamed = changed.replacen(
        "[mdns]\nenabled = false\n",
        "[mdns]\nenabled = false\ninstance_name = \"garage\"\n",
        1,
    );
    assert_ne!(renamed, changed);
    std::fs::write(&path, renamed).expect("write");
    d.signal("HUP");
    let line = d.wait_for_log("config reloaded (mdns changed)", WAIT);
    assert!(!line.contains("services restarted"), "{line}");
    assert!(
        !d.log[before..]
            .iter()
            .any(|l| l.contains("restarting the services")),
        "mDNS alone restarts nothing"
    );
}

/// `/health` on a fresh connection; `None` when the connection closed without a response.
fn status_or_closed(addr: std::net::SocketAddr) -> Option<u16> {
    common::try_http(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()
        .map(|r| r.status)
}

#[test]
fn requests_that_arrive_while_a_reload_restarts_the_services_are_answered() {
    let mut d = Daemon::start("");
    let path = d.dir.path("snaprtcd.toml");
    let good = std::fs::read_to_string(&path).expect("read config");
    let other = good.replace("fps = 15", "fps = 10");
    assert_ne!(other, good);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Clients that keep opening connections, so some are accepted by the server being stopped
    // before it has read their request.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (d.addr, stop.clone());
            std::thread::spawn(move || {
                let (mut answered, mut closed) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match status_or_closed(addr) {
                        Some(200) => answered += 1,
                        Some(other) => panic!("/health answered {other}"),
                        None => closed += 1,
                    }
                }
                (answered, closed)
            })
        })
        .collect();
    for round in 0..10 {
        let from = d.log.len();
        std::fs::write(&path, if round % 2 == 0 { &other } else { &good }).expect("write");
        d.signal("HUP");
        d.wait_for_log_from(from, "services restarted", WAIT);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut answered, mut closed) = (0, 0);
    for c in clients {
        let (a, c) = c.join().expect("client");
        answered += a;
        closed += c;
    }
    assert!(answered > 0, "no request answered");
    assert_eq!(
        closed,
        0,
        "{closed} of {} requests got a closed connection across 10 reloads",
        answered + closed
    );
}

#[test]
fn a_reload_that_cannot_start_goes_back_to_the_previous_config() {
    let mut d = Daemon::start("");
    let path = d.dir.path("snaprtcd.toml");
    let good = std::fs::read_to_string(&path).expect("read config");
    // A UDP port someone else holds: the new engine cannot bind it.
    let taken = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let bad = good
        .replace("rtc_udp_port = 0", &format!("rtc_udp_port = {port}"))
        .replace("width = 320\nheight = 240", "width = 160\nheight = 96");
    std::fs::write(&path, bad).expect("write");
    d.signal("HUP");
    let line = d.wait_for_log("the new config cannot start", WAIT);
    assert!(line.contains("UDP"), "{line}");
    wait_health(d.addr, "the previous 320x240 again", |h| {
        h["camera"]["width"] == 320
    });
    assert!(d.child.try_wait().expect("wait").is_none(), "still running");
    drop(taken);
}

#[test]
fn a_new_listen_address_is_bound_on_reload() {
    let mut d = Daemon::start("");
    let path = d.dir.path("snaprtcd.toml");
    let good = std::fs::read_to_string(&path).expect("read config");
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let moved = good.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    assert_ne!(moved, good);
    std::fs::write(&path, moved).expect("write");
    d.signal("HUP");
    d.wait_for_log("http listening on the new address", WAIT);
    let new_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_health(new_addr, "the new port", |h| h["status"] == "ok");
    assert!(
        std::net::TcpStream::connect(d.addr).is_err(),
        "the old address is closed"
    );
}
