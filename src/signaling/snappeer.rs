//! SnapRTC signal payloads: simple-peer's signal objects, JSON-encoded and usually packed with
//! lz-string's `compressToEncodedURIComponent`. Pure.
//!
//! The built-in capture member decodes what the initiator sends (`signalCapture(payload)`) and
//! answers in the same encoding it came in (`signalInitiator(payload)`).

use serde::{Deserialize, Serialize};

use super::lzstring::{self, LzError};

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
    Offer {
        /// The offer SDP.
        sdp: String,
    },
    /// An SDP answer (what the capture side sends).
    Answer {
        /// The answer SDP.
        sdp: String,
    },
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
    /// Neither lz-string nor JSON; the lz-string decoder says why.
    #[error("payload is not lz-string (encoded URI component) or JSON: {0}")]
    Undecodable(#[from] LzError),
    /// lz-string that decodes to something other than UTF-16 text.
    #[error("payload decodes to invalid UTF-16")]
    NotText,
    /// The decoded signal would be larger than `[signaling] max_payload_bytes`.
    #[error("payload decodes to more than {limit} bytes (signaling.max_payload_bytes)")]
    TooLarge {
        /// The budget in bytes.
        limit: usize,
    },
    /// JSON, but not a simple-peer signal.
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
struct WireError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    error: &'a str,
}

#[derive(Serialize)]
struct WireSdp<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    sdp: &'a str,
}

/// How the payload is encoded: JSON when it starts with `{`, lz-string otherwise.
pub fn encoding_of(payload: &str) -> Encoding {
    if payload.trim_start().starts_with('{') {
        Encoding::Json
    } else {
        Encoding::LzUri
    }
}

/// Decode a payload string (the JSON string's value, not its quoted form) whose signal JSON is
/// at most `max_bytes` long (UTF-8). lz-string is decoded with that budget and stops as soon as
/// the output would pass it, so the work and memory are bounded by `max_bytes` and the input.
pub fn decode(payload: &str, max_bytes: usize) -> Result<(Signal, Encoding), PayloadError> {
    let too_large = PayloadError::TooLarge { limit: max_bytes };
    let encoding = encoding_of(payload);
    let lz_text;
    let json = match encoding {
        Encoding::Json => payload.trim_start(),
        Encoding::LzUri => {
            // A UTF-16 unit is at least one UTF-8 byte: the unit budget is the byte budget.
            let wide = lzstring::decompress_from_encoded_uri_component(payload, max_bytes)
                .map_err(|e| match e {
                    LzError::TooLong { .. } => too_large.clone(),
                    e => PayloadError::Undecodable(e),
                })?;
            lz_text = String::from_utf16(&wide).map_err(|_| PayloadError::NotText)?;
            &lz_text
        }
    };
    if json.len() > max_bytes {
        return Err(too_large);
    }
    let wire: WireSignal =
        serde_json::from_str(json).map_err(|e| PayloadError::NotASignal(e.to_string()))?;
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
    pack(json, encoding)
}

/// Encode `{"type":"error","error":…}` for `signalInitiator`, in `encoding`: the capture side
/// could not use the initiator's signal. It has neither `sdp`, `candidate` nor `renegotiate`,
/// so simple-peer's `signal()` destroys the peer with `ERR_SIGNALING` and the page reports the
/// error instead of waiting for an answer that never comes.
pub fn encode_error(error: &str, encoding: Encoding) -> String {
    let json = serde_json::to_string(&WireError {
        kind: "error",
        error,
    })
    .unwrap_or_default();
    pack(json, encoding)
}

fn pack(json: String, encoding: Encoding) -> String {
    match encoding {
        Encoding::Json => json,
        Encoding::LzUri => {
            let units: Vec<u16> = json.encode_utf16().collect();
            lzstring::compress_to_encoded_uri_component(&units)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 262_144;

    fn decode(payload: &str) -> Result<(Signal, Encoding), PayloadError> {
        super::decode(payload, LIMIT)
    }

    #[test]
    fn payloads_over_the_budget_are_refused_in_either_encoding() {
        let json = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "x".repeat(100));
        assert!(super::decode(&json, json.len()).is_ok());
        assert_eq!(
            super::decode(&json, json.len() - 1),
            Err(PayloadError::TooLarge {
                limit: json.len() - 1
            })
        );
        let packed = lz_str::compress_to_encoded_uri_component(json.as_str());
        assert!(super::decode(&packed, json.len()).is_ok());
        assert_eq!(
            super::decode(&packed, json.len() - 1),
            Err(PayloadError::TooLarge {
                limit: json.len() - 1
            })
        );
        // Multi-byte characters count in UTF-8 bytes, as the limit's name says.
        let wide = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "é".repeat(100));
        let packed = lz_str::compress_to_encoded_uri_component(wide.as_str());
        assert_eq!(
            super::decode(&packed, wide.len() - 1),
            Err(PayloadError::TooLarge {
                limit: wide.len() - 1
            })
        );
    }

    #[test]
    fn an_lz_bomb_is_refused_without_being_expanded() {
        // 27 779 codes that each name the entry being made decode to ~3.9e8 characters.
        let bomb = super::super::lzstring::tests::bomb(27_779);
        assert_eq!(decode(&bomb), Err(PayloadError::TooLarge { limit: LIMIT }));
    }

    #[test]
    fn error_replies_are_not_signals_simple_peer_accepts() {
        let reply = encode_error("payload too large", Encoding::LzUri);
        assert_eq!(
            decode(&reply).unwrap().0,
            Signal::Other("error".into()),
            "{reply}"
        );
        assert_eq!(
            encode_error("x", Encoding::Json),
            r#"{"type":"error","error":"x"}"#
        );
    }

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
