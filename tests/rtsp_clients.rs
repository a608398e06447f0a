//! RTSP with other clients and beside WebRTC: GStreamer's `rtspsrc` (a second, independent
//! RTSP client) plays 10 s over TCP and over UDP, and decodes the Opus track; 8 RTSP clients and 8 WebRTC (WHEP) viewers
//! watch at once and the frames encoded stay the frames captured (one encode for all).
//!
//! The GStreamer test needs `gst-launch-1.0` with `rtspsrc` (Debian packages
//! `gstreamer1.0-tools gstreamer1.0-plugins-good`): under CI=true their absence fails the test.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

#[path = "support/rtc.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Daemon;

const FPS: u64 = 15;

fn start(extra: &str) -> (Daemon, SocketAddr) {
    let mut d = Daemon::start(&format!(
        "[rtsp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{extra}"
    ));
    let line = d.wait_for_log("rtsp listening", common::START_TIMEOUT);
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr= in {line:?}"));
    (d, addr)
}

/// The value of an unlabelled metric in `GET /metrics`.
fn metric(d: &Daemon, name: &str) -> u64 {
    let text = d.http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn gstreamer_rtspsrc_plays_ten_seconds_over_tcp_and_udp() {
    if !common::require_tool(
        "gst-launch-1.0",
        "gstreamer1.0-tools gstreamer1.0-plugins-good",
    ) {
        return;
    }
    let (_d, addr) = start("");
    let frames = 10 * FPS;
    let play = |protocol: &'static str| {
        std::thread::spawn(move || {
            let started = Instant::now();
            // identity ends the stream after `frames` access units; fakesink prints each one.
            let out = Command::new("timeout")
                .arg("40")
                .arg("gst-launch-1.0")
                .args(["-v", "rtspsrc", &format!("location=rtsp://{addr}/stream")])
                .args([
                    &format!("protocols={protocol}"),
                    "latency=0",
                    "!",
                    "rtph264depay",
                ])
                .args(["!", "identity", &format!("eos-after={frames}"), "!"])
                .args(["fakesink", "silent=false"])
                .output()
                .expect("gst-launch-1.0 runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success(), text, started.elapsed())
        })
    };
    let (tcp, udp) = (play("tcp"), play("udp"));
    for (protocol, handle) in [("tcp", tcp), ("udp", udp)] {
        let (ok, text, took) = handle.join().unwrap();
        let buffers = text
            .lines()
            .filter(|l| l.contains("last-message = chain"))
            .count();
        assert!(ok, "gst-launch over {protocol} failed:\n{text}");
        assert!(text.contains("Got EOS"), "{protocol}: {text}");
        // (identity lets `eos-after - 1` buffers through, then the EOS.)
        assert!(
            buffers as u64 >= frames - 1,
            "{protocol}: {buffers} access units, wanted {frames}"
        );
        // 150 access units at 15 fps is 10 s of stream: it played, it was not a burst.
        assert!(took >= Duration::from_secs(9), "{protocol}: took {took:?}");
        eprintln!("gstreamer over {protocol}: {buffers} access units in {took:?}");
    }
}

#[test]
fn gstreamer_decodes_the_opus_track_of_40_ms_packets_at_1_khz() {
    if !common::require_tool(
        "gst-launch-1.0",
        "gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-base",
    ) {
        return;
    }
    let (_d, addr) = start("[audio]\nsource = \"test\"\n");
    let dir = common::TempDir::new("gst-opus");
    let raw = dir.0.join("audio.raw");
    // 50 packets (two seconds: each carries a 40 ms period's two Opus frames), decoded.
    let out = Command::new("timeout")
        .arg("40")
        .arg("gst-launch-1.0")
        .args(["rtspsrc", &format!("location=rtsp://{addr}/stream")])
        .args(["protocols=tcp", "latency=0", "name=s", "s.", "!"])
        .args(["application/x-rtp,media=audio", "!", "rtpopusdepay", "!"])
        .args([
            "identity",
            "eos-after=50",
            "!",
            "opusdec",
            "!",
            "audioconvert",
            "!",
        ])
        .args([
            "audio/x-raw,format=S16LE,channels=1,rate=48000",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", raw.display()))
        .output()
        .expect("gst-launch-1.0 runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gst-launch failed:\n{text}");
    let bytes = std::fs::read(&raw).unwrap();
    let pcm: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    // (identity lets `eos-after - 1` packets through: 49 × 40 ms.)
    assert!(
        pcm.len() >= 48 * 1920,
        "{} samples decoded\n{text}",
        pcm.len()
    );
    // The tone's frequency in 50 ms windows by zero crossings: mostly 1 kHz (the 2 kHz beep
    // takes the first 100 ms of each second).
    let hz: Vec<usize> = pcm
        .chunks_exact(2400)
        .map(|w| w.windows(2).filter(|p| (p[0] < 0) != (p[1] < 0)).count() * 10)
        .collect();
    let near_1k = hz.iter().filter(|&&h| h.abs_diff(1000) <= 20).count();
    assert!(near_1k * 2 > hz.len(), "tone by window: {hz:?}");
    eprintln!(
        "gstreamer opus: {} samples, {near_1k} of {} windows at 1 kHz",
        pcm.len(),
        hz.len()
    );
}

/// An RTSP client over TCP: DESCRIBE, SETUP, PLAY, then count access units (RTP packets with
/// the marker bit on channel 0). Says "warm" after `warm` frames and "done" after `done` more.
fn rtsp_client(addr: SocketAddr, warm: usize, done: usize, events: mpsc::Sender<&'static str>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let url = format!("rtsp://{addr}/stream");
    let mut buf = Vec::new();
    let read_answer = |s: &mut TcpStream, buf: &mut Vec<u8>| -> String {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    buf.drain(..end + 4 + len);
                    assert!(head.starts_with("RTSP/1.0 200 "), "{head}");
                    return head;
                }
            }
            let mut chunk = [0u8; 8192];
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    s.write_all(format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").as_bytes())
        .unwrap();
    read_answer(&mut s, &mut buf);
    s.write_all(
        format!(
            "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let head = read_answer(&mut s, &mut buf);
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    s.write_all(format!("PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n").as_bytes())
        .unwrap();
    read_answer(&mut s, &mut buf);
    let mut frames = 0;
    loop {
        while buf.len() >= 4 {
            assert_eq!(buf[0], b'$', "only interleaved data after PLAY");
            let len = 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            if buf.len() < len {
                break;
            }
            if buf[1] == 0 && buf[5] & 0x80 != 0 {
                frames += 1;
                if frames == warm {
                    events.send("warm").unwrap();
                }
                if frames == warm + done {
                    events.send("done").unwrap();
                    return;
                }
            }
            buf.drain(..len);
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {frames} frames");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_rtsp_clients_and_eight_webrtc_viewers_share_one_encode() {
    const CLIENTS: usize = 8;
    let (warm, done) = (5, 3 * FPS as usize);
    let (d, addr) = start("");
    let (events, seen) = mpsc::channel();

    for _ in 0..CLIENTS {
        let events = events.clone();
        std::thread::spawn(move || rtsp_client(addr, warm, done, events));
    }
    for _ in 0..CLIENTS {
        let (mut peer, offer, pending) = support::Peer::new().await;
        let r = common::http(
            d.addr,
            &format!(
                "POST /whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
                offer.len()
            ),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        peer.accept(pending, &r.text());
        let events = events.clone();
        tokio::spawn(async move {
            peer.frames(warm).await;
            events.send("warm").unwrap();
            peer.frames(done).await;
            events.send("done").unwrap();
        });
    }
    drop(events);
    let wait = |what: &str| {
        for i in 0..2 * CLIENTS {
            let got = seen
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{i} of {} clients {what}: {e}", 2 * CLIENTS));
            assert_eq!(got, what);
        }
    };
    tokio::task::block_in_place(|| wait("warm"));
    let (captured0, encoded0) = (
        metric(&d, "snaprtcd_frames_captured_total"),
        metric(&d, "snaprtcd_frames_encoded_total"),
    );
    let (rtsp0, rtc0) = (
        metric(&d, "snaprtcd_rtsp_frames_sent_total"),
        metric(&d, "snaprtcd_frames_sent_total"),
    );
    tokio::task::block_in_place(|| wait("done"));
    let captured = metric(&d, "snaprtcd_frames_captured_total") - captured0;
    let encoded = metric(&d, "snaprtcd_frames_encoded_total") - encoded0;
    let rtsp = metric(&d, "snaprtcd_rtsp_frames_sent_total") - rtsp0;
    let rtc = metric(&d, "snaprtcd_frames_sent_total") - rtc0;
    eprintln!(
        "while 8 RTSP + 8 WebRTC watched: captured {captured}, encoded {encoded}, sent to RTSP {rtsp}, to WebRTC {rtc}"
    );
    // One encode for all: as many pictures encoded as captured, not sixteen times as many.
    assert!(
        encoded <= captured + 2,
        "encoded {encoded} > captured {captured}"
    );
    assert!(
        encoded * 10 >= captured * 8,
        "encoded {encoded} of {captured} captured"
    );
    // Every client got (nearly) every encoded frame.
    assert!(
        rtsp >= (CLIENTS as u64) * encoded * 7 / 10,
        "RTSP sent {rtsp}"
    );
    assert!(
        rtc >= (CLIENTS as u64) * encoded * 7 / 10,
        "WebRTC sent {rtc}"
    );
    assert_eq!(metric(&d, "snaprtcd_viewers"), CLIENTS as u64);
}
