//! RTSP authentication with the daemon's token as the password (pure).
//!
//! With `[server] auth = "token"` a client authenticates with any user name and the token as
//! the password, by Basic (RFC 7617) or Digest (RFC 2617, MD5, with or without `qop=auth`).
//! Clients take it from the URL: `rtsp://user:TOKEN@host:8554/stream`. A 401 offers both
//! schemes; clients pick Digest, which never sends the token itself.

use base64::Engine as _;
use md5::{Digest as _, Md5};

/// The realm named in challenges.
pub const REALM: &str = "snaprtcd";

/// The `WWW-Authenticate` values of a 401: Digest first (clients prefer the first they know).
pub fn challenges(nonce: &str) -> [String; 2] {
    [
        format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5"),
        format!("Basic realm=\"{REALM}\""),
    ]
}

/// Does `authorization` (the header's value) carry `token` as the password? `method` and the
/// request's `uri` enter the Digest hash; `nonce` is the one this connection handed out.
pub fn allows(authorization: &str, token: &str, method: &str, nonce: &str) -> bool {
    let (scheme, rest) = authorization
        .trim()
        .split_once(' ')
        .unwrap_or((authorization, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        basic(rest.trim(), token)
    } else if scheme.eq_ignore_ascii_case("digest") {
        digest(rest, token, method, nonce)
    } else {
        false
    }
}

fn basic(encoded: &str, token: &str) -> bool {
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    constant_time_eq(&decoded[colon + 1..], token.as_bytes())
}

fn digest(params: &str, token: &str, method: &str, nonce: &str) -> bool {
    let p = DigestParams::parse(params);
    let (Some(user), Some(uri), Some(response), Some(their_nonce)) = (
        p.get("username"),
        p.get("uri"),
        p.get("response"),
        p.get("nonce"),
    ) else {
        return false;
    };
    if their_nonce != nonce || p.get("realm").is_some_and(|r| r != REALM) {
        return false;
    }
    if p.get("algorithm")
        .is_some_and(|a| !a.eq_ignore_ascii_case("MD5"))
    {
        return false;
    }
    let ha1 = md5_hex(&format!("{user}:{REALM}:{token}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let expected = match p.get("qop") {
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let (Some(nc), Some(cnonce)) = (p.get("nc"), p.get("cnonce")) else {
                return false;
            };
            md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{q}:{ha2}"))
        }
        Some(_) => return false,
    };
    constant_time_eq(
        expected.as_bytes(),
        response.to_ascii_lowercase().as_bytes(),
    )
}

/// `key=value` and `key="value"` pairs of a Digest header, split at commas outside quotes.
struct DigestParams<'a>(Vec<(&'a str, &'a str)>);

impl<'a> DigestParams<'a> {
    /// At most this many pairs are read; a real header has about eight.
    const MAX_PAIRS: usize = 32;

    fn parse(s: &'a str) -> Self {
        let mut pairs = Vec::new();
        let mut rest = s;
        while pairs.len() < Self::MAX_PAIRS {
            rest = rest.trim_start_matches([' ', ',', '\t']);
            let Some(eq) = rest.find('=') else { break };
            let key = rest[..eq].trim();
            rest = &rest[eq + 1..];
            let value;
            if let Some(quoted) = rest.strip_prefix('"') {
                let Some(end) = quoted.find('"') else { break };
                value = &quoted[..end];
                rest = &quoted[end + 1..];
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                value = rest[..end].trim();
                rest = &rest[end..];
            }
            pairs.push((key, value));
        }
        Self(pairs)
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compare without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_takes_any_user_and_the_token_as_password() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(allows(
            &format!("Basic {}", b64("admin:tok")),
            "tok",
            "DESCRIBE",
            "n"
        ));
        assert!(allows(
            &format!("basic {}", b64(":tok")),
            "tok",
            "PLAY",
            "n"
        ));
        assert!(!allows(
            &format!("Basic {}", b64("admin:tok2")),
            "tok",
            "PLAY",
            "n"
        ));
        assert!(!allows(
            &format!("Basic {}", b64("tok")),
            "tok",
            "PLAY",
            "n"
        ));
        assert!(!allows("Basic !!!", "tok", "PLAY", "n"));
        assert!(!allows("Bearer tok", "tok", "PLAY", "n"));
    }

    #[test]
    fn digest_without_qop_matches_rfc_2069() {
        // What ffmpeg sends for rtsp://user:secret@host/stream.
        let ha1 = md5_hex("user:snaprtcd:secret");
        let ha2 = md5_hex("DESCRIBE:rtsp://h/stream");
        let resp = md5_hex(&format!("{ha1}:abc:{ha2}"));
        let h = format!(
            "Digest username=\"user\", realm=\"snaprtcd\", nonce=\"abc\", uri=\"rtsp://h/stream\", response=\"{resp}\""
        );
        assert!(allows(&h, "secret", "DESCRIBE", "abc"));
        assert!(!allows(&h, "secret", "SETUP", "abc"), "method is hashed");
        assert!(!allows(&h, "other", "DESCRIBE", "abc"));
        assert!(!allows(&h, "secret", "DESCRIBE", "stale"), "our nonce only");
    }

    #[test]
    fn digest_with_qop_auth() {
        let ha1 = md5_hex("u:snaprtcd:secret");
        let ha2 = md5_hex("PLAY:/stream");
        let resp = md5_hex(&format!("{ha1}:n1:00000001:c0ffee:auth:{ha2}"));
        let h = format!(
            "Digest username=\"u\",realm=\"snaprtcd\",nonce=\"n1\",uri=\"/stream\",qop=auth,nc=00000001,cnonce=\"c0ffee\",response=\"{}\",algorithm=MD5",
            resp.to_uppercase()
        );
        assert!(allows(&h, "secret", "PLAY", "n1"));
        assert!(!allows(
            &h.replace("qop=auth", "qop=auth-int"),
            "secret",
            "PLAY",
            "n1"
        ));
    }

    #[test]
    fn broken_digest_headers_are_refused_not_a_panic() {
        for h in [
            "Digest",
            "Digest username=\"u",
            "Digest =,=,=,",
            "Digest username=u, response=",
            "Digest a=\"",
        ] {
            assert!(!allows(h, "t", "PLAY", "n"), "{h}");
        }
    }

    #[test]
    fn the_challenge_offers_digest_then_basic() {
        let [d, b] = challenges("xyz");
        assert!(d.starts_with("Digest realm=\"snaprtcd\", nonce=\"xyz\""));
        assert_eq!(b, "Basic realm=\"snaprtcd\"");
    }
}
