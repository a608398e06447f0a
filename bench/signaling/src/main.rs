//! `snaprtc-bench`: a signalling benchmark. It opens N WebSocket connections to a running
//! server, in pairs, and has the pairs do the SnapRTC exchange: an initiator and a capture side
//! meet, the initiator's offer is relayed to the capture side and the answer back.
//!
//! Two servers speak two protocols:
//! - `--server snaprtc`: snaprtcd (or any SnapRTC SignalR hub). Each connection negotiates
//!   (`POST {hub}/negotiate?negotiateVersion=1`), upgrades with its connection token, does the
//!   JSON handshake; the initiator invokes `Sync(s,false)`, the capture side `Sync(s,true)`, the
//!   initiator waits for `signalStart`. An exchange is `SignalCapture(s,offer)` relayed as
//!   `signalCapture` plus `SignalInitiator(s,answer)` relayed as `signalInitiator`, with
//!   `invoke` (so each call also gets a Completion) as SnapRTC pages do.
//! - `--server peerjs`: PeerJS's server (npm `peer`). Each connection opens
//!   `{path}?key=peerjs&id=ID&token=T` and waits for `OPEN`; an exchange is an `OFFER` sent to
//!   the other peer's id and an `ANSWER` back, the way PeerJS clients relay them.
//!
//! Several `--url`s make a fleet: pair `i`'s initiator goes to instance `i mod n` and its capture
//! side to the next one, so every exchange crosses instances. Several `--pid`s (the instances,
//! and Redis) are summed.
//!
//! It prints connections held, the server's RSS and CPU time (from `/proc/PID`), the one-way
//! relay latency (p50/p90/p99/max over offers and answers), exchanges per second and exchanges
//! per server CPU-second, then one `RESULT key=value ...` line for scripts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{interval_at, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServerKind {
    /// snaprtcd's SignalR hub (SnapRTC protocol).
    Snaprtc,
    /// PeerJS's server (its own WebSocket protocol).
    Peerjs,
}

#[derive(Parser, Debug)]
#[command(about = "SnapRTC signalling benchmark: N connections in pairs doing offer/answer")]
struct Args {
    /// Which protocol the server speaks.
    #[arg(long, value_enum, default_value = "snaprtc")]
    server: ServerKind,
    /// snaprtc: the hub, e.g. http://127.0.0.1:8080/snaprtc-hub; repeat it for the instances
    /// of a fleet (each pair then spans two of them).
    /// peerjs: the socket path, e.g. ws://127.0.0.1:9000/peerjs.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// PID of a server process, to read its RSS and CPU time from /proc; repeat it for every
    /// process of a fleet (Redis included): their figures are summed.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Connections to open (two per pair).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Pairs that exchange during the measured phase (default: all); the rest only hold.
    #[arg(long)]
    active_pairs: Option<usize>,
    /// Exchanges per second over all active pairs; 0 means each pair loops flat out.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Length of the measured exchange phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Characters in each offer and answer payload (an lz-string'd trickle:false SDP is ~1-2 KB).
    #[arg(long, default_value_t = 1200)]
    payload_bytes: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Bearer token for a hub with `auth = "token"`.
    #[arg(long)]
    token: Option<String>,
    /// snaprtc: relay with `send` (no Completion) instead of `invoke`.
    #[arg(long)]
    send: bool,
    /// Wait this long after the last connection before reading the server's RSS.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Client keep-alive interval (default: what each official client uses, SignalR 15 s
    /// without sending anything, PeerJS 5 s regardless).
    #[arg(long, value_parser = humantime::parse_duration)]
    keepalive: Option<Duration>,
    /// A Redis (`host:port`) whose commands to count over the measured phase (the fleet's
    /// backplane): reports Redis commands per exchange.
    #[arg(long)]
    redis: Option<String>,
    /// Give up on one exchange (and that pair) after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    exchange_timeout: Duration,
}

/// What every pair task needs to know.
struct Plan {
    kind: ServerKind,
    /// `(host:port, path)` of each instance: the hub or the PeerJS socket.
    servers: Vec<(String, String)>,
    token: Option<String>,
    use_send: bool,
    payload_offer: String,
    payload_answer: String,
    active_pairs: usize,
    rate: f64,
    keepalive: Duration,
    exchange_timeout: Duration,
    /// Makes ids unique across runs against the same PeerJS server.
    run_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Connecting,
    Measure {
        start: tokio::time::Instant,
        end: tokio::time::Instant,
    },
    Done,
}

/// What an active pair reports at the end of the measured phase.
#[derive(Default)]
struct PairReport {
    exchanges: u64,
    /// One-way relay latencies in microseconds (offers and answers).
    latencies_us: Vec<u32>,
    error: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Two workers: the server under test gets the other half of this 2-core machine's time
    // only when it needs it, as a real client population would leave it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let servers = args
        .urls
        .iter()
        .map(|u| split_url(u))
        .collect::<Result<Vec<_>>>()?;
    let pairs = args.connections / 2;
    if pairs == 0 {
        bail!("--connections must be at least 2");
    }
    let active_pairs = args.active_pairs.unwrap_or(pairs).min(pairs);
    let run_id = format!("{:x}", std::process::id() ^ (now_nanos() as u32));
    let plan = Arc::new(Plan {
        kind: args.server,
        servers,
        token: args.token.clone(),
        use_send: args.send,
        payload_offer: payload('o', args.payload_bytes),
        payload_answer: payload('a', args.payload_bytes),
        active_pairs,
        rate: args.rate,
        // What each official client sends when idle: SignalR 15 s, PeerJS 5 s.
        keepalive: args.keepalive.unwrap_or(match args.server {
            ServerKind::Snaprtc => Duration::from_secs(15),
            ServerKind::Peerjs => Duration::from_secs(5),
        }),
        exchange_timeout: args.exchange_timeout,
        run_id,
    });

    println!(
        "server: {:?} at {} (pid {:?})",
        args.server,
        args.urls.join(" "),
        args.pids
    );
    if let Some(m) = fleet_mem(&args.pids)? {
        println!("server RSS before: {:.1} MiB", kib_to_mib(m.rss_kib));
    }

    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(1024);
    let (report_tx, mut report_rx) = mpsc::channel::<PairReport>(1024);
    let setup_slots = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let connect_start = Instant::now();
    for i in 0..pairs {
        let plan = plan.clone();
        let slots = setup_slots.clone();
        let phase = phase_rx.clone();
        let ready = ready_tx.clone();
        let report = report_tx.clone();
        tasks.spawn(pair_task(i, plan, slots, phase, ready, report));
    }
    drop(ready_tx);
    drop(report_tx);

    // Connect phase.
    let mut held_pairs = 0usize;
    let mut failed = 0usize;
    let mut first_errors = Vec::new();
    let mut last_print = Instant::now();
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => held_pairs += 1,
            Err(e) => {
                failed += 1;
                if first_errors.len() < 5 {
                    first_errors.push(e);
                }
            }
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            println!("  ... {} connections up", held_pairs * 2);
            last_print = Instant::now();
        }
        if held_pairs + failed == pairs {
            break;
        }
    }
    let connect_time = connect_start.elapsed();
    println!(
        "connections: requested {}, held {} ({} pairs failed to set up), set up in {:.1} s",
        pairs * 2,
        held_pairs * 2,
        failed,
        connect_time.as_secs_f64()
    );
    for e in &first_errors {
        println!("  setup error: {e}");
    }

    tokio::time::sleep(args.settle).await;
    let mut rss_connected = None;
    if let Some(m) = fleet_mem(&args.pids)? {
        println!(
            "server RSS holding {} connections: {:.1} MiB (peak {:.1} MiB)",
            held_pairs * 2,
            kib_to_mib(m.rss_kib),
            kib_to_mib(m.hwm_kib)
        );
        rss_connected = Some(m.rss_kib);
    }

    // Measured phase.
    let active = active_pairs.min(held_pairs);
    let server_cpu_before = fleet_cpu(&args.pids)?;
    let redis_before = match &args.redis {
        Some(r) => Some(redis_calls(r).await?),
        None => None,
    };
    let self_cpu_before = proc_cpu_secs(std::process::id())?;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = start + args.duration;
    phase_tx.send(Phase::Measure { start, end })?;
    let mut exchanges = 0u64;
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = Vec::new();
    let mut reports = 0usize;
    while reports < active {
        let Some(r) = report_rx.recv().await else {
            break;
        };
        reports += 1;
        exchanges += r.exchanges;
        latencies.extend_from_slice(&r.latencies_us);
        if let Some(e) = r.error {
            errors.push(e);
        }
    }
    let measured = tokio::time::Instant::now().saturating_duration_since(start);
    let server_split = match (server_cpu_before, fleet_cpu(&args.pids)?) {
        (Some(before), Some(after)) => Some((after.0 - before.0, after.1 - before.1)),
        _ => None,
    };
    let server_cpu = match server_split {
        Some((user, system)) => Some(user + system),
        _ => None,
    };
    let self_cpu = proc_cpu_secs(std::process::id())? - self_cpu_before;
    let redis_per_exchange = match (&args.redis, redis_before) {
        (Some(r), Some(before)) => {
            let calls = redis_calls(r).await? - before;
            Some(calls as f64 / exchanges.max(1) as f64)
        }
        _ => None,
    };

    let secs = measured.as_secs_f64();
    println!(
        "exchange phase: {:.2} s, {} active pairs, target {}",
        secs,
        active,
        if args.rate > 0.0 {
            format!("{} exchanges/s", args.rate)
        } else {
            "flat out".to_owned()
        }
    );
    println!(
        "exchanges: {} ({:.0}/s), {} pairs failed{}",
        exchanges,
        exchanges as f64 / secs,
        errors.len(),
        errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[idx] as f64 / 1000.0
    };
    let (p50, p90, p99, max) = (pct(0.5), pct(0.9), pct(0.99), pct(1.0));
    println!(
        "relay latency (one way, {} samples): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        latencies.len(),
        p50,
        p90,
        p99,
        max
    );
    let per_cpu = server_cpu.map(|c| exchanges as f64 / c.max(0.01));
    if let (Some(c), Some((user, system))) = (server_cpu, server_split) {
        println!(
            "server CPU per exchange: {:.1} us user + {:.1} us kernel",
            1e6 * user / exchanges.max(1) as f64,
            1e6 * system / exchanges.max(1) as f64
        );
        println!(
            "server CPU: {:.2} s ({:.0}% of one core) -> {:.0} exchanges per server CPU-second",
            c,
            100.0 * c / secs,
            per_cpu.unwrap_or(f64::NAN)
        );
    }
    if let Some(n) = redis_per_exchange {
        println!("Redis commands per exchange: {n:.2}");
    }
    println!(
        "bench CPU: {:.2} s ({:.0}% of one core)",
        self_cpu,
        100.0 * self_cpu / secs
    );
    let mut rss_after = None;
    if let Some(m) = fleet_mem(&args.pids)? {
        println!(
            "server RSS after the exchanges: {:.1} MiB (peak {:.1} MiB)",
            kib_to_mib(m.rss_kib),
            kib_to_mib(m.hwm_kib)
        );
        rss_after = Some(m.rss_kib);
    }
    println!(
        "RESULT server={:?} connections_held={} rss_connected_mib={} rss_after_mib={} exchanges={} seconds={:.2} exchanges_per_s={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} server_cpu_s={} server_user_us_per_exchange={} server_sys_us_per_exchange={} exchanges_per_cpu_s={} failed_pairs={} redis_commands_per_exchange={}",
        args.server,
        held_pairs * 2,
        rss_connected.map_or("na".into(), |k| format!("{:.1}", kib_to_mib(k))),
        rss_after.map_or("na".into(), |k| format!("{:.1}", kib_to_mib(k))),
        exchanges,
        secs,
        exchanges as f64 / secs,
        p50,
        p99,
        max,
        server_cpu.map_or("na".into(), |c| format!("{c:.2}")),
        server_split.map_or("na".into(), |(u, _)| format!(
            "{:.1}",
            1e6 * u / exchanges.max(1) as f64
        )),
        server_split.map_or("na".into(), |(_, k)| format!(
            "{:.1}",
            1e6 * k / exchanges.max(1) as f64
        )),
        per_cpu.map_or("na".into(), |x| format!("{x:.0}")),
        failed + errors.len(),
        redis_per_exchange.map_or("na".into(), |x| format!("{x:.2}")),
    );

    phase_tx.send(Phase::Done)?;
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One pair from setup to the end: connect, meet, hold (with keep-alives), exchange when
/// active, report, hold until Done.
async fn pair_task(
    index: usize,
    plan: Arc<Plan>,
    slots: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
    ready: mpsc::Sender<Result<(), String>>,
    report: mpsc::Sender<PairReport>,
) {
    let setup = async {
        let _slot = slots.acquire().await.map_err(|e| anyhow!("{e}"))?;
        tokio::time::timeout(Duration::from_secs(30), Pair::setup(&plan, index))
            .await
            .map_err(|_| anyhow!("setup timed out"))?
    };
    let mut pair = match setup.await {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}"))).await;
            return;
        }
    };
    if ready.send(Ok(())).await.is_err() {
        return;
    }
    // Hold until the measured phase starts.
    let (start, end) = loop {
        match *phase.borrow_and_update() {
            Phase::Measure { start, end } => break (start, end),
            Phase::Done => return,
            Phase::Connecting => {}
        }
        tokio::select! {
            _ = tokio::time::sleep_until(pair.keepalive_due(&plan)) => {
                if pair.keepalive(&plan).await.is_err() {
                    // Reported as a failure if this pair was meant to be active.
                }
            }
            r = phase.changed() => if r.is_err() { return },
        }
    };

    if index < plan.active_pairs {
        let mut rep = PairReport::default();
        if let Err(e) = exchange_loop(&mut pair, &plan, index, start, end, &mut rep).await {
            rep.error = Some(format!("pair {index}: {e:#}"));
        }
        let _ = report.send(rep).await;
    }

    // Hold until Done so the server's RSS is read with everyone still connected.
    loop {
        if *phase.borrow_and_update() == Phase::Done {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(pair.keepalive_due(&plan)) => { let _ = pair.keepalive(&plan).await; }
            r = phase.changed() => if r.is_err() { return },
        }
    }
}

async fn exchange_loop(
    pair: &mut Pair,
    plan: &Plan,
    index: usize,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    rep: &mut PairReport,
) -> Result<()> {
    let one = |lat: (Duration, Duration), rep: &mut PairReport| {
        rep.exchanges += 1;
        rep.latencies_us
            .push(lat.0.as_micros().min(u32::MAX as u128) as u32);
        rep.latencies_us
            .push(lat.1.as_micros().min(u32::MAX as u128) as u32);
    };
    if plan.rate <= 0.0 {
        tokio::time::sleep_until(start).await;
        while tokio::time::Instant::now() < end {
            let lat = tokio::time::timeout(plan.exchange_timeout, pair.exchange(plan))
                .await
                .map_err(|_| anyhow!("exchange timed out"))??;
            one(lat, rep);
        }
        return Ok(());
    }
    // Each pair exchanges every active_pairs/rate seconds, the pairs spread evenly over that
    // period, so the server sees a steady `rate` exchanges per second.
    let period = Duration::from_secs_f64(plan.active_pairs as f64 / plan.rate);
    let offset = Duration::from_secs_f64(index as f64 / plan.rate);
    let offset = Duration::from_nanos((offset.as_nanos() % period.as_nanos().max(1)) as u64);
    let mut tick = interval_at(start + offset, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            at = tick.tick() => {
                if at >= end {
                    return Ok(());
                }
                let lat = tokio::time::timeout(plan.exchange_timeout, pair.exchange(plan))
                    .await
                    .map_err(|_| anyhow!("exchange timed out"))??;
                one(lat, rep);
            }
            _ = tokio::time::sleep_until(pair.keepalive_due(plan)) => pair.keepalive(plan).await?,
            _ = tokio::time::sleep_until(end) => return Ok(()),
        }
    }
}

/// Two connections that have met: `a` the initiator, `b` the capture side.
struct Pair {
    a: Conn,
    b: Conn,
    /// snaprtc: the session; peerjs: unused.
    session: String,
    /// peerjs ids of a and b.
    a_id: String,
    b_id: String,
    next_invocation: u64,
}

impl Pair {
    async fn setup(plan: &Plan, index: usize) -> Result<Pair> {
        let session = format!("bench-{}-{index}", plan.run_id);
        let a_id = format!("{session}-a");
        let b_id = format!("{session}-b");
        match plan.kind {
            ServerKind::Snaprtc => {
                // Across a fleet the two sides are on neighbouring instances.
                let n = plan.servers.len();
                let mut a = Conn::signalr(plan, index % n)
                    .await
                    .context("initiator connect")?;
                let mut b = Conn::signalr(plan, (index + 1) % n)
                    .await
                    .context("capture connect")?;
                let sync = |ready: bool| {
                    format!(
                        "{{\"type\":1,\"invocationId\":\"0\",\"target\":\"Sync\",\"arguments\":[{},{ready}]}}\x1e",
                        Value::from(session.as_str())
                    )
                };
                a.send(sync(false)).await?;
                a.wait_completion().await.context("initiator Sync")?;
                b.send(sync(true)).await?;
                b.wait_completion().await.context("capture Sync")?;
                a.wait_invocation("signalStart").await?;
                Ok(Pair {
                    a,
                    b,
                    session,
                    a_id,
                    b_id,
                    next_invocation: 1,
                })
            }
            ServerKind::Peerjs => {
                let a = Conn::peerjs(plan, &a_id)
                    .await
                    .context("initiator connect")?;
                let b = Conn::peerjs(plan, &b_id).await.context("capture connect")?;
                Ok(Pair {
                    a,
                    b,
                    session,
                    a_id,
                    b_id,
                    next_invocation: 1,
                })
            }
        }
    }

    /// One offer/answer round trip; returns the two one-way relay latencies.
    async fn exchange(&mut self, plan: &Plan) -> Result<(Duration, Duration)> {
        match plan.kind {
            ServerKind::Snaprtc => {
                let offer = self.invocation(plan, "SignalCapture", &plan.payload_offer);
                let t0 = Instant::now();
                self.a.send(offer).await?;
                let got = self.b.wait_invocation("signalCapture").await?;
                let l1 = t0.elapsed();
                if got != plan.payload_offer {
                    bail!("offer payload changed in transit");
                }
                let answer = self.invocation(plan, "SignalInitiator", &plan.payload_answer);
                let t1 = Instant::now();
                self.b.send(answer).await?;
                let got = self.a.wait_invocation("signalInitiator").await?;
                let l2 = t1.elapsed();
                if got != plan.payload_answer {
                    bail!("answer payload changed in transit");
                }
                Ok((l1, l2))
            }
            ServerKind::Peerjs => {
                let offer = peerjs_message(
                    "OFFER",
                    &self.b_id,
                    "offer",
                    &plan.payload_offer,
                    &self.session,
                );
                let t0 = Instant::now();
                self.a.send(offer).await?;
                let got = self.b.wait_peerjs("OFFER").await?;
                let l1 = t0.elapsed();
                if got != plan.payload_offer {
                    bail!("offer payload changed in transit");
                }
                let answer = peerjs_message(
                    "ANSWER",
                    &self.a_id,
                    "answer",
                    &plan.payload_answer,
                    &self.session,
                );
                let t1 = Instant::now();
                self.b.send(answer).await?;
                let got = self.a.wait_peerjs("ANSWER").await?;
                let l2 = t1.elapsed();
                if got != plan.payload_answer {
                    bail!("answer payload changed in transit");
                }
                Ok((l1, l2))
            }
        }
    }

    fn invocation(&mut self, plan: &Plan, target: &str, payload: &str) -> String {
        // Session ids and payloads are [A-Za-z0-9_$+-]: no JSON escaping needed.
        if plan.use_send {
            format!(
                "{{\"type\":1,\"target\":\"{target}\",\"arguments\":[\"{}\",\"{payload}\"]}}\x1e",
                self.session
            )
        } else {
            self.next_invocation += 1;
            format!(
                "{{\"type\":1,\"invocationId\":\"{}\",\"target\":\"{target}\",\"arguments\":[\"{}\",\"{payload}\"]}}\x1e",
                self.next_invocation, self.session
            )
        }
    }

    /// When the next keep-alive of either connection is due.
    fn keepalive_due(&self, plan: &Plan) -> tokio::time::Instant {
        self.a.last_keepalive_reset.min(self.b.last_keepalive_reset) + plan.keepalive
    }

    /// Send a keep-alive on each connection whose interval has passed.
    async fn keepalive(&mut self, plan: &Plan) -> Result<()> {
        let msg = match self.a.kind {
            ServerKind::Snaprtc => "{\"type\":6}\x1e",
            ServerKind::Peerjs => "{\"type\":\"HEARTBEAT\"}",
        };
        let now = tokio::time::Instant::now();
        for conn in [&mut self.a, &mut self.b] {
            if now >= conn.last_keepalive_reset + plan.keepalive {
                conn.send(msg.to_owned()).await?;
                conn.last_keepalive_reset = now;
            }
        }
        Ok(())
    }
}

/// What a PeerJS client sends for an offer or answer of a data connection.
fn peerjs_message(kind: &str, dst: &str, sdp_type: &str, sdp: &str, connection: &str) -> String {
    format!(
        "{{\"type\":\"{kind}\",\"dst\":\"{dst}\",\"payload\":{{\"sdp\":{{\"type\":\"{sdp_type}\",\"sdp\":\"{sdp}\"}},\"type\":\"data\",\"connectionId\":\"dc_{connection}\"}}}}"
    )
}

/// One WebSocket with the records it has read but not yet consumed.
struct Conn {
    ws: WebSocketStream<TcpStream>,
    kind: ServerKind,
    pending: VecDeque<String>,
    /// Start of the current keep-alive interval. As the official clients do: the SignalR
    /// client pings only after `keepalive` without sending anything (every send restarts the
    /// interval); the PeerJS client sends `HEARTBEAT` every 5 s whatever else it sends.
    last_keepalive_reset: tokio::time::Instant,
}

impl Conn {
    async fn signalr(plan: &Plan, server: usize) -> Result<Conn> {
        let (authority, path) = &plan.servers[server];
        let negotiate = http_post(
            authority,
            &format!("{path}/negotiate?negotiateVersion=1"),
            plan.token.as_deref(),
        )
        .await
        .context("negotiate")?;
        let v: Value = serde_json::from_slice(&negotiate).context("negotiate body")?;
        let token = v["connectionToken"]
            .as_str()
            .ok_or_else(|| anyhow!("negotiate: no connectionToken in {v}"))?;
        let mut url = format!("ws://{authority}{path}?id={token}");
        if let Some(t) = &plan.token {
            url.push_str(&format!("&access_token={t}"));
        }
        let mut conn = Conn::open(plan, authority, &url).await?;
        conn.send("{\"protocol\":\"json\",\"version\":1}\x1e".to_owned())
            .await?;
        let hs = conn.next_record().await?;
        if hs.trim() != "{}" {
            bail!("handshake answered {hs}");
        }
        Ok(conn)
    }

    async fn peerjs(plan: &Plan, id: &str) -> Result<Conn> {
        let (authority, path) = &plan.servers[0];
        let url = format!(
            "ws://{authority}{path}?key=peerjs&id={id}&token={}",
            plan.run_id
        );
        let mut conn = Conn::open(plan, authority, &url).await?;
        let first = conn.next_record().await?;
        if !first.contains("\"OPEN\"") {
            bail!("PeerJS answered {first}");
        }
        Ok(conn)
    }

    async fn open(plan: &Plan, authority: &str, url: &str) -> Result<Conn> {
        let tcp = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connect {authority}"))?;
        tcp.set_nodelay(true)?;
        let (ws, _) = client_async(url, tcp).await.context("WebSocket upgrade")?;
        Ok(Conn {
            ws,
            kind: plan.kind,
            pending: VecDeque::new(),
            last_keepalive_reset: tokio::time::Instant::now(),
        })
    }

    async fn send(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        if self.kind == ServerKind::Snaprtc {
            self.last_keepalive_reset = tokio::time::Instant::now();
        }
        Ok(())
    }

    async fn next_record(&mut self) -> Result<String> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Ok(r);
            }
            let msg = self
                .ws
                .next()
                .await
                .ok_or_else(|| anyhow!("connection closed"))??;
            match msg {
                Message::Text(t) => match self.kind {
                    ServerKind::Snaprtc => self.pending.extend(
                        t.as_str()
                            .split('\x1e')
                            .filter(|r| !r.is_empty())
                            .map(str::to_owned),
                    ),
                    ServerKind::Peerjs => self.pending.push_back(t.as_str().to_owned()),
                },
                Message::Close(c) => bail!("closed by the server: {c:?}"),
                _ => {}
            }
        }
    }

    /// The Completion of the last invoke (error if it carries one); skips pings.
    async fn wait_completion(&mut self) -> Result<()> {
        loop {
            let rec = self.next_record().await?;
            let v: Value = serde_json::from_str(&rec)?;
            match v["type"].as_u64() {
                Some(3) => {
                    if let Some(e) = v.get("error") {
                        bail!("invoke failed: {e}");
                    }
                    return Ok(());
                }
                Some(6) => {}
                Some(7) => bail!("server closed: {rec}"),
                _ => bail!("unexpected record {rec}"),
            }
        }
    }

    /// The first argument of the next Invocation of `target`; skips pings and successful
    /// Completions.
    async fn wait_invocation(&mut self, target: &str) -> Result<String> {
        loop {
            let rec = self.next_record().await?;
            let v: Value = serde_json::from_str(&rec)?;
            match v["type"].as_u64() {
                Some(1) => {
                    let t = v["target"].as_str().unwrap_or_default();
                    if !t.eq_ignore_ascii_case(target) {
                        bail!("wanted {target}, got {rec}");
                    }
                    return Ok(v["arguments"][0].as_str().unwrap_or_default().to_owned());
                }
                Some(3) => {
                    if let Some(e) = v.get("error") {
                        bail!("invoke failed: {e}");
                    }
                }
                Some(6) => {}
                Some(7) => bail!("server closed: {rec}"),
                _ => bail!("unexpected record {rec}"),
            }
        }
    }

    /// The SDP of the next PeerJS message of `kind`.
    async fn wait_peerjs(&mut self, kind: &str) -> Result<String> {
        loop {
            let rec = self.next_record().await?;
            let v: Value = serde_json::from_str(&rec)?;
            match v["type"].as_str() {
                Some(k) if k == kind => {
                    return Ok(v["payload"]["sdp"]["sdp"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned())
                }
                Some("HEARTBEAT") => {}
                _ => bail!("wanted {kind}, got {rec}"),
            }
        }
    }
}

/// `POST path` with an empty body over a fresh connection; the body of a 200 answer.
async fn http_post(authority: &str, path: &str, token: Option<&str>) -> Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(authority).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\n{auth}Connection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    tcp.read_to_end(&mut buf).await?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
    if status != "200" {
        bail!("HTTP {status}");
    }
    let body = buf[head_end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        return Ok(dechunk(&body));
    }
    Ok(body)
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

/// `http://host:port/path` or `ws://host:port/path` -> (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| anyhow!("--url must start with http:// or ws:// (no TLS here): {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((authority.to_owned(), path.trim_end_matches('/').to_owned()))
}

/// A payload shaped like an lz-string `compressToEncodedURIComponent` output.
fn payload(seed: char, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-$";
    let mut x: u32 = seed as u32 * 2_654_435_761;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ALPHABET[(x % ALPHABET.len() as u32) as usize] as char
        })
        .collect()
}

struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
}

fn proc_mem(pid: u32) -> Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    })
}

/// Commands Redis at `addr` has run so far: the `calls=` of every `INFO commandstats` line.
async fn redis_calls(addr: &str) -> Result<u64> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to Redis at {addr}"))?;
    tcp.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .await?;
    // A bulk string: `$LEN\r\n` then LEN bytes and `\r\n`.
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            bail!("Redis closed the connection");
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, body)) = text.split_once("\r\n") {
            let len: usize = head.trim_start_matches('$').parse()?;
            if body.len() >= len {
                return Ok(body
                    .lines()
                    .filter_map(|l| {
                        l.split_once("calls=")?
                            .1
                            .split(',')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .sum());
            }
        }
    }
}

/// RSS and peak RSS summed over `pids`; `None` for no pids.
fn fleet_mem(pids: &[u32]) -> Result<Option<Mem>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut sum = Mem {
        rss_kib: 0,
        hwm_kib: 0,
    };
    for &pid in pids {
        let m = proc_mem(pid)?;
        sum.rss_kib += m.rss_kib;
        sum.hwm_kib += m.hwm_kib;
    }
    Ok(Some(sum))
}

/// User and system CPU seconds summed over `pids`; `None` for no pids.
fn fleet_cpu(pids: &[u32]) -> Result<Option<(f64, f64)>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut sum = (0.0, 0.0);
    for &pid in pids {
        let (user, system) = proc_cpu(pid)?;
        sum.0 += user;
        sum.1 += system;
    }
    Ok(Some(sum))
}

/// User + system CPU seconds of a process (all its threads), from /proc/PID/stat.
fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let (user, system) = proc_cpu(pid)?;
    Ok(user + system)
}

/// User and system CPU seconds of a process (all its threads), from /proc/PID/stat.
fn proc_cpu(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here (0-based 11, 12).
    let field = |i: usize| -> Result<f64> {
        Ok(f.get(i)
            .ok_or_else(|| anyhow!("short stat"))?
            .parse::<f64>()?
            / clock_ticks())
    };
    Ok((field(11)?, field(12)?))
}

/// USER_HZ: 100 on every Linux architecture this runs on.
fn clock_ticks() -> f64 {
    100.0
}

fn kib_to_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
