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
//! - [`config`]: the TOML schema, defaults, validation with `file:line:col` errors.
//! - [`daemon`]: builds every part from the config, owns the tasks, shuts down in time.
//! - [`http`]: hyper routes, CORS, health; each route hands work to its owner.
//! - [`auth`]: the bearer token (created on first start) and the request check.
//! - [`signaling`]: SignalR JSON hub protocol codec and the SnapRTC hub (pure), and their
//!   tokio shell (one hub task, one task per WebSocket).
//! - [`media`]: `EncodedFrame`, the fan-out to viewers, keyframe and still requests.
//! - [`logging`]: text, JSON or journald logs.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into this library.

pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod logging;
pub mod media;
pub mod signaling;
