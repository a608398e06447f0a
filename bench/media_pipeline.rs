//! Media pipeline benchmark: sustained frames/s, CPU-seconds per 1000 frames and RSS of the
//! whole pipeline (testsrc -> capture thread -> media thread -> openh264 -> broadcast -> one
//! subscriber) at 640x480@30 and 1280x720@30, beside the floor: bare openh264 encoding of the
//! same test pictures (thread CPU time of the encode calls only).
//!
//! Run: `cargo bench --bench media_pipeline` (prints Markdown tables). Each case runs in its
//! own process so RSS figures do not mix; floor and pipeline of a case run at the same time so
//! machine load hits both alike. `SNAPRTCD_BENCH_FRAMES` sets the frames per case (default
//! 300), `SNAPRTCD_BENCH_ROUNDS` the rounds (default 3; the median round is reported).
//!
//! Both sides skip the first picture (encoder start-up and the first IDR) and are paced at
//! 30 fps. The floor counts only the CPU time of the encode calls (thread clock) on pictures
//! drawn just before, in the same thread. The pipeline counts the CPU time of the whole
//! process: drawing the test pattern, pacing, the capture and media threads, channel hand-offs,
//! the keyframe policy, status and counters, and one subscriber receiving every frame. Stills
//! are asked for after the measured window, so they are not in the CPU figure.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use snaprtcd::capture::testsrc::TestSource;
use snaprtcd::capture::SourceSpec;
use snaprtcd::config::{Config, SourceKind};
use snaprtcd::media::encoder::{OpenH264Encoder, SoftwareSettings};
use snaprtcd::media::keyframe::{KeyframePolicy, MIN_FORCED_GAP};
use snaprtcd::media::pipeline::spawn_with;
use tokio_util::sync::CancellationToken;

const CASES: [(u32, u32); 2] = [(640, 480), (1280, 720)];
const FPS: u32 = 30;
/// Stills asked per pipeline case (for the latency percentiles).
const STILLS: usize = 60;

fn frames() -> u64 {
    std::env::var("SNAPRTCD_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bare openh264 on the same pictures, fed at the same 30 fps as the pipeline (a tight loop
/// would keep the encoder's working set hot in cache, which a real-time stream never has):
/// only the encode calls are timed.
fn floor(w: u32, h: u32, n: u64) -> String {
    let config = Config::default();
    let src = TestSource::new(w, h, FPS).unwrap().unpaced();
    let mut enc = OpenH264Encoder::new(SoftwareSettings {
        bitrate_kbps: config.encoder.bitrate_kbps,
        fps: FPS,
        threads: config.encoder.threads,
    })
    .unwrap();
    let mut policy = KeyframePolicy::new(config.encoder.keyframe_interval, MIN_FORCED_GAP);
    let t0 = Instant::now();
    let mut cpu = Duration::ZERO;
    let mut out = 0u64;
    let mut busy = Duration::ZERO;
    let mut gen = Duration::ZERO;
    // Picture 0 (encoder start-up, first IDR) is not measured, as in the pipeline.
    for i in 0..=n {
        let at = Duration::from_secs(i) / FPS;
        let due = t0 + at;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let g0 = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
        let pic = src.picture(i, UNIX_EPOCH + at);
        gen += cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - g0;
        let started = Instant::now();
        policy.handle_timeout(t0 + at);
        let force = policy.poll_output().is_some();
        let before = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
        let r = enc.encode(&pic, at.as_millis() as u64, force).unwrap();
        cpu += cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - before;
        busy += started.elapsed();
        if let Some(r) = r {
            out += r.data.len() as u64;
            if r.keyframe {
                policy.handle_keyframe_sent(t0 + at);
            }
        }
        if i == 0 {
            (cpu, busy, gen, out) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
        }
    }
    let per_1000 = cpu.as_secs_f64() * 1000.0 / n as f64;
    format!(
        "floor {w}x{h} frames={n} cpu_s_per_1000={per_1000:.3} max_fps={:.1} rss_kib={} bytes={out} testsrc_cpu_s_per_1000={:.3}",
        n as f64 / busy.as_secs_f64(),
        rss_kib("VmHWM:"),
        gen.as_secs_f64() * 1000.0 / n as f64
    )
}

/// The real pipeline at 30 fps, one subscriber reading every frame.
fn pipeline(w: u32, h: u32, n: u64) -> String {
    let mut config = Config::default();
    config.camera.source = SourceKind::Testsrc;
    config.camera.width = w;
    config.camera.height = h;
    config.camera.fps = FPS;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cancel = CancellationToken::new();
        let (media, guard) = spawn_with(&config, SourceSpec::Testsrc, cancel.clone()).unwrap();
        let mut sub = media.subscribe();
        // Warm up: the first IDR.
        sub.recv().await.unwrap();
        let threads0 = thread_cpu();
        let cpu0 = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID);
        let wall0 = Instant::now();
        let mut bytes = 0u64;
        for _ in 0..n {
            bytes += sub.recv().await.unwrap().data.len() as u64;
        }
        let wall = wall0.elapsed();
        let cpu = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu0;
        eprintln!(
            "{w}x{h} thread CPU s / 1000 frames: {}",
            thread_delta(&threads0, &thread_cpu(), n)
        );
        let counters = media.counters();
        let dropped = counters.frames_dropped.load(std::sync::atomic::Ordering::Relaxed);
        let encode_ms = counters.encode_time_micros.load(std::sync::atomic::Ordering::Relaxed)
            as f64
            / 1000.0
            / counters.frames_encoded.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64;
        let skipped = sub.skipped();
        let rss = rss_kib("VmHWM:");
        drop(sub);
        // Stills while the camera streams: the JPEG is made from the latest picture on
        // request. Pseudo-random gaps of 20-60 ms, so requests land at every phase of the
        // 33 ms frame cycle (a fixed gap can lock onto it).
        let mut stills = Vec::new();
        let mut still_bytes = 0;
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..STILLS {
            let t = Instant::now();
            still_bytes = media.still(usize::MAX).await.unwrap().len();
            stills.push(t.elapsed());
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            tokio::time::sleep(Duration::from_micros(20_000 + u64::from(x % 40_000))).await;
        }
        stills.sort();
        cancel.cancel();
        guard.join();
        format!(
            "pipeline {w}x{h} frames={n} fps={:.2} cpu_s_per_1000={:.3} rss_kib={rss} dropped={dropped} bytes={bytes} skipped={skipped} encode_wall_ms={encode_ms:.2} still_p50_ms={:.1} still_p95_ms={:.1} still_max_ms={:.1} still_bytes={still_bytes}",
            n as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1000.0 / n as f64,
            percentile_ms(&stills, 50),
            percentile_ms(&stills, 95),
            percentile_ms(&stills, 100),
        )
    })
}

/// CPU time so far of each thread of this process, by name (from schedstat: nanoseconds).
fn thread_cpu() -> Vec<(String, Duration)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let ns: u64 = std::fs::read_to_string(t.path().join("schedstat"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.push((name.trim().to_string(), Duration::from_nanos(ns)));
    }
    out
}

/// Per-thread CPU between two [`thread_cpu`] readings, in ms per 1000 frames.
fn thread_delta(before: &[(String, Duration)], after: &[(String, Duration)], n: u64) -> String {
    after
        .iter()
        .map(|(name, t)| {
            let t0 = before
                .iter()
                .find(|(b, _)| b == name)
                .map_or(Duration::ZERO, |(_, d)| *d);
            format!(
                "{name}:{:.3}",
                t.saturating_sub(t0).as_secs_f64() * 1000.0 / n as f64
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Percentile `p` (0..=100) of sorted durations, in ms.
fn percentile_ms(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or("?")
        .to_string()
}

fn main() {
    if let Ok(case) = std::env::var("SNAPRTCD_BENCH_CASE") {
        let parts: Vec<&str> = case.split(':').collect();
        let (w, h) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        let line = match parts[0] {
            "floor" => floor(w, h, frames()),
            _ => pipeline(w, h, frames()),
        };
        println!("{line}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    // Floor and pipeline run at the same time in two processes, so the load of a shared
    // machine falls on both alike; the round with the median ratio is reported.
    let run_pair = |w: u32, h: u32| -> (String, String) {
        let spawn = |kind: &str| {
            Command::new(&exe)
                .env("SNAPRTCD_BENCH_CASE", format!("{kind}:{w}:{h}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (f, p) = (spawn("floor"), spawn("pipeline"));
        let text = |c: std::process::Child| {
            let out = c.wait_with_output().unwrap();
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            eprintln!("{text}");
            text
        };
        (text(f), text(p))
    };
    let rounds = std::env::var("SNAPRTCD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize)
        .max(1);
    let cpu = |l: &str| {
        field(l, "cpu_s_per_1000")
            .parse::<f64>()
            .unwrap_or(f64::NAN)
    };
    println!(
        "| case | frames/s | CPU s / 1000 frames | peak RSS (MiB) | vs floor | ratio per round |"
    );
    println!("|---|---|---|---|---|---|");
    let mut still_rows = Vec::new();
    for (w, h) in CASES {
        let mut pairs: Vec<(String, String)> = (0..rounds).map(|_| run_pair(w, h)).collect();
        let ratio = |(f, p): &(String, String)| cpu(p) / cpu(f);
        let all = pairs
            .iter()
            .map(|pair| format!("{:.2}", ratio(pair)))
            .collect::<Vec<_>>()
            .join(", ");
        pairs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
        let (f, p) = &pairs[pairs.len() / 2];
        let mib = |l: &str| field(l, "rss_kib").parse::<f64>().unwrap_or(0.0) / 1024.0;
        println!(
            "| bare openh264 {w}x{h}@{FPS} | {} (max) | {:.3} | {:.1} | 1.00x | |",
            field(f, "max_fps"),
            cpu(f),
            mib(f)
        );
        println!(
            "| pipeline {w}x{h}@{FPS} | {} | {:.3} | {:.1} | {:.2}x | {all} |",
            field(p, "fps"),
            cpu(p),
            mib(p),
            cpu(p) / cpu(f)
        );
        still_rows.push(format!(
            "| {w}x{h} | {} | {} | {} | {} |",
            field(p, "still_p50_ms"),
            field(p, "still_p95_ms"),
            field(p, "still_max_ms"),
            field(p, "still_bytes"),
        ));
    }
    println!();
    println!("| still (`/snapshot.jpg` path, {STILLS} requests) | p50 ms | p95 ms | max ms | JPEG bytes |");
    println!("|---|---|---|---|---|");
    for row in still_rows {
        println!("{row}");
    }
}
