//! WHEP (RFC 9725) over HTTP: `POST /whep`, `PATCH`/`DELETE /whep/{id}`, `OPTIONS`.
//!
//! Written as functions from `http::Request<Bytes>` to `http::Response<Full<Bytes>>` so the
//! router mounts them as they are; the engine does the WebRTC. The router checks the token and
//! reads the body (within `[server] max_body_bytes`) before [`Whep::handle`] sees a request. [`check_if_match`] and
//! [`route`] are the pure bookkeeping (ETag rules, paths), unit-tested below.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::ice_servers::IceServers;
use super::{RtcError, RtcHandle, ViewerId, ViewerKind};
use crate::config::Config;
use crate::response::{insert_header as insert, method_not_allowed, text, Body};

/// Seconds a client over `max_viewers` is told to wait.
pub const RETRY_AFTER_SECS: u32 = 5;
const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// What WHEP needs besides the engine.
#[derive(Debug, Clone)]
pub struct WhepSettings {
    /// `[server] max_body_bytes`.
    pub max_body_bytes: usize,
    /// `[ice]` servers, sent to clients as `Link: <…>; rel="ice-server"` headers.
    pub ice_servers: IceServers,
}

impl WhepSettings {
    /// From `[server]` and `[ice]`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_body_bytes: config.server.max_body_bytes,
            ice_servers: IceServers::from_config(&config.ice),
        }
    }
}

/// Which WHEP endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/whep`
    Endpoint,
    /// `/whep/{id}`
    Resource(ViewerId),
    /// `/whep/…` that is no viewer id.
    Unknown,
}

/// Map a path to a WHEP route; `None` when the path is not WHEP's.
pub fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/whep")?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Some(Route::Endpoint);
    }
    let id = rest.strip_prefix('/')?;
    Some(ViewerId::parse(id).map_or(Route::Unknown, Route::Resource))
}

/// RFC 9725 §4.3.1 with RFC 9110 §13.1.1: PATCH must carry `If-Match`; `*` or the current
/// ETag passes, anything else is stale.
pub fn check_if_match(etag: &str, if_match: Option<&str>) -> Result<(), RtcError> {
    let Some(if_match) = if_match else {
        return Err(RtcError::PreconditionRequired);
    };
    let ok = if_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag);
    if ok {
        Ok(())
    } else {
        Err(RtcError::PreconditionFailed)
    }
}

/// WHEP endpoint: one per daemon, cheap to clone.
#[derive(Clone)]
pub struct Whep {
    rtc: RtcHandle,
    settings: std::sync::Arc<WhepSettings>,
}

impl Whep {
    /// WHEP on top of the engine behind `rtc`.
    pub fn new(rtc: RtcHandle, settings: WhepSettings) -> Self {
        Self {
            rtc,
            settings: std::sync::Arc::new(settings),
        }
    }

    /// Add the `[ice]` servers as `Link: <url>; rel="ice-server"` headers (RFC 9725 §4.6),
    /// TURN REST credentials made now. Only for clients that passed the access check: they
    /// carry TURN credentials.
    pub fn add_ice_links(&self, h: &mut HeaderMap) {
        if self.settings.ice_servers.is_empty() {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for v in self.settings.ice_servers.link_values(now) {
            match HeaderValue::from_str(&v) {
                Ok(v) => {
                    h.append(header::LINK, v);
                }
                Err(_) => tracing::warn!(
                    "an [ice] server's URL or credentials cannot be sent in a header"
                ),
            }
        }
    }

    /// Serve a request whose path [`route`] accepted, once the router has checked its token
    /// and read its body. CORS headers are the router's job.
    pub async fn handle(&self, req: Request<Bytes>) -> Response<Body> {
        let Some(route) = route(req.uri().path()) else {
            return text(StatusCode::NOT_FOUND, "not a WHEP path");
        };
        if req.method() == Method::OPTIONS {
            return options(route);
        }
        if req.body().len() > self.settings.max_body_bytes {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "body exceeds max_body_bytes");
        }
        match (route, req.method()) {
            (Route::Endpoint, &Method::POST) => self.post(req).await,
            (Route::Resource(id), &Method::PATCH) => self.patch(id, req).await,
            (Route::Resource(id), &Method::DELETE) => match self.rtc.close(id).await {
                Ok(()) => text(StatusCode::OK, ""),
                Err(e) => error(e),
            },
            (Route::Unknown, _) => text(StatusCode::NOT_FOUND, "no such WHEP resource"),
            (Route::Endpoint, _) => method_not_allowed("OPTIONS, POST"),
            (Route::Resource(_), _) => method_not_allowed("OPTIONS, PATCH, DELETE"),
        }
    }

    async fn post(&self, req: Request<Bytes>) -> Response<Body> {
        if !content_type_is(req.headers(), SDP) {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/sdp",
            );
        }
        let Ok(offer) = String::from_utf8(req.into_body().to_vec()) else {
            return text(StatusCode::BAD_REQUEST, "unparsable SDP offer: not UTF-8");
        };
        match self.rtc.answer(offer, ViewerKind::Whep).await {
            Ok(a) => {
                let mut r = Response::new(Full::new(Bytes::from(a.sdp)));
                *r.status_mut() = StatusCode::CREATED;
                let h = r.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
                insert(h, header::LOCATION, &format!("/whep/{}", a.id));
                insert(h, header::ETAG, &a.etag);
                h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
                self.add_ice_links(h);
                r
            }
            Err(e) => error(e),
        }
    }

    async fn patch(&self, id: ViewerId, req: Request<Bytes>) -> Response<Body> {
        if !content_type_is(req.headers(), SDPFRAG) {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/trickle-ice-sdpfrag",
            );
        }
        let if_match = req
            .headers()
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Ok(frag) = std::str::from_utf8(req.body()) else {
            return text(StatusCode::BAD_REQUEST, "fragment is not UTF-8");
        };
        match self.rtc.patch(id, if_match, frag).await {
            Ok(late) if late.is_empty() => text(StatusCode::NO_CONTENT, ""),
            // Server candidates found after the answer go back in the response (RFC 9725
            // §4.3.1: 200 with a trickle fragment).
            Ok(late) => {
                let body: String = late
                    .iter()
                    .map(|c| format!("a={}\r\n", c.to_sdp_string()))
                    .collect();
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
                r
            }
            Err(e) => error(e),
        }
    }
}

/// `OPTIONS` on a WHEP path: what it allows and accepts.
pub fn options(route: Route) -> Response<Body> {
    let mut r = text(StatusCode::NO_CONTENT, "");
    let h = r.headers_mut();
    match route {
        Route::Endpoint => {
            h.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
            h.insert("accept-post", HeaderValue::from_static(SDP));
        }
        _ => {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("OPTIONS, PATCH, DELETE"),
            );
            h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
        }
    }
    r
}

/// The HTTP status for each engine error (400 and 406 say why in the body).
pub fn status_of(e: &RtcError) -> StatusCode {
    match e {
        RtcError::BadOffer(_) | RtcError::BadFragment(_) => StatusCode::BAD_REQUEST,
        RtcError::NoVideo | RtcError::NoH264 | RtcError::NothingToSend => {
            StatusCode::NOT_ACCEPTABLE
        }
        RtcError::Full { .. } | RtcError::Stopped | RtcError::NoRandomness(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RtcError::NotFound => StatusCode::NOT_FOUND,
        RtcError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        RtcError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
    }
}

fn error(e: RtcError) -> Response<Body> {
    let mut r = text(status_of(&e), e.to_string());
    if matches!(e, RtcError::Full { .. }) {
        insert(
            r.headers_mut(),
            header::RETRY_AFTER,
            &RETRY_AFTER_SECS.to_string(),
        );
    }
    r
}

fn content_type_is(h: &HeaderMap, want: &str) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let id = ViewerId::random().unwrap();
        assert_eq!(route("/whep"), Some(Route::Endpoint));
        assert_eq!(route("/whep/"), Some(Route::Endpoint));
        assert_eq!(route(&format!("/whep/{id}")), Some(Route::Resource(id)));
        assert_eq!(route("/whep/nope"), Some(Route::Unknown));
        assert_eq!(route("/whepx"), None);
        assert_eq!(route("/"), None);
    }

    #[test]
    fn if_match_rules() {
        let etag = "\"abc\"";
        assert_eq!(
            check_if_match(etag, None),
            Err(RtcError::PreconditionRequired)
        );
        assert_eq!(check_if_match(etag, Some("\"abc\"")), Ok(()));
        assert_eq!(check_if_match(etag, Some("W/\"abc\"")), Ok(()));
        assert_eq!(check_if_match(etag, Some("*")), Ok(()));
        assert_eq!(check_if_match(etag, Some("\"x\", \"abc\"")), Ok(()));
        assert_eq!(
            check_if_match(etag, Some("\"old\"")),
            Err(RtcError::PreconditionFailed)
        );
        assert_eq!(
            check_if_match(etag, Some("")),
            Err(RtcError::PreconditionFailed)
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of(&RtcError::BadOffer("x".into())), 400);
        assert_eq!(status_of(&RtcError::NoVideo), 406);
        assert_eq!(status_of(&RtcError::NoH264), 406);
        assert_eq!(status_of(&RtcError::Full { max: 1 }), 503);
        assert_eq!(status_of(&RtcError::PreconditionFailed), 412);
        assert_eq!(status_of(&RtcError::PreconditionRequired), 428);
        assert_eq!(status_of(&RtcError::NotFound), 404);
        let r = error(RtcError::Full { max: 1 });
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    }

    #[test]
    fn options_advertises_sdp() {
        let r = options(Route::Endpoint);
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers()["accept-post"], SDP);
        assert!(content_type_is(
            &{
                let mut h = HeaderMap::new();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/SDP; charset=x"),
                );
                h
            },
            SDP
        ));
    }
}
