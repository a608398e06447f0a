//! The daemon under systemd's notify protocol, as `Type=notify` + `WatchdogSec=` see it: a
//! datagram socket stands in for systemd (`NOTIFY_SOCKET`), `WATCHDOG_USEC` arms the watchdog.
//! READY=1 comes once listening; STATUS= says what it does and follows the viewer count;
//! WATCHDOG=1 keeps coming while the loops run.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::Daemon;
use str0m::media::{Direction, MediaKind};
use str0m::Rtc;

const WAIT: Duration = Duration::from_secs(15);

struct Systemd {
    socket: UnixDatagram,
    /// Every `KEY=value` line received so far.
    seen: Vec<String>,
}

impl Systemd {
    fn new(path: &std::path::Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("bind notify socket");
        Self {
            socket,
            seen: Vec::new(),
        }
    }

    /// Wait for a line for which `want` holds; returns it.
    fn wait_for(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {WAIT:?}; got {:?}",
                self.seen
            );
            self.socket.set_read_timeout(Some(left)).expect("timeout");
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut hit = None;
            for line in text.lines() {
                self.seen.push(line.to_owned());
                if hit.is_none() && want(line) {
                    hit = Some(line.to_owned());
                }
            }
            if let Some(line) = hit {
                return line;
            }
        }
    }
}

fn recvonly_offer() -> String {
    let mut rtc = Rtc::builder().enable_h264(true).build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, _pending) = api.apply().expect("offer");
    offer.to_sdp_string()
}

#[test]
fn ready_status_and_watchdog_pings_reach_systemd() {
    let dir = common::TempDir::new("notify");
    let path = dir.path("notify.sock");
    let mut systemd = Systemd::new(&path);
    let d = Daemon::start_with_env(
        "",
        &[
            ("NOTIFY_SOCKET", path.to_str().expect("utf-8 path")),
            // 4 s: pings every 2 s (the shortest period the idle loops always meet).
            ("WATCHDOG_USEC", "4000000"),
        ],
    );
    systemd.wait_for("READY=1", |l| l == "READY=1");
    // The first frames settle the encoder name and the measured rate.
    let status = systemd.wait_for("a streaming status", |l| {
        l.starts_with("STATUS=streaming 320x240@1") && l.ends_with("(testsrc, openh264)")
    });
    assert!(status.contains(" to 0 viewers "), "{status}");
    for _ in 0..2 {
        systemd.wait_for("WATCHDOG=1", |l| l == "WATCHDOG=1");
    }

    // A WHEP viewer joins: the status line counts it; it leaves: back to 0.
    let offer = recvonly_offer();
    let r = d.http(&format!(
        "POST /whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        offer.len()
    ));
    assert_eq!(r.status, 201, "{}", r.text());
    systemd.wait_for("1 viewer", |l| {
        l.starts_with("STATUS=streaming") && l.contains(" to 1 viewer ")
    });
    let location = r.header("location").expect("Location").to_owned();
    let r = d.http(&format!("DELETE {location} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(r.status, 200);
    systemd.wait_for("0 viewers again", |l| {
        l.starts_with("STATUS=streaming") && l.contains(" to 0 viewers ")
    });
    systemd.wait_for("WATCHDOG=1 after", |l| l == "WATCHDOG=1");
}
