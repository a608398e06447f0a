//! The daemon: builds every part from the config, owns their tasks, and shuts them down.
//!
//! The daemon is where siblings meet: the `STATUS=` line ([`status`]) reads the media pipeline
//! and the RTC engine, and the hub's capture member answers through the engine (`answer`),
//! so neither `systemd` nor `rtc` nor `signaling` imports the others.
//!
//! The services that a config section decides (media pipeline, RTC engine, hub, WHEP, HTTP,
//! mDNS, the `STATUS=` reporter) form one *generation*, built by `Generation::start` and
//! stopped by `Generation::stop`. `systemctl reload` with a changed `[server]`, `[camera]`,
//! `[encoder]`, `[snapshot]` or `[signaling]` stops the generation and starts a new one from
//! the new config inside the same process (see [`crate::reload`]); the HTTP socket stays open
//! across (connections wait in its backlog). If the new generation cannot start (say the new
//! UDP port is taken), the previous config is started again and the reload is reported as
//! failed. The watchdog lives for the whole process and follows whichever pipeline and engine
//! run.
//!
//! In the relay role (`[camera] source = "none"`) a generation is the hub, HTTP, mDNS and the
//! status reporter only: no pipeline, no engine, no UDP port.
//!
//! Long-lived services run in a `JoinSet`: one that ends while the daemon is not stopping is a
//! bug, logged with its name (and its panic, if it panicked), and stops the daemon (systemd
//! restarts it). Short-lived tasks (one per HTTP or
//! WebSocket connection) run on a `TaskTracker`. Shutdown: cancel the token, then wait for
//! both with a deadline so the process exits within 2 s.

mod answer;
pub mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::auth::{Auth, TokenError};
use crate::config::{AuthMode, Config, ConfigError, JoinSessions};
use crate::http::{AppState, CameraServices};
use crate::media::{MediaCounters, MediaHandle, PipelineGuard};
use crate::progress::Heartbeat;
use crate::reload::{Loader, Outcome, Reload};
use crate::rtc::RtcHandle;
use crate::signaling::SignalingHandle;
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
    /// The access token could not be read or made.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The media pipeline did not start.
    #[error("cannot start the media pipeline: {0}")]
    Media(#[source] crate::media::PipelineError),
    /// The RTC engine's UDP socket.
    #[error("cannot bind the WebRTC UDP port: {0}")]
    Rtc(#[source] std::io::Error),
    /// The audio thread did not start.
    #[error("cannot start the audio thread: {0}")]
    Audio(#[source] std::io::Error),
    /// The RTSP listener (`[rtsp] listen`).
    #[error(transparent)]
    Rtsp(#[from] crate::rtsp::RtspError),
    /// The HTTP listener.
    #[error("the HTTP socket: {0}")]
    Http(#[source] std::io::Error),
    /// The Redis backplane could not be set up.
    #[error("cannot start the backplane: {0}")]
    Backplane(#[from] crate::signaling::redis::BackplaneError),
    /// SIGHUP could not be caught.
    #[error("installing the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    /// A long-lived service returned while the daemon was not stopping.
    #[error("the {0} service stopped unexpectedly")]
    ServiceEnded(&'static str),
    /// A long-lived service panicked (or was aborted); `reason` says how.
    #[error("the {service} service {reason}")]
    ServiceFailed {
        /// Which service.
        service: &'static str,
        /// `panicked: MESSAGE`, or `failed: ...` for a task that was aborted.
        reason: String,
    },
}

/// Run until `cancel` fires (or a service fails).
pub async fn run(
    config: Config,
    listeners: Listeners,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    run_with(config, listeners, cancel, None).await
}

/// Long-lived tasks with names, so one that ends or panics is reported by name.
#[derive(Default)]
struct Services {
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

/// A service that ended: its name, and its `JoinError` if it did not return normally.
#[derive(Debug)]
struct Ended {
    name: &'static str,
    failure: Option<JoinError>,
}

impl Services {
    fn spawn(&mut self, name: &'static str, service: impl Future<Output = ()> + Send + 'static) {
        let id = self.set.spawn(service).id();
        self.names.insert(id, name);
    }

    /// The next service to end (`None` when none run).
    async fn join_next(&mut self) -> Option<Ended> {
        let (id, failure) = match self.set.join_next_with_id().await? {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), Some(e)),
        };
        let name = self.names.remove(&id).unwrap_or("unnamed");
        Some(Ended { name, failure })
    }

    /// Abort what still runs and wait for it.
    async fn shutdown(&mut self) {
        self.set.shutdown().await;
        self.names.clear();
    }
}

/// What every generation is handed by the process: where to publish and what to beat.
struct Common {
    /// The config in force (the mDNS advertiser follows it live).
    config: watch::Receiver<Arc<Config>>,
    /// A note for the status line (a rejected reload), `None` when all is well.
    note: watch::Receiver<Option<String>>,
    /// The running pipeline's counters, read by the watchdog's media probe; `None` in the
    /// relay role (no pipeline: nothing to stall).
    media_counters: watch::Sender<Option<Arc<MediaCounters>>>,
    /// Beaten by the running RTC engine; in the relay role by the status task each time the
    /// hub task answers it (the hub is then the loop that must not hang).
    rtc_beat: Heartbeat,
    /// The stable device id (for mDNS), made on first use.
    device_id: OnceLock<String>,
}

/// The process-wide state of [`run_with`]'s loop: what runs and what a reload changes.
struct Daemon {
    current: Arc<Config>,
    config_tx: watch::Sender<Arc<Config>>,
    note_tx: watch::Sender<Option<String>>,
    /// Kept for the whole process; every generation serves a duplicate of it.
    http: std::net::TcpListener,
    cancel: CancellationToken,
    common: Common,
    gen: Generation,
}

/// [`run`], plus `systemctl reload` (SIGHUP) handled with `reload`, which re-reads the config
/// (on a blocking thread: the file system may be slow).
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    cancel: CancellationToken,
    reload: Option<Loader>,
) -> Result<(), DaemonError> {
    let http = listeners.http.into_std().map_err(DaemonError::Http)?;
    let current = Arc::new(config);
    let (config_tx, config_rx) = watch::channel(current.clone());
    let (note_tx, note_rx) = watch::channel(None::<String>);
    let (media_counters, counters_rx) = watch::channel(None::<Arc<MediaCounters>>);
    let mut watchdog = systemd::Watchdog::new();
    watchdog.register_age("media", move || {
        counters_rx
            .borrow()
            .as_ref()
            .map_or(Duration::ZERO, |c| c.since_progress())
    });
    let common = Common {
        config: config_rx,
        note: note_rx,
        media_counters,
        rtc_beat: watchdog.register("rtc"),
        device_id: OnceLock::new(),
    };
    let mut process = Services::default();
    let period = systemd::watchdog_period();
    process.spawn("watchdog", watchdog.run(period, cancel.clone()));
    let hangup = match reload {
        Some(loader) => Some((hangup_signal()?, Arc::new(loader))),
        None => None,
    };

    let gen = Generation::start(&current, &http, &cancel, &common).await?;
    let addr = http.local_addr().map_err(DaemonError::Http)?;
    info!(%addr, hub = %current.signaling.hub_path, "http listening");
    systemd::notify_ready(&format!("starting, serving http://{addr}/"));
    info!(version = env!("CARGO_PKG_VERSION"), "ready");

    let mut daemon = Daemon {
        current,
        config_tx,
        note_tx,
        http,
        cancel,
        common,
        gen,
    };
    let result = daemon.serve(&mut process, hangup).await;

    info!("shutting down");
    systemd::notify_stopping();
    daemon.cancel.cancel();
    daemon.gen.stop().await;
    process.shutdown().await;
    info!("stopped");
    result
}

fn hangup_signal() -> Result<tokio::signal::unix::Signal, DaemonError> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(DaemonError::Signal)
}

impl Daemon {
    /// Wait for the end: cancellation, a service that ends, or SIGHUPs to handle.
    async fn serve(
        &mut self,
        process: &mut Services,
        mut hangup: Option<(tokio::signal::unix::Signal, Arc<Loader>)>,
    ) -> Result<(), DaemonError> {
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Ok(()),
                Some(ended) = self.gen.services.join_next() => {
                    return Err(ended_unexpectedly(ended, &self.cancel));
                }
                Some(ended) = process.join_next() => {
                    return Err(ended_unexpectedly(ended, &self.cancel));
                }
                Some(loader) = next_hangup(&mut hangup) => {
                    info!("SIGHUP: reloading the config");
                    systemd::notify_reloading();
                    let loaded = tokio::select! {
                        _ = self.cancel.cancelled() => return Ok(()),
                        loaded = load_config(loader) => loaded,
                    };
                    self.reload(loaded).await?;
                    systemd::notify_reloaded();
                }
            }
        }
    }

    /// Carry out a reload of `loaded`. An error means the daemon must stop.
    async fn reload(&mut self, loaded: Result<Config, ConfigError>) -> Result<(), DaemonError> {
        let (publish, outcome) = Reload::apply(&self.current, loaded);
        let Outcome::Applied {
            changed,
            services,
            restart,
        } = &outcome
        else {
            if let Outcome::Rejected(e) = &outcome {
                // In the message itself: `journalctl -u snaprtcd` shows messages, not fields.
                error!("reload rejected, still running the previous config: {e}");
                self.note_tx
                    .send_replace(Some(format!("reload rejected: {e}")));
            } else {
                info!("config reloaded; nothing changed");
                self.note_tx.send_replace(None);
            }
            return Ok(());
        };
        for part in restart {
            warn!("[{part}] changes take effect after `systemctl restart snaprtcd`");
        }
        let new = Arc::new(publish.unwrap_or_else(|| (*self.current).clone()));
        if !*services {
            self.current = new;
            self.config_tx.send_replace(self.current.clone());
            info!(?changed, "{}", outcome.status());
            self.note_tx.send_replace(None);
            return Ok(());
        }
        info!(?changed, "restarting the services for the new config");
        self.gen.stop().await;
        match self.apply(&new).await {
            Ok(g) => {
                self.gen = g;
                self.current = new;
                info!(?changed, "{}", outcome.status());
                self.note_tx.send_replace(None);
            }
            Err((g, e)) => {
                self.gen = g;
                if self.cancel.is_cancelled() {
                    return Err(e);
                }
                error!("the new config cannot start, running the previous config: {e}");
                self.note_tx
                    .send_replace(Some(format!("reload failed: {e}")));
            }
        }
        Ok(())
    }

    /// Start a generation for `new` (the old one is stopped). A new `listen` address is bound
    /// first; if the new generation cannot start, the previous config is started again and the
    /// error returned beside it.
    async fn apply(&mut self, new: &Arc<Config>) -> Result<Generation, (Generation, DaemonError)> {
        let old = self.current.clone();
        let moved = new.server.listen != old.server.listen;
        let attempt = if moved {
            bind_std(new.server.listen).map_err(DaemonError::Http)
        } else {
            self.http.try_clone().map_err(DaemonError::Http)
        };
        let error = match attempt {
            Ok(listener) => {
                self.config_tx.send_replace(new.clone());
                match Generation::start(new, &listener, &self.cancel, &self.common).await {
                    Ok(g) => {
                        if moved {
                            info!(addr = %new.server.listen, "http listening on the new address");
                        }
                        self.http = listener;
                        return Ok(g);
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        self.config_tx.send_replace(old.clone());
        match Generation::start(&old, &self.http, &self.cancel, &self.common).await {
            Ok(g) => Err((g, error)),
            // Neither config runs: nothing left to serve; systemd restarts the process.
            Err(e2) => {
                error!("the previous config cannot start again either: {e2}");
                self.cancel.cancel();
                Err((Generation::empty(&self.cancel), error))
            }
        }
    }
}

/// Log a service that ended while the daemon was not stopping (with its panic, if any) and
/// stop the daemon.
fn ended_unexpectedly(ended: Ended, cancel: &CancellationToken) -> DaemonError {
    let service = ended.name;
    let error = match ended.failure {
        None => DaemonError::ServiceEnded(service),
        Some(e) => {
            let reason = if e.is_panic() {
                let payload = e.into_panic();
                format!(
                    "panicked: {}",
                    crate::thread::panic_message(payload.as_ref())
                )
            } else {
                format!("failed: {e}")
            };
            DaemonError::ServiceFailed { service, reason }
        }
    };
    error!(service, "{error}; shutting down");
    cancel.cancel();
    error
}

/// The next SIGHUP, with the loader to answer it; never, without reload support.
async fn next_hangup(
    hangup: &mut Option<(tokio::signal::unix::Signal, Arc<Loader>)>,
) -> Option<Arc<Loader>> {
    match hangup {
        Some((signal, loader)) => signal.recv().await.map(|()| loader.clone()),
        None => std::future::pending().await,
    }
}

/// Run the loader on a blocking thread, so a slow disk does not stall the async workers.
async fn load_config(loader: Arc<Loader>) -> Result<Config, ConfigError> {
    tokio::task::spawn_blocking(move || loader())
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError {
                file: "<reload>".into(),
                position: None,
                key: String::new(),
                message: format!("reading the config failed: {e}"),
            })
        })
}

fn bind_std(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The services built from one config.
struct Generation {
    cancel: CancellationToken,
    services: Services,
    tracker: TaskTracker,
    pipeline: Option<PipelineGuard>,
    audio: Option<crate::audio::AudioGuard>,
}

impl Generation {
    fn empty(parent: &CancellationToken) -> Self {
        Self {
            cancel: parent.child_token(),
            services: Services::default(),
            tracker: TaskTracker::new(),
            pipeline: None,
            audio: None,
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
        let auth = load_auth(config)?;
        if config.is_relay() {
            self.build_relay(config, http, auth, common)?;
            return Ok(());
        }
        let (media, pipeline) =
            crate::media::spawn(config, self.cancel.child_token()).map_err(DaemonError::Media)?;
        let audio = self.start_audio(config, &media, &pipeline)?;
        self.pipeline = Some(pipeline);
        common
            .media_counters
            .send_replace(Some(media.counters().clone()));
        let rtc = self
            .start_rtc(config, &media, audio.clone(), common)
            .await?;
        // The engine answers for the built-in SnapRTC capture member (`join_sessions = "all"`).
        let answerer: Arc<dyn crate::signaling::capture::Answerer> = Arc::new(rtc.clone());
        let signaling = crate::signaling::spawn(
            config.signaling.clone(),
            &config.backplane,
            Some(answerer.clone()),
            self.cancel.child_token(),
            self.tracker.clone(),
        )?;
        // `[[remote]]`: wait in sessions on remote hubs too, answering through the same engine.
        let remotes = match config.remote.is_empty() {
            true => Default::default(),
            false => crate::signaling::dialout::spawn(
                &config.remote,
                &Self::device_id(common),
                answerer,
                config.signaling.max_payload_bytes,
                self.cancel.child_token(),
                &self.tracker,
            ),
        };
        let whep = crate::rtc::whep::Whep::new(
            rtc.clone(),
            crate::rtc::whep::WhepSettings::from_config(config),
        );
        let rtsp = self.start_rtsp(config, &auth, &media, audio.clone())?;
        let (mjpeg, producer) = crate::http::mjpeg::channel(
            media.clone(),
            config.snapshot.mjpeg_max_fps,
            config.snapshot.mjpeg_max_clients,
        );
        self.services
            .spawn("mjpeg", producer.run(self.cancel.clone()));
        let camera = CameraServices {
            rtc: rtc.clone(),
            whep,
            media: media.clone(),
            mjpeg,
            rtsp: rtsp.as_ref().map(|(counters, _)| counters.clone()),
            audio: audio.clone(),
            remotes: remotes.clone(),
        };
        let http_port = self.start_http(config, http, auth, signaling, Some(camera))?;
        if config.mdns.enabled {
            self.start_mdns(http_port, rtsp.map(|(_, port)| port), common);
        }
        let (note, cancel) = (common.note.clone(), self.cancel.clone());
        self.services.spawn(
            "status",
            status::report_status(media, rtc, remotes, note, STATUS_POLL, cancel),
        );
        Ok(())
    }

    /// The relay role (`[camera] source = "none"`): the hub and HTTP only. No camera is opened,
    /// no encoder runs and no UDP port is bound, so the daemon is ready as soon as its HTTP
    /// socket serves.
    fn build_relay(
        &mut self,
        config: &Arc<Config>,
        http: &std::net::TcpListener,
        auth: Auth,
        common: &Common,
    ) -> Result<(), DaemonError> {
        info!("relay role ([camera] source = \"none\"): hub, /health and /metrics only; no camera, no WebRTC, no UDP port");
        if config.signaling.join_sessions == JoinSessions::All {
            info!("[signaling] join_sessions = \"all\" has no effect in the relay role: there is no camera to join sessions with");
        }
        common.media_counters.send_replace(None);
        let signaling = crate::signaling::spawn(
            config.signaling.clone(),
            &config.backplane,
            None,
            self.cancel.child_token(),
            self.tracker.clone(),
        )?;
        let http_port = self.start_http(config, http, auth, signaling.clone(), None)?;
        if config.mdns.enabled {
            self.start_mdns(http_port, None, common);
        }
        let (note, cancel) = (common.note.clone(), self.cancel.clone());
        let beat = common.rtc_beat.clone();
        self.services.spawn(
            "status",
            status::report_relay_status(signaling, beat, note, STATUS_POLL, cancel),
        );
        Ok(())
    }

    /// Bind the RTC engine's UDP port and run the engine, beating the watchdog's heartbeat.
    async fn start_rtc(
        &mut self,
        config: &Config,
        media: &MediaHandle,
        audio: Option<crate::audio::AudioHandle>,
        common: &Common,
    ) -> Result<RtcHandle, DaemonError> {
        let engine = crate::rtc::Engine::bind(
            crate::rtc::EngineSettings::from_config(config),
            media.clone(),
        )
        .await
        .map_err(DaemonError::Rtc)?
        .with_heartbeat(common.rtc_beat.clone());
        let engine = match audio {
            Some(audio) => engine.with_audio(audio),
            None => engine,
        };
        // (The engine logs its UDP port and the candidates it announces.)
        let rtc = engine.handle();
        self.services.spawn("rtc", engine.run(self.cancel.clone()));
        Ok(rtc)
    }

    /// Start the audio thread when `[audio]` resolves to a source (`auto`: the camera's own
    /// microphone), stamped from the video pipeline's clock.
    fn start_audio(
        &mut self,
        config: &Config,
        media: &MediaHandle,
        pipeline: &PipelineGuard,
    ) -> Result<Option<crate::audio::AudioHandle>, DaemonError> {
        let spec = crate::audio::resolve(&config.audio, pipeline.camera_device());
        if spec == crate::audio::AudioSpec::None {
            return Ok(None);
        }
        let (audio, guard) = crate::audio::spawn(
            &config.audio,
            spec,
            media.epoch(),
            self.cancel.child_token(),
        )
        .map_err(DaemonError::Audio)?;
        self.audio = Some(guard);
        Ok(Some(audio))
    }

    /// With `[rtsp] enabled`, bind the RTSP listener and serve the pipeline's frames on it;
    /// returns its counters and port.
    fn start_rtsp(
        &mut self,
        config: &Config,
        auth: &Auth,
        media: &MediaHandle,
        audio: Option<crate::audio::AudioHandle>,
    ) -> Result<Option<(Arc<crate::rtsp::RtspCounters>, u16)>, DaemonError> {
        if !config.rtsp.enabled {
            return Ok(None);
        }
        let settings = crate::rtsp::ServerSettings::from_config(config, auth);
        let server = crate::rtsp::RtspServer::bind(settings, media.clone(), audio)?;
        let port = server
            .local_addr()
            .map_err(|source| crate::rtsp::RtspError::Bind {
                addr: config.rtsp.listen,
                source,
            })?
            .port();
        let counters = server.counters();
        self.services.spawn("rtsp", server.run(self.cancel.clone()));
        Ok(Some((counters, port)))
    }

    /// Serve HTTP (hub, metrics, and with a camera WHEP and stills) on a duplicate of `http`;
    /// returns its port.
    fn start_http(
        &mut self,
        config: &Arc<Config>,
        http: &std::net::TcpListener,
        auth: Auth,
        signaling: SignalingHandle,
        camera: Option<CameraServices>,
    ) -> Result<u16, DaemonError> {
        let listener = http
            .try_clone()
            .and_then(TcpListener::from_std)
            .map_err(DaemonError::Http)?;
        let port = listener.local_addr().map_err(DaemonError::Http)?.port();
        let state = Arc::new(AppState {
            config: config.clone(),
            auth,
            signaling,
            camera,
        });
        let (cancel, tracker) = (self.cancel.clone(), self.tracker.clone());
        self.services
            .spawn("http", crate::http::serve(listener, state, cancel, tracker));
        Ok(port)
    }

    /// Advertise `_snaprtc._tcp` for `http_port` (and `_rtsp._tcp` for `rtsp_port`), following
    /// the live config.
    fn start_mdns(&mut self, http_port: u16, rtsp_port: Option<u16>, common: &Common) {
        let device_id = Self::device_id(common);
        let (rx, cancel) = (common.config.clone(), self.cancel.clone());
        self.services.spawn(
            "mdns",
            crate::discovery::supervise(rx, http_port, rtsp_port, device_id, cancel),
        );
    }

    /// The stable device id (mDNS, and `[[remote]] session = "device-id"`), read once.
    fn device_id(common: &Common) -> String {
        common
            .device_id
            .get_or_init(|| {
                let dir = systemd::state_dir();
                systemd::device_id(&dir).unwrap_or_else(|e| {
                    warn!(error = %e, "no stable device id; using the host name for this run");
                    crate::discovery::system_hostname()
                })
            })
            .clone()
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
        if let Some(audio) = self.audio.take() {
            let _ = tokio::task::spawn_blocking(move || audio.join()).await;
        }
    }
}

/// The access token when `[server] auth = "token"` (made on first start).
fn load_auth(config: &Config) -> Result<Auth, DaemonError> {
    match config.server.auth {
        AuthMode::None => Ok(Auth::Open),
        AuthMode::Token => {
            let path = &config.server.auth_token_file;
            let (auth, created) = Auth::load_or_create(path)?;
            if created {
                info!(path = %path.display(), "created a new access token; viewers need it to connect");
            } else {
                info!(path = %path.display(), "access token loaded");
            }
            Ok(auth)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_service_is_reported_by_name_with_its_panic() {
        let mut services = Services::default();
        services.spawn("mdns", std::future::pending());
        services.spawn("status", async { panic!("no status for you") });
        let ended = services.join_next().await.expect("a service ended");
        let cancel = CancellationToken::new();
        let error = ended_unexpectedly(ended, &cancel);
        assert_eq!(
            error.to_string(),
            "the status service panicked: no status for you"
        );
        assert!(cancel.is_cancelled(), "the daemon stops");
        services.shutdown().await;
    }

    #[tokio::test]
    async fn a_service_that_returns_is_reported_by_name() {
        let mut services = Services::default();
        services.spawn("http", async {});
        let ended = services.join_next().await.expect("a service ended");
        let error = ended_unexpectedly(ended, &CancellationToken::new());
        assert_eq!(error.to_string(), "the http service stopped unexpectedly");
        assert!(services.join_next().await.is_none());
    }
}
