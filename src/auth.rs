//! Bearer-token auth for the hub, WHEP and snapshots (`[server] auth = "token"`); go2rtc's
//! API also takes the token as a Basic password.
//!
//! The token lives in `auth_token_file`; when the file is missing it is created with a random
//! token, mode 0600, and its path is logged so the owner can find it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use http::HeaderMap;

/// Why the token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file exists but cannot be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The token file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The token file is missing and cannot be written.
    #[error("cannot create token file {path}: {source}")]
    Create {
        /// The token file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The token file holds no token (an empty token would let anyone in).
    #[error("token file {path} is empty")]
    Empty {
        /// The token file.
        path: PathBuf,
    },
    /// No token is minted without OS randomness: a weak one could be guessed.
    #[error("cannot mint an access token: {0}")]
    Random(#[from] crate::ids::RandomError),
}

/// Who may call the protected endpoints.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Anyone.
    Open,
    /// Holders of this token.
    Token(String),
}

impl Auth {
    /// Read the token from `path`, creating it when missing. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Auth, bool), TokenError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let token = text.trim().to_owned();
                if token.is_empty() {
                    return Err(TokenError::Empty {
                        path: path.to_owned(),
                    });
                }
                Ok((Auth::Token(token), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = crate::ids::random_token()?;
                let create = |e| TokenError::Create {
                    path: path.to_owned(),
                    source: e,
                };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(create)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(create)?;
                writeln!(file, "{token}").map_err(create)?;
                Ok((Auth::Token(token), true))
            }
            Err(e) => Err(TokenError::Read {
                path: path.to_owned(),
                source: e,
            }),
        }
    }

    /// Is this request allowed? Accepts `Authorization: Bearer T` and `?access_token=T` (what
    /// the SignalR client's `accessTokenFactory` sends on WebSocket URLs).
    pub fn allows(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        let Auth::Token(expected) = self else {
            return true;
        };
        let from_header = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        if from_header.is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes())) {
            return true;
        }
        query_param(query, "access_token")
            .is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
    }

    /// [`Auth::allows`], or the token as the password of `Authorization: Basic` (any user
    /// name): what go2rtc's clients send, since they take credentials from the server URL
    /// (`http://user:TOKEN@camera.local:8080`).
    pub fn allows_with_basic(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        let Auth::Token(expected) = self else {
            return true;
        };
        if self.allows(headers, query) {
            return true;
        }
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b64| basic_password(b64.trim()))
            .is_some_and(|p| constant_time_eq(&p, expected.as_bytes()))
    }

    /// Whether requests need the token.
    pub fn is_on(&self) -> bool {
        matches!(self, Auth::Token(_))
    }
}

/// Compare without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The password of Basic credentials (`base64(user:password)`), if they decode. The header is
/// bounded by `[server] max_header_bytes` before it gets here.
fn basic_password(b64: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b64.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in b64.bytes().take_while(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    let colon = out.iter().position(|&b| b == b':')?;
    Some(out.split_off(colon + 1))
}

/// The first value of `name` in a query string, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_header_or_query() {
        let auth = Auth::Token("s3cret".into());
        let mut h = HeaderMap::new();
        assert!(!auth.allows(&h, None));
        assert!(!auth.allows(&h, Some("id=1&access_token=wrong")));
        assert!(auth.allows(&h, Some("id=1&access_token=s3cret")));
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer s3cret".parse().unwrap(),
        );
        assert!(auth.allows(&h, None));
        h.insert(http::header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(!auth.allows(&h, None));
        assert!(Auth::Open.allows(&HeaderMap::new(), None));
    }

    #[test]
    fn go2rtc_clients_may_send_the_token_as_a_basic_password() {
        let auth = Auth::Token("s3cret".into());
        let basic = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        // base64("admin:s3cret"), base64("admin:wrong"), base64(":s3cret")
        assert!(auth.allows_with_basic(&basic("Basic YWRtaW46czNjcmV0"), None));
        assert!(auth.allows_with_basic(&basic("Basic OnMzY3JldA=="), None));
        assert!(!auth.allows_with_basic(&basic("Basic YWRtaW46d3Jvbmc="), None));
        assert!(
            !auth.allows_with_basic(&basic("Basic czNjcmV0"), None),
            "no colon"
        );
        assert!(!auth.allows_with_basic(&basic("Basic !!!!"), None));
        assert!(
            !auth.allows(&basic("Basic YWRtaW46czNjcmV0"), None),
            "other routes: no"
        );
        assert!(auth.allows_with_basic(&basic("Bearer s3cret"), None));
        assert!(auth.allows_with_basic(&HeaderMap::new(), Some("access_token=s3cret")));
        assert!(!auth.allows_with_basic(&HeaderMap::new(), None));
        assert_eq!(basic_password("dTpw").as_deref(), Some(&b"p"[..]));
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("a=1&id=x%2By%3D"), "id").as_deref(),
            Some("x+y=")
        );
        assert_eq!(
            query_param(Some("id=%zz%4"), "id").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(query_param(Some("id"), "id").as_deref(), Some(""));
        assert_eq!(query_param(None, "id"), None);
    }

    #[test]
    fn token_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("snaprtcd-auth-{}", std::process::id()));
        let path = dir.join("sub/token");
        let _ = std::fs::remove_dir_all(&dir);
        let (Auth::Token(first), true) = Auth::load_or_create(&path).unwrap() else {
            panic!("not created")
        };
        assert_eq!(first.len(), 32);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (Auth::Token(again), false) = Auth::load_or_create(&path).unwrap() else {
            panic!("recreated")
        };
        assert_eq!(first, again);
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            Auth::load_or_create(&path),
            Err(TokenError::Empty { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
