//! One peer: its `Rtc`, the video it is sent, its data channels and whether it is alive.
//!
//! The viewer does no IO. The engine feeds it inputs and calls [`Viewer::drain`] after each
//! one; `drain` hands back datagrams to send and [`ViewerEvent`]s for the engine (keyframe and
//! still requests), and remembers str0m's next timeout.

use std::time::{Duration, Instant};

use str0m::channel::ChannelId;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, MediaTime, Mid, Pt};
use str0m::net::Transmit;
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use super::{ViewerId, ViewerKind};
use crate::media::{EncodedFrame, KeyframeCause};

/// Stills a viewer may have in flight at once; more `snap`s get a "busy" reply.
pub const MAX_PENDING_STILLS: usize = 2;

/// Most a player should buffer before rendering (RTP playout-delay extension).
const PLAYOUT_DELAY_MAX: MediaTime = MediaTime::from_millis(100);

/// An encoded frame as viewers are written it: the bytes shared (one copy for every viewer),
/// the RTP time in 90 kHz ticks.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    pub data: std::sync::Arc<[u8]>,
    pub keyframe: bool,
    pub ticks: u64,
}

impl VideoFrame {
    pub fn new(frame: &EncodedFrame) -> Self {
        Self {
            data: std::sync::Arc::from(&frame.data[..]),
            keyframe: frame.keyframe,
            ticks: (frame.timestamp.as_micros() * 9 / 100) as u64,
        }
    }
}

/// What a viewer wants from the engine after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerEvent {
    /// ICE and DTLS are up: video may flow.
    Connected,
    /// The peer asked for a keyframe (PLI/FIR).
    Keyframe(KeyframeCause),
    /// Send a still of at most `max_bytes` on channel `channel`.
    Still {
        channel: ChannelId,
        max_bytes: usize,
    },
}

/// One WebRTC peer.
pub struct Viewer {
    pub id: ViewerId,
    pub kind: ViewerKind,
    pub rtc: Rtc,
    /// WHEP ETag of the ICE session.
    pub etag: String,
    /// Video m-line we send on, with the negotiated H.264 payload type.
    video: Option<(Mid, Option<Pt>)>,
    /// Largest data channel message the peer takes (capped at `MAX_STILL_BYTES`).
    max_message: usize,
    snapshot_on_connect: bool,
    /// The offer had H.264 video (known before str0m reports the m-line).
    expects_video: bool,
    connected: bool,
    /// Skip frames until an IDR (joined mid-GOP).
    needs_keyframe: bool,
    /// Last datagram from the peer (or creation): silence beyond `silence_timeout` ends it.
    last_rx: Instant,
    silence_timeout: Duration,
    /// str0m's next timeout.
    next_timeout: Instant,
    pending_stills: usize,
    /// First time this viewer was written a frame (for time-to-first-frame logs).
    pub created: Instant,
    pub frames_sent: u64,
    pub stills_sent: u64,
    pub bytes_out: u64,
}

/// How a viewer behaves (from the engine's settings and the peer's offer).
#[derive(Debug, Clone, Copy)]
pub struct ViewerOptions {
    /// Largest data channel message the peer takes (capped at `MAX_STILL_BYTES`).
    pub max_message: usize,
    /// Send a still when a data channel opens.
    pub snapshot_on_connect: bool,
    /// Remove the viewer after this long without a datagram from it.
    pub silence_timeout: Duration,
    /// The offer has H.264 video: the viewer will take frames once connected (str0m reports
    /// the video m-line only then).
    pub expects_video: bool,
}

impl Viewer {
    pub fn new(
        id: ViewerId,
        kind: ViewerKind,
        rtc: Rtc,
        etag: String,
        opts: ViewerOptions,
        now: Instant,
    ) -> Self {
        let ViewerOptions {
            max_message,
            snapshot_on_connect,
            silence_timeout,
            expects_video,
        } = opts;
        Self {
            id,
            kind,
            rtc,
            etag,
            video: None,
            max_message,
            snapshot_on_connect,
            expects_video,
            connected: false,
            needs_keyframe: true,
            last_rx: now,
            silence_timeout,
            next_timeout: now,
            pending_stills: 0,
            created: now,
            frames_sent: 0,
            stills_sent: 0,
            bytes_out: 0,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether this viewer takes, or will take once connected, video frames: the engine holds
    /// the frame stream (and so the pipeline encodes) while any viewer does.
    pub fn has_video(&self) -> bool {
        self.video.is_some() || self.expects_video
    }

    /// Whether this viewer takes video frames (connected with a sending video m-line).
    pub fn wants_video(&self) -> bool {
        self.connected && self.video.is_some()
    }

    pub fn next_timeout(&self) -> Instant {
        self.next_timeout
    }

    /// Alive: str0m has not given up, and the peer spoke within the silence timeout.
    pub fn is_alive(&self, now: Instant) -> bool {
        self.rtc.is_alive() && now.saturating_duration_since(self.last_rx) < self.silence_timeout
    }

    /// A datagram this viewer accepted (`Rtc::accepts` was true).
    pub fn handle_input(&mut self, input: Input, now: Instant) {
        self.last_rx = now;
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(viewer = %self.id, error = %e, "viewer input failed; disconnecting");
            self.rtc.disconnect();
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(viewer = %self.id, error = %e, "viewer timeout failed; disconnecting");
            self.rtc.disconnect();
        }
    }

    /// Write one live frame (skipped until this viewer's first keyframe).
    pub fn write_frame(&mut self, frame: &VideoFrame, now: Instant) {
        if !self.wants_video() {
            return;
        }
        if self.needs_keyframe {
            if !frame.keyframe {
                return;
            }
            self.needs_keyframe = false;
            tracing::debug!(viewer = %self.id, after = ?now.duration_since(self.created), "first keyframe out");
        }
        self.write_at(frame, frame.ticks, now);
    }

    /// Write a cached frame of the current GOP at RTP time `ticks` (the engine squeezes the
    /// catch-up burst just before the live edge, so the player shows the live picture at once
    /// instead of replaying the GOP). The first one must be the GOP's keyframe.
    pub fn write_catch_up(&mut self, frame: &VideoFrame, ticks: u64, now: Instant) {
        if !self.wants_video() {
            return;
        }
        if frame.keyframe && self.needs_keyframe {
            self.needs_keyframe = false;
            tracing::debug!(viewer = %self.id, after = ?now.duration_since(self.created), "started from the cached GOP");
        }
        if !self.needs_keyframe {
            self.write_at(frame, ticks, now);
        }
    }

    /// Whether this viewer still waits for a keyframe to start.
    pub fn needs_keyframe(&self) -> bool {
        self.needs_keyframe
    }

    fn write_at(&mut self, frame: &VideoFrame, ticks: u64, now: Instant) {
        let Some((mid, pt)) = &mut self.video else {
            return;
        };
        let Some(writer) = self.rtc.writer(*mid) else {
            return;
        };
        if pt.is_none() {
            *pt = super::h264_pt(writer.payload_params());
        }
        let Some(pt) = *pt else {
            return;
        };
        let writer = writer.playout_delay(MediaTime::ZERO, PLAYOUT_DELAY_MAX);
        match writer.write(pt, now, MediaTime::from_90khz(ticks), frame.data.clone()) {
            Ok(()) => self.frames_sent += 1,
            Err(e) => tracing::debug!(viewer = %self.id, error = %e, "video write failed"),
        }
    }

    /// Send a still (or an error text) on `channel`; returns whether it was sent.
    pub fn send_still(&mut self, channel: ChannelId, still: Result<bytes::Bytes, String>) -> bool {
        self.pending_stills = self.pending_stills.saturating_sub(1);
        let Some(mut ch) = self.rtc.channel(channel) else {
            return false;
        };
        match still {
            Ok(jpeg) if jpeg.len() <= self.max_message => match ch.write(true, &jpeg) {
                Ok(true) => {
                    self.stills_sent += 1;
                    true
                }
                Ok(false) => {
                    let _ = ch.write(
                        false,
                        error_json("busy: data channel buffer full").as_bytes(),
                    );
                    false
                }
                Err(e) => {
                    tracing::debug!(viewer = %self.id, error = %e, "still write failed");
                    false
                }
            },
            Ok(jpeg) => {
                let msg = format!(
                    "still of {} bytes exceeds max-message-size {}",
                    jpeg.len(),
                    self.max_message
                );
                let _ = ch.write(false, error_json(&msg).as_bytes());
                false
            }
            Err(reason) => {
                let _ = ch.write(false, error_json(&reason).as_bytes());
                false
            }
        }
    }

    /// Drain str0m's output after an input: send datagrams with `send`, collect events.
    pub fn drain(
        &mut self,
        now: Instant,
        mut send: impl FnMut(&Transmit),
        events: &mut Vec<ViewerEvent>,
    ) {
        loop {
            if !self.rtc.is_alive() {
                self.next_timeout = now;
                return;
            }
            let out = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(viewer = %self.id, error = %e, "poll_output failed; disconnecting");
                    self.rtc.disconnect();
                    continue;
                }
            };
            match out {
                Output::Timeout(t) => {
                    // Never busy-loop on a timeout in the past.
                    self.next_timeout = t.max(now + Duration::from_millis(1));
                    return;
                }
                Output::Transmit(t) => {
                    self.bytes_out += t.contents.len() as u64;
                    send(&t);
                }
                Output::Event(e) => self.handle_event(e, events),
            }
        }
    }

    fn handle_event(&mut self, e: Event, events: &mut Vec<ViewerEvent>) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.needs_keyframe = true;
                events.push(ViewerEvent::Connected);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                tracing::debug!(viewer = %self.id, "ICE disconnected");
            }
            Event::MediaAdded(m) => {
                let sends = matches!(m.direction, Direction::SendOnly | Direction::SendRecv);
                if m.kind == MediaKind::Video && sends && self.video.is_none() {
                    self.video = Some((m.mid, None));
                }
            }
            Event::KeyframeRequest(req) => {
                let cause = match req.kind {
                    KeyframeRequestKind::Pli => KeyframeCause::Pli,
                    KeyframeRequestKind::Fir => KeyframeCause::Fir,
                };
                events.push(ViewerEvent::Keyframe(cause));
            }
            Event::ChannelOpen(id, label) => {
                tracing::debug!(viewer = %self.id, %label, "data channel open");
                if self.snapshot_on_connect {
                    self.want_still(id, events);
                }
            }
            Event::ChannelData(d) => {
                if d.binary {
                    self.reply_error(
                        d.id,
                        "binary messages are not understood; send the text \"snap\"",
                    );
                } else if d.data.trim_ascii() == b"snap" {
                    self.want_still(d.id, events);
                } else {
                    self.reply_error(d.id, "unknown command; send the text \"snap\"");
                }
            }
            _ => {}
        }
    }

    fn want_still(&mut self, channel: ChannelId, events: &mut Vec<ViewerEvent>) {
        if self.pending_stills >= MAX_PENDING_STILLS {
            self.reply_error(channel, "busy: a still is already on its way");
            return;
        }
        self.pending_stills += 1;
        events.push(ViewerEvent::Still {
            channel,
            max_bytes: self.max_message,
        });
    }

    fn reply_error(&mut self, channel: ChannelId, msg: &str) {
        if let Some(mut ch) = self.rtc.channel(channel) {
            let _ = ch.write(false, error_json(msg).as_bytes());
        }
    }
}

/// `{"error":"…"}` as sent on the data channel.
pub fn error_json(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_are_json() {
        let v: serde_json::Value = serde_json::from_str(&error_json("a \"b\"")).unwrap();
        assert_eq!(v["error"], "a \"b\"");
    }
}
