//! `[ice]` servers reach WHEP clients, black-box: `Link: <…>; rel="ice-server"` headers
//! (RFC 9725) on `OPTIONS /whep` and on the `201` of `POST /whep`, with TURN REST credentials
//! made from the secret (never the secret), and only for clients that pass the access check.
//! Without `[ice]` servers there are none.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

mod common;

use std::time::Instant;

use common::{Daemon, HttpResponse, TempDir};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

const TOKEN: &str = "t0ken-for-ice";

fn offer() -> String {
    let mut rtc = Rtc::builder().enable_h264(true).build(Instant::now());
    let addr = "127.0.0.1:40000".parse().unwrap();
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.apply().unwrap().0.to_sdp_string()
}

fn links(r: &HttpResponse) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("link"))
        .map(|(_, v)| v.clone())
        .collect()
}

fn daemon(ice: &str, dir: &TempDir) -> Daemon {
    let file = dir.path("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    Daemon::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nauth = \"token\"\n\
         auth_token_file = \"{}\"\n{ice}",
        file.display()
    ))
}

const ICE: &str = "[ice]\nstun_servers = [\"stun:127.0.0.1:9\"]\n\
    [[ice.turn_servers]]\nurl = \"turn:127.0.0.1:9?transport=udp\"\nsecret = \"s3cret-never-sent\"\n\
    [[ice.turn_servers]]\nurl = \"turns:127.0.0.1:9\"\nusername = \"alice\"\ncredential = \"pw\"\n";

#[test]
fn whep_options_and_post_carry_ice_servers_for_authorised_clients_only() {
    let dir = TempDir::new("whep-ice");
    let d = daemon(ICE, &dir);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");

    let anon = d.http("OPTIONS /whep HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        links(&anon).is_empty(),
        "no credentials without the token: {anon:?}"
    );

    let r = d.http(&format!("OPTIONS /whep HTTP/1.1\r\nHost: x\r\n{auth}\r\n"));
    let l = links(&r);
    assert_eq!(l.len(), 3, "{r:?}");
    assert_eq!(l[0], "<stun:127.0.0.1:9>; rel=\"ice-server\"");
    assert!(
        l[1].starts_with("<turn:127.0.0.1:9?transport=udp>; rel=\"ice-server\"; username=\""),
        "{}",
        l[1]
    );
    assert!(
        l[1].contains(":snaprtcd\"; credential=\""),
        "REST user name: {}",
        l[1]
    );
    assert_eq!(
        l[2],
        "<turns:127.0.0.1:9>; rel=\"ice-server\"; username=\"alice\"; credential=\"pw\"; \
         credential-type=\"password\""
    );
    // The REST expiry is about credential_ttl (24 h) from now.
    let expiry: u64 = l[1]
        .split("username=\"")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 86_000..=now + 86_500).contains(&expiry),
        "{expiry} vs {now}"
    );

    let sdp = offer();
    let r = d.http(&format!(
        "POST /whep HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(links(&r).len(), 3, "{r:?}");
    let text = format!("{r:?}{anon:?}");
    assert!(!text.contains("s3cret-never-sent"));
    // Full ICE with servers configured.
    assert!(!r.text().contains("a=ice-lite"), "{}", r.text());
}

#[test]
fn without_ice_servers_there_are_no_links_and_the_answer_is_ice_lite() {
    let dir = TempDir::new("whep-noice");
    let d = daemon("", &dir);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let r = d.http(&format!("OPTIONS /whep HTTP/1.1\r\nHost: x\r\n{auth}\r\n"));
    assert!(links(&r).is_empty(), "{r:?}");
    let sdp = offer();
    let r = d.http(&format!(
        "POST /whep HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    assert_eq!(r.status, 201);
    assert!(links(&r).is_empty());
    assert!(r.text().contains("a=ice-lite"));
}
