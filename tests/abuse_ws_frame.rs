//! Abuse: a 16 MiB WebSocket frame on the hub is refused from its header (tungstenite's frame
//! and message limits, twice `signaling.max_message_bytes` plus 64 KiB), so the connection is
//! closed without the daemon's peak RSS growing by anything like the frame's size.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use common::signalr::{Client, Read};
use common::Daemon;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_16_mib_frame_is_refused_before_it_is_buffered() {
    let mut d = Daemon::start("");
    let mut client = Client::open(d.addr).await;
    let before = d.peak_rss_kib();

    let frame = "a".repeat(16 << 20);
    // The server may reset the connection while this is still being written.
    let _ = client.ws.send(Message::text(frame)).await;
    let line = d.wait_for_log("hub connection closed", common::signalr::TIMEOUT);

    let after = d.peak_rss_kib();
    let grew = after.saturating_sub(before);
    println!("peak RSS {before} KiB before the frame, {after} KiB after (+{grew} KiB)");
    assert!(
        grew < 8 * 1024,
        "peak RSS grew by {grew} KiB ({before} -> {after} KiB) for a 16 MiB frame"
    );
    // Refused by the transport (no Close record: the codec never saw it).
    assert!(line.contains("Message too long"), "{line}");
    assert_eq!(
        client.read_within(common::signalr::TIMEOUT).await,
        Some(Read::Closed)
    );

    // Others are still served.
    let mut other = Client::open(d.addr).await;
    other.invoke("0", "Sync", json!(["s", false])).await;
    assert_eq!(
        other.read_non_ping().await,
        Read::Record(json!({"type":3,"invocationId":"0"}))
    );
}
