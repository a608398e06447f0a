//! SnapRTC-compatible signaling: the SignalR JSON hub protocol and the session hub.
//!
//! - [`signalr`]: the wire codec and one connection's protocol state (pure).
//! - [`hub`]: sessions, relay, limits and connection admission (pure).
//! - [`ws`]: the tokio shell: the hub task and one task per WebSocket.

pub mod hub;
pub mod signalr;
pub mod ws;

pub use ws::{spawn, SignalingHandle, SignalingStats};
