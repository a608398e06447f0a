//! The thin tokio shell around [`Core`]: it owns the UDP socket, the frame subscription,
//! the still tasks and the command channel, and only moves bytes and events.
//!
//! Inputs (datagrams, frames, stills, commands, timeouts) arrive in one `select!`; each goes to
//! the core, whose outputs are then drained (the draining rule, see [`super::core`]): datagrams
//! out of the socket, events acted on (subscribe to or release the frame stream, ask for a
//! keyframe, run a still request on a task).
//!
//! Frames come from one [`FrameSubscriber`] held while any viewer takes video: the encoder
//! runs once, each viewer costs packetisation and SRTP only.
//!
//! The subscription is taken when the first viewer with H.264 video is added (before ICE and
//! DTLS finish, so the pipeline's IDR is usually cached by the time the viewer connects) and
//! dropped, with the GOP cache, as soon as the last one is gone: with no subscriber the
//! pipeline does not encode.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::Candidate;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::candidates::{host_addrs, HostAddr, LocalAddrPicker};
use super::core::{Core, CoreEvent, CoreTransmit, StreamState, Via};
use super::offer::SdpLimits;
use super::stun::StunClient;
use super::turn::{TurnAllocation, TurnAuth, TurnLimits, TurnSidecar, TurnTransport};
use super::turn_stream::{self, StreamCommand, StreamEvent, StreamTarget};
use super::{Command, RtcHandle, Shared, ViewerId};
use crate::audio::{AudioBatch, AudioHandle, AudioSubscriber};
use crate::config::{self, Config, IceConfig, IceScheme, IceTransport, IceUrl};
use crate::media::{EncodedFrame, FrameSubscriber, MediaHandle, StillError};
use crate::progress::Heartbeat;
use crate::udp::UdpSocket;

/// Commands waiting for the engine; senders wait (HTTP handlers), never the engine.
const COMMAND_QUEUE: usize = 64;
/// Finished stills waiting to be written.
const STILL_QUEUE: usize = 16;
/// Largest UDP datagram read.
const RECV_BUF: usize = 2048;
/// Writes waiting for one TURN stream task; more are dropped (UDP semantics).
const STREAM_QUEUE: usize = 256;
/// Reads and connection changes from every TURN stream waiting for the engine.
const STREAM_EVENTS: usize = 64;
/// Longest the loop sleeps without looking at liveness.
const MAX_IDLE: Duration = Duration::from_secs(1);

/// What the engine is built from (see [`EngineSettings::from_config`]).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Where the one UDP socket binds (port 0 in tests).
    pub bind: SocketAddr,
    /// Addresses announced as host candidates (with the bound port).
    pub hosts: Vec<HostAddr>,
    /// `[server] max_viewers`.
    pub max_viewers: usize,
    /// `[snapshot] on_connect`: a still when a data channel opens.
    pub snapshot_on_connect: bool,
    /// A viewer silent this long is removed ([`super::SILENCE_TIMEOUT`]; tests shorten it).
    pub silence_timeout: Duration,
    /// `[server] max_sdp_*`: budgets for offers and trickle fragments.
    pub sdp_limits: SdpLimits,
    /// `[ice]`: STUN and TURN servers, full ICE or ICE-lite (the default: LAN only).
    pub ice: IceConfig,
}

impl EngineSettings {
    /// From `[server]` and `[snapshot]`: binds `0.0.0.0:rtc_udp_port`; announces every up
    /// IPv4 interface address (loopback only when `listen` is loopback) plus `public_addrs`.
    pub fn from_config(config: &Config) -> Self {
        let s = &config.server;
        let loopback = s.listen.ip().is_loopback();
        Self {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, s.rtc_udp_port)),
            hosts: host_addrs(loopback, &s.public_addrs),
            max_viewers: s.max_viewers,
            snapshot_on_connect: config.snapshot.on_connect,
            silence_timeout: super::SILENCE_TIMEOUT,
            sdp_limits: SdpLimits::from_config(s),
            ice: config.ice.clone(),
        }
    }
}

/// The bound engine; [`Engine::run`] it on a task, hand [`Engine::handle`]s to callers.
pub struct Engine {
    socket: UdpSocket,
    port: u16,
    handle: RtcHandle,
    commands: mpsc::Receiver<Command>,
    media: MediaHandle,
    audio: Option<AudioHandle>,
    hosts: Vec<HostAddr>,
    /// `[ice]`: the STUN servers asked for server-reflexive candidates.
    ice: IceConfig,
    /// Publishes the candidates found at run time to the handles (for new answers).
    extra_candidates: watch::Sender<Vec<Candidate>>,
    /// Beaten every turn of the loop: the systemd watchdog is fed only while it advances.
    heartbeat: Heartbeat,
}

impl Engine {
    /// Bind the UDP socket. Fails if the port is taken.
    pub async fn bind(settings: EngineSettings, media: MediaHandle) -> io::Result<Self> {
        init_crypto();
        let socket = UdpSocket::bind(settings.bind)?;
        let port = socket.local_addr()?.port();
        let mut candidates = Vec::new();
        for h in &settings.hosts {
            match Candidate::host(SocketAddr::from((h.ip, port)), "udp") {
                Ok(c) => candidates.push(c),
                Err(e) => tracing::warn!(ip = %h.ip, error = %e, "not a usable host candidate"),
            }
        }
        tracing::info!(
            port,
            candidates = ?candidates.iter().map(|c| c.addr()).collect::<Vec<_>>(),
            "webrtc udp listening"
        );
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (extra_candidates, extra_rx) = watch::channel(Vec::new());
        let handle = RtcHandle {
            commands: tx,
            shared: Arc::new(Shared {
                candidates,
                max_viewers: settings.max_viewers,
                snapshot_on_connect: settings.snapshot_on_connect,
                silence_timeout: settings.silence_timeout,
                sdp_limits: settings.sdp_limits,
                full_ice: settings.ice.full_ice(),
                extra_candidates: extra_rx,
                audio: Default::default(),
                slots: Arc::default(),
                rtc_built: Default::default(),
            }),
        };
        Ok(Self {
            socket,
            port,
            handle,
            commands,
            media,
            audio: None,
            hosts: settings.hosts,
            ice: settings.ice,
            extra_candidates,
            heartbeat: Heartbeat::default(),
        })
    }

    /// Beat `heartbeat` every turn of the loop (the daemon registers it with the watchdog).
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Send `audio` to every viewer whose offer has an audio m-line (Opus); without it, audio
    /// m-lines are answered rejected.
    pub fn with_audio(mut self, audio: AudioHandle) -> Self {
        self.handle
            .shared
            .audio
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.audio = Some(audio);
        self
    }

    /// A way in for callers (cloneable).
    pub fn handle(&self) -> RtcHandle {
        self.handle.clone()
    }

    /// The bound UDP address (the port viewers send to).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serve until `cancel` fires (or every handle is gone).
    pub async fn run(self, cancel: CancellationToken) {
        let Engine {
            socket,
            port,
            handle,
            mut commands,
            media,
            audio,
            hosts,
            ice,
            extra_candidates,
            heartbeat,
        } = self;
        // The engine keeps no sender: it stops when every caller's handle is gone.
        let shared = handle.shared.clone();
        drop(handle);
        let bound = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
        let (still_tx, mut still_rx) = mpsc::channel(STILL_QUEUE);
        let (stream_tx, mut stream_rx) = mpsc::channel(STREAM_EVENTS);
        let mut shell = Shell {
            socket,
            media,
            subscriber: None,
            audio,
            audio_subscriber: None,
            tasks: JoinSet::new(),
            still_tx,
            extra_candidates,
            streams: Vec::new(),
            stream_tx,
            cancel: cancel.child_token(),
        };
        // STUN servers are resolved off the loop (DNS may be slow or down); each joins the
        // core as a sidecar once it has an address.
        let (resolved_tx, mut resolved) = mpsc::channel(ice.stun_servers.len().max(1));
        for (raw, url) in ice.stun_servers.iter().zip(ice.stun_urls()) {
            shell
                .tasks
                .spawn(resolve_server(raw.clone(), url, resolved_tx.clone()));
        }
        drop(resolved_tx);
        // TURN servers too: a device that boots before DNS (or its network) is up gets its
        // relayed candidate once the name resolves, not never.
        let (turn_tx, mut turn_resolved) = mpsc::channel(ice.turn_servers.len().max(1));
        for (i, server) in ice.turn_servers.iter().enumerate() {
            let Ok(url) = server.parsed_url() else {
                continue; // refused by config validation already
            };
            let (raw, tx) = (server.url.clone(), turn_tx.clone());
            shell.tasks.spawn(async move {
                let addr =
                    resolve_with_backoff(&raw, || lookup(&url.host, url.port), tokio::time::sleep)
                        .await;
                let _ = tx.send((i, addr)).await;
            });
        }
        drop(turn_tx);
        let mut bases = LocalAddrPicker::new(hosts.clone());
        let mut core = Core::new(port, Box::new(LocalAddrPicker::new(hosts)), shared);
        shell.drain(&mut core);
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let now = Instant::now();
            let deadline = core
                .poll_timeout()
                .map_or(now + MAX_IDLE, |t| t.min(now + MAX_IDLE));
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => core.handle_command(Instant::now(), cmd),
                    None => break,
                },
                r = shell.socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => {
                        core.handle_datagram(Instant::now(), Via::Udp, source, bound, &buf[..n]);
                    }
                    Err(e) => tracing::debug!(error = %e, "udp recv failed"),
                },
                frame = next_frame(&mut shell.subscriber) => match frame {
                    Some(frame) => {
                        let skipped = shell.subscriber.as_ref().map_or(0, FrameSubscriber::skipped);
                        core.handle_frame(Instant::now(), &frame, skipped);
                    }
                    None => {
                        shell.subscriber = None;
                        core.handle_frames_ended(Instant::now());
                    }
                },
                frame = next_audio(&mut shell.audio_subscriber) => match frame {
                    Some(frames) => core.handle_audio(Instant::now(), &frames),
                    // The audio thread stopped: video goes on without it.
                    None => shell.audio_subscriber = None,
                },
                Some((id, channel, still)) = still_rx.recv() => {
                    core.handle_still(Instant::now(), id, channel, still);
                }
                Some((raw, server)) = resolved.recv() => {
                    // The base: the local address packets to the server leave from.
                    let base = if bound.ip().is_unspecified() {
                        bases.pick(server, port)
                    } else {
                        bound
                    };
                    let now = Instant::now();
                    let stun = StunClient::new(raw, server, base, ice.stun_refresh, now);
                    core.add_sidecar(Box::new(stun), now);
                }
                Some((i, addr)) = turn_resolved.recv() => {
                    if let Some(sidecar) = ice.turn_servers.get(i).and_then(|server| {
                        turn_sidecar(&ice, server, addr, bound)
                    }) {
                        core.add_sidecar(Box::new(sidecar), Instant::now());
                    }
                }
                Some((server, ev)) = stream_rx.recv() => {
                    let now = Instant::now();
                    match ev {
                        StreamEvent::Data(d) => {
                            let tls = shell.stream_tls(server);
                            core.handle_datagram(now, Via::Stream { server, tls }, server, bound, &d);
                        }
                        StreamEvent::Connected(local) => {
                            core.handle_stream(now, server, StreamState::Connected(local));
                        }
                        StreamEvent::Disconnected(why) => {
                            core.handle_stream(now, server, StreamState::Disconnected(why));
                        }
                    }
                }
                Some(_) = shell.tasks.join_next(), if !shell.tasks.is_empty() => {}
                _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(Instant::now()),
            }
            shell.drain(&mut core);
            heartbeat.beat();
        }
        let viewers = core.viewer_count();
        core.disconnect_all();
        shell.drain(&mut core);
        shell.tasks.shutdown().await;
        tracing::info!(viewers, "webrtc engine stopped");
    }
}

type StillResult = (
    ViewerId,
    str0m::channel::ChannelId,
    Result<bytes::Bytes, String>,
);

/// What the shell owns: the IO the core asks for.
struct Shell {
    socket: UdpSocket,
    media: MediaHandle,
    /// Held while the core wants video ([`CoreEvent::SubscribeVideo`]).
    subscriber: Option<FrameSubscriber>,
    /// The daemon's audio, when it has any.
    audio: Option<AudioHandle>,
    /// Held while the core wants audio ([`CoreEvent::SubscribeAudio`]).
    audio_subscriber: Option<AudioSubscriber>,
    /// Still requests waiting on the pipeline (bounded by its still queue).
    tasks: JoinSet<()>,
    still_tx: mpsc::Sender<StillResult>,
    /// Publishes [`Core::local_candidates`] to the handles.
    extra_candidates: watch::Sender<Vec<Candidate>>,
    /// TURN over TCP/TLS: one stream task per server (server, TLS, its command queue).
    streams: Vec<(SocketAddr, bool, mpsc::Sender<StreamCommand>)>,
    /// Given to each stream task: what they read and how their connection fares.
    stream_tx: mpsc::Sender<(SocketAddr, StreamEvent)>,
    /// Cancels the stream tasks with the engine.
    cancel: CancellationToken,
}

impl Shell {
    /// The draining rule: every transmit out, every event acted on.
    fn drain(&mut self, core: &mut Core) {
        loop {
            if let Some(t) = core.poll_transmit() {
                self.send(&t);
                continue;
            }
            let Some(e) = core.poll_event() else { break };
            match e {
                CoreEvent::SubscribeVideo => self.subscriber = Some(self.media.subscribe()),
                CoreEvent::ReleaseVideo => self.subscriber = None,
                CoreEvent::SubscribeAudio => {
                    self.audio_subscriber = self.audio.as_ref().map(AudioHandle::subscribe);
                }
                CoreEvent::ReleaseAudio => self.audio_subscriber = None,
                CoreEvent::Keyframe(cause) => self.media.request_keyframe(cause),
                CoreEvent::AudioLoss(percent) => {
                    if let Some(audio) = &self.audio {
                        audio.report_loss(percent);
                    }
                }
                CoreEvent::Still {
                    viewer,
                    channel,
                    max_bytes,
                } => self.request_still(viewer, channel, max_bytes),
                CoreEvent::CandidatesChanged => {
                    self.extra_candidates
                        .send_replace(core.local_candidates().to_vec());
                }
                CoreEvent::ViewerConnected { .. } | CoreEvent::ViewerRemoved { .. } => {}
                CoreEvent::Connect { server, tls, host } => self.connect(server, tls, host),
            }
        }
    }

    /// UDP is lossy anyway: a full socket buffer drops the datagram rather than stall every
    /// viewer.
    fn send(&self, t: &CoreTransmit) {
        match t.via {
            Via::Udp => {
                if let Err(e) = self.socket.try_send_to(&t.contents, t.destination) {
                    tracing::trace!(error = %e, dest = %t.destination, "udp send dropped");
                }
            }
            Via::Stream { server, .. } => {
                let Some((_, _, tx)) = self.streams.iter().find(|(s, _, _)| *s == server) else {
                    tracing::trace!(%server, "no stream to this server; dropped");
                    return;
                };
                if tx
                    .try_send(StreamCommand::Write(t.contents.clone()))
                    .is_err()
                {
                    tracing::trace!(%server, "TURN stream queue full; dropped");
                }
            }
        }
    }

    /// Whether the stream to `server` is TLS.
    fn stream_tls(&self, server: SocketAddr) -> bool {
        self.streams.iter().any(|(s, tls, _)| *s == server && *tls)
    }

    /// (Re)connect the stream to a TURN server, starting its task the first time.
    fn connect(&mut self, server: SocketAddr, tls: bool, host: String) {
        let tx = match self.streams.iter().find(|(s, _, _)| *s == server) {
            Some((_, _, tx)) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                let target = StreamTarget {
                    server,
                    transport: if tls {
                        TurnTransport::Tls
                    } else {
                        TurnTransport::Tcp
                    },
                    host,
                };
                self.tasks.spawn(turn_stream::run(
                    target,
                    rx,
                    self.stream_tx.clone(),
                    self.cancel.clone(),
                ));
                self.streams.push((server, tls, tx.clone()));
                tx
            }
        };
        if tx.try_send(StreamCommand::Connect).is_err() {
            tracing::debug!(%server, "TURN stream queue full; connect dropped");
        }
    }

    /// Ask the pipeline for a still on a task; it comes back through `still_tx`.
    fn request_still(&mut self, id: ViewerId, channel: str0m::channel::ChannelId, max: usize) {
        let media = self.media.clone();
        let tx = self.still_tx.clone();
        self.tasks.spawn(async move {
            let still = media.still(max).await.map_err(|e| match e {
                StillError::NoFrame => "no frame captured yet".to_owned(),
                other => other.to_string(),
            });
            let _ = tx.send((id, channel, still)).await;
        });
    }
}

/// Resolve a STUN server's host name off the loop ([`resolve_with_backoff`]); its IPv4
/// address is sent on `tx`.
async fn resolve_server(raw: String, url: IceUrl, tx: mpsc::Sender<(String, SocketAddr)>) {
    let addr = resolve_with_backoff(
        &raw,
        || async {
            lookup(&url.host, url.port)
                .await
                .and_then(|a| {
                    a.filter(SocketAddr::is_ipv4)
                        .ok_or_else(|| "no IPv4 address".into())
                })
                .map(Some)
        },
        tokio::time::sleep,
    )
    .await;
    let _ = tx.send((raw, addr)).await;
}

/// Look `host` up: its first IPv4 address, else its first address (viewers' candidates are
/// IPv4), `None` when it has none; the resolver's error as text.
async fn lookup(host: &str, port: u16) -> Result<Option<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| e.to_string())?
        .collect();
    Ok(addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied())
}

/// First wait after a failed lookup; it doubles up to [`RESOLVE_MAX_BACKOFF`].
const RESOLVE_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between lookups of an `[ice]` server that does not resolve.
const RESOLVE_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Look an `[ice]` server (`raw`, its URL for the log) up with `lookup` until it gives an
/// address, waiting with backoff between tries (1 s doubling to 5 min). The first failure is
/// a warning, the rest are logged at debug. Cancelled by dropping the future (the engine's
/// task set). `sleep` waits between tries (`tokio::time::sleep`; the tests record the waits).
async fn resolve_with_backoff<F, Fut, S, SleepFut>(
    raw: &str,
    mut lookup: F,
    mut sleep: S,
) -> SocketAddr
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<SocketAddr>, String>>,
    S: FnMut(Duration) -> SleepFut,
    SleepFut: std::future::Future<Output = ()>,
{
    let mut backoff = RESOLVE_BACKOFF;
    let mut warned = false;
    loop {
        let why = match lookup().await {
            Ok(Some(addr)) => {
                if warned {
                    tracing::info!(server = %raw, %addr, "ICE server resolved at last");
                } else {
                    tracing::debug!(server = %raw, %addr, "ICE server resolved");
                }
                return addr;
            }
            Ok(None) => "no address".to_owned(),
            Err(e) => e,
        };
        if warned {
            tracing::debug!(server = %raw, error = %why, "ICE server still not resolved");
        } else {
            tracing::warn!(server = %raw, error = %why, "cannot resolve ICE server; retrying with backoff");
            warned = true;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(RESOLVE_MAX_BACKOFF);
    }
}

/// The TURN allocation for one `[ice] turn_servers` entry, its host resolved to `addr`;
/// `None` for a URL config validation refuses.
fn turn_sidecar(
    ice: &IceConfig,
    server: &config::TurnServer,
    addr: SocketAddr,
    udp_local: SocketAddr,
) -> Option<TurnSidecar> {
    let url = server.parsed_url().ok()?;
    let transport = match (url.scheme, url.transport) {
        (IceScheme::Turns, _) => TurnTransport::Tls,
        (_, IceTransport::Tcp) => TurnTransport::Tcp,
        _ => TurnTransport::Udp,
    };
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let auth = match server.auth() {
        config::TurnAuth::LongTerm {
            username,
            credential,
        } => TurnAuth::LongTerm {
            username: username.to_owned(),
            credential: credential.to_owned(),
        },
        config::TurnAuth::Secret(secret) => TurnAuth::Secret {
            secret: secret.to_owned(),
            name: "snaprtcd".to_owned(),
            ttl: ice.credential_ttl,
        },
    };
    tracing::info!(url = %server.url, %addr, %transport, "TURN server");
    let alloc = TurnAllocation::new(
        addr,
        transport,
        udp_local,
        auth,
        TurnLimits::default(),
        unix,
        Instant::now(),
    );
    Some(TurnSidecar::new(
        alloc,
        server.url.clone(),
        url.host.clone(),
    ))
}

async fn next_frame(sub: &mut Option<FrameSubscriber>) -> Option<EncodedFrame> {
    match sub {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_audio(sub: &mut Option<AudioSubscriber>) -> Option<AudioBatch> {
    match sub {
        Some(s) => s.recv_batch().await,
        None => std::future::pending().await,
    }
}

/// str0m needs a process-wide crypto provider (aws-lc-rs); installing twice is harmless.
pub(crate) fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name that does not resolve at first (a device booting before DNS is up) is looked up
    /// again with backoff until it does; the waits between tries are recorded, not slept.
    #[tokio::test]
    async fn a_server_that_resolves_late_is_retried_with_backoff() {
        let tries = std::cell::Cell::new(0);
        let mut waits = Vec::new();
        let addr = SocketAddr::from(([192, 0, 2, 1], 3478));
        let got = resolve_with_backoff(
            "turn:turn.example",
            || {
                tries.set(tries.get() + 1);
                let n = tries.get();
                async move {
                    match n {
                        1..=3 => Err("Temporary failure in name resolution".to_owned()),
                        4 => Ok(None),
                        _ => Ok(Some(addr)),
                    }
                }
            },
            |d: Duration| {
                waits.push(d.as_secs());
                std::future::ready(())
            },
        )
        .await;
        assert_eq!(got, addr);
        assert_eq!(tries.get(), 5);
        assert_eq!(waits, [1, 2, 4, 8], "1 s doubling");
    }

    /// The wait between lookups stops doubling at 5 min.
    #[tokio::test]
    async fn the_backoff_is_capped() {
        let tries = std::cell::Cell::new(0);
        let mut waits = Vec::new();
        let addr = SocketAddr::from(([192, 0, 2, 1], 3478));
        resolve_with_backoff(
            "stun:stun.example",
            || {
                tries.set(tries.get() + 1);
                let done = tries.get() > 12;
                async move { Ok(done.then_some(addr)) }
            },
            |d: Duration| {
                waits.push(d.as_secs());
                std::future::ready(())
            },
        )
        .await;
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
