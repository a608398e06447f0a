//! `turns:` through the engine: a str0m peer reaches the engine only through coturn's relay,
//! the engine speaking TURN over TLS to coturn (a test CA made with `openssl`, trusted through
//! `SSL_CERT_FILE` as the system roots; the server name `localhost` checked against the
//! certificate). Its own binary: it sets `SSL_CERT_FILE` for the whole process before
//! anything else runs. Without `openssl` or `turnserver` it fails under `CI=true`.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

#[path = "support/coturn.rs"]
mod coturn;
#[path = "support/rtc.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use snaprtcd::config::{IceConfig, TurnServer};
use snaprtcd::media::{self, ChannelLimits};
use snaprtcd::rtc::{Engine, EngineSettings, ViewerKind};
use tokio_util::sync::CancellationToken;

use coturn::Coturn;
use support::{loopback_settings, spawn_fake_pipeline, Peer};

/// A test CA (`ca.pem`) and a `localhost` server certificate signed by it (`srv.pem`,
/// `srv.key`) in `dir`; `false` (a skip) without `openssl` outside CI.
fn make_certificates(dir: &Path) -> bool {
    if Command::new("openssl").arg("version").output().is_err() {
        let msg = "openssl is not installed";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("SKIP: {msg}");
        return false;
    }
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let args = |s: String| -> Vec<String> { s.split(' ').map(str::to_owned).collect() };
    let ca = args(format!(
        "req -x509 {ec} -days 1 -subj /CN=snaprtcd-turn-test-CA -keyout ca.key -out ca.pem"
    ));
    run(&ca.iter().map(String::as_str).collect::<Vec<_>>());
    let csr = args(format!(
        "req {ec} -subj /CN=localhost -keyout srv.key -out srv.csr"
    ));
    run(&csr.iter().map(String::as_str).collect::<Vec<_>>());
    std::fs::write(
        dir.join("srv.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "srv.ext",
        "-out",
        "srv.pem",
    ]);
    true
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_peer_gets_video_only_through_turns() {
    let dir = std::env::temp_dir().join(format!("snaprtcd-turns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    if !make_certificates(&dir.0) {
        return;
    }
    // The engine's TLS client trusts the system roots: here, the test CA only. Set before
    // any other thread of this binary's one test exists.
    std::env::set_var("SSL_CERT_FILE", dir.0.join("ca.pem"));
    let Some(coturn) = Coturn::start_tls(
        &["--lt-cred-mech", "--user=cam:pass"],
        &dir.0.join("srv.pem"),
        &dir.0.join("srv.key"),
    ) else {
        return;
    };
    let settings = EngineSettings {
        hosts: Vec::new(),
        ice: IceConfig {
            turn_servers: vec![TurnServer {
                url: format!("turns:localhost:{}", coturn.port),
                username: "cam".into(),
                credential: "pass".into(),
                ..TurnServer::default()
            }],
            ..IceConfig::default()
        },
        ..loopback_settings()
    };
    let (media, ports) = media::channel(ChannelLimits::default());
    let cancel = CancellationToken::new();
    spawn_fake_pipeline(ports, cancel.clone(), 20_000, None);
    let engine = Engine::bind(settings, media).await.unwrap();
    let rtc = engine.handle();
    tokio::spawn(engine.run(cancel.clone()));

    let mut watch = rtc.watch_extra_candidates();
    let ready = tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|c| c.iter().any(|c| c.kind() == str0m::CandidateKind::Relayed)),
    )
    .await;
    if ready.is_err() {
        let stats = rtc.stats().await.unwrap();
        panic!(
            "no relayed candidate over turns: within 10 s: {:?}",
            stats.ice
        );
    }

    let (mut peer, offer, pending) = Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(answer.sdp.contains("typ relay"), "{}", answer.sdp);
    assert!(!answer.sdp.contains("typ host"), "{}", answer.sdp);
    peer.accept(pending, &answer.sdp);
    peer.frames(5).await;
    let still = peer.first_still().await;
    assert_eq!(&still[..2], &[0xff, 0xd8]);

    let stats = rtc.stats().await.unwrap();
    let turn = stats.ice.iter().find(|s| s.kind == "turn").unwrap();
    assert!(turn.up, "{turn:?}");
    assert!(turn.bytes_relayed > 10_000, "video went through: {turn:?}");
    cancel.cancel();
}
