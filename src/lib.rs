//! snaprtcd: camera in, WebRTC out, for Linux edge devices.
//!
//! # Layout
//!
//! Pure cores (no tokio, no sockets, no clocks: time comes in as `Instant`) sit beside thin
//! shells that do the IO. Data flows one way:
//! `capture` → `media` pipeline → fan-out → `rtc` engine → viewers; signaling arrives over
//! HTTP/WebSocket → `signaling` codec → hub.
//!
//! Imports of `crate::X` go one way, lowest first; a module never imports one above it or
//! beside it on its own level, and wiring between siblings lives in `daemon`
//! (`tests/layering.rs` checks this against the same table):
//!
//! | level | modules | may import |
//! |---|---|---|
//! | leaves | `config`, `ids`, `picture`, `progress`, `response`, `thread`, `tls`, `udp` | nothing in the crate |
//! | leaves | `auth`, `logging` | `config`, `ids` |
//! | 1 | `capture`, `audio` (not each other) | leaves |
//! | 2 | `media` | leaves, `capture` |
//! | 3 | `rtc`, `rtsp`, `signaling` (not each other) | leaves, `capture`, `media` |
//! | 4 | `metrics`, `discovery`, `systemd`, `reload` | levels 0–3 |
//! | 5 | `http` | levels 0–4 |
//! | 6 | `daemon` | levels 0–5 |
//! | 7 | `cli` | everything |
//!
//! - [`config`]: the TOML schema, defaults, validation with `file:line:col` errors.
//! - [`ids`]: random ids and tokens from the OS's CSPRNG (an error, never a weak fallback).
//! - [`picture`]: I420 pictures, the buffer pool, the YUYV/NV12 row kernels (SSE2/NEON),
//!   Annex-B parsing: what capture and media share.
//! - [`progress`]: heartbeats and progress stamps that work loops bump and the watchdog reads.
//! - [`response`]: the response body type and plain answers (text, JSON, 401, 405) that `http`
//!   and `rtc::whep` share (a leaf, so `rtc` need not import `http`).
//! - [`thread`]: the owner of a named blocking thread (cancel and join on drop, log a panic).
//! - [`tls`]: the TLS client configuration (rustls, system roots) for the remote hub and TURN
//!   over TLS.
//! - [`udp`]: UDP sockets the runtime watches for reading only (a send wakes nothing), for the
//!   RTC engine and RTSP over UDP.
//! - [`auth`]: the bearer token (created on first start) and the request check.
//! - [`logging`]: text, JSON or journald logs.
//! - [`capture`]: the `Source` trait and its test pattern, V4L2 and `exec` implementations; the
//!   capture thread that reopens a lost camera with backoff.
//! - [`audio`]: the microphone (ALSA, `exec`, test tone) on one thread, encoded once to Opus
//!   and fanned out on a bounded broadcast, stamped from the video pipeline's clock.
//! - [`media`]: `EncodedFrame`, the fan-out to viewers, keyframe and still requests; the
//!   pipeline (encode once, keyframe policy, slate), openh264, JPEG stills.
//! - [`rtc`]: the str0m engine (one task, one UDP port, every viewer), WHEP, stills over data
//!   channels.
//! - [`rtsp`]: the RTSP server (`rtsp://HOST:8554/stream`): a pure session per client, H.264
//!   RTP packetisation, RTCP sender reports, token auth (Basic, Digest); a thin tokio shell.
//! - [`signaling`]: SignalR JSON hub protocol codec and the SnapRTC hub (pure), the Redis
//!   backplane's wire format (ASP.NET Core SignalR's channels and MessagePack envelope, pure),
//!   and their tokio shell (one hub task, one task per WebSocket); dial-out to remote hubs
//!   (`[[remote]]`) as a SignalR client: a pure state machine and one task per remote.
//! - [`metrics`]: `GET /metrics` in Prometheus text, rendered from the owners' snapshots.
//! - [`discovery`]: mDNS advertisement of `_snaprtc._tcp` (instance, port, TXT), goodbye on exit.
//! - [`systemd`]: `sd_notify` (ready, status, reload, stop), the progress-gated watchdog, the
//!   stable device id in the state directory.
//! - [`reload`]: SIGHUP → re-read, validate, decide what a change needs (live, services, restart).
//! - [`http`]: the HTTP server and its limits, the route table (access policy and body limit per
//!   route), CORS, health; each route hands work to its owner.
//! - [`daemon`]: builds every part from the config, owns the tasks, restarts them in-process on a
//!   reload that needs it, shuts down in time; the `STATUS=` line and the hub's answerer (the
//!   RTC engine) are wired here.
//! - [`cli`]: the command line (clap), and where the effective config comes from.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into this library.
//!
//! # State machines
//!
//! Every pure core speaks one vocabulary (after quinn-proto and str0m):
//!
//! - inputs are `handle_<what>(…, now)`, with time passed in as an `Instant`;
//! - timers are `poll_timeout() -> Option<Instant>` (when to call next) and
//!   `handle_timeout(now)`;
//! - outputs are `poll_output(&mut self) -> Option<Output>`, `#[must_use]`, which consumes what
//!   it returns.
//!
//! **Draining rule:** after every `handle_*` call the owner calls `poll_output` until it
//! returns `None`, then reads `poll_timeout` again. Outputs left undrained are not lost, but
//! the owner acts on them late; a deadline read before the drain may be stale.

pub mod audio;
pub mod auth;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod http;
pub mod ids;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod picture;
pub mod progress;
pub mod reload;
pub mod response;
pub mod rtc;
pub mod rtsp;
pub mod signaling;
pub mod systemd;
pub mod thread;
pub mod tls;
pub mod udp;
