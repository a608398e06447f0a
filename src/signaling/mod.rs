//! SnapRTC-compatible signaling: the SignalR JSON hub protocol and the session hub; and go2rtc's
//! WebSocket API for its players.
//!
//! - [`signalr`]: the wire codec and one connection's protocol state (pure).
//! - [`hub`]: sessions, relay, limits and connection admission (pure).
//! - [`snappeer`]: simple-peer signal payloads (lz-string or JSON), pure.
//! - [`lzstring`]: lz-string's URI-component decompressor with an output budget, pure.
//! - [`capture`]: the daemon's own capture side in SnapRTC sessions.
//! - [`ws`]: the tokio shell: the hub task and one task per WebSocket.
//! - [`go2rtc`]: go2rtc's WebSocket API (`/api/ws`) as its players speak it, pure.
//! - [`backplane`]: the Redis backplane's wire format (ASP.NET Core SignalR's channel names
//!   and MessagePack envelope), pure.
//! - [`redis`]: the backplane task that owns the Redis connections (IO only).
//! - [`dialout`]: the tokio shell of dial-out, one task per `[[remote]]` entry.
//! - [`remote`]: dial-out to a remote hub as the capture side of a session (pure).

pub mod backplane;
pub mod capture;
pub mod dialout;
pub mod go2rtc;
pub mod hub;
pub mod lzstring;
pub mod redis;
pub mod remote;
pub mod signalr;
pub mod snappeer;
pub mod ws;

pub use ws::{spawn, SignalingHandle, SignalingStats};
