//! The `STATUS=` line: what `systemctl status` shows, built from the media pipeline's state,
//! the RTC engine's viewer count and a reload note. Wiring between siblings, so it lives in the
//! daemon; `systemd` only sends the line.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::media::{CameraState, MediaHandle, MediaStatus};
use crate::progress::Heartbeat;
use crate::rtc::RtcHandle;
use crate::signaling::dialout::{DialoutHandle, RemoteStatus};
use crate::signaling::SignalingHandle;
use crate::signaling::SignalingStats;
use crate::systemd;

/// One line for `STATUS=`: "streaming 1280x720@30 to 2 viewers (testsrc, openh264)",
/// "no camera (retrying /dev/video0), 0 viewers". `note` (a rejected reload) is appended.
pub fn status_line(media: &MediaStatus, viewers: usize, note: Option<&str>) -> String {
    let who = match viewers {
        1 => "1 viewer".to_owned(),
        n => format!("{n} viewers"),
    };
    let line = match media.state {
        CameraState::Starting => format!("starting {}, {who}", media.source),
        CameraState::Streaming if media.encoder.is_empty() => format!(
            "streaming {}x{} to {who} ({})",
            media.width, media.height, media.source
        ),
        CameraState::Streaming => format!(
            "streaming {}x{}@{:.0} to {who} ({}, {})",
            media.width, media.height, media.fps_measured, media.source, media.encoder
        ),
        CameraState::NoSignal => format!("no camera (retrying {}), {who}", media.source),
        CameraState::Stopped => format!("camera stopped, {who}"),
    };
    one_line(line, note)
}

/// The remote hubs' part of the line: "remote kitchen: idle, remote b: reconnecting (why)".
pub fn remotes_part(remotes: &[RemoteStatus]) -> Option<String> {
    let parts: Vec<String> = remotes
        .iter()
        .map(|r| match &r.error {
            Some(e) => format!("remote {}: {} ({e})", r.session, r.state.as_str()),
            None => format!("remote {}: {}", r.session, r.state.as_str()),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// `line`, then `note` after a `; `, as the one line systemd shows.
fn one_line(mut line: String, note: Option<&str>) -> String {
    if let Some(note) = note {
        line.push_str("; ");
        line.push_str(note);
    }
    line.replace('\n', " ")
}

/// Keeps `STATUS=` current: recomputes the line when the camera state or a reload note
/// changes, and at least every `poll` for the viewer count (asked of the RTC engine), and
/// sends it only when it differs from the last one sent. Runs until `cancel`.
pub async fn report_status(
    media: MediaHandle,
    rtc: RtcHandle,
    remotes: DialoutHandle,
    mut note: watch::Receiver<Option<String>>,
    poll: Duration,
    cancel: CancellationToken,
) {
    let mut camera = media.watch_status();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = String::new();
    loop {
        let viewers = match tokio::time::timeout(poll, rtc.stats()).await {
            Ok(Ok(stats)) => stats.viewers,
            _ => 0,
        };
        let line = {
            let note = note.borrow_and_update();
            let line = status_line(&camera.borrow_and_update(), viewers, None);
            let line = match remotes_part(&remotes.statuses()) {
                Some(part) => format!("{line}; {part}"),
                None => line,
            };
            one_line(line, note.as_deref())
        };
        if line != last {
            tracing::debug!(status = %line, "status");
            systemd::notify_status(&line);
            last = line;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            r = camera.changed() => if r.is_err() { cancel.cancelled().await; return },
            r = note.changed() => if r.is_err() { cancel.cancelled().await; return },
        }
    }
}

/// The relay's `STATUS=` line: "relay: 3 hub connections, 2 sessions", `note` appended.
pub fn relay_status_line(stats: &SignalingStats, note: Option<&str>) -> String {
    let plural = |n: usize, one: &str, many: &str| match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    };
    let mut line = format!(
        "relay: {}, {}",
        plural(stats.connections, "hub connection", "hub connections"),
        plural(stats.sessions, "session", "sessions")
    );
    if let Some(b) = stats.backplane {
        line.push_str(if b.up {
            ", backplane up"
        } else {
            ", backplane DOWN"
        });
    }
    one_line(line, note)
}

/// Keeps `STATUS=` current in the relay role: asks the hub for its counts every `poll` (and
/// when a reload note changes) and sends the line when it differs. Each answer from the hub
/// beats `beat`, so the watchdog stops pinging when the hub task hangs. Runs until `cancel`.
pub async fn report_relay_status(
    signaling: SignalingHandle,
    beat: Heartbeat,
    mut note: watch::Receiver<Option<String>>,
    poll: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = String::new();
    loop {
        let stats = match tokio::time::timeout(poll, signaling.stats()).await {
            Ok(Ok(stats)) => {
                beat.beat();
                stats
            }
            _ => SignalingStats::default(),
        };
        let line = relay_status_line(&stats, note.borrow_and_update().as_deref());
        if line != last {
            tracing::debug!(status = %line, "status");
            systemd::notify_status(&line);
            last = line;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            r = note.changed() => if r.is_err() { cancel.cancelled().await; return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_says_what_it_does() {
        let mut m = MediaStatus {
            state: CameraState::Streaming,
            source: "/dev/video0 (YUYV)".into(),
            format: "YUYV".into(),
            width: 1280,
            height: 720,
            fps_measured: 29.7,
            encoder: "openh264".into(),
        };
        assert_eq!(
            status_line(&m, 2, None),
            "streaming 1280x720@30 to 2 viewers (/dev/video0 (YUYV), openh264)"
        );
        assert!(status_line(&m, 1, None).contains("to 1 viewer ("));
        m.state = CameraState::NoSignal;
        assert_eq!(
            status_line(&m, 0, None),
            "no camera (retrying /dev/video0 (YUYV)), 0 viewers"
        );
        let mut hub = SignalingStats {
            connections: 1,
            sessions: 2,
            backplane: None,
        };
        assert_eq!(
            relay_status_line(&hub, Some("x")),
            "relay: 1 hub connection, 2 sessions; x"
        );
        hub.backplane = Some(Default::default());
        assert_eq!(
            relay_status_line(&hub, None),
            "relay: 1 hub connection, 2 sessions, backplane DOWN"
        );
        assert_eq!(
            status_line(&m, 0, Some("reload rejected: a.toml:3:1\nbad")),
            "no camera (retrying /dev/video0 (YUYV)), 0 viewers; reload rejected: a.toml:3:1 bad"
        );
    }
}
