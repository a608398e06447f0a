//! snaprtcd: camera in, WebRTC out, for Linux edge devices.
//!
//! # Layout
//!
//! Pure cores (no tokio, no sockets, no clocks: time comes in as `Instant`) sit beside thin
//! shells that do the IO. Data flows one way:
//! `capture` → `media` pipeline → fan-out → `rtc` engine → viewers; signaling arrives over
//! HTTP/WebSocket → `signaling` codec → hub.
//!
//! - [`cli`]: the command line (clap), and where the effective config comes from.
//! - [`capture`]: the `Source` trait and its test pattern, V4L2 and `exec` implementations; the
//!   capture thread that reopens a lost camera with backoff.
//! - [`config`]: the TOML schema, defaults, validation with `file:line:col` errors.
//! - [`daemon`]: builds every part from the config, owns the tasks, restarts them in-process on a
//!   reload that needs it, shuts down in time.
//! - [`http`]: the HTTP server and its limits, the route table (access policy and body limit per
//!   route), CORS, health; each route hands work to its owner.
//! - [`response`]: the response body type and plain answers (text, JSON, 401, 405) that `http`
//!   and `rtc::whep` share (a leaf, so `rtc` need not import `http`).
//! - [`auth`]: the bearer token (created on first start) and the request check.
//! - [`signaling`]: SignalR JSON hub protocol codec and the SnapRTC hub (pure), and their
//!   tokio shell (one hub task, one task per WebSocket).
//! - [`media`]: `EncodedFrame`, the fan-out to viewers, keyframe and still requests; the
//!   pipeline (encode once, keyframe policy, slate), openh264, Annex-B parsing, JPEG stills.
//! - [`logging`]: text, JSON or journald logs.
//! - [`metrics`]: `GET /metrics` in Prometheus text, rendered from the owners' snapshots.
//! - [`rtc`]: the str0m engine (one task, one UDP port, every viewer), WHEP, stills over data
//!   channels.
//! - [`discovery`]: mDNS advertisement of `_snaprtc._tcp` (instance, port, TXT), goodbye on exit.
//! - [`reload`]: SIGHUP → re-read, validate, decide what a change needs (live, services, restart).
//! - [`systemd`]: `sd_notify` (ready, status, reload, stop), the progress-gated watchdog, the
//!   stable device id in the state directory.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into this library.

pub mod auth;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod http;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod picture;
pub mod reload;
pub mod response;
pub mod rtc;
pub mod signaling;
pub mod systemd;
