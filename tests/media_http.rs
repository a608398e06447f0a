//! The camera over HTTP: `GET /snapshot.jpg` (auth as the hub) and the camera block of
//! `/health` as JSON.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use std::time::{Duration, Instant};

use common::{Daemon, HttpResponse};

/// Ask until `done` holds (the pipeline needs a frame or a second of fps first).
fn poll(d: &Daemon, request: &str, done: impl Fn(&HttpResponse) -> bool) -> HttpResponse {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = d.http(request);
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "gave up; last answer: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn jpeg_size(jpeg: &[u8]) -> (usize, usize) {
    let mut dec = zune_jpeg::JpegDecoder::new(zune_jpeg::zune_core::bytestream::ZCursor::new(jpeg));
    dec.decode().expect("a decodable JPEG");
    let info = dec.info().unwrap();
    (info.width as usize, info.height as usize)
}

#[test]
fn snapshot_jpg_is_the_latest_picture_uncached() {
    let d = Daemon::start("");
    let r = poll(&d, "GET /snapshot.jpg HTTP/1.1\r\nHost: x\r\n\r\n", |r| {
        r.status != 503
    });
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(jpeg_size(&r.body), (320, 240));
    assert_eq!(
        d.http("POST /snapshot.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .status,
        405
    );
}

#[test]
fn snapshot_jpg_needs_the_token_when_auth_is_on() {
    let dir = common::TempDir::new("still-auth");
    let token_file = dir.path("token");
    std::fs::write(&token_file, "let-me-in\n").unwrap();
    let d = Daemon::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nauth = \"token\"\nauth_token_file = \"{}\"\n",
        token_file.display()
    ));
    let r = d.http("GET /snapshot.jpg HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let wrong = "GET /snapshot.jpg HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n";
    assert_eq!(d.http(wrong).status, 401);
    assert_eq!(
        d.http("GET /snapshot.jpg?access_token=nope HTTP/1.1\r\nHost: x\r\n\r\n")
            .status,
        401
    );
    let bearer = "GET /snapshot.jpg HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer let-me-in\r\n\r\n";
    let r = poll(&d, bearer, |r| r.status != 503);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jpeg_size(&r.body), (320, 240));
    let r = d.http("GET /snapshot.jpg?access_token=let-me-in HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
}

#[test]
fn health_json_carries_camera_state_format_and_measured_fps() {
    let d = Daemon::start("");
    let request = "GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n";
    let camera = |r: &HttpResponse| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
        v["camera"].clone()
    };
    // The fps is measured over a second of frames.
    let r = poll(&d, request, |r| {
        let c = camera(r);
        c["state"] == "streaming" && c["fps"].as_f64().is_some_and(|f| f > 0.0)
    });
    assert_eq!(r.header("content-type"), Some("application/json"));
    let c = camera(&r);
    assert_eq!(c["source"], "testsrc", "{c}");
    assert_eq!(c["format"], "I420", "{c}");
    assert_eq!(
        (c["width"].as_u64(), c["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(c["encoder"], "openh264", "{c}");
    // The base config asks for 15 fps; the test pattern is paced like a camera.
    let fps = c["fps"].as_f64().unwrap();
    assert!((5.0..=20.0).contains(&fps), "{c}");
}
