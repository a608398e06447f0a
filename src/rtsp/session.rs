//! One RTSP client connection as a pure state machine: bytes and frames in, bytes, packets and
//! requests to its owner out. No sockets, no clock (time comes in as `Instant`), no tasks.
//!
//! The owner (`rtsp::server`) feeds what the client sends to
//! [`handle_input`](Session::handle_input), every frame of the stream it subscribed to (on
//! [`Output::Subscribe`]) to [`handle_frame`](Session::handle_frame), and calls
//! [`handle_timeout`](Session::handle_timeout) at [`poll_timeout`](Session::poll_timeout).
//! After each input it drains [`poll_output`](Session::poll_output) (the crate's draining rule).
//!
//! Request handling, in order: a whole request within `max_request_bytes` (else 400 and close),
//! RTSP/1.0 (505), a numeric `CSeq` (400), the credentials for everything but OPTIONS (401 with
//! a Digest and a Basic challenge), the path (404), then the method: OPTIONS, DESCRIBE, SETUP
//! (only after DESCRIBE: 455), PLAY (only after SETUP: 455; a wrong `Session`: 454), TEARDOWN
//! (then the connection closes), GET_PARAMETER (keep-alive); any other method 501. Interleaved
//! data from the client (`$` frames, RTCP receiver reports) is skipped as it streams in, never
//! buffered whole.
//!
//! A DESCRIBE needs the stream's real SPS and PPS: the session subscribes and answers with the
//! next IDR's (within `describe_timeout`, else 503). A PLAY asks for an IDR and sends nothing
//! until one comes, so a client always starts at a keyframe.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtsp_types::headers::{self, Transports};
use rtsp_types::{Message, Method, ParseError, Request, Version};

use super::credentials;
use super::rtp::{self, RtpSender, CLOCK_RATE};
use super::sdp::{self, ParamSets, AUDIO_CONTROL, TRACK_CONTROL};
use crate::audio::AudioFrame;
use crate::media::EncodedFrame;

/// Methods this server answers (the `Public` header).
pub const PUBLIC: &str = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER";
/// Time between RTCP sender reports while playing.
pub const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// The RTCP CNAME of every stream.
const CNAME: &str = "snaprtcd";

/// What a session is made with: its identity, its limits and its peer.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// The stream's path, `/stream`.
    pub path: String,
    /// The token clients must give as their password; `None` with `[server] auth = "none"`.
    pub token: Option<String>,
    /// The Digest nonce of this connection (random).
    pub nonce: String,
    /// The RTSP session id (random).
    pub session_id: String,
    /// The RTP stream's SSRC (random).
    pub ssrc: u32,
    /// The first RTP sequence number (random).
    pub first_seq: u16,
    /// The RTP time of the pipeline's time zero (random).
    pub rtp_time_base: u32,
    /// A UDP session (or one not playing) that hears nothing from its client this long ends.
    pub session_timeout: Duration,
    /// How long a DESCRIBE waits for an IDR to take the SPS and PPS from.
    pub describe_timeout: Duration,
    /// Largest request (head and body).
    pub max_request_bytes: usize,
    /// The address the client reached (the SDP's `o=` and `c=` lines).
    pub server_ip: IpAddr,
    /// The client's address: UDP packets go to its IP, at the ports it asked for.
    pub peer: SocketAddr,
    /// Wall-clock time at `start`, as time since the Unix epoch (for RTCP's NTP timestamps).
    pub wall_clock: Duration,
    /// The instant `wall_clock` was read.
    pub start: Instant,
    /// The Opus track, when the daemon has audio (`None`: video only).
    pub audio: Option<AudioTrack>,
}

/// The identity of a session's audio RTP stream (random, like the video's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioTrack {
    /// Its SSRC.
    pub ssrc: u32,
    /// Its first sequence number.
    pub first_seq: u16,
    /// Its RTP time (48 kHz) at the media epoch.
    pub rtp_time_base: u32,
    /// Channels the microphone gives (the SDP's `stereo=`).
    pub channels: u32,
}

/// What the owner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the client's TCP connection, in order (responses and interleaved
    /// RTP/RTCP).
    Send(Bytes),
    /// Send one datagram to the client over UDP (`rtcp`: from the RTCP socket, else from the
    /// RTP one).
    SendUdp {
        /// The client's port for it.
        to: SocketAddr,
        /// Which server socket sends it.
        rtcp: bool,
        /// From the audio track's socket pair (else the video's).
        audio: bool,
        /// The RTP or RTCP packet.
        packet: Bytes,
    },
    /// Start feeding this session the encoded frames (the first frames subscription).
    Subscribe,
    /// Stop feeding this session the encoded frames: it plays the audio track only (DESCRIBE
    /// subscribed to learn SPS/PPS; an audio listener should not wake for every video frame).
    Unsubscribe,
    /// Start feeding this session the audio frames ([`Session::handle_audio`]).
    SubscribeAudio,
    /// Ask the pipeline for an IDR (a client is about to play).
    RequestKeyframe,
    /// Bind a pair of UDP sockets for RTP and RTCP (for the audio track, or the video) and
    /// report their ports (or the failure) with [`Session::handle_udp_opened`].
    OpenUdp {
        /// For the audio track.
        audio: bool,
    },
    /// Flush what was sent and close the connection.
    Close,
}

/// How RTP reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Interleaved in the RTSP connection on these channels.
    Tcp { rtp: u8, rtcp: u8 },
    /// Unicast datagrams to these addresses, from the server ports `server`.
    Udp {
        rtp: SocketAddr,
        rtcp: SocketAddr,
        server: (u16, u16),
    },
}

/// Counters of one session, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Access units sent.
    pub frames_sent: u64,
    /// Access units not sent while waiting for a keyframe after PLAY.
    pub frames_skipped: u64,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Requests answered with an error status.
    pub bad_requests: u64,
}

/// A request waiting for something before it is answered.
#[derive(Debug, Clone)]
enum Pending {
    /// DESCRIBE, waiting for an IDR until `deadline`.
    Describe {
        cseq: u32,
        base: String,
        deadline: Instant,
    },
    /// SETUP with UDP, waiting for the owner's sockets.
    Udp {
        cseq: u32,
        client: (u16, u16),
        audio: bool,
    },
}

/// The audio track's sending state.
#[derive(Debug)]
struct AudioState {
    track: AudioTrack,
    sender: RtpSender,
    transport: Option<Transport>,
    last_rtp: Option<(u32, Instant)>,
}

/// One client connection.
#[derive(Debug)]
pub struct Session {
    settings: SessionSettings,
    input: Vec<u8>,
    /// Bytes of an interleaved frame from the client still to be skipped.
    skip: usize,
    outputs: VecDeque<Output>,
    pending: Option<Pending>,
    params: Option<ParamSets>,
    described: bool,
    transport: Option<Transport>,
    playing: bool,
    waiting_for_keyframe: bool,
    subscribed: bool,
    sender: RtpSender,
    /// RTP time of the last frame sent, and when it was handled (to date sender reports).
    last_rtp: Option<(u32, Instant)>,
    next_report: Option<Instant>,
    /// The audio track, when the daemon has audio.
    audio: Option<AudioState>,
    last_heard: Instant,
    closed: bool,
    stats: SessionStats,
}

impl Session {
    /// A new connection at `now`.
    pub fn new(settings: SessionSettings, now: Instant) -> Self {
        let sender = RtpSender::new(settings.ssrc, settings.first_seq);
        let audio = settings.audio.map(|track| AudioState {
            track,
            sender: RtpSender::new(track.ssrc, track.first_seq),
            transport: None,
            last_rtp: None,
        });
        Self {
            audio,
            settings,
            input: Vec::new(),
            skip: 0,
            outputs: VecDeque::new(),
            pending: None,
            params: None,
            described: false,
            transport: None,
            playing: false,
            waiting_for_keyframe: true,
            subscribed: false,
            sender,
            last_rtp: None,
            next_report: None,
            last_heard: now,
            closed: false,
            stats: SessionStats::default(),
        }
    }

    /// Whether the client is being sent media.
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    /// Whether the session has closed (after [`Output::Close`]).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// This session's counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Bytes the client sent.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if self.closed {
            return;
        }
        self.last_heard = now;
        self.input.extend_from_slice(data);
        if self.pending.is_some() && self.input.len() > self.settings.max_request_bytes {
            // Requests pipelined behind one that waits are held, within the same budget.
            self.fail_connection(400, "Request Too Large");
            return;
        }
        self.process(now);
    }

    /// Bytes of the client's input held (a partial request, or requests waiting behind one
    /// that is not answered yet): at most `max_request_bytes` plus one read.
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// An RTCP packet arrived from the client over UDP (a receiver report: it is alive).
    pub fn handle_udp_rtcp(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// The owner's answer to [`Output::OpenUdp`]: the server's RTP and RTCP ports, or `None`
    /// when no sockets could be bound.
    pub fn handle_udp_opened(&mut self, ports: Option<(u16, u16)>, now: Instant) {
        let Some(Pending::Udp {
            cseq,
            client,
            audio,
        }) = self.pending.take()
        else {
            return;
        };
        match ports {
            Some(server) => {
                let ip = self.settings.peer.ip();
                let t = Transport::Udp {
                    rtp: SocketAddr::new(ip, client.0),
                    rtcp: SocketAddr::new(ip, client.1),
                    server,
                };
                let ssrc = match (&mut self.audio, audio) {
                    (Some(a), true) => {
                        a.transport = Some(t);
                        a.sender.ssrc()
                    }
                    _ => {
                        self.transport = Some(t);
                        self.sender.ssrc()
                    }
                };
                let transport = format!(
                    "RTP/AVP;unicast;client_port={}-{};server_port={}-{};ssrc={ssrc:08X}",
                    client.0, client.1, server.0, server.1,
                );
                self.setup_ok(cseq, transport);
            }
            None => self.error(cseq, 500, "Internal Server Error"),
        }
        self.process(now);
    }

    /// An encoded frame from the pipeline.
    pub fn handle_frame(&mut self, frame: &EncodedFrame, now: Instant) {
        if self.closed {
            return;
        }
        if frame.keyframe {
            if let Some(p) = ParamSets::from_access_unit(&frame.data) {
                self.params = Some(p);
            }
            if let Some(Pending::Describe { cseq, base, .. }) = self.pending.clone() {
                if self.params.is_some() {
                    self.pending = None;
                    self.describe_ok(cseq, &base);
                    self.process(now);
                }
            }
        }
        if !self.playing {
            return;
        }
        if self.waiting_for_keyframe && !frame.keyframe {
            self.stats.frames_skipped += 1;
            return;
        }
        self.waiting_for_keyframe = false;
        let rtp_time = self.rtp_time(frame.timestamp);
        match self.transport {
            Some(Transport::Tcp { rtp: channel, .. }) => {
                let mut out =
                    BytesMut::with_capacity(frame.data.len() + frame.data.len() / 64 + 64);
                let n = self.sender.packetize(&frame.data, rtp_time, |p| {
                    rtp::interleave(&mut out, channel, &p)
                });
                self.stats.packets_sent += n as u64;
                self.outputs.push_back(Output::Send(out.freeze()));
            }
            Some(Transport::Udp { rtp: to, .. }) => {
                let outputs = &mut self.outputs;
                let n = self.sender.packetize(&frame.data, rtp_time, |packet| {
                    outputs.push_back(Output::SendUdp {
                        to,
                        rtcp: false,
                        audio: false,
                        packet,
                    })
                });
                self.stats.packets_sent += n as u64;
            }
            None => return,
        }
        self.stats.frames_sent += 1;
        self.last_rtp = Some((rtp_time, now));
        if self.next_report.is_none_or(|t| t <= now) {
            self.send_report(now);
        }
    }

    /// An Opus frame from the audio pipeline: one RTP packet on the audio track while playing.
    pub fn handle_audio(&mut self, frame: &AudioFrame, now: Instant) {
        if self.closed || !self.playing {
            return;
        }
        let Some(a) = &mut self.audio else { return };
        let rtp_time = crate::audio::rtp_time(a.track.rtp_time_base, frame.timestamp);
        let packet = a.sender.opus(&frame.data, rtp_time);
        match a.transport {
            Some(Transport::Tcp { rtp: channel, .. }) => {
                let mut out = BytesMut::with_capacity(packet.len() + 4);
                rtp::interleave(&mut out, channel, &packet);
                self.outputs.push_back(Output::Send(out.freeze()));
            }
            Some(Transport::Udp { rtp: to, .. }) => self.outputs.push_back(Output::SendUdp {
                to,
                rtcp: false,
                audio: true,
                packet,
            }),
            None => return,
        }
        self.stats.packets_sent += 1;
        a.last_rtp = Some((rtp_time, now));
        if self.next_report.is_none_or(|t| t <= now) {
            self.send_report(now);
        }
    }

    /// Time is `now`: a DESCRIBE may have waited too long, a sender report may be due, a silent
    /// client may have timed out.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if let Some(Pending::Describe { cseq, deadline, .. }) = self.pending {
            if now >= deadline {
                self.pending = None;
                self.error(cseq, 503, "Service Unavailable");
                self.process(now);
            }
        }
        if self.playing && self.next_report.is_some_and(|t| t <= now) && self.has_sent() {
            self.send_report(now);
        }
        if self.idle_deadline().is_some_and(|t| t <= now) {
            self.close();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let describe = match self.pending {
            Some(Pending::Describe { deadline, .. }) => Some(deadline),
            _ => None,
        };
        let report = self.next_report.filter(|_| self.playing && self.has_sent());
        [describe, report, self.idle_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next thing to do; `None` when there is nothing.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A TCP client that is playing is alive while its connection is (its writes time out in
    /// the owner); anyone else must speak within the session timeout.
    fn idle_deadline(&self) -> Option<Instant> {
        let tcp = |t: Option<Transport>| matches!(t, Some(Transport::Tcp { .. }));
        let tcp_playing = self.playing
            && (tcp(self.transport) || tcp(self.audio.as_ref().and_then(|a| a.transport)));
        (!tcp_playing).then(|| self.last_heard + self.settings.session_timeout)
    }

    fn rtp_time(&self, t: Duration) -> u32 {
        let ticks = t.as_nanos() * u128::from(CLOCK_RATE) / 1_000_000_000;
        self.settings.rtp_time_base.wrapping_add(ticks as u32)
    }

    /// Whether a track has sent media (a sender report has something to report).
    fn has_sent(&self) -> bool {
        self.last_rtp.is_some() || self.audio.as_ref().is_some_and(|a| a.last_rtp.is_some())
    }

    /// Sender reports of both tracks, from one wall-clock reading: each maps `now` to its RTP
    /// clock by extrapolating its last packet's time, so a client lines the tracks up.
    fn send_report(&mut self, now: Instant) {
        let wall = self.settings.wall_clock + now.saturating_duration_since(self.settings.start);
        let ntp = rtp::ntp_timestamp(wall);
        let extrapolate = |(last, at): (u32, Instant), rate: u64| {
            let since = now.saturating_duration_since(at);
            last.wrapping_add((since.as_nanos() * u128::from(rate) / 1_000_000_000) as u32)
        };
        if let Some(last) = self.last_rtp {
            let sr = self
                .sender
                .sender_report(ntp, extrapolate(last, CLOCK_RATE), CNAME);
            self.send_rtcp(self.transport, sr, false);
        }
        if let Some(a) = &self.audio {
            if let Some(last) = a.last_rtp {
                let rate = u64::from(crate::audio::RTP_CLOCK);
                let sr = a.sender.sender_report(ntp, extrapolate(last, rate), CNAME);
                self.send_rtcp(a.transport, sr, true);
            }
        }
        self.next_report = Some(now + SENDER_REPORT_INTERVAL);
    }

    fn send_rtcp(&mut self, transport: Option<Transport>, sr: Bytes, audio: bool) {
        match transport {
            Some(Transport::Tcp { rtcp, .. }) => {
                let mut out = BytesMut::new();
                rtp::interleave(&mut out, rtcp, &sr);
                self.outputs.push_back(Output::Send(out.freeze()));
            }
            Some(Transport::Udp { rtcp, .. }) => self.outputs.push_back(Output::SendUdp {
                to: rtcp,
                rtcp: true,
                audio,
                packet: sr,
            }),
            None => {}
        }
    }

    /// Handle every whole message in the input, unless a request waits for its answer.
    fn process(&mut self, now: Instant) {
        while !self.closed && self.pending.is_none() {
            if self.skip > 0 {
                let n = self.skip.min(self.input.len());
                self.input.drain(..n);
                self.skip -= n;
                if self.skip > 0 {
                    return;
                }
            }
            if self.input.is_empty() {
                return;
            }
            if self.input[0] == b'$' {
                // Interleaved data from the client (RTCP receiver reports): skipped as it
                // streams in, whatever its length.
                if self.input.len() < 4 {
                    return;
                }
                self.skip = 4 + usize::from(u16::from_be_bytes([self.input[2], self.input[3]]));
                continue;
            }
            let parsed = Message::<Vec<u8>>::parse(&self.input[..]);
            match parsed {
                Ok((Message::Request(request), consumed)) => {
                    self.input.drain(..consumed);
                    self.handle_request(&request, now);
                }
                Ok(_) => {
                    // A response or data where a request belongs: not a client we can serve.
                    self.fail_connection(400, "Bad Request");
                }
                Err(ParseError::Incomplete(_))
                    if self.input.len() <= self.settings.max_request_bytes =>
                {
                    return;
                }
                Err(ParseError::Incomplete(_)) => {
                    self.fail_connection(400, "Request Too Large");
                }
                Err(ParseError::Error) => {
                    self.fail_connection(400, "Bad Request");
                }
            }
        }
    }

    /// An answer without a CSeq (none could be read), then close.
    fn fail_connection(&mut self, status: u16, reason: &str) {
        self.stats.bad_requests += 1;
        self.outputs
            .push_back(Output::Send(response(None, status, reason, &[], b"")));
        self.close();
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.playing = false;
            self.input = Vec::new();
            self.outputs.push_back(Output::Close);
        }
    }

    fn handle_request(&mut self, req: &Request<Vec<u8>>, now: Instant) {
        let cseq = req
            .header(&headers::CSEQ)
            .and_then(|v| v.as_str().trim().parse::<u32>().ok());
        let Some(cseq) = cseq else {
            self.fail_connection(400, "Bad Request");
            return;
        };
        if req.version() != Version::V1_0 {
            self.error(cseq, 505, "RTSP Version Not Supported");
            return;
        }
        let method = req.method().clone();
        let method_name: &str = (&method).into();
        if method != Method::Options {
            if let Some(token) = &self.settings.token {
                let ok = req.header(&headers::AUTHORIZATION).is_some_and(|h| {
                    credentials::allows(h.as_str(), token, method_name, &self.settings.nonce)
                });
                if !ok {
                    self.stats.bad_requests += 1;
                    let [digest, basic] = credentials::challenges(&self.settings.nonce);
                    self.outputs.push_back(Output::Send(response(
                        Some(cseq),
                        401,
                        "Unauthorized",
                        &[("WWW-Authenticate", digest), ("WWW-Authenticate", basic)],
                        b"",
                    )));
                    return;
                }
            }
        }
        let target = self.target(req);
        if target == Target::Other {
            self.error(cseq, 404, "Not Found");
            return;
        }
        match method {
            Method::Options => self.ok(cseq, &[("Public", PUBLIC.to_owned())], b""),
            Method::Describe => self.describe(cseq, req, now),
            Method::Setup => self.setup(cseq, req, target == Target::AudioTrack),
            Method::Play => self.play(cseq, req),
            Method::Teardown => {
                if self.session_matches(req) {
                    self.ok(cseq, &[], b"");
                    self.close();
                } else {
                    self.error(cseq, 454, "Session Not Found");
                }
            }
            Method::GetParameter => {
                if self.session_matches(req) {
                    self.ok(cseq, &[], b"");
                } else {
                    self.error(cseq, 454, "Session Not Found");
                }
            }
            _ => {
                self.stats.bad_requests += 1;
                self.outputs.push_back(Output::Send(response(
                    Some(cseq),
                    501,
                    "Not Implemented",
                    &[("Public", PUBLIC.to_owned())],
                    b"",
                )));
            }
        }
    }

    fn describe(&mut self, cseq: u32, req: &Request<Vec<u8>>, now: Instant) {
        let base = self.base_url(req);
        if self.params.is_some() {
            self.describe_ok(cseq, &base);
            return;
        }
        self.subscribe();
        self.pending = Some(Pending::Describe {
            cseq,
            base,
            deadline: now + self.settings.describe_timeout,
        });
    }

    fn describe_ok(&mut self, cseq: u32, base: &str) {
        let Some(params) = &self.params else {
            return;
        };
        let sdp = sdp::describe(
            params,
            u64::from(self.settings.ssrc),
            self.settings.server_ip,
            self.audio.as_ref().map(|a| a.track.channels),
        );
        self.described = true;
        self.ok(
            cseq,
            &[
                ("Content-Base", format!("{base}/")),
                ("Content-Type", "application/sdp".to_owned()),
            ],
            sdp.as_bytes(),
        );
    }

    fn setup(&mut self, cseq: u32, req: &Request<Vec<u8>>, audio: bool) {
        let set_up = if audio {
            self.audio.as_ref().is_some_and(|a| a.transport.is_some())
        } else {
            self.transport.is_some()
        };
        if !self.described || set_up {
            self.error(cseq, 455, "Method Not Valid in This State");
            return;
        }
        let Ok(Some(transports)) = req.typed_header::<Transports>() else {
            self.error(cseq, 461, "Unsupported Transport");
            return;
        };
        for t in transports.iter() {
            let rtsp_types::headers::Transport::Rtp(t) = t else {
                continue;
            };
            if t.profile != rtsp_types::headers::RtpProfile::Avp || t.params.multicast {
                continue;
            }
            match t.lower_transport {
                Some(rtsp_types::headers::RtpLowerTransport::Tcp) => {
                    let default = if audio { (2, Some(3)) } else { (0, Some(1)) };
                    let (rtp, rtcp) = t.params.interleaved.unwrap_or(default);
                    let rtcp = rtcp.unwrap_or(rtp.wrapping_add(1));
                    let t = Some(Transport::Tcp { rtp, rtcp });
                    let ssrc = match &mut self.audio {
                        Some(a) if audio => {
                            a.transport = t;
                            a.sender.ssrc()
                        }
                        _ => {
                            self.transport = t;
                            self.sender.ssrc()
                        }
                    };
                    let transport =
                        format!("RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp};ssrc={ssrc:08X}");
                    self.setup_ok(cseq, transport);
                    return;
                }
                None | Some(rtsp_types::headers::RtpLowerTransport::Udp) => {
                    let Some((rtp, rtcp)) = t.params.client_port else {
                        continue;
                    };
                    let rtcp = rtcp.unwrap_or(rtp.wrapping_add(1));
                    if rtp == 0 || rtcp == 0 {
                        continue;
                    }
                    self.pending = Some(Pending::Udp {
                        cseq,
                        client: (rtp, rtcp),
                        audio,
                    });
                    self.outputs.push_back(Output::OpenUdp { audio });
                    return;
                }
                Some(_) => continue,
            }
        }
        self.error(cseq, 461, "Unsupported Transport");
    }

    fn setup_ok(&mut self, cseq: u32, transport: String) {
        let session = format!(
            "{};timeout={}",
            self.settings.session_id,
            self.settings.session_timeout.as_secs().max(1)
        );
        self.ok(cseq, &[("Transport", transport), ("Session", session)], b"");
    }

    fn play(&mut self, cseq: u32, req: &Request<Vec<u8>>) {
        let audio_set_up = self.audio.as_ref().is_some_and(|a| a.transport.is_some());
        if self.transport.is_none() && !audio_set_up {
            self.error(cseq, 455, "Method Not Valid in This State");
            return;
        }
        if !self.session_matches(req) {
            self.error(cseq, 454, "Session Not Found");
            return;
        }
        let base = self.base_url(req);
        let base = base
            .strip_suffix(&format!("/{TRACK_CONTROL}"))
            .or_else(|| base.strip_suffix(&format!("/{AUDIO_CONTROL}")))
            .unwrap_or(&base)
            .to_owned();
        let mut info = Vec::new();
        if self.transport.is_some() {
            let mut i = format!("url={base}/{TRACK_CONTROL};seq={}", self.sender.next_seq());
            if let Some((t, _)) = self.last_rtp {
                i.push_str(&format!(";rtptime={t}"));
            }
            info.push(i);
        }
        if let Some(a) = self.audio.as_ref().filter(|a| a.transport.is_some()) {
            let mut i = format!("url={base}/{AUDIO_CONTROL};seq={}", a.sender.next_seq());
            if let Some((t, _)) = a.last_rtp {
                i.push_str(&format!(";rtptime={t}"));
            }
            info.push(i);
        }
        let rtp_info = info.join(",");
        let session = self.settings.session_id.clone();
        self.ok(
            cseq,
            &[
                ("Range", "npt=0.000-".to_owned()),
                ("Session", session),
                ("RTP-Info", rtp_info),
            ],
            b"",
        );
        if !self.playing {
            self.playing = true;
            self.waiting_for_keyframe = true;
            if self.transport.is_some() {
                self.subscribe();
                self.outputs.push_back(Output::RequestKeyframe);
            } else if self.subscribed {
                // Audio only: no video frames to wake for, no IDR to ask the encoder for.
                self.subscribed = false;
                self.outputs.push_back(Output::Unsubscribe);
            }
            if audio_set_up {
                self.outputs.push_back(Output::SubscribeAudio);
            }
        }
    }

    fn subscribe(&mut self) {
        if !self.subscribed {
            self.subscribed = true;
            self.outputs.push_back(Output::Subscribe);
        }
    }

    /// A request without a `Session` header is taken as this connection's session (some
    /// clients leave it out of keep-alives); one with another id is not.
    fn session_matches(&self, req: &Request<Vec<u8>>) -> bool {
        req.header(&headers::SESSION).is_none_or(|v| {
            let id = v.as_str().split(';').next().unwrap_or("").trim();
            id == self.settings.session_id
        })
    }

    /// The request's URL without credentials or a trailing `/` (for `Content-Base` and
    /// `RTP-Info`): a client's `rtsp://user:TOKEN@…` is never echoed back.
    fn base_url(&self, req: &Request<Vec<u8>>) -> String {
        match req.request_uri() {
            Some(u) => {
                let mut u = u.clone();
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.as_str().trim_end_matches('/').to_owned()
            }
            None => match self.settings.server_ip {
                IpAddr::V4(ip) => format!("rtsp://{ip}{}", self.settings.path),
                IpAddr::V6(ip) => format!("rtsp://[{ip}]{}", self.settings.path),
            },
        }
    }

    fn target(&self, req: &Request<Vec<u8>>) -> Target {
        let Some(uri) = req.request_uri() else {
            // `OPTIONS *`.
            return if *req.method() == Method::Options || *req.method() == Method::GetParameter {
                Target::Aggregate
            } else {
                Target::Other
            };
        };
        let path = uri.path().trim_end_matches('/');
        let stream = self.settings.path.trim_end_matches('/');
        let track = path.strip_prefix(stream);
        if path == stream {
            Target::Aggregate
        } else if track == Some(&format!("/{TRACK_CONTROL}")) {
            Target::Track
        } else if self.audio.is_some() && track == Some(&format!("/{AUDIO_CONTROL}")) {
            Target::AudioTrack
        } else {
            Target::Other
        }
    }

    fn ok(&mut self, cseq: u32, headers: &[(&str, String)], body: &[u8]) {
        self.outputs
            .push_back(Output::Send(response(Some(cseq), 200, "OK", headers, body)));
    }

    fn error(&mut self, cseq: u32, status: u16, reason: &str) {
        self.stats.bad_requests += 1;
        self.outputs
            .push_back(Output::Send(response(Some(cseq), status, reason, &[], b"")));
    }
}

/// What a request URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `/stream` (or `*`).
    Aggregate,
    /// `/stream/trackID=0`.
    Track,
    /// `/stream/trackID=1` (with audio on).
    AudioTrack,
    /// Anything else (404).
    Other,
}

/// An RTSP/1.0 response. Header values are ours (numbers, ids, URLs the parser accepted), never
/// raw client bytes with line breaks.
fn response(
    cseq: Option<u32>,
    status: u16,
    reason: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Bytes {
    let mut s = format!("RTSP/1.0 {status} {reason}\r\n");
    if let Some(cseq) = cseq {
        s.push_str(&format!("CSeq: {cseq}\r\n"));
    }
    s.push_str(concat!(
        "Server: snaprtcd/",
        env!("CARGO_PKG_VERSION"),
        "\r\n"
    ));
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    s.push_str("\r\n");
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x3d, 0xb0, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01,
        0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
    ];

    fn settings(token: Option<&str>) -> SessionSettings {
        SessionSettings {
            path: "/stream".into(),
            token: token.map(str::to_owned),
            nonce: "n0nce".into(),
            session_id: "5e55".into(),
            ssrc: 0xabcd_0001,
            first_seq: 100,
            rtp_time_base: 1000,
            session_timeout: Duration::from_secs(60),
            describe_timeout: Duration::from_secs(5),
            max_request_bytes: 4096,
            server_ip: "127.0.0.1".parse().expect("ip"),
            peer: "127.0.0.1:40000".parse().expect("addr"),
            wall_clock: Duration::from_secs(1_700_000_000),
            start: Instant::now(),
            audio: None,
        }
    }

    fn frame(n: u64, keyframe: bool) -> EncodedFrame {
        let mut data = Vec::new();
        if keyframe {
            data.extend_from_slice(&[0, 0, 0, 1]);
            data.extend_from_slice(SPS);
            data.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80, 0, 0, 0, 1, 0x65]);
        } else {
            data.extend_from_slice(&[0, 0, 0, 1, 0x41]);
        }
        data.extend(std::iter::repeat_n(n as u8 | 1, 3000));
        EncodedFrame {
            data: std::sync::Arc::from(data),
            keyframe,
            timestamp: Duration::from_millis(n * 100),
        }
    }

    struct Harness {
        s: Session,
        now: Instant,
    }

    impl Harness {
        fn new(token: Option<&str>) -> Self {
            let st = settings(token);
            let now = st.start;
            Self {
                s: Session::new(st, now),
                now,
            }
        }

        fn drain(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.s.poll_output()).collect()
        }

        /// Send `text` and return the outputs.
        fn send(&mut self, text: &str) -> Vec<Output> {
            self.s.handle_input(text.as_bytes(), self.now);
            self.drain()
        }

        /// Send `text` and return the one response, as text.
        fn request(&mut self, text: &str) -> String {
            let out = self.send(text);
            let texts: Vec<String> = out
                .iter()
                .filter_map(|o| match o {
                    Output::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .collect();
            assert_eq!(texts.len(), 1, "one response to {text:?}: {out:?}");
            texts[0].clone()
        }

        fn frame(&mut self, f: &EncodedFrame) -> Vec<Output> {
            self.s.handle_frame(f, self.now);
            self.drain()
        }

        /// OPTIONS and DESCRIBE, the DESCRIBE answered by the first keyframe.
        fn describe(&mut self) -> String {
            let r =
                self.request("OPTIONS rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n");
            assert!(r.starts_with("RTSP/1.0 200 OK\r\nCSeq: 1\r\n"), "{r}");
            assert!(r.contains(&format!("Public: {PUBLIC}\r\n")));
            let out = self.send(
                "DESCRIBE rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n",
            );
            assert_eq!(
                out,
                [Output::Subscribe],
                "waits for an IDR's parameter sets"
            );
            assert!(self.frame(&frame(1, false)).is_empty());
            let out = self.frame(&frame(2, true));
            let [Output::Send(b)] = &out[..] else {
                panic!("one answer: {out:?}")
            };
            String::from_utf8_lossy(b).into_owned()
        }
    }

    fn interleaved_channels(out: &[Output]) -> Vec<u8> {
        let mut channels = Vec::new();
        for o in out {
            let Output::Send(b) = o else { continue };
            let mut rest = &b[..];
            while rest.len() >= 4 {
                assert_eq!(rest[0], b'$');
                channels.push(rest[1]);
                let len = 4 + usize::from(u16::from_be_bytes([rest[2], rest[3]]));
                rest = &rest[len..];
            }
            assert!(rest.is_empty(), "whole interleaved frames");
        }
        channels
    }

    #[test]
    fn describe_setup_play_over_tcp_starts_at_a_keyframe() {
        let mut h = Harness::new(None);
        let sdp = h.describe();
        assert!(sdp.starts_with("RTSP/1.0 200 OK\r\nCSeq: 2\r\n"), "{sdp}");
        assert!(sdp.contains("Content-Base: rtsp://127.0.0.1:8554/stream/\r\n"));
        assert!(sdp.contains("Content-Type: application/sdp\r\n"));
        assert!(sdp.contains("profile-level-id=42c01e;sprop-parameter-sets=Z0LAHtkAoD2wEQAAAwABAAADADwPFi5I,aM48gA==\r\n"));

        let r = h.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 200 OK\r\nCSeq: 3\r\n"), "{r}");
        assert!(r.contains("Transport: RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=ABCD0001\r\n"));
        assert!(r.contains("Session: 5e55;timeout=60\r\n"));

        let out = h.send("PLAY rtsp://127.0.0.1:8554/stream/ RTSP/1.0\r\nCSeq: 4\r\nSession: 5e55\r\nRange: npt=0.000-\r\n\r\n");
        assert_eq!(out.len(), 2, "{out:?}");
        let Output::Send(b) = &out[0] else {
            panic!("{out:?}")
        };
        let r = String::from_utf8_lossy(b);
        assert!(r.starts_with("RTSP/1.0 200 OK\r\nCSeq: 4\r\n"), "{r}");
        assert!(
            r.contains("RTP-Info: url=rtsp://127.0.0.1:8554/stream/trackID=0;seq=100"),
            "{r}"
        );
        assert_eq!(out[1], Output::RequestKeyframe);
        assert!(h.s.is_playing());

        // Frames before the next IDR are not sent: the client starts at a keyframe.
        assert!(h.frame(&frame(3, false)).is_empty());
        let out = h.frame(&frame(4, true));
        let channels = interleaved_channels(&out);
        assert!(channels.len() > 3, "SPS, PPS, IDR fragments: {channels:?}");
        assert_eq!(
            channels.last(),
            Some(&1),
            "an RTCP sender report after the first frame"
        );
        assert!(channels[..channels.len() - 1].iter().all(|&c| c == 0));
        let out = h.frame(&frame(5, false));
        assert_eq!(interleaved_channels(&out), [0, 0, 0]);
        assert_eq!(h.s.stats().frames_sent, 2);
        assert_eq!(h.s.stats().frames_skipped, 1);

        // A TCP client that plays does not time out while its connection lives...
        assert_eq!(h.s.poll_timeout(), Some(h.now + SENDER_REPORT_INTERVAL));
        h.now += SENDER_REPORT_INTERVAL;
        h.s.handle_timeout(h.now);
        assert_eq!(interleaved_channels(&h.drain()), [1]);
        // ... and TEARDOWN ends it.
        let out = h.send(
            "TEARDOWN rtsp://127.0.0.1:8554/stream/ RTSP/1.0\r\nCSeq: 5\r\nSession: 5e55\r\n\r\n",
        );
        assert!(matches!(&out[0], Output::Send(b) if b.starts_with(b"RTSP/1.0 200 OK\r\nCSeq: 5")));
        assert_eq!(out[1], Output::Close);
        assert!(h.s.is_closed());
    }

    /// A session whose stream has a mono Opus track beside the video.
    fn audio_harness() -> Harness {
        let mut st = settings(None);
        st.audio = Some(AudioTrack {
            ssrc: 0xa0d1_0001,
            first_seq: 7,
            rtp_time_base: 5000,
            channels: 1,
        });
        let now = st.start;
        Harness {
            s: Session::new(st, now),
            now,
        }
    }

    #[test]
    fn an_audio_only_client_drops_the_video_subscription_and_asks_no_keyframe() {
        let mut h = audio_harness();
        // DESCRIBE subscribed to the frames for SPS/PPS; only the audio track is set up.
        h.describe();
        let r = h.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=1 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=2-3\r\n\r\n");
        assert!(r.contains("interleaved=2-3"), "{r}");
        let out = h.send(
            "PLAY rtsp://127.0.0.1:8554/stream/ RTSP/1.0\r\nCSeq: 4\r\nSession: 5e55\r\n\r\n",
        );
        assert!(matches!(out[0], Output::Send(_)), "{out:?}");
        // No video frame wakes this session again, and no IDR is forced for it.
        assert_eq!(out[1..], [Output::Unsubscribe, Output::SubscribeAudio]);
        let f = AudioFrame {
            data: Bytes::from_static(&[0xf8, 1, 2, 3]),
            timestamp: Duration::from_millis(20),
            samples: 960,
        };
        h.s.handle_audio(&f, h.now);
        assert_eq!(interleaved_channels(&h.drain()), [2, 3]);
    }

    #[test]
    fn audio_is_a_second_track_on_channels_2_and_3_with_48_khz_rtp_time_and_its_own_report() {
        let mut h = audio_harness();
        let sdp = h.describe();
        assert!(
            sdp.contains("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=control:trackID=1\r\n"));
        let r = h.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n");
        assert!(r.contains("interleaved=0-1;ssrc=ABCD0001"), "{r}");
        let r = h.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=1 RTSP/1.0\r\nCSeq: 4\r\nTransport: RTP/AVP/TCP;unicast;interleaved=2-3\r\nSession: 5e55\r\n\r\n");
        assert!(r.contains("interleaved=2-3;ssrc=A0D10001"), "{r}");
        // The same track twice is refused.
        let r = h.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=1 RTSP/1.0\r\nCSeq: 5\r\nTransport: RTP/AVP/TCP;unicast;interleaved=4-5\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 455"), "{r}");
        let out = h.send(
            "PLAY rtsp://127.0.0.1:8554/stream/ RTSP/1.0\r\nCSeq: 6\r\nSession: 5e55\r\n\r\n",
        );
        let Output::Send(b) = &out[0] else {
            panic!("{out:?}")
        };
        let r = String::from_utf8_lossy(b);
        assert!(r.contains("RTP-Info: url=rtsp://127.0.0.1:8554/stream/trackID=0;seq=100,url=rtsp://127.0.0.1:8554/stream/trackID=1;seq=7\r\n"), "{r}");
        assert!(out.contains(&Output::SubscribeAudio));
        // Audio flows at once (no keyframe to wait for): one RTP packet on channel 2, and the
        // first sender report (audio's, on channel 3).
        let f = AudioFrame {
            data: Bytes::from_static(&[0xf8, 1, 2, 3]),
            timestamp: Duration::from_millis(1000),
            samples: 960,
        };
        h.s.handle_audio(&f, h.now);
        let out = h.drain();
        assert_eq!(interleaved_channels(&out), [2, 3]);
        let Output::Send(b) = &out[0] else {
            panic!("{out:?}")
        };
        let p = &b[4..];
        assert_eq!(p[1], 97, "payload type 97, no marker");
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 7);
        assert_eq!(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), 5000 + 48_000);
        assert_eq!(u32::from_be_bytes([p[8], p[9], p[10], p[11]]), 0xa0d1_0001);
        assert_eq!(&p[12..], [0xf8, 1, 2, 3]);
        // The next report covers both tracks.
        let out = h.frame(&frame(9, true));
        assert!(interleaved_channels(&out).iter().all(|&c| c == 0));
        h.now += SENDER_REPORT_INTERVAL;
        h.s.handle_timeout(h.now);
        assert_eq!(interleaved_channels(&h.drain()), [1, 3]);
        // Without audio, trackID=1 does not exist.
        let mut v = Harness::new(None);
        v.describe();
        let r = v.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=1 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=2-3\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 404"), "{r}");
    }

    #[test]
    fn udp_setup_waits_for_the_sockets_and_sends_datagrams_to_the_client_ports() {
        let mut h = Harness::new(None);
        h.describe();
        let out = h.send("SETUP rtsp://127.0.0.1:8554/stream/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP;unicast;client_port=5000-5001\r\n\r\n");
        assert_eq!(out, [Output::OpenUdp { audio: false }]);
        // A request pipelined behind it waits for the SETUP's answer.
        assert!(h.send("OPTIONS * RTSP/1.0\r\nCSeq: 4\r\n\r\n").is_empty());
        h.s.handle_udp_opened(Some((6000, 6001)), h.now);
        let out = h.drain();
        assert_eq!(out.len(), 2);
        let Output::Send(b) = &out[0] else {
            panic!("{out:?}")
        };
        let r = String::from_utf8_lossy(b);
        assert!(r.contains("Transport: RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;ssrc=ABCD0001\r\n"), "{r}");
        assert!(matches!(&out[1], Output::Send(b) if b.starts_with(b"RTSP/1.0 200 OK\r\nCSeq: 4")));

        h.send("PLAY rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 5\r\nSession: 5e55\r\n\r\n");
        let out = h.frame(&frame(6, true));
        let rtp: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let rtcp: SocketAddr = "127.0.0.1:5001".parse().expect("addr");
        assert!(out.len() > 3);
        for o in &out[..out.len() - 1] {
            assert!(
                matches!(o, Output::SendUdp { to, rtcp: false, audio: false, packet } if *to == rtp && packet.len() <= 12 + rtp::MAX_PAYLOAD)
            );
        }
        assert!(matches!(out.last(), Some(Output::SendUdp { to, rtcp: true, .. }) if *to == rtcp));

        // A UDP client must show it is alive: RTCP or a keep-alive request.
        let deadline = h.now + Duration::from_secs(60);
        assert_eq!(h.s.poll_timeout(), Some(h.now + SENDER_REPORT_INTERVAL));
        h.now += Duration::from_secs(30);
        h.s.handle_udp_rtcp(h.now);
        h.now = deadline;
        h.s.handle_timeout(h.now);
        assert!(!h.s.is_closed(), "RTCP kept it alive");
        h.now += Duration::from_secs(31);
        h.s.handle_timeout(h.now);
        assert!(h.drain().contains(&Output::Close));
    }

    #[test]
    fn failed_udp_sockets_answer_500() {
        let mut h = Harness::new(None);
        h.describe();
        h.send("SETUP rtsp://127.0.0.1:8554/stream/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP;unicast;client_port=5000-5001\r\n\r\n");
        h.s.handle_udp_opened(None, h.now);
        let out = h.drain();
        assert!(matches!(&out[0], Output::Send(b) if b.starts_with(b"RTSP/1.0 500 ")));
    }

    #[test]
    fn token_auth_answers_401_with_both_challenges_then_accepts_basic() {
        let mut h = Harness::new(Some("s3cret"));
        let r = h.request("OPTIONS rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 200 OK"), "OPTIONS stays open: {r}");
        let r = h.request("DESCRIBE rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 2\r\n\r\n");
        assert!(
            r.starts_with("RTSP/1.0 401 Unauthorized\r\nCSeq: 2\r\n"),
            "{r}"
        );
        assert!(r.contains("WWW-Authenticate: Digest realm=\"snaprtcd\", nonce=\"n0nce\""));
        assert!(r.contains("WWW-Authenticate: Basic realm=\"snaprtcd\"\r\n"));
        // "u:wrong" and "u:s3cret"
        let r = h.request("DESCRIBE rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 3\r\nAuthorization: Basic dTp3cm9uZw==\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 401"), "{r}");
        let out = h.send("DESCRIBE rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 4\r\nAuthorization: Basic dTpzM2NyZXQ=\r\n\r\n");
        assert_eq!(out, [Output::Subscribe]);
        assert_eq!(h.s.stats().bad_requests, 2);
    }

    #[test]
    fn requests_out_of_order_get_455_and_454() {
        let mut h = Harness::new(None);
        let r = h.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n");
        assert!(
            r.starts_with("RTSP/1.0 455 Method Not Valid in This State\r\nCSeq: 1\r\n"),
            "{r}"
        );
        let r = h.request("PLAY rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 2\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 455 "), "{r}");
        h.describe();
        let r = h.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP;multicast\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 461 Unsupported Transport"), "{r}");
        let r =
            h.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=0 RTSP/1.0\r\nCSeq: 4\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 461 "), "no Transport: {r}");
        h.request("SETUP rtsp://127.0.0.1:8554/stream/trackID=0 RTSP/1.0\r\nCSeq: 5\r\nTransport: RTP/AVP/TCP;interleaved=2-3\r\n\r\n");
        let r = h.request(
            "PLAY rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 6\r\nSession: other\r\n\r\n",
        );
        assert!(r.starts_with("RTSP/1.0 454 Session Not Found"), "{r}");
        let r = h.request("GET_PARAMETER rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 7\r\nSession: 5e55\r\n\r\n");
        assert!(
            r.starts_with("RTSP/1.0 200 OK\r\nCSeq: 7\r\n"),
            "keep-alive: {r}"
        );
        assert!(!h.s.is_closed());
    }

    #[test]
    fn wrong_paths_methods_and_versions_are_refused_and_the_connection_goes_on() {
        let mut h = Harness::new(None);
        let r = h.request("DESCRIBE rtsp://127.0.0.1:8554/other RTSP/1.0\r\nCSeq: 1\r\n\r\n");
        assert!(
            r.starts_with("RTSP/1.0 404 Not Found\r\nCSeq: 1\r\n"),
            "{r}"
        );
        let r = h.request("RECORD rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 2\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 501 Not Implemented"), "{r}");
        let r = h.request("OPTIONS rtsp://127.0.0.1:8554/stream RTSP/2.0\r\nCSeq: 3\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 505 "), "{r}");
        // Two requests in one read: two answers, in order.
        let out =
            h.send("OPTIONS * RTSP/1.0\r\nCSeq: 4\r\n\r\nOPTIONS * RTSP/1.0\r\nCSeq: 5\r\n\r\n");
        assert_eq!(out.len(), 2);
        assert!(!h.s.is_closed());
    }

    #[test]
    fn garbage_and_oversized_requests_get_400_and_close() {
        for input in [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not rtsp\r\n\r\n".to_vec(),
            b"OPTIONS * RTSP/1.0\r\n\r\n".to_vec(),
            format!("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX: {}", "a".repeat(5000)).into_bytes(),
        ] {
            let mut h = Harness::new(None);
            h.s.handle_input(&input, h.now);
            let out = h.drain();
            let shown = String::from_utf8_lossy(&input[..input.len().min(40)]).into_owned();
            assert!(
                matches!(&out[0], Output::Send(b) if b.starts_with(b"RTSP/1.0 400 ")),
                "{shown:?}: {out:?}"
            );
            assert_eq!(out.last(), Some(&Output::Close), "{shown:?}");
            assert!(
                h.send("OPTIONS * RTSP/1.0\r\nCSeq: 9\r\n\r\n").is_empty(),
                "closed"
            );
        }
    }

    #[test]
    fn interleaved_data_from_the_client_is_skipped_as_it_streams_in() {
        let mut h = Harness::new(None);
        // A 60000-byte frame on channel 1, in small pieces, then a request.
        let mut flood = vec![b'$', 1];
        flood.extend_from_slice(&60000u16.to_be_bytes());
        flood.extend(std::iter::repeat_n(0xaa, 60000));
        for chunk in flood.chunks(1000) {
            h.s.handle_input(chunk, h.now);
            assert!(h.drain().is_empty());
            assert!(h.s.input.len() <= 4, "never buffered whole");
        }
        let r = h.request("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n");
        assert!(r.starts_with("RTSP/1.0 200 OK"), "{r}");
    }

    #[test]
    fn requests_piled_behind_a_waiting_describe_stay_within_the_budget() {
        let mut h = Harness::new(None);
        h.send("DESCRIBE rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n");
        let pipelined = "OPTIONS * RTSP/1.0\r\nCSeq: 2\r\n\r\n".repeat(20);
        let mut closed = false;
        for _ in 0..20 {
            h.s.handle_input(pipelined.as_bytes(), h.now);
            assert!(h.s.buffered() <= 4096 + pipelined.len());
            closed |= h.drain().contains(&Output::Close);
        }
        assert!(closed, "over max_request_bytes while waiting: closed");
    }

    #[test]
    fn describe_without_a_keyframe_in_time_answers_503() {
        let mut h = Harness::new(None);
        assert_eq!(
            h.send("DESCRIBE rtsp://127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
            [Output::Subscribe]
        );
        let t = h.s.poll_timeout().expect("a deadline");
        assert_eq!(t, h.now + Duration::from_secs(5));
        h.now = t;
        h.s.handle_timeout(h.now);
        let out = h.drain();
        assert!(
            matches!(&out[0], Output::Send(b) if b.starts_with(b"RTSP/1.0 503 Service Unavailable\r\nCSeq: 1"))
        );
    }

    #[test]
    fn an_idle_connection_closes_after_the_session_timeout() {
        let mut h = Harness::new(None);
        assert_eq!(h.s.poll_timeout(), Some(h.now + Duration::from_secs(60)));
        h.now += Duration::from_secs(60);
        h.s.handle_timeout(h.now);
        assert_eq!(h.drain(), [Output::Close]);
        assert_eq!(h.s.poll_timeout(), None);
    }

    #[test]
    fn credentials_in_the_url_are_not_echoed() {
        let mut h = Harness::new(None);
        h.send("DESCRIBE rtsp://u:tok@127.0.0.1:8554/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n");
        let out = h.frame(&frame(1, true));
        let Output::Send(b) = &out[0] else {
            panic!("{out:?}")
        };
        let r = String::from_utf8_lossy(b);
        assert!(
            r.contains("Content-Base: rtsp://127.0.0.1:8554/stream/\r\n"),
            "{r}"
        );
        assert!(!r.contains("tok"));
    }
}
