//! testsrc -> openh264 -> a .h264 file that Debian's ffprobe reads back: frame count, size,
//! profile "Constrained Baseline", an IDR at every keyframe interval (and nowhere else).
//!
//! Needs `ffprobe` (Debian package `ffmpeg`): under CI=true its absence fails the test; elsewhere
//! the test is skipped with a message.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

mod common;

use std::process::Command;
use std::time::Duration;

use snaprtcd::config::EncoderConfig;
use snaprtcd::media::pipeline::encode_test_pattern;

#[test]
fn test_pattern_encodes_to_constrained_baseline_with_periodic_idrs() {
    if !common::require_tool("ffprobe", "ffmpeg") {
        return;
    }
    let (w, h, fps, frames) = (640, 480, 30, 95);
    let encoder = EncoderConfig {
        keyframe_interval: Duration::from_secs(1),
        ..EncoderConfig::default()
    };
    let aus = encode_test_pattern(w, h, fps, frames, &encoder).unwrap();
    assert_eq!(aus.len() as u64, frames);
    let dir = std::env::temp_dir().join(format!("snaprtcd-h264-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("testsrc.h264");
    let bytes: Vec<u8> = aus.iter().flat_map(|f| f.data.iter().copied()).collect();
    std::fs::write(&file, &bytes).unwrap();

    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg("stream=profile,width,height,codec_name:frame=key_frame,pict_type")
        .args(["-of", "json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let stream = &json["streams"][0];
    assert_eq!(stream["codec_name"], "h264");
    assert_eq!(stream["profile"], "Constrained Baseline");
    assert_eq!(stream["width"], w);
    assert_eq!(stream["height"], h);
    let frames_json = json["frames"].as_array().unwrap();
    assert_eq!(
        frames_json.len() as u64,
        frames,
        "every access unit decodes"
    );
    let keys: Vec<usize> = frames_json
        .iter()
        .enumerate()
        .filter(|(_, f)| f["key_frame"] == 1)
        .map(|(i, _)| i)
        .collect();
    // 1 s at 30 fps: pictures 0, 30, 60, 90 are IDRs, and only those.
    assert_eq!(keys, vec![0, 30, 60, 90]);
    for (i, f) in aus.iter().enumerate() {
        assert_eq!(f.keyframe, keys.contains(&i), "frame {i} keyframe flag");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
