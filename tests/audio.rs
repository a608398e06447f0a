//! Sound end to end, in process: the real media pipeline (test pattern, openh264) and the real
//! audio thread (test tone, libopus) feed the WebRTC engine; a str0m peer that offers video and
//! audio (like a browser) decodes both. The tone arrives as Opus at 1 kHz (within 2 %, by DFT),
//! and the beep lines up with the test pattern's flash within 80 ms, both on the RTP timeline
//! (what a player schedules by) and by arrival. An offer without audio gets no audio.
//!
//! `vm_…` (ignored in a plain `cargo test`; `tests/vivid/run.sh` runs it in the VM with
//! SNAPRTCD_VIVID=1): real ALSA. `snd-aloop` is loaded, `aplay` plays a 1 kHz sine into the
//! loopback's playback side and the audio thread captures the other side; the tone is in the
//! Opus frames every receiver gets and reaches ffmpeg over RTSP and a str0m peer over WebRTC,
//! within 2 %. The card is then unplugged (its platform
//! device unbound, then `rmmod snd-aloop`): silence flows, nothing crashes; `modprobe` brings
//! it back and the tone resumes by itself.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

#[path = "support/rtc.rs"]
mod support;
#[path = "support/tone.rs"]
mod tone;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
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
use tone::{dominant_hz, tone_share};

const W: u32 = 320;
const H: u32 = 240;
/// Samples [`dominant_hz`]'s coarse search looks at: 0.2 s, enough where no beep sounds, and
/// cheap under software emulation in the VM.
const COARSE: usize = 9_600;

fn config() -> Config {
    let mut c = Config::default();
    c.camera.width = W;
    c.camera.height = H;
    c.camera.fps = 30;
    c.audio.source = AudioSourceKind::Test;
    c
}

struct Setup {
    cancel: CancellationToken,
    rtc: snaprtcd::rtc::RtcHandle,
    _pipeline: snaprtcd::media::PipelineGuard,
    audio: audio::AudioHandle,
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
        .with_audio(sound.clone());
    let rtc = engine.handle();
    tokio::spawn(engine.run(cancel.clone()));
    Setup {
        cancel,
        rtc,
        _pipeline: pipeline,
        audio: sound,
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
        support::Peer {
            rtc,
            socket,
            local,
            messages: Default::default(),
        },
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
    // Per audio packet (a 40 ms period): (RTP seconds, arrival, samples); per picture: (RTP seconds,
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
        sound.iter().map(|(_, _, pcm)| pcm.len()).sum::<usize>() >= 4 * 48_000
            && pictures.len() >= 90
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
    let hz = dominant_hz(&steady, COARSE);
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
        // A beep whose flash was never seen (video starts at a keyframe, so the first second's
        // flash may be missing) has no pair: its nearest flash is a second away.
        if by_arrival.abs() >= 0.5 {
            continue;
        }
        arrival.push(by_arrival * 1000.0);
        timeline.push((bt - ft) * 1000.0);
    }
    assert!(
        timeline.len() >= 2,
        "beeps paired with a flash: {}",
        timeline.len()
    );
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
async fn fec_is_coded_only_once_a_viewer_reports_audio_loss() {
    let s = setup().await;
    let (mut p, offer, pending) = peer(true).await;
    let answer = s.rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    let opus_pt: u8 = answer
        .sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=rtpmap:")?.strip_suffix(" opus/48000/2"))
        .and_then(|pt| pt.parse().ok())
        .expect("an Opus payload type in the answer");
    p.accept(pending, &answer.sdp);
    // A clean network: audio flows with no FEC planned (no redundancy, no cost for it). Two
    // seconds of 40 ms packets.
    let mut frames = 0;
    p.drive(Duration::from_secs(20), |_, e| {
        frames += usize::from(matches!(&e, Event::MediaData(d) if d.params.spec().codec == str0m::format::Codec::Opus));
        frames >= 50
    })
    .await;
    assert_eq!(s.audio.report().fec_loss_percent, 0, "no loss, no FEC");
    // Now every fourth audio packet is lost on the way: the peer's receiver reports say so,
    // and the encoder plans FEC for it (capped at 20 %).
    let mut audio_packets = 0u64;
    let is_audio = |d: &[u8]| d.len() > 12 && d[0] >> 6 == 2 && d[1] & 0x7f == opus_pt;
    p.drive_lossy(
        Duration::from_secs(20),
        |d| {
            if !is_audio(d) {
                return true;
            }
            audio_packets += 1;
            audio_packets % 4 != 0
        },
        |_, _| s.audio.report().fec_loss_percent > 0,
    )
    .await;
    let planned = s.audio.report().fec_loss_percent;
    assert!(
        (10..=20).contains(&planned),
        "FEC planned for {planned} % loss"
    );
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

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .is_ok_and(|s| s.success())
}

/// `aplay` playing an endless 1 kHz sine (48 kHz mono) into the loopback's playback side.
fn play_tone() -> Child {
    let mut child = Command::new("aplay")
        .args(["-q", "-D", "plughw:CARD=Loopback,DEV=0", "-f", "S16_LE"])
        .args(["-r", "48000", "-c", "1", "-t", "raw"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("aplay (alsa-utils) runs");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let block: Vec<u8> = (0..4800)
            .flat_map(|i| {
                let v = (f64::from(i) * std::f64::consts::TAU * 1000.0 / 48_000.0).sin();
                ((v * 12_000.0) as i16).to_le_bytes()
            })
            .collect();
        // aplay takes it at the card's pace; the pipe closes when aplay exits.
        while stdin.write_all(&block).is_ok() {}
    });
    child
}

async fn wait_audio_state(audio: &audio::AudioHandle, state: &str, limit: Duration) {
    let end = Instant::now() + limit;
    while audio.status().state != state {
        assert!(
            Instant::now() < end,
            "audio state {state:?} not reached: {:?}",
            audio.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 2 s of the RTSP audio track through ffmpeg, as 48 kHz mono f32.
fn rtsp_audio(addr: std::net::SocketAddr) -> Vec<f32> {
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-timeout",
            "30000000",
            "-rtsp_transport",
            "tcp",
        ])
        .args([
            "-i",
            &format!("rtsp://{addr}/stream"),
            "-map",
            "0:a",
            "-t",
            "2",
        ])
        .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// The next `seconds` of audio from the broadcast (the frames every receiver gets), decoded.
async fn receive(
    sub: &mut audio::AudioSubscriber,
    dec: &mut opus::Decoder,
    seconds: usize,
) -> Vec<f32> {
    let mut pcm = Vec::new();
    while pcm.len() < seconds * 48_000 {
        let f = tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .expect("audio frames keep coming")
            .expect("the audio thread runs");
        let mut out = vec![0f32; 5760];
        let n = dec.decode_float(&f.data, &mut out, false).unwrap();
        pcm.extend_from_slice(&out[..n]);
    }
    pcm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs snd-aloop in the VM: tests/vivid/run.sh"]
async fn vm_alsa_loopback_tone_reaches_rtsp_and_survives_unplugging() {
    assert!(
        std::env::var_os("SNAPRTCD_VIVID").is_some(),
        "run in the VM by tests/vivid/run.sh (SNAPRTCD_VIVID is not set)"
    );
    let t0 = Instant::now();
    let at = || format!("{:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        sh("modprobe snd-aloop pcm_substreams=1"),
        "modprobe snd-aloop"
    );
    let mut player = play_tone();

    let cancel = CancellationToken::new();
    let mut config = config();
    config.camera.width = 160;
    config.camera.height = 120;
    config.camera.fps = 10;
    config.audio.source = AudioSourceKind::Alsa;
    config.audio.device = "plughw:CARD=Loopback,DEV=1".into();
    let (media, _pipeline) =
        snaprtcd::media::pipeline::spawn_with(&config, SourceSpec::Testsrc, cancel.clone())
            .unwrap();
    let spec = AudioSpec::Alsa(config.audio.device.clone());
    let (sound, _guard) = audio::spawn(&config.audio, spec, media.epoch(), cancel.clone()).unwrap();
    let mut rtsp_settings = snaprtcd::rtsp::ServerSettings::from_config(
        &Config::default(),
        &snaprtcd::auth::Auth::Open,
    );
    rtsp_settings.listen = "127.0.0.1:0".parse().unwrap();
    let rtsp = snaprtcd::rtsp::RtspServer::bind(rtsp_settings, media.clone(), Some(sound.clone()))
        .unwrap();
    let rtsp_addr = rtsp.local_addr().unwrap();
    tokio::spawn(rtsp.run(cancel.clone()));
    wait_audio_state(&sound, "capturing", Duration::from_secs(30)).await;
    eprintln!("{}: capturing from {}", at(), sound.status().source);

    // The Opus frames every receiver (the RTC engine, each RTSP session) gets.
    let mut sub = sound.subscribe();
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let heard = receive(&mut sub, &mut dec, 1).await;
    let hz = dominant_hz(&heard[9_600..], COARSE);
    eprintln!(
        "{}: alsa loopback -> Opus frames: {hz} Hz, rms {:.3}",
        at(),
        rms(&heard[9_600..])
    );
    assert!((hz - 1000.0).abs() <= 20.0, "the broadcast carries {hz} Hz");

    let over_rtsp = tokio::task::spawn_blocking(move || rtsp_audio(rtsp_addr))
        .await
        .unwrap();
    assert!(
        over_rtsp.len() >= 72_000,
        "{} samples over RTSP",
        over_rtsp.len()
    );
    let hz = dominant_hz(&over_rtsp[24_000..], COARSE);
    eprintln!("{}: alsa loopback -> RTSP (ffmpeg): {hz} Hz", at());
    assert!((hz - 1000.0).abs() <= 20.0, "ffmpeg hears {hz} Hz");

    // And over WebRTC: a str0m peer (a browser's part) offers audio and decodes the track.
    let engine = Engine::bind(support::loopback_settings(), media.clone())
        .await
        .unwrap()
        .with_audio(sound.clone());
    let rtc = engine.handle();
    tokio::spawn(engine.run(cancel.clone()));
    let (mut p, offer, pending) = peer(true).await;
    let answer = rtc.answer(offer, ViewerKind::Whep).await.unwrap();
    assert!(answer.sdp.contains("opus/48000/2"), "{}", answer.sdp);
    p.accept(pending, &answer.sdp);
    let mut peer_dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut over_webrtc: Vec<f32> = Vec::new();
    p.drive(Duration::from_secs(120), |_, e| {
        if let Event::MediaData(d) = e {
            if d.params.spec().codec == str0m::format::Codec::Opus {
                let mut pcm = vec![0f32; 5760];
                let n = peer_dec.decode_float(&d.data, &mut pcm, false).unwrap();
                over_webrtc.extend_from_slice(&pcm[..n]);
            }
        }
        over_webrtc.len() >= 57_600
    })
    .await;
    let hz = dominant_hz(&over_webrtc[9_600..], COARSE);
    eprintln!("{}: alsa loopback -> WebRTC (str0m peer): {hz} Hz", at());
    assert!((hz - 1000.0).abs() <= 20.0, "the str0m peer hears {hz} Hz");
    drop(p);

    // Unplug: the card disconnects under the open stream (as a USB microphone's does).
    let mut sub = sound.subscribe();
    assert!(
        sh("echo snd_aloop.0 > /sys/bus/platform/drivers/snd_aloop/unbind"),
        "unbind"
    );
    wait_audio_state(&sound, "lost", Duration::from_secs(30)).await;
    let _ = player.kill();
    let _ = player.wait();
    let end = Instant::now() + Duration::from_secs(30);
    while !sh("rmmod snd_aloop 2>/dev/null") {
        assert!(Instant::now() < end, "rmmod snd_aloop: still in use");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let silence0 = sound
        .counters()
        .silence
        .load(std::sync::atomic::Ordering::Relaxed);
    let _ = receive(&mut sub, &mut dec, 1).await; // what was queued before the loss
    let quiet = receive(&mut sub, &mut dec, 1).await;
    let silence1 = sound
        .counters()
        .silence
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{}: unplugged: rms {:.4}, {} silence frames",
        at(),
        rms(&quiet),
        silence1 - silence0
    );
    assert!(rms(&quiet[9_600..]) < 0.01, "silence while unplugged");
    assert!(
        silence1 > silence0,
        "silence frames keep the stream running"
    );

    // Plugged back in: the tone resumes by itself.
    assert!(sh("modprobe snd-aloop pcm_substreams=1"), "modprobe again");
    let mut player = play_tone();
    wait_audio_state(&sound, "capturing", Duration::from_secs(30)).await;
    let mut sub = sound.subscribe();
    // The capture may reopen before aplay feeds the card again (a slow VM): wait for sound.
    let end = Instant::now() + Duration::from_secs(30);
    while rms(&receive(&mut sub, &mut dec, 1).await) < 0.05 {
        assert!(Instant::now() < end, "no sound 30 s after replugging");
    }
    let back = receive(&mut sub, &mut dec, 1).await;
    let hz = dominant_hz(&back, COARSE);
    eprintln!("{}: back: {hz} Hz, rms {:.3}", at(), rms(&back));
    assert!((hz - 1000.0).abs() <= 20.0, "after replugging: {hz} Hz");
    let _ = player.kill();
    let _ = player.wait();
    cancel.cancel();
}
