//! The command line (clap). Kept in the library so the man page and shell completions are
//! generated from the same definition the binary parses.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};

/// Camera in, WebRTC out: serves a V4L2, exec or test-pattern camera to browsers on the LAN
/// (SnapRTC-compatible SignalR hub, WHEP, built-in viewer page).
#[derive(Debug, Parser)]
#[command(
    name = "snaprtcd",
    version,
    about,
    after_help = "Environment:\n  PORT          overrides the port of [server] listen\n  SNAPRTCD_LOG  log filter, overrides [log] level (e.g. debug, snaprtcd=trace)"
)]
pub struct Cli {
    /// Config file [default: /etc/snaprtcd/snaprtcd.toml; built-in defaults when it is absent]
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do; none means `run`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; running the daemon is the default.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default when no command is given)
    Run,
    /// Check a config file; prints FILE:LINE:COL: key: problem and exits 2 when it is invalid
    CheckConfig {
        /// The file to check [default: --config, else /etc/snaprtcd/snaprtcd.toml]
        file: Option<PathBuf>,
    },
    /// Print the effective config as TOML, every default filled in
    PrintConfig,
    /// List V4L2 capture devices with their formats, sizes and frame rates (metadata nodes
    /// are skipped); exits 0 also when there are none
    ListDevices,
    /// Grab one JPEG from the configured camera ([camera] of --config, same file rules as
    /// `run`) without the daemon; stop the daemon first if it holds the camera
    // clap prints this doc as the --help text, where [camera] is meant literally.
    #[allow(rustdoc::broken_intra_doc_links)]
    Snapshot {
        /// Where to write the JPEG; `-` writes it to stdout
        #[arg(short, long, value_name = "FILE", default_value = "snapshot.jpg")]
        output: PathBuf,
    },
}

/// Where the effective config came from (logged at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file that was read.
    File(PathBuf),
    /// No `--config`, and the default file does not exist.
    BuiltInDefaults,
}

/// The effective config: `--config FILE` (must exist), else the default file when it exists,
/// else the built-in defaults; then `PORT` from the environment.
pub fn resolve_config(
    explicit: Option<&Path>,
    port_env: Option<&str>,
) -> Result<(Config, ConfigSource), ConfigError> {
    let (mut config, source) = match explicit {
        Some(path) => (Config::load(path)?, ConfigSource::File(path.to_owned())),
        None => {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            if default.exists() {
                (
                    Config::load(default)?,
                    ConfigSource::File(default.to_owned()),
                )
            } else {
                (Config::default(), ConfigSource::BuiltInDefaults)
            }
        }
    };
    config.apply_env_port(port_env)?;
    Ok((config, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn explicit_missing_file_is_an_error_naming_it() {
        let err = resolve_config(Some(Path::new("/nonexistent/x.toml")), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/x.toml: cannot read"),
            "{err}"
        );
    }
}
