//! `systemctl reload` = SIGHUP: re-read and validate the config, apply it, and on an invalid
//! file keep running on the old one (logging `file:line:col`).
//!
//! The decision is pure ([`Reload::apply`] with the old config and the load result); the
//! daemon waits for SIGHUP, calls the loader and carries the decision out:
//!
//! - `[mdns]` changes live: the advertiser follows the published config (goodbye, then the new
//!   records).
//! - every other section except `[log]` (`[server]`, `[camera]`, `[encoder]`, `[snapshot]`,
//!   `[rtsp]`, `[audio]`, `[signaling]`, `[backplane]`, `[[remote]]`) restarts the daemon's services in-process: the HTTP socket stays open (a
//!   new `listen` is bound first), the pipeline, RTC engine, hub and HTTP server are stopped
//!   and built again from the new config. Viewers and hub sessions are dropped and reconnect.
//!   Sockets, device and encoder are all tied to these sections, so a finer split would save
//!   a second of video at the price of many more states to get wrong.
//! - `[log]` waits for `systemctl restart snaprtcd` (the log subscriber is global and set once).

use crate::config::{Config, ConfigError};

/// Reads and validates the config again (the same path and `PORT` rule as at start).
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Parts that follow a reload without restarting anything.
const LIVE: &[&str] = &["mdns"];
/// Parts whose changes only take effect after `systemctl restart`.
const NEEDS_RESTART: &[&str] = &["log"];

/// What a reload does.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The file is valid and equal to what runs.
    Unchanged,
    /// The new config is taken. `services`: the daemon's services are restarted in-process
    /// for it; `restart` lists changes that wait for `systemctl restart`.
    Applied {
        /// The config sections that changed.
        changed: Vec<&'static str>,
        /// Whether the daemon's services restart in-process for the change.
        services: bool,
        /// Sections whose change waits for `systemctl restart` (e.g. `[log]`).
        restart: Vec<&'static str>,
    },
    /// The file is invalid; the old config stays.
    Rejected(ConfigError),
}

impl Outcome {
    /// One line for the log and systemd's `STATUS=`.
    pub fn status(&self) -> String {
        match self {
            Outcome::Unchanged => "config reloaded (no changes)".to_owned(),
            Outcome::Applied {
                changed,
                services,
                restart,
            } => {
                let mut s = format!("config reloaded ({} changed", changed.join(", "));
                if *services {
                    s.push_str("; services restarted");
                }
                if !restart.is_empty() {
                    s.push_str(&format!("; {} needs systemctl restart", restart.join(", ")));
                }
                s.push(')');
                s
            }
            Outcome::Rejected(e) => format!("reload rejected, running the previous config: {e}"),
        }
    }
}

/// The pure part: given what runs and what was loaded, what to publish and report.
pub struct Reload;

impl Reload {
    /// Returns the config to apply (if any) and the outcome.
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
                let services = changed
                    .iter()
                    .any(|c| !LIVE.contains(c) && !NEEDS_RESTART.contains(c));
                let restart = changed
                    .iter()
                    .copied()
                    .filter(|c| NEEDS_RESTART.contains(c))
                    .collect();
                (
                    Some(new),
                    Outcome::Applied {
                        changed,
                        services,
                        restart,
                    },
                )
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
    if old.rtsp != new.rtsp {
        out.push("rtsp");
    }
    if old.audio != new.audio {
        out.push("audio");
    }
    if old.signaling != new.signaling {
        out.push("signaling");
    }
    if old.mdns != new.mdns {
        out.push("mdns");
    }
    if old.backplane != new.backplane {
        out.push("backplane");
    }
    if old.log != new.log {
        out.push("log");
    }
    if old.remote != new.remote {
        out.push("remote");
    }
    out
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
                services: true,
                restart: vec![],
            }
        );
        assert_eq!(
            outcome.status(),
            "config reloaded (server.listen, server, mdns changed; services restarted)"
        );
    }

    #[test]
    fn mdns_alone_applies_live_and_log_waits_for_a_restart() {
        let mut new = Config::default();
        new.mdns.instance_name = "garage".into();
        let (_, outcome) = Reload::apply(&Config::default(), Ok(new.clone()));
        assert_eq!(
            outcome,
            Outcome::Applied {
                changed: vec!["mdns"],
                services: false,
                restart: vec![],
            }
        );
        new.log.level = "debug".into();
        let (_, outcome) = Reload::apply(&Config::default(), Ok(new));
        assert_eq!(
            outcome.status(),
            "config reloaded (mdns, log changed; log needs systemctl restart)"
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
        new.remote.push(crate::config::RemoteConfig::default());
        assert_eq!(
            changed_parts(&old, &new),
            vec![
                "server.rtc_udp_port",
                "server.auth",
                "camera",
                "encoder",
                "snapshot",
                "signaling",
                "log",
                "remote"
            ]
        );
    }
}
