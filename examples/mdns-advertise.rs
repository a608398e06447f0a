//! Runs only the mDNS advertiser, for the netns test before/without the full daemon:
//! `mdns-advertise [CONFIG] [PORT]`. Stops (with goodbyes) on SIGTERM or SIGINT.

use std::path::Path;

use snaprtcd::config::Config;
use snaprtcd::{discovery, systemd};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).init();
    let mut args = std::env::args().skip(1);
    let config = match args.next() {
        Some(p) if p != "-" => Config::load(Path::new(&p))?,
        _ => Config::default(),
    };
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(8080);
    let id = systemd::device_id(&systemd::state_dir())?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(discovery::start(&config, port, &id, cancel.clone())?);
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    cancel.cancel();
    task.await??;
    Ok(())
}
