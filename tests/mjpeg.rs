//! `GET /stream.mjpeg` from outside: `multipart/x-mixed-replace` whose parts are JPEGs that
//! decode at the camera's size, at most `[snapshot] mjpeg_max_fps` a second; auth as
//! `/snapshot.jpg`, or the token as a Basic password; one client over `mjpeg_max_clients`
//! gets 503.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Daemon;

/// Open the stream; the response head and the connection (to read parts from).
fn open(addr: SocketAddr, target: &str) -> (String, TcpStream, Vec<u8>) {
    open_with(addr, target, "")
}

/// [`open`] with more header lines (each ending in CRLF).
fn open_with(addr: SocketAddr, target: &str, headers: &str) -> (String, TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return (head, s, buf);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `n` JPEG parts from a chunked multipart body.
fn parts(s: &mut TcpStream, mut raw: Vec<u8>, n: usize) -> Vec<Vec<u8>> {
    let mut body = Vec::new();
    let mut out = Vec::new();
    loop {
        // De-chunk what is there.
        while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap(), 16).unwrap();
            if raw.len() < line_end + 2 + size + 2 {
                break;
            }
            body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
            raw.drain(..line_end + 2 + size + 2);
        }
        // Cut whole parts out of the body.
        while let Some(head_end) = body.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&body[..head_end]).into_owned();
            assert!(head.starts_with("--snaprtcdframe\r\n"), "{head}");
            assert!(head.contains("Content-Type: image/jpeg"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            if body.len() < head_end + 4 + len + 2 {
                break;
            }
            out.push(body[head_end + 4..head_end + 4 + len].to_vec());
            assert_eq!(&body[head_end + 4 + len..head_end + 6 + len], b"\r\n");
            body.drain(..head_end + 6 + len);
            if out.len() == n {
                return out;
            }
        }
        let mut chunk = [0u8; 65536];
        let got = s.read(&mut chunk).unwrap();
        assert!(got > 0, "closed after {} parts", out.len());
        raw.extend_from_slice(&chunk[..got]);
    }
}

fn jpeg_size(jpeg: &[u8]) -> (usize, usize) {
    let mut dec = zune_jpeg::JpegDecoder::new(zune_jpeg::zune_core::bytestream::ZCursor::new(jpeg));
    dec.decode().expect("a decodable JPEG");
    let info = dec.info().unwrap();
    (info.width as usize, info.height as usize)
}

#[test]
fn stream_mjpeg_sends_jpeg_parts_at_most_max_fps() {
    let d = Daemon::start("[snapshot]\nmjpeg_max_fps = 5\nmjpeg_max_clients = 1\n");
    let (head, mut s, raw) = open(d.addr, "/stream.mjpeg");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: multipart/x-mixed-replace; boundary=snaprtcdframe"),
        "{head}"
    );
    let started = Instant::now();
    let got = parts(&mut s, raw, 6);
    let took = started.elapsed();
    for jpeg in &got {
        assert_eq!(jpeg_size(jpeg), (320, 240));
    }
    // Six parts at most 5 a second: five periods of 200 ms between the first and the last.
    assert!(took >= Duration::from_millis(900), "6 parts in {took:?}");

    // One client is the limit here.
    let r = d.http("GET /stream.mjpeg HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 503, "{}", r.text());
    drop(s);
}

#[test]
fn stream_mjpeg_needs_the_token_when_auth_is_on() {
    let dir = common::TempDir::new("mjpeg-auth");
    let token_file = dir.path("token");
    std::fs::write(&token_file, "pass-word\n").unwrap();
    let d = Daemon::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nauth = \"token\"\nauth_token_file = \"{}\"\n",
        token_file.display()
    ));
    assert_eq!(
        d.http("GET /stream.mjpeg HTTP/1.1\r\nHost: x\r\n\r\n")
            .status,
        401
    );
    let (head, mut s, raw) = open(d.addr, "/stream.mjpeg?access_token=pass-word");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(jpeg_size(&parts(&mut s, raw, 1)[0]), (320, 240));
    drop(s);
    // Basic with any user name and the token as password (what HA's MJPEG camera sends):
    // "ha:pass-word", then "ha:nope".
    let basic = |b64: &str| {
        d.http(&format!(
            "GET /stream.mjpeg HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {b64}\r\n\r\n"
        ))
        .status
    };
    assert_eq!(basic("aGE6bm9wZQ=="), 401);
    let (head, mut s, raw) = open_with(
        d.addr,
        "/stream.mjpeg",
        "Authorization: Basic aGE6cGFzcy13b3Jk\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(jpeg_size(&parts(&mut s, raw, 1)[0]), (320, 240));
}
