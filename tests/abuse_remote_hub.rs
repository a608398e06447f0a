//! A hostile remote hub (`[[remote]]`): endless negotiate redirects, a huge negotiate body, a
//! negotiate that never answers, junk and oversized SignalR traffic after the handshake. The
//! daemon never crashes, stays within its memory, says what is wrong in its log and `/health`,
//! and keeps retrying with backoff instead of hammering the hub.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Daemon;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Every negotiate redirects to itself.
    RedirectForever,
    /// Negotiate answers with 96 MiB of body.
    HugeNegotiate,
    /// Negotiate is read and never answered.
    SlowNegotiate,
    /// After the handshake: a record that is not JSON.
    Junk,
    /// After the handshake: one 96 MiB frame.
    HugeFrame,
    /// After the handshake: an unfinished record that grows without end.
    EndlessRecord,
}

/// A fake hub on loopback; counts the connections it got.
async fn hostile_hub(mode: Mode) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            seen.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve(stream, addr, mode));
        }
    });
    (addr, count)
}

async fn serve(mut stream: TcpStream, addr: SocketAddr, mode: Mode) {
    let mut first = [0u8; 4];
    if stream.peek(&mut first).await.is_err() {
        return;
    }
    if &first == b"POST" {
        let _ = read_head(&mut stream).await;
        let body = match mode {
            Mode::RedirectForever => {
                format!("{{\"url\":\"http://{addr}/snaprtc-hub\",\"accessToken\":\"t\"}}")
            }
            Mode::SlowNegotiate => {
                // Hold the connection; never answer.
                let mut sink = [0u8; 64];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Mode::HugeNegotiate => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100663296\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let chunk = vec![b' '; 1 << 16];
                for _ in 0..1536 {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                return;
            }
            _ => "{\"negotiateVersion\":1,\"connectionId\":\"c\",\"connectionToken\":\"t\",\"availableTransports\":[{\"transport\":\"WebSockets\",\"transferFormats\":[\"Text\"]}]}".to_owned(),
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        return;
    }
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    // The client's handshake, then ours, then the abuse.
    let _ = ws.next().await;
    let _ = ws.send(Message::text("{}\u{1e}")).await;
    match mode {
        Mode::Junk => {
            let _ = ws
                .send(Message::text("{\"type\":1,\"target\":\u{1e}"))
                .await;
        }
        Mode::HugeFrame => {
            let _ = ws.send(Message::binary(vec![b'a'; 96 << 20])).await;
        }
        Mode::EndlessRecord => {
            let chunk = "x".repeat(16 << 10);
            for _ in 0..6144 {
                if ws.send(Message::text(chunk.clone())).await.is_err() {
                    break;
                }
            }
        }
        _ => {}
    }
    while let Some(Ok(_)) = ws.next().await {}
}

async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

fn health(d: &Daemon) -> serde_json::Value {
    let r = d.http("GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n");
    serde_json::from_str(&r.text()).unwrap()
}

/// Start a device against a hostile hub in `mode`; wait for the log line that names `error`.
async fn survives(mode: Mode, error: &str) -> (Daemon, Arc<AtomicUsize>) {
    let (addr, count) = hostile_hub(mode).await;
    let error = error.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut d = Daemon::start(&format!(
            "[[remote]]\nurl = \"http://{addr}\"\nsession = \"s\"\nconnect_timeout = \"2s\"\n"
        ));
        let line = d.wait_for_log("remote hub: reconnecting", Duration::from_secs(20));
        assert!(line.contains(&error), "{mode:?}: {line}");
        let h = health(&d);
        assert_eq!(
            h["remotes"][0]["state"],
            "reconnecting",
            "{mode:?}: {h}\n{}",
            d.log.join("\n")
        );
        assert!(
            h["remotes"][0]["error"].as_str().unwrap().contains(&error),
            "{mode:?}: {h}"
        );
        // A camera daemon at 320x240 needs about 25 MiB; the hostile hubs send 96 MiB, none
        // of which may be held.
        let peak = d.peak_rss_kib();
        eprintln!("{mode:?}: peak RSS {peak} KiB");
        assert!(peak < 64 * 1024, "{mode:?}: peak RSS {peak} KiB");
        (d, count)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_redirects_are_cut_off() {
    let (_d, count) = survives(Mode::RedirectForever, "more than 5 negotiate redirects").await;
    // One attempt: the first negotiate and five redirects, then a backoff.
    assert!(count.load(Ordering::Relaxed) <= 12, "{count:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_negotiate_body_is_not_read() {
    survives(Mode::HugeNegotiate, "length limit exceeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negotiate_that_never_answers_times_out() {
    survives(Mode::SlowNegotiate, "no connection within connect_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_after_the_handshake_drops_the_link() {
    survives(Mode::Junk, "bad message from the hub: invalid JSON").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_frame_is_refused() {
    survives(Mode::HugeFrame, "WebSocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_record_is_refused() {
    survives(Mode::EndlessRecord, "larger than the limit").await;
}
