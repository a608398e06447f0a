//! Junk at the WebRTC UDP port: 100 000 datagrams shaped like DTLS and RTP (they pass str0m's
//! demultiplexer, so each one is routed) from 2 000 source addresses and as many ports, while a
//! str0m peer plays video. The junk must cost no route lookups (the engine asks `accepts`
//! first), must not evict the viewer's cached local address, and the viewer keeps its frame
//! rate. The engine runs on its own thread so its CPU time for the flood can be read from
//! `/proc/self/task/<tid>/stat` and printed (not asserted: the machine is shared).
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

#[path = "support/rtc.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snaprtcd::media::{self, ChannelLimits};
use snaprtcd::rtc::{Engine, EngineSettings, RtcHandle, RtcStats, ViewerKind};
use str0m::Event;
use support::{spawn_fake_pipeline, Peer};
use tokio_util::sync::CancellationToken;

const JUNK: usize = 100_000;
/// More than the local-address cache holds (1024), each a distinct 127.1.x.y address.
const SOURCE_BATCHES: usize = 20;
const SOURCES_PER_BATCH: usize = 100;

/// The calling thread's id (Linux `/proc/thread-self`).
fn thread_id() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = link.file_name().and_then(|n| n.to_str()).expect("tid");
    tid.parse().expect("numeric tid")
}

/// utime + stime of thread `tid` of this process, in milliseconds.
fn thread_cpu_ms(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_comm` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 1000 / 100 // USER_HZ is 100 on Linux
}

/// Start the engine on a thread of its own; returns its handle, UDP address and thread id.
async fn start_engine_thread(
    media: media::MediaHandle,
    cancel: CancellationToken,
) -> (RtcHandle, SocketAddr, u32, std::thread::JoinHandle<()>) {
    let settings = EngineSettings {
        snapshot_on_connect: false,
        ..support::loopback_settings()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("rtc-engine".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let engine = Engine::bind(settings, media).await.unwrap();
                let addr = engine.local_addr().unwrap();
                let _ = tx.send((engine.handle(), addr, thread_id()));
                engine.run(cancel).await;
            });
        })
        .unwrap();
    let (rtc, addr, tid) = rx.await.unwrap();
    (rtc, addr, tid, thread)
}

/// Send the junk: batches of fresh sockets on distinct 127.1.x.y addresses, paced over about
/// two seconds so the viewer's frame rate can be measured during it. Returns datagrams sent.
fn flood(to: SocketAddr) -> usize {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let per_socket = JUNK / (SOURCE_BATCHES * SOURCES_PER_BATCH);
    let mut sent = 0;
    for b in 0..SOURCE_BATCHES {
        let sockets: Vec<UdpSocket> = (0..SOURCES_PER_BATCH)
            .map(|k| UdpSocket::bind((Ipv4Addr::new(127, 1, b as u8, k as u8 + 1), 0)).unwrap())
            .collect();
        for _ in 0..per_socket {
            for s in &sockets {
                let mut d = [0u8; 120];
                for chunk in d.chunks_mut(8) {
                    chunk.copy_from_slice(&next().to_le_bytes()[..chunk.len()]);
                }
                // Half DTLS records (content type 22), half RTP (version 2, PT 96).
                if next() % 2 == 0 {
                    d[..3].copy_from_slice(&[22, 0xfe, 0xfd]);
                } else {
                    d[..2].copy_from_slice(&[0x80, 96]);
                }
                if s.send_to(&d, to).is_ok() {
                    sent += 1;
                }
            }
        }
        // Pacing, not synchronisation: spreads the flood over ~2 s of video.
        std::thread::sleep(Duration::from_millis(100));
    }
    sent
}

/// Frames the peer receives until `done` is set (checked at each event), and for how long.
async fn count_frames_until(peer: &mut Peer, done: &AtomicBool) -> (usize, Duration) {
    let start = Instant::now();
    let mut frames = 0;
    peer.drive(Duration::from_secs(60), |_, e| {
        if matches!(e, Event::MediaData(_)) {
            frames += 1;
        }
        done.load(Ordering::Acquire)
    })
    .await;
    (frames, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_from_many_sources_costs_no_lookups_and_the_viewer_keeps_its_frame_rate() {
    let (media, ports) = media::channel(ChannelLimits::default());
    let cancel = CancellationToken::new();
    spawn_fake_pipeline(ports, cancel.clone(), 1000, None);
    let (rtc, addr, tid, engine) = start_engine_thread(media, cancel.clone()).await;

    let (mut peer, offer, pending) = Peer::new().await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    peer.accept(pending, &answer.sdp);
    peer.frames(10).await;

    // Baseline: two seconds of video without junk.
    let stop = Arc::new(AtomicBool::new(false));
    let (cpu0, before) = (thread_cpu_ms(tid), rtc.stats().await.unwrap());
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.store(true, Ordering::Release);
        })
    };
    let (base_frames, base_time) = count_frames_until(&mut peer, &stop).await;
    timer.await.unwrap();
    let base_cpu = thread_cpu_ms(tid) - cpu0;

    // The flood, with the same peer playing.
    stop.store(false, Ordering::Release);
    let (cpu1, mid) = (thread_cpu_ms(tid), rtc.stats().await.unwrap());
    let flooder = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let sent = flood(addr);
            stop.store(true, Ordering::Release);
            sent
        })
    };
    let (flood_frames, flood_time) = count_frames_until(&mut peer, &stop).await;
    let sent = flooder.await.unwrap();
    let after: RtcStats = rtc.stats().await.unwrap();
    let flood_cpu = thread_cpu_ms(tid) - cpu1;

    let junk_in = after.datagrams_unrouted - mid.datagrams_unrouted;
    let base_fps = base_frames as f64 / base_time.as_secs_f64();
    let flood_fps = flood_frames as f64 / flood_time.as_secs_f64();
    eprintln!(
        "baseline: {base_frames} frames in {base_time:?} ({base_fps:.1}/s), engine CPU {base_cpu} ms\n\
         flood: {sent} junk datagrams sent, {junk_in} reached the engine, {flood_frames} frames \
         in {flood_time:?} ({flood_fps:.1}/s), engine CPU {flood_cpu} ms \
         ({:.2} µs per junk datagram above baseline)",
        (flood_cpu as f64 - base_cpu as f64 * flood_time.as_secs_f64() / base_time.as_secs_f64())
            .max(0.0)
            * 1000.0
            / junk_in.max(1) as f64
    );

    assert_eq!(sent, JUNK);
    assert!(
        junk_in >= (JUNK / 10) as u64,
        "only {junk_in} junk datagrams reached the engine: the test did not test"
    );
    assert_eq!(
        after.local_addr_lookups, before.local_addr_lookups,
        "junk made route lookups (or pushed the viewer's cached address out)"
    );
    assert_eq!((after.viewers, after.connected), (1, 1));
    assert!(
        flood_fps >= 0.8 * base_fps,
        "frame rate fell from {base_fps:.1}/s to {flood_fps:.1}/s during the flood"
    );

    cancel.cancel();
    tokio::task::spawn_blocking(move || engine.join().unwrap())
        .await
        .unwrap();
}
