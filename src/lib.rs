//! snaprtcd: camera in, WebRTC out, for Linux edge devices.
//!
//! # Layout
//!
//! Pure cores (no tokio, no sockets, no clocks: time comes in as `Instant`) sit beside thin
//! shells that do the IO. Data flows one way:
//! `capture` → `media` pipeline → fan-out → `rtc` engine → viewers; signaling arrives over
//! HTTP/WebSocket → `signaling` codec → hub.
//!
//! - [`config`]: the TOML schema, defaults, validation with `file:line:col` errors.
//! - [`media`]: `EncodedFrame`, the fan-out to viewers, keyframe and still requests.
//! - [`rtc`]: the str0m engine (one task, one UDP port, every viewer), WHEP, stills over data
//!   channels.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into this library.

pub mod config;
pub mod media;
pub mod rtc;
