//! The route handlers: each a thin adapter that hands the work to its owner (hub task, RTC
//! engine, media pipeline). The dispatcher (`super::dispatch`) has checked the method and the
//! route's access policy before any of these runs.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{AppState, CameraServices};
use crate::auth::query_param;
use crate::response::{json, text, Body};
use crate::signaling::hub::AdmissionError;
use crate::signaling::ws::ServiceError;

/// Prometheus text: viewers, sessions, frames, keyframes by cause, encode time, camera state,
/// process figures.
///
/// In the relay role the camera's figures are zero (no viewers, no frames) and the camera's
/// state and frame rate have no samples.
pub(super) async fn metrics(state: &AppState) -> Response<Body> {
    let signaling = state.signaling.stats().await.unwrap_or_default();
    let (rtc, camera) = match &state.camera {
        Some(c) => (
            c.rtc.stats().await.unwrap_or_default(),
            Some(c.media.status()),
        ),
        None => (crate::rtc::RtcStats::default(), None),
    };
    let no_media = crate::media::MediaCounters::default();
    let remotes = state
        .camera
        .as_ref()
        .map(|c| c.remotes.statuses())
        .unwrap_or_default();
    let audio = state
        .camera
        .as_ref()
        .and_then(|c| c.audio.as_ref())
        .map(crate::audio::AudioHandle::report);
    let body = crate::metrics::render(&crate::metrics::Snapshot {
        rtc: &rtc,
        media: state
            .camera
            .as_ref()
            .map_or(&no_media, |c| c.media.counters()),
        camera: camera.as_ref(),
        signaling: &signaling,
        process: &crate::metrics::ProcessStats::sample(),
        rtsp: state.camera.as_ref().and_then(|c| c.rtsp.as_deref()),
        remotes: &remotes,
        audio: audio.as_ref(),
    });
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The latest picture as a JPEG, made on demand by the pipeline (auth as the hub).
pub(super) async fn snapshot(camera: &CameraServices) -> Response<Body> {
    still_response(camera.media.still(usize::MAX).await)
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
        Err(e @ StillError::Busy) => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
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
pub(super) fn viewer_page() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(
        include_str!("../web/index.html").as_bytes(),
    )));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The seed's answer: a timestamp, plus the version.
pub(super) fn health() -> Response<Body> {
    let now = humantime::format_rfc3339_millis(SystemTime::now());
    let version = env!("CARGO_PKG_VERSION");
    text(StatusCode::OK, format!("{now} snaprtcd/{version}\n"))
}

/// A relay's front page: what it is and where its hub is (it has no viewer page).
pub(super) fn relay_page(state: &AppState) -> Response<Body> {
    let hub = state.signaling.hub_path();
    let version = env!("CARGO_PKG_VERSION");
    text(
        StatusCode::OK,
        format!(
            "snaprtcd/{version} relay: a SnapRTC signaling hub with no camera.\n\
             SignalR hub: {hub}; health: /health; metrics: /metrics.\n"
        ),
    )
}

/// Name, version, role, hub counts, and for a camera its viewers and state, for the viewer
/// page and dashboards.
pub(super) async fn health_json(state: &AppState) -> Response<Body> {
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let stats = state.signaling.stats().await.unwrap_or_default();
    let mut body = serde_json::json!({
        "status": "ok",
        "time": now,
        "name": crate::discovery::instance_name(
            &state.config.mdns.instance_name,
            &crate::discovery::system_hostname(),
        ),
        "version": env!("CARGO_PKG_VERSION"),
        "role": if state.camera.is_some() { "camera" } else { "relay" },
        "signaling": { "connections": stats.connections, "sessions": stats.sessions },
        "auth": state.auth.is_on(),
    });
    if let (Some(b), Some(fields)) = (stats.backplane, body.as_object_mut()) {
        let state = if b.up { "up" } else { "down" };
        fields.insert(
            "backplane".into(),
            serde_json::json!({ "kind": "redis", "state": state }),
        );
    }
    if let (Some(camera), Some(fields)) = (&state.camera, body.as_object_mut()) {
        let rtc = camera.rtc.stats().await.unwrap_or_default();
        fields.insert("viewers".into(), rtc.viewers.into());
        fields.insert("max_viewers".into(), camera.rtc.max_viewers().into());
        fields.insert("camera".into(), camera_json(&camera.media.status()));
        if let Some(audio) = &camera.audio {
            fields.insert("audio".into(), audio_json(&audio.report()));
        }
        let remotes = camera.remotes.statuses();
        if !remotes.is_empty() {
            fields.insert(
                "remotes".into(),
                serde_json::to_value(remotes).unwrap_or_default(),
            );
        }
        fields.insert("ice".into(), ice_json(&state.config.ice, &rtc));
    }
    json(StatusCode::OK, &body)
}

/// `[ice]` at work: the ICE mode, and each STUN client or TURN allocation with its state, the
/// candidate it gives (server-reflexive or relayed address) and its last error.
fn ice_json(ice: &crate::config::IceConfig, rtc: &crate::rtc::RtcStats) -> serde_json::Value {
    let servers: Vec<_> = rtc
        .ice
        .iter()
        .map(|h| {
            serde_json::json!({
                "kind": h.kind,
                "server": h.server,
                "state": h.state,
                "up": h.up,
                "candidate": h.candidate.map(|a| a.to_string()),
                "error": h.error,
                "bytes_relayed": h.bytes_relayed,
            })
        })
        .collect();
    let pairs: serde_json::Map<String, serde_json::Value> = crate::rtc::viewer::PairType::ALL
        .iter()
        .zip(rtc.pair_types)
        .map(|(t, n)| (t.as_str().to_owned(), n.into()))
        .collect();
    serde_json::json!({
        "mode": if ice.full_ice() { "full" } else { "lite" },
        "servers": servers,
        "viewer_pairs": pairs,
    })
}

/// The audio thread: state (`starting`, `capturing`, `lost`, `stopped`), source, counters.
fn audio_json(a: &crate::audio::AudioReport) -> serde_json::Value {
    serde_json::json!({
        "state": a.status.state,
        "source": a.status.source,
        "channels": a.channels,
        "frames": a.frames,
        "silence_frames": a.silence,
        "losses": a.losses,
        "listeners": a.listeners,
        "fec_loss_percent": a.fec_loss_percent,
    })
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

pub(super) async fn negotiate(state: &AppState) -> Response<Body> {
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
            if state.signaling.starts_on_join() {
                // For capture sides that dial out: no need to repeat Sync(session, true).
                r.headers_mut().insert(
                    crate::signaling::remote::START_ON_JOIN_HEADER,
                    HeaderValue::from_static("1"),
                );
            }
            r
        }
        Err(e) => service_error(e),
    }
}

pub(super) async fn upgrade(req: Request<Incoming>, state: &AppState) -> Response<Body> {
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
    let token = query_param(req.uri().query(), "id");
    if let Err(e) = state.signaling.check(token.clone()).await {
        return service_error(e);
    }
    let accept = derive_accept_key(key.as_bytes());
    state.signaling.serve(hyper::upgrade::on(req), token);
    switching_protocols(&accept)
}

/// `101 Switching Protocols` to a WebSocket; `accept` is the `Sec-WebSocket-Accept` derived
/// from the client's key.
pub(super) fn switching_protocols(accept: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
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
    fn busy_still_queue_is_503_retry_after_and_says_busy() {
        let r = still_response(Err(StillError::Busy));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            body_text(r),
            "too many stills are being made; try again shortly\n"
        );
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
