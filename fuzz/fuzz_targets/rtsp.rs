//! The RTSP request path: a `snaprtcd::rtsp::session::Session` fed the input as a client's
//! bytes, cut into reads where the first byte says, with keyframes, UDP sockets and time
//! passing in between, as the server's connection task drives it.
//!
//! The input is: one byte of read size (1-64 bytes times 16), then the client's bytes.
//! Invariants, besides not panicking: every answer is an `RTSP/1.0` status line; nothing comes
//! out after `Close`; what the session buffers stays within `max_request_bytes` plus a read.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use snaprtcd::audio::AudioFrame;
use snaprtcd::media::EncodedFrame;
use snaprtcd::rtsp::session::{AudioTrack, Output, Session, SessionSettings};

const SPS_PPS_IDR: &[u8] = &[
    0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x3d, 0xb0, 0x11, 0x00, 0x00, 0x03, 0x00,
    0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
    0, 0, 0, 1, 0x65, 0x88, 0x84, 0x21,
];

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let read = 16 * (usize::from(chunk % 64) + 1);
    let start = Instant::now();
    let max_request_bytes = 2048;
    let settings = SessionSettings {
        path: "/stream".into(),
        token: (chunk & 0x80 != 0).then(|| "tok".to_owned()),
        nonce: "nonce".into(),
        session_id: "5e55".into(),
        ssrc: 1,
        first_seq: 65530,
        rtp_time_base: u32::MAX - 100,
        session_timeout: Duration::from_secs(60),
        describe_timeout: Duration::from_secs(5),
        max_request_bytes,
        server_ip: "127.0.0.1".parse().unwrap(),
        peer: "127.0.0.1:40000".parse().unwrap(),
        wall_clock: Duration::from_secs(1_700_000_000),
        start,
        // Every other input with an audio track (a second SETUP, interleaved 2/3).
        audio: (chunk & 0x40 != 0).then_some(AudioTrack {
            ssrc: 2,
            first_seq: 65535,
            rtp_time_base: u32::MAX - 10,
            channels: 2,
        }),
    };
    let mut s = Session::new(settings, start);
    let mut now = start;
    let mut closed = false;
    for (i, piece) in input.chunks(read).enumerate() {
        now += Duration::from_millis(40);
        s.handle_input(piece, now);
        assert!(
            s.buffered() <= max_request_bytes + read,
            "{} buffered",
            s.buffered()
        );
        let frame = EncodedFrame {
            data: std::sync::Arc::from(SPS_PPS_IDR),
            keyframe: i % 3 == 0,
            timestamp: now - start,
        };
        s.handle_frame(&frame, now);
        let sound = AudioFrame {
            data: Bytes::from_static(&[0xfc, 0xff, 0xfe]),
            timestamp: now - start,
            samples: 960,
        };
        s.handle_audio(&sound, now);
        if i % 5 == 4 {
            s.handle_timeout(now + Duration::from_secs(6));
        }
        while let Some(out) = s.poll_output() {
            assert!(!closed, "output after Close: {out:?}");
            match out {
                Output::Send(b) => {
                    assert!(
                        b.starts_with(b"RTSP/1.0 ") || b.first() == Some(&b'$'),
                        "{:?}",
                        String::from_utf8_lossy(&b[..b.len().min(64)])
                    );
                }
                Output::OpenUdp { .. } => {
                    s.handle_udp_opened((i % 2 == 0).then_some((6000, 6001)), now)
                }
                Output::Close => closed = true,
                Output::SendUdp { .. }
                | Output::Subscribe
                | Output::Unsubscribe
                | Output::SubscribeAudio
                | Output::RequestKeyframe => {}
            }
        }
        assert_eq!(closed, s.is_closed());
    }
});
