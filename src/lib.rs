//! snaprtcd: camera in, WebRTC out, for Linux edge devices.
//!
//! # Layout
//!
//! Pure cores (no tokio, no sockets, no clocks: time comes in as `Instant`) sit beside thin
//! shells that do the IO. Data flows one way:
//! `capture` → `media` pipeline → fan-out → `rtc` engine → viewers; signaling arrives over
//! HTTP/WebSocket → `signaling` codec → hub.
//!
//! - [`capture`]: the `Source` trait and its test pattern, V4L2 and `exec` implementations; the
//!   capture thread that reopens a lost camera with backoff.
//! - [`config`]: the TOML schema, defaults, validation with `file:line:col` errors.
//! - [`media`]: `EncodedFrame`, the fan-out to viewers, keyframe and still requests; the
//!   pipeline (encode once, keyframe policy, slate), openh264, Annex-B parsing, JPEG stills.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into this library.

pub mod capture;
pub mod config;
pub mod media;
