//! The systemd watchdog is fed only while the real work loops go round: the media pipeline
//! (testsrc) and the RTC engine each advance their probe, pings flow; stop one loop and the
//! pings stop with that loop named.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use snaprtcd::config::{Config, SourceKind};
use snaprtcd::rtc::candidates::HostAddr;
use snaprtcd::rtc::{Engine, EngineSettings};
use snaprtcd::systemd::{Watchdog, WatchdogEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The engine goes round at least once a second when idle, so 4 s is the shortest period
/// (ticks every 2 s) that a healthy daemon always meets.
const PERIOD: Duration = Duration::from_secs(4);

fn testsrc_config() -> Config {
    let mut c = Config::default();
    c.camera.source = SourceKind::Testsrc;
    c.camera.width = 160;
    c.camera.height = 120;
    c.camera.fps = 10;
    c
}

async fn next(events: &mut mpsc::UnboundedReceiver<WatchdogEvent>) -> WatchdogEvent {
    tokio::time::timeout(PERIOD * 2, events.recv())
        .await
        .expect("a watchdog event within two periods")
        .expect("watchdog running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_only_while_the_media_and_rtc_loops_go_round() {
    let config = testsrc_config();
    let media_cancel = CancellationToken::new();
    let (media, pipeline) =
        snaprtcd::media::spawn(&config, media_cancel.clone()).expect("pipeline starts");
    let settings = EngineSettings {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        hosts: vec![HostAddr {
            ip: Ipv4Addr::LOCALHOST,
            netmask: Ipv4Addr::new(255, 0, 0, 0),
        }],
        max_viewers: 4,
        snapshot_on_connect: false,
        silence_timeout: Duration::from_secs(15),
        sdp_limits: Default::default(),
        ice: Default::default(),
    };

    let mut watchdog = Watchdog::new();
    let counters = media.counters().clone();
    watchdog.register_age("media", move || counters.since_progress());
    let engine = Engine::bind(settings, media.clone())
        .await
        .expect("bind")
        .with_heartbeat(watchdog.register("rtc"));
    // The engine serves while a handle exists.
    let _handle = engine.handle();
    let rtc_cancel = CancellationToken::new();
    let rtc = tokio::spawn(engine.run(rtc_cancel.clone()));

    let (tx, mut events) = mpsc::unbounded_channel();
    let dog_cancel = CancellationToken::new();
    let dog = tokio::spawn(watchdog.run_with(PERIOD, dog_cancel.clone(), move |e| {
        let _ = tx.send(e);
    }));

    // Both loops idle but alive (no viewer): two pings in a row.
    for _ in 0..2 {
        assert_eq!(next(&mut events).await, WatchdogEvent::Ping);
    }

    // The RTC loop stops going round: no more pings, and it is named.
    rtc_cancel.cancel();
    rtc.await.expect("engine task");
    let mut seen = Vec::new();
    loop {
        let e = next(&mut events).await;
        seen.push(e.clone());
        if e == WatchdogEvent::Stalled("rtc") {
            break;
        }
        assert!(seen.len() <= 2, "rtc never reported stalled: {seen:?}");
    }
    // The media loop stops too: it is named, and still no ping.
    media_cancel.cancel();
    tokio::task::spawn_blocking(move || pipeline.join())
        .await
        .expect("join");
    assert_eq!(next(&mut events).await, WatchdogEvent::Stalled("media"));
    let quiet = tokio::time::timeout(PERIOD, events.recv()).await;
    assert!(quiet.is_err(), "no ping while both are stalled: {quiet:?}");
    dog_cancel.cancel();
    dog.await.expect("watchdog task");
}
