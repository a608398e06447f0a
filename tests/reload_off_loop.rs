//! SIGHUP re-reads the config off the async workers: while the file is being read (a slow or
//! hung disk), the daemon keeps answering. The daemon runs in this process on a
//! single-threaded runtime, so a read done inside its select loop would stall every task.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use snaprtcd::config::Config;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\n\
                      [mdns]\nenabled = false\n\
                      [camera]\nsource = \"testsrc\"\nwidth = 160\nheight = 120\nfps = 5\n";

/// `GET /health`'s status code, or why there was none within `WAIT`.
fn health(addr: SocketAddr) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .map_err(|e| format!("no answer: {e}"))?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {head:?}"))
}

#[test]
fn the_daemon_answers_while_a_reload_reads_the_config() {
    let config = Config::from_toml(CONFIG, "<test>").expect("config");
    let reloaded = config.clone();
    let (called_tx, called_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let loader: snaprtcd::reload::Loader = Box::new(move || {
        let _ = called_tx.send(());
        // The disk hangs until the test says otherwise.
        let _ = release_rx
            .lock()
            .map(|rx| rx.recv_timeout(Duration::from_secs(30)));
        Ok(reloaded.clone())
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let daemon = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let http = tokio::net::TcpListener::from_std(listener).expect("listener");
                let listeners = snaprtcd::daemon::Listeners { http };
                snaprtcd::daemon::run_with(config, listeners, cancel, Some(loader)).await
            })
        })
    };
    // Answering means the SIGHUP handler is installed (it is, before the services start).
    assert_eq!(health(addr), Ok(200), "serves before the reload");
    // SAFETY: plain libc calls; the daemon installed a SIGHUP handler in this process.
    let raised = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    assert_eq!(raised, 0, "kill(SIGHUP)");
    called_rx
        .recv_timeout(WAIT)
        .expect("the loader is called on SIGHUP");
    let during = health(addr);
    let _ = release_tx.send(());
    assert_eq!(during, Ok(200), "serves while the config is being read");
    cancel.cancel();
    let result = daemon.join().expect("daemon thread");
    assert!(result.is_ok(), "daemon stops cleanly: {result:?}");
}
