//! The HTTP shell: hyper 1 routes, CORS and auth. Every handler is a thin adapter that hands
//! the work to its owner (hub task, RTC engine, media pipeline).
//!
//! | route                         | what                                                     |
//! |-------------------------------|----------------------------------------------------------|
//! | `GET /health`                 | 200, a timestamp and the version (JSON with `Accept: application/json`) |
//! | `POST {hub}/negotiate`        | SignalR negotiate (v1), WebSockets only                  |
//! | `GET {hub}?id=TOKEN`          | SignalR WebSocket                                        |
//! | `OPTIONS *`                   | CORS preflight for the listed origins                    |
//! | `GET /`                       | the viewer page (`src/web/index.html`)                   |
//! | `GET /snapshot.jpg`           | the latest picture as a JPEG (auth as the hub; 503 if none yet) |
//! | `GET /metrics`                | Prometheus text                                          |
//! | `POST /whep`, `PATCH`/`DELETE /whep/{id}` | WHEP (`rtc::whep`)                           |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::auth::{query_param, Auth};
use crate::config::Config;
use crate::signaling::hub::AdmissionError;
use crate::signaling::ws::ServiceError;
use crate::signaling::SignalingHandle;

/// Response body type of every route.
pub type Body = Full<Bytes>;

/// What the routes need; built once by the daemon.
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Auth,
    pub signaling: SignalingHandle,
    /// The WebRTC engine (viewer counts) and its WHEP endpoint.
    pub rtc: crate::rtc::RtcHandle,
    pub whep: crate::rtc::whep::Whep,
    /// The camera pipeline (status and counters for `/health` and `/metrics`).
    pub media: crate::media::MediaHandle,
}

/// Accept HTTP connections until `cancel` fires. Connection tasks are tracked by `tracker`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = cancel.cancelled() => break,
                    }
                }
            },
            _ = cancel.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "http connection ended with an error");
                    }
                }
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

async fn route(req: Request<Incoming>, state: &AppState) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = if req.method() == Method::OPTIONS {
        let mut r = preflight(&req, state);
        if let Some(route) = crate::rtc::whep::route(req.uri().path()) {
            r.headers_mut()
                .extend(crate::rtc::whep::options(route).headers().clone());
        }
        r
    } else {
        dispatch(req, state).await
    };
    if let Some(origin) = origin.filter(|o| origin_allowed(&state.config, o)) {
        add_cors(&mut response, origin);
    }
    response
}

async fn dispatch(req: Request<Incoming>, state: &AppState) -> Response<Body> {
    let path = req.uri().path();
    let hub = state.signaling.hub_path();
    if path == "/health" {
        return match *req.method() {
            Method::GET | Method::HEAD => health(&req, state).await,
            _ => method_not_allowed("GET, HEAD"),
        };
    }
    if path.strip_prefix(hub) == Some("/negotiate") {
        if req.method() != Method::POST {
            return method_not_allowed("POST");
        }
        return negotiate(&req, state).await;
    }
    if path == hub {
        if req.method() != Method::GET {
            return method_not_allowed("GET");
        }
        return upgrade(req, state).await;
    }
    if crate::rtc::whep::route(path).is_some() {
        let limit = state.whep.max_body_bytes();
        return match crate::rtc::whep::read_body(req, limit).await {
            Ok(req) => state.whep.handle(req).await,
            Err(too_large) => too_large,
        };
    }
    if path == "/snapshot.jpg" {
        return match *req.method() {
            Method::GET | Method::HEAD => snapshot(&req, state).await,
            _ => method_not_allowed("GET, HEAD"),
        };
    }
    if path == "/metrics" {
        return match *req.method() {
            Method::GET | Method::HEAD => metrics(state).await,
            _ => method_not_allowed("GET, HEAD"),
        };
    }
    if path == "/" || path == "/index.html" {
        return match *req.method() {
            Method::GET | Method::HEAD => viewer_page(),
            _ => method_not_allowed("GET, HEAD"),
        };
    }
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// Prometheus text: viewers, sessions, frames, keyframes by cause, encode time, camera state,
/// process figures.
async fn metrics(state: &AppState) -> Response<Body> {
    let signaling = state.signaling.stats().await.unwrap_or_default();
    let rtc = state.rtc.stats().await.unwrap_or_default();
    let body = crate::metrics::render(&crate::metrics::Snapshot {
        rtc: &rtc,
        media: state.media.counters(),
        camera: &state.media.status(),
        signaling: &signaling,
        process: &crate::metrics::ProcessStats::sample(),
    });
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The latest picture as a JPEG, made on demand by the pipeline (auth as the hub).
async fn snapshot(req: &Request<Incoming>, state: &AppState) -> Response<Body> {
    if !state.auth.allows(req.headers(), req.uri().query()) {
        return unauthorized();
    }
    still_response(state.media.still(usize::MAX).await)
}

/// `/snapshot.jpg`'s answer to a still (or to why there is none).
fn still_response(still: Result<Bytes, crate::media::StillError>) -> Response<Body> {
    use crate::media::StillError;
    let mut r = match still {
        Ok(jpeg) => {
            let mut r = Response::new(Full::new(jpeg));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
            r
        }
        Err(e @ (StillError::NoFrame | StillError::Stopped)) => {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no picture yet: {e}\n"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The viewer page: one HTML file, plain JS, embedded at build time.
fn viewer_page() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(
        include_str!("web/index.html").as_bytes(),
    )));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn health(req: &Request<Incoming>, state: &AppState) -> Response<Body> {
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let version = env!("CARGO_PKG_VERSION");
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if !wants_json {
        return text(StatusCode::OK, format!("{now} snaprtcd/{version}\n"));
    }
    let stats = state.signaling.stats().await.unwrap_or_default();
    let rtc = state.rtc.stats().await.unwrap_or_default();
    let body = serde_json::json!({
        "status": "ok",
        "time": now,
        "name": crate::discovery::instance_name(
            &state.config.mdns.instance_name,
            &crate::discovery::system_hostname(),
        ),
        "version": version,
        "signaling": { "connections": stats.connections, "sessions": stats.sessions },
        "viewers": rtc.viewers,
        "max_viewers": state.rtc.max_viewers(),
        "auth": state.auth.is_on(),
        "camera": camera_json(&state.media.status()),
    });
    json(StatusCode::OK, &body)
}

fn camera_json(c: &crate::media::MediaStatus) -> serde_json::Value {
    serde_json::json!({
        "state": c.state.as_str(),
        "source": c.source,
        "format": c.format,
        "width": c.width,
        "height": c.height,
        "fps": c.fps_measured,
        "encoder": c.encoder,
    })
}

async fn negotiate(req: &Request<Incoming>, state: &AppState) -> Response<Body> {
    if !state.auth.allows(req.headers(), req.uri().query()) {
        return unauthorized();
    }
    match state.signaling.negotiate().await {
        Ok((id, token)) => {
            let mut r = Response::new(Full::new(crate::signaling::signalr::negotiate_response(
                &id, &token,
            )));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => service_error(e),
    }
}

async fn upgrade(req: Request<Incoming>, state: &AppState) -> Response<Body> {
    let headers = req.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let (true, Some(key), true) = (is_websocket, key, version_ok) else {
        return text(
            StatusCode::BAD_REQUEST,
            "this hub speaks WebSockets only: connect with a WebSocket (version 13)\n",
        );
    };
    if !state.auth.allows(headers, req.uri().query()) {
        return unauthorized();
    }
    let token = query_param(req.uri().query(), "id");
    if let Err(e) = state.signaling.check(token.clone()).await {
        return service_error(e);
    }
    let accept = derive_accept_key(key.as_bytes());
    state.signaling.serve(hyper::upgrade::on(req), token);
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

fn service_error(e: ServiceError) -> Response<Body> {
    match e {
        ServiceError::Admission(AdmissionError::UnknownToken) => {
            text(StatusCode::NOT_FOUND, "No Connection with that ID\n")
        }
        ServiceError::Admission(AdmissionError::Full) => {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections; try again later\n",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        ServiceError::Stopped => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

fn preflight(req: &Request<Incoming>, state: &AppState) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let allowed = req
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|o| origin_allowed(&state.config, o));
    if allowed {
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
        );
        let requested = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_static(
                    "Authorization, Content-Type, If-Match, X-Requested-With, X-SignalR-User-Agent",
                )
            });
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    r
}

fn origin_allowed(config: &Config, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    config
        .server
        .cors_origins
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

fn add_cors(response: &mut Response<Body>, origin: HeaderValue) {
    let h = response.headers_mut();
    // The SignalR browser client sends credentials by default, which rules out `*`: echo the
    // origin instead, and say the answer depends on it.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Post, Accept-Patch"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 401 with the scheme the client must use.
pub fn unauthorized() -> Response<Body> {
    let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// 405 naming the methods that work.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {allow}\n"));
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::StillError;
    use http_body_util::BodyExt;

    fn body_text(r: Response<Body>) -> String {
        let bytes = futures_util::FutureExt::now_or_never(r.into_body().collect())
            .expect("a Full body is ready")
            .expect("infallible")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn still_without_a_picture_is_503_with_the_reason() {
        let r = still_response(Err(StillError::NoFrame));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body_text(r), "no picture yet: no frame captured yet\n");
        let r = still_response(Err(StillError::Stopped));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn still_is_an_uncached_jpeg() {
        let r = still_response(Ok(Bytes::from_static(&[0xff, 0xd8, 0xff, 0xd9])));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "image/jpeg");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let r = still_response(Err(StillError::Encode("boom".into())));
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
