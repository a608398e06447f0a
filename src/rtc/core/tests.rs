//! The core on virtual time against in-process str0m peers: no sockets, no sleeps. A peer's
//! transmits are handed to the core and the core's to the peer; the clock moves only when
//! neither side has anything to do, to the earliest timeout.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::*;
use crate::rtc::{accept_offer, Command, RtcError, Shared, ViewerKind};

const ENGINE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PORT: u16 = 5000;

fn engine_addr() -> SocketAddr {
    SocketAddr::from((ENGINE_IP, PORT))
}

fn shared(
    silence: Duration,
    full_ice: bool,
) -> (Arc<Shared>, tokio::sync::watch::Sender<Vec<Candidate>>) {
    super::super::engine::init_crypto();
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let shared = Arc::new(Shared {
        audio: Default::default(),
        candidates: vec![Candidate::host(engine_addr(), "udp").unwrap()],
        max_viewers: 4,
        snapshot_on_connect: true,
        silence_timeout: silence,
        sdp_limits: Default::default(),
        full_ice,
        extra_candidates: rx,
        slots: Arc::new(AtomicUsize::new(0)),
        rtc_built: AtomicU64::new(0),
    });
    (shared, tx)
}

/// A browser stand-in: full ICE, recvonly video and a data channel, at `addr`.
struct Peer {
    rtc: Rtc,
    addr: SocketAddr,
    events: Vec<Event>,
    /// Drop every datagram to and from the engine (a peer that vanished).
    muted: bool,
    /// The address the engine sees it at (a NAT in between), when not `addr`.
    nat: Option<SocketAddr>,
    /// Direct datagrams between it and the engine are lost (symmetric NATs): only the fake
    /// TURN server carries them.
    relay_only: bool,
    /// Its nominations (Binding requests with USE-CANDIDATE) are lost, counted here.
    hold_nomination: bool,
    nominations_held: usize,
}

impl Peer {
    fn new(addr: SocketAddr, now: Instant) -> (Self, String, SdpPendingOffer) {
        let mut rtc = Rtc::builder().enable_h264(true).build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.add_channel("snap".into());
        let (offer, pending) = api.apply().unwrap();
        let peer = Self {
            rtc,
            addr,
            events: Vec::new(),
            muted: false,
            nat: None,
            relay_only: false,
            hold_nomination: false,
            nominations_held: 0,
        };
        (peer, offer.to_sdp_string(), pending)
    }

    fn accept(&mut self, pending: SdpPendingOffer, answer: &str) {
        self.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(answer).unwrap())
            .unwrap();
    }

    fn frames(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::MediaData(_)))
            .count()
    }

    fn stills(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::ChannelData(d) if d.binary))
            .count()
    }

    fn connected(&self) -> bool {
        self.events.iter().any(|e| matches!(e, Event::Connected))
    }
}

/// The core, its peers, a fake pipeline and a virtual clock.
struct World {
    now: Instant,
    core: Core,
    peers: Vec<Peer>,
    /// The core asked for the frame stream and did not release it.
    subscribed: bool,
    keyframes: Vec<KeyframeCause>,
    /// Still requests the fake pipeline answers on the next step.
    stills: Vec<(ViewerId, ChannelId, usize)>,
    core_events: Vec<CoreEvent>,
    /// Next fake frame (30 fps, an IDR every 30 frames or when asked).
    frame_n: u64,
    next_frame: Instant,
    idr_due: bool,
    /// Datagrams the core sent to addresses that are no peer's (e.g. a STUN server).
    stray: Vec<CoreTransmit>,
    /// The shell's side of `Shared::extra_candidates`.
    candidates_tx: tokio::sync::watch::Sender<Vec<Candidate>>,
    /// A STUN server answered in process: its address and the mapped address it reports.
    stun_server: Option<(SocketAddr, SocketAddr)>,
}

impl World {
    fn new(silence: Duration) -> Self {
        Self::with_ice(silence, false)
    }

    fn with_ice(silence: Duration, full_ice: bool) -> Self {
        let now = Instant::now();
        let (shared, candidates_tx) = shared(silence, full_ice);
        let core = Core::new(
            PORT,
            Box::new(FixedLocalAddr(SocketAddrV4::new(ENGINE_IP, PORT))),
            shared,
        );
        Self {
            now,
            core,
            candidates_tx,
            stun_server: None,
            peers: Vec::new(),
            subscribed: false,
            keyframes: Vec::new(),
            stills: Vec::new(),
            core_events: Vec::new(),
            frame_n: 0,
            next_frame: now,
            idr_due: true,
            stray: Vec::new(),
        }
    }

    /// Offer from a new peer at `addr`, answered by the core; returns the peer's index and
    /// viewer id.
    fn join(&mut self, addr: SocketAddr) -> (usize, ViewerId) {
        let (mut peer, offer, pending) = Peer::new(addr, self.now);
        let (viewer, answer) =
            accept_offer(&self.core.shared, &offer, ViewerKind::Whep, self.now).unwrap();
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.handle_command(
            self.now,
            Command::Register {
                viewer: Box::new(viewer),
                reply,
            },
        );
        rx.try_recv().unwrap().unwrap();
        peer.accept(pending, &answer.sdp);
        self.peers.push(peer);
        self.drain_core();
        (self.peers.len() - 1, answer.id)
    }

    /// Act on the core's outputs as the shell would, delivering datagrams to peers.
    fn drain_core(&mut self) {
        loop {
            if let Some(t) = self.core.poll_transmit() {
                // A STUN Binding request to the same server goes to the STUN answerer below.
                let binding =
                    t.contents.len() >= 20 && t.contents[4..8] == [0x21, 0x12, 0xa4, 0x42];
                if t.destination == TURN_SERVER && !binding {
                    // The fake TURN server unwraps and sends from the relayed address.
                    let (peer, payload) = fake_turn::decode(&t.contents);
                    if let Some(p) = self.peers.iter_mut().find(|p| p.addr == peer && !p.muted) {
                        let input = Input::Receive(
                            self.now,
                            Receive {
                                proto: Protocol::Udp,
                                source: RELAYED,
                                destination: p.addr,
                                contents: DatagramRecv::try_from(payload).unwrap(),
                            },
                        );
                        p.rtc.handle_input(input).unwrap();
                    }
                    continue;
                }
                match self
                    .peers
                    .iter_mut()
                    .find(|p| p.nat.unwrap_or(p.addr) == t.destination)
                {
                    Some(p) if !p.muted && !p.relay_only => {
                        let input = Input::Receive(
                            self.now,
                            Receive {
                                proto: Protocol::Udp,
                                source: engine_addr(),
                                destination: p.addr,
                                contents: DatagramRecv::try_from(&t.contents[..]).unwrap(),
                            },
                        );
                        p.rtc.handle_input(input).unwrap();
                    }
                    Some(_) => {}
                    None => match self.stun_server {
                        Some((server, mapped)) if t.destination == server => {
                            let answer = crate::rtc::stun::tests::answer(&t.contents, mapped);
                            self.core.handle_datagram(
                                self.now,
                                Via::Udp,
                                server,
                                engine_addr(),
                                &answer,
                            );
                        }
                        _ => self.stray.push(t),
                    },
                }
                continue;
            }
            let Some(e) = self.core.poll_event() else {
                break;
            };
            match &e {
                CoreEvent::SubscribeVideo => {
                    self.subscribed = true;
                    self.idr_due = true;
                    self.keyframes.push(KeyframeCause::NewViewer);
                }
                CoreEvent::ReleaseVideo => self.subscribed = false,
                CoreEvent::CandidatesChanged => {
                    self.candidates_tx
                        .send_replace(self.core.local_candidates().to_vec());
                }
                CoreEvent::Keyframe(c) => {
                    self.idr_due = true;
                    self.keyframes.push(*c);
                }
                CoreEvent::Still {
                    viewer,
                    channel,
                    max_bytes,
                } => self.stills.push((*viewer, *channel, *max_bytes)),
                _ => {}
            }
            self.core_events.push(e);
        }
    }

    /// Drain every peer into the core; returns the earliest peer timeout.
    fn drain_peers(&mut self) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for i in 0..self.peers.len() {
            loop {
                let out = self.peers[i].rtc.poll_output().unwrap();
                match out {
                    Output::Timeout(t) => {
                        earliest = Some(earliest.map_or(t, |e| e.min(t)));
                        break;
                    }
                    Output::Transmit(t) => {
                        if self.peers[i].muted {
                            continue;
                        }
                        if t.destination == RELAYED {
                            // To the fake TURN server, which wraps it for the engine.
                            let wrapped = fake_turn::encode(t.source, &t.contents);
                            self.core.handle_datagram(
                                self.now,
                                Via::Udp,
                                TURN_SERVER,
                                engine_addr(),
                                &wrapped,
                            );
                            self.drain_core();
                            continue;
                        }
                        if self.peers[i].relay_only {
                            continue;
                        }
                        if self.peers[i].hold_nomination && is_nomination(&t.contents) {
                            self.peers[i].nominations_held += 1;
                            continue;
                        }
                        let source = self.peers[i].nat.unwrap_or(t.source);
                        self.core.handle_datagram(
                            self.now,
                            Via::Udp,
                            source,
                            t.destination,
                            &t.contents,
                        );
                        self.drain_core();
                    }
                    Output::Event(e) => self.peers[i].events.push(e),
                }
            }
        }
        earliest
    }

    /// One step: peers drained, stills answered, a frame when due, then the clock moves to the
    /// earliest timeout (never backwards, at most 100 ms).
    fn step(&mut self) {
        let peer_timeout = self.drain_peers();
        for (viewer, channel, max) in std::mem::take(&mut self.stills) {
            let len = max.min(20_000);
            let mut jpeg = vec![0x55u8; len];
            jpeg[..2].copy_from_slice(&[0xff, 0xd8]);
            self.core
                .handle_still(self.now, viewer, channel, Ok(Bytes::from(jpeg)));
            self.drain_core();
        }
        if self.subscribed && self.now >= self.next_frame {
            let key = self.idr_due || self.frame_n % 30 == 0;
            self.idr_due = false;
            let frame = fake_frame(self.frame_n, key);
            self.core.handle_frame(self.now, &frame, 0);
            self.drain_core();
            self.frame_n += 1;
            self.next_frame = self.now + Duration::from_millis(33);
        }
        let mut next = self.now + Duration::from_millis(100);
        for t in [peer_timeout, self.core.poll_timeout()]
            .into_iter()
            .flatten()
        {
            next = next.min(t);
        }
        if self.subscribed {
            next = next.min(self.next_frame);
        }
        self.now = next.max(self.now + Duration::from_micros(100));
        for p in &mut self.peers {
            p.rtc.handle_input(Input::Timeout(self.now)).unwrap();
        }
        self.core.handle_timeout(self.now);
        self.drain_core();
    }

    /// Step until `done` or `limit` of virtual time has passed (then panic).
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) {
        let end = self.now + limit;
        while !done(self) {
            assert!(self.now < end, "not done after {limit:?} of virtual time");
            self.step();
        }
    }
}

fn fake_frame(n: u64, keyframe: bool) -> EncodedFrame {
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

/// A STUN Binding request carrying USE-CANDIDATE (RFC 8445 §7.1.2).
fn is_nomination(datagram: &[u8]) -> bool {
    const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
    const USE_CANDIDATE: u16 = 0x0025;
    if datagram.len() < 20 || datagram[..2] != BINDING_REQUEST {
        return false;
    }
    let mut attrs = &datagram[20..];
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        if kind == USE_CANDIDATE {
            return true;
        }
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        attrs = attrs.get(4 + len.next_multiple_of(4)..).unwrap_or_default();
    }
    false
}

fn peer_addr(n: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, 100 + n), 40000))
}

#[test]
fn a_peer_connects_gets_video_and_a_still_on_virtual_time() {
    let mut w = World::new(Duration::from_secs(15));
    let (p, id) = w.join(peer_addr(0));
    assert!(
        w.subscribed,
        "the frame stream is taken when a video viewer is added"
    );
    w.run_until(Duration::from_secs(10), |w| {
        w.peers[p].frames() >= 20 && w.peers[p].stills() >= 1
    });
    assert!(w.peers[p].connected());
    assert!(w
        .core_events
        .iter()
        .any(|e| matches!(e, CoreEvent::ViewerConnected { viewer, .. } if *viewer == id)));
    let s = w.core.stats();
    assert_eq!((s.viewers, s.connected), (1, 1));
    assert!(s.frames_sent >= 20 && s.stills_sent >= 1, "{s:?}");
    assert_eq!(
        s.local_addr_lookups, 0,
        "the destination came with the datagram"
    );
    assert_eq!(s.pair_types, [1, 0, 0, 0], "host to host");
}

#[test]
fn whoever_waits_on_a_viewer_hears_when_it_connects_or_goes() {
    let watch = |w: &mut World, id| {
        let (reply, rx) = tokio::sync::oneshot::channel();
        w.core
            .handle_command(w.now, Command::WatchConnected { id, reply });
        rx
    };
    let mut w = World::new(Duration::from_secs(15));
    let (p, id) = w.join(peer_addr(0));
    let mut before = watch(&mut w, id);
    assert!(before.try_recv().is_err(), "not connected yet: no word");
    w.run_until(Duration::from_secs(10), |w| w.peers[p].connected());
    assert_eq!(before.try_recv(), Ok(true));
    // Once connected: at once.
    assert_eq!(watch(&mut w, id).try_recv(), Ok(true));
    // No such viewer: at once, no.
    assert_eq!(watch(&mut w, ViewerId(7)).try_recv(), Ok(false));

    // A viewer that goes without connecting (its peer never speaks: silence timeout).
    let (q, id) = w.join(peer_addr(1));
    w.peers[q].muted = true;
    let mut gone = watch(&mut w, id);
    w.run_until(Duration::from_secs(30), |w| w.core.viewer_count() == 1);
    assert_eq!(gone.try_recv(), Ok(false));
}

#[test]
fn ice_lite_answers_dtls_before_the_peer_nominates() {
    // Browsers send their DTLS ClientHello right after their first successful check and
    // nominate some 50 ms later. The ICE-lite engine must not sit on the handshake until then:
    // the pair of the first authenticated check is the send address until a nomination
    // (vendor/is, see vendor/README.md). Here no nomination ever arrives until released.
    let mut w = World::new(Duration::from_secs(15));
    let (p, _) = w.join(peer_addr(0));
    w.peers[p].hold_nomination = true;
    w.run_until(Duration::from_secs(5), |w| {
        w.peers[p].connected() && w.peers[p].frames() >= 1
    });
    assert!(
        w.peers[p].nominations_held >= 1,
        "the peer did nominate, and it was held"
    );
    assert_eq!(w.core.stats().connected, 1);
    w.peers[p].hold_nomination = false;
    let before = w.peers[p].frames();
    w.run_until(Duration::from_secs(5), |w| {
        w.peers[p].frames() >= before + 10
    });
    assert_eq!(w.core.stats().pair_types, [1, 0, 0, 0], "host to host");
}

#[test]
fn a_peer_behind_a_nat_is_found_peer_reflexive() {
    let mut w = World::new(Duration::from_secs(15));
    let (mut peer, offer, pending) = Peer::new(peer_addr(0), w.now);
    peer.nat = Some(SocketAddr::from((Ipv4Addr::new(198, 51, 100, 9), 61000)));
    let (viewer, answer) = accept_offer(&w.core.shared, &offer, ViewerKind::Whep, w.now).unwrap();
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    w.core.handle_command(
        w.now,
        Command::Register {
            viewer: Box::new(viewer),
            reply,
        },
    );
    rx.try_recv().unwrap().unwrap();
    peer.accept(pending, &answer.sdp);
    w.peers.push(peer);
    w.run_until(Duration::from_secs(10), |w| w.peers[0].frames() >= 5);
    assert_eq!(w.core.stats().pair_types, [0, 0, 1, 0], "prflx");
}

#[test]
fn a_peer_that_falls_silent_is_removed_and_the_stream_released() {
    let mut w = World::new(Duration::from_secs(3));
    let (p, id) = w.join(peer_addr(0));
    w.run_until(Duration::from_secs(10), |w| w.peers[p].frames() >= 5);
    w.peers[p].muted = true;
    let muted_at = w.now;
    w.run_until(Duration::from_secs(10), |w| w.core.viewer_count() == 0);
    let took = w.now - muted_at;
    assert!(
        took > Duration::from_millis(2500) && took <= Duration::from_secs(3),
        "removed {took:?} after the peer's last datagram at most, want the 3 s silence timeout"
    );
    assert!(w.core_events.contains(&CoreEvent::ViewerRemoved {
        viewer: id,
        why: RemoveReason::Dead
    }));
    assert!(
        !w.subscribed,
        "no video viewer left: the frame stream is released"
    );
    assert_eq!(w.core.stats().timed_out, 1);
}

#[test]
fn a_second_viewer_starts_from_the_cached_gop_without_a_keyframe_request() {
    let mut w = World::new(Duration::from_secs(15));
    let (a, _) = w.join(peer_addr(0));
    w.run_until(Duration::from_secs(10), |w| w.peers[a].frames() >= 10);
    let keyframes = w.keyframes.len();
    let (b, _) = w.join(peer_addr(1));
    w.run_until(Duration::from_secs(10), |w| w.peers[b].frames() >= 1);
    assert_eq!(
        w.keyframes.len(),
        keyframes,
        "the GOP cache served the second viewer: {:?}",
        w.keyframes
    );
}

#[test]
fn trickled_candidates_count_against_the_budget_and_close_frees_the_viewer() {
    let mut w = World::new(Duration::from_secs(15));
    let (_, id) = w.join(peer_addr(0));
    let etag = {
        // The ETag is the viewer's; a PATCH with a stale one is refused.
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        w.core.handle_command(
            w.now,
            Command::Patch {
                id,
                if_match: Some("\"stale\"".into()),
                candidates: vec![],
                reply,
            },
        );
        assert_eq!(rx.try_recv().unwrap(), Err(RtcError::PreconditionFailed));
        "*".to_owned()
    };
    let max = w.core.shared.sdp_limits.max_candidates;
    let too_many: Vec<Candidate> = (0..=max)
        .map(|i| {
            Candidate::host(
                SocketAddr::from((Ipv4Addr::new(10, 1, 0, 1), 1000 + i as u16)),
                "udp",
            )
            .unwrap()
        })
        .collect();
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    w.core.handle_command(
        w.now,
        Command::Patch {
            id,
            if_match: Some(etag.clone()),
            candidates: too_many,
            reply,
        },
    );
    assert!(matches!(
        rx.try_recv().unwrap(),
        Err(RtcError::BadFragment(_))
    ));
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    w.core.handle_command(w.now, Command::Close { id, reply });
    assert_eq!(rx.try_recv().unwrap(), Ok(()));
    w.drain_core();
    assert!(w.core_events.contains(&CoreEvent::ViewerRemoved {
        viewer: id,
        why: RemoveReason::Closed
    }));
    assert_eq!(w.core.viewer_count(), 0);
    assert!(!w.subscribed);
}

#[test]
fn junk_and_strangers_are_counted_not_routed() {
    let mut w = World::new(Duration::from_secs(15));
    w.join(peer_addr(0));
    let stranger = peer_addr(9);
    w.core
        .handle_datagram(w.now, Via::Udp, stranger, engine_addr(), b"\x00\x01junk");
    w.core
        .handle_datagram(w.now, Via::Udp, stranger, engine_addr(), &[0x80; 40]);
    assert_eq!(w.core.stats().datagrams_unrouted, 2);
}

/// An empty WHEP PATCH; the addresses of the server candidates it returns.
fn patch(w: &mut World, id: ViewerId) -> Result<Vec<SocketAddr>, RtcError> {
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    w.core.handle_command(
        w.now,
        Command::Patch {
            id,
            if_match: Some("*".into()),
            candidates: vec![],
            reply,
        },
    );
    rx.try_recv()
        .unwrap()
        .map(|c| c.iter().map(Candidate::addr).collect())
}

/// A STUN client for `server` on the engine's address, answered in process with `mapped`.
fn with_stun(w: &mut World, server: SocketAddr, mapped: SocketAddr) {
    w.stun_server = Some((server, mapped));
    let stun = crate::rtc::stun::StunClient::new(
        "stun:test".into(),
        server,
        engine_addr(),
        Duration::from_secs(30),
        w.now,
    );
    w.core.add_sidecar(Box::new(stun), w.now);
    w.drain_core();
}

#[test]
fn a_stun_answer_becomes_a_srflx_candidate_in_new_answers_and_health() {
    let mut w = World::with_ice(Duration::from_secs(15), true);
    let server = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 3478));
    let mapped = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 5), 41000));
    with_stun(&mut w, server, mapped);
    assert!(
        w.core_events.contains(&CoreEvent::CandidatesChanged),
        "{:?}",
        w.core_events
    );
    assert_eq!(w.core.local_candidates().len(), 1);
    assert_eq!(w.core.local_candidates()[0].addr(), mapped);
    let health = w.core.stats().ice;
    assert_eq!(health.len(), 1);
    assert_eq!((health[0].kind, health[0].state.as_str()), ("stun", "ok"));
    assert_eq!(health[0].candidate, Some(mapped));
    // A new viewer's answer carries it, and full ICE still connects and plays.
    let (mut peer, offer, pending) = Peer::new(peer_addr(0), w.now);
    let (viewer, answer) = accept_offer(&w.core.shared, &offer, ViewerKind::Whep, w.now).unwrap();
    assert!(
        answer.sdp.contains("203.0.113.5 41000 typ srflx"),
        "{}",
        answer.sdp
    );
    assert!(
        !answer.sdp.contains("a=ice-lite"),
        "full ICE: {}",
        answer.sdp
    );
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    w.core.handle_command(
        w.now,
        Command::Register {
            viewer: Box::new(viewer),
            reply,
        },
    );
    rx.try_recv().unwrap().unwrap();
    peer.accept(pending, &answer.sdp);
    w.peers.push(peer);
    w.run_until(Duration::from_secs(10), |w| w.peers[0].frames() >= 5);
    assert_eq!(patch(&mut w, answer.id), Ok(vec![]), "it was in the answer");
}

#[test]
fn without_stun_the_answer_is_ice_lite_with_host_candidates_only() {
    let mut w = World::new(Duration::from_secs(15));
    let (_, offer, _) = Peer::new(peer_addr(0), w.now);
    let (_, answer) = accept_offer(&w.core.shared, &offer, ViewerKind::Whep, w.now).unwrap();
    assert!(answer.sdp.contains("a=ice-lite"), "{}", answer.sdp);
    assert!(!answer.sdp.contains("srflx"), "{}", answer.sdp);
    w.step();
    assert!(
        w.stray.is_empty(),
        "nothing is sent anywhere but to viewers"
    );
    assert!(w.core.stats().ice.is_empty());
}

#[test]
fn a_srflx_candidate_found_later_is_added_to_existing_viewers() {
    let mut w = World::with_ice(Duration::from_secs(15), true);
    let (p, id) = w.join(peer_addr(0));
    w.run_until(Duration::from_secs(10), |w| w.peers[p].frames() >= 1);
    assert_eq!(patch(&mut w, id), Ok(vec![]), "nothing new yet");
    let server = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 3478));
    let mapped = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 5), 41000));
    with_stun(&mut w, server, mapped);
    assert_eq!(w.core.local_candidates().len(), 1);
    // The peer learns of it in the response to its next PATCH, once.
    assert_eq!(patch(&mut w, id), Ok(vec![mapped]));
    assert_eq!(patch(&mut w, id), Ok(vec![]));
    // The viewer keeps playing; it now has the candidate too (str0m pairs it).
    let frames = w.peers[p].frames();
    w.run_until(Duration::from_secs(5), |w| {
        w.peers[p].frames() >= frames + 10
    });
}

const TURN_SERVER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 50)), 3478);
const RELAYED: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 50)), 50000);

/// A stand-in for a TURN allocation behind the [`Sidecar`] seam: datagrams to and from the
/// server are `peer address (6 bytes) + payload`.
mod fake_turn {
    use super::*;

    pub fn encode(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let SocketAddr::V4(v4) = peer else {
            panic!("IPv4 only")
        };
        let mut out = v4.ip().octets().to_vec();
        out.extend_from_slice(&v4.port().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub fn decode(data: &[u8]) -> (SocketAddr, &[u8]) {
        let ip = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
        let port = u16::from_be_bytes([data[4], data[5]]);
        (SocketAddr::from((ip, port)), &data[6..])
    }

    #[derive(Default)]
    pub struct Relay {
        pub transmits: VecDeque<CoreTransmit>,
        pub events: VecDeque<SidecarEvent>,
        pub permissions: Vec<SocketAddr>,
        pub relayed_bytes: u64,
        pub announced: bool,
    }

    impl Sidecar for Relay {
        fn name(&self) -> &str {
            "turn"
        }
        fn claims(&self, via: Via, source: SocketAddr) -> bool {
            via == Via::Udp && source == TURN_SERVER
        }
        fn handle_datagram(&mut self, _: Instant, _: Via, _: SocketAddr, contents: &[u8]) {
            let (peer, payload) = decode(contents);
            self.relayed_bytes += payload.len() as u64;
            self.events.push_back(SidecarEvent::Relayed {
                peer,
                relayed: RELAYED,
                contents: payload.to_vec(),
            });
        }
        fn handle_timeout(&mut self, _: Instant) {
            if !self.announced {
                self.announced = true;
                let candidate = Candidate::relayed(RELAYED, engine_addr(), "udp").unwrap();
                self.events.push_back(SidecarEvent::Candidate { candidate });
            }
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_transmit(&mut self) -> Option<CoreTransmit> {
            self.transmits.pop_front()
        }
        fn poll_event(&mut self) -> Option<SidecarEvent> {
            self.events.pop_front()
        }
        fn relayed_addr(&self) -> Option<SocketAddr> {
            Some(RELAYED)
        }
        fn send_relayed(&mut self, _: Instant, peer: SocketAddr, contents: &[u8]) -> bool {
            self.relayed_bytes += contents.len() as u64;
            self.transmits.push_back(CoreTransmit {
                via: Via::Udp,
                destination: TURN_SERVER,
                contents: encode(peer, contents),
            });
            true
        }
        fn handle_remote_candidate(&mut self, _: Instant, addr: SocketAddr) {
            self.permissions.push(addr);
        }
        fn health(&self) -> SidecarHealth {
            SidecarHealth {
                kind: "turn",
                server: "turn:fake".into(),
                state: format!("ready-{}", self.permissions.len()),
                up: true,
                candidate: Some(RELAYED),
                error: None,
                bytes_relayed: self.relayed_bytes,
            }
        }
    }
}

#[test]
fn a_peer_reachable_only_through_the_relay_sidecar_plays_over_it() {
    let mut w = World::with_ice(Duration::from_secs(15), true);
    w.core
        .add_sidecar(Box::new(fake_turn::Relay::default()), w.now);
    w.drain_core();
    assert_eq!(w.core.local_candidates().len(), 1, "the relayed candidate");
    let (mut peer, offer, pending) = Peer::new(peer_addr(0), w.now);
    peer.relay_only = true;
    let (viewer, answer) = accept_offer(&w.core.shared, &offer, ViewerKind::Whep, w.now).unwrap();
    assert!(answer.sdp.contains("typ relay"), "{}", answer.sdp);
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    w.core.handle_command(
        w.now,
        Command::Register {
            viewer: Box::new(viewer),
            reply,
        },
    );
    rx.try_recv().unwrap().unwrap();
    peer.accept(pending, &answer.sdp);
    w.peers.push(peer);
    w.run_until(Duration::from_secs(15), |w| w.peers[0].frames() >= 10);
    let s = w.core.stats();
    assert_eq!(s.pair_types, [0, 0, 0, 1], "relay");
    let turn = &s.ice[0];
    assert_eq!(
        turn.state, "ready-1",
        "the offer's candidate reached the sidecar: {turn:?}"
    );
    assert!(turn.bytes_relayed > 10 * 800, "{turn:?}");
}

fn f(keyframe: bool, len: usize, ticks: u64) -> VideoFrame {
    VideoFrame {
        data: Arc::from(vec![0u8; len]),
        keyframe,
        ticks,
    }
}

#[test]
fn gop_starts_at_a_keyframe_and_restarts_at_the_next() {
    let mut g = Gop::default();
    g.push(&f(false, 10, 1), 0);
    assert!(g.frames.is_empty(), "no cache before a keyframe");
    g.push(&f(true, 10, 2), 0);
    g.push(&f(false, 10, 3), 0);
    assert_eq!(g.frames.len(), 2);
    g.push(&f(true, 10, 4), 0);
    assert_eq!(g.frames.len(), 1);
    assert!(g.frames[0].keyframe);
}

#[test]
fn gop_is_dropped_on_a_hole_or_when_too_big() {
    let mut g = Gop::default();
    g.push(&f(true, 10, 1), 0);
    g.push(&f(false, 10, 2), 3);
    assert!(
        g.frames.is_empty(),
        "the engine skipped frames: the cache has a hole"
    );
    g.push(&f(false, 10, 3), 3);
    assert!(g.frames.is_empty(), "stays empty until the next keyframe");
    g.push(&f(true, GOP_MAX_BYTES, 4), 3);
    assert_eq!(g.frames.len(), 1);
    g.push(&f(false, 1, 5), 3);
    assert!(g.frames.is_empty(), "over the byte bound");
    g.push(&f(true, 1, 6), 3);
    for t in 0..GOP_MAX_FRAMES as u64 {
        g.push(&f(false, 1, 7 + t), 3);
    }
    assert!(g.frames.is_empty(), "over the frame bound");
}

#[test]
fn stun_and_turn_on_one_server_each_get_their_own_answers() {
    // coturn serves STUN and TURN on one port: the STUN client's answers must reach it even
    // though the TURN allocation (added first) claims every datagram from that address.
    let mut w = World::with_ice(Duration::from_secs(15), true);
    w.core
        .add_sidecar(Box::new(fake_turn::Relay::default()), w.now);
    w.drain_core();
    let mapped = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 5), 41000));
    with_stun(&mut w, TURN_SERVER, mapped);
    let addrs: Vec<SocketAddr> = w.core.local_candidates().iter().map(|c| c.addr()).collect();
    assert!(addrs.contains(&mapped), "{addrs:?}");
    let stun = w.core.stats().ice.into_iter().find(|h| h.kind == "stun");
    assert_eq!(stun.map(|h| h.state), Some("ok".to_owned()));
}

#[test]
fn a_frame_leaves_in_the_turn_it_is_written_not_on_a_timer_after_it() {
    // str0m's pacer releases what was just written on its next timeout, which it asks for at
    // once: the core gives it that timeout in the same turn, so a frame costs one wake-up of
    // the engine, not two, and leaves a millisecond or two sooner.
    let mut w = World::new(Duration::from_secs(15));
    let (p, _) = w.join(peer_addr(0));
    w.run_until(Duration::from_secs(10), |w| w.peers[p].frames() >= 3);
    w.subscribed = false; // the test writes the next frame itself
    w.run_until(Duration::from_secs(1), |w| {
        w.core
            .poll_timeout()
            .is_some_and(|t| t > w.now + Duration::from_millis(5))
    });
    let before = w.core.stats().frames_sent;
    w.core.handle_frame(w.now, &fake_frame(w.frame_n, false), 0);
    let mut sent = 0;
    while let Some(t) = w.core.poll_transmit() {
        assert_eq!(t.destination, peer_addr(0));
        sent += 1;
    }
    assert!(sent >= 1, "the frame's RTP went out in the same turn");
    assert_eq!(w.core.stats().frames_sent, before + 1);
    assert!(
        w.core.poll_timeout().is_some_and(|t| t > w.now),
        "nothing is left due now"
    );
}
