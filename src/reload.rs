//! `systemctl reload` = SIGHUP: re-read and validate the config, publish it to the parts that
//! follow it, and on an invalid file keep running on the old one (logging `file:line:col`).
//!
//! The decision is pure ([`Reload::apply`] with the old config and the load result); the
//! task ([`run`]) only waits for SIGHUP, calls the loader and tells systemd.
//! Parts that can change live subscribe to the `watch` channel and restart themselves when
//! their section differs (the mDNS advertiser does: [`crate::discovery::supervise`]). What
//! cannot change without rebinding sockets is named in the log as needing a restart.

use std::sync::Arc;

use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::systemd;

/// Reads and validates the config again (the same path and `PORT` rule as at start).
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Sections whose changes only take effect after `systemctl restart` (sockets, log setup).
const NEEDS_RESTART: &[&str] = &["server.listen", "server.rtc_udp_port", "server.auth", "log"];

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The file is valid and equal to what runs.
    Unchanged,
    /// The new config is in force for these parts; `restart` lists changes that wait for a
    /// restart.
    Applied {
        changed: Vec<&'static str>,
        restart: Vec<&'static str>,
    },
    /// The file is invalid; the old config stays.
    Rejected(ConfigError),
}

impl Outcome {
    /// One line for systemd's `STATUS=`.
    pub fn status(&self) -> String {
        match self {
            Outcome::Unchanged => "config reloaded (no changes)".to_owned(),
            Outcome::Applied { changed, restart } if restart.is_empty() => {
                format!("config reloaded ({} changed)", changed.join(", "))
            }
            Outcome::Applied { changed, restart } => format!(
                "config reloaded ({} changed; {} need a restart)",
                changed.join(", "),
                restart.join(", ")
            ),
            Outcome::Rejected(e) => format!("reload rejected, running the previous config: {e}"),
        }
    }
}

/// The pure part: given what runs and what was loaded, what to publish and report.
pub struct Reload;

impl Reload {
    /// Returns the config to publish (if any) and the outcome.
    pub fn apply(
        current: &Config,
        loaded: Result<Config, ConfigError>,
    ) -> (Option<Config>, Outcome) {
        match loaded {
            Err(e) => (None, Outcome::Rejected(e)),
            Ok(new) => {
                let changed = changed_parts(current, &new);
                if changed.is_empty() {
                    return (None, Outcome::Unchanged);
                }
                let restart = changed
                    .iter()
                    .copied()
                    .filter(|c| NEEDS_RESTART.contains(c))
                    .collect();
                (Some(new), Outcome::Applied { changed, restart })
            }
        }
    }
}

/// The parts of the config that differ: sections, or `server.<key>` for the server keys
/// that decide whether a restart is needed.
pub fn changed_parts(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let s = (&old.server, &new.server);
    if s.0.listen != s.1.listen {
        out.push("server.listen");
    }
    if s.0.rtc_udp_port != s.1.rtc_udp_port {
        out.push("server.rtc_udp_port");
    }
    if s.0.auth != s.1.auth || s.0.auth_token_file != s.1.auth_token_file {
        out.push("server.auth");
    }
    let mut rest_old = s.0.clone();
    let mut rest_new = s.1.clone();
    for r in [&mut rest_old, &mut rest_new] {
        r.listen = old.server.listen;
        r.rtc_udp_port = 0;
        r.auth = old.server.auth;
        r.auth_token_file = Default::default();
    }
    if rest_old != rest_new {
        out.push("server");
    }
    if old.camera != new.camera {
        out.push("camera");
    }
    if old.encoder != new.encoder {
        out.push("encoder");
    }
    if old.snapshot != new.snapshot {
        out.push("snapshot");
    }
    if old.signaling != new.signaling {
        out.push("signaling");
    }
    if old.mdns != new.mdns {
        out.push("mdns");
    }
    if old.log != new.log {
        out.push("log");
    }
    out
}

/// Handles SIGHUP until `cancel`: reload, publish on `config`, tell systemd. Create `hangup`
/// with `signal(SignalKind::hangup())` before reporting ready, so an early reload is not fatal.
pub async fn run(
    mut hangup: Signal,
    loader: Loader,
    config: watch::Sender<Arc<Config>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            got = hangup.recv() => if got.is_none() { cancel.cancelled().await; return },
        }
        tracing::info!("SIGHUP: reloading the config");
        systemd::notify_reloading();
        let current = config.borrow().clone();
        let (publish, outcome) = Reload::apply(&current, loader());
        match &outcome {
            Outcome::Rejected(e) => {
                tracing::error!(error = %e, "reload rejected; still running the previous config")
            }
            Outcome::Unchanged => tracing::info!("config reloaded; nothing changed"),
            Outcome::Applied { changed, restart } => {
                tracing::info!(?changed, "config reloaded");
                for part in restart {
                    tracing::warn!(
                        part,
                        "this change takes effect after `systemctl restart snaprtcd`"
                    );
                }
            }
        }
        if let Some(new) = publish {
            config.send_replace(Arc::new(new));
        }
        systemd::notify_ready(&outcome.status());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error() -> ConfigError {
        Config::from_toml("[mdns]\nenabled = 3\n", "/etc/snaprtcd/snaprtcd.toml").unwrap_err()
    }

    #[test]
    fn an_invalid_file_keeps_the_old_config_and_names_the_place() {
        let (publish, outcome) = Reload::apply(&Config::default(), Err(error()));
        assert!(publish.is_none());
        let status = outcome.status();
        assert!(
            status.contains("/etc/snaprtcd/snaprtcd.toml:2:"),
            "status names file:line: {status}"
        );
        assert!(status.starts_with("reload rejected"), "{status}");
    }

    #[test]
    fn an_equal_file_changes_nothing() {
        let (publish, outcome) = Reload::apply(&Config::default(), Ok(Config::default()));
        assert!(publish.is_none());
        assert_eq!(outcome, Outcome::Unchanged);
    }

    #[test]
    fn changes_are_named_and_restart_ones_flagged() {
        let mut new = Config::default();
        new.mdns.instance_name = "garage".into();
        new.server.listen.set_port(9000);
        new.server.max_viewers = 3;
        let (publish, outcome) = Reload::apply(&Config::default(), Ok(new.clone()));
        assert_eq!(publish, Some(new));
        assert_eq!(
            outcome,
            Outcome::Applied {
                changed: vec!["server.listen", "server", "mdns"],
                restart: vec!["server.listen"],
            }
        );
        assert_eq!(
            outcome.status(),
            "config reloaded (server.listen, server, mdns changed; server.listen need a restart)"
        );
    }

    #[test]
    fn every_section_is_compared() {
        let old = Config::default();
        let mut new = old.clone();
        new.camera.fps = 15;
        new.encoder.bitrate_kbps = 1;
        new.snapshot.quality = 10;
        new.signaling.max_sessions = 1;
        new.log.level = "debug".into();
        new.server.auth_token_file = "/tmp/t".into();
        new.server.rtc_udp_port = 1;
        assert_eq!(
            changed_parts(&old, &new),
            vec![
                "server.rtc_udp_port",
                "server.auth",
                "camera",
                "encoder",
                "snapshot",
                "signaling",
                "log"
            ]
        );
    }
}
