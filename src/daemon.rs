//! The daemon: builds every part from the config, owns their tasks, and shuts them down.
//!
//! Long-lived services run in a `JoinSet`: one that ends while the daemon is not stopping is a
//! bug, logged, and stops the daemon (systemd restarts it). Short-lived tasks (one per HTTP or
//! WebSocket connection) run on a `TaskTracker`. Shutdown: cancel the token, then wait for
//! both with a deadline so the process exits within 2 s.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::auth::{Auth, TokenError};
use crate::config::{AuthMode, Config};
use crate::http::AppState;

/// How long shutdown may take before remaining tasks are abandoned.
const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(1500);

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

/// [`run`], plus `systemctl reload` (SIGHUP) handled with `reload`, which re-reads the config.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    cancel: CancellationToken,
    reload: Option<crate::reload::Loader>,
) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    // Reloaded configs are published here; parts that can change live follow it.
    let (config_tx, config_rx) = tokio::sync::watch::channel(config.clone());
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

    let auth_on = auth.is_on();
    let tracker = TaskTracker::new();
    let mut services: JoinSet<&'static str> = JoinSet::new();

    let (media, pipeline) =
        crate::media::spawn(&config, cancel.child_token()).map_err(DaemonError::Media)?;
    let engine = crate::rtc::Engine::bind(
        crate::rtc::EngineSettings::from_config(&config),
        media.clone(),
    )
    .await
    .map_err(DaemonError::Rtc)?;
    let rtc_addr = engine.local_addr().ok();
    let rtc = engine.handle();
    {
        let cancel = cancel.clone();
        services.spawn(async move {
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
        tracker.clone(),
    );
    let whep = crate::rtc::whep::Whep::new(
        rtc.clone(),
        crate::rtc::whep::WhepSettings::from_config(&config, auth.clone()),
    );

    let http_addr = listeners.http.local_addr().ok();
    let state = Arc::new(AppState {
        config: config.clone(),
        auth,
        signaling,
        rtc,
        whep,
        media: media.clone(),
    });
    {
        let (cancel, tracker) = (cancel.clone(), tracker.clone());
        services.spawn(async move {
            crate::http::serve(listeners.http, state, cancel, tracker).await;
            "http"
        });
    }
    if let Some(addr) = http_addr {
        info!(%addr, hub = %config.signaling.hub_path, "http listening");
    }
    if let Some(addr) = rtc_addr {
        info!(%addr, "rtc listening");
    }
    if let Some(loader) = reload {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(DaemonError::Signal)?;
        let cancel = cancel.clone();
        services.spawn(async move {
            crate::reload::run(hangup, loader, config_tx, cancel).await;
            "reload"
        });
    }
    if let (true, Some(addr)) = (config.mdns.enabled, http_addr) {
        let state_dir = crate::systemd::state_dir();
        let device_id = crate::systemd::device_id(&state_dir).unwrap_or_else(|e| {
            warn!(error = %e, "no stable device id; using the host name for this run");
            crate::discovery::system_hostname()
        });
        let (rx, cancel) = (config_rx.clone(), cancel.clone());
        services.spawn(async move {
            crate::discovery::supervise(rx, addr.port(), device_id, cancel).await;
            "mdns"
        });
    }
    {
        // Loops that must make progress for the watchdog to be fed register here
        // (`watchdog.register("media")`) and beat each turn.
        let watchdog = crate::systemd::Watchdog::new();
        let period = crate::systemd::watchdog_period();
        let cancel = cancel.clone();
        services.spawn(async move {
            watchdog.run(period, cancel).await;
            "watchdog"
        });
    }
    let status = match http_addr {
        Some(addr) => format!(
            "serving http://{addr}/ (hub {}, auth {})",
            config.signaling.hub_path,
            if auth_on { "token" } else { "off" }
        ),
        None => "serving".to_owned(),
    };
    crate::systemd::notify_ready(&status);
    info!(version = env!("CARGO_PKG_VERSION"), "ready");

    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Ok(()),
        Some(ended) = services.join_next(), if !cancel.is_cancelled() => {
            let name = ended.unwrap_or("a");
            error!(service = name, "service stopped unexpectedly; shutting down");
            cancel.cancel();
            Err(DaemonError::ServiceEnded(name))
        }
    };

    info!("shutting down");
    crate::systemd::notify_stopping();
    tracker.close();
    let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while services.join_next().await.is_some() {}
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!(
            remaining = tracker.len(),
            "some connections did not close in time"
        );
        services.abort_all();
    }
    // The pipeline's threads see the cancelled token; joining them blocks, so off the runtime.
    let _ = tokio::task::spawn_blocking(move || pipeline.join()).await;
    info!("stopped");
    result
}
