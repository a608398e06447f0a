//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of what the daemon is doing.
//!
//! Pure rendering from snapshots the owners hand out (engine stats, pipeline counters, camera
//! status, hub stats); no registry, no globals.

use std::fmt::Write;

use crate::media::{CameraState, KeyframeCause, MediaCounters, MediaStatus, ENCODE_BUCKETS_MS};
use crate::rtc::RtcStats;
use crate::signaling::ws::SignalingStats;

/// Everything one scrape shows.
pub struct Snapshot<'a> {
    pub rtc: &'a RtcStats,
    pub media: &'a MediaCounters,
    pub camera: &'a MediaStatus,
    pub signaling: &'a SignalingStats,
}

/// Render the Prometheus text body.
pub fn render(s: &Snapshot<'_>) -> String {
    let get = MediaCounters::get;
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];

    metric(
        "snaprtcd_viewers",
        "gauge",
        "WebRTC viewers now (WHEP and SnapRTC).",
        &one(s.rtc.viewers as f64),
    );
    metric(
        "snaprtcd_viewers_connected",
        "gauge",
        "Viewers with ICE and DTLS up.",
        &one(s.rtc.connected as f64),
    );
    metric(
        "snaprtcd_viewers_timed_out_total",
        "counter",
        "Viewers removed because ICE failed or they fell silent.",
        &one(s.rtc.timed_out as f64),
    );
    metric(
        "snaprtcd_rtc_built_total",
        "counter",
        "WebRTC peer connections built (each a DTLS key and certificate; never over max_viewers at once).",
        &one(s.rtc.rtc_built as f64),
    );
    metric(
        "snaprtcd_udp_datagrams_unrouted_total",
        "counter",
        "UDP datagrams no viewer accepted (junk, strays).",
        &one(s.rtc.datagrams_unrouted as f64),
    );
    metric(
        "snaprtcd_local_addr_lookups_total",
        "counter",
        "Route lookups made to learn which local address a viewer sent to.",
        &one(s.rtc.local_addr_lookups as f64),
    );
    metric(
        "snaprtcd_sessions",
        "gauge",
        "SnapRTC hub sessions now.",
        &one(s.signaling.sessions as f64),
    );
    metric(
        "snaprtcd_hub_connections",
        "gauge",
        "SnapRTC hub connections now.",
        &one(s.signaling.connections as f64),
    );
    metric(
        "snaprtcd_frames_captured_total",
        "counter",
        "Frames the camera delivered.",
        &one(get(&s.media.frames_captured) as f64),
    );
    metric(
        "snaprtcd_frames_dropped_total",
        "counter",
        "Frames dropped before the encoder because it was busy.",
        &one(get(&s.media.frames_dropped) as f64),
    );
    metric(
        "snaprtcd_frames_encoded_total",
        "counter",
        "Access units published to viewers (encoded once for all).",
        &one(get(&s.media.frames_encoded) as f64),
    );
    metric(
        "snaprtcd_frames_sent_total",
        "counter",
        "Frames written to viewers (one per frame per viewer).",
        &one(s.rtc.frames_sent as f64),
    );
    metric(
        "snaprtcd_bytes_out_total",
        "counter",
        "WebRTC UDP bytes sent.",
        &one(s.rtc.bytes_out as f64),
    );
    metric(
        "snaprtcd_stills_sent_total",
        "counter",
        "JPEG stills sent over data channels.",
        &one(s.rtc.stills_sent as f64),
    );
    let kf: Vec<_> = KeyframeCause::ALL
        .iter()
        .map(|c| {
            (
                format!("{{cause=\"{}\"}}", c.as_str()),
                get(&s.media.keyframes[c.index()]) as f64,
            )
        })
        .collect();
    metric(
        "snaprtcd_keyframes_total",
        "counter",
        "IDR frames sent, by cause.",
        &kf,
    );
    metric(
        "snaprtcd_camera_losses_total",
        "counter",
        "Times the camera was lost.",
        &one(get(&s.media.camera_losses) as f64),
    );

    // Encode time histogram (cumulative buckets, seconds).
    let mut cumulative = 0u64;
    let mut hist = Vec::new();
    for (i, b) in s.media.encode_time_buckets.iter().enumerate() {
        cumulative += get(b);
        let le = ENCODE_BUCKETS_MS
            .get(i)
            .map_or("+Inf".to_owned(), |ms| format!("{}", *ms as f64 / 1000.0));
        hist.push((format!("_bucket{{le=\"{le}\"}}"), cumulative as f64));
    }
    hist.push((
        "_sum".to_owned(),
        get(&s.media.encode_time_micros) as f64 / 1e6,
    ));
    hist.push(("_count".to_owned(), cumulative as f64));
    metric(
        "snaprtcd_encode_seconds",
        "histogram",
        "Software encode time per frame.",
        &hist,
    );

    let states: Vec<_> = [
        CameraState::Starting,
        CameraState::Streaming,
        CameraState::NoSignal,
        CameraState::Stopped,
    ]
    .iter()
    .map(|st| {
        (
            format!("{{state=\"{}\"}}", st.as_str()),
            f64::from(u8::from(*st == s.camera.state)),
        )
    })
    .collect();
    metric(
        "snaprtcd_camera_state",
        "gauge",
        "1 for the camera's current state.",
        &states,
    );
    metric(
        "snaprtcd_camera_fps",
        "gauge",
        "Frames per second measured at capture.",
        &one(f64::from(s.camera.fps_measured)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn renders_counters_labels_and_a_cumulative_histogram() {
        let media = MediaCounters::default();
        media.frames_captured.store(10, Ordering::Relaxed);
        media.record_keyframe(KeyframeCause::Pli);
        media.record_encode_time(std::time::Duration::from_micros(1500));
        media.record_encode_time(std::time::Duration::from_millis(500));
        let rtc = RtcStats {
            viewers: 2,
            frames_sent: 7,
            ..RtcStats::default()
        };
        let camera = MediaStatus {
            state: CameraState::Streaming,
            ..MediaStatus::default()
        };
        let text = render(&Snapshot {
            rtc: &rtc,
            media: &media,
            camera: &camera,
            signaling: &SignalingStats::default(),
        });
        assert!(text.contains("\nsnaprtcd_viewers 2\n"), "{text}");
        assert!(text.contains("\nsnaprtcd_frames_captured_total 10\n"));
        assert!(text.contains("\nsnaprtcd_frames_sent_total 7\n"));
        assert!(text.contains("snaprtcd_keyframes_total{cause=\"pli\"} 1\n"));
        assert!(text.contains("snaprtcd_encode_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("snaprtcd_encode_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("snaprtcd_encode_seconds_count 2\n"));
        assert!(text.contains("snaprtcd_camera_state{state=\"streaming\"} 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
