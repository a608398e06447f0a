//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of what the daemon is doing.
//!
//! Pure rendering from snapshots the owners hand out (engine stats, pipeline counters, camera
//! status, hub stats, process figures); no registry, no globals. Every metric is one row of
//! `METRICS`: its name, type, help text and how to read its samples from a [`Snapshot`]. To
//! add a metric, add a row (at the end: scrapers and tests read the names, and the order of
//! the existing ones is kept so the output only ever grows).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::audio::{AudioReport, AudioStatus};
use crate::media::{CameraState, KeyframeCause, MediaCounters, MediaStatus, ENCODE_BUCKETS_MS};
use crate::rtc::RtcStats;
use crate::rtsp::RtspCounters;
use crate::signaling::dialout::RemoteStatus;
use crate::signaling::remote::{RemoteCounters, RemoteState};
use crate::signaling::ws::SignalingStats;

/// Everything one scrape shows.
pub struct Snapshot<'a> {
    /// The WebRTC engine's counters.
    pub rtc: &'a RtcStats,
    /// The media pipeline's counters.
    pub media: &'a MediaCounters,
    /// The camera's state and measured frame rate; `None` in the relay role (no camera).
    pub camera: Option<&'a MediaStatus>,
    /// The SnapRTC hub's connections and sessions.
    pub signaling: &'a SignalingStats,
    /// The daemon process itself (tasks, fds, threads, memory).
    pub process: &'a ProcessStats,
    /// The RTSP server's counters; `None` when it is off (its series are left out).
    pub rtsp: Option<&'a RtspCounters>,
    /// The `[[remote]]` hubs dialled out to (no series without any).
    pub remotes: &'a [RemoteStatus],
    /// The audio pipeline's state and counters; `None` without `[audio]` (no series).
    pub audio: Option<&'a AudioReport>,
}

/// Figures about the daemon process, read at scrape time by [`ProcessStats::sample`]. A
/// figure that could not be read is `None` and its metric has no sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// Tokio tasks alive in the runtime the scrape runs on.
    pub tokio_tasks: Option<usize>,
    /// Open file descriptors (entries of `/proc/self/fd`, the one used to list them included).
    pub open_fds: Option<usize>,
    /// OS threads (`Threads:` of `/proc/self/status`).
    pub threads: Option<u64>,
    /// Resident set size in bytes (`VmRSS:` of `/proc/self/status`).
    pub rss_bytes: Option<u64>,
}

impl ProcessStats {
    /// Read the figures now: the current tokio runtime's alive tasks (none outside a runtime)
    /// and `/proc/self` (none where there is no procfs).
    pub fn sample() -> ProcessStats {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        ProcessStats {
            tokio_tasks: tokio::runtime::Handle::try_current()
                .ok()
                .map(|h| h.metrics().num_alive_tasks()),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count()),
            threads: status_field(&status, "Threads:"),
            rss_bytes: status_field(&status, "VmRSS:").map(|kib| kib * 1024),
        }
    }
}

/// The number after `key` in `/proc/self/status` text (`VmRSS:   1234 kB` gives 1234).
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample line: the text between the metric name and the value (a `_bucket`-style suffix
/// and/or `{labels}`, often empty), and the value.
type Sample = (String, f64);

/// How a metric's samples are read from a snapshot.
enum Read {
    /// One unlabelled sample.
    Value(fn(&Snapshot<'_>) -> f64),
    /// One unlabelled sample when the figure is known, none otherwise.
    Maybe(fn(&Snapshot<'_>) -> Option<f64>),
    /// Any number of samples (labelled series, histogram parts).
    Samples(fn(&Snapshot<'_>) -> Vec<Sample>),
}

/// One row of the table: what `# HELP` and `# TYPE` say and where the samples come from.
struct Metric {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    read: Read,
}

/// A pipeline counter's current value.
fn get(counter: &std::sync::atomic::AtomicU64) -> f64 {
    MediaCounters::get(counter) as f64
}

/// Every metric, in output order (new ones go at the end).
const METRICS: &[Metric] = &[
    Metric {
        name: "snaprtcd_viewers",
        kind: Kind::Gauge,
        help: "WebRTC viewers now (WHEP and SnapRTC).",
        read: Read::Value(|s| s.rtc.viewers as f64),
    },
    Metric {
        name: "snaprtcd_viewers_connected",
        kind: Kind::Gauge,
        help: "Viewers with ICE and DTLS up.",
        read: Read::Value(|s| s.rtc.connected as f64),
    },
    Metric {
        name: "snaprtcd_viewers_timed_out_total",
        kind: Kind::Counter,
        help: "Viewers removed because ICE failed or they fell silent.",
        read: Read::Value(|s| s.rtc.timed_out as f64),
    },
    Metric {
        name: "snaprtcd_sessions",
        kind: Kind::Gauge,
        help: "SnapRTC hub sessions now.",
        read: Read::Value(|s| s.signaling.sessions as f64),
    },
    Metric {
        name: "snaprtcd_hub_connections",
        kind: Kind::Gauge,
        help: "SnapRTC hub connections now.",
        read: Read::Value(|s| s.signaling.connections as f64),
    },
    Metric {
        name: "snaprtcd_frames_captured_total",
        kind: Kind::Counter,
        help: "Frames the camera delivered.",
        read: Read::Value(|s| get(&s.media.frames_captured)),
    },
    Metric {
        name: "snaprtcd_frames_dropped_total",
        kind: Kind::Counter,
        help: "Frames dropped before the encoder because it was busy.",
        read: Read::Value(|s| get(&s.media.frames_dropped)),
    },
    Metric {
        name: "snaprtcd_frames_corrupt_total",
        kind: Kind::Counter,
        help: "Camera frames skipped because they could not be decoded (truncated or corrupt MJPEG).",
        read: Read::Value(|s| get(&s.media.frames_corrupt)),
    },
    Metric {
        name: "snaprtcd_frames_encoded_total",
        kind: Kind::Counter,
        help: "Access units published to viewers (encoded once for all).",
        read: Read::Value(|s| get(&s.media.frames_encoded)),
    },
    Metric {
        name: "snaprtcd_frames_encoder_skipped_total",
        kind: Kind::Counter,
        help: "Pictures the software encoder produced nothing for (rate control skips; 0 expected).",
        read: Read::Value(|s| get(&s.media.frames_encoder_skipped)),
    },
    Metric {
        name: "snaprtcd_frames_sent_total",
        kind: Kind::Counter,
        help: "Frames written to viewers (one per frame per viewer).",
        read: Read::Value(|s| s.rtc.frames_sent as f64),
    },
    Metric {
        name: "snaprtcd_bytes_out_total",
        kind: Kind::Counter,
        help: "WebRTC UDP bytes sent.",
        read: Read::Value(|s| s.rtc.bytes_out as f64),
    },
    Metric {
        name: "snaprtcd_stills_sent_total",
        kind: Kind::Counter,
        help: "JPEG stills sent over data channels.",
        read: Read::Value(|s| s.rtc.stills_sent as f64),
    },
    Metric {
        name: "snaprtcd_keyframes_total",
        kind: Kind::Counter,
        help: "IDR frames sent, by cause.",
        read: Read::Samples(keyframes_by_cause),
    },
    Metric {
        name: "snaprtcd_camera_losses_total",
        kind: Kind::Counter,
        help: "Times the camera was lost.",
        read: Read::Value(|s| get(&s.media.camera_losses)),
    },
    Metric {
        name: "snaprtcd_encode_seconds",
        kind: Kind::Histogram,
        help: "Software encode time per frame.",
        read: Read::Samples(encode_time_histogram),
    },
    Metric {
        name: "snaprtcd_camera_state",
        kind: Kind::Gauge,
        help: "1 for the camera's current state.",
        read: Read::Samples(camera_state),
    },
    Metric {
        name: "snaprtcd_camera_fps",
        kind: Kind::Gauge,
        help: "Frames per second measured at capture.",
        read: Read::Maybe(|s| s.camera.map(|c| f64::from(c.fps_measured))),
    },
    Metric {
        name: "snaprtcd_tokio_tasks",
        kind: Kind::Gauge,
        help: "Tokio tasks alive in the daemon's runtime.",
        read: Read::Maybe(|s| s.process.tokio_tasks.map(|n| n as f64)),
    },
    Metric {
        name: "snaprtcd_open_fds",
        kind: Kind::Gauge,
        help: "Open file descriptors of the daemon process.",
        read: Read::Maybe(|s| s.process.open_fds.map(|n| n as f64)),
    },
    Metric {
        name: "snaprtcd_threads",
        kind: Kind::Gauge,
        help: "OS threads of the daemon process.",
        read: Read::Maybe(|s| s.process.threads.map(|n| n as f64)),
    },
    Metric {
        name: "snaprtcd_resident_memory_bytes",
        kind: Kind::Gauge,
        help: "Resident set size of the daemon process.",
        read: Read::Maybe(|s| s.process.rss_bytes.map(|n| n as f64)),
    },
    Metric {
        name: "snaprtcd_rtc_built_total",
        kind: Kind::Counter,
        help: "WebRTC peer connections built (each a DTLS key and certificate; never over max_viewers at once).",
        read: Read::Value(|s| s.rtc.rtc_built as f64),
    },
    Metric {
        name: "snaprtcd_udp_datagrams_unrouted_total",
        kind: Kind::Counter,
        help: "UDP datagrams no viewer accepted (junk, strays).",
        read: Read::Value(|s| s.rtc.datagrams_unrouted as f64),
    },
    Metric {
        name: "snaprtcd_local_addr_lookups_total",
        kind: Kind::Counter,
        help: "Route lookups made to learn which local address a viewer sent to.",
        read: Read::Value(|s| s.rtc.local_addr_lookups as f64),
    },
    Metric {
        name: "snaprtcd_role",
        kind: Kind::Gauge,
        help: "1 for the daemon's role: camera, or relay (a hub with no camera).",
        read: Read::Samples(|s| {
            let relay = f64::from(u8::from(s.camera.is_none()));
            vec![
                ("{role=\"camera\"}".to_owned(), 1.0 - relay),
                ("{role=\"relay\"}".to_owned(), relay),
            ]
        }),
    },
    Metric {
        name: "snaprtcd_backplane_up",
        kind: Kind::Gauge,
        help: "1 while the Redis backplane is connected, 0 while not (no sample without one).",
        read: Read::Maybe(|s| s.signaling.backplane.map(|b| f64::from(u8::from(b.up)))),
    },
    Metric {
        name: "snaprtcd_backplane_published_total",
        kind: Kind::Counter,
        help: "Messages published to other instances through the backplane.",
        read: Read::Maybe(|s| s.signaling.backplane.map(|b| b.published as f64)),
    },
    Metric {
        name: "snaprtcd_backplane_writes_total",
        kind: Kind::Counter,
        help: "Writes of commands to Redis: published per write is how many messages share one ([backplane] write_interval).",
        read: Read::Maybe(|s| s.signaling.backplane.map(|b| b.writes as f64)),
    },
    Metric {
        name: "snaprtcd_backplane_received_total",
        kind: Kind::Counter,
        help: "Messages received from the backplane.",
        read: Read::Maybe(|s| s.signaling.backplane.map(|b| b.received as f64)),
    },
    Metric {
        name: "snaprtcd_backplane_dropped_total",
        kind: Kind::Counter,
        help: "Backplane messages dropped: queues full, Redis down, or malformed or too large.",
        read: Read::Maybe(|s| s.signaling.backplane.map(|b| b.dropped as f64)),
    },
    Metric {
        name: "snaprtcd_rtsp_clients",
        kind: Kind::Gauge,
        help: "RTSP connections now.",
        read: Read::Maybe(|s| s.rtsp.map(|r| r.clients.load(Relaxed) as f64)),
    },
    Metric {
        name: "snaprtcd_rtsp_connections_total",
        kind: Kind::Counter,
        help: "RTSP connections accepted.",
        read: Read::Maybe(|s| s.rtsp.map(|r| get(&r.connections))),
    },
    Metric {
        name: "snaprtcd_rtsp_refused_total",
        kind: Kind::Counter,
        help: "RTSP connections refused because max_clients were open.",
        read: Read::Maybe(|s| s.rtsp.map(|r| get(&r.refused))),
    },
    Metric {
        name: "snaprtcd_rtsp_frames_sent_total",
        kind: Kind::Counter,
        help: "Access units sent to RTSP clients (one per frame per client).",
        read: Read::Maybe(|s| s.rtsp.map(|r| get(&r.frames_sent))),
    },
    Metric {
        name: "snaprtcd_rtsp_frames_skipped_total",
        kind: Kind::Counter,
        help: "Access units RTSP clients skipped (behind, or waiting for a keyframe); counted when a client leaves.",
        read: Read::Maybe(|s| s.rtsp.map(|r| get(&r.frames_skipped))),
    },
    Metric {
        name: "snaprtcd_rtsp_dropped_slow_total",
        kind: Kind::Counter,
        help: "RTSP clients dropped because they took nothing for write_timeout.",
        read: Read::Maybe(|s| s.rtsp.map(|r| get(&r.dropped_slow))),
    },
    Metric {
        name: "snaprtcd_rtsp_bad_requests_total",
        kind: Kind::Counter,
        help: "RTSP requests answered with an error status.",
        read: Read::Maybe(|s| s.rtsp.map(|r| get(&r.bad_requests))),
    },
    Metric {
        name: "snaprtcd_remote_state",
        kind: Kind::Gauge,
        help: "Each [[remote]] hub link's state: 1 for the current one.",
        read: Read::Samples(remote_state),
    },
    Metric {
        name: "snaprtcd_remote_connects_total",
        kind: Kind::Counter,
        help: "Connections to the remote hub that completed the SignalR handshake.",
        read: Read::Samples(|s| remote_counter(s, |c| c.connects)),
    },
    Metric {
        name: "snaprtcd_remote_failures_total",
        kind: Kind::Counter,
        help: "Remote hub links lost and connection attempts that failed.",
        read: Read::Samples(|s| remote_counter(s, |c| c.failures)),
    },
    Metric {
        name: "snaprtcd_remote_offers_total",
        kind: Kind::Counter,
        help: "Initiators' offers taken through a remote hub.",
        read: Read::Samples(|s| remote_counter(s, |c| c.offers)),
    },
    Metric {
        name: "snaprtcd_remote_busy_offers_total",
        kind: Kind::Counter,
        help: "Offers dropped because the remote session was serving another initiator.",
        read: Read::Samples(|s| remote_counter(s, |c| c.busy_offers)),
    },
    Metric {
        name: "snaprtcd_turn_allocation_state",
        kind: Kind::Gauge,
        help: "Each [ice] turn_servers allocation: 0 connecting or allocating, 1 ready (relayed candidate offered), 2 failed (retrying).",
        read: Read::Samples(|s| {
            s.rtc
                .turn
                .iter()
                .map(|t| (format!("{{url=\"{}\"}}", label(&t.url)), f64::from(t.state_code)))
                .collect()
        }),
    },
    Metric {
        name: "snaprtcd_turn_relayed_bytes_total",
        kind: Kind::Counter,
        help: "Payload bytes relayed through the TURN allocation, by direction (in: from peers).",
        read: Read::Samples(|s| {
            s.rtc
                .turn
                .iter()
                .flat_map(|t| {
                    let url = label(&t.url);
                    [
                        (format!("{{url=\"{url}\",direction=\"in\"}}"), t.bytes_in as f64),
                        (format!("{{url=\"{url}\",direction=\"out\"}}"), t.bytes_out as f64),
                    ]
                })
                .collect()
        }),
    },
    Metric {
        name: "snaprtcd_turn_peers",
        kind: Kind::Gauge,
        help: "Remote peers with a permission and channel on each TURN allocation (a full table of idle peers is recycled by a fresh allocation).",
        read: Read::Samples(|s| {
            s.rtc
                .turn
                .iter()
                .map(|t| (format!("{{url=\"{}\"}}", label(&t.url)), t.peers as f64))
                .collect()
        }),
    },
    Metric {
        name: "snaprtcd_turn_recycles_total",
        kind: Kind::Counter,
        help: "Fresh TURN allocations made to drop the permissions of idle peers.",
        read: Read::Samples(|s| {
            s.rtc
                .turn
                .iter()
                .map(|t| (format!("{{url=\"{}\"}}", label(&t.url)), t.recycles as f64))
                .collect()
        }),
    },
    Metric {
        name: "snaprtcd_viewers_pair",
        kind: Kind::Gauge,
        help: "Connected viewers by their selected ICE candidate pair's type (host, srflx, prflx, relay).",
        read: Read::Samples(viewers_by_pair),
    },
    Metric {
        name: "snaprtcd_ice_server_up",
        kind: Kind::Gauge,
        help: "1 while an [ice] STUN server answers (or a TURN allocation holds), 0 while it fails or starts.",
        read: Read::Samples(ice_servers_up),
    },
    Metric {
        name: "snaprtcd_audio_state",
        kind: Kind::Gauge,
        help: "The audio capture's state: 1 for the current one (lost: the source is gone, silence is sent while it is retried).",
        read: Read::Samples(audio_state),
    },
    Metric {
        name: "snaprtcd_audio_frames_total",
        kind: Kind::Counter,
        help: "Opus frames (20 ms) encoded once and published to every listener, silence included.",
        read: Read::Maybe(|s| s.audio.map(|a| a.frames as f64)),
    },
    Metric {
        name: "snaprtcd_audio_silence_frames_total",
        kind: Kind::Counter,
        help: "Of the audio frames, silence sent while the source was lost.",
        read: Read::Maybe(|s| s.audio.map(|a| a.silence as f64)),
    },
    Metric {
        name: "snaprtcd_audio_losses_total",
        kind: Kind::Counter,
        help: "Times the audio source was lost (or could not be opened).",
        read: Read::Maybe(|s| s.audio.map(|a| a.losses as f64)),
    },
    Metric {
        name: "snaprtcd_audio_listeners",
        kind: Kind::Gauge,
        help: "Subscriptions to the audio frames: one per RTSP session playing audio, one for all WebRTC viewers taking audio.",
        read: Read::Maybe(|s| s.audio.map(|a| a.listeners as f64)),
    },
    Metric {
        name: "snaprtcd_audio_fec_loss_percent",
        kind: Kind::Gauge,
        help: "Packet loss the Opus encoder codes in-band FEC for, in percent: the worst a WebRTC viewer reported in the last 10 s (0: no redundancy sent).",
        read: Read::Maybe(|s| s.audio.map(|a| f64::from(a.fec_loss_percent))),
    },
];

/// The labels naming one remote: `url="…",session="…"`.
fn remote_labels(r: &RemoteStatus) -> String {
    format!(
        "url=\"{}\",session=\"{}\"",
        label(&r.url),
        label(&r.session)
    )
}

/// `snaprtcd_remote_state{url,session,state}`: 1 for each remote's state, 0 for the others.
fn remote_state(s: &Snapshot<'_>) -> Vec<Sample> {
    const STATES: [RemoteState; 4] = [
        RemoteState::Connecting,
        RemoteState::Idle,
        RemoteState::Serving,
        RemoteState::Reconnecting,
    ];
    let mut samples = Vec::new();
    for r in s.remotes {
        for st in STATES {
            let on = f64::from(u8::from(st == r.state));
            samples.push((
                format!("{{{},state=\"{}\"}}", remote_labels(r), st.as_str()),
                on,
            ));
        }
    }
    samples
}

/// One counter of every remote.
fn remote_counter(s: &Snapshot<'_>, read: fn(&RemoteCounters) -> u64) -> Vec<Sample> {
    s.remotes
        .iter()
        .map(|r| {
            (
                format!("{{{}}}", remote_labels(r)),
                read(&r.counters) as f64,
            )
        })
        .collect()
}

/// `snaprtcd_viewers_pair{type="…"}` for every pair type.
fn viewers_by_pair(s: &Snapshot<'_>) -> Vec<Sample> {
    crate::rtc::viewer::PairType::ALL
        .iter()
        .zip(s.rtc.pair_types)
        .map(|(t, n)| (format!("{{type=\"{}\"}}", t.as_str()), n as f64))
        .collect()
}

/// `snaprtcd_ice_server_up{kind="stun",server="…"}` per STUN client or TURN allocation.
fn ice_servers_up(s: &Snapshot<'_>) -> Vec<Sample> {
    s.rtc
        .ice
        .iter()
        .map(|h| {
            (
                format!("{{kind=\"{}\",server=\"{}\"}}", h.kind, label(&h.server)),
                f64::from(u8::from(h.up)),
            )
        })
        .collect()
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `snaprtcd_keyframes_total{cause="…"}` for every cause.
fn keyframes_by_cause(s: &Snapshot<'_>) -> Vec<Sample> {
    KeyframeCause::ALL
        .iter()
        .map(|c| {
            let n = get(&s.media.keyframes[c.index()]);
            (format!("{{cause=\"{}\"}}", c.as_str()), n)
        })
        .collect()
}

/// Cumulative `_bucket{le="…"}` samples (seconds), then `_sum` and `_count`.
fn encode_time_histogram(s: &Snapshot<'_>) -> Vec<Sample> {
    let mut cumulative = 0.0;
    let mut samples = Vec::with_capacity(s.media.encode_time_buckets.len() + 2);
    for (i, bucket) in s.media.encode_time_buckets.iter().enumerate() {
        cumulative += get(bucket);
        let le = ENCODE_BUCKETS_MS
            .get(i)
            .map_or("+Inf".to_owned(), |ms| format!("{}", *ms as f64 / 1000.0));
        samples.push((format!("_bucket{{le=\"{le}\"}}"), cumulative));
    }
    samples.push(("_sum".to_owned(), get(&s.media.encode_time_micros) / 1e6));
    samples.push(("_count".to_owned(), cumulative));
    samples
}

/// `snaprtcd_camera_state{state="…"}`: 1 for the current state, 0 for the others.
fn camera_state(s: &Snapshot<'_>) -> Vec<Sample> {
    let Some(camera) = s.camera else {
        return Vec::new();
    };
    const STATES: [CameraState; 4] = [
        CameraState::Starting,
        CameraState::Streaming,
        CameraState::NoSignal,
        CameraState::Stopped,
    ];
    STATES
        .iter()
        .map(|st| {
            let on = f64::from(u8::from(*st == camera.state));
            (format!("{{state=\"{}\"}}", st.as_str()), on)
        })
        .collect()
}

/// `snaprtcd_audio_state{state="…"}`: 1 for the audio thread's state, 0 for the others.
fn audio_state(s: &Snapshot<'_>) -> Vec<Sample> {
    let Some(audio) = s.audio else {
        return Vec::new();
    };
    AudioStatus::STATES
        .iter()
        .map(|st| {
            let on = f64::from(u8::from(*st == audio.status.state));
            (format!("{{state=\"{st}\"}}"), on)
        })
        .collect()
}

/// Render the Prometheus text body: every row of `METRICS`, in order.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(4096);
    for m in METRICS {
        let samples = match m.read {
            Read::Value(read) => vec![(String::new(), read(s))],
            Read::Maybe(read) => read(s).map(|v| (String::new(), v)).into_iter().collect(),
            Read::Samples(read) => read(s),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind.as_str());
        for (suffix, v) in samples {
            let _ = writeln!(out, "{}{suffix} {v}", m.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// What `render` wrote for [`sample_snapshot`]'s values before it became a table (the
    /// table may add metrics after these, never change them).
    const BEFORE_THE_TABLE: &str = r#"# HELP snaprtcd_viewers WebRTC viewers now (WHEP and SnapRTC).
# TYPE snaprtcd_viewers gauge
snaprtcd_viewers 2
# HELP snaprtcd_viewers_connected Viewers with ICE and DTLS up.
# TYPE snaprtcd_viewers_connected gauge
snaprtcd_viewers_connected 1
# HELP snaprtcd_viewers_timed_out_total Viewers removed because ICE failed or they fell silent.
# TYPE snaprtcd_viewers_timed_out_total counter
snaprtcd_viewers_timed_out_total 4
# HELP snaprtcd_sessions SnapRTC hub sessions now.
# TYPE snaprtcd_sessions gauge
snaprtcd_sessions 3
# HELP snaprtcd_hub_connections SnapRTC hub connections now.
# TYPE snaprtcd_hub_connections gauge
snaprtcd_hub_connections 6
# HELP snaprtcd_frames_captured_total Frames the camera delivered.
# TYPE snaprtcd_frames_captured_total counter
snaprtcd_frames_captured_total 10
# HELP snaprtcd_frames_dropped_total Frames dropped before the encoder because it was busy.
# TYPE snaprtcd_frames_dropped_total counter
snaprtcd_frames_dropped_total 3
# HELP snaprtcd_frames_corrupt_total Camera frames skipped because they could not be decoded (truncated or corrupt MJPEG).
# TYPE snaprtcd_frames_corrupt_total counter
snaprtcd_frames_corrupt_total 2
# HELP snaprtcd_frames_encoded_total Access units published to viewers (encoded once for all).
# TYPE snaprtcd_frames_encoded_total counter
snaprtcd_frames_encoded_total 9
# HELP snaprtcd_frames_encoder_skipped_total Pictures the software encoder produced nothing for (rate control skips; 0 expected).
# TYPE snaprtcd_frames_encoder_skipped_total counter
snaprtcd_frames_encoder_skipped_total 4
# HELP snaprtcd_frames_sent_total Frames written to viewers (one per frame per viewer).
# TYPE snaprtcd_frames_sent_total counter
snaprtcd_frames_sent_total 7
# HELP snaprtcd_bytes_out_total WebRTC UDP bytes sent.
# TYPE snaprtcd_bytes_out_total counter
snaprtcd_bytes_out_total 12345
# HELP snaprtcd_stills_sent_total JPEG stills sent over data channels.
# TYPE snaprtcd_stills_sent_total counter
snaprtcd_stills_sent_total 5
# HELP snaprtcd_keyframes_total IDR frames sent, by cause.
# TYPE snaprtcd_keyframes_total counter
snaprtcd_keyframes_total{cause="new_viewer"} 0
snaprtcd_keyframes_total{cause="pli"} 2
snaprtcd_keyframes_total{cause="fir"} 0
snaprtcd_keyframes_total{cause="lagged"} 0
snaprtcd_keyframes_total{cause="periodic"} 0
# HELP snaprtcd_camera_losses_total Times the camera was lost.
# TYPE snaprtcd_camera_losses_total counter
snaprtcd_camera_losses_total 1
# HELP snaprtcd_encode_seconds Software encode time per frame.
# TYPE snaprtcd_encode_seconds histogram
snaprtcd_encode_seconds_bucket{le="0.001"} 0
snaprtcd_encode_seconds_bucket{le="0.002"} 1
snaprtcd_encode_seconds_bucket{le="0.005"} 1
snaprtcd_encode_seconds_bucket{le="0.01"} 1
snaprtcd_encode_seconds_bucket{le="0.02"} 1
snaprtcd_encode_seconds_bucket{le="0.05"} 1
snaprtcd_encode_seconds_bucket{le="0.1"} 1
snaprtcd_encode_seconds_bucket{le="+Inf"} 2
snaprtcd_encode_seconds_sum 0.5015
snaprtcd_encode_seconds_count 2
# HELP snaprtcd_camera_state 1 for the camera's current state.
# TYPE snaprtcd_camera_state gauge
snaprtcd_camera_state{state="starting"} 0
snaprtcd_camera_state{state="streaming"} 1
snaprtcd_camera_state{state="no_signal"} 0
snaprtcd_camera_state{state="stopped"} 0
# HELP snaprtcd_camera_fps Frames per second measured at capture.
# TYPE snaprtcd_camera_fps gauge
snaprtcd_camera_fps 29.5
"#;

    /// Renders a snapshot with every field set to something non-default.
    fn render_sample(process: &ProcessStats) -> String {
        let media = MediaCounters::default();
        media.frames_captured.store(10, Ordering::Relaxed);
        media.frames_dropped.store(3, Ordering::Relaxed);
        media.frames_corrupt.store(2, Ordering::Relaxed);
        media.frames_encoded.store(9, Ordering::Relaxed);
        media.frames_encoder_skipped.store(4, Ordering::Relaxed);
        media.camera_losses.store(1, Ordering::Relaxed);
        media.record_keyframe(KeyframeCause::Pli);
        media.record_keyframe(KeyframeCause::Pli);
        media.record_encode_time(std::time::Duration::from_micros(1500));
        media.record_encode_time(std::time::Duration::from_millis(500));
        let rtc = RtcStats {
            viewers: 2,
            connected: 1,
            timed_out: 4,
            frames_sent: 7,
            bytes_out: 12345,
            stills_sent: 5,
            pair_types: [1, 0, 0, 0],
            ice: vec![crate::rtc::core::SidecarHealth {
                kind: "stun",
                server: "stun:stun.example.org".into(),
                state: "ok".into(),
                up: true,
                bytes_relayed: 0,
                ..Default::default()
            }],
            ..RtcStats::default()
        };
        let camera = MediaStatus {
            state: CameraState::Streaming,
            fps_measured: 29.5,
            ..MediaStatus::default()
        };
        let signaling = SignalingStats {
            sessions: 3,
            connections: 6,
            backplane: None,
        };
        render(&Snapshot {
            rtc: &rtc,
            media: &media,
            camera: Some(&camera),
            signaling: &signaling,
            process,
            rtsp: None,
            remotes: &[],
            audio: None,
        })
    }

    #[test]
    fn turn_allocations_have_state_bytes_peers_and_recycles() {
        let media = MediaCounters::default();
        let rtc = RtcStats {
            turn: vec![crate::rtc::turn::TurnStatus {
                url: "turn:turn.example.org?transport=tcp".into(),
                state: "ready 198.51.100.1:50000".into(),
                state_code: 1,
                bytes_in: 10,
                bytes_out: 20,
                peers: 3,
                recycles: 2,
            }],
            ..RtcStats::default()
        };
        let signaling = SignalingStats::default();
        let text = render(&Snapshot {
            rtc: &rtc,
            media: &media,
            camera: None,
            signaling: &signaling,
            process: &ProcessStats::default(),
            rtsp: None,
            remotes: &[],
            audio: None,
        });
        let url = "url=\"turn:turn.example.org?transport=tcp\"";
        for line in [
            format!("snaprtcd_turn_allocation_state{{{url}}} 1"),
            format!("snaprtcd_turn_relayed_bytes_total{{{url},direction=\"out\"}} 20"),
            format!("snaprtcd_turn_peers{{{url}}} 3"),
            format!("snaprtcd_turn_recycles_total{{{url}}} 2"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn audio_has_a_state_frames_and_listeners_only_when_on() {
        let (rtc, media) = (RtcStats::default(), MediaCounters::default());
        let signaling = SignalingStats::default();
        let audio = AudioReport {
            status: AudioStatus {
                state: "lost",
                source: "alsa hw:CARD=C920,DEV=0".into(),
            },
            channels: 1,
            frames: 500,
            silence: 50,
            losses: 1,
            listeners: 3,
            fec_loss_percent: 5,
        };
        let process = ProcessStats::default();
        let snapshot = |audio| Snapshot {
            rtc: &rtc,
            media: &media,
            camera: None,
            signaling: &signaling,
            process: &process,
            rtsp: None,
            remotes: &[],
            audio,
        };
        let text = render(&snapshot(Some(&audio)));
        for line in [
            "snaprtcd_audio_state{state=\"lost\"} 1",
            "snaprtcd_audio_state{state=\"capturing\"} 0",
            "snaprtcd_audio_frames_total 500",
            "snaprtcd_audio_silence_frames_total 50",
            "snaprtcd_audio_losses_total 1",
            "snaprtcd_audio_listeners 3",
            "snaprtcd_audio_fec_loss_percent 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let text = render(&snapshot(None));
        assert!(
            !text.lines().any(|l| l.starts_with("snaprtcd_audio")),
            "no samples without audio:\n{text}"
        );
    }

    #[test]
    fn remote_hubs_have_a_state_and_counters_each() {
        let (rtc, media) = (RtcStats::default(), MediaCounters::default());
        let signaling = SignalingStats::default();
        let remotes = [RemoteStatus {
            url: "https://hub.example.com".into(),
            session: "dev-1".into(),
            state: RemoteState::Serving,
            error: None,
            start_on_join: true,
            counters: RemoteCounters {
                offers: 3,
                ..RemoteCounters::default()
            },
        }];
        let text = render(&Snapshot {
            rtc: &rtc,
            media: &media,
            camera: None,
            signaling: &signaling,
            process: &ProcessStats::default(),
            rtsp: None,
            remotes: &remotes,
            audio: None,
        });
        let labels = "url=\"https://hub.example.com\",session=\"dev-1\"";
        assert!(
            text.contains(&format!(
                "\nsnaprtcd_remote_state{{{labels},state=\"serving\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "\nsnaprtcd_remote_state{{{labels},state=\"idle\"}} 0\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("\nsnaprtcd_remote_offers_total{{{labels}}} 3\n")),
            "{text}"
        );
    }

    #[test]
    fn output_is_what_it_was_before_the_table_plus_additions() {
        let text = render_sample(&ProcessStats::default());
        let added = text
            .strip_prefix(BEFORE_THE_TABLE)
            .unwrap_or_else(|| panic!("changed output:\n{text}"));
        assert!(added.starts_with("# HELP snaprtcd_tokio_tasks "), "{added}");
    }

    #[test]
    fn renders_counters_labels_and_a_cumulative_histogram() {
        let text = render_sample(&ProcessStats::default());
        assert!(text.contains("\nsnaprtcd_viewers 2\n"), "{text}");
        assert!(text.contains("\nsnaprtcd_frames_captured_total 10\n"));
        assert!(text.contains("\nsnaprtcd_frames_sent_total 7\n"));
        assert!(text.contains("snaprtcd_keyframes_total{cause=\"pli\"} 2\n"));
        assert!(text.contains("snaprtcd_encode_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("snaprtcd_encode_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("snaprtcd_encode_seconds_count 2\n"));
        assert!(text.contains("snaprtcd_camera_state{state=\"streaming\"} 1\n"));
        assert!(
            text.contains("snaprtcd_viewers_pair{type=\"host\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("snaprtcd_viewers_pair{type=\"relay\"} 0\n"));
        assert!(text.contains(
            "snaprtcd_ice_server_up{kind=\"stun\",server=\"stun:stun.example.org\"} 1\n"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn a_relay_has_a_role_and_no_camera_samples() {
        let (rtc, media) = (RtcStats::default(), MediaCounters::default());
        let signaling = SignalingStats {
            sessions: 1,
            connections: 2,
            backplane: Some(crate::signaling::ws::BackplaneStats {
                up: true,
                published: 7,
                writes: 3,
                received: 5,
                dropped: 1,
            }),
        };
        let text = render(&Snapshot {
            rtc: &rtc,
            media: &media,
            camera: None,
            signaling: &signaling,
            process: &ProcessStats::default(),
            rtsp: None,
            remotes: &[],
            audio: None,
        });
        assert!(
            text.contains("\nsnaprtcd_role{role=\"relay\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nsnaprtcd_role{role=\"camera\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("\nsnaprtcd_hub_connections 2\n"), "{text}");
        for row in [
            "snaprtcd_backplane_up 1",
            "snaprtcd_backplane_published_total 7",
            "snaprtcd_backplane_writes_total 3",
            "snaprtcd_backplane_received_total 5",
            "snaprtcd_backplane_dropped_total 1",
        ] {
            assert!(text.contains(&format!("\n{row}\n")), "{row} in {text}");
        }
        assert!(!text.contains("\nsnaprtcd_camera_state{"), "{text}");
        assert!(!text.contains("\nsnaprtcd_camera_fps "), "{text}");
        let camera = render_sample(&ProcessStats::default());
        assert!(
            camera.contains("\nsnaprtcd_role{role=\"camera\"} 1\n"),
            "{camera}"
        );
    }

    #[test]
    fn every_metric_has_one_help_and_one_type_line() {
        let text = render_sample(&ProcessStats::default());
        for m in METRICS {
            let help = format!("# HELP {} ", m.name);
            let kind = format!("# TYPE {} ", m.name);
            assert_eq!(text.matches(&help).count(), 1, "{}", m.name);
            assert_eq!(text.matches(&kind).count(), 1, "{}", m.name);
        }
    }

    #[test]
    fn process_figures_are_samples_when_known_and_absent_otherwise() {
        let known = ProcessStats {
            tokio_tasks: Some(12),
            open_fds: Some(40),
            threads: Some(5),
            rss_bytes: Some(9 * 1024 * 1024),
        };
        let text = render_sample(&known);
        assert!(text.contains("\nsnaprtcd_tokio_tasks 12\n"), "{text}");
        assert!(text.contains("\nsnaprtcd_open_fds 40\n"));
        assert!(text.contains("\nsnaprtcd_threads 5\n"));
        assert!(text.contains("\nsnaprtcd_resident_memory_bytes 9437184\n"));
        let unknown = render_sample(&ProcessStats::default());
        assert!(unknown.contains("# TYPE snaprtcd_threads gauge\n"));
        assert!(!unknown.contains("\nsnaprtcd_threads "), "{unknown}");
    }

    #[tokio::test]
    async fn sample_reads_this_process() {
        let p = ProcessStats::sample();
        assert!(p.tokio_tasks.is_some(), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.threads.is_some_and(|n| n >= 1), "{p:?}");
        assert!(p.rss_bytes.is_some_and(|b| b > 1024 * 1024), "{p:?}");
        assert_eq!(
            status_field("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS:"),
            Some(2048)
        );
    }
}
