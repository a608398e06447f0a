//! The configuration schema (`/etc/snaprtcd/snaprtcd.toml`), its defaults and its validation.
//!
//! Parsing (`Config::from_toml`) is separate from reading the file (`Config::load`) so tests
//! and `check-config` share one path. Every error carries the file, the line and column and the
//! dotted key it is about: `snaprtcd.toml:12:11: signaling.keepalive: ...`.
//!
//! Unknown keys are errors everywhere (`deny_unknown_fields`): a typo in a key must not silently
//! fall back to a default on a device nobody is watching.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the daemon looks for its config when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/snaprtcd/snaprtcd.toml";

/// The whole configuration. Each section has its own struct; every field has a default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener, UDP port for WebRTC, limits on viewers, CORS and auth.
    pub server: ServerConfig,
    /// Which camera and how it is captured.
    pub camera: CameraConfig,
    /// How frames become H.264.
    pub encoder: EncoderConfig,
    /// JPEG stills (`/snapshot.jpg`, data channel).
    pub snapshot: SnapshotConfig,
    /// The SnapRTC-compatible SignalR hub.
    pub signaling: SignalingConfig,
    /// The RTSP server (`rtsp://host:8554/stream`) for NVRs and Home Assistant.
    pub rtsp: RtspConfig,
    /// The microphone: captured once, encoded once to Opus, sent with the video.
    pub audio: AudioConfig,
    /// mDNS advertisement of `_snaprtc._tcp` (and `_rtsp._tcp` with the RTSP server on).
    pub mdns: MdnsConfig,
    /// Sharing sessions with other instances through Redis (scale-out).
    pub backplane: BackplaneConfig,
    /// ICE beyond the LAN: STUN and TURN servers, full ICE or ICE-lite.
    pub ice: IceConfig,
    /// Log level and format.
    pub log: LogConfig,
    /// `[[remote]]`: remote SnapRTC hubs the device dials out to and waits in as the capture
    /// side (one entry per session; several entries serve several initiators at once).
    pub remote: Vec<RemoteConfig>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP (and WebSocket) listen address. `PORT` in the environment overrides its port.
    pub listen: SocketAddr,
    /// The one UDP port every WebRTC viewer uses (one firewall rule).
    pub rtc_udp_port: u16,
    /// Extra addresses announced as host candidates (1:1 NAT, e.g. a cloud VM's public IP).
    pub public_addrs: Vec<std::net::IpAddr>,
    /// Most WebRTC viewers at once (WHEP and SnapRTC sessions together); more get 503.
    pub max_viewers: usize,
    /// Origins allowed by CORS; `"*"` allows any origin.
    pub cors_origins: Vec<String>,
    /// `none`: open; `token`: hub, WHEP and snapshots need the bearer token.
    pub auth: AuthMode,
    /// Where the bearer token lives; created (random, mode 0600) when missing.
    pub auth_token_file: PathBuf,
    /// Largest HTTP request body accepted (SDP offers, PATCH fragments).
    pub max_body_bytes: usize,
    /// Time a client has to send a whole request head (request line and headers), counted from
    /// its connection or from its first byte after the previous response; slowloris clients are
    /// closed when it runs out. A request body (WHEP) has as long again (else 408).
    #[serde(with = "humantime_serde", default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection that sends nothing this long after a response is closed.
    /// WebSockets are not affected: they leave the HTTP server when they upgrade.
    #[serde(with = "humantime_serde", default = "default_keepalive_idle_timeout")]
    pub keepalive_idle_timeout: Duration,
    /// Most HTTP connections at once (upgraded WebSockets no longer count); over it a new
    /// connection is answered 503 and closed at once.
    #[serde(default = "default_max_http_connections")]
    pub max_http_connections: usize,
    /// Largest request head (request line and headers); a larger one gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// With `auth = "token"`: whether `/metrics` and the JSON `/health` need the token too
    /// (`false` for Prometheus scrapers on a trusted network).
    #[serde(default = "default_metrics_auth")]
    pub metrics_auth: bool,
    /// Largest SDP offer or WHEP trickle fragment, in bytes, checked before any parsing
    /// (SnapRTC offers decoded from the hub count too).
    pub max_sdp_bytes: usize,
    /// Most m-lines in an offer or a trickle fragment: each becomes per-viewer state in str0m.
    pub max_sdp_media: usize,
    /// Most `a=candidate:` lines in an offer, in a trickle fragment, and in all that one
    /// viewer sends together: each is a remote candidate str0m keeps.
    pub max_sdp_candidates: usize,
}

/// `[server] header_read_timeout`: a LAN client sends its head in milliseconds.
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[server] keepalive_idle_timeout`: browsers reuse a connection within a minute or not at all.
fn default_keepalive_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

/// `[server] max_http_connections`: far above what a camera's viewers and scrapers need, far
/// below the packaged unit's file limit.
fn default_max_http_connections() -> usize {
    256
}

/// `[server] max_header_bytes`: a browser's head with a bearer token is under 2 KiB.
fn default_max_header_bytes() -> usize {
    16 * 1024
}

/// `[server] metrics_auth`: the counters tell who watches; keep them behind the token.
fn default_metrics_auth() -> bool {
    true
}

/// `[server] max_sdp_bytes`: a browser offer with audio, video, a data channel and a dozen
/// candidates is 5-10 KB; 64 KiB leaves room for many codecs and candidates.
pub fn default_max_sdp_bytes() -> usize {
    65_536
}

/// `[server] max_sdp_media`: browsers offer one m-line per transceiver (a viewer page has 1-3).
pub fn default_max_sdp_media() -> usize {
    32
}

/// `[server] max_sdp_candidates`: a multi-homed host with IPv6, a VPN, STUN and TURN gathers
/// a few dozen at most.
pub fn default_max_sdp_candidates() -> usize {
    64
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            rtc_udp_port: 8555,
            public_addrs: Vec::new(),
            max_viewers: 16,
            cors_origins: vec!["*".to_owned()],
            auth: AuthMode::None,
            auth_token_file: PathBuf::from("/var/lib/snaprtcd/token"),
            max_body_bytes: 65536,
            header_read_timeout: default_header_read_timeout(),
            keepalive_idle_timeout: default_keepalive_idle_timeout(),
            max_http_connections: default_max_http_connections(),
            max_header_bytes: default_max_header_bytes(),
            metrics_auth: default_metrics_auth(),
            max_sdp_bytes: default_max_sdp_bytes(),
            max_sdp_media: default_max_sdp_media(),
            max_sdp_candidates: default_max_sdp_candidates(),
        }
    }
}

/// Who may use the hub, WHEP and snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who can reach the port.
    None,
    /// `Authorization: Bearer T` or `?access_token=T`.
    Token,
}

/// `[camera]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// `auto`: first usable V4L2 camera, else the test pattern; `none`: the relay role.
    pub source: SourceKind,
    /// V4L2 device node (`/dev/v4l/by-id/...` paths work).
    pub device: PathBuf,
    /// Requested width; the closest the camera offers is used.
    pub width: u32,
    /// Requested height; the closest the camera offers is used.
    pub height: u32,
    /// Requested frame rate; the closest the camera offers is used.
    pub fps: u32,
    /// Pixel format to ask the camera for; `auto` prefers H.264 > MJPEG > YUYV/NV12.
    pub format: CaptureFormat,
    /// V4L2 controls set after opening, by name: `brightness = 10`.
    pub controls: BTreeMap<String, i64>,
    /// The `exec` source: a program that writes H.264, MJPEG or raw YUYV to stdout.
    pub exec: ExecConfig,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::Auto,
            device: PathBuf::from("/dev/video0"),
            width: 1280,
            height: 720,
            fps: 30,
            format: CaptureFormat::Auto,
            controls: BTreeMap::new(),
            exec: ExecConfig::default(),
        }
    }
}

/// `[camera] source`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The first V4L2 capture device that opens, else the test pattern.
    Auto,
    /// The V4L2 device at `[camera] device`.
    V4l2,
    /// A program's standard output (`[camera.exec]`), e.g. `rpicam-vid`.
    Exec,
    /// The built-in moving test pattern.
    Testsrc,
    /// No camera: the relay role. Only the hub, `/health` and `/metrics` are served; no
    /// encoder runs and no UDP port is bound. Camera-only settings changed from their defaults
    /// are refused ([`Config::from_toml`] names the first one).
    None,
}

/// `[camera] format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureFormat {
    /// The best the device offers: H.264, then MJPEG, then YUYV, then NV12.
    Auto,
    /// H.264 from the camera, passed through.
    H264,
    /// Motion JPEG, decoded and encoded (stills use the camera's own JPEG).
    Mjpeg,
    /// Packed 4:2:2 YUV.
    Yuyv,
    /// Semi-planar 4:2:0 YUV.
    Nv12,
}

/// `[camera.exec]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// argv of the program (no shell); it writes the stream to stdout.
    pub command: Vec<String>,
    /// What the program writes.
    pub format: ExecFormat,
    /// Largest H.264 access unit (one picture) buffered from the program. A larger one is
    /// dropped while it is being read (memory stays bounded), counted in the log, and the
    /// stream resumes at the next IDR. 4 MiB holds a 4K intra picture at high quality.
    #[serde(default = "default_max_access_unit_bytes")]
    pub max_access_unit_bytes: usize,
}

fn default_max_access_unit_bytes() -> usize {
    4 << 20
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            command: [
                "rpicam-vid",
                "-t",
                "0",
                "--inline",
                "--codec",
                "h264",
                "-o",
                "-",
            ]
            .map(String::from)
            .to_vec(),
            format: ExecFormat::H264,
            max_access_unit_bytes: default_max_access_unit_bytes(),
        }
    }
}

/// `[camera.exec] format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecFormat {
    /// An Annex-B H.264 elementary stream.
    H264,
    /// Concatenated JPEG pictures.
    Mjpeg,
    /// Raw YUYV 4:2:2 pictures of `[camera] width`×`height`, two bytes a pixel, one after
    /// another with nothing between them (`ffmpeg … -pix_fmt yuyv422 -f rawvideo -`).
    Yuyv,
}

/// `[encoder]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// `auto`: passthrough when the source gives H.264, else software.
    pub kind: EncoderKind,
    /// Target bitrate of the software encoder. It never skips a picture to hold it: on content
    /// too rich for the rate it lowers the quality and may overshoot a little.
    pub bitrate_kbps: u32,
    /// Time between periodic IDR frames (the GOP).
    #[serde(with = "humantime_serde")]
    pub keyframe_interval: Duration,
    /// openh264 threads: one is enough below 1080p, and 1080p30 on one core of a small board
    /// is not; `auto` decides from the picture size and the cores.
    pub threads: EncoderThreads,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            kind: EncoderKind::Auto,
            bitrate_kbps: 2000,
            keyframe_interval: Duration::from_secs(2),
            threads: default_encoder_threads(),
        }
    }
}

/// `[encoder] threads` defaults to `auto`.
fn default_encoder_threads() -> EncoderThreads {
    EncoderThreads::Auto
}

/// Most threads openh264 uses (its `MAX_THREADS_NUM`; it clips larger counts to this).
pub const MAX_ENCODER_THREADS: u16 = 4;

/// `[encoder] threads`: `"auto"` or a number of threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderThreads {
    /// More than one thread for pictures of 1080p and up when the machine has the cores (less
    /// the one an MJPEG source's decode thread takes), one below (see
    /// `media::encoder::encoder_threads`).
    Auto,
    /// Exactly this many (1..=[`MAX_ENCODER_THREADS`], checked by validation).
    Fixed(u16),
}

impl Serialize for EncoderThreads {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Fixed(n) => s.serialize_u16(*n),
        }
    }
}

impl<'de> Deserialize<'de> for EncoderThreads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = EncoderThreads;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\" or a number of threads")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EncoderThreads, E> {
                if v == "auto" {
                    Ok(EncoderThreads::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<EncoderThreads, E> {
                u16::try_from(v)
                    .map(EncoderThreads::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<EncoderThreads, E> {
                u16::try_from(v)
                    .map(EncoderThreads::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// `[encoder] kind`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// Pass the camera's H.264 through when it gives H.264, else encode with openh264.
    Auto,
    /// Only pass H.264 through; a source that gives anything else is an error.
    Passthrough,
    /// Always encode with openh264.
    Software,
}

/// `[snapshot]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// JPEG quality (1-100) for stills encoded from raw frames.
    pub quality: u8,
    /// Send one still on every data channel as soon as it opens.
    pub on_connect: bool,
    /// Most JPEG parts a second on `GET /stream.mjpeg` (each client gets at most this many;
    /// stills are encoded only while a client watches).
    pub mjpeg_max_fps: u32,
    /// Most `/stream.mjpeg` clients at once; more get 503.
    pub mjpeg_max_clients: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            quality: 85,
            on_connect: true,
            mjpeg_max_fps: 5,
            mjpeg_max_clients: 8,
        }
    }
}

/// `[rtsp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtspConfig {
    /// Serve the camera's H.264 over RTSP. Off by default in the code (a development or test run
    /// opens no second port unasked, and a relay has no camera); the packaged config turns it on.
    pub enabled: bool,
    /// Address and port of the RTSP listener; the stream is `rtsp://HOST:PORT/stream`.
    pub listen: SocketAddr,
    /// Most RTSP connections at once; more are answered 503 and closed.
    pub max_clients: usize,
    /// Bytes queued towards one TCP client; while it is fuller, that client's frames are skipped
    /// up to the next keyframe.
    pub max_queue_bytes: usize,
    /// A TCP client that takes no byte of what is queued for it this long is dropped.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A session that hears nothing from its client this long ends (UDP clients keep it alive
    /// with RTCP or GET_PARAMETER/OPTIONS; a TCP client while it plays with its connection).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Largest RTSP request (head and body); a larger one gets 400 and the connection closes.
    pub max_request_bytes: usize,
}

impl Default for RtspConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 8554)),
            max_clients: 16,
            max_queue_bytes: 2 << 20,
            write_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(60),
            max_request_bytes: 16384,
        }
    }
}

fn validate_rtsp(r: &RtspConfig) -> Result<(), Invalid> {
    in_range("rtsp.max_clients", r.max_clients, 1..=1024)?;
    in_range(
        "rtsp.max_queue_bytes",
        r.max_queue_bytes,
        65536..=(64 << 20),
    )?;
    in_range(
        "rtsp.max_request_bytes",
        r.max_request_bytes,
        1024..=(1 << 20),
    )?;
    for (key, t) in [
        ("rtsp.write_timeout", r.write_timeout),
        ("rtsp.session_timeout", r.session_timeout),
    ] {
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&t) {
            return bad(
                key,
                format!("{} is not between 1s and 1h", humantime::format_duration(t)),
            );
        }
    }
    Ok(())
}

/// `[audio]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// `auto`: the webcam's own microphone (the ALSA card on the camera's USB device), else
    /// none.
    pub source: AudioSourceKind,
    /// ALSA capture device for `source = "alsa"`, e.g. `hw:CARD=C920,DEV=0`, `plughw:1,0` or
    /// `default`.
    pub device: String,
    /// Capture sample rate in Hz: one Opus takes (8000, 12000, 16000, 24000 or 48000).
    pub rate: u32,
    /// Capture channels: 1 (mono) or 2 (stereo).
    pub channels: u32,
    /// Opus bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Opus encoder complexity, 0 (cheapest) to 10 (best). A 48 kHz mono encode at 5 took
    /// about 0.9 % of an x86 core, 1.75 % while FEC is coded for 10 % loss; 1 costs a fifth
    /// less (docs/BENCHMARKS.md, bench/audio).
    pub complexity: u32,
    /// Sound read and encoded per wake-up of the audio thread, in ms: 20, 40 or 60 (one, two or
    /// three 20 ms Opus frames, sent together in one Opus packet). Each wake-up also wakes
    /// whoever sends the frames (the RTC engine, RTSP sessions), and each packet costs every
    /// receiver a datagram; on a small board both cost more than the encoding: 40 halves them
    /// against 20 for 20 ms more delay (docs/BENCHMARKS.md).
    pub period_ms: u32,
    /// The `exec` source: argv of a program (no shell) that writes audio to stdout.
    pub exec: Vec<String>,
    /// What the `exec` program writes.
    pub exec_format: AudioExecFormat,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            source: AudioSourceKind::Auto,
            device: "default".into(),
            rate: 48_000,
            channels: 1,
            bitrate_kbps: 32,
            complexity: 5,
            period_ms: 40,
            exec: Vec::new(),
            exec_format: AudioExecFormat::S16le,
        }
    }
}

/// `[audio] source`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioSourceKind {
    /// The V4L2 camera's own ALSA capture device (same USB device in sysfs), else none.
    Auto,
    /// No audio: offers get no audio track, RTSP describes video only.
    None,
    /// The ALSA capture device `[audio] device`.
    Alsa,
    /// A program's standard output (`[audio] exec`).
    Exec,
    /// A test tone (1 kHz, with a 100 ms 2 kHz beep at the start of every wall-clock second,
    /// when the test pattern flashes).
    Test,
}

/// `[audio] exec_format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioExecFormat {
    /// Raw signed 16-bit little-endian samples at `rate` and `channels`, interleaved
    /// (`arecord -f S16_LE -t raw`, `ffmpeg … -f s16le -`); encoded to Opus here.
    S16le,
    /// An Ogg/Opus stream of 20 ms packets (`ffmpeg … -c:a libopus -frame_duration 20 -f ogg -`),
    /// passed through without re-encoding.
    Ogg,
}

/// Sample rates Opus encodes natively.
pub const AUDIO_RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

fn validate_audio(c: &Config) -> Result<(), Invalid> {
    let a = &c.audio;
    if !AUDIO_RATES.contains(&a.rate) {
        return bad(
            "audio.rate",
            format!(
                "{} is not a rate Opus takes (8000, 12000, 16000, 24000 or 48000)",
                a.rate
            ),
        );
    }
    in_range("audio.channels", a.channels, 1..=2)?;
    in_range("audio.bitrate_kbps", a.bitrate_kbps, 6..=510)?;
    in_range("audio.complexity", a.complexity, 0..=10)?;
    if ![20, 40, 60].contains(&a.period_ms) {
        return bad(
            "audio.period_ms",
            format!(
                "{} is not 20, 40 or 60 (a whole number of 20 ms Opus frames per wake-up)",
                a.period_ms
            ),
        );
    }
    if a.device.is_empty() || a.device.len() > 256 {
        return bad(
            "audio.device",
            "must be an ALSA device name (1 to 256 bytes)",
        );
    }
    if a.source == AudioSourceKind::Exec && a.exec.is_empty() {
        return bad("audio.exec", "must name a program when source = \"exec\"");
    }
    if c.is_relay() && !matches!(a.source, AudioSourceKind::Auto | AudioSourceKind::None) {
        return bad(
            "audio.source",
            format!(
                "{} needs a camera, but [camera] source = \"none\" (the relay role) sends no \
                 media; remove it, or choose a camera source",
                differs(&a.source, &AudioSourceKind::None).unwrap_or_default()
            ),
        );
    }
    Ok(())
}

/// `[signaling]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingConfig {
    /// Path of the SignalR hub (SnapRTC pages use `/snaprtc-hub`).
    pub hub_path: String,
    /// `all`: the daemon joins every session as the capture side; `none`: pure relay.
    pub join_sessions: JoinSessions,
    /// A Ping goes to a client that was sent nothing for this long.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// A client silent this long is dropped.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// Time from negotiate to handshake, and from connect to handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Largest SignalR record; a bigger one closes that connection. WebSocket frames and
    /// messages are capped at twice this plus 64 KiB in the transport, before they are buffered.
    pub max_message_bytes: usize,
    /// Deepest nesting of arrays and objects in a SignalR record; a deeper one closes that
    /// connection before it is parsed (SnapRTC records nest 2 deep).
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Largest decoded SnapRTC signal (the JSON inside an lz-string or plain payload), in bytes.
    /// Real simple-peer offers are a few KB; the lz-string decoder stops at this size, so a
    /// payload crafted to expand costs no more than this.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Most hub connections at once (negotiated tokens count too); more get 503.
    pub max_connections: usize,
    /// Most sessions (groups) at once.
    pub max_sessions: usize,
    /// Most connections in one session.
    pub max_members_per_session: usize,
    /// Messages queued towards one client; a client that lets it fill is disconnected.
    pub max_queued_messages: usize,
    /// Behave like the original ASP.NET server, for testing clients against it: every relayed
    /// message (and `signalStart`) also goes back to its sender, and an initiator joining a
    /// waiting capture side is not started at once.
    #[serde(default)]
    pub echo_to_sender: bool,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            hub_path: "/snaprtc-hub".to_owned(),
            join_sessions: JoinSessions::All,
            keepalive: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            max_message_bytes: 65536,
            max_json_depth: default_max_json_depth(),
            max_payload_bytes: default_max_payload_bytes(),
            max_connections: 1000,
            max_sessions: 10000,
            max_members_per_session: 8,
            max_queued_messages: 64,
            echo_to_sender: false,
        }
    }
}

/// `[signaling] max_json_depth`: SnapRTC records nest 2 deep; 32 leaves room for any client.
fn default_max_json_depth() -> usize {
    32
}

/// `[signaling] max_payload_bytes`: 256 KiB, about fifty times a real simple-peer offer.
fn default_max_payload_bytes() -> usize {
    262_144
}

/// Most `[signaling] max_payload_bytes` may be: 16 MiB, far beyond any SDP.
pub const MAX_PAYLOAD_BYTES_LIMIT: usize = 16 << 20;

/// Most `[signaling] max_json_depth` may be: serde_json's own recursion limit.
pub const MAX_JSON_DEPTH_LIMIT: usize = 128;

/// `[signaling] join_sessions`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinSessions {
    /// The device answers every session an initiator opens, as its capture side.
    All,
    /// A pure relay: the device never joins a session.
    None,
}

/// `[mdns]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MdnsConfig {
    /// Advertise `<instance>._snaprtc._tcp.local.`.
    pub enabled: bool,
    /// Instance name; empty means the hostname.
    pub instance_name: String,
    /// Interfaces to advertise on; empty means every up, non-loopback interface.
    pub interfaces: Vec<String>,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            instance_name: String::new(),
            interfaces: Vec::new(),
        }
    }
}

/// `[backplane]`: how this instance's hub shares sessions with other instances, in the wire
/// format of ASP.NET Core SignalR's Redis backplane (see `signaling::backplane`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackplaneConfig {
    /// `none`: this hub stands alone; `redis`: sessions span every instance on the same Redis.
    pub kind: BackplaneKind,
    /// `redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS. Required with
    /// `kind = "redis"`; checked whenever it is set.
    pub url: String,
    /// Channel names start with this: `{prefix}:group:{session}`. To share a Redis with the
    /// ASP.NET server, use what it uses: its `ChannelPrefix` followed by the hub class's full
    /// name (e.g. `MyApp.Hubs.SignalingHub`).
    #[serde(default = "default_backplane_prefix")]
    pub prefix: String,
    /// How long a member of a session still counts against `max_members_per_session` after its
    /// instance stopped answering (killed, or cut off from Redis). Each instance renews its
    /// lease every third of this.
    #[serde(with = "humantime_serde")]
    pub instance_ttl: Duration,
    /// Most commands waiting for Redis, and most messages from Redis waiting for the hub; past
    /// that, messages are dropped (and counted) rather than held, and a subscription that could
    /// not be queued holds joins until the queue drains (then everything is subscribed again).
    pub max_queued_messages: usize,
    /// While messages keep coming, at most one write to Redis per this interval: a message
    /// that follows the last write by less waits for the rest of the interval and leaves with
    /// whatever came meanwhile, so Redis reads, and the other instances receive, them
    /// together. A message after a quiet spell goes at once. This costs each message up to
    /// the interval (rounded up to the millisecond) in latency; `0ms` writes each at once.
    /// At most `100ms`; what comes in one interval waits in `max_queued_messages`.
    #[serde(with = "humantime_serde")]
    pub write_interval: Duration,
    /// Start an initiator at once when it joins a session where a capture side that dialled
    /// out (`[[remote]]`) waits on another instance, through snaprtcd's own channel
    /// `{prefix}:snaprtcd:start`. Only for fleets of snaprtcd instances: with an instance of
    /// the original server in the fleet, initiators that reach it would never be started this
    /// way, so leave it off there (devices then re-announce, as on the original server).
    #[serde(default)]
    pub start_on_join: bool,
}

/// `[backplane] prefix`: the SnapRTC server's hub class name.
fn default_backplane_prefix() -> String {
    "SignalingHub".to_owned()
}

impl Default for BackplaneConfig {
    fn default() -> Self {
        Self {
            kind: BackplaneKind::None,
            url: String::new(),
            prefix: default_backplane_prefix(),
            instance_ttl: Duration::from_secs(15),
            max_queued_messages: 4096,
            write_interval: Duration::from_millis(2),
            start_on_join: false,
        }
    }
}

/// `[backplane] kind`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackplaneKind {
    /// No backplane: sessions live on this instance only.
    None,
    /// Redis pub/sub between instances.
    Redis,
}

/// A checked `[backplane] url`: `redis://[[user]:password@]host[:port][/db]` or `rediss://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss://`: TLS to the server.
    pub tls: bool,
    /// The ACL user name, if any (`user:password@`).
    pub username: Option<String>,
    /// The password, if any (as written: percent-escapes are not decoded here).
    pub password: Option<String>,
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// Port (6379 when not given).
    pub port: u16,
    /// Database number (0 when not given).
    pub db: u32,
}

impl RedisUrl {
    /// Check and split a Redis URL; the error says what is wrong, never echoing a password.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("redis://") {
            (false, rest)
        } else {
            return Err(
                "must start with redis:// (or rediss:// for TLS), e.g. \"redis://redis:6379/0\""
                    .into(),
            );
        };
        if rest.contains(['?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain '?', '#', spaces or control characters".into());
        }
        let (authority, db) = match rest.split_once('/') {
            Some((authority, "")) => (authority, 0),
            Some((authority, db)) => {
                let db = db.parse::<u32>().map_err(|_| {
                    format!("the database {db:?} after the host is not a number (e.g. /0)")
                })?;
                (authority, db)
            }
            None => (rest, 0),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, password) = match userinfo.map(|u| u.split_once(':')) {
            None => (None, None),
            Some(None) => {
                return Err("user info must be \"user:password@\" or \":password@\"".into())
            }
            Some(Some((user, password))) => (
                (!user.is_empty()).then(|| user.to_owned()),
                Some(password.to_owned()),
            ),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ']'")?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("names no host (e.g. \"redis://redis:6379\")".into());
        }
        let port = match port {
            None => 6379,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("the port {p:?} is not in 1..=65535")),
            },
        };
        Ok(RedisUrl {
            tls,
            username,
            password,
            host: host.to_owned(),
            port,
            db,
        })
    }
}

/// `[backplane]`: a URL Redis clients take, a prefix that makes channel names.
fn validate_backplane(b: &BackplaneConfig) -> Result<(), Invalid> {
    if b.kind == BackplaneKind::Redis && b.url.is_empty() {
        return bad("backplane.url", "must be set when kind = \"redis\"");
    }
    if !b.url.is_empty() {
        if let Err(e) = RedisUrl::parse(&b.url) {
            return bad("backplane.url", e);
        }
    }
    let printable = b.prefix.chars().all(|c| c.is_ascii_graphic());
    if b.prefix.is_empty() || b.prefix.len() > 256 || !printable {
        return bad(
            "backplane.prefix",
            format!(
                "{:?} must be 1-256 printable ASCII characters without spaces",
                b.prefix
            ),
        );
    }
    if b.instance_ttl < Duration::from_secs(1) || b.instance_ttl > Duration::from_secs(3600) {
        return bad(
            "backplane.instance_ttl",
            format!(
                "{} must be between 1s and 1h",
                humantime::format_duration(b.instance_ttl)
            ),
        );
    }
    in_range(
        "backplane.max_queued_messages",
        b.max_queued_messages,
        16..=1 << 20,
    )?;
    if b.write_interval > Duration::from_millis(100) {
        return bad(
            "backplane.write_interval",
            format!(
                "{} must be at most 100ms",
                humantime::format_duration(b.write_interval)
            ),
        );
    }
    Ok(())
}

/// `[ice]`: how viewers outside the device's network reach it. The defaults stay LAN-only:
/// no server is contacted unless one is listed here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IceConfig {
    /// `auto`: full ICE when any STUN or TURN server is listed, ICE-lite otherwise; `lite` or
    /// `full` to choose.
    pub mode: IceMode,
    /// STUN servers (`stun:host[:port]`) asked for the device's public address
    /// (server-reflexive candidates) from the engine's UDP socket, and offered to browsers.
    pub stun_servers: Vec<String>,
    /// TURN servers: the device allocates a relayed candidate on the first that works, and
    /// browsers are offered all of them (`Link` headers on WHEP answers).
    pub turn_servers: Vec<TurnServer>,
    /// How often server-reflexive addresses are asked for again (NAT bindings expire).
    #[serde(with = "humantime_serde")]
    pub stun_refresh: Duration,
    /// Lifetime of the REST credentials made from a TURN `secret` (for browsers and for the
    /// device's own allocation).
    #[serde(with = "humantime_serde")]
    pub credential_ttl: Duration,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            mode: IceMode::Auto,
            stun_servers: Vec::new(),
            turn_servers: Vec::new(),
            stun_refresh: Duration::from_secs(30),
            credential_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[[remote]]`: one remote SnapRTC hub session the device dials out to (issue 13 item 6).
///
/// The device connects as a SignalR client (negotiate, then a WebSocket; `https://` means
/// `wss://`, with the system's root certificates), joins `session` as the capture side and
/// answers the offers of the initiators that join it, one initiator at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// The hub: `http(s)://host[:port][/path]`; with no path, the SnapRTC hub path
    /// `/snaprtc-hub`.
    pub url: String,
    /// The session to wait in: 1-128 characters of `[A-Za-z0-9_-]`, or `"device-id"` for the
    /// device's stable id (the one mDNS announces).
    pub session: String,
    /// Bearer token for the hub (sent as `Authorization: Bearer` on negotiate and as
    /// `access_token` on the WebSocket, as `@microsoft/signalr` does); empty for none.
    pub token: String,
    /// While idle on a hub that cannot start initiators itself (the original .NET server),
    /// the device says `Sync(session, true)` again this often, so an initiator that joined
    /// later gets `signalStart` within it. It must be longer than an initiator needs to gather
    /// and send its offer (simple-peer gives up gathering after 5 s): no second `signalStart`
    /// may reach an initiator that is still making its offer.
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    /// How long an initiator's exchange may take from its offer to the device's answer, and
    /// from the answer to its viewer connecting; after that the session is free again.
    #[serde(with = "humantime_serde")]
    pub exchange_timeout: Duration,
    /// Negotiate, WebSocket and SignalR handshake together must finish within this.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The longest wait between reconnection attempts (the backoff starts at 1 s and doubles).
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// A SignalR ping goes to the hub after this long without sending anything.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// The connection is dropped (and made again) after this long without hearing from the
    /// hub; SignalR hubs ping every 15 s.
    #[serde(with = "humantime_serde")]
    pub server_timeout: Duration,
    /// Largest SignalR message (and negotiate response) accepted from the hub; a bigger one
    /// drops the connection.
    pub max_message_bytes: usize,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            session: "device-id".to_owned(),
            token: String::new(),
            announce_interval: Duration::from_secs(10),
            exchange_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect_max: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            server_timeout: Duration::from_secs(30),
            max_message_bytes: 64 * 1024,
        }
    }
}

impl IceConfig {
    /// Whether `Rtc`s use full ICE (they gather candidates beyond the host ones).
    pub fn full_ice(&self) -> bool {
        match self.mode {
            IceMode::Auto => !self.stun_servers.is_empty() || !self.turn_servers.is_empty(),
            IceMode::Lite => false,
            IceMode::Full => true,
        }
    }

    /// The parsed `stun_servers` (validated at load: the malformed are never here).
    pub fn stun_urls(&self) -> Vec<IceUrl> {
        self.stun_servers
            .iter()
            .filter_map(|u| IceUrl::parse(u).ok())
            .collect()
    }
}

/// `[ice] mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IceMode {
    /// Full ICE when any server is configured, ICE-lite otherwise.
    Auto,
    /// ICE-lite: host candidates only; the browser does the checks.
    Lite,
    /// Full ICE: the device checks pairs and nominates too.
    Full,
}

/// One `[[ice.turn_servers]]` entry: `{ url, username, credential }` (long-term credentials)
/// or `{ url, secret }` (coturn's `use-auth-secret` REST credentials).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnServer {
    /// `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port][?transport=tcp]`.
    pub url: String,
    /// Long-term credential user name (with `credential`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Long-term credential password (with `username`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub credential: String,
    /// coturn `static-auth-secret`: user names `<expiry>:<name>` and passwords
    /// base64(HMAC-SHA1(secret, username)) are made from it; it is never sent anywhere.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret: String,
}

/// How a TURN server is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnAuth<'a> {
    /// Fixed long-term credentials.
    LongTerm {
        /// User name.
        username: &'a str,
        /// Password.
        credential: &'a str,
    },
    /// REST credentials made from a shared secret (coturn `use-auth-secret`).
    Secret(&'a str),
}

impl TurnServer {
    /// The parsed URL (validated at load).
    pub fn parsed_url(&self) -> Result<IceUrl, String> {
        IceUrl::parse(&self.url)
    }

    /// Which credentials this entry has (validated at load: exactly one form).
    pub fn auth(&self) -> TurnAuth<'_> {
        if self.secret.is_empty() {
            TurnAuth::LongTerm {
                username: &self.username,
                credential: &self.credential,
            }
        } else {
            TurnAuth::Secret(&self.secret)
        }
    }

    /// Exactly one of `{username, credential}` and `{secret}`.
    fn check(&self) -> Result<IceUrl, String> {
        let url = IceUrl::parse(&self.url).map_err(|e| format!("url {:?}: {e}", self.url))?;
        if !url.scheme.is_turn() {
            return Err(format!(
                "url {:?} is not a TURN URL (turn: or turns:); list STUN servers in                  ice.stun_servers",
                self.url
            ));
        }
        let long_term = !self.username.is_empty() || !self.credential.is_empty();
        match (long_term, self.secret.is_empty()) {
            (true, false) => Err(format!(
                "{:?} has both username/credential and secret; give one or the other",
                self.url
            )),
            (false, true) => Err(format!(
                "{:?} needs username and credential, or secret",
                self.url
            )),
            (true, true) if self.username.is_empty() || self.credential.is_empty() => {
                Err(format!("{:?} needs both username and credential", self.url))
            }
            _ => Ok(url),
        }
    }
}

/// The scheme of an ICE server URL (RFC 7064, RFC 7065).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceScheme {
    /// `stun:`
    Stun,
    /// `turn:`
    Turn,
    /// `turns:` (TURN over TLS)
    Turns,
}

impl IceScheme {
    /// `turn:` or `turns:`.
    pub fn is_turn(self) -> bool {
        matches!(self, IceScheme::Turn | IceScheme::Turns)
    }

    /// As written in a URL, without the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            IceScheme::Stun => "stun",
            IceScheme::Turn => "turn",
            IceScheme::Turns => "turns",
        }
    }
}

/// The transport to an ICE server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceTransport {
    /// UDP (`stun:`, and `turn:` unless `?transport=tcp`).
    Udp,
    /// TCP (`turn:…?transport=tcp`), or TLS over TCP for `turns:`.
    Tcp,
}

/// A checked `stun:`/`turn:`/`turns:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUrl {
    /// `stun`, `turn` or `turns`.
    pub scheme: IceScheme,
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// Port: as given, else 3478 (`stun:`, `turn:`) or 5349 (`turns:`).
    pub port: u16,
    /// UDP or TCP (TLS over TCP for `turns:`).
    pub transport: IceTransport,
}

impl IceUrl {
    /// Check and split an ICE server URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<IceUrl, String> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("stun:") {
            (IceScheme::Stun, r)
        } else if let Some(r) = url.strip_prefix("turns:") {
            (IceScheme::Turns, r)
        } else if let Some(r) = url.strip_prefix("turn:") {
            (IceScheme::Turn, r)
        } else {
            return Err(
                "must start with stun:, turn: or turns: (e.g. \"stun:stun.example.org:3478\")"
                    .into(),
            );
        };
        if rest.starts_with("//") {
            return Err("has no \"//\" after the scheme (e.g. \"turn:host:3478\")".into());
        }
        if rest
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@' || c == '#')
        {
            return Err("must not contain spaces, control characters, '@' or '#'".into());
        }
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let transport = match (scheme, query) {
            (IceScheme::Turns, None) => IceTransport::Tcp,
            (_, None) => IceTransport::Udp,
            (IceScheme::Stun, Some(_)) => {
                return Err("a stun: URL takes no ?transport (STUN is asked over UDP)".into())
            }
            (_, Some("transport=udp")) if scheme == IceScheme::Turns => {
                return Err("turns: is TLS over TCP; ?transport=udp is not supported".into())
            }
            (_, Some("transport=udp")) => IceTransport::Udp,
            (_, Some("transport=tcp")) => IceTransport::Tcp,
            (_, Some(q)) => {
                return Err(format!(
                    "the query {q:?} is not ?transport=udp or ?transport=tcp"
                ))
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ']'")?;
            match after {
                "" => (host, None),
                a => match a.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return Err(format!("{a:?} after the IPv6 host is not :port")),
                },
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        let host_ok = !host.is_empty()
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        if !host_ok {
            return Err(format!("{host:?} is not a host name or IP address"));
        }
        let port = match port {
            None if scheme == IceScheme::Turns => 5349,
            None => 3478,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("the port {p:?} is not in 1..=65535")),
            },
        };
        Ok(IceUrl {
            scheme,
            host: host.to_owned(),
            port,
            transport,
        })
    }
}

/// `[[remote]] session = "device-id"`: the device's stable id stands for the session.
pub const REMOTE_SESSION_DEVICE_ID: &str = "device-id";

/// Most `[[remote]]` entries.
pub const MAX_REMOTES: usize = 64;

/// A checked `[[remote]] url`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteUrl {
    /// `https://` (TLS, `wss://`).
    pub tls: bool,
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// Port (80 or 443 when not given).
    pub port: u16,
    /// The hub path, starting with `/` and without a trailing `/`.
    pub path: String,
}

impl RemoteUrl {
    /// Check and split a hub URL.
    pub fn parse(url: &str) -> Result<RemoteUrl, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("{url:?} is not a URL like \"https://hub.example.com\""))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?} must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} names no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{url:?} must not carry user info; put a token in `token`"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?} names no host"));
        }
        if uri.query().is_some() {
            return Err(format!("{url:?} must not have a query (?…)"));
        }
        let port = match authority.port_u16() {
            Some(0) => return Err(format!("{url:?}: port 0 is not a port")),
            Some(p) => p,
            None if tls => 443,
            None => 80,
        };
        let path = uri.path().trim_end_matches('/');
        let path = if path.is_empty() {
            "/snaprtc-hub"
        } else {
            path
        };
        Ok(RemoteUrl {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// `[ice]`: URLs of the right kind, credentials in one form, sane timers, and no contradiction
/// between `mode = "lite"` and servers that only full ICE uses.
fn validate_ice(i: &IceConfig) -> Result<(), Invalid> {
    for (n, u) in i.stun_servers.iter().enumerate() {
        match IceUrl::parse(u) {
            Ok(url) if url.scheme == IceScheme::Stun => {}
            Ok(_) => {
                return bad(
                    "ice.stun_servers",
                    format!(
                        "entry {} ({u:?}) is a TURN URL; list it in ice.turn_servers",
                        n + 1
                    ),
                )
            }
            Err(e) => return bad("ice.stun_servers", format!("entry {} ({u:?}): {e}", n + 1)),
        }
    }
    for (n, t) in i.turn_servers.iter().enumerate() {
        if let Err(e) = t.check() {
            return bad("ice.turn_servers", format!("entry {}: {e}", n + 1));
        }
    }
    let servers = !i.stun_servers.is_empty() || !i.turn_servers.is_empty();
    if i.mode == IceMode::Lite && servers {
        return bad(
            "ice.mode",
            "\"lite\" contradicts the STUN/TURN servers listed: an ICE-lite agent gathers no \
             server-reflexive or relayed candidates (use \"auto\" or \"full\", or list no servers)",
        );
    }
    if !(Duration::from_secs(5)..=Duration::from_secs(3600)).contains(&i.stun_refresh) {
        return bad(
            "ice.stun_refresh",
            format!(
                "{} is not between 5s and 1h",
                humantime::format_duration(i.stun_refresh)
            ),
        );
    }
    if !(Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600)).contains(&i.credential_ttl) {
        return bad(
            "ice.credential_ttl",
            format!(
                "{} is not between 1m and 7d",
                humantime::format_duration(i.credential_ttl)
            ),
        );
    }
    Ok(())
}

/// `[[remote]]`: each entry reachable and distinct, its timings sane against each other.
fn validate_remotes(remotes: &[RemoteConfig]) -> Result<(), Invalid> {
    if remotes.len() > MAX_REMOTES {
        return bad(
            "remote",
            format!("{} entries; at most {MAX_REMOTES}", remotes.len()),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, r) in remotes.iter().enumerate() {
        let n = i + 1;
        let url = match RemoteUrl::parse(&r.url) {
            Ok(url) => url,
            Err(_) if r.url.is_empty() => {
                return bad(
                    "remote.url",
                    format!("entry {n}: must be set (the hub's http(s):// URL)"),
                )
            }
            Err(e) => return bad("remote.url", format!("entry {n}: {e}")),
        };
        let session_ok = r.session == REMOTE_SESSION_DEVICE_ID
            || (!r.session.is_empty()
                && r.session.len() <= 128
                && r.session
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        if !session_ok {
            return bad(
                "remote.session",
                format!(
                    "entry {n}: {:?} must be \"device-id\" or 1-128 characters of A-Z, a-z, 0-9, '_' and '-'",
                    r.session
                ),
            );
        }
        if !seen.insert((url.clone(), r.session.clone())) {
            return bad(
                "remote.session",
                format!(
                    "entry {n}: session {:?} on {} is listed twice; one device waits once in a session",
                    r.session, r.url
                ),
            );
        }
        if r.token.len() > 4096 || r.token.chars().any(|c| !c.is_ascii_graphic()) {
            return bad(
                "remote.token",
                format!(
                    "entry {n}: must be at most 4096 printable ASCII characters without spaces"
                ),
            );
        }
        let durations = [
            ("remote.announce_interval", r.announce_interval, 6, 3600),
            ("remote.exchange_timeout", r.exchange_timeout, 5, 600),
            ("remote.connect_timeout", r.connect_timeout, 1, 300),
            ("remote.reconnect_max", r.reconnect_max, 1, 3600),
            ("remote.keepalive", r.keepalive, 1, 300),
            ("remote.server_timeout", r.server_timeout, 2, 600),
        ];
        for (key, value, lo, hi) in durations {
            if value < Duration::from_secs(lo) || value > Duration::from_secs(hi) {
                return bad(
                    key,
                    format!(
                        "entry {n}: {} is not between {} and {}",
                        humantime::format_duration(value),
                        humantime::format_duration(Duration::from_secs(lo)),
                        humantime::format_duration(Duration::from_secs(hi)),
                    ),
                );
            }
        }
        if r.server_timeout <= r.keepalive {
            return bad(
                "remote.server_timeout",
                format!(
                    "entry {n}: {} must be longer than keepalive ({}), or the link drops between pings",
                    humantime::format_duration(r.server_timeout),
                    humantime::format_duration(r.keepalive)
                ),
            );
        }
        if !(4096..=16 << 20).contains(&r.max_message_bytes) {
            return bad(
                "remote.max_message_bytes",
                format!(
                    "entry {n}: {} is not in 4096..=16777216",
                    r.max_message_bytes
                ),
            );
        }
    }
    Ok(())
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `snaprtcd=debug,info`. `SNAPRTCD_LOG` overrides it.
    pub level: String,
    /// `text`, `json`, or `journald` (also chosen automatically under systemd).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// `[log] format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines on standard error.
    Text,
    /// One JSON object per line on standard error.
    Json,
    /// Structured records straight to the systemd journal.
    Journald,
}

/// A config error with its place in the file: prints as `FILE:LINE:COL: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `<string>` for text that came from nowhere.
    pub file: String,
    /// 1-based line and column; `None` when the error is not about a place (e.g. an unreadable file).
    pub position: Option<(usize, usize)>,
    /// Dotted key path, e.g. `signaling.keepalive`; empty when unknown.
    pub key: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A semantic problem found after parsing: which key, and what is wrong.
struct Invalid {
    key: &'static str,
    message: String,
}

/// The HTTP server's limits (`[server]`): each must leave real clients room and still bound
/// what one client can hold.
fn validate_http_limits(s: &ServerConfig) -> Result<(), Invalid> {
    let bad = |key: &'static str, message: String| Err(Invalid { key, message });
    let timeouts = [
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.keepalive_idle_timeout", s.keepalive_idle_timeout),
    ];
    for (key, t) in timeouts {
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&t) {
            return bad(
                key,
                format!(
                    "{} is not between 100ms and 1h",
                    humantime::format_duration(t)
                ),
            );
        }
    }
    if !(1..=65536).contains(&s.max_http_connections) {
        return bad(
            "server.max_http_connections",
            format!("{} is not in 1..=65536", s.max_http_connections),
        );
    }
    if !(1024..=1 << 20).contains(&s.max_header_bytes) {
        return bad(
            "server.max_header_bytes",
            format!("{} is not in 1024..=1048576", s.max_header_bytes),
        );
    }
    Ok(())
}

impl Config {
    /// Parse and validate TOML text. `file` only names the source in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let position = e.span().map(|s| line_col(text, s.start));
            let (key, message) = split_toml_message(e.message());
            ConfigError {
                file: file.to_owned(),
                position,
                key,
                message,
            }
        })?;
        if let Err(invalid) = config.validate() {
            return Err(ConfigError {
                file: file.to_owned(),
                position: key_position(text, invalid.key),
                key: invalid.key.to_owned(),
                message: invalid.message,
            });
        }
        Ok(config)
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            position: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::from_toml(&text, &file)
    }

    /// Apply the environment: `PORT` replaces the listen port (container platforms set it).
    pub fn apply_env_port(&mut self, port: Option<&str>) -> Result<(), ConfigError> {
        let Some(port) = port else { return Ok(()) };
        let port: u16 = port.trim().parse().map_err(|_| ConfigError {
            file: "environment".to_owned(),
            position: None,
            key: "PORT".to_owned(),
            message: format!("{port:?} is not a port number (0-65535)"),
        })?;
        self.server.listen.set_port(port);
        Ok(())
    }

    /// The effective config as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }

    /// Every section's semantic checks, in file order; the first problem is reported.
    fn validate(&self) -> Result<(), Invalid> {
        validate_server(&self.server)?;
        validate_camera(&self.camera)?;
        validate_encoder(&self.encoder)?;
        in_range("snapshot.quality", self.snapshot.quality, 1..=100)?;
        in_range(
            "snapshot.mjpeg_max_fps",
            self.snapshot.mjpeg_max_fps,
            1..=60,
        )?;
        in_range(
            "snapshot.mjpeg_max_clients",
            self.snapshot.mjpeg_max_clients,
            1..=1024,
        )?;
        validate_rtsp(&self.rtsp)?;
        validate_audio(self)?;
        validate_signaling(&self.signaling)?;
        validate_backplane(&self.backplane)?;
        validate_ice(&self.ice)?;
        validate_log(&self.log)?;
        validate_remotes(&self.remote)?;
        validate_relay(self)
    }

    /// The relay role (`[camera] source = "none"`): a hub with no camera, no encoder, no
    /// WebRTC engine and no UDP port.
    pub fn is_relay(&self) -> bool {
        self.camera.source == SourceKind::None
    }
}

/// In the relay role, a camera-only setting changed from its default contradicts
/// `source = "none"`: the user means a camera that will never be opened (or a UDP port that is
/// never bound). Keys left at their defaults (as `print-config` writes them) are fine.
fn validate_relay(c: &Config) -> Result<(), Invalid> {
    if !c.is_relay() {
        return Ok(());
    }
    let (camera, server) = (CameraConfig::default(), ServerConfig::default());
    let (cam, srv) = (&c.camera, &c.server);
    let changed = [
        ("camera.device", differs(&cam.device, &camera.device)),
        ("camera.width", differs(&cam.width, &camera.width)),
        ("camera.height", differs(&cam.height, &camera.height)),
        ("camera.fps", differs(&cam.fps, &camera.fps)),
        ("camera.format", differs(&cam.format, &camera.format)),
        ("camera.controls", differs(&cam.controls, &camera.controls)),
        ("camera.exec", differs(&cam.exec, &camera.exec)),
        ("encoder", differs(&c.encoder, &EncoderConfig::default())),
        ("snapshot", differs(&c.snapshot, &SnapshotConfig::default())),
        ("rtsp", differs(&c.rtsp, &RtspConfig::default())),
        (
            "server.rtc_udp_port",
            differs(&srv.rtc_udp_port, &server.rtc_udp_port),
        ),
        (
            "server.public_addrs",
            differs(&srv.public_addrs, &server.public_addrs),
        ),
        (
            "server.max_viewers",
            differs(&srv.max_viewers, &server.max_viewers),
        ),
        (
            "server.max_sdp_bytes",
            differs(&srv.max_sdp_bytes, &server.max_sdp_bytes),
        ),
        (
            "server.max_sdp_media",
            differs(&srv.max_sdp_media, &server.max_sdp_media),
        ),
        (
            "server.max_sdp_candidates",
            differs(&srv.max_sdp_candidates, &server.max_sdp_candidates),
        ),
    ];
    if c.ice != IceConfig::default() {
        // No value in the message: the section may hold TURN credentials.
        return bad(
            "ice",
            "is a WebRTC setting, but [camera] source = \"none\" (the relay role) runs no \
             WebRTC engine; remove [ice], or choose a source",
        );
    }

    if !c.remote.is_empty() {
        return bad(
            "remote",
            format!(
                "{} [[remote]] entr{} given, but [camera] source = \"none\" (the relay role) \
                 has no camera to offer a remote hub; remove them, or choose a camera source",
                c.remote.len(),
                if c.remote.len() == 1 {
                    "y is"
                } else {
                    "ies are"
                }
            ),
        );
    }
    match changed.into_iter().find_map(|(key, v)| v.map(|v| (key, v))) {
        Some((key, value)) => bad(
            key,
            format!(
                "{value} is a camera setting, but [camera] source = \"none\" (the relay role) \
                 opens no camera, runs no encoder and binds no UDP port; remove it, or choose a \
                 source"
            ),
        ),
        None => Ok(()),
    }
}

/// `value` as TOML writes it, when it differs from `default`.
fn differs<T: PartialEq + Serialize>(value: &T, default: &T) -> Option<String> {
    (value != default).then(|| {
        toml::Value::try_from(value).map_or_else(|_| "the value".to_owned(), |v| v.to_string())
    })
}

/// An [`Invalid`] for `key`.
fn bad(key: &'static str, message: impl Into<String>) -> Result<(), Invalid> {
    Err(Invalid {
        key,
        message: message.into(),
    })
}

/// `value` must lie in `range`; the error names the key, the value and the range.
fn in_range<T>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), Invalid>
where
    T: PartialOrd + fmt::Display,
{
    if range.contains(&value) {
        return Ok(());
    }
    bad(
        key,
        format!("{value} is not in {}..={}", range.start(), range.end()),
    )
}

/// `[server]`: limits leave real clients room and still bound what one client can hold.
fn validate_server(s: &ServerConfig) -> Result<(), Invalid> {
    if s.max_viewers == 0 {
        return bad("server.max_viewers", "must be at least 1");
    }
    if s.max_body_bytes < 1024 {
        return bad("server.max_body_bytes", "must be at least 1024");
    }
    validate_http_limits(s)?;
    in_range("server.max_sdp_bytes", s.max_sdp_bytes, 1024..=1 << 20)?;
    in_range("server.max_sdp_media", s.max_sdp_media, 1..=1024)?;
    in_range("server.max_sdp_candidates", s.max_sdp_candidates, 1..=4096)?;
    for origin in &s.cors_origins {
        if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return bad(
                "server.cors_origins",
                format!("{origin:?} is not \"*\" or an origin like \"https://example.com\""),
            );
        }
    }
    if s.auth == AuthMode::Token && s.auth_token_file.as_os_str().is_empty() {
        return bad(
            "server.auth_token_file",
            "must be set when auth = \"token\"",
        );
    }
    Ok(())
}

/// `[camera]`: even picture sizes an encoder takes, a frame rate a camera gives.
fn validate_camera(c: &CameraConfig) -> Result<(), Invalid> {
    if !(16..=7680).contains(&c.width) || c.width % 2 != 0 {
        return bad(
            "camera.width",
            format!("{} is not an even number of pixels in 16..=7680", c.width),
        );
    }
    if !(16..=4320).contains(&c.height) || c.height % 2 != 0 {
        return bad(
            "camera.height",
            format!("{} is not an even number of pixels in 16..=4320", c.height),
        );
    }
    in_range("camera.fps", c.fps, 1..=120)?;
    if c.source == SourceKind::Exec && c.exec.command.is_empty() {
        return bad(
            "camera.exec.command",
            "must name a program when source = \"exec\"",
        );
    }
    if !(64 << 10..=256 << 20).contains(&c.exec.max_access_unit_bytes) {
        return bad(
            "camera.exec.max_access_unit_bytes",
            format!(
                "{} is not in 65536..=268435456 (64 KiB to 256 MiB)",
                c.exec.max_access_unit_bytes
            ),
        );
    }
    Ok(())
}

/// `[encoder]`
fn validate_encoder(e: &EncoderConfig) -> Result<(), Invalid> {
    in_range("encoder.bitrate_kbps", e.bitrate_kbps, 50..=50_000)?;
    if e.keyframe_interval < Duration::from_millis(500)
        || e.keyframe_interval > Duration::from_secs(60)
    {
        return bad("encoder.keyframe_interval", "must be between 500ms and 60s");
    }
    if let EncoderThreads::Fixed(n) = e.threads {
        in_range("encoder.threads", n, 1..=MAX_ENCODER_THREADS)?;
    }
    Ok(())
}

/// `[signaling]`: a usable hub path, timers in the right order, every limit at least 1.
fn validate_signaling(g: &SignalingConfig) -> Result<(), Invalid> {
    if !g.hub_path.starts_with('/') || g.hub_path.len() < 2 || g.hub_path.ends_with('/') {
        return bad(
            "signaling.hub_path",
            format!(
                "{:?} must start with '/', name something, and not end with '/'",
                g.hub_path
            ),
        );
    }
    if g.hub_path.contains(['?', '#', ' ']) {
        return bad(
            "signaling.hub_path",
            format!("{:?} must not contain '?', '#' or spaces", g.hub_path),
        );
    }
    if g.keepalive < Duration::from_millis(100) {
        return bad("signaling.keepalive", "must be at least 100ms");
    }
    if g.client_timeout <= g.keepalive {
        return bad(
            "signaling.client_timeout",
            format!(
                "{} must be longer than keepalive ({}); clients ping at the same interval",
                humantime::format_duration(g.client_timeout),
                humantime::format_duration(g.keepalive)
            ),
        );
    }
    if g.handshake_timeout < Duration::from_millis(100) {
        return bad("signaling.handshake_timeout", "must be at least 100ms");
    }
    if g.max_message_bytes < 1024 {
        return bad("signaling.max_message_bytes", "must be at least 1024");
    }
    validate_signaling_budgets(g)?;
    for (key, v) in [
        ("signaling.max_connections", g.max_connections),
        ("signaling.max_sessions", g.max_sessions),
        (
            "signaling.max_members_per_session",
            g.max_members_per_session,
        ),
        ("signaling.max_queued_messages", g.max_queued_messages),
    ] {
        if v == 0 {
            return bad(key, "must be at least 1");
        }
    }
    if g.max_members_per_session < 2 {
        return bad(
            "signaling.max_members_per_session",
            "must be at least 2 (an initiator and a capture)",
        );
    }
    Ok(())
}

/// `[signaling]` budgets on what clients send: JSON nesting and decoded payload size.
fn validate_signaling_budgets(g: &SignalingConfig) -> Result<(), Invalid> {
    if !(4..=MAX_JSON_DEPTH_LIMIT).contains(&g.max_json_depth) {
        return bad(
            "signaling.max_json_depth",
            format!(
                "{} is not in 4..={MAX_JSON_DEPTH_LIMIT} (SignalR records nest 2 deep)",
                g.max_json_depth
            ),
        );
    }
    if !(1024..=MAX_PAYLOAD_BYTES_LIMIT).contains(&g.max_payload_bytes) {
        return bad(
            "signaling.max_payload_bytes",
            format!(
                "{} is not in 1024..={MAX_PAYLOAD_BYTES_LIMIT} (an SDP offer is a few KB)",
                g.max_payload_bytes
            ),
        );
    }
    Ok(())
}

/// `[log]`: a filter `tracing` accepts.
fn validate_log(l: &LogConfig) -> Result<(), Invalid> {
    if l.level.trim().is_empty() {
        return bad("log.level", "must not be empty (e.g. \"info\")");
    }
    if let Err(e) = l.level.parse::<tracing_subscriber::EnvFilter>() {
        return bad(
            "log.level",
            format!("{:?} is not a log filter: {e}", l.level),
        );
    }
    Ok(())
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// toml's messages name the problem; pull out "unknown field `x`" style keys where present.
fn split_toml_message(message: &str) -> (String, String) {
    let message = message.trim().to_owned();
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
        .unwrap_or_default();
    (key, message)
}

/// Where a dotted key's value is in the text, for errors found after parsing; a key that is
/// not written (a required one left out) points at its section.
fn key_position(text: &str, dotted: &str) -> Option<(usize, usize)> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut item = doc.as_item();
    for part in dotted.split('.') {
        match item.get(part) {
            Some(inner) => item = inner,
            None if !std::ptr::eq(item, doc.as_item()) => break,
            None => return None,
        }
    }
    let span = item
        .span()
        .or_else(|| item.as_value().and_then(|v| v.span()))?;
    Some(line_col(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config/snaprtcd.toml");

    #[test]
    fn shipped_config_parses_and_matches_the_defaults() {
        let shipped =
            Config::from_toml(SHIPPED, "config/snaprtcd.toml").expect("shipped config is valid");
        assert_eq!(
            shipped,
            Config::default(),
            "config/snaprtcd.toml must document the built-in defaults"
        );
    }

    const RELAY: &str = include_str!("../config/relay.toml");

    #[test]
    fn audio_validation_names_file_field_and_value() {
        for (text, key, shown) in [
            (
                "[audio]\nrate = 44100\n",
                "audio.rate",
                "44100 is not a rate Opus takes",
            ),
            (
                "[audio]\nchannels = 3\n",
                "audio.channels",
                "3 is not in 1..=2",
            ),
            (
                "[audio]\nbitrate_kbps = 1000\n",
                "audio.bitrate_kbps",
                "1000 is not in 6..=510",
            ),
            (
                "[audio]\ncomplexity = 11\n",
                "audio.complexity",
                "11 is not in 0..=10",
            ),
            (
                "[audio]\nperiod_ms = 30\n",
                "audio.period_ms",
                "30 is not 20, 40 or 60",
            ),
            (
                "[audio]\nsource = \"exec\"\n",
                "audio.exec",
                "must name a program",
            ),
            (
                "[audio]\ndevice = \"\"\n",
                "audio.device",
                "ALSA device name",
            ),
            (
                "[camera]\nsource = \"none\"\n[audio]\nsource = \"test\"\n",
                "audio.source",
                "\"test\" needs a camera",
            ),
        ] {
            let err = Config::from_toml(text, "a.toml").unwrap_err();
            assert_eq!(err.key, key, "{err}");
            let s = err.to_string();
            assert!(s.starts_with("a.toml:"), "{s}");
            assert!(s.contains(shown), "{s}");
        }
        let ok = Config::from_toml(
            "[audio]\nsource = \"alsa\"\ndevice = \"hw:CARD=C920,DEV=0\"\nrate = 16000\nchannels = 2\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(ok.audio.source, AudioSourceKind::Alsa);
        assert!(Config::from_toml("[audio]\nsource = \"loud\"\n", "a.toml").is_err());
    }

    #[test]
    fn shipped_relay_config_is_valid_and_is_a_relay() {
        let relay = Config::from_toml(RELAY, "config/relay.toml").expect("relay.toml is valid");
        assert!(relay.is_relay());
        assert_eq!(relay.signaling.join_sessions, JoinSessions::None);
        assert!(!relay.mdns.enabled);
        assert!(!Config::default().is_relay());
    }

    #[test]
    fn relay_refuses_camera_settings_naming_file_field_and_value() {
        let base = "[camera]\nsource = \"none\"\n";
        for (extra, key, value) in [
            (
                "device = \"/dev/video2\"\n",
                "camera.device",
                "\"/dev/video2\"",
            ),
            ("width = 640\n", "camera.width", "640"),
            ("format = \"mjpeg\"\n", "camera.format", "\"mjpeg\""),
            ("[camera.exec]\nformat = \"mjpeg\"\n", "camera.exec", ""),
            ("[encoder]\nbitrate_kbps = 500\n", "encoder", ""),
            ("[snapshot]\nquality = 50\n", "snapshot", ""),
            (
                "[server]\nrtc_udp_port = 9000\n",
                "server.rtc_udp_port",
                "9000",
            ),
            ("[server]\nmax_viewers = 2\n", "server.max_viewers", "2"),
            (
                "[server]\npublic_addrs = [\"192.0.2.1\"]\n",
                "server.public_addrs",
                "[\"192.0.2.1\"]",
            ),
        ] {
            let text = format!("{base}{extra}");
            let err = Config::from_toml(&text, "r.toml").unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.position.is_some(), "{err}");
            let shown = err.to_string();
            assert!(shown.starts_with("r.toml:"), "{shown}");
            assert!(shown.contains(&format!("{key}: {value}")), "{shown}");
            assert!(shown.contains("source = \"none\""), "{shown}");
        }
        // Camera keys at their defaults (as print-config writes them) are fine.
        let mut relay = Config::default();
        relay.camera.source = SourceKind::None;
        assert_eq!(
            Config::from_toml(&relay.to_toml(), "printed").unwrap(),
            relay
        );
        // The hub's own limits apply to a relay.
        let text = format!("{base}[signaling]\nmax_connections = 5\n");
        assert_eq!(
            Config::from_toml(&text, "r")
                .unwrap()
                .signaling
                .max_connections,
            5
        );
    }

    #[test]
    fn backplane_defaults_and_urls() {
        let b = Config::default().backplane;
        assert_eq!(
            (b.kind, b.url.as_str(), b.prefix.as_str()),
            (BackplaneKind::None, "", "SignalingHub")
        );
        assert_eq!(b.write_interval, Duration::from_millis(2));
        let text = "[backplane]\nkind = \"redis\"\nurl = \"rediss://app:s3cr@t@cache.example:6380/3\"\nprefix = \"MyApp.Hubs.SignalingHub\"\n";
        let c = Config::from_toml(text, "a").unwrap();
        assert_eq!(c.backplane.kind, BackplaneKind::Redis);
        assert_eq!(
            RedisUrl::parse(&c.backplane.url).unwrap(),
            RedisUrl {
                tls: true,
                username: Some("app".into()),
                password: Some("s3cr@t".into()),
                host: "cache.example".into(),
                port: 6380,
                db: 3,
            }
        );
        let plain = RedisUrl::parse("redis://[::1]").unwrap();
        assert_eq!(
            (plain.tls, plain.host.as_str(), plain.port, plain.db),
            (false, "::1", 6379, 0)
        );
        let only_password = RedisUrl::parse("redis://:pw@10.0.0.5/").unwrap();
        assert_eq!(
            (only_password.username, only_password.password),
            (None, Some("pw".into()))
        );
    }

    #[test]
    fn backplane_errors_name_the_field_and_never_the_password() {
        for (body, key, words) in [
            (
                "kind = \"redis\"",
                "backplane.url",
                "must be set when kind = \"redis\"",
            ),
            // A serde error: the place and the value, with no dotted key.
            ("kind = \"kafka\"", "", "kafka"),
            (
                "url = \"http://redis:6379\"",
                "backplane.url",
                "must start with redis://",
            ),
            (
                "url = \"redis://:hunter2@\"",
                "backplane.url",
                "names no host",
            ),
            (
                "url = \"redis://:hunter2@redis:0\"",
                "backplane.url",
                "the port \"0\" is not in",
            ),
            (
                "url = \"redis://:hunter2@redis:6379/x\"",
                "backplane.url",
                "the database \"x\"",
            ),
            (
                "url = \"redis://redis/0?protocol=resp3\"",
                "backplane.url",
                "must not contain '?'",
            ),
            (
                "prefix = \"\"",
                "backplane.prefix",
                "must be 1-256 printable",
            ),
            (
                "prefix = \"my hub\"",
                "backplane.prefix",
                "must be 1-256 printable",
            ),
            (
                "write_interval = \"1s\"",
                "backplane.write_interval",
                "1s must be at most 100ms",
            ),
        ] {
            let text = format!("[backplane]\n{body}\n");
            let err = Config::from_toml(&text, "b.toml").unwrap_err();
            let shown = err.to_string();
            // The value's line; the section's, for a required key left out.
            let line = if body.starts_with("kind = \"redis\"") {
                1
            } else {
                2
            };
            assert_eq!(err.position.map(|p| p.0), Some(line), "{shown}");
            assert!(key.is_empty() || err.key == key, "{key}: {shown}");
            assert!(shown.contains(words), "{words}: {shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn ice_defaults_are_lan_only_and_auto_picks_full_ice_with_servers() {
        let d = Config::default().ice;
        assert!(d.stun_servers.is_empty() && d.turn_servers.is_empty());
        assert!(!d.full_ice(), "no server configured: ICE-lite");
        let c = Config::from_toml(
            "[ice]\nstun_servers = [\"stun:stun.example.org\"]\n",
            "i.toml",
        )
        .unwrap();
        assert!(c.ice.full_ice());
        assert_eq!(
            c.ice.stun_urls(),
            vec![IceUrl {
                scheme: IceScheme::Stun,
                host: "stun.example.org".into(),
                port: 3478,
                transport: IceTransport::Udp,
            }]
        );
        let c = Config::from_toml("[ice]\nmode = \"full\"\n", "i.toml").unwrap();
        assert!(c.ice.full_ice());
        let c = Config::from_toml(
            "[[ice.turn_servers]]\nurl = \"turns:t.example.org?transport=tcp\"\nsecret = \"s\"\n\
             [[ice.turn_servers]]\nurl = \"turn:[2001:db8::1]:3479?transport=tcp\"\n\
             username = \"u\"\ncredential = \"p\"\n",
            "i.toml",
        )
        .unwrap();
        assert!(c.ice.full_ice());
        let t = &c.ice.turn_servers;
        assert_eq!(t[0].auth(), TurnAuth::Secret("s"));
        let u = t[0].parsed_url().unwrap();
        assert_eq!(
            (u.scheme, u.port, u.transport),
            (IceScheme::Turns, 5349, IceTransport::Tcp)
        );
        assert_eq!(
            t[1].auth(),
            TurnAuth::LongTerm {
                username: "u",
                credential: "p"
            }
        );
        let u = t[1].parsed_url().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 3479));
        assert_eq!(
            IceUrl::parse("turn:1.2.3.4").unwrap().transport,
            IceTransport::Udp
        );
    }

    #[test]
    fn ice_errors_name_the_field_and_never_a_credential() {
        let turn =
            |url: &str, creds: &str| format!("[[ice.turn_servers]]\nurl = \"{url}\"\n{creds}\n");
        let up = "username = \"u\"\ncredential = \"hunter2\"";
        for (text, key, words) in [
            (
                "[ice]\nstun_servers = [\"stun.example.org\"]".to_owned(),
                "ice.stun_servers",
                "must start with stun:",
            ),
            (
                "[ice]\nstun_servers = [\"stun:a\", \"stun:b:0\"]".to_owned(),
                "ice.stun_servers",
                "entry 2",
            ),
            (
                "[ice]\nstun_servers = [\"stun:a?transport=tcp\"]".to_owned(),
                "ice.stun_servers",
                "takes no ?transport",
            ),
            (
                "[ice]\nstun_servers = [\"turn:a\"]".to_owned(),
                "ice.stun_servers",
                "list it in ice.turn_servers",
            ),
            (
                "[ice]\nstun_servers = [\"stun://a\"]".to_owned(),
                "ice.stun_servers",
                "no \"//\"",
            ),
            (
                "[ice]\nstun_servers = [\"stun:a b\"]".to_owned(),
                "ice.stun_servers",
                "spaces",
            ),
            (
                turn("turn:a?transport=sctp", up),
                "ice.turn_servers",
                "is not ?transport=udp",
            ),
            (
                turn("turns:a?transport=udp", up),
                "ice.turn_servers",
                "?transport=udp is not supported",
            ),
            (turn("stun:a", up), "ice.turn_servers", "is not a TURN URL"),
            (
                turn("turn:a", "username = \"u\""),
                "ice.turn_servers",
                "needs both username and credential",
            ),
            (
                turn("turn:a", ""),
                "ice.turn_servers",
                "needs username and credential, or secret",
            ),
            (
                turn("turn:a", "credential = \"hunter2\"\nsecret = \"hunter2\""),
                "ice.turn_servers",
                "one or the other",
            ),
            (
                turn("turn:a:99999", up),
                "ice.turn_servers",
                "the port \"99999\"",
            ),
            (
                format!("[ice]\nmode = \"lite\"\n{}", turn("turn:a", up)),
                "ice.mode",
                "contradicts",
            ),
            (
                "[ice]\nstun_refresh = \"1s\"".to_owned(),
                "ice.stun_refresh",
                "between 5s and 1h",
            ),
            (
                "[ice]\ncredential_ttl = \"10s\"".to_owned(),
                "ice.credential_ttl",
                "between 1m and 7d",
            ),
            (
                format!("[camera]\nsource = \"none\"\n{}", turn("turn:a", up)),
                "ice",
                "the relay role",
            ),
        ] {
            let err = Config::from_toml(&text, "i.toml").unwrap_err();
            let shown = err.to_string();
            assert_eq!(err.key, key, "{shown}");
            assert!(shown.contains(words), "{words}: {shown}");
            assert!(shown.starts_with("i.toml:"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let err = Config::from_toml("[ice]\nmode = \"half\"\n", "i.toml").unwrap_err();
        assert!(err.to_string().contains("half"), "{err}");
        let err = Config::from_toml(&turn("turn:a", "user = \"u\""), "i.toml").unwrap_err();
        assert!(err.to_string().contains("user"), "{err}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::from_toml("", "x").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_rejected_with_line_and_column() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n";
        let err = Config::from_toml(text, "a.toml").unwrap_err();
        assert_eq!(err.position, Some((3, 1)), "{err}");
        assert_eq!(err.key, "listne");
        assert!(
            err.to_string()
                .starts_with("a.toml:3:1: listne: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn signaling_payload_and_depth_limits_are_validated() {
        let c = Config::from_toml(
            "[signaling]\nmax_payload_bytes = 4096\nmax_json_depth = 8\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(
            (c.signaling.max_payload_bytes, c.signaling.max_json_depth),
            (4096, 8)
        );
        assert_eq!(Config::default().signaling.max_payload_bytes, 262_144);
        assert_eq!(Config::default().signaling.max_json_depth, 32);
        for (text, key, words) in [
            (
                "max_payload_bytes = 0",
                "signaling.max_payload_bytes",
                "0 is not in 1024..=16777216",
            ),
            (
                "max_payload_bytes = 16777217",
                "signaling.max_payload_bytes",
                "16777217 is not in 1024..=16777216",
            ),
            (
                "max_json_depth = 3",
                "signaling.max_json_depth",
                "3 is not in 4..=128",
            ),
            (
                "max_json_depth = 129",
                "signaling.max_json_depth",
                "129 is not in 4..=128",
            ),
        ] {
            let err = Config::from_toml(&format!("[signaling]\n{text}\n"), "a.toml").unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.message.starts_with(words), "{err}");
        }
    }

    #[test]
    fn unknown_section_is_rejected() {
        let err = Config::from_toml("[camara]\nsource = \"v4l2\"\n", "a.toml").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(1), "{err}");
        assert!(err.message.contains("camara"), "{err}");
    }

    #[test]
    fn wrong_type_and_bad_enum_name_the_place() {
        let err =
            Config::from_toml("[signaling]\nmax_sessions = \"many\"\n", "a.toml").unwrap_err();
        assert_eq!(err.position, Some((2, 16)), "{err}");
        let err = Config::from_toml("[camera]\nsource = \"webcam\"\n", "a.toml").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
        assert!(err.message.contains("webcam"), "{err}");
    }

    #[test]
    fn durations_are_human() {
        let c = Config::from_toml(
            "[signaling]\nkeepalive = \"250ms\"\nclient_timeout = \"1m\"\n",
            "a",
        )
        .unwrap();
        assert_eq!(c.signaling.keepalive, Duration::from_millis(250));
        assert_eq!(c.signaling.client_timeout, Duration::from_secs(60));
        let err = Config::from_toml("[signaling]\nkeepalive = \"soon\"\n", "a").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let text = "[signaling]\nkeepalive = \"10s\"\nclient_timeout = \"5s\"\n";
        let err = Config::from_toml(text, "a.toml").unwrap_err();
        assert_eq!(err.key, "signaling.client_timeout");
        assert_eq!(err.position, Some((3, 18)), "{err}");
        let err = Config::from_toml("[signaling]\nhub_path = \"hub\"\n", "a.toml").unwrap_err();
        assert_eq!(err.to_string(), "a.toml:2:12: signaling.hub_path: \"hub\" must start with '/', name something, and not end with '/'");
    }

    #[test]
    fn http_limits_are_validated_with_the_key() {
        let cases = [
            ("header_read_timeout = \"0s\"", "server.header_read_timeout"),
            (
                "keepalive_idle_timeout = \"2h\"",
                "server.keepalive_idle_timeout",
            ),
            ("max_http_connections = 0", "server.max_http_connections"),
            ("max_header_bytes = 100", "server.max_header_bytes"),
        ];
        for (line, key) in cases {
            let err = Config::from_toml(&format!("[server]\n{line}\n"), "a").unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
        }
        let c = Config::from_toml(
            "[server]\nheader_read_timeout = \"1s\"\nmetrics_auth = false\n",
            "a",
        )
        .unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(1));
        assert!(!c.server.metrics_auth);
    }

    #[test]
    fn sdp_budgets_are_validated_with_the_key() {
        for (text, key) in [
            ("[server]\nmax_sdp_bytes = 10\n", "server.max_sdp_bytes"),
            ("[server]\nmax_sdp_media = 0\n", "server.max_sdp_media"),
            (
                "[server]\nmax_sdp_candidates = 0\n",
                "server.max_sdp_candidates",
            ),
        ] {
            let err = Config::from_toml(text, "a.toml").unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
        }
        let c = Config::from_toml("[server]\nmax_sdp_candidates = 8\n", "a").unwrap();
        assert_eq!(c.server.max_sdp_candidates, 8);
    }

    #[test]
    fn exec_access_unit_budget_is_validated() {
        let text = "[camera.exec]\nmax_access_unit_bytes = 1000\n";
        let err = Config::from_toml(text, "a.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.toml:2:25: camera.exec.max_access_unit_bytes: 1000 is not in 65536..=268435456 (64 KiB to 256 MiB)"
        );
        let ok = "[camera.exec]\nmax_access_unit_bytes = 65536\n";
        assert_eq!(
            Config::from_toml(ok, "a.toml")
                .unwrap()
                .camera
                .exec
                .max_access_unit_bytes,
            65536
        );
    }

    #[test]
    fn encoder_threads_is_auto_or_a_count_in_range() {
        assert_eq!(Config::default().encoder.threads, EncoderThreads::Auto);
        let threads = |text: &str| Config::from_toml(text, "a.toml").map(|c| c.encoder.threads);
        assert_eq!(
            threads("[encoder]\nthreads = \"auto\"\n"),
            Ok(EncoderThreads::Auto)
        );
        assert_eq!(
            threads("[encoder]\nthreads = 2\n"),
            Ok(EncoderThreads::Fixed(2))
        );
        let err = threads("[encoder]\nthreads = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.toml:2:11: encoder.threads: 0 is not in 1..=4"
        );
        let err = threads("[encoder]\nthreads = 5\n").unwrap_err();
        assert_eq!(err.key, "encoder.threads", "{err}");
        for bad in ["\"many\"", "-1", "70000"] {
            let err = threads(&format!("[encoder]\nthreads = {bad}\n")).unwrap_err();
            assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
            assert!(err.message.contains("\"auto\" or a number"), "{err}");
        }
    }

    #[test]
    fn bad_listen_address_is_rejected() {
        let err = Config::from_toml("[server]\nlisten = \"localhost\"\n", "a").unwrap_err();
        assert_eq!(err.position, Some((2, 10)), "{err}");
    }

    #[test]
    fn remotes_are_checked() {
        let ok = Config::from_toml(
            "[[remote]]\nurl = \"https://hub.example.com\"\n\n[[remote]]\nurl = \"http://10.0.0.1:8080/hub/\"\nsession = \"kitchen-1\"\ntoken = \"abc\"\n",
            "a",
        )
        .unwrap();
        assert_eq!(ok.remote.len(), 2);
        assert_eq!(ok.remote[0].session, "device-id");
        let url = RemoteUrl::parse(&ok.remote[1].url).unwrap();
        assert_eq!(
            (url.tls, url.port, url.path.as_str()),
            (false, 8080, "/hub")
        );
        let url = RemoteUrl::parse(&ok.remote[0].url).unwrap();
        assert_eq!(
            (url.tls, url.port, url.path.as_str()),
            (true, 443, "/snaprtc-hub")
        );
        let cases = [
            ("[[remote]]\n", "remote.url", "must be set"),
            ("[[remote]]\nurl = \"ftp://x\"\n", "remote.url", "http://"),
            (
                "[[remote]]\nurl = \"http://u:p@x\"\n",
                "remote.url",
                "user info",
            ),
            (
                "[[remote]]\nurl = \"http://x/?a=1\"\n",
                "remote.url",
                "query",
            ),
            (
                "[[remote]]\nurl = \"http://x\"\nsession = \"a b\"\n",
                "remote.session",
                "entry 1",
            ),
            (
                "[[remote]]\nurl = \"http://x\"\n[[remote]]\nurl = \"http://x/snaprtc-hub\"\n",
                "remote.session",
                "entry 2: session \"device-id\" on http://x/snaprtc-hub is listed twice",
            ),
            (
                "[[remote]]\nurl = \"http://x\"\nannounce_interval = \"2s\"\n",
                "remote.announce_interval",
                "2s is not between 6s",
            ),
            (
                "[[remote]]\nurl = \"http://x\"\nserver_timeout = \"10s\"\n",
                "remote.server_timeout",
                "longer than keepalive",
            ),
            (
                "[[remote]]\nurl = \"http://x\"\ntoken = \"a b\"\n",
                "remote.token",
                "printable",
            ),
            (
                "[[remote]]\nurl = \"http://x\"\nmax_message_bytes = 10\n",
                "remote.max_message_bytes",
                "10 is not in",
            ),
            (
                "[camera]\nsource = \"none\"\n[[remote]]\nurl = \"http://x\"\n",
                "remote",
                "relay role",
            ),
        ];
        for (text, key, message) in cases {
            let err = Config::from_toml(text, "a").unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
            assert!(err.message.contains(message), "{text}: {err}");
        }
    }

    #[test]
    fn port_from_environment() {
        let mut c = Config::default();
        c.apply_env_port(Some("9000")).unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert!(c.apply_env_port(Some("http")).is_err());
        c.apply_env_port(None).unwrap();
        assert_eq!(c.server.listen.port(), 9000);
    }

    #[test]
    fn print_config_round_trips() {
        let mut c = Config::default();
        c.signaling.keepalive = Duration::from_millis(1500);
        c.camera.controls.insert("brightness".into(), 10);
        let text = c.to_toml();
        assert_eq!(Config::from_toml(&text, "printed").unwrap(), c, "{text}");
    }
}
