//! The tokio shell around [`Session`]: the listener, one task per connection, its UDP sockets.
//!
//! Each connection task owns its TCP stream, its [`Session`], its place in the frame broadcast
//! (a [`FrameSubscriber`], taken at DESCRIBE) and, for RTP over UDP, a pair of UDP sockets. It
//! does IO only: bytes and frames go into the session, the session's outputs come out.
//!
//! Memory per client is bounded: what is queued towards a TCP client is at most
//! `[rtsp] max_queue_bytes` plus one frame, and the kernel's send buffer is fixed (no
//! autotuning to megabytes). While the queue is that full the task reads no
//! frames (nor requests), so a slow client falls behind in the broadcast and
//! [`FrameSubscriber`] skips it to the next keyframe; a client that takes no byte for
//! `write_timeout` is dropped. UDP datagrams the kernel cannot take at once are dropped (UDP is
//! lossy anyway).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::session::{AudioTrack, Output, Session, SessionSettings};
use crate::audio::{AudioFrame, AudioHandle, AudioSubscriber};
use crate::auth::Auth;
use crate::config::Config;
use crate::media::{EncodedFrame, FrameSubscriber, KeyframeCause, MediaHandle};
use crate::udp::{SendSocket, UdpSocket};

/// The path of the one stream.
pub const STREAM_PATH: &str = "/stream";
/// How long a DESCRIBE waits for an IDR (the pipeline sends one within about 500 ms).
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the last answer (an error, or TEARDOWN's) may take to leave before the close.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Read buffer of a connection.
const READ_CHUNK: usize = 4096;
/// The kernel's send buffer of a connection (`SO_SNDBUF`; Linux doubles it for bookkeeping).
/// Without it the kernel lets a client that stopped reading hold megabytes (send buffer
/// autotuning); 128 KiB still holds 100 ms of a 10 Mbit/s stream.
const SEND_BUFFER: usize = 128 * 1024;

/// Why the RTSP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RtspError {
    /// The listen address could not be bound.
    #[error("cannot listen for RTSP on {addr}: {source}")]
    Bind {
        /// `[rtsp] listen`.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// What the server is made with (from `[rtsp]` and `[server] auth`).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `[rtsp] listen`.
    pub listen: SocketAddr,
    /// `[rtsp] max_clients`.
    pub max_clients: usize,
    /// `[rtsp] max_queue_bytes`.
    pub max_queue_bytes: usize,
    /// `[rtsp] write_timeout`.
    pub write_timeout: Duration,
    /// `[rtsp] session_timeout`.
    pub session_timeout: Duration,
    /// `[rtsp] max_request_bytes`.
    pub max_request_bytes: usize,
    /// The token clients must give as their password, with `[server] auth = "token"`.
    pub token: Option<String>,
}

impl ServerSettings {
    /// The settings `config` and `auth` describe.
    pub fn from_config(config: &Config, auth: &Auth) -> Self {
        let r = &config.rtsp;
        Self {
            listen: r.listen,
            max_clients: r.max_clients,
            max_queue_bytes: r.max_queue_bytes,
            write_timeout: r.write_timeout,
            session_timeout: r.session_timeout,
            max_request_bytes: r.max_request_bytes,
            token: match auth {
                Auth::Token(t) => Some(t.clone()),
                Auth::Open => None,
            },
        }
    }
}

/// Counters for `/metrics`: bumped by the connection tasks, read by the metrics renderer.
#[derive(Debug, Default)]
pub struct RtspCounters {
    /// Connections open now.
    pub clients: AtomicUsize,
    /// Connections accepted since start.
    pub connections: AtomicU64,
    /// Connections refused because `max_clients` were open.
    pub refused: AtomicU64,
    /// Access units sent (one per frame per client).
    pub frames_sent: AtomicU64,
    /// Access units a client skipped: it fell behind, or waited for its first keyframe.
    pub frames_skipped: AtomicU64,
    /// Clients dropped because they took nothing for `write_timeout`.
    pub dropped_slow: AtomicU64,
    /// Requests answered with an error status (4xx, 5xx).
    pub bad_requests: AtomicU64,
}

/// The bound listener, ready to [`run`](RtspServer::run).
pub struct RtspServer {
    listener: TcpListener,
    settings: Arc<ServerSettings>,
    media: MediaHandle,
    audio: Option<AudioHandle>,
    counters: Arc<RtspCounters>,
}

impl RtspServer {
    /// Bind `settings.listen`; the stream is the frames of `media`, and of `audio` as a second
    /// track when there is audio.
    pub fn bind(
        settings: ServerSettings,
        media: MediaHandle,
        audio: Option<AudioHandle>,
    ) -> Result<Self, RtspError> {
        let bind_err = |source| RtspError::Bind {
            addr: settings.listen,
            source,
        };
        let std = std::net::TcpListener::bind(settings.listen).map_err(bind_err)?;
        std.set_nonblocking(true).map_err(bind_err)?;
        let listener = TcpListener::from_std(std).map_err(bind_err)?;
        Ok(Self {
            listener,
            settings: Arc::new(settings),
            media,
            audio,
            counters: Arc::default(),
        })
    }

    /// The address actually bound (the port, when `listen` had port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The counters, for `/metrics`.
    pub fn counters(&self) -> Arc<RtspCounters> {
        self.counters.clone()
    }

    /// Accept and serve clients until `cancel`; every connection task ends with it.
    pub async fn run(self, cancel: CancellationToken) {
        if let Ok(addr) = self.listener.local_addr() {
            info!(%addr, path = STREAM_PATH, "rtsp listening");
        }
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: wait for a connection to end, not a busy loop.
                            warn!(error = %e, "rtsp accept failed");
                            if let Some(Err(e)) = tasks.join_next().await {
                                warn!(error = %e, "rtsp connection task failed");
                            }
                            continue;
                        }
                    };
                    if self.counters.clients.load(Ordering::Relaxed) >= self.settings.max_clients {
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                        // Best effort and never waited for: a full server spends nothing more.
                        let _ = stream.try_write(b"RTSP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
                        debug!(%peer, "rtsp client refused: max_clients reached");
                        continue;
                    }
                    self.counters.clients.fetch_add(1, Ordering::Relaxed);
                    self.counters.connections.fetch_add(1, Ordering::Relaxed);
                    let conn = Connection {
                        settings: self.settings.clone(),
                        media: self.media.clone(),
                        audio: self.audio.clone(),
                        counters: self.counters.clone(),
                        peer,
                    };
                    tasks.spawn(conn.run(stream, cancel.clone()));
                }
            }
        }
        tasks.shutdown().await;
    }
}

/// The RTP and RTCP sockets of one UDP client.
struct UdpPair {
    /// Never read: not watched by the runtime at all.
    rtp: SendSocket,
    rtcp: UdpSocket,
}

impl UdpPair {
    /// Two sockets on `ip`, on an even port and the next one where the OS allows (RFC 3550
    /// §11), any two ports otherwise.
    fn bind(ip: IpAddr) -> std::io::Result<Self> {
        for _ in 0..16 {
            let rtp = SendSocket::bind((ip, 0))?;
            let port = rtp.local_addr()?.port();
            if port % 2 == 0 && port < u16::MAX {
                if let Ok(rtcp) = UdpSocket::bind((ip, port + 1)) {
                    return Ok(Self { rtp, rtcp });
                }
            }
        }
        Ok(Self {
            rtp: SendSocket::bind((ip, 0))?,
            rtcp: UdpSocket::bind((ip, 0))?,
        })
    }

    fn ports(&self) -> Option<(u16, u16)> {
        Some((
            self.rtp.local_addr().ok()?.port(),
            self.rtcp.local_addr().ok()?.port(),
        ))
    }
}

/// One client's task.
struct Connection {
    settings: Arc<ServerSettings>,
    media: MediaHandle,
    audio: Option<AudioHandle>,
    counters: Arc<RtspCounters>,
    peer: SocketAddr,
}

/// Most buffers in one vectored write (an access unit at 1.5 Mbit/s is a handful of packets).
const MAX_IOV: usize = 32;

/// What is queued towards the client, with the offset already written of the first buffer.
#[derive(Default)]
struct SendQueue {
    bufs: VecDeque<Bytes>,
    offset: usize,
    bytes: usize,
    /// When the queue last made progress (or was empty).
    progress: Option<Instant>,
}

impl SendQueue {
    fn push(&mut self, b: Bytes, now: Instant) {
        if self.bufs.is_empty() {
            self.progress = Some(now);
        }
        self.bytes += b.len();
        self.bufs.push_back(b);
    }

    /// Up to [`MAX_IOV`] buffers from the front, for one vectored write: an access unit's RTP
    /// packets leave in one system call rather than one each.
    fn slices(&self) -> ([IoSlice<'_>; MAX_IOV], usize) {
        let mut out = [IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        for (i, b) in self.bufs.iter().take(MAX_IOV).enumerate() {
            out[i] = IoSlice::new(if i == 0 { &b[self.offset..] } else { b });
            n = i + 1;
        }
        (out, n)
    }

    /// `n` bytes were written, from the front, possibly across buffers.
    fn advance(&mut self, mut n: usize, now: Instant) {
        self.bytes -= n;
        self.progress = Some(now);
        while n > 0 {
            let Some(front) = self.bufs.front() else {
                break;
            };
            let left = front.len() - self.offset;
            if n >= left {
                n -= left;
                self.bufs.pop_front();
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}

impl Connection {
    async fn run(self, stream: TcpStream, cancel: CancellationToken) {
        let skipped = match self.serve(stream, cancel).await {
            Ok(skipped) => skipped,
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "rtsp connection ended");
                0
            }
        };
        self.counters
            .frames_skipped
            .fetch_add(skipped, Ordering::Relaxed);
        self.counters.clients.fetch_sub(1, Ordering::Relaxed);
    }

    fn session_settings(
        &self,
        local: SocketAddr,
    ) -> Result<SessionSettings, crate::ids::RandomError> {
        let r: [u8; 10] = crate::ids::random_bytes()?;
        let a: [u8; 10] = crate::ids::random_bytes()?;
        let now = Instant::now();
        let wall_clock = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(SessionSettings {
            path: STREAM_PATH.to_owned(),
            token: self.settings.token.clone(),
            nonce: crate::ids::random_hex::<16>()?,
            session_id: crate::ids::random_hex::<8>()?,
            ssrc: u32::from_be_bytes([r[0], r[1], r[2], r[3]]),
            first_seq: u16::from_be_bytes([r[4], r[5]]),
            rtp_time_base: u32::from_be_bytes([r[6], r[7], r[8], r[9]]),
            session_timeout: self.settings.session_timeout,
            describe_timeout: DESCRIBE_TIMEOUT,
            max_request_bytes: self.settings.max_request_bytes,
            server_ip: local.ip(),
            peer: self.peer,
            wall_clock,
            start: now,
            audio: self.audio.as_ref().map(|h| AudioTrack {
                ssrc: u32::from_be_bytes([a[0], a[1], a[2], a[3]]),
                first_seq: u16::from_be_bytes([a[4], a[5]]),
                rtp_time_base: u32::from_be_bytes([a[6], a[7], a[8], a[9]]),
                channels: h.channels(),
            }),
        })
    }

    /// Serve until the client leaves, the session closes or `cancel`; returns the frames the
    /// client's subscription skipped.
    async fn serve(&self, stream: TcpStream, cancel: CancellationToken) -> std::io::Result<u64> {
        let local = stream.local_addr()?;
        let _ = stream.set_nodelay(true);
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&stream, SEND_BUFFER);
        let settings = self
            .session_settings(local)
            .map_err(std::io::Error::other)?;
        let mut session = Session::new(settings, Instant::now());
        let (mut rd, mut wr) = stream.into_split();
        let mut sub: Option<FrameSubscriber> = None;
        let mut udp: Option<UdpPair> = None;
        let mut audio_sub: Option<AudioSubscriber> = None;
        // Frames skipped by a video subscription this session dropped (audio only).
        let mut skipped = 0;
        let mut audio_udp: Option<UdpPair> = None;
        let mut queue = SendQueue::default();
        let mut read_buf = vec![0u8; READ_CHUNK];
        let mut udp_buf = vec![0u8; 1500];
        let mut audio_udp_buf = vec![0u8; 1500];
        let mut sent = session.stats();
        let max_queue = self.settings.max_queue_bytes;
        let result = loop {
            // Draining rule: act on every output before waiting again.
            let mut closing = false;
            while let Some(out) = session.poll_output() {
                match out {
                    Output::Send(b) => queue.push(b, Instant::now()),
                    Output::SendUdp {
                        to,
                        rtcp,
                        audio,
                        packet,
                    } => {
                        if let Some(u) = if audio { &audio_udp } else { &udp } {
                            let _ = if rtcp {
                                u.rtcp.try_send_to(&packet, to)
                            } else {
                                u.rtp.try_send_to(&packet, to)
                            };
                        }
                    }
                    Output::Subscribe => {
                        if sub.is_none() {
                            sub = Some(self.media.subscribe());
                        }
                    }
                    Output::Unsubscribe => {
                        skipped += sub.take().map_or(0, |s| s.skipped());
                    }
                    Output::RequestKeyframe => {
                        self.media.request_keyframe(KeyframeCause::NewViewer);
                    }
                    Output::SubscribeAudio => {
                        if audio_sub.is_none() {
                            audio_sub = self.audio.as_ref().map(AudioHandle::subscribe);
                        }
                    }
                    Output::OpenUdp { audio } => {
                        let pair = UdpPair::bind(local.ip());
                        if let Err(e) = &pair {
                            warn!(error = %e, "rtsp: cannot bind UDP sockets for a client");
                        }
                        let slot = if audio { &mut audio_udp } else { &mut udp };
                        *slot = pair.ok();
                        let ports = slot.as_ref().and_then(UdpPair::ports);
                        session.handle_udp_opened(ports, Instant::now());
                    }
                    Output::Close => closing = true,
                }
            }
            let stats = session.stats();
            self.counters
                .frames_sent
                .fetch_add(stats.frames_sent - sent.frames_sent, Ordering::Relaxed);
            self.counters
                .bad_requests
                .fetch_add(stats.bad_requests - sent.bad_requests, Ordering::Relaxed);
            sent = stats;
            if closing {
                let flush = async {
                    while !queue.bufs.is_empty() {
                        let (iov, count) = queue.slices();
                        let n = wr.write_vectored(&iov[..count]).await?;
                        if n == 0 {
                            break;
                        }
                        queue.advance(n, Instant::now());
                    }
                    wr.shutdown().await
                };
                let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
                break Ok(());
            }
            let stall_deadline = queue
                .progress
                .filter(|_| !queue.bufs.is_empty())
                .map(|t| t + self.settings.write_timeout);
            let deadline = [session.poll_timeout(), stall_deadline]
                .into_iter()
                .flatten()
                .min();
            let room = queue.bytes < max_queue;
            let (iov, count) = queue.slices();
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                r = rd.read(&mut read_buf), if room => match r {
                    Ok(0) => break Ok(()),
                    Ok(n) => session.handle_input(&read_buf[..n], Instant::now()),
                    Err(e) => break Err(e),
                },
                r = wr.write_vectored(&iov[..count]), if count > 0 => match r {
                    Ok(0) => break Ok(()),
                    Ok(n) => queue.advance(n, Instant::now()),
                    Err(e) => break Err(e),
                },
                frame = next_frame(&mut sub), if room => match frame {
                    Some(frame) => session.handle_frame(&frame, Instant::now()),
                    // The pipeline stopped (a reload rebuilds everything): end the session.
                    None => break Ok(()),
                },
                frame = next_audio(&mut audio_sub), if room => match frame {
                    Some(frame) => session.handle_audio(&frame, Instant::now()),
                    // The audio thread stopped: video goes on.
                    None => audio_sub = None,
                },
                r = recv_rtcp(&audio_udp, &mut audio_udp_buf) => {
                    if r.is_some_and(|from| from.ip() == self.peer.ip()) {
                        session.handle_udp_rtcp(Instant::now());
                    }
                }
                r = recv_rtcp(&udp, &mut udp_buf) => {
                    if r.is_some_and(|from| from.ip() == self.peer.ip()) {
                        session.handle_udp_rtcp(Instant::now());
                    }
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    if stall_deadline.is_some_and(|t| t <= now) {
                        self.counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                        info!(peer = %self.peer, queued = queue.bytes, "rtsp client took nothing for write_timeout; dropped");
                        break Ok(());
                    }
                    session.handle_timeout(now);
                }
            }
        };
        result?;
        Ok(skipped
            + sub.as_ref().map_or(0, FrameSubscriber::skipped)
            + session.stats().frames_skipped)
    }
}

async fn next_frame(sub: &mut Option<FrameSubscriber>) -> Option<EncodedFrame> {
    match sub {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_audio(sub: &mut Option<AudioSubscriber>) -> Option<AudioFrame> {
    match sub {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The source of the next datagram on the RTCP socket (`None` on an error); never ready
/// without UDP.
async fn recv_rtcp(udp: &Option<UdpPair>, buf: &mut [u8]) -> Option<SocketAddr> {
    match udp {
        Some(u) => u.rtcp.recv_from(buf).await.ok().map(|(_, from)| from),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vectored write that ends inside the third buffer leaves exactly the rest queued.
    #[test]
    fn a_write_across_buffers_advances_the_queue_by_what_was_written() {
        let now = Instant::now();
        let mut q = SendQueue::default();
        for b in [&b"abc"[..], b"de", b"fghij"] {
            q.push(Bytes::copy_from_slice(b), now);
        }
        let (iov, n) = q.slices();
        assert_eq!(n, 3);
        assert_eq!(iov[..n].iter().map(|s| s.len()).sum::<usize>(), 10);
        q.advance(7, now);
        assert_eq!((q.bufs.len(), q.offset, q.bytes), (1, 2, 3));
        let (iov, n) = q.slices();
        assert_eq!(&*iov[0], b"hij");
        assert_eq!(n, 1);
        q.advance(3, now);
        assert!(q.bufs.is_empty() && q.bytes == 0 && q.offset == 0);
    }
}
