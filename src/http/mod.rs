//! The HTTP shell: hyper 1 server, connection limits, the route table, CORS.
//!
//! Every route, with who may call it and how much body it reads, is one row of
//! [`routes::ROUTES`] (docs/security.md shows it). Handlers (`handlers.rs`) are thin adapters
//! that hand the work to its owner (hub task, RTC engine, media pipeline).
//!
//! Limits, all in `[server]`: `max_http_connections` (over it: 503 and close at once),
//! `header_read_timeout` (slowloris), `keepalive_idle_timeout`, `max_header_bytes` (431),
//! `max_body_bytes` (413). A WebSocket leaves the HTTP server when it upgrades, so none of the
//! connection timeouts apply to it; `[signaling]` bounds it.

mod body;
mod conn;
mod go2rtc;
mod handlers;
pub mod mjpeg;
pub mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use self::body::Drainer;
use self::conn::{SharedActivity, Timeouts, Watched};
use self::routes::{BodyUse, Handler, Route};
use crate::config::Config;
use crate::response::{method_not_allowed, text, unauthorized, Body};

/// What the server sends: a whole body (every route but one), or a stream (`/stream.mjpeg`).
type OutBody = http_body_util::Either<Body, mjpeg::StreamingBody>;

/// A whole-body response as the server sends it.
fn whole(r: Response<Body>) -> Response<OutBody> {
    r.map(http_body_util::Either::Left)
}

/// What the routes need; built once by the daemon.
pub struct AppState {
    /// The effective config (limits, CORS, `metrics_auth`).
    pub config: Arc<Config>,
    /// The bearer token, if auth is on.
    pub auth: crate::auth::Auth,
    /// The hub task: negotiate, upgrade, counts.
    pub signaling: crate::signaling::SignalingHandle,
    /// The camera's services; `None` in the relay role (`[camera] source = "none"`), where
    /// only the hub, `/health` and `/metrics` are served.
    pub camera: Option<CameraServices>,
}

/// What the camera role adds to the hub: the engine, WHEP and the pipeline.
pub struct CameraServices {
    /// The WebRTC engine (viewer counts) and its WHEP endpoint.
    pub rtc: crate::rtc::RtcHandle,
    /// WHEP, served by the engine.
    pub whep: crate::rtc::whep::Whep,
    /// The camera pipeline (status and counters for `/health` and `/metrics`).
    pub media: crate::media::MediaHandle,
    /// `GET /stream.mjpeg`: the stills producer's handle.
    pub mjpeg: mjpeg::Mjpeg,
    /// The RTSP server's counters for `/metrics`; `None` with `[rtsp] enabled = false`.
    pub rtsp: Option<Arc<crate::rtsp::RtspCounters>>,
    /// The audio pipeline (state and counters for `/health` and `/metrics`); `None` without
    /// `[audio]`.
    pub audio: Option<crate::audio::AudioHandle>,
    /// The `[[remote]]` hubs dialled out to (state for `/health`, `/metrics` and the status
    /// line); empty without any.
    pub remotes: crate::signaling::dialout::DialoutHandle,
}

/// The server as every connection sees it.
struct Server {
    state: Arc<AppState>,
    /// Connection timeouts from `[server]`.
    timeouts: Timeouts,
    /// One permit per open connection (`max_http_connections`).
    connections: Arc<Semaphore>,
    /// Where refused bodies are drained (the connection tracker, the cancel token).
    drainer: Drainer,
    /// go2rtc WebSockets open now (`/api/ws`), at most `max_viewers`.
    go2rtc_sockets: go2rtc::Sockets,
}

/// Accept HTTP connections until `cancel` fires. Connection tasks (and body drains) are tracked
/// by `tracker`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let server = Arc::new(Server {
        timeouts: Timeouts::from_config(&state.config.server),
        connections: Arc::new(Semaphore::new(state.config.server.max_http_connections)),
        go2rtc_sockets: go2rtc::Sockets::new(state.config.server.max_viewers),
        drainer: Drainer {
            tracker: tracker.clone(),
            cancel: cancel.clone(),
        },
        state,
    });
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
        let Ok(permit) = server.connections.clone().try_acquire_owned() else {
            refuse(stream, peer);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(serve_connection(server.clone(), stream, peer, permit));
    }
}

/// Over `max_http_connections`: a 503 if the socket takes it at once, then close. Never waits.
fn refuse(stream: TcpStream, peer: SocketAddr) {
    debug!(%peer, "http connection refused: max_http_connections reached");
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
}

/// Serve one connection until it ends, its clock runs out, or the server stops.
async fn serve_connection(
    server: Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let activity = SharedActivity::new(Instant::now());
    let service = {
        let (server, activity) = (server.clone(), activity.clone());
        service_fn(move |req| {
            let (server, request) = (server.clone(), activity.request());
            async move {
                let response = route(req, &server).await;
                let response = match response.into_parts() {
                    (parts, http_body_util::Either::Right(stream)) => {
                        // A streamed body is a request in progress until it ends: the idle
                        // clock must not close the connection under it.
                        let stream = stream
                            .map_frame(move |f| {
                                let _ = &request;
                                f
                            })
                            .boxed_unsync();
                        Response::from_parts(parts, http_body_util::Either::Right(stream))
                    }
                    (parts, body) => {
                        drop(request);
                        Response::from_parts(parts, body)
                    }
                };
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // The connection's own clock (`conn::Activity`) does this, and tells idle from slow.
        .header_read_timeout(None)
        .max_header_size(server.state.config.server.max_header_bytes)
        .serve_connection(
            TokioIo::new(Watched::new(stream, activity.clone())),
            service,
        )
        .with_upgrades();
    tokio::pin!(conn);
    let cancel = server.drainer.cancel.clone();
    loop {
        let deadline = activity.with(|a| a.poll_timeout(&server.timeouts));
        let expire = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "http connection ended with an error");
                }
                return;
            }
            () = activity.changed() => {}
            () = expire => {
                let now = Instant::now();
                if let Some(why) = activity.with(|a| a.expiry(now, &server.timeouts)) {
                    debug!(%peer, reason = why.as_str(), "http connection closed");
                    return;
                }
            }
            () = cancel.cancelled() => {
                // A request on its way in is still answered (hyper's graceful shutdown would
                // close a connection whose head it has not read yet): a reload, which stops
                // this server for the next, must not turn a request into a closed connection.
                if activity.with(|a| a.awaits_head())
                    && !finish_head(conn.as_mut(), &activity).await
                {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                return;
            }
        }
    }
}

/// How long a stopping server waits for a connection's owed request head.
const HEAD_GRACE: Duration = Duration::from_millis(500);

/// Drive `conn` until its owed request head has been read, for at most [`HEAD_GRACE`]. `false`
/// when the connection ended meanwhile.
async fn finish_head<F: std::future::Future + ?Sized>(
    mut conn: std::pin::Pin<&mut F>,
    activity: &SharedActivity,
) -> bool {
    let head = async {
        loop {
            tokio::select! {
                _ = conn.as_mut() => return false,
                () = activity.changed() => {
                    if !activity.with(|a| a.awaits_head()) {
                        return true;
                    }
                }
            }
        }
    };
    tokio::time::timeout(HEAD_GRACE, head).await.unwrap_or(true)
}

async fn route(req: Request<Incoming>, server: &Server) -> Response<OutBody> {
    let state = &server.state;
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = if req.method() == Method::OPTIONS {
        let mut r = preflight(&req, state);
        let whep = state
            .camera
            .as_ref()
            .and_then(|_| crate::rtc::whep::route(req.uri().path()));
        if let Some(route) = whep {
            r.headers_mut()
                .extend(crate::rtc::whep::options(route).headers().clone());
            // ICE servers (TURN credentials) only for a client that may use WHEP.
            let authorised = state.auth.allows(req.headers(), req.uri().query());
            if let (crate::rtc::whep::Route::Endpoint, true, Some(camera)) =
                (route, authorised, &state.camera)
            {
                camera.whep.add_ice_links(r.headers_mut());
            }
        }
        whole(r)
    } else {
        dispatch(req, server).await
    };
    if let Some(origin) = origin.filter(|o| origin_allowed(&state.config, o)) {
        add_cors(&mut response, origin);
    }
    response
}

/// Find the route, check the method and the access policy, and only then read a body.
async fn dispatch(req: Request<Incoming>, server: &Server) -> Response<OutBody> {
    let state = &server.state;
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let hub = state.signaling.hub_path();
    let relay = state.camera.is_none();
    let Some(route) = routes::find(req.uri().path(), hub, wants_json, relay) else {
        return whole(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    if !route.allows_method(req.method()) {
        return whole(method_not_allowed(route.methods));
    }
    let allowed = route.access.allows(
        &state.config.server,
        &state.auth,
        req.headers(),
        req.uri().query(),
    );
    if !allowed {
        return whole(unauthorized());
    }
    if route.handler == Handler::Mjpeg {
        return match &state.camera {
            Some(camera) => match camera.mjpeg.respond() {
                Some(stream) => stream.map(http_body_util::Either::Right),
                None => whole(mjpeg::busy()),
            },
            None => whole(text(StatusCode::NOT_FOUND, "not found\n")),
        };
    }
    whole(handle(route, req, server).await)
}

async fn handle(route: &Route, req: Request<Incoming>, server: &Server) -> Response<Body> {
    let state = &server.state;
    match route.handler {
        Handler::Health => handlers::health(),
        Handler::HealthJson => handlers::health_json(state).await,
        Handler::Page => match &state.camera {
            Some(_) => handlers::viewer_page(),
            None => handlers::relay_page(state),
        },
        Handler::Negotiate => handlers::negotiate(state).await,
        Handler::Hub => handlers::upgrade(req, state).await,
        Handler::Metrics => handlers::metrics(state).await,
        // `routes::find` gives camera routes only when there is a camera.
        // Answered in `dispatch` (a streamed body).
        Handler::Mjpeg => text(StatusCode::NOT_FOUND, "not found\n"),
        Handler::Go2rtcInfo
        | Handler::Go2rtcStreams
        | Handler::Go2rtcFrame
        | Handler::Go2rtcWs
        | Handler::Snapshot
        | Handler::Whep => {
            let Some(camera) = &state.camera else {
                return text(StatusCode::NOT_FOUND, "not found\n");
            };
            match route.handler {
                Handler::Go2rtcInfo => return go2rtc::info(&req),
                Handler::Go2rtcStreams => return go2rtc::streams(camera).await,
                Handler::Go2rtcFrame => return go2rtc::frame(&req, camera).await,
                Handler::Go2rtcWs => {
                    let (tracker, cancel) = (&server.drainer.tracker, &server.drainer.cancel);
                    let sockets = &server.go2rtc_sockets;
                    return go2rtc::upgrade(req, state, camera, sockets, tracker, cancel);
                }
                _ => {}
            }
            if route.handler == Handler::Snapshot {
                return handlers::snapshot(camera).await;
            }
            debug_assert_eq!(route.body, BodyUse::Limited);
            let limit = state.config.server.max_body_bytes;
            let within = server.timeouts.header_read;
            match body::read_body(req, limit, within, &server.drainer).await {
                Ok(req) => camera.whep.handle(req).await,
                Err(refused) => refused,
            }
        }
    }
}

fn preflight(req: &Request<Incoming>, state: &AppState) -> Response<Body> {
    let mut r = text(StatusCode::NO_CONTENT, "");
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

fn add_cors<B>(response: &mut Response<B>, origin: HeaderValue) {
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
