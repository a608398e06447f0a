//! Abuse: a 16 MiB frame on go2rtc's `/api/ws` is refused from its header (tungstenite's limits,
//! twice the session's 2 × `max_sdp_bytes` + 4 KiB plus 64 KiB): the daemon's peak RSS does not
//! grow by anything like the frame, the client reads a 1009 close, and the next socket is served.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use std::time::Duration;

use common::Daemon;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_16_mib_frame_is_refused_before_it_is_buffered_with_1009() {
    let d = Daemon::start("");
    let url = d.ws_url("/api/ws?src=camera");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let before = d.peak_rss_kib();

    let frame = "a".repeat(16 << 20);
    // The server may stop reading while this is still being written.
    let _ = ws.send(Message::text(frame)).await;
    let mut close = None;
    while let Ok(Some(message)) = tokio::time::timeout(TIMEOUT, ws.next()).await {
        match message {
            Ok(Message::Close(frame)) => {
                close = frame;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no close frame before: {e}"),
        }
    }
    let after = d.peak_rss_kib();
    let grew = after.saturating_sub(before);
    println!("peak RSS {before} KiB before the frame, {after} KiB after (+{grew} KiB)");
    assert!(
        grew < 8 * 1024,
        "peak RSS grew by {grew} KiB ({before} -> {after} KiB) for a 16 MiB frame"
    );
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Size));

    // The next socket is served.
    let (mut other, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    other
        .send(Message::text(r#"{"type":"mse","value":"avc1.640029"}"#))
        .await
        .unwrap();
    let reply = tokio::time::timeout(TIMEOUT, other.next()).await.unwrap();
    let text = reply.unwrap().unwrap().into_text().unwrap();
    assert!(
        text.starts_with(r#"{"type":"error","value":"mse: "#),
        "{text}"
    );
}
