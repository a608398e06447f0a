//! Server-reflexive candidates: STUN Binding requests (RFC 8489) to one configured server from
//! the engine's UDP socket, as a [`Sidecar`] beside str0m. No IO: the core routes the server's
//! datagrams here (by source address; the transaction id is checked), and sends what
//! [`Sidecar::poll_transmit`] returns.
//!
//! One request at a time: retransmitted after 500 ms, 1 s and 2 s; unanswered 4 s after the
//! last, it counts as a failure. A failure is retried with backoff (5 s doubling to 5 min) and
//! logged once (a warning) until the server answers again (an info line). An answer schedules
//! the next request after `[ice] stun_refresh` (NAT bindings expire). A new or changed mapped
//! address becomes a candidate ([`SidecarEvent::Candidate`]), the old one is withdrawn; a
//! mapped address that is the base itself (no NAT between the device and the server) is no
//! candidate.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_proto::types::attribute::{ErrorCode, XorMappedAddress};
use stun_proto::types::message::{
    Message, MessageClass, MessageWrite, MessageWriteVec, TransactionId, BINDING,
};

use super::core::{CoreTransmit, Sidecar, SidecarEvent, SidecarHealth, Via};

/// When a request is sent again while unanswered (after the first send).
const RETRANSMITS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];
/// How long the last send is waited for.
const LAST_WAIT: Duration = Duration::from_secs(4);
/// First retry after a failure, doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Where a [`StunClient`] is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunState {
    /// No answer yet (the first request is out, or about to be).
    Starting,
    /// The server answered; the mapped address is current.
    Ok,
    /// The last attempt failed (no answer, or an error response); retried with backoff.
    Failing,
}

impl StunState {
    /// As shown in `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            StunState::Starting => "starting",
            StunState::Ok => "ok",
            StunState::Failing => "failing",
        }
    }
}

/// A request waiting for its answer.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: TransactionId,
    /// Sends made so far (1 = the first).
    sends: usize,
    /// When to send again, or give up.
    due: Instant,
}

/// Binding requests to one STUN server; the mapped address becomes a server-reflexive
/// candidate on `base`.
#[derive(Debug)]
pub struct StunClient {
    /// As configured (for logs and `/health`).
    url: String,
    server: SocketAddr,
    /// The local address the requests leave from (the candidate's base).
    base: SocketAddr,
    refresh: Duration,
    state: StunState,
    in_flight: Option<InFlight>,
    /// When the next request goes out (while none is in flight).
    next_request: Instant,
    mapped: Option<SocketAddr>,
    failures: u32,
    last_error: Option<String>,
    transmits: VecDeque<CoreTransmit>,
    events: VecDeque<SidecarEvent>,
}

impl StunClient {
    /// A client for `server` (resolved from `url`) whose requests leave from `base`; the
    /// first request goes out at the first [`Sidecar::handle_timeout`].
    pub fn new(
        url: String,
        server: SocketAddr,
        base: SocketAddr,
        refresh: Duration,
        now: Instant,
    ) -> Self {
        Self {
            url,
            server,
            base,
            refresh,
            state: StunState::Starting,
            in_flight: None,
            next_request: now,
            mapped: None,
            failures: 0,
            last_error: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Where it is in its cycle.
    pub fn state(&self) -> StunState {
        self.state
    }

    /// The server-reflexive address, once known.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    fn send_request(&mut self, now: Instant) {
        let id = match &self.in_flight {
            Some(f) => f.id,
            None => TransactionId::generate(),
        };
        let msg = Message::builder(
            stun_proto::types::message::MessageType::from_class_method(
                MessageClass::Request,
                BINDING,
            ),
            id,
            MessageWriteVec::new(),
        );
        self.transmits.push_back(CoreTransmit {
            via: Via::Udp,
            destination: self.server,
            contents: msg.finish(),
        });
        let sends = self.in_flight.map_or(0, |f| f.sends) + 1;
        let wait = RETRANSMITS.get(sends - 1).copied().unwrap_or(LAST_WAIT);
        self.in_flight = Some(InFlight {
            id,
            sends,
            due: now + wait,
        });
    }

    fn fail(&mut self, why: String, now: Instant) {
        self.in_flight = None;
        self.failures += 1;
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (self.failures - 1).min(10))
            .min(MAX_BACKOFF);
        self.next_request = now + backoff;
        if self.state != StunState::Failing {
            tracing::warn!(server = %self.url, addr = %self.server, error = %why, retry_in = ?backoff, "STUN server not usable; retrying with backoff (logged once)");
        } else {
            tracing::debug!(server = %self.url, error = %why, retry_in = ?backoff, "STUN retry failed");
        }
        self.state = StunState::Failing;
        self.last_error = Some(why);
    }

    fn succeed(&mut self, mapped: SocketAddr, now: Instant) {
        self.in_flight = None;
        if self.state == StunState::Failing {
            tracing::info!(server = %self.url, %mapped, "STUN server answers again");
        }
        self.failures = 0;
        self.last_error = None;
        self.state = StunState::Ok;
        self.next_request = now + self.refresh;
        if self.mapped == Some(mapped) {
            return;
        }
        if let Some(old) = self.mapped.take() {
            if old != self.base {
                self.events
                    .push_back(SidecarEvent::CandidateGone { addr: old });
            }
        }
        self.mapped = Some(mapped);
        if mapped == self.base {
            tracing::info!(server = %self.url, %mapped, "STUN: no NAT towards this server (the mapped address is the host's)");
            return;
        }
        match str0m::Candidate::server_reflexive(mapped, self.base, "udp") {
            Ok(candidate) => {
                tracing::info!(server = %self.url, %mapped, base = %self.base, "server-reflexive candidate");
                self.events.push_back(SidecarEvent::Candidate { candidate });
            }
            Err(e) => {
                tracing::warn!(server = %self.url, %mapped, error = %e, "STUN mapped address is no usable candidate")
            }
        }
    }
}

impl Sidecar for StunClient {
    fn name(&self) -> &str {
        "stun"
    }

    fn claims(&self, via: Via, source: SocketAddr) -> bool {
        via == Via::Udp && source == self.server
    }

    fn handle_datagram(&mut self, now: Instant, _via: Via, _source: SocketAddr, contents: &[u8]) {
        let Some(flight) = self.in_flight else {
            return; // late, or a duplicate answer
        };
        let Ok(msg) = Message::from_bytes(contents) else {
            tracing::trace!(server = %self.url, "not a STUN message from the STUN server");
            return;
        };
        if msg.transaction_id() != flight.id || !msg.has_method(BINDING) {
            return;
        }
        if msg.has_class(MessageClass::Success) {
            match msg.attribute::<XorMappedAddress>() {
                Ok(x) => {
                    let mapped = x.addr(msg.transaction_id());
                    if mapped.is_ipv4() == self.base.is_ipv4() {
                        self.succeed(mapped, now);
                    } else {
                        self.fail(format!("mapped address {mapped} of another IP family"), now);
                    }
                }
                Err(_) => self.fail("answer without XOR-MAPPED-ADDRESS".into(), now),
            }
        } else if msg.has_class(MessageClass::Error) {
            let why = match msg.attribute::<ErrorCode>() {
                Ok(e) => format!("error response {} {}", e.code(), e.reason()),
                Err(_) => "error response".to_owned(),
            };
            self.fail(why, now);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.in_flight {
            Some(f) if now >= f.due => {
                if f.sends > RETRANSMITS.len() {
                    self.fail(format!("no answer after {} requests", f.sends), now);
                } else {
                    self.send_request(now);
                }
            }
            Some(_) => {}
            None if now >= self.next_request => self.send_request(now),
            None => {}
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.in_flight.map_or(self.next_request, |f| f.due))
    }

    fn poll_transmit(&mut self) -> Option<CoreTransmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<SidecarEvent> {
        self.events.pop_front()
    }

    fn health(&self) -> SidecarHealth {
        SidecarHealth {
            kind: "stun",
            server: self.url.clone(),
            state: self.state.as_str().to_owned(),
            up: self.state == StunState::Ok,
            candidate: self.mapped.filter(|m| *m != self.base),
            error: self.last_error.clone(),
            bytes_relayed: 0,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use stun_proto::types::prelude::*;

    /// A STUN server answered in process: the request's transaction, `mapped` in
    /// XOR-MAPPED-ADDRESS.
    pub(crate) fn answer(request: &[u8], mapped: SocketAddr) -> Vec<u8> {
        let req = Message::from_bytes(request).unwrap();
        assert!(req.has_class(MessageClass::Request) && req.has_method(BINDING));
        let mut resp = Message::builder_success(&req, MessageWriteVec::new());
        resp.add_attribute(&XorMappedAddress::new(mapped, req.transaction_id()))
            .unwrap();
        resp.finish()
    }

    fn error_answer(request: &[u8]) -> Vec<u8> {
        let req = Message::from_bytes(request).unwrap();
        let mut resp = Message::builder_error(&req, MessageWriteVec::new());
        resp.add_attribute(&ErrorCode::builder(400).reason("Bad").build().unwrap())
            .unwrap();
        resp.finish()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn client(now: Instant) -> StunClient {
        StunClient::new(
            "stun:stun.test".into(),
            addr("192.0.2.1:3478"),
            addr("10.0.0.1:5000"),
            Duration::from_secs(30),
            now,
        )
    }

    #[test]
    fn an_answer_becomes_a_srflx_candidate_and_is_refreshed() {
        let t0 = Instant::now();
        let mut c = client(t0);
        c.handle_timeout(t0);
        let req = c.poll_transmit().unwrap();
        assert_eq!(req.destination, addr("192.0.2.1:3478"));
        assert!(c.poll_transmit().is_none());
        assert!(!c.claims(Via::Udp, addr("192.0.2.9:3478")));
        assert!(c.claims(Via::Udp, addr("192.0.2.1:3478")));
        c.handle_datagram(
            t0,
            Via::Udp,
            addr("192.0.2.1:3478"),
            &answer(&req.contents, addr("203.0.113.7:61000")),
        );
        match c.poll_event() {
            Some(SidecarEvent::Candidate { candidate }) => {
                assert_eq!(candidate.addr(), addr("203.0.113.7:61000"));
                assert_eq!(candidate.kind(), str0m::CandidateKind::ServerReflexive);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.state(), StunState::Ok);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        // Refresh: the same mapping is no new event; a changed one replaces the old.
        let t1 = t0 + Duration::from_secs(30);
        c.handle_timeout(t1);
        let req = c.poll_transmit().unwrap();
        c.handle_datagram(
            t1,
            Via::Udp,
            addr("192.0.2.1:3478"),
            &answer(&req.contents, addr("203.0.113.7:61000")),
        );
        assert!(c.poll_event().is_none());
        let t2 = t1 + Duration::from_secs(30);
        c.handle_timeout(t2);
        let req = c.poll_transmit().unwrap();
        c.handle_datagram(
            t2,
            Via::Udp,
            addr("192.0.2.1:3478"),
            &answer(&req.contents, addr("203.0.113.7:62000")),
        );
        assert_eq!(
            c.poll_event(),
            Some(SidecarEvent::CandidateGone {
                addr: addr("203.0.113.7:61000")
            })
        );
        assert!(matches!(
            c.poll_event(),
            Some(SidecarEvent::Candidate { .. })
        ));
        assert_eq!(c.health().candidate, Some(addr("203.0.113.7:62000")));
    }

    #[test]
    fn a_silent_server_is_retransmitted_to_then_retried_with_backoff() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let mut now = t0;
        let mut sends = 0;
        while c.state() != StunState::Failing {
            c.handle_timeout(now);
            while c.poll_transmit().is_some() {
                sends += 1;
            }
            now = c.poll_timeout().unwrap();
        }
        assert_eq!(sends, 4, "the first send and three retransmits");
        assert_eq!(now - t0, Duration::from_millis(7500) + FIRST_BACKOFF);
        assert!(c.health().error.unwrap().contains("no answer"));
        // Backoff doubles: 5 s, 10 s, …
        c.handle_timeout(now);
        let req = c.poll_transmit().unwrap();
        let stale_answer = answer(&req.contents, addr("203.0.113.7:1"));
        for _ in 0..4 {
            now = c.poll_timeout().unwrap();
            c.handle_timeout(now);
            while c.poll_transmit().is_some() {}
        }
        assert_eq!(c.poll_timeout().unwrap() - now, FIRST_BACKOFF * 2);
        // A late answer for a finished transaction is ignored.
        c.handle_datagram(now, Via::Udp, addr("192.0.2.1:3478"), &stale_answer);
        assert!(c.poll_event().is_none());
        assert_eq!(c.state(), StunState::Failing);
    }

    #[test]
    fn error_responses_junk_and_foreign_transactions_never_make_a_candidate() {
        let t0 = Instant::now();
        let mut c = client(t0);
        c.handle_timeout(t0);
        let req = c.poll_transmit().unwrap();
        let server = addr("192.0.2.1:3478");
        c.handle_datagram(t0, Via::Udp, server, b"junk");
        c.handle_datagram(t0, Via::Udp, server, &[0u8; 20]);
        let other = Message::builder_request(BINDING, MessageWriteVec::new()).finish();
        c.handle_datagram(t0, Via::Udp, server, &answer(&other, addr("203.0.113.7:1")));
        assert!(c.poll_event().is_none());
        assert_eq!(c.state(), StunState::Starting);
        c.handle_datagram(t0, Via::Udp, server, &error_answer(&req.contents));
        assert!(c.poll_event().is_none());
        assert_eq!(c.state(), StunState::Failing);
        assert!(c.health().error.unwrap().contains("400"));
    }

    #[test]
    fn no_nat_means_no_candidate() {
        let t0 = Instant::now();
        let mut c = client(t0);
        c.handle_timeout(t0);
        let req = c.poll_transmit().unwrap();
        c.handle_datagram(
            t0,
            Via::Udp,
            addr("192.0.2.1:3478"),
            &answer(&req.contents, addr("10.0.0.1:5000")),
        );
        assert!(c.poll_event().is_none());
        assert_eq!(c.state(), StunState::Ok);
        assert_eq!(c.health().candidate, None);
    }
}
