//! The RTSP server from outside: ffprobe/ffmpeg read `rtsp://…/stream` over TCP and over UDP
//! and decode frames at the configured size; the SDP's profile is the stream's; token auth
//! (401, then the token as password); bad input (garbage, SETUP before DESCRIBE, an
//! interleaved flood, a client that never reads, one client too many) is answered and the
//! daemon keeps serving.
//!
//! The ffmpeg tests need `ffprobe`/`ffmpeg` (Debian package `ffmpeg`): under CI=true their
//! absence fails the test; elsewhere the test says SKIPPED and returns.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;
#[path = "support/tone.rs"]
mod tone;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;

const RTSP: &str = "[rtsp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n";

fn start(extra: &str) -> (Daemon, SocketAddr) {
    let mut d = Daemon::start(&format!("{RTSP}{extra}"));
    let line = d.wait_for_log("rtsp listening", common::START_TIMEOUT);
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr= in {line:?}"));
    (d, addr)
}

/// A raw RTSP connection: write requests, read responses (skipping interleaved data).
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

/// One response: status, head text, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        Self::with(TcpStream::connect(addr).unwrap())
    }

    fn with(s: TcpStream) -> Conn {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { s, buf: Vec::new() }
    }

    /// A connection with a 4 KiB receive buffer (set before connecting, so the TCP window
    /// stays small): a client that stops reading stops the server's sends at once.
    fn open_small_window(addr: SocketAddr) -> Conn {
        use std::os::fd::FromRawFd;
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4 loopback")
        };
        // SAFETY: plain socket calls on a descriptor this function owns until `from_raw_fd`
        // hands it to the TcpStream; the structs passed are fully initialised.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let size: libc::c_int = 4096;
            let r = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(r, 0);
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            let r = libc::connect(
                fd,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
            Self::with(TcpStream::from_raw_fd(fd))
        }
    }

    fn send(&mut self, text: &str) {
        self.s.write_all(text.as_bytes()).unwrap();
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response; `None` when the server closed first.
    fn answer(&mut self) -> Option<Answer> {
        loop {
            // Skip interleaved frames.
            while self.buf.first() == Some(&b'$') && self.buf.len() >= 4 {
                let len = 4 + usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                if self.buf.len() < len {
                    break;
                }
                self.buf.drain(..len);
            }
            if self.buf.first() != Some(&b'$') {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if self.buf.len() >= end + 4 + len {
                        let body =
                            String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into_owned();
                        self.buf.drain(..end + 4 + len);
                        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                        return Some(Answer { status, head, body });
                    }
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn request(&mut self, text: &str) -> Answer {
        self.send(text);
        self.answer().expect("an answer")
    }

    /// Whether the server closes the connection (reads until EOF, within the read timeout).
    fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

fn url(addr: SocketAddr) -> String {
    format!("rtsp://{addr}/stream")
}

/// ffprobe's `key=value` lines for the video stream.
fn ffprobe(url: &str, transport: &str) -> (bool, String) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-timeout",
            "15000000",
            "-rtsp_transport",
            transport,
        ])
        .args(["-select_streams", "v:0", "-show_entries"])
        .args([
            "stream=codec_name,profile,level,width,height",
            "-of",
            "default=nw=1",
        ])
        .arg(url)
        .output()
        .expect("ffprobe runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Decode `n` frames with ffmpeg; the number of decoded frames (framemd5 lines).
fn ffmpeg_decode(url: &str, transport: &str, n: usize) -> usize {
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-timeout",
            "15000000",
            "-rtsp_transport",
            transport,
        ])
        .args([
            "-i",
            url,
            "-frames:v",
            &n.to_string(),
            "-f",
            "framemd5",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg over {transport}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md5 = String::from_utf8_lossy(&out.stdout);
    // Every decoded picture is 320x240 I420: 115200 bytes.
    let frames: Vec<&str> = md5.lines().filter(|l| !l.starts_with('#')).collect();
    for f in &frames {
        assert!(f.contains(" 115200, "), "a 320x240 picture: {f}");
    }
    frames.len()
}

#[test]
fn ffmpeg_reads_rtsp_over_tcp_and_udp_at_the_configured_size() {
    if !common::require_tool("ffprobe", "ffmpeg") {
        return;
    }
    let (_d, addr) = start("");
    let (ok, text) = ffprobe(&url(addr), "tcp");
    assert!(ok, "{text}");
    for line in [
        "codec_name=h264",
        "profile=Constrained Baseline",
        "width=320",
        "height=240",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    assert_eq!(ffmpeg_decode(&url(addr), "tcp", 20), 20);
    assert_eq!(ffmpeg_decode(&url(addr), "udp", 20), 20);
}

#[test]
fn the_sdp_profile_is_the_streams() {
    if !common::require_tool("ffprobe", "ffmpeg") {
        return;
    }
    let (_d, addr) = start("");
    let mut c = Conn::open(addr);
    let a = c.request(&format!(
        "DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("Content-Type"), ["application/sdp"]);
    let fmtp = a
        .body
        .lines()
        .find_map(|l| l.strip_prefix("a=fmtp:96 "))
        .unwrap_or_else(|| panic!("fmtp in {}", a.body));
    let param = |k: &str| {
        fmtp.split(';')
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} in {fmtp}"))
            .to_owned()
    };
    assert_eq!(param("packetization-mode"), "1");
    let pli = u32::from_str_radix(&param("profile-level-id"), 16).unwrap();
    let (profile_idc, constraints, level_idc) = (pli >> 16, (pli >> 8) & 0xff, pli & 0xff);
    // The SPS in sprop-parameter-sets says the same.
    use base64::Engine as _;
    let sprop = param("sprop-parameter-sets");
    let sps = base64::engine::general_purpose::STANDARD
        .decode(sprop.split(',').next().unwrap())
        .unwrap();
    assert_eq!(sps[0] & 0x1f, 7, "an SPS");
    assert_eq!(
        (u32::from(sps[1]), u32::from(sps[2]), u32::from(sps[3])),
        (profile_idc, constraints, level_idc)
    );
    // And so does the decoder, from the stream itself.
    let (ok, text) = ffprobe(&url(addr), "tcp");
    assert!(ok, "{text}");
    assert_eq!(profile_idc, 66, "Baseline");
    assert!(
        constraints & 0x40 != 0,
        "constraint_set1: Constrained Baseline"
    );
    assert!(text.contains("profile=Constrained Baseline"), "{text}");
    assert!(
        text.lines().any(|l| l == format!("level={level_idc}")),
        "level {level_idc} in {text}"
    );
}

#[test]
fn token_auth_answers_401_and_the_token_as_password_plays() {
    if !common::require_tool("ffprobe", "ffmpeg") {
        return;
    }
    let dir = common::TempDir::new("rtsp-auth");
    let token_file = dir.path("token");
    std::fs::write(&token_file, "open-sesame\n").unwrap();
    let (_d, addr) = start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nauth = \"token\"\nauth_token_file = \"{}\"\n",
        token_file.display()
    ));
    let mut c = Conn::open(addr);
    let describe = format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", url(addr));
    let a = c.request(&describe);
    assert_eq!(a.status, 401, "{a:?}");
    let challenges = a.header("WWW-Authenticate");
    assert!(
        challenges[0].starts_with("Digest realm=\"snaprtcd\", nonce=\""),
        "{challenges:?}"
    );
    assert_eq!(challenges[1], "Basic realm=\"snaprtcd\"");
    // Basic with any user name and the token ("nvr:open-sesame").
    let a = c.request(&format!(
        "DESCRIBE {} RTSP/1.0\r\nCSeq: 2\r\nAuthorization: Basic bnZyOm9wZW4tc2VzYW1l\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 200, "{a:?}");

    // ffmpeg takes the credentials from the URL and answers the Digest challenge.
    let with_token = format!("rtsp://nvr:open-sesame@{addr}/stream");
    let (ok, text) = ffprobe(&with_token, "tcp");
    assert!(ok && text.contains("width=320"), "{text}");
    let (ok, text) = ffprobe(&format!("rtsp://nvr:wrong@{addr}/stream"), "tcp");
    assert!(!ok, "a wrong token must not play: {text}");
    let (ok, _) = ffprobe(&url(addr), "tcp");
    assert!(!ok, "no credentials must not play");
}

#[test]
fn bad_requests_are_answered_and_the_daemon_keeps_serving() {
    let (_d, addr) = start("");
    // Garbage: 400 and the connection closes.
    let mut c = Conn::open(addr);
    c.send("\x16\x03\x01 hello?\r\n\r\n");
    let a = c.answer().expect("an answer");
    assert_eq!(a.status, 400, "{a:?}");
    assert!(c.closed_by_server());
    // An HTTP request on the RTSP port: 400.
    let mut c = Conn::open(addr);
    assert_eq!(c.request("GET / HTTP/1.1\r\nHost: x\r\n\r\n").status, 400);

    let mut c = Conn::open(addr);
    let setup = format!(
        "SETUP {}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n",
        url(addr)
    );
    let a = c.request(&setup);
    assert_eq!(a.status, 455, "SETUP before DESCRIBE: {a:?}");
    let a = c.request(&format!("PLAY {} RTSP/1.0\r\nCSeq: 2\r\n\r\n", url(addr)));
    assert_eq!(a.status, 455, "PLAY before SETUP: {a:?}");
    let a = c.request(&format!(
        "DESCRIBE {}/other RTSP/1.0\r\nCSeq: 3\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 404);
    let a = c.request(&format!(
        "ANNOUNCE {} RTSP/1.0\r\nCSeq: 4\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 501);
    // An interleaved flood (4 MiB on a channel nobody set up), then a request: answered.
    let mut frame = vec![b'$', 7, 0xff, 0xff];
    frame.extend(std::iter::repeat_n(0x55u8, 0xffff));
    for _ in 0..64 {
        c.s.write_all(&frame).unwrap();
    }
    let a = c.request("OPTIONS * RTSP/1.0\r\nCSeq: 5\r\n\r\n");
    assert_eq!(a.status, 200, "after the flood: {a:?}");
    assert!(a.header("Public")[0].contains("DESCRIBE"));
    // A request too large: 400 and closed.
    let mut c = Conn::open(addr);
    c.send(&format!(
        "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX: {}",
        "a".repeat(20000)
    ));
    assert_eq!(c.answer().map(|a| a.status), Some(400));
    assert!(c.closed_by_server());

    // Still serving.
    let mut c = Conn::open(addr);
    let a = c.request(&format!(
        "DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 200, "{a:?}");
}

/// Set up and PLAY over TCP on `c`.
fn play_tcp(c: &mut Conn, addr: SocketAddr) {
    let a = c.request(&format!(
        "DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 200, "{a:?}");
    let a = c.request(&format!(
        "SETUP {}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 200, "{a:?}");
    let session = a.header("Session")[0].split(';').next().unwrap().to_owned();
    c.send(&format!(
        "PLAY {} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n",
        url(addr)
    ));
}

#[test]
fn a_client_that_never_reads_is_dropped_and_memory_stays_bounded() {
    // A short write timeout, frequent keyframes (more bytes a second).
    let (mut d, addr) = start(
        "max_queue_bytes = 65536\nwrite_timeout = \"2s\"\n[camera]\nsource = \"testsrc\"\nwidth = 640\nheight = 480\nfps = 30\n[encoder]\nkeyframe_interval = \"500ms\"\n",
    );
    // A tiny receive window: the kernel holds little for this client.
    let mut stuck = Conn::open_small_window(addr);
    play_tcp(&mut stuck, addr);
    let before = d.rss_kib();
    // Never read again. The server gives up on it after write_timeout once the queue is full.
    let line = d.wait_for_log("took nothing for write_timeout", Duration::from_secs(60));
    assert!(line.contains("dropped"), "{line}");
    let after = d.rss_kib();
    eprintln!("RSS {before} KiB when the client stopped reading, {after} KiB when it was dropped");
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB while a client read nothing"
    );
    // Others are served meanwhile and after.
    let mut c = Conn::open(addr);
    assert_eq!(
        c.request("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").status,
        200
    );
    let r = d.http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        r.text().contains("\nsnaprtcd_rtsp_dropped_slow_total 1\n"),
        "{}",
        r.text()
    );
    drop(stuck);
}

#[test]
fn one_client_over_max_clients_gets_503() {
    let (_d, addr) = start("max_clients = 2\n");
    let mut a = Conn::open(addr);
    let mut b = Conn::open(addr);
    // Both are served (so both are counted) before the third comes.
    assert_eq!(
        a.request("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").status,
        200
    );
    assert_eq!(
        b.request("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").status,
        200
    );
    let mut c = Conn::open(addr);
    let mut raw = String::new();
    let _ = c.s.read_to_string(&mut raw);
    assert!(raw.starts_with("RTSP/1.0 503 "), "{raw:?}");
    drop(a);
    // A place frees up when a client leaves (the server notices the close at once).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Conn::open(addr);
        c.send("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n");
        match c.answer() {
            Some(a) if a.status == 200 => break,
            other => assert!(Instant::now() < deadline, "no place freed: {other:?}"),
        }
    }
}

#[test]
fn the_test_tone_is_an_opus_track_ffprobe_sees_and_ffmpeg_decodes_at_1_khz() {
    if !common::require_tool("ffprobe", "ffmpeg") {
        return;
    }
    let (_d, addr) = start("[audio]\nsource = \"test\"\n");
    for transport in ["tcp", "udp"] {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-timeout",
                "15000000",
                "-rtsp_transport",
                transport,
            ])
            .args(["-show_entries", "stream=codec_type,codec_name,sample_rate"])
            .args(["-of", "default=nw=1"])
            .arg(url(addr))
            .output()
            .expect("ffprobe runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in ["codec_name=h264", "codec_name=opus", "sample_rate=48000"] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} over {transport} in {text}"
            );
        }
        // Two seconds of the audio track, decoded to 48 kHz mono samples.
        let out = Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-timeout",
                "15000000",
                "-rtsp_transport",
                transport,
            ])
            .args(["-i", &url(addr), "-map", "0:a", "-t", "2"])
            .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
            .output()
            .expect("ffmpeg runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pcm: Vec<i16> = out
            .stdout
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert!(
            pcm.len() >= 80_000,
            "{} samples over {transport}",
            pcm.len()
        );
        // 20 ms blocks away from the beeps (the first 100 ms of each second are 2 kHz): the
        // whole clip's strongest line is the 1 kHz tone (it sounds 90 % of the time).
        let hz = tone::dominant_hz(&tone::from_s16(&pcm[..48_000]), 48_000);
        assert!((hz - 1000.0).abs() <= 20.0, "{hz} Hz over {transport}");
        eprintln!(
            "rtsp {transport}: opus, {} samples, tone at {hz} Hz",
            pcm.len()
        );
    }
}

/// `name`'s value in a `/metrics` body (`name` with its labels, as printed).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[test]
fn an_audio_only_client_forces_no_idr_and_shows_in_health_and_metrics() {
    let (d, addr) = start("[audio]\nsource = \"test\"\n");
    let metrics = || {
        let r = d.http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        r.text()
    };
    let health = || -> serde_json::Value {
        let r = d.http("GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n");
        serde_json::from_slice(&r.body).expect("JSON")
    };
    // Nobody listens yet: the tone is read and dropped, nothing encoded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = health();
        if h["audio"]["state"] == "capturing" {
            break h;
        }
        assert!(Instant::now() < deadline, "{h}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(h["audio"]["source"], "test tone", "{h}");
    assert_eq!(h["audio"]["listeners"], 0, "{h}");
    assert_eq!(h["audio"]["frames"], 0, "{h}");
    let mut c = Conn::open(addr);
    let a = c.request(&format!(
        "DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 200, "{a:?}");
    let a = c.request(&format!(
        "SETUP {}/trackID=1 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=2-3\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 200, "{a:?}");
    let session = a.header("Session")[0].split(';').next().unwrap().to_owned();
    let a = c.request(&format!(
        "PLAY {} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n",
        url(addr)
    ));
    assert_eq!(a.status, 200, "{a:?}");
    // Opus RTP arrives on channel 2 (its keyframe request, had it made one, was queued before).
    while c.buf.len() < 4 {
        assert!(c.fill(), "audio RTP");
    }
    assert_eq!(&c.buf[..2], b"$\x02", "{:?}", &c.buf[..4]);
    // Three more camera frames: the encoder stays idle for this listener (no video receiver
    // after PLAY; at most the frame in hand when it let go is encoded), so no IDR either.
    let text = metrics();
    let captured = metric(&text, "snaprtcd_frames_captured_total").unwrap();
    let encoded = metric(&text, "snaprtcd_frames_encoded_total").unwrap();
    // DESCRIBE woke the encoder for SPS/PPS: that IDR is counted already.
    let new_viewer = "snaprtcd_keyframes_total{cause=\"new_viewer\"}";
    let idrs = metric(&text, new_viewer).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics();
        if metric(&text, "snaprtcd_frames_captured_total").unwrap() >= captured + 3.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "the camera stalled:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        metric(&text, "snaprtcd_frames_encoded_total").unwrap() <= encoded + 1.0,
        "an audio-only listener keeps the H.264 encoder running:\n{text}"
    );
    assert_eq!(
        metric(&text, new_viewer),
        Some(idrs),
        "an audio-only listener needs no IDR:\n{text}"
    );
    assert_eq!(metric(&text, "snaprtcd_audio_listeners"), Some(1.0));
    assert_eq!(
        metric(&text, "snaprtcd_audio_state{state=\"capturing\"}"),
        Some(1.0)
    );
    assert!(metric(&text, "snaprtcd_audio_frames_total").unwrap() >= 1.0);
    let h = health();
    let audio = &h["audio"];
    assert_eq!(audio["state"], "capturing", "{h}");
    assert_eq!(audio["listeners"], 1, "{h}");
    assert_eq!(audio["channels"], 1, "{h}");
    assert_eq!(audio["losses"], 0, "{h}");
    assert!(audio["frames"].as_u64().unwrap() >= 1, "{h}");
}
