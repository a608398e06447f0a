//! A coturn (`turnserver`, Debian package `coturn`) on 127.0.0.1 for the TURN tests, with
//! `--allow-loopback-peers` (coturn refuses loopback peers otherwise). Included with `#[path]`.
//! Without `turnserver` a test skips with a message, and fails when `CI=true`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A coturn child on 127.0.0.1, killed on drop.
pub struct Coturn {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP right now.
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Coturn {
    /// Start coturn with `auth` arguments; `None` when it is not installed (outside CI).
    pub fn start(auth: &[&str]) -> Option<Coturn> {
        if Command::new("turnserver")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            let msg = "turnserver (Debian package coturn) is not installed";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}");
            }
            eprintln!("SKIP: {msg}");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("snaprtcd-coturn-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = TempDir(dir);
        let port = free_port();
        // A relay port range of its own, from a free port upward (coturn needs a range).
        let relay = free_port().clamp(1024, 65000);
        let mut child = Command::new("turnserver")
            .args([
                "-n",
                "-v",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--simple-log",
            ])
            .args([
                "--log-file",
                "stdout",
                "--allow-loopback-peers",
                "--realm",
                "snaprtcd",
            ])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay}"))
            .arg(format!("--max-port={}", relay + 40))
            .arg(format!("--pidfile={}", dir.0.join("pid").display()))
            .arg(format!("--userdb={}", dir.0.join("db").display()))
            .args(auth)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Ready when both listeners say so (a line each; never a fixed sleep).
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut udp, mut tcp) = (false, false);
            for line in out.lines() {
                let Ok(line) = line else { break };
                udp |= line.contains("UDP listener opened on");
                tcp |= line.contains("TCP listener opened on");
                if udp && tcp {
                    let _ = tx.send(());
                    udp = false;
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("coturn did not open its listeners in 20 s");
        Some(Coturn {
            child,
            port,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}
