//! Sound end to end, in process: the real media pipeline (test pattern, openh264) and the real
//! audio thread (test tone, libopus) feed the WebRTC engine; a str0m peer that offers video and
//! audio (like a browser) decodes both. The tone arrives as Opus at 1 kHz (within 2 %, by DFT),
//! and the beep lines up with the test pattern's flash within 80 ms, both on the RTP timeline
//! (what a player schedules by) and by arrival. An offer without audio gets no audio.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

#[path = "support/rtc.rs"]
mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use openh264::formats::YUVSource;
use snaprtcd::audio::{self, AudioSpec};
use snaprtcd::capture::testsrc::flash_rect;
use snaprtcd::capture::SourceSpec;
use snaprtcd::config::{AudioSourceKind, Config};
use snaprtcd::rtc::{Engine, ViewerKind};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Event, Rtc};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const W: u32 = 320;
const H: u32 = 240;

fn config() -> Config {
    let mut c = Config::default();
    c.camera.width = W;
    c.camera.height = H;
    c.camera.fps = 30;
    c.audio.source = AudioSourceKind::Test;
    c
}

/// The strongest frequency in `x` (48 kHz) between 500 and 3000 Hz, by a DFT 1 Hz apart
/// around the coarse peak.
fn dominant_hz(x: &[f32]) -> f64 {
    let power = |f: f64| {
        let w = std::f64::consts::TAU * f / 48_000.0;
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &v) in x.iter().enumerate() {
            re += f64::from(v) * (w * i as f64).cos();
            im += f64::from(v) * (w * i as f64).sin();
        }
        re * re + im * im
    };
    let coarse = (100..600)
        .map(|k| f64::from(k) * 5.0)
        .max_by(|a, b| power(*a).total_cmp(&power(*b)))
        .unwrap();
    ((coarse - 10.0) as i64..=(coarse + 10.0) as i64)
        .map(|f| f as f64)
        .max_by(|a, b| power(*a).total_cmp(&power(*b)))
        .unwrap()
}

/// Relative power of `hz` in a block (Goertzel).
fn tone_share(x: &[f32], hz: f64) -> f64 {
    let w = std::f64::consts::TAU * hz / 48_000.0;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = f64::from(v) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let p = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let total: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    if total == 0.0 {
        0.0
    } else {
        p / (total * x.len() as f64 / 2.0)
    }
}

struct Setup {
    cancel: CancellationToken,
    rtc: snaprtcd::rtc::RtcHandle,
    _pipeline: snaprtcd::media::PipelineGuard,
    _audio: audio::AudioGuard,
}

async fn setup() -> Setup {
    let cancel = CancellationToken::new();
    let config = config();
    let (media, pipeline) =
        snaprtcd::media::pipeline::spawn_with(&config, SourceSpec::Testsrc, cancel.clone())
            .unwrap();
    let (sound, guard) = audio::spawn(
        &config.audio,
        AudioSpec::Test,
        media.epoch(),
        cancel.clone(),
    )
    .unwrap();
    let engine = Engine::bind(support::loopback_settings(), media.clone())
        .await
        .unwrap()
        .with_audio(sound);
    let rtc = engine.handle();
    tokio::spawn(engine.run(cancel.clone()));
    Setup {
        cancel,
        rtc,
        _pipeline: pipeline,
        _audio: guard,
    }
}

async fn peer(audio: bool) -> (support::Peer, String, str0m::change::SdpPendingOffer) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let local = socket.local_addr().unwrap();
    let mut rtc = Rtc::builder()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    if audio {
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    }
    let (offer, pending) = api.apply().unwrap();
    (
        support::Peer { rtc, socket, local },
        offer.to_sdp_string(),
        pending,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_str0m_peer_gets_the_tone_as_opus_and_the_beep_matches_the_flash() {
    let s = setup().await;
    let (mut p, offer, pending) = peer(true).await;
    let answer = s.rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(answer.sdp.contains("opus/48000/2"), "{}", answer.sdp);
    p.accept(pending, &answer.sdp);

    let mut opus = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut h264 = openh264::decoder::Decoder::new().unwrap();
    let (fx, fy, side) = flash_rect(W, H);
    // Per 20 ms audio frame: (RTP seconds, arrival, samples); per picture: (RTP seconds,
    // arrival, flash on).
    let mut sound: Vec<(f64, Instant, Vec<f32>)> = Vec::new();
    let mut pictures: Vec<(f64, Instant, bool)> = Vec::new();
    p.drive(Duration::from_secs(30), |_, e| {
        if let Event::MediaData(d) = e {
            let t = d.time.numer() as f64 / d.time.frequency().get() as f64;
            if d.params.spec().codec == str0m::format::Codec::Opus {
                let mut pcm = vec![0f32; 5760];
                let n = opus.decode_float(&d.data, &mut pcm, false).unwrap();
                pcm.truncate(n);
                sound.push((t, d.network_time, pcm));
            } else if let Ok(Some(yuv)) = h264.decode(&d.data) {
                let (ys, _, _) = yuv.strides();
                let luma = yuv.y()[(fy + side / 2) * ys + fx + side / 2];
                pictures.push((t, d.network_time, luma > 128));
            }
        }
        // Four seconds of both: at least three beeps and flashes.
        sound.len() >= 200 && pictures.len() >= 90
    })
    .await;

    // The steady tone: 1 kHz within 2 %, over frames away from the beeps.
    let steady: Vec<f32> = sound
        .iter()
        .filter(|(_, _, pcm)| tone_share(pcm, 1000.0) > 0.5)
        .flat_map(|(_, _, pcm)| pcm.iter().copied())
        .take(48_000)
        .collect();
    assert!(steady.len() >= 24_000, "half a second of steady tone");
    let hz = dominant_hz(&steady);
    assert!((hz - 1000.0).abs() <= 20.0, "tone at {hz} Hz");
    eprintln!("tone: {hz} Hz");

    // Onsets: the first beep frame after a tone frame, the first flash after a dark picture.
    let beeps: Vec<(f64, Instant)> = sound
        .windows(2)
        .filter(|w| tone_share(&w[0].2, 2000.0) < 0.5 && tone_share(&w[1].2, 2000.0) > 0.5)
        .map(|w| {
            // Where in the frame the beep starts: the first 2.5 ms slice that is mostly 2 kHz.
            let pcm = &w[1].2;
            let k = pcm
                .chunks(120)
                .position(|c| tone_share(c, 2000.0) > tone_share(c, 1000.0))
                .unwrap_or(0);
            let into = k as f64 * 120.0 / 48_000.0;
            (w[1].0 + into, w[1].1)
        })
        .collect();
    let flashes: Vec<(f64, Instant)> = pictures
        .windows(2)
        .filter(|w| !w[0].2 && w[1].2)
        .map(|w| (w[1].0, w[1].1))
        .collect();
    assert!(beeps.len() >= 2, "beeps heard: {}", beeps.len());
    assert!(flashes.len() >= 2, "flashes seen: {}", flashes.len());
    // Pair each beep with the flash nearest in arrival (the same wall-clock second).
    let mut timeline = Vec::new();
    let mut arrival = Vec::new();
    for (bt, ba) in &beeps {
        let (ft, fa) = flashes
            .iter()
            .min_by_key(|(_, fa)| fa.max(ba).duration_since(*fa.min(ba)))
            .unwrap();
        let by_arrival =
            ba.duration_since(*fa).as_secs_f64() - fa.duration_since(*ba).as_secs_f64();
        arrival.push(by_arrival * 1000.0);
        timeline.push((bt - ft) * 1000.0);
    }
    eprintln!("A/V offset (audio minus video), RTP timeline: {timeline:.1?} ms; arrival: {arrival:.1?} ms");
    // Both tracks' RTP times count from the same epoch at their own rates: the flash picture's
    // and the beep's capture instants, within a frame of each other.
    let spread = timeline.iter().cloned().fold(f64::NAN, f64::max)
        - timeline.iter().cloned().fold(f64::NAN, f64::min);
    assert!(spread < 80.0, "the offset is steady: {timeline:?}");
    for (t, a) in timeline.iter().zip(&arrival) {
        assert!(t.abs() <= 80.0, "RTP timeline offset {t:.1} ms");
        assert!(a.abs() <= 80.0, "arrival offset {a:.1} ms");
    }
    s.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_without_audio_gets_no_audio_m_line_and_video_flows() {
    let s = setup().await;
    let (mut p, offer, pending) = peer(false).await;
    let answer = s.rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(!answer.sdp.contains("m=audio"), "{}", answer.sdp);
    assert!(!answer.sdp.contains("opus"), "{}", answer.sdp);
    p.accept(pending, &answer.sdp);
    p.frames(10).await;
    let stats = s.rtc.stats().await.unwrap();
    assert_eq!(stats.audio_frames_sent, 0);
    assert!(stats.frames_sent >= 10);
    s.cancel.cancel();
}
