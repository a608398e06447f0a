//! `snaprtcd-soak`: the soak benchmark's client (bench/soak/run.sh starts the daemon and this).
//!
//! `--clients` tasks run cycles against a running snaprtcd until `--seconds` have passed. A
//! cycle is:
//! - a SnapRTC exchange, as a page does with the built-in capture member: negotiate, WebSocket,
//!   JSON handshake, `Sync(s,false)`, wait for `signalStart`, `SignalCapture(s, offer)` with a
//!   str0m offer holding a data channel (lz-string packed like simple-peer's), the answer from
//!   `signalInitiator`, ICE+DTLS+SCTP up and the JPEG the daemon sends on open; then the
//!   WebSocket and the peer are dropped (the daemon's viewer ends by its silence timeout);
//! - a WHEP viewer: `POST /whep` with a recvonly H.264 offer, ~`--video-seconds` of video
//!   received, `DELETE` of its resource.
//!
//! It watches the daemon: RSS, threads (`/proc/PID/status`) and open fds (`/proc/PID/fd`) from
//! outside, tokio tasks and viewers from `GET /metrics`. A line at the start and every
//! `--interval`; each sample is taken with the clients paused between cycles, so connections
//! in flight do not count. At the end, the change from the sample after `--warmup` to the last
//! one, for RSS and fds, against "flat within ±10 %"; then, after the lingering SnapRTC viewers
//! have timed out, one more sample with the clients stopped. Errors are counted and the first
//! ones printed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::RwLock;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

/// Longest wait for any one step of a cycle (an HTTP answer, a record, ICE+DTLS up).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many errors are printed in full (all are counted).
const ERRORS_PRINTED: u64 = 20;

struct Args {
    /// `http://host:port` of the daemon.
    url: String,
    hub_path: String,
    pid: u32,
    clients: usize,
    seconds: u64,
    interval: u64,
    warmup: u64,
    video_seconds: f64,
    /// Wait after the clients stop before the last sample (the daemon's silence timeout and a
    /// margin, so lingering SnapRTC viewers are gone).
    drain_seconds: u64,
}

const USAGE: &str = "usage: snaprtcd-soak --url http://127.0.0.1:PORT --pid PID \
[--hub /snaprtc-hub] [--clients 4] [--seconds 3600] [--interval 60] [--warmup 60] \
[--video-seconds 2] [--drain-seconds 17]";

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            url: String::new(),
            hub_path: "/snaprtc-hub".into(),
            pid: 0,
            clients: 4,
            seconds: 3600,
            interval: 60,
            warmup: 60,
            video_seconds: 2.0,
            drain_seconds: 17,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| anyhow!("{flag} {value}: {e}\n{USAGE}");
            match flag.as_str() {
                "--url" => a.url = value.trim_end_matches('/').to_owned(),
                "--hub" => a.hub_path = value.clone(),
                "--pid" => a.pid = value.parse().map_err(|e| bad(&e))?,
                "--clients" => a.clients = value.parse().map_err(|e| bad(&e))?,
                "--seconds" => a.seconds = value.parse().map_err(|e| bad(&e))?,
                "--interval" => a.interval = value.parse().map_err(|e| bad(&e))?,
                "--warmup" => a.warmup = value.parse().map_err(|e| bad(&e))?,
                "--video-seconds" => a.video_seconds = value.parse().map_err(|e| bad(&e))?,
                "--drain-seconds" => a.drain_seconds = value.parse().map_err(|e| bad(&e))?,
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        if a.url.is_empty() || a.pid == 0 {
            bail!("--url and --pid are required\n{USAGE}");
        }
        if a.clients == 0 || a.interval == 0 {
            bail!("--clients and --interval must be at least 1\n{USAGE}");
        }
        Ok(a)
    }

    fn authority(&self) -> Result<&str> {
        self.url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--url must start with http:// (no TLS here): {}", self.url))
    }
}

/// Counters the client tasks bump and the monitor prints.
#[derive(Default)]
struct Stats {
    snaprtc_cycles: AtomicU64,
    whep_cycles: AtomicU64,
    video_frames: AtomicU64,
    errors: AtomicU64,
}

impl Stats {
    fn error(&self, client: usize, what: &str, e: &anyhow::Error) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= ERRORS_PRINTED {
            eprintln!("soak: error {n} (client {client}, {what}): {e:#}");
        } else if n == ERRORS_PRINTED + 1 {
            eprintln!("soak: more errors are counted, not printed");
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let authority = args.authority()?.to_owned();
    let stats = Arc::new(Stats::default());
    // Clients hold a read guard for each cycle; the monitor takes the write guard to sample
    // between cycles.
    let gate = Arc::new(RwLock::new(()));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);

    println!(
        "soak: {} clients for {} s against {} (pid {}), a line every {} s",
        args.clients, args.seconds, args.url, args.pid, args.interval
    );
    println!("{}", Sample::HEADER);
    let first = sample(&args, &authority, started, &stats).await?;
    println!("{first}");

    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..args.clients {
        let (stats, gate, authority) = (stats.clone(), gate.clone(), authority.clone());
        let plan = Plan {
            authority,
            hub_path: args.hub_path.clone(),
            video: Duration::from_secs_f64(args.video_seconds),
        };
        tasks.spawn(client_loop(client, plan, end, stats, gate));
    }

    let mut samples = vec![first];
    let mut next = started;
    loop {
        next += Duration::from_secs(args.interval);
        let at = next.min(end);
        tokio::time::sleep_until(at.into()).await;
        let quiet = gate.write().await;
        let s = sample(&args, &authority, started, &stats).await?;
        drop(quiet);
        println!("{s}");
        samples.push(s);
        if at >= end {
            break;
        }
    }
    while tasks.join_next().await.is_some() {}

    summarize(&args, &samples);
    tokio::time::sleep(Duration::from_secs(args.drain_seconds)).await;
    let after = sample(&args, &authority, started, &stats).await?;
    println!(
        "soak: {} s after the clients stopped (lingering SnapRTC viewers timed out):",
        args.drain_seconds
    );
    println!("{}\n{after}", Sample::HEADER);
    Ok(())
}

/// What every client task needs to know.
struct Plan {
    authority: String,
    hub_path: String,
    video: Duration,
}

async fn client_loop(
    client: usize,
    plan: Plan,
    end: Instant,
    stats: Arc<Stats>,
    gate: Arc<RwLock<()>>,
) {
    let mut n = 0u64;
    while Instant::now() < end {
        let cycle = gate.read().await;
        n += 1;
        let session = format!("soak-{client}-{n}");
        match tokio::time::timeout(4 * STEP_TIMEOUT, snaprtc_cycle(&plan, &session)).await {
            Ok(Ok(())) => {
                stats.snaprtc_cycles.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => stats.error(client, "snaprtc", &e),
            Err(_) => stats.error(client, "snaprtc", &anyhow!("cycle timed out")),
        }
        match tokio::time::timeout(4 * STEP_TIMEOUT, whep_cycle(&plan)).await {
            Ok(Ok(frames)) => {
                stats.whep_cycles.fetch_add(1, Ordering::Relaxed);
                stats.video_frames.fetch_add(frames, Ordering::Relaxed);
            }
            Ok(Err(e)) => stats.error(client, "whep", &e),
            Err(_) => stats.error(client, "whep", &anyhow!("cycle timed out")),
        }
        drop(cycle);
        // Let a waiting monitor in before the next cycle.
        tokio::task::yield_now().await;
    }
}

/// One SnapRTC exchange with the built-in capture member, through to the still on open.
async fn snaprtc_cycle(plan: &Plan, session: &str) -> Result<()> {
    let mut hub = Hub::connect(plan).await?;
    hub.invoke("Sync", json!([session, false])).await?;
    hub.wait_invocation("signalStart").await?;

    let (mut peer, offer, pending) = Peer::offer(false, true).await?;
    let signal = json!({"type": "offer", "sdp": offer}).to_string();
    let packed = lz_str::compress_to_encoded_uri_component(signal.as_str());
    hub.invoke("SignalCapture", json!([session, packed]))
        .await?;
    let payload = hub.wait_invocation("signalInitiator").await?;
    let wide = lz_str::decompress_from_encoded_uri_component(&payload)
        .ok_or_else(|| anyhow!("signalInitiator payload is not lz-string: {payload:.80}"))?;
    let answer: Value = serde_json::from_str(&String::from_utf16(&wide)?)?;
    if answer["type"] != "answer" {
        bail!("signalInitiator sent {answer:.200}");
    }
    let sdp = answer["sdp"].as_str().unwrap_or_default();
    peer.accept(pending, sdp)?;
    hub.close().await;

    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    peer.drive(deadline, |e| match e {
        Event::ChannelData(d) if d.binary && d.data.starts_with(&[0xff, 0xd8]) => Ok(true),
        Event::ChannelData(d) => bail!(
            "wanted a JPEG on the data channel, got {:.120}",
            String::from_utf8_lossy(&d.data)
        ),
        _ => Ok(false),
    })
    .await
    .context("waiting for the still on open")
}

/// One WHEP viewer: POST, video for `plan.video` after the first frame, DELETE. Returns the
/// frames received.
async fn whep_cycle(plan: &Plan) -> Result<u64> {
    let (mut peer, offer, pending) = Peer::offer(true, false).await?;
    let r = http(
        &plan.authority,
        "POST",
        "/whep",
        Some("application/sdp"),
        offer.as_bytes(),
    )
    .await?;
    if r.status != 201 {
        bail!("POST /whep: {} {:.200}", r.status, r.text());
    }
    let location = r
        .header("location")
        .ok_or_else(|| anyhow!("POST /whep: 201 without Location"))?
        .to_owned();
    peer.accept(pending, &r.text())?;

    let mut frames = 0u64;
    let mut first: Option<Instant> = None;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT + plan.video;
    let video = plan.video;
    let watched = peer
        .drive(deadline, |e| {
            if matches!(e, Event::MediaData(_)) {
                frames += 1;
                first.get_or_insert_with(Instant::now);
            }
            Ok(first.is_some_and(|t| t.elapsed() >= video))
        })
        .await
        .with_context(|| format!("video ({frames} frames so far)"));

    let r = http(&plan.authority, "DELETE", &location, None, b"").await?;
    watched?;
    if r.status != 200 {
        bail!("DELETE {location}: {} {:.200}", r.status, r.text());
    }
    Ok(frames)
}

/// A str0m peer like a browser: full ICE on a loopback UDP socket.
struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
}

impl Peer {
    /// A peer and its offer: a recvonly H.264 video m-line and/or a data channel.
    async fn offer(video: bool, channel: bool) -> Result<(Peer, String, SdpPendingOffer)> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder().enable_h264(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        let mut api = rtc.sdp_api();
        if video {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        }
        if channel {
            api.add_channel("snap".into());
        }
        let (offer, pending) = api.apply().ok_or_else(|| anyhow!("str0m made no offer"))?;
        let sdp = offer.to_sdp_string();
        Ok((Peer { rtc, socket, local }, sdp, pending))
    }

    fn accept(&mut self, pending: SdpPendingOffer, answer: &str) -> Result<()> {
        let answer = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| anyhow!("answer SDP: {e}: {answer:.200}"))?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        Ok(())
    }

    /// Run the peer like a browser's event loop until `on_event` returns true; an error at
    /// `deadline`.
    async fn drive(
        &mut self,
        deadline: tokio::time::Instant,
        mut on_event: impl FnMut(Event) -> Result<bool>,
    ) -> Result<()> {
        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = loop {
                match self.rtc.poll_output()? {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        self.socket.send_to(&t.contents, t.destination).await?;
                    }
                    Output::Event(e) => {
                        if on_event(e)? {
                            return Ok(());
                        }
                    }
                }
            };
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, source) = r?;
                    let Ok(contents) = DatagramRecv::try_from(&buf[..n]) else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents,
                    });
                    self.rtc.handle_input(input)?;
                }
                _ = tokio::time::sleep_until(timeout.into()) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                }
                _ = tokio::time::sleep_until(deadline) => bail!("timed out"),
            }
        }
    }
}

/// A SignalR JSON hub connection.
struct Hub {
    ws: WebSocketStream<TcpStream>,
    records: std::collections::VecDeque<String>,
    invocations: u64,
}

impl Hub {
    async fn connect(plan: &Plan) -> Result<Hub> {
        let path = format!("{}/negotiate?negotiateVersion=1", plan.hub_path);
        let r = http(&plan.authority, "POST", &path, None, b"").await?;
        if r.status != 200 {
            bail!("negotiate: {} {:.200}", r.status, r.text());
        }
        let v: Value = serde_json::from_slice(&r.body).context("negotiate body")?;
        let token = v["connectionToken"]
            .as_str()
            .ok_or_else(|| anyhow!("negotiate: no connectionToken in {v}"))?;
        let url = format!("ws://{}{}?id={token}", plan.authority, plan.hub_path);
        let tcp = TcpStream::connect(&plan.authority).await?;
        tcp.set_nodelay(true)?;
        let (ws, _) = step(client_async(url, tcp)).await?.context("upgrade")?;
        let mut hub = Hub {
            ws,
            records: Default::default(),
            invocations: 0,
        };
        hub.send(r#"{"protocol":"json","version":1}"#).await?;
        let hs = hub.next_record().await?;
        if hs.trim() != "{}" {
            bail!("handshake answered {hs}");
        }
        Ok(hub)
    }

    async fn send(&mut self, record: &str) -> Result<()> {
        self.ws.send(Message::text(format!("{record}\x1e"))).await?;
        Ok(())
    }

    /// `invoke` as the JS client does: with an invocationId; the Completion is checked by
    /// `wait_invocation`.
    async fn invoke(&mut self, target: &str, arguments: Value) -> Result<()> {
        self.invocations += 1;
        let msg = json!({
            "type": 1,
            "invocationId": self.invocations.to_string(),
            "target": target,
            "arguments": arguments,
        });
        self.send(&msg.to_string()).await
    }

    async fn next_record(&mut self) -> Result<String> {
        loop {
            if let Some(r) = self.records.pop_front() {
                return Ok(r);
            }
            let msg = step(self.ws.next())
                .await?
                .ok_or_else(|| anyhow!("hub connection closed"))??;
            match msg {
                Message::Text(t) => self.records.extend(
                    t.as_str()
                        .split('\x1e')
                        .filter(|r| !r.is_empty())
                        .map(str::to_owned),
                ),
                Message::Close(c) => bail!("hub closed the connection: {c:?}"),
                _ => {}
            }
        }
    }

    /// The first argument of the next Invocation of `target` (a string, or "" for none);
    /// skips other records, fails on an error Completion or a Close.
    async fn wait_invocation(&mut self, target: &str) -> Result<String> {
        loop {
            let rec = self.next_record().await?;
            let v: Value = serde_json::from_str(&rec)?;
            match v["type"].as_u64() {
                Some(1)
                    if v["target"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(target)) =>
                {
                    return Ok(v["arguments"][0].as_str().unwrap_or_default().to_owned());
                }
                Some(3) if v.get("error").is_some() => bail!("invoke failed: {rec}"),
                // Other invocations (none expected), Completions, Pings.
                Some(1 | 3 | 6) => {}
                Some(7) => bail!("hub sent Close: {rec}"),
                _ => bail!("waiting for {target}, got {rec:.200}"),
            }
        }
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// `fut` within [`STEP_TIMEOUT`].
async fn step<T>(fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("no answer within {STEP_TIMEOUT:?}"))
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), read to the end.
async fn http(
    authority: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse> {
    let exchange = async {
        let mut tcp = TcpStream::connect(authority).await?;
        let ct = content_type
            .map(|t| format!("Content-Type: {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body).await?;
        let mut buf = Vec::with_capacity(4096);
        tcp.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = step(exchange)
        .await?
        .with_context(|| format!("{method} {path}"))?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no end of the HTTP head"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 || body.len() < nl + 2 + size {
            break;
        }
        out.extend_from_slice(&body[nl + 2..nl + 2 + size]);
        body = &body[(nl + 4 + size).min(body.len())..];
    }
    out
}

/// One line of the report.
struct Sample {
    elapsed: Duration,
    rss_kib: u64,
    fds: usize,
    threads: u64,
    /// From `/metrics`; `None` when the daemon does not export them.
    tasks: Option<u64>,
    viewers: Option<u64>,
    snaprtc_cycles: u64,
    whep_cycles: u64,
    video_frames: u64,
    errors: u64,
}

impl Sample {
    const HEADER: &'static str =
        "soak  elapsed   rss_MiB   fds  threads  tasks  viewers  snaprtc    whep  frames  errors";
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
        let secs = self.elapsed.as_secs();
        write!(
            f,
            "soak  {:>4}:{:02}  {:>8.1}  {:>4}  {:>7}  {:>5}  {:>7}  {:>7}  {:>6}  {:>6}  {:>6}",
            secs / 60,
            secs % 60,
            self.rss_kib as f64 / 1024.0,
            self.fds,
            self.threads,
            opt(self.tasks),
            opt(self.viewers),
            self.snaprtc_cycles,
            self.whep_cycles,
            self.video_frames,
            self.errors
        )
    }
}

/// Read the daemon's figures now.
async fn sample(args: &Args, authority: &str, started: Instant, stats: &Stats) -> Result<Sample> {
    let pid = args.pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the daemon (pid {pid}) is gone"))?;
    let field = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let metrics = match http(authority, "GET", "/metrics", None, b"").await {
        Ok(r) if r.status == 200 => r.text(),
        Ok(r) => bail!("GET /metrics: {}", r.status),
        Err(e) => return Err(e.context("GET /metrics")),
    };
    let metric = |name: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Ok(Sample {
        elapsed: started.elapsed(),
        rss_kib: field("VmRSS:"),
        fds: settled_fd_count(pid).await?,
        threads: field("Threads:"),
        tasks: metric("snaprtcd_tokio_tasks"),
        viewers: metric("snaprtcd_viewers"),
        snaprtc_cycles: stats.snaprtc_cycles.load(Ordering::Relaxed),
        whep_cycles: stats.whep_cycles.load(Ordering::Relaxed),
        video_frames: stats.video_frames.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
    })
}

/// The daemon's open fds, read until two reads 100 ms apart agree (at most 2 s): a connection
/// the client just closed may take the daemon a moment to close on its side.
async fn settled_fd_count(pid: u32) -> Result<usize> {
    let count = || -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("/proc/{pid}/fd"))?
            .count())
    };
    let mut last = count()?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = count()?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

/// Start (after warm-up) against end, for RSS and fds, against ±10 %.
fn summarize(args: &Args, samples: &[Sample]) {
    let Some(last) = samples.last() else { return };
    let warm = Duration::from_secs(args.warmup);
    let base = samples
        .iter()
        .find(|s| s.elapsed >= warm && !std::ptr::eq(*s, last))
        .unwrap_or(&samples[0]);
    let at = |s: &Sample| {
        let secs = s.elapsed.as_secs();
        format!("{}:{:02}", secs / 60, secs % 60)
    };
    println!(
        "soak: {} SnapRTC exchanges and {} WHEP viewers ({} video frames, {:.1} per viewer) in {}, {} errors",
        last.snaprtc_cycles,
        last.whep_cycles,
        last.video_frames,
        last.video_frames as f64 / last.whep_cycles.max(1) as f64,
        at(last),
        last.errors
    );
    let verdict = |name: &str, unit: &str, a: f64, b: f64| {
        let change = if a > 0.0 { 100.0 * (b - a) / a } else { 0.0 };
        let ok = change.abs() <= 10.0;
        let digits = usize::from(!unit.is_empty());
        println!(
            "soak: {name} {a:.digits$}{unit} at {} -> {b:.digits$}{unit} at {}: {change:+.1} % (target: flat within ±10 %: {})",
            at(base),
            at(last),
            if ok { "met" } else { "MISSED" }
        );
    };
    verdict(
        "RSS",
        " MiB",
        base.rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
    );
    verdict("open fds", "", base.fds as f64, last.fds as f64);
    println!(
        "soak: threads {} -> {}, tokio tasks {} -> {}",
        base.threads,
        last.threads,
        base.tasks.map_or("-".into(), |n| n.to_string()),
        last.tasks.map_or("-".into(), |n| n.to_string())
    );
}
