//! The daemon: builds every part from the config, owns their tasks, and shuts them down.
//!
//! The daemon is where siblings meet: the `STATUS=` line ([`status`]) reads the media pipeline
//! and the RTC engine, and the hub's capture member answers through the engine (`answer`),
//! so neither `systemd` nor `rtc` nor `signaling` imports the others.
//!
//! The services that a config section decides (media pipeline, RTC engine, hub, WHEP, HTTP,
//! mDNS, the `STATUS=` reporter) form one *generation*, built by [`Generation::start`] and
//! stopped by [`Generation::stop`]. `systemctl reload` with a changed `[server]`, `[camera]`,
//! `[encoder]`, `[snapshot]` or `[signaling]` stops the generation and starts a new one from
//! the new config inside the same process (see [`crate::reload`]); the HTTP socket stays open
//! across (connections wait in its backlog). If the new generation cannot start (say the new
//! UDP port is taken), the previous config is started again and the reload is reported as
//! failed. The watchdog lives for the whole process and follows whichever pipeline and engine
//! run.
//!
//! Long-lived services run in a `JoinSet`: one that ends while the daemon is not stopping is a
//! bug, logged, and stops the daemon (systemd restarts it). Short-lived tasks (one per HTTP or
//! WebSocket connection) run on a `TaskTracker`. Shutdown: cancel the token, then wait for
//! both with a deadline so the process exits within 2 s.

mod answer;
pub mod status;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::auth::{Auth, TokenError};
use crate::config::{AuthMode, Config};
use crate::http::AppState;
use crate::media::{MediaCounters, PipelineGuard};
use crate::progress::Heartbeat;
use crate::reload::{Outcome, Reload};
use crate::systemd;

/// How long shutdown may take before remaining tasks are abandoned.
const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(1500);
/// The `STATUS=` line is refreshed at least this often (the viewer count is polled).
const STATUS_POLL: Duration = Duration::from_secs(1);

/// Sockets bound by the caller (tests pass port-0 sockets).
pub struct Listeners {
    /// HTTP and WebSocket.
    pub http: TcpListener,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot start the media pipeline: {0}")]
    Media(#[source] crate::media::PipelineError),
    #[error("cannot bind the WebRTC UDP port: {0}")]
    Rtc(#[source] std::io::Error),
    #[error("the HTTP socket: {0}")]
    Http(#[source] std::io::Error),
    #[error("installing the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    #[error("the {0} service stopped unexpectedly")]
    ServiceEnded(&'static str),
}

/// Run until `cancel` fires (or a service fails).
pub async fn run(
    config: Config,
    listeners: Listeners,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    run_with(config, listeners, cancel, None).await
}

/// What every generation is handed by the process: where to publish and what to beat.
struct Common {
    /// The config in force (the mDNS advertiser follows it live).
    config: watch::Receiver<Arc<Config>>,
    /// A note for the status line (a rejected reload), `None` when all is well.
    note: watch::Receiver<Option<String>>,
    /// The running pipeline's counters, read by the watchdog's media probe.
    media_counters: watch::Sender<Arc<MediaCounters>>,
    /// Beaten by the running RTC engine.
    rtc_beat: Heartbeat,
    /// The stable device id (for mDNS), made on first use.
    device_id: OnceLock<String>,
}

/// [`run`], plus `systemctl reload` (SIGHUP) handled with `reload`, which re-reads the config.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    cancel: CancellationToken,
    reload: Option<crate::reload::Loader>,
) -> Result<(), DaemonError> {
    let mut current = Arc::new(config);
    let (config_tx, config_rx) = watch::channel(current.clone());
    let (note_tx, note_rx) = watch::channel(None::<String>);
    // Kept for the whole process; every generation serves a duplicate of it.
    let mut http = listeners.http.into_std().map_err(DaemonError::Http)?;
    let (media_counters, counters_rx) = watch::channel(Arc::new(MediaCounters::default()));
    let mut watchdog = systemd::Watchdog::new();
    watchdog.register_age("media", move || counters_rx.borrow().since_progress());
    let common = Common {
        config: config_rx,
        note: note_rx,
        media_counters,
        rtc_beat: watchdog.register("rtc"),
        device_id: OnceLock::new(),
    };

    let mut process: JoinSet<&'static str> = JoinSet::new();
    {
        let period = systemd::watchdog_period();
        let cancel = cancel.clone();
        process.spawn(async move {
            watchdog.run(period, cancel).await;
            "watchdog"
        });
    }
    let mut hangup = match reload {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(DaemonError::Signal)?,
        ),
        None => None,
    };

    let mut gen = Generation::start(&current, &http, &cancel, &common).await?;
    let addr = http.local_addr().map_err(DaemonError::Http)?;
    info!(%addr, hub = %current.signaling.hub_path, "http listening");
    systemd::notify_ready(&format!("starting, serving http://{addr}/"));
    info!(version = env!("CARGO_PKG_VERSION"), "ready");

    let result = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ok(()),
            Some(ended) = gen.services.join_next() => {
                break Err(ended_unexpectedly(ended.unwrap_or("a"), &cancel));
            }
            Some(ended) = process.join_next() => {
                break Err(ended_unexpectedly(ended.unwrap_or("a"), &cancel));
            }
            Some(()) = next_hangup(&mut hangup) => {
                let Some(loader) = &reload else { continue };
                info!("SIGHUP: reloading the config");
                systemd::notify_reloading();
                let (publish, outcome) = Reload::apply(&current, loader());
                match &outcome {
                    Outcome::Rejected(e) => {
                        // In the message itself: `journalctl -u snaprtcd` shows messages, not fields.
                        error!("reload rejected, still running the previous config: {e}");
                        note_tx.send_replace(Some(format!("reload rejected: {e}")));
                    }
                    Outcome::Unchanged => {
                        info!("config reloaded; nothing changed");
                        note_tx.send_replace(None);
                    }
                    Outcome::Applied { changed, services, restart } => {
                        for part in restart {
                            warn!("[{part}] changes take effect after `systemctl restart snaprtcd`");
                        }
                        let new = Arc::new(publish.unwrap_or_else(|| (*current).clone()));
                        if *services {
                            info!(?changed, "restarting the services for the new config");
                            gen.stop().await;
                            match apply(&current, &new, &mut http, &config_tx, &cancel, &common).await {
                                Ok(g) => {
                                    gen = g;
                                    current = new;
                                    info!(?changed, "{}", outcome.status());
                                    note_tx.send_replace(None);
                                }
                                Err((g, e)) => {
                                    gen = g;
                                    if cancel.is_cancelled() {
                                        break Err(e);
                                    }
                                    error!("the new config cannot start, running the previous config: {e}");
                                    note_tx.send_replace(Some(format!("reload failed: {e}")));
                                }
                            }
                        } else {
                            current = new;
                            config_tx.send_replace(current.clone());
                            info!(?changed, "{}", outcome.status());
                            note_tx.send_replace(None);
                        }
                    }
                }
                systemd::notify_reloaded();
            }
        }
    };

    info!("shutting down");
    systemd::notify_stopping();
    cancel.cancel();
    gen.stop().await;
    process.shutdown().await;
    info!("stopped");
    result
}

fn ended_unexpectedly(name: &'static str, cancel: &CancellationToken) -> DaemonError {
    error!(
        service = name,
        "service stopped unexpectedly; shutting down"
    );
    cancel.cancel();
    DaemonError::ServiceEnded(name)
}

async fn next_hangup(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

/// Start a generation for `new` (the old one is stopped). A new `listen` address is bound
/// first; if the new generation cannot start, the previous config is started again and the
/// error returned beside it.
async fn apply(
    old: &Arc<Config>,
    new: &Arc<Config>,
    http: &mut std::net::TcpListener,
    config_tx: &watch::Sender<Arc<Config>>,
    cancel: &CancellationToken,
    common: &Common,
) -> Result<Generation, (Generation, DaemonError)> {
    let attempt = if new.server.listen != old.server.listen {
        bind_std(new.server.listen).map_err(DaemonError::Http)
    } else {
        http.try_clone().map_err(DaemonError::Http)
    };
    let error = match attempt {
        Ok(listener) => {
            config_tx.send_replace(new.clone());
            match Generation::start(new, &listener, cancel, common).await {
                Ok(g) => {
                    if new.server.listen != old.server.listen {
                        info!(addr = %new.server.listen, "http listening on the new address");
                    }
                    *http = listener;
                    return Ok(g);
                }
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    config_tx.send_replace(old.clone());
    match Generation::start(old, http, cancel, common).await {
        Ok(g) => Err((g, error)),
        // Neither config runs: nothing left to serve; systemd restarts the process.
        Err(e2) => {
            error!("the previous config cannot start again either: {e2}");
            cancel.cancel();
            Err((Generation::empty(cancel), error))
        }
    }
}

fn bind_std(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The services built from one config.
struct Generation {
    cancel: CancellationToken,
    services: JoinSet<&'static str>,
    tracker: TaskTracker,
    pipeline: Option<PipelineGuard>,
}

impl Generation {
    fn empty(parent: &CancellationToken) -> Self {
        Self {
            cancel: parent.child_token(),
            services: JoinSet::new(),
            tracker: TaskTracker::new(),
            pipeline: None,
        }
    }

    /// Build and start every service `config` describes, serving `http` (duplicated).
    async fn start(
        config: &Arc<Config>,
        http: &std::net::TcpListener,
        parent: &CancellationToken,
        common: &Common,
    ) -> Result<Self, DaemonError> {
        let mut gen = Self::empty(parent);
        match gen.build(config, http, common).await {
            Ok(()) => Ok(gen),
            Err(e) => {
                gen.stop().await;
                Err(e)
            }
        }
    }

    async fn build(
        &mut self,
        config: &Arc<Config>,
        http: &std::net::TcpListener,
        common: &Common,
    ) -> Result<(), DaemonError> {
        let cancel = self.cancel.clone();
        let auth = match config.server.auth {
            AuthMode::None => Auth::Open,
            AuthMode::Token => {
                let path = &config.server.auth_token_file;
                let (auth, created) = Auth::load_or_create(path)?;
                if created {
                    info!(path = %path.display(), "created a new access token; viewers need it to connect");
                } else {
                    info!(path = %path.display(), "access token loaded");
                }
                auth
            }
        };
        let (media, pipeline) =
            crate::media::spawn(config, cancel.child_token()).map_err(DaemonError::Media)?;
        self.pipeline = Some(pipeline);
        common.media_counters.send_replace(media.counters().clone());

        let engine = crate::rtc::Engine::bind(
            crate::rtc::EngineSettings::from_config(config),
            media.clone(),
        )
        .await
        .map_err(DaemonError::Rtc)?
        .with_heartbeat(common.rtc_beat.clone());
        // (The engine logs its UDP port and the candidates it announces.)
        let rtc = engine.handle();
        {
            let cancel = cancel.clone();
            self.services.spawn(async move {
                engine.run(cancel).await;
                "rtc"
            });
        }
        // The engine answers for the built-in SnapRTC capture member (`join_sessions = "all"`).
        let answerer: Arc<dyn crate::signaling::capture::Answerer> = Arc::new(rtc.clone());
        let signaling = crate::signaling::spawn(
            config.signaling.clone(),
            Some(answerer),
            cancel.child_token(),
            self.tracker.clone(),
        );
        let whep = crate::rtc::whep::Whep::new(
            rtc.clone(),
            crate::rtc::whep::WhepSettings::from_config(config, auth.clone()),
        );
        let listener = http
            .try_clone()
            .and_then(TcpListener::from_std)
            .map_err(DaemonError::Http)?;
        let http_port = listener.local_addr().map_err(DaemonError::Http)?.port();
        let state = Arc::new(AppState {
            config: config.clone(),
            auth,
            signaling,
            rtc: rtc.clone(),
            whep,
            media: media.clone(),
        });
        {
            let (cancel, tracker) = (cancel.clone(), self.tracker.clone());
            self.services.spawn(async move {
                crate::http::serve(listener, state, cancel, tracker).await;
                "http"
            });
        }
        if config.mdns.enabled {
            let device_id = common
                .device_id
                .get_or_init(|| {
                    let dir = systemd::state_dir();
                    systemd::device_id(&dir).unwrap_or_else(|e| {
                        warn!(error = %e, "no stable device id; using the host name for this run");
                        crate::discovery::system_hostname()
                    })
                })
                .clone();
            let (rx, cancel) = (common.config.clone(), cancel.clone());
            self.services.spawn(async move {
                crate::discovery::supervise(rx, http_port, device_id, cancel).await;
                "mdns"
            });
        }
        {
            let (note, cancel) = (common.note.clone(), cancel.clone());
            self.services.spawn(async move {
                status::report_status(media, rtc, note, STATUS_POLL, cancel).await;
                "status"
            });
        }
        Ok(())
    }

    /// Cancel every service, wait for them (with a deadline), and join the pipeline threads.
    async fn stop(&mut self) {
        self.cancel.cancel();
        self.tracker.close();
        let services = &mut self.services;
        let tracker = &self.tracker;
        let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
            while services.join_next().await.is_some() {}
            tracker.wait().await;
        })
        .await;
        if drained.is_err() {
            warn!(
                remaining = self.tracker.len(),
                "some connections did not close in time"
            );
            // Wait for the aborted services too: the UDP socket must be free for the next one.
            self.services.shutdown().await;
        }
        if let Some(pipeline) = self.pipeline.take() {
            // The pipeline's threads see the cancelled token; joining them blocks.
            let _ = tokio::task::spawn_blocking(move || pipeline.join()).await;
        }
    }
}
