//! SnapRTC signal payloads: simple-peer's signal objects, JSON-encoded and usually packed with
//! lz-string's `compressToEncodedURIComponent`. Pure.
//!
//! The built-in capture member decodes what the initiator sends (`signalCapture(payload)`) and
//! answers in the same encoding it came in (`signalInitiator(payload)`).

use serde::{Deserialize, Serialize};

/// How a payload was encoded, so the reply can use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `LZString.compressToEncodedURIComponent(JSON.stringify(signal))` (SnapRTC).
    LzUri,
    /// Plain `JSON.stringify(signal)`.
    Json,
}

/// A simple-peer signal, as far as the capture side cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// An SDP offer (with every candidate when the initiator uses `trickle: false`).
    Offer { sdp: String },
    /// An SDP answer (what the capture side sends).
    Answer { sdp: String },
    /// A trickled ICE candidate (`{"type":"candidate","candidate":{...}}`); ignored, since the
    /// answer already carries every server candidate and peer-reflexive discovery covers the rest.
    Candidate,
    /// `{"renegotiate":true}`, `{"type":"renegotiate"}` or `{"type":"transceiverRequest",…}`:
    /// accepted, nothing to do.
    Renegotiate,
    /// Anything else with a `type` this side does not act on.
    Other(String),
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not lz-string (encoded URI component) or JSON")]
    Undecodable,
    #[error("payload is not a simple-peer signal: {0}")]
    NotASignal(String),
}

#[derive(Deserialize)]
struct WireSignal {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    sdp: Option<String>,
    #[serde(default)]
    renegotiate: Option<bool>,
    #[serde(default)]
    candidate: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct WireSdp<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    sdp: &'a str,
}

/// Decode a payload string (the JSON string's value, not its quoted form).
pub fn decode(payload: &str) -> Result<(Signal, Encoding), PayloadError> {
    let trimmed = payload.trim_start();
    let (json, encoding) = if trimmed.starts_with('{') {
        (trimmed.to_owned(), Encoding::Json)
    } else {
        let wide = lz_str::decompress_from_encoded_uri_component(payload)
            .ok_or(PayloadError::Undecodable)?;
        let text = String::from_utf16(&wide).map_err(|_| PayloadError::Undecodable)?;
        (text, Encoding::LzUri)
    };
    let wire: WireSignal =
        serde_json::from_str(&json).map_err(|e| PayloadError::NotASignal(e.to_string()))?;
    let signal = match (wire.kind.as_deref(), wire.sdp) {
        (Some("offer"), Some(sdp)) => Signal::Offer { sdp },
        (Some("answer"), Some(sdp)) => Signal::Answer { sdp },
        (Some("offer" | "answer"), None) => {
            return Err(PayloadError::NotASignal("no 'sdp'".into()))
        }
        (Some("candidate"), _) => Signal::Candidate,
        (Some("renegotiate" | "transceiverRequest"), _) => Signal::Renegotiate,
        (Some(other), _) => Signal::Other(other.to_owned()),
        (None, _) if wire.renegotiate == Some(true) => Signal::Renegotiate,
        (None, _) if wire.candidate.is_some() => Signal::Candidate,
        (None, _) => return Err(PayloadError::NotASignal("no 'type'".into())),
    };
    Ok((signal, encoding))
}

/// Encode an answer for `signalInitiator`, in `encoding`.
pub fn encode_answer(sdp: &str, encoding: Encoding) -> String {
    let json = serde_json::to_string(&WireSdp {
        kind: "answer",
        sdp,
    })
    .unwrap_or_default();
    match encoding {
        Encoding::Json => json,
        Encoding::LzUri => lz_str::compress_to_encoded_uri_component(json.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lz_offer_round_trips() {
        let json = r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}"#;
        let packed = lz_str::compress_to_encoded_uri_component(json);
        let (signal, enc) = decode(&packed).unwrap();
        assert_eq!(enc, Encoding::LzUri);
        assert_eq!(
            signal,
            Signal::Offer {
                sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into()
            }
        );
        let answer = encode_answer("v=0\r\n", Encoding::LzUri);
        let (back, _) = decode(&answer).unwrap();
        assert_eq!(
            back,
            Signal::Answer {
                sdp: "v=0\r\n".into()
            }
        );
    }

    #[test]
    fn known_lz_string_vector_from_the_js_library() {
        // LZString.compressToEncodedURIComponent('{"type":"offer","sdp":"x"}') in lz-string 1.5.
        let packed = lz_str::compress_to_encoded_uri_component(r#"{"type":"offer","sdp":"x"}"#);
        assert_eq!(
            decode(&packed).unwrap().0,
            Signal::Offer { sdp: "x".into() }
        );
    }

    #[test]
    fn plain_json_is_accepted_and_answered_in_json() {
        let (signal, enc) = decode(r#"{"type":"offer","sdp":"s"}"#).unwrap();
        assert_eq!(
            (signal, enc),
            (Signal::Offer { sdp: "s".into() }, Encoding::Json)
        );
        assert_eq!(
            encode_answer("a", Encoding::Json),
            r#"{"type":"answer","sdp":"a"}"#
        );
    }

    #[test]
    fn other_simple_peer_signals_are_accepted() {
        assert_eq!(
            decode(r#"{"type":"candidate","candidate":{"candidate":"x"}}"#)
                .unwrap()
                .0,
            Signal::Candidate
        );
        assert_eq!(
            decode(r#"{"candidate":{"candidate":"x","sdpMid":"0"}}"#)
                .unwrap()
                .0,
            Signal::Candidate
        );
        assert_eq!(
            decode(r#"{"renegotiate":true}"#).unwrap().0,
            Signal::Renegotiate
        );
        assert_eq!(
            decode(r#"{"type":"transceiverRequest","transceiverRequest":{"kind":"video"}}"#)
                .unwrap()
                .0,
            Signal::Renegotiate
        );
        assert_eq!(
            decode(r#"{"type":"pranswer","sdp":"x"}"#).unwrap().0,
            Signal::Other("pranswer".into())
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "%%%",
            "{",
            "{}",
            r#"{"type":"offer"}"#,
            "N4Ig",
            "\u{fffd}",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(s in "\\PC{0,200}") {
            let _ = decode(&s);
        }

        #[test]
        fn decode_never_panics_on_uri_alphabet(s in "[A-Za-z0-9+$-]{0,300}") {
            let _ = decode(&s);
        }
    }
}
