//! RTSP out (RFC 2326): `rtsp://HOST:8554/stream` for NVRs, Frigate and Home Assistant, from the
//! same H.264 encode as WebRTC.
//!
//! - [`session`]: one client connection as a pure state machine (requests, auth, transports,
//!   RTP and RTCP out), unit-tested without sockets.
//! - [`rtp`]: H.264 RTP packetisation (single NAL unit and FU-A, RFC 6184) and RTCP sender
//!   reports (pure).
//! - [`sdp`]: the DESCRIBE answer, with `profile-level-id` and `sprop-parameter-sets` from the
//!   stream's real SPS and PPS (pure).
//! - [`credentials`]: Basic and Digest with the daemon's token as the password (pure).
//! - [`server`]: the tokio shell: the listener, one task per connection, UDP sockets.
//!
//! Requests are parsed by `rtsp-types`. Each client holds its own place in the pipeline's frame
//! broadcast ([`crate::media::FrameSubscriber`]): it starts at a keyframe, and one that falls
//! behind skips to the next keyframe. Nothing is encoded for RTSP: the access units are the
//! ones WebRTC viewers get.

pub mod credentials;
pub mod rtp;
pub mod sdp;
pub mod server;
pub mod session;

pub use server::{RtspCounters, RtspError, RtspServer, ServerSettings, STREAM_PATH};
