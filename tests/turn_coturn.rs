//! The TURN core (`rtc::turn`) and its stream shell (`rtc::turn_stream`) against a real
//! coturn (`turnserver`, Debian package `coturn`) on loopback: allocate over UDP and over
//! TCP, relay a payload to a peer socket and back, a wrong credential's clear failure, and
//! coturn's REST credentials (`use-auth-secret`).
//!
//! coturn refuses loopback peers unless `--allow-loopback-peers`, which this test passes.
//! Without `turnserver` the tests skip with a message, and fail when `CI=true`.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use snaprtcd::rtc::turn::{
    rest_credentials, AllocationState, TurnAllocation, TurnAuth, TurnLimits, TurnOutput,
    TurnTransport,
};
use snaprtcd::rtc::turn_stream::{self, StreamCommand, StreamEvent, StreamTarget};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[path = "support/coturn.rs"]
mod coturn;
use coturn::Coturn;

/// The stream task's command queue and its event channel.
type StreamEnds = (
    mpsc::Sender<StreamCommand>,
    mpsc::Receiver<(SocketAddr, StreamEvent)>,
);

/// The core with its IO: the UDP socket, or the stream shell's channels.
struct Driver {
    core: TurnAllocation,
    udp: UdpSocket,
    stream: Option<StreamEnds>,
    received: Vec<(SocketAddr, Vec<u8>)>,
    cancel: CancellationToken,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Driver {
    async fn new(server: SocketAddr, transport: TurnTransport, auth: TurnAuth) -> Driver {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let core = TurnAllocation::new(
            server,
            transport,
            udp.local_addr().unwrap(),
            auth,
            TurnLimits::default(),
            unix,
            Instant::now(),
        );
        let cancel = CancellationToken::new();
        let stream = transport.is_stream().then(|| {
            let (ctx, crx) = mpsc::channel(64);
            let (etx, erx) = mpsc::channel(64);
            let target = StreamTarget {
                server,
                transport,
                host: "127.0.0.1".into(),
            };
            tokio::spawn(turn_stream::run(target, crx, etx, cancel.clone()));
            (ctx, erx)
        });
        Driver {
            core,
            udp,
            stream,
            received: Vec::new(),
            cancel,
        }
    }

    async fn flush(&mut self) {
        while let Some(o) = self.core.poll_output() {
            match o {
                TurnOutput::Transmit(bytes) => match &self.stream {
                    Some((tx, _)) => tx.send(StreamCommand::Write(bytes)).await.unwrap(),
                    None => {
                        self.udp.send_to(&bytes, self.core.server()).await.unwrap();
                    }
                },
                TurnOutput::Connect => {
                    let (tx, _) = self.stream.as_ref().unwrap();
                    tx.send(StreamCommand::Connect).await.unwrap();
                }
                TurnOutput::Received { peer, data } => self.received.push((peer, data)),
                TurnOutput::State(s) => eprintln!("turn: {s}"),
            }
        }
    }

    /// Drive IO and timers until `done` holds (or panic after 10 s).
    async fn until(&mut self, what: &str, mut done: impl FnMut(&mut Driver) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 2048];
        loop {
            self.core.handle_timeout(Instant::now());
            self.flush().await;
            if done(self) {
                return;
            }
            let wake = self
                .core
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or(deadline)
                .min(deadline);
            let server = self.core.server();
            tokio::select! {
                r = self.udp.recv_from(&mut buf) => {
                    let (n, from) = r.unwrap();
                    if from == server {
                        self.core.handle_server_bytes(&buf[..n], Instant::now());
                    }
                }
                ev = async {
                    match self.stream.as_mut() {
                        Some((_, rx)) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    match ev.unwrap().1 {
                        StreamEvent::Connected(local) => self.core.handle_connected(local, now),
                        StreamEvent::Data(d) => self.core.handle_server_bytes(&d, now),
                        StreamEvent::Disconnected(why) => self.core.handle_disconnected(&why, now),
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {}", self.core.state());
                }
            }
        }
    }
}

async fn relay_round_trip(server: SocketAddr, transport: TurnTransport, auth: TurnAuth) {
    let mut d = Driver::new(server, transport, auth).await;
    d.until("the allocation", |d| d.core.relayed().is_some())
        .await;
    let relayed = d.core.relayed().unwrap();
    assert_eq!(relayed.ip(), server.ip(), "coturn relays from its relay-ip");

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert!(d.core.add_peer(peer_addr, Instant::now()));
    // The permission is installed when a send is accepted.
    d.until("the permission", |d| {
        d.core
            .handle_send(peer_addr, b"hello peer", Instant::now())
            .is_ok()
    })
    .await;
    d.flush().await;
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .expect("nothing reached the peer")
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"hello peer"[..], relayed));

    peer.send_to(b"hello daemon", relayed).await.unwrap();
    d.until("the peer's answer", |d| !d.received.is_empty())
        .await;
    assert_eq!(d.received, vec![(peer_addr, b"hello daemon".to_vec())]);
    let stats = d.core.stats();
    assert_eq!((stats.bytes_in, stats.bytes_out), (12, 10));

    // Payloads of every length modulo 4, both ways, back to back: over TCP, ChannelData is
    // padded to 4 bytes and the frames must stay in step.
    let payloads: Vec<Vec<u8>> = (1..=9u8).map(|n| vec![n; usize::from(n) * 3]).collect();
    for p in &payloads {
        d.core.handle_send(peer_addr, p, Instant::now()).unwrap();
    }
    d.flush().await;
    for p in &payloads {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .expect("a payload did not reach the peer")
            .unwrap();
        assert_eq!(&buf[..n], &p[..]);
    }
    for p in &payloads {
        peer.send_to(p, relayed).await.unwrap();
    }
    d.until("the peer's payloads", |d| {
        d.received.len() == 1 + payloads.len()
    })
    .await;
    let back: Vec<Vec<u8>> = d.received[1..].iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(back, payloads);
}

fn long_term() -> TurnAuth {
    TurnAuth::LongTerm {
        username: "cam".into(),
        credential: "pass".into(),
    }
}

#[tokio::test]
async fn relays_over_udp() {
    let Some(coturn) = Coturn::start(&["--lt-cred-mech", "--user=cam:pass"]) else {
        return;
    };
    relay_round_trip(coturn.addr(), TurnTransport::Udp, long_term()).await;
}

#[tokio::test]
async fn relays_over_tcp() {
    let Some(coturn) = Coturn::start(&["--lt-cred-mech", "--user=cam:pass"]) else {
        return;
    };
    relay_round_trip(coturn.addr(), TurnTransport::Tcp, long_term()).await;
}

#[tokio::test]
async fn relays_with_rest_credentials() {
    let Some(coturn) = Coturn::start(&["--use-auth-secret", "--static-auth-secret=s3cret"]) else {
        return;
    };
    let auth = TurnAuth::Secret {
        secret: "s3cret".into(),
        name: "snaprtcd".into(),
        ttl: Duration::from_secs(86_400),
    };
    relay_round_trip(coturn.addr(), TurnTransport::Udp, auth).await;
    // The formula, once more against coturn's own idea of it.
    let (u, _) = rest_credentials("s3cret", "x", 1);
    assert_eq!(u, "1:x");
}

#[tokio::test]
async fn a_wrong_credential_fails_with_401() {
    let Some(coturn) = Coturn::start(&["--lt-cred-mech", "--user=cam:pass"]) else {
        return;
    };
    let auth = TurnAuth::LongTerm {
        username: "cam".into(),
        credential: "wrong".into(),
    };
    let mut d = Driver::new(coturn.addr(), TurnTransport::Udp, auth).await;
    d.until("the failure", |d| {
        matches!(d.core.state(), AllocationState::Failed(_))
    })
    .await;
    let state = d.core.state().to_string();
    assert!(state.starts_with("failed: 401"), "{state}");
}
