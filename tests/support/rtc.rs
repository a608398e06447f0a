//! What the WebRTC engine tests share: a stand-in pipeline (30 fps Annex-B frames, stills on
//! request) and a str0m peer that behaves like a browser (full ICE, recvonly video plus a data
//! channel). Included with `#[path]` by the test files that need it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use snaprtcd::media::{EncodedFrame, KeyframeCause, MediaPorts};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Engine settings for a test on loopback: port 0, the loopback host candidate, 4 viewers, a
/// still on connect, a 15 s silence timeout, the default SDP budgets.
pub fn loopback_settings() -> snaprtcd::rtc::EngineSettings {
    snaprtcd::rtc::EngineSettings {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        hosts: vec![snaprtcd::rtc::candidates::HostAddr {
            ip: Ipv4Addr::LOCALHOST,
            netmask: Ipv4Addr::new(255, 0, 0, 0),
        }],
        max_viewers: 4,
        snapshot_on_connect: true,
        silence_timeout: Duration::from_secs(15),
        sdp_limits: Default::default(),
        ice: Default::default(),
    }
}

/// A pipeline stand-in: 30 frames/s, an IDR every 30 frames or when asked, stills on request
/// (`jpeg_len` bytes, or the request's `max_bytes` when that is smaller, as `fit` does).
pub fn spawn_fake_pipeline(
    mut ports: MediaPorts,
    cancel: CancellationToken,
    jpeg_len: usize,
    keyframe_causes: Option<tokio::sync::mpsc::UnboundedSender<KeyframeCause>>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        let mut n: u64 = 0;
        let mut idr_due = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(cause) = ports.keyframes.recv() => {
                    idr_due = true;
                    if let Some(tx) = &keyframe_causes {
                        let _ = tx.send(cause);
                    }
                }
                Some(req) = ports.stills.recv() => {
                    let len = jpeg_len.min(req.max_bytes);
                    let mut jpeg = vec![0x55u8; len];
                    jpeg[..2].copy_from_slice(&[0xff, 0xd8]);
                    jpeg[len - 2..].copy_from_slice(&[0xff, 0xd9]);
                    let _ = req.reply.send(Ok(Bytes::from(jpeg)));
                }
                _ = tick.tick() => {
                    let key = idr_due || n % 30 == 0;
                    idr_due = false;
                    let _ = ports.frames.send(fake_frame(n, key));
                    n += 1;
                }
            }
        }
    });
}

/// An Annex-B access unit: SPS+PPS+IDR for keyframes, one non-IDR slice otherwise.
pub fn fake_frame(n: u64, keyframe: bool) -> EncodedFrame {
    let mut d = Vec::new();
    if keyframe {
        d.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0xda, 0x02, 0x80]);
        d.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        d.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        d.extend(std::iter::repeat_n(0x11, 3000));
    } else {
        d.extend_from_slice(&[0, 0, 0, 1, 0x41]);
        d.extend(std::iter::repeat_n(0x22, 800));
    }
    EncodedFrame {
        data: std::sync::Arc::from(d),
        keyframe,
        timestamp: Duration::from_millis(n * 33),
    }
}

/// A str0m peer like a browser: full ICE, offers recvonly video and a data channel.
pub struct Peer {
    pub rtc: Rtc,
    pub socket: UdpSocket,
    pub local: SocketAddr,
    /// Data channel messages that arrived while driving for something else (e.g. the still
    /// sent on open, reaching the peer before the 5th frame), kept for [`Peer::first_still`].
    pub messages: std::collections::VecDeque<(bool, Vec<u8>)>,
}

impl Peer {
    pub async fn new() -> (Self, String, str0m::change::SdpPendingOffer) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().enable_h264(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.add_channel("snap".into());
        let (offer, pending) = api.apply().unwrap();
        (
            Self {
                rtc,
                socket,
                local,
                messages: Default::default(),
            },
            offer.to_sdp_string(),
            pending,
        )
    }
}

impl Peer {
    /// Take the engine's answer to this peer's offer.
    pub fn accept(&mut self, pending: str0m::change::SdpPendingOffer, answer: &str) {
        self.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(answer).unwrap())
            .unwrap();
    }

    /// Run the peer like a browser's event loop (drain it, then wait for a datagram or its
    /// timeout) and hand every event to `on_event` until it returns true; panics after `limit`.
    pub async fn drive(&mut self, limit: Duration, on_event: impl FnMut(&mut Rtc, Event) -> bool) {
        self.drive_lossy(limit, |_| true, on_event).await
    }

    /// [`Peer::drive`] over a lossy network: datagrams for which `keep` is false are dropped
    /// before the peer sees them.
    pub async fn drive_lossy(
        &mut self,
        limit: Duration,
        mut keep: impl FnMut(&[u8]) -> bool,
        mut on_event: impl FnMut(&mut Rtc, Event) -> bool,
    ) {
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let timeout = loop {
                match self.rtc.poll_output().unwrap() {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        self.socket
                            .send_to(&t.contents, t.destination)
                            .await
                            .unwrap();
                    }
                    Output::Event(e) => {
                        if on_event(&mut self.rtc, e) {
                            return;
                        }
                    }
                }
            };
            let wait = tokio::time::Instant::from_std(timeout);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, source) = r.unwrap();
                    if !keep(&buf[..n]) {
                        continue;
                    }
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents: DatagramRecv::try_from(&buf[..n]).unwrap(),
                    });
                    self.rtc.handle_input(input).unwrap();
                }
                _ = tokio::time::sleep_until(wait) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
                }
                _ = tokio::time::sleep_until(deadline) => panic!("peer timed out after {limit:?}"),
            }
        }
    }

    /// Drive until `n` video frames arrived; data channel messages meanwhile are kept.
    pub async fn frames(&mut self, n: usize) {
        let mut got = 0;
        let mut kept = Vec::new();
        self.drive(Duration::from_secs(10), |_, e| {
            match e {
                Event::MediaData(_) => got += 1,
                Event::ChannelData(d) => kept.push((d.binary, d.data)),
                _ => {}
            }
            got >= n
        })
        .await;
        self.messages.extend(kept);
    }

    /// Drive until the first binary data channel message (the still sent on open), or take
    /// it from the messages kept while driving for frames.
    pub async fn first_still(&mut self) -> Vec<u8> {
        let mut still = None;
        if let Some((binary, data)) = self.messages.pop_front() {
            assert!(
                binary,
                "error instead of a still: {}",
                String::from_utf8_lossy(&data)
            );
            still = Some(data);
        }
        if still.is_none() {
            self.drive(Duration::from_secs(10), |_, e| {
                if let Event::ChannelData(d) = e {
                    if d.binary {
                        still = Some(d.data);
                    } else {
                        panic!(
                            "error instead of a still: {}",
                            String::from_utf8_lossy(&d.data)
                        );
                    }
                }
                still.is_some()
            })
            .await;
        }
        still.unwrap()
    }
}
