//! Log setup: text on stderr, JSON lines, or the systemd journal with structured fields.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `SNAPRTCD_LOG` or `[log] level` is not a valid filter.
    #[error("SNAPRTCD_LOG={value:?} is not a log filter: {reason}")]
    BadFilter {
        /// The filter as given.
        value: String,
        /// What the filter parser said.
        reason: String,
    },
    /// The journal's socket could not be opened.
    #[error("cannot connect to the journal: {0}")]
    Journald(std::io::Error),
    /// A global subscriber exists already (logging is set up once per process).
    #[error("logging was already set up")]
    AlreadySet,
}

/// Crates that log their protocol work at INFO (`turn-client-proto` logs every request and
/// every poll with its return value): at `warn` unless the filter names them itself, so that
/// an `info` device log (a journal on an SD card) holds snaprtcd's lines, not theirs.
const QUIET_CRATES: [&str; 2] = ["turn_client_proto", "stun_proto"];

/// `filter` with `crate=warn` added for each of the quiet crates it does not name.
pub fn with_quiet_crates(filter: &str) -> String {
    let mut out = filter.trim().to_owned();
    for krate in QUIET_CRATES {
        if !out.contains(krate) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(krate);
            out.push_str("=warn");
        }
    }
    out
}

/// Install the global subscriber. `env_filter` is `SNAPRTCD_LOG`; it wins over `[log] level`.
/// Under systemd (`JOURNAL_STREAM` set) text logs go to the journal with their fields.
pub fn init(
    config: &LogConfig,
    env_filter: Option<&str>,
    journal_stream: bool,
) -> Result<(), LogError> {
    let filter = match env_filter {
        Some(value) => {
            EnvFilter::try_new(with_quiet_crates(value)).map_err(|e| LogError::BadFilter {
                value: value.to_owned(),
                reason: e.to_string(),
            })?
        }
        // Validated with the config.
        None => EnvFilter::try_new(with_quiet_crates(&config.level))
            .unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let format = match config.format {
        LogFormat::Text if journal_stream => LogFormat::Journald,
        other => other,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Journald => {
            let layer = tracing_journald::layer().map_err(LogError::Journald)?;
            registry.with(layer).try_init()
        }
    };
    result.map_err(|_| LogError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_crates_are_quiet_unless_named() {
        assert_eq!(
            with_quiet_crates("info"),
            "info,turn_client_proto=warn,stun_proto=warn"
        );
        assert_eq!(
            with_quiet_crates("debug,turn_client_proto=trace"),
            "debug,turn_client_proto=trace,stun_proto=warn"
        );
        assert_eq!(
            with_quiet_crates(""),
            "turn_client_proto=warn,stun_proto=warn"
        );
        assert!(EnvFilter::try_new(with_quiet_crates("snaprtcd=debug,info")).is_ok());
    }
}
