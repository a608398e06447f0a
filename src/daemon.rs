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
    #[error("the {0} service stopped unexpectedly")]
    ServiceEnded(&'static str),
}

/// Run until `cancel` fires (or a service fails).
pub async fn run(
    config: Config,
    listeners: Listeners,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let config = Arc::new(config);
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

    let tracker = TaskTracker::new();
    let mut services: JoinSet<&'static str> = JoinSet::new();

    let signaling = crate::signaling::spawn(
        config.signaling.clone(),
        cancel.child_token(),
        tracker.clone(),
    );

    let http_addr = listeners.http.local_addr().ok();
    let state = Arc::new(AppState {
        config: config.clone(),
        auth,
        signaling,
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
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!(version = env!("CARGO_PKG_VERSION"), "ready");

    let result = tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        Some(ended) = services.join_next() => {
            let name = ended.unwrap_or("a");
            error!(service = name, "service stopped unexpectedly; shutting down");
            cancel.cancel();
            Err(DaemonError::ServiceEnded(name))
        }
    };

    info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
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
    info!("stopped");
    result
}
