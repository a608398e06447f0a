//! The ICE servers browsers are told about: `[ice]`'s STUN and TURN servers as RFC 9725
//! `Link: <url>; rel="ice-server"` header values, with TURN credentials. An entry with a
//! `secret` (coturn `use-auth-secret`) gets short-lived REST credentials made for each
//! response; the secret itself is never sent.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};

use crate::config::{IceConfig, TurnAuth};

/// The user-name part of REST credentials (`<expiry>:<name>`).
pub const REST_NAME: &str = "snaprtcd";

/// coturn's TURN REST credentials (draft-uberti-behave-turn-rest): user name
/// `<expiry>:<name>`, password base64(HMAC-SHA1(secret, user name)).
pub fn rest_credentials(secret: &str, name: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{name}");
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let password = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    (username, password)
}

/// `[ice]` as browsers get it.
#[derive(Debug, Clone, Default)]
pub struct IceServers {
    stun: Vec<String>,
    turn: Vec<crate::config::TurnServer>,
    ttl: Duration,
}

impl IceServers {
    /// From `[ice]` (validated at load).
    pub fn from_config(ice: &IceConfig) -> Self {
        Self {
            stun: ice.stun_servers.clone(),
            turn: ice.turn_servers.clone(),
            ttl: ice.credential_ttl,
        }
    }

    /// No server configured: no `Link` headers.
    pub fn is_empty(&self) -> bool {
        self.stun.is_empty() && self.turn.is_empty()
    }

    /// One `Link` header value per server (RFC 9725 §4.6), REST credentials valid until
    /// `now_unix + credential_ttl`.
    pub fn link_values(&self, now_unix: u64) -> Vec<String> {
        let mut out: Vec<String> = self
            .stun
            .iter()
            .map(|u| format!("<{u}>; rel=\"ice-server\""))
            .collect();
        let expiry = now_unix.saturating_add(self.ttl.as_secs());
        for t in &self.turn {
            let (username, credential) = match t.auth() {
                TurnAuth::LongTerm {
                    username,
                    credential,
                } => (username.to_owned(), credential.to_owned()),
                TurnAuth::Secret(secret) => rest_credentials(secret, REST_NAME, expiry),
            };
            out.push(format!(
                "<{}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; \
                 credential-type=\"password\"",
                t.url,
                quote(&username),
                quote(&credential)
            ));
        }
        out
    }
}

/// The inside of an HTTP quoted-string (RFC 9110 §5.6.4): `"` and `\` escaped.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::TurnServer;

    #[test]
    fn rest_credentials_match_coturn() {
        // coturn's turnutils / the TURN REST draft: base64(HMAC-SHA1(secret, "expiry:name")).
        // Reference value computed with `printf '%s' 1700000000:snaprtcd | openssl dgst
        // -sha1 -hmac s3cret -binary | base64`.
        let (u, p) = rest_credentials("s3cret", "snaprtcd", 1_700_000_000);
        assert_eq!(u, "1700000000:snaprtcd");
        assert_eq!(p, REFERENCE);
    }

    const REFERENCE: &str = "3dupjQDU8VDKGX37fK9DpL2x2pI=";

    #[test]
    fn links_carry_each_server_and_never_the_secret() {
        let ice = IceConfig {
            stun_servers: vec!["stun:stun.example.org:3478".into()],
            turn_servers: vec![
                TurnServer {
                    url: "turn:t.example.org?transport=udp".into(),
                    username: "u\"1".into(),
                    credential: "p\\w".into(),
                    secret: String::new(),
                },
                TurnServer {
                    url: "turns:t.example.org".into(),
                    secret: "s3cret".into(),
                    ..TurnServer::default()
                },
            ],
            credential_ttl: Duration::from_secs(3600),
            ..IceConfig::default()
        };
        let links = IceServers::from_config(&ice).link_values(1_699_996_400);
        assert_eq!(links.len(), 3);
        assert_eq!(links[0], "<stun:stun.example.org:3478>; rel=\"ice-server\"");
        assert_eq!(
            links[1],
            "<turn:t.example.org?transport=udp>; rel=\"ice-server\"; username=\"u\\\"1\"; \
             credential=\"p\\\\w\"; credential-type=\"password\""
        );
        assert!(
            links[2].contains("username=\"1700000000:snaprtcd\""),
            "{}",
            links[2]
        );
        assert!(links[2].contains(&format!("credential=\"{REFERENCE}\"")));
        assert!(links.iter().all(|l| !l.contains("s3cret")));
        for l in &links {
            http::HeaderValue::from_str(l).unwrap();
        }
        assert!(IceServers::from_config(&IceConfig::default()).is_empty());
    }
}
