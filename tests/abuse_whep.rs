//! WHEP input over its budgets, black-box: a flood of `POST /whep` over `max_viewers` gets 503
//! and builds no `Rtc` (no DTLS key or certificate), and offers over an SDP budget get 400
//! naming the config key.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

mod common;

use std::time::Instant;

use common::{Daemon, HttpResponse};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

/// A browser-like offer: recvonly video and a data channel, one host candidate.
fn offer() -> String {
    let mut rtc = Rtc::builder().enable_h264(true).build(Instant::now());
    let addr = "127.0.0.1:40000".parse().unwrap();
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_channel("snap".into());
    api.apply().unwrap().0.to_sdp_string()
}

fn post(d: &Daemon, sdp: &str) -> HttpResponse {
    post_to(d.addr, sdp)
}

fn post_to(addr: std::net::SocketAddr, sdp: &str) -> HttpResponse {
    common::http(addr, &format!(
        "POST /whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

/// The value of an unlabelled metric in `GET /metrics`.
fn metric(d: &Daemon, name: &str) -> u64 {
    let text = d.http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn a_flood_of_whep_posts_over_max_viewers_gets_503_and_builds_no_rtc() {
    let d =
        Daemon::start("[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nmax_viewers = 2\n");
    let sdp = offer();
    for _ in 0..2 {
        assert_eq!(post(&d, &sdp).status, 201);
    }
    let addr = d.addr;
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..25)
                        .map(|_| {
                            let r = post_to(addr, &sdp);
                            (r.status, r.header("retry-after").map(str::to_owned))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(statuses.len(), 200);
    assert!(
        statuses
            .iter()
            .all(|(status, retry)| *status == 503 && retry.as_deref() == Some("5")),
        "{statuses:?}"
    );
    assert_eq!(metric(&d, "snaprtcd_viewers"), 2);
    assert_eq!(
        metric(&d, "snaprtcd_rtc_built_total"),
        2,
        "an Rtc was built for a refused offer"
    );
}

#[test]
fn offers_over_an_sdp_budget_get_400_naming_the_key() {
    let d = Daemon::start(
        "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nmax_sdp_candidates = 4\nmax_sdp_media = 3\n",
    );
    let sdp = offer();
    let cand = "a=candidate:9 1 udp 2113937151 127.0.0.1 40001 typ host\r\n";
    let r = post(&d, &format!("{sdp}{}", cand.repeat(4)));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("server.max_sdp_candidates"),
        "{}",
        r.text()
    );
    let r = post(
        &d,
        &format!(
            "{sdp}{}",
            "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:7\r\n".repeat(2)
        ),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("server.max_sdp_media"), "{}", r.text());
    assert_eq!(metric(&d, "snaprtcd_rtc_built_total"), 0);
    assert_eq!(post(&d, &sdp).status, 201);
}
