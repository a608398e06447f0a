//! The `snaprtcd` binary: parse the command line and call into the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use snaprtcd::cli::{resolve_config, Cli, Command, ConfigSource};
use snaprtcd::config::{Config, DEFAULT_CONFIG_PATH};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { ref file }) => {
            check_config(file.as_deref().or(cli.config.as_deref()))
        }
        Some(Command::PrintConfig) => print_config(&cli),
        Some(Command::ListDevices) => list_devices(),
        Some(Command::Snapshot { ref output }) => match snapshot(&cli, output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("snaprtcd: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Run) | None => match run(&cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("snaprtcd: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(file: Option<&std::path::Path>) -> ExitCode {
    let path = file.unwrap_or(std::path::Path::new(DEFAULT_CONFIG_PATH));
    match Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn print_config(cli: &Cli) -> ExitCode {
    match resolve_config(cli.config.as_deref(), std::env::var("PORT").ok().as_deref()) {
        Ok((config, _)) => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn list_devices() -> ExitCode {
    match snaprtcd::capture::list_devices() {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("snaprtcd: listing V4L2 devices: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Warnings (e.g. the `auto` fallback to the test pattern) on stderr; SNAPRTCD_LOG wins.
fn init_tool_logging(config: &Config) {
    let mut log = config.log.clone();
    log.level = "warn".into();
    log.format = snaprtcd::config::LogFormat::Text;
    let env_filter = std::env::var("SNAPRTCD_LOG").ok();
    let _ = snaprtcd::logging::init(&log, env_filter.as_deref(), false);
}

fn snapshot(cli: &Cli, output: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let (config, _) = resolve_config(cli.config.as_deref(), std::env::var("PORT").ok().as_deref())?;
    init_tool_logging(&config);
    let jpeg = snaprtcd::media::snapshot_once(&config).context("snapshot")?;
    if output == std::path::Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(&jpeg)
            .and_then(|()| out.flush())
            .context("writing the JPEG to stdout")?;
    } else {
        std::fs::write(output, &jpeg).with_context(|| format!("writing {}", output.display()))?;
        eprintln!("wrote {} ({} bytes)", output.display(), jpeg.len());
    }
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    snaprtcd::media::keep_heap_slack();
    // Validate everything before any socket is bound.
    let (config, source) =
        resolve_config(cli.config.as_deref(), std::env::var("PORT").ok().as_deref())?;
    let env_filter = std::env::var("SNAPRTCD_LOG").ok();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if let Err(e) = snaprtcd::logging::init(&config.log, env_filter.as_deref(), journal) {
        let mut fallback = config.log.clone();
        fallback.format = snaprtcd::config::LogFormat::Text;
        snaprtcd::logging::init(&fallback, None, false).ok();
        tracing::warn!(error = %e, "falling back to text logs");
    }
    match &source {
        ConfigSource::File(path) => tracing::info!(path = %path.display(), "config loaded"),
        ConfigSource::BuiltInDefaults => tracing::info!(
            "no config file at {DEFAULT_CONFIG_PATH}; running on built-in defaults (see `snaprtcd print-config`)"
        ),
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("snaprtcd")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listen = config.server.listen;
        let http = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("binding the HTTP port {listen} ([server] listen, or PORT)")
            })?;
        let cancel = CancellationToken::new();
        tokio::spawn(stop_on_signal(cancel.clone()));
        // `systemctl reload`: the same file and PORT rule as at start.
        let path = cli.config.clone();
        let reload: snaprtcd::reload::Loader = Box::new(move || {
            resolve_config(path.as_deref(), std::env::var("PORT").ok().as_deref()).map(|(c, _)| c)
        });
        let listeners = snaprtcd::daemon::Listeners { http };
        snaprtcd::daemon::run_with(config, listeners, cancel, Some(reload))
            .await
            .context("daemon failed")
    })?;
    Ok(())
}

/// SIGTERM or SIGINT → graceful shutdown.
async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = cancel.cancelled() => return,
    }
    cancel.cancel();
}
