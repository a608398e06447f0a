//! go2rtc's WebSocket API (`/api/ws?src=…`), the part its players use for WebRTC: pure.
//!
//! go2rtc's player (`www/video-rtc.js`, also inside the Home Assistant WebRTC card) opens one
//! WebSocket per attempt and sends JSON text messages `{"type": …, "value": …}`:
//!
//! - `webrtc/offer` with the SDP offer as a string; the server answers `webrtc/answer` with the
//!   SDP answer. The newer object form, `webrtc` with `{"type": "offer", "sdp": …}`, is answered
//!   `webrtc` with `{"type": "answer", "sdp": …}`.
//! - `webrtc/candidate` both ways, the value an ICE candidate line (`candidate:…`); the browser
//!   sends an empty one when it has gathered all of its own (end-of-candidates).
//! - `mse`, `hls`, `mp4`, `mjpeg`: other ways to play; snaprtcd serves WebRTC only, so each is
//!   answered with `error` whose value starts with the request's type (`"mse: …"`), which is
//!   how the player tells which attempt failed and falls back.
//! - Any other type is ignored, as go2rtc does.
//!
//! [`Session`] is one WebSocket's protocol state: text and binary frames in, messages to send,
//! an offer to answer, candidates to hand to the viewer, and when to close, out. It holds no
//! socket and no clock. The viewer outlives the socket: the player closes its WebSocket once
//! the video plays.
//!
//! Draining rule: after every `handle_*` call, call [`Session::poll_output`] until it returns
//! `None`, then read [`Session::poll_timeout`] again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The one stream a snaprtcd camera serves: `src=camera`.
pub const STREAM_NAME: &str = "camera";

/// go2rtc's words for a `src` it does not know (its players show them).
pub const STREAM_NOT_FOUND: &str = "stream not found";

/// Limits of one go2rtc WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest text message; a bigger one closes the socket (1009). An offer (at most
    /// `[server] max_sdp_bytes`) grows when JSON escapes its line ends, so the shell passes
    /// twice the SDP budget plus room for the envelope.
    pub max_message_bytes: usize,
    /// Remote candidates held until the answer exists; more are dropped (the engine holds each
    /// viewer to `[server] max_sdp_candidates` in all anyway).
    pub max_pending_candidates: usize,
    /// Time from the socket's opening to its offer; without one by then it is closed.
    pub offer_timeout: Duration,
    /// A socket that sends nothing for this long after its answer is closed. The viewer stays:
    /// it goes away when its peer falls silent.
    pub idle_timeout: Duration,
}

/// A message from the player, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `webrtc/offer` (`v2: false`, value a string) or `webrtc` (`v2: true`, value an object).
    Offer {
        /// The SDP offer.
        sdp: String,
        /// The object form: answer in kind.
        v2: bool,
    },
    /// `webrtc/candidate`: one ICE candidate line; empty means end-of-candidates.
    Candidate(String),
    /// A way to play that snaprtcd does not serve (`mse`, `hls`, `mp4`, `mjpeg`).
    Unserved(Mode),
    /// A type this server has no handler for (go2rtc ignores those too).
    Other,
}

/// The ways to play, other than WebRTC, that go2rtc's player asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Media Source Extensions (fMP4 over this socket).
    Mse,
    /// HLS playlists.
    Hls,
    /// MP4 snapshots over this socket.
    Mp4,
    /// JPEG frames over this socket.
    Mjpeg,
}

impl Mode {
    /// The message type that asks for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mse => "mse",
            Mode::Hls => "hls",
            Mode::Mp4 => "mp4",
            Mode::Mjpeg => "mjpeg",
        }
    }
}

/// A message to the player. Serialized as go2rtc writes them: `{"type": …, "value": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum ServerMessage {
    /// The answer to `webrtc/offer`: the SDP as a string.
    #[serde(rename = "webrtc/answer")]
    Answer(String),
    /// The answer to the object form `webrtc`.
    #[serde(rename = "webrtc")]
    AnswerV2(Description),
    /// One of the server's ICE candidates (`candidate:…`).
    #[serde(rename = "webrtc/candidate")]
    Candidate(String),
    /// What went wrong, starting with the type of the message that failed (`"mse: …"`).
    #[serde(rename = "error")]
    Error(String),
}

/// A session description in the object form (`RTCSessionDescriptionInit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// `offer` or `answer`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The SDP.
    pub sdp: String,
}

impl ServerMessage {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        // A tagged enum of strings always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a message from the player could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON object with a string `type`.
    #[error("not a go2rtc message: {0}")]
    NotJson(String),
    /// A known type whose `value` has the wrong shape.
    #[error("{kind}: bad value: {why}")]
    BadValue {
        /// The message type.
        kind: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// The envelope, with the value left unparsed until the type says what it is.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    value: Option<&'a serde_json::value::RawValue>,
}

/// The `webrtc` object form's value; go2rtc also reads ICE servers from it, which a server with
/// host candidates only has no use for.
#[derive(Deserialize)]
struct OfferV2 {
    #[serde(rename = "type")]
    kind: String,
    sdp: String,
}

/// Decode one text message from the player.
pub fn decode(text: &str) -> Result<ClientMessage, DecodeError> {
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let value = envelope.value.map(|v| v.get());
    let string = |kind: &'static str| -> Result<String, DecodeError> {
        match value {
            None | Some("null") => Ok(String::new()),
            Some(raw) => serde_json::from_str::<String>(raw).map_err(|e| DecodeError::BadValue {
                kind,
                why: e.to_string(),
            }),
        }
    };
    Ok(match envelope.kind.as_ref() {
        "webrtc/offer" => ClientMessage::Offer {
            sdp: string("webrtc/offer")?,
            v2: false,
        },
        "webrtc" => {
            let bad = |why: String| DecodeError::BadValue {
                kind: "webrtc",
                why,
            };
            let offer: OfferV2 =
                serde_json::from_str(value.unwrap_or("null")).map_err(|e| bad(e.to_string()))?;
            if offer.kind != "offer" {
                return Err(bad(format!("type {:?} is not \"offer\"", offer.kind)));
            }
            ClientMessage::Offer {
                sdp: offer.sdp,
                v2: true,
            }
        }
        "webrtc/candidate" => ClientMessage::Candidate(string("webrtc/candidate")?),
        "mse" => ClientMessage::Unserved(Mode::Mse),
        "hls" => ClientMessage::Unserved(Mode::Hls),
        "mp4" => ClientMessage::Unserved(Mode::Mp4),
        "mjpeg" => ClientMessage::Unserved(Mode::Mjpeg),
        _ => ClientMessage::Other,
    })
}

/// What the shell does next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// Write this text message.
    Send(String),
    /// Ask the WebRTC engine for an answer to this offer, then call [`Session::handle_answer`].
    Offer(String),
    /// Hand these remote candidates (`candidate:…` lines) to the viewer.
    Candidates(Vec<String>),
    /// Close the socket with this code and reason, after writing what came before.
    Close(CloseCode, &'static str),
}

/// WebSocket close codes this protocol uses (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: done (idle after the answer, no offer in time).
    Normal,
    /// 1003: a binary message (the protocol is JSON text).
    Unsupported,
    /// 1007: a message that is not JSON.
    InvalidData,
    /// 1009: a message over [`SessionConfig::max_message_bytes`].
    TooBig,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Unsupported => 1003,
            CloseCode::InvalidData => 1007,
            CloseCode::TooBig => 1009,
        }
    }
}

/// What the engine made of the offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The SDP answer (every server candidate in it).
    pub sdp: String,
    /// The server's candidates as `candidate:…` lines, also sent as `webrtc/candidate`.
    pub candidates: Vec<String>,
}

/// Where the one offer of this socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Open, no offer yet.
    AwaitingOffer,
    /// The offer is with the engine (`v2`: answer in the object form).
    Answering { v2: bool },
    /// A viewer exists; candidates go straight to it.
    Answered,
    /// The offer was refused; the socket stays until it is idle, so the player reads why.
    Refused,
    /// Closing: nothing more is read.
    Closed,
}

/// One go2rtc WebSocket's protocol state.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    /// `src` is the camera's stream; otherwise every offer gets `stream not found`.
    known_stream: bool,
    state: State,
    /// Remote candidates that came before the answer.
    pending: Vec<String>,
    /// Candidates dropped because [`SessionConfig::max_pending_candidates`] were waiting.
    dropped_candidates: usize,
    /// The player said it has no more candidates.
    remote_done: bool,
    outputs: VecDeque<Output>,
    /// When the socket is closed unless something happens.
    deadline: Instant,
}

impl Session {
    /// A socket just opened with this `src` query parameter.
    pub fn new(config: SessionConfig, src: Option<&str>, now: Instant) -> Self {
        let deadline = now + config.offer_timeout;
        Self {
            known_stream: src == Some(STREAM_NAME),
            config,
            state: State::AwaitingOffer,
            pending: Vec::new(),
            dropped_candidates: 0,
            remote_done: false,
            outputs: VecDeque::new(),
            deadline,
        }
    }

    /// A text message from the player.
    pub fn handle_text(&mut self, text: &str, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if text.len() > self.config.max_message_bytes {
            return self.close(CloseCode::TooBig, "message too big");
        }
        self.touch(now);
        match decode(text) {
            Ok(ClientMessage::Offer { sdp, v2 }) => self.offer(sdp, v2),
            Ok(ClientMessage::Candidate(c)) => self.candidate(c),
            Ok(ClientMessage::Unserved(mode)) => self.send(ServerMessage::Error(format!(
                "{}: not served by snaprtcd, which plays WebRTC only",
                mode.as_str()
            ))),
            Ok(ClientMessage::Other) => {}
            Err(e @ DecodeError::BadValue { .. }) => self.send(ServerMessage::Error(e.to_string())),
            Err(e @ DecodeError::NotJson(_)) => {
                self.send(ServerMessage::Error(e.to_string()));
                self.close(CloseCode::InvalidData, "not JSON");
            }
        }
    }

    /// A binary message from the player: this protocol has none, so the socket is closed.
    pub fn handle_binary(&mut self, len: usize, _now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if len > self.config.max_message_bytes {
            return self.close(CloseCode::TooBig, "message too big");
        }
        self.close(CloseCode::Unsupported, "binary messages are not used");
    }

    /// A ping, pong or other frame that is not a message: the player is there.
    pub fn handle_activity(&mut self, now: Instant) {
        if self.state != State::Closed {
            self.touch(now);
        }
    }

    /// The engine's answer to [`Output::Offer`], or why it refused the offer.
    pub fn handle_answer(&mut self, answer: Result<Answered, String>, now: Instant) {
        let State::Answering { v2 } = self.state else {
            return;
        };
        self.touch(now);
        match answer {
            Ok(answered) => {
                self.state = State::Answered;
                self.send(if v2 {
                    ServerMessage::AnswerV2(Description {
                        kind: "answer".into(),
                        sdp: answered.sdp,
                    })
                } else {
                    ServerMessage::Answer(answered.sdp)
                });
                for c in answered.candidates {
                    self.send(ServerMessage::Candidate(c));
                }
                if !self.pending.is_empty() {
                    let pending = std::mem::take(&mut self.pending);
                    self.outputs.push_back(Output::Candidates(pending));
                }
            }
            Err(why) => {
                self.state = State::Refused;
                self.pending.clear();
                let kind = if v2 { "webrtc" } else { "webrtc/offer" };
                self.send(ServerMessage::Error(format!("{kind}: {why}")));
            }
        }
    }

    /// Time passed: past the deadline the socket is closed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed || now < self.deadline {
            return;
        }
        let why = match self.state {
            State::AwaitingOffer => "no offer in time",
            _ => "idle",
        };
        self.close(CloseCode::Normal, why);
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call [`Session::handle_timeout`]; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state != State::Closed).then_some(self.deadline)
    }

    /// Has the player said it has no more candidates?
    pub fn remote_candidates_done(&self) -> bool {
        self.remote_done
    }

    /// Candidates dropped because too many came before the answer.
    pub fn dropped_candidates(&self) -> usize {
        self.dropped_candidates
    }

    /// Is the socket done (nothing more will be read)?
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    fn offer(&mut self, sdp: String, v2: bool) {
        let kind = if v2 { "webrtc" } else { "webrtc/offer" };
        if self.state != State::AwaitingOffer {
            return self.send(ServerMessage::Error(format!(
                "{kind}: one offer per connection; open a new WebSocket"
            )));
        }
        if !self.known_stream {
            self.state = State::Refused;
            return self.send(ServerMessage::Error(format!("{kind}: {STREAM_NOT_FOUND}")));
        }
        self.state = State::Answering { v2 };
        self.outputs.push_back(Output::Offer(sdp));
    }

    fn candidate(&mut self, line: String) {
        if line.is_empty() {
            self.remote_done = true;
            return;
        }
        let line = line.strip_prefix("a=").unwrap_or(&line).trim_end();
        if !line.starts_with("candidate:") || line.contains(['\r', '\n']) {
            return self.send(ServerMessage::Error(
                "webrtc/candidate: not an ICE candidate line (candidate:…)".into(),
            ));
        }
        match self.state {
            State::AwaitingOffer | State::Answering { .. } => {
                if self.pending.len() < self.config.max_pending_candidates {
                    self.pending.push(line.to_owned());
                } else {
                    self.dropped_candidates += 1;
                }
            }
            State::Answered => self
                .outputs
                .push_back(Output::Candidates(vec![line.to_owned()])),
            State::Refused | State::Closed => {}
        }
    }

    fn send(&mut self, message: ServerMessage) {
        self.outputs.push_back(Output::Send(message.to_json()));
    }

    fn close(&mut self, code: CloseCode, why: &'static str) {
        self.state = State::Closed;
        self.pending.clear();
        self.outputs.push_back(Output::Close(code, why));
    }

    fn touch(&mut self, now: Instant) {
        if self.state != State::AwaitingOffer {
            self.deadline = now + self.config.idle_timeout;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SessionConfig {
        SessionConfig {
            max_message_bytes: 4096,
            max_pending_candidates: 2,
            offer_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }

    fn drain(s: &mut Session) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn send(json: &str) -> Output {
        Output::Send(json.to_owned())
    }

    fn answered() -> Answered {
        Answered {
            sdp: "v=0\r\nanswer".into(),
            candidates: vec!["candidate:1 1 udp 2130706431 10.0.0.1 50000 typ host".into()],
        }
    }

    #[test]
    fn messages_are_written_as_go2rtc_writes_them() {
        let cases = [
            (
                ServerMessage::Answer("v=0\r\n".into()),
                r#"{"type":"webrtc/answer","value":"v=0\r\n"}"#,
            ),
            (
                ServerMessage::AnswerV2(Description {
                    kind: "answer".into(),
                    sdp: "v=0".into(),
                }),
                r#"{"type":"webrtc","value":{"type":"answer","sdp":"v=0"}}"#,
            ),
            (
                ServerMessage::Candidate("candidate:1 1 udp 1 1.2.3.4 5 typ host".into()),
                r#"{"type":"webrtc/candidate","value":"candidate:1 1 udp 1 1.2.3.4 5 typ host"}"#,
            ),
            (
                ServerMessage::Error("mse: no".into()),
                r#"{"type":"error","value":"mse: no"}"#,
            ),
        ];
        for (message, json) in cases {
            assert_eq!(message.to_json(), json);
        }
    }

    #[test]
    fn messages_are_read_as_video_rtc_js_sends_them() {
        let offer = r#"{"type":"webrtc/offer","value":"v=0\r\nm=video 9 x\r\n"}"#;
        assert_eq!(
            decode(offer),
            Ok(ClientMessage::Offer {
                sdp: "v=0\r\nm=video 9 x\r\n".into(),
                v2: false
            })
        );
        let v2 = r#"{"type":"webrtc","value":{"type":"offer","sdp":"v=0","ice_servers":[]}}"#;
        assert_eq!(
            decode(v2),
            Ok(ClientMessage::Offer {
                sdp: "v=0".into(),
                v2: true
            })
        );
        let c = r#"{"type":"webrtc/candidate","value":"candidate:1 1 udp 1 1.2.3.4 5 typ host"}"#;
        assert_eq!(
            decode(c),
            Ok(ClientMessage::Candidate(
                "candidate:1 1 udp 1 1.2.3.4 5 typ host".into()
            ))
        );
        let end = r#"{"type":"webrtc/candidate","value":""}"#;
        assert_eq!(decode(end), Ok(ClientMessage::Candidate(String::new())));
        let mse = r#"{"type":"mse","value":"avc1.640029,mp4a.40.2"}"#;
        assert_eq!(decode(mse), Ok(ClientMessage::Unserved(Mode::Mse)));
        assert_eq!(
            decode(r#"{"type":"mjpeg"}"#),
            Ok(ClientMessage::Unserved(Mode::Mjpeg))
        );
        assert_eq!(
            decode(r#"{"type":"hls","value":"avc1"}"#),
            Ok(ClientMessage::Unserved(Mode::Hls))
        );
        assert_eq!(
            decode(r#"{"type":"mp4","value":""}"#),
            Ok(ClientMessage::Unserved(Mode::Mp4))
        );
        assert_eq!(
            decode(r#"{"type":"hello","value":[1,2]}"#),
            Ok(ClientMessage::Other)
        );
    }

    #[test]
    fn malformed_messages_are_refused_with_reasons() {
        assert!(matches!(decode("nope"), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode("[1,2]"), Err(DecodeError::NotJson(_))));
        assert!(matches!(
            decode(r#"{"value":"x"}"#),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(
            decode(r#"{"type":"webrtc/offer","value":{"sdp":"v=0"}}"#),
            Err(DecodeError::BadValue {
                kind: "webrtc/offer",
                ..
            })
        ));
        assert!(matches!(
            decode(r#"{"type":"webrtc","value":{"type":"answer","sdp":"v=0"}}"#),
            Err(DecodeError::BadValue { kind: "webrtc", .. })
        ));
        // Deep nesting is skipped over without recursion (serde_json's limit is 128 levels).
        let deep = format!(
            r#"{{"type":"x","value":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(
            decode(&deep),
            Ok(ClientMessage::Other) | Err(DecodeError::NotJson(_))
        ));
        let deep = format!(
            r#"{{"type":"webrtc","value":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(decode(&deep).is_err());
    }

    #[test]
    fn an_offer_is_answered_then_candidates_flow_both_ways() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), Some("camera"), t0);
        // The player trickles before the answer exists: held, then handed over.
        s.handle_text(
            r#"{"type":"webrtc/candidate","value":"candidate:9 1 udp 1 10.0.0.2 4000 typ host"}"#,
            t0,
        );
        s.handle_text(r#"{"type":"webrtc/offer","value":"v=0 offer"}"#, t0);
        assert_eq!(drain(&mut s), vec![Output::Offer("v=0 offer".into())]);
        s.handle_answer(Ok(answered()), t0);
        assert_eq!(
            drain(&mut s),
            vec![
                send(r#"{"type":"webrtc/answer","value":"v=0\r\nanswer"}"#),
                send(
                    r#"{"type":"webrtc/candidate","value":"candidate:1 1 udp 2130706431 10.0.0.1 50000 typ host"}"#
                ),
                Output::Candidates(vec!["candidate:9 1 udp 1 10.0.0.2 4000 typ host".into()]),
            ]
        );
        // After the answer each candidate goes straight on; `a=` is tolerated.
        s.handle_text(
            r#"{"type":"webrtc/candidate","value":"a=candidate:8 1 udp 1 10.0.0.2 4001 typ host"}"#,
            t0,
        );
        assert_eq!(
            drain(&mut s),
            vec![Output::Candidates(vec![
                "candidate:8 1 udp 1 10.0.0.2 4001 typ host".into()
            ])]
        );
        // The empty candidate is end-of-candidates: nothing to send anywhere.
        assert!(!s.remote_candidates_done());
        s.handle_text(r#"{"type":"webrtc/candidate","value":""}"#, t0);
        assert!(s.remote_candidates_done());
        assert_eq!(drain(&mut s), vec![]);
    }

    #[test]
    fn the_object_form_is_answered_in_kind() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), Some("camera"), t0);
        s.handle_text(
            r#"{"type":"webrtc","value":{"type":"offer","sdp":"v=0 offer"}}"#,
            t0,
        );
        assert_eq!(drain(&mut s), vec![Output::Offer("v=0 offer".into())]);
        s.handle_answer(
            Ok(Answered {
                sdp: "v=0 a".into(),
                candidates: vec![],
            }),
            t0,
        );
        assert_eq!(
            drain(&mut s),
            vec![send(
                r#"{"type":"webrtc","value":{"type":"answer","sdp":"v=0 a"}}"#
            )]
        );
    }

    #[test]
    fn unserved_modes_get_an_error_naming_the_mode_first() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), Some("camera"), t0);
        for mode in ["mse", "hls", "mp4", "mjpeg"] {
            s.handle_text(&format!(r#"{{"type":"{mode}","value":"avc1.640029"}}"#), t0);
            let out = drain(&mut s);
            let [Output::Send(json)] = out.as_slice() else {
                panic!("{out:?}");
            };
            // video-rtc.js falls back when the error's value starts with the failed mode.
            let prefix = format!(r#"{{"type":"error","value":"{mode}: "#);
            assert!(json.starts_with(&prefix), "{json}");
        }
        assert!(!s.is_closed());
    }

    #[test]
    fn refused_offers_and_unknown_streams_say_why_and_stay_open() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), Some("camera"), t0);
        s.handle_text(r#"{"type":"webrtc/offer","value":"v=0"}"#, t0);
        let _ = drain(&mut s);
        s.handle_answer(Err("too many viewers (max 1)".into()), t0);
        assert_eq!(
            drain(&mut s),
            vec![send(
                r#"{"type":"error","value":"webrtc/offer: too many viewers (max 1)"}"#
            )]
        );
        // One offer per socket, as the player opens a new one per attempt.
        s.handle_text(r#"{"type":"webrtc/offer","value":"v=0"}"#, t0);
        assert_eq!(
            drain(&mut s),
            vec![send(
                r#"{"type":"error","value":"webrtc/offer: one offer per connection; open a new WebSocket"}"#
            )]
        );

        for src in [None, Some("other")] {
            let mut s = Session::new(config(), src, t0);
            s.handle_text(r#"{"type":"webrtc/offer","value":"v=0"}"#, t0);
            assert_eq!(
                drain(&mut s),
                vec![send(
                    r#"{"type":"error","value":"webrtc/offer: stream not found"}"#
                )]
            );
        }
    }

    #[test]
    fn oversized_binary_and_non_json_messages_close_the_socket() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), Some("camera"), t0);
        s.handle_text(&"x".repeat(4097), t0);
        assert_eq!(
            drain(&mut s),
            vec![Output::Close(CloseCode::TooBig, "message too big")]
        );
        assert!(s.is_closed());
        assert_eq!(s.poll_timeout(), None);
        s.handle_text(r#"{"type":"webrtc/offer","value":"v=0"}"#, t0);
        assert_eq!(drain(&mut s), vec![], "nothing is read after closing");

        let mut s = Session::new(config(), Some("camera"), t0);
        s.handle_binary(10, t0);
        assert_eq!(
            drain(&mut s),
            vec![Output::Close(
                CloseCode::Unsupported,
                "binary messages are not used"
            )]
        );

        let mut s = Session::new(config(), Some("camera"), t0);
        s.handle_text("\u{0}\u{1}garbage", t0);
        let out = drain(&mut s);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            matches!(&out[0], Output::Send(j) if j.starts_with(r#"{"type":"error","value":"not a go2rtc message"#))
        );
        assert_eq!(out[1], Output::Close(CloseCode::InvalidData, "not JSON"));
        assert_eq!(CloseCode::TooBig.code(), 1009);
    }

    #[test]
    fn bad_candidates_are_refused_and_early_ones_are_bounded() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), Some("camera"), t0);
        s.handle_text(
            r#"{"type":"webrtc/candidate","value":"candidate:1 1 udp 1 1.2.3.4 5 typ host\r\na=evil"}"#,
            t0,
        );
        s.handle_text(r#"{"type":"webrtc/candidate","value":"hello"}"#, t0);
        let out = drain(&mut s);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(
            |o| matches!(o, Output::Send(j) if j.contains("webrtc/candidate: not an ICE candidate"))
        ));
        for port in 1..=5 {
            s.handle_text(
                &format!(
                    r#"{{"type":"webrtc/candidate","value":"candidate:1 1 udp 1 1.2.3.4 {port} typ host"}}"#
                ),
                t0,
            );
        }
        assert_eq!(s.dropped_candidates(), 3);
        s.handle_text(r#"{"type":"webrtc/offer","value":"v=0"}"#, t0);
        let _ = drain(&mut s);
        s.handle_answer(
            Ok(Answered {
                sdp: "a".into(),
                candidates: vec![],
            }),
            t0,
        );
        let out = drain(&mut s);
        assert!(
            matches!(out.last(), Some(Output::Candidates(c)) if c.len() == 2),
            "{out:?}"
        );
    }

    #[test]
    fn no_offer_in_time_or_idle_after_the_answer_closes_the_socket() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), Some("camera"), t0);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        // Other messages do not put off the offer deadline.
        s.handle_text(r#"{"type":"mse","value":""}"#, t0 + Duration::from_secs(9));
        let _ = drain(&mut s);
        s.handle_timeout(t0 + Duration::from_secs(9));
        assert_eq!(drain(&mut s), vec![]);
        s.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(
            drain(&mut s),
            vec![Output::Close(CloseCode::Normal, "no offer in time")]
        );

        let mut s = Session::new(config(), Some("camera"), t0);
        s.handle_text(r#"{"type":"webrtc/offer","value":"v=0"}"#, t0);
        s.handle_answer(Ok(answered()), t0 + Duration::from_secs(1));
        let _ = drain(&mut s);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(31)));
        s.handle_activity(t0 + Duration::from_secs(20));
        s.handle_timeout(t0 + Duration::from_secs(31));
        assert_eq!(drain(&mut s), vec![]);
        s.handle_timeout(t0 + Duration::from_secs(50));
        assert_eq!(
            drain(&mut s),
            vec![Output::Close(CloseCode::Normal, "idle")]
        );
    }
}
