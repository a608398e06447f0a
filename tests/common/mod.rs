//! Black-box harness: runs the built `snaprtcd` binary on port 0 with a config written for the
//! test, reads the bound address from its log, waits for its `ready` line (never a fixed
//! sleep), and kills it on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a daemon may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("snaprtcd-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_snaprtcd")
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
    lines: mpsc::Receiver<String>,
    /// Every log line seen so far.
    pub log: Vec<String>,
}

impl Daemon {
    /// Start with `extra` appended to a base config that listens on 127.0.0.1:0 with mDNS off
    /// and the test pattern as camera. `extra` may add keys to any section by repeating it.
    pub fn start(extra: &str) -> Daemon {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = TempDir::new("daemon");
        let config = dir.path("snaprtcd.toml");
        let text = base_config(extra, &dir);
        std::fs::write(&config, text).expect("write config");
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config)
            .env("SNAPRTCD_LOG", "debug")
            .env_remove("PORT")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn snaprtcd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            lines,
            log: Vec::new(),
        };
        let listening = daemon.wait_for_log("http listening", START_TIMEOUT);
        let addr = listening
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr= in {listening:?}"));
        daemon.addr = addr;
        daemon.wait_for_log(" ready", START_TIMEOUT);
        daemon
    }

    /// Wait for a log line containing `needle` (lines already seen count).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_from(0, needle, timeout)
    }

    /// Wait for a log line containing `needle` among the lines from the `from`th on (`log.len()`
    /// taken before an action: a line that action caused).
    pub fn wait_for_log_from(&mut self, from: usize, needle: &str, timeout: Duration) -> String {
        if let Some(line) = self.log.iter().skip(from).find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Send a signal to the daemon.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            // Keep collecting log lines.
            while let Ok(line) = self.lines.try_recv() {
                self.log.push(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(line);
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling a child's exit status has no event to wait on; this is a poll interval,
            // not a synchronisation sleep.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident memory of the daemon, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:").unwrap_or(0)
    }

    /// The daemon's peak resident memory so far (VmHWM), in KiB.
    /// Fails the test when it cannot be read: an assertion on it must never pass on zeros.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
            .expect("VmHWM in /proc/PID/status")
    }

    /// A `kB` field of `/proc/PID/status`.
    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn http(&self, request: &str) -> HttpResponse {
        http(self.addr, request)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base_config(extra: &str, dir: &TempDir) -> String {
    // Sections in `extra` are merged by toml itself only if not repeated; tests pass whole
    // sections, so the base keeps to keys tests don't set.
    let mut text = String::new();
    let has = |section: &str| extra.contains(&format!("[{section}]"));
    if !has("server") {
        text.push_str("[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\n");
    }
    if !has("mdns") {
        text.push_str("[mdns]\nenabled = false\n");
    }
    if !has("camera") {
        text.push_str("[camera]\nsource = \"testsrc\"\nwidth = 320\nheight = 240\nfps = 15\n");
    }
    let _ = dir;
    text.push_str(extra);
    text
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send a raw request (`Connection: close` is added) and read the whole response.
pub fn http(addr: SocketAddr, request: &str) -> HttpResponse {
    try_http(addr, request).unwrap_or_else(|e| panic!("no whole response: {e}"))
}

/// [`http`], but a reply without a whole head (the connection closed or was reset first) is
/// `Err` with what came, not a panic.
pub fn try_http(addr: SocketAddr, request: &str) -> Result<HttpResponse, String> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = request.replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    s.write_all(request.as_bytes()).expect("write");
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        return Err(format!(
            "read failed ({e}) after {:?}",
            String::from_utf8_lossy(&raw)
        ));
    }
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!(
            "no header end in {:?}",
            String::from_utf8_lossy(&raw)
        ));
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// `POST {hub}/negotiate` and return the connection token.
pub fn negotiate(addr: SocketAddr, extra_headers: &str) -> HttpResponse {
    http(
        addr,
        &format!(
            "POST /snaprtc-hub/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{extra_headers}\r\n"
        ),
    )
}

pub fn token_of(r: &HttpResponse) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("negotiate json");
    v["connectionToken"].as_str().expect("token").to_owned()
}

/// A minimal SignalR JSON client over tokio-tungstenite, for protocol tests.
pub mod signalr {
    use std::collections::VecDeque;
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    pub const RS: char = '\u{1e}';
    pub const TIMEOUT: Duration = Duration::from_secs(10);

    pub struct Client {
        pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        records: VecDeque<String>,
        partial: String,
    }

    /// What reading produced.
    #[derive(Debug, PartialEq)]
    pub enum Read {
        Record(serde_json::Value),
        /// The server closed the socket.
        Closed,
    }

    impl Client {
        /// Connect (no handshake yet).
        pub async fn connect(url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
            let (ws, _) = tokio_tungstenite::connect_async(url).await?;
            Ok(Client {
                ws,
                records: VecDeque::new(),
                partial: String::new(),
            })
        }

        /// Negotiate + connect + handshake; returns a ready client.
        pub async fn open(addr: std::net::SocketAddr) -> Client {
            let token =
                tokio::task::spawn_blocking(move || super::token_of(&super::negotiate(addr, "")))
                    .await
                    .unwrap();
            let mut c = Client::connect(&format!("ws://{addr}/snaprtc-hub?id={token}"))
                .await
                .expect("connect");
            c.handshake().await;
            c
        }

        pub async fn handshake(&mut self) {
            self.send_raw(&format!("{{\"protocol\":\"json\",\"version\":1}}{RS}"))
                .await;
            assert_eq!(self.read().await, Read::Record(serde_json::json!({})));
        }

        pub async fn send_raw(&mut self, text: &str) {
            self.ws.send(Message::text(text)).await.expect("send");
        }

        pub async fn send(&mut self, message: serde_json::Value) {
            self.send_raw(&format!("{message}{RS}")).await;
        }

        pub async fn invoke(&mut self, id: &str, target: &str, args: serde_json::Value) {
            self.send(
                serde_json::json!({"type":1,"invocationId":id,"target":target,"arguments":args}),
            )
            .await;
        }

        pub async fn send_call(&mut self, target: &str, args: serde_json::Value) {
            self.send(serde_json::json!({"type":1,"target":target,"arguments":args}))
                .await;
        }

        /// The next record, or `Closed`. Panics after `TIMEOUT`.
        pub async fn read(&mut self) -> Read {
            self.read_within(TIMEOUT)
                .await
                .expect("no record within the timeout")
        }

        /// The next record that is not a Ping.
        pub async fn read_non_ping(&mut self) -> Read {
            loop {
                match self.read().await {
                    Read::Record(v) if v["type"] == 6 => continue,
                    other => return other,
                }
            }
        }

        /// The next record or `Closed`; `None` when nothing came within `timeout`.
        pub async fn read_within(&mut self, timeout: Duration) -> Option<Read> {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if let Some(r) = self.records.pop_front() {
                    return Some(Read::Record(
                        serde_json::from_str(&r).expect("server sent invalid JSON"),
                    ));
                }
                let frame = tokio::time::timeout_at(deadline, self.ws.next())
                    .await
                    .ok()?;
                match frame {
                    Some(Ok(Message::Text(t))) => {
                        self.partial.push_str(t.as_str());
                        while let Some(end) = self.partial.find(RS) {
                            let record: String = self.partial.drain(..=end).collect();
                            self.records
                                .push_back(record.trim_end_matches(RS).to_owned());
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Some(Read::Closed),
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

/// Raw-frame helpers on the client's WebSocket.
pub trait WsExt {
    /// The next text frame as it came, separators included.
    fn next_raw(&mut self) -> impl std::future::Future<Output = String>;
    fn send_binary(&mut self, data: Vec<u8>) -> impl std::future::Future<Output = ()>;
}

impl WsExt
    for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
{
    async fn next_raw(&mut self) -> String {
        use futures_util::StreamExt;
        loop {
            let frame = tokio::time::timeout(signalr::TIMEOUT, self.next())
                .await
                .expect("no frame");
            if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = frame {
                return t.as_str().to_owned();
            }
        }
    }

    async fn send_binary(&mut self, data: Vec<u8>) {
        use futures_util::SinkExt;
        self.send(tokio_tungstenite::tungstenite::Message::binary(data))
            .await
            .expect("send");
    }
}

/// Whether the external `tool` (from Debian package `package`) can run. When it cannot, a
/// test under CI (`CI=true`) fails here naming the tool; elsewhere the caller skips, saying so.
/// A missing tool never turns into a silent pass in CI.
pub fn require_tool(tool: &str, package: &str) -> bool {
    if Command::new(tool).arg("-version").output().is_ok() {
        return true;
    }
    let msg = format!("{tool} is not installed (apt-get install {package})");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}: under CI=true a missing tool fails the test");
    }
    eprintln!("SKIPPED: {msg}");
    false
}
