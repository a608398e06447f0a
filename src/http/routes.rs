//! The route table: every path the server answers, with its methods, who may call it and how
//! much of its body is read. `docs/security.md` shows this table; a test below keeps them in
//! step.
//!
//! The dispatcher checks, in this order and before any body byte is read: the path (404), the
//! method (405), the access policy (401). Only then does a route with [`BodyUse::Limited`] read
//! its body, within `[server] max_body_bytes` (413).
//!
//! `OPTIONS` on any path is the CORS preflight: open, body ignored (browsers send no
//! credentials on a preflight).

use crate::auth::Auth;
use crate::config::ServerConfig;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who reaches the port.
    Open,
    /// The bearer token when `[server] auth = "token"`.
    Token,
    /// Operational data (counters, camera, viewers): the bearer token when `auth = "token"`
    /// and `metrics_auth = true`.
    Stats,
    /// As [`Access::Token`], or the token as a Basic password: go2rtc's clients (the Home
    /// Assistant WebRTC integration) send the credentials of their server URL that way.
    TokenOrBasic,
}

impl Access {
    /// Is a request with these credentials allowed?
    pub fn allows(
        self,
        server: &ServerConfig,
        auth: &Auth,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> bool {
        match self {
            Access::Open => true,
            Access::Token => auth.allows(headers, query),
            Access::Stats => !server.metrics_auth || auth.allows(headers, query),
            Access::TokenOrBasic => auth.allows_with_basic(headers, query),
        }
    }
}

/// How much of a request body a route reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    /// Never read (hyper closes the connection after the response if one was sent).
    Ignored,
    /// Read whole, up to `[server] max_body_bytes` (more: 413, the rest drained).
    Limited,
}

/// Which handler serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Plain-text `/health`: a timestamp and the version (the seed's answer).
    Health,
    /// JSON `/health`: name, version, viewers, hub counts, camera.
    HealthJson,
    /// SignalR negotiate.
    Negotiate,
    /// The SignalR WebSocket.
    Hub,
    /// WHEP (`rtc::whep`).
    Whep,
    /// The latest picture as a JPEG.
    Snapshot,
    /// JPEG stills as `multipart/x-mixed-replace` (`mjpeg`).
    Mjpeg,
    /// Prometheus text.
    Metrics,
    /// The viewer page.
    Page,
    /// go2rtc's `GET /api`: name and version.
    Go2rtcInfo,
    /// go2rtc's `GET /api/streams`: the camera as one stream.
    Go2rtcStreams,
    /// go2rtc's `GET /api/frame.jpeg?src=camera`: a still.
    Go2rtcFrame,
    /// go2rtc's WebSocket API, `/api/ws?src=camera` (WebRTC only).
    Go2rtcWs,
}

/// Which paths a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMatch {
    /// Exactly this path.
    Exact(&'static str),
    /// `[signaling] hub_path`.
    Hub,
    /// `[signaling] hub_path` + `/negotiate`.
    HubNegotiate,
    /// `/whep` and `/whep/{id}`.
    Whep,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The route as the docs name it.
    pub name: &'static str,
    /// Which paths.
    pub path: PathMatch,
    /// Only for requests with `Accept: application/json` (the JSON `/health`).
    pub json_only: bool,
    /// Methods, as the `Allow` header lists them.
    pub methods: &'static str,
    /// Who may call it.
    pub access: Access,
    /// How much body is read.
    pub body: BodyUse,
    /// Who serves it.
    pub handler: Handler,
    /// Also served in the relay role (`[camera] source = "none"`): the hub, `/health`,
    /// `/metrics` and `/` (which says it is a relay). Camera routes are 404 there.
    pub relay: bool,
}

impl Route {
    /// Does this route take `method`?
    pub fn allows_method(&self, method: &http::Method) -> bool {
        self.methods.split(", ").any(|m| m == method.as_str())
    }
}

const fn row(
    name: &'static str,
    path: PathMatch,
    methods: &'static str,
    access: Access,
    handler: Handler,
) -> Route {
    Route {
        name,
        path,
        json_only: false,
        methods,
        access,
        body: BodyUse::Ignored,
        handler,
        relay: true,
    }
}

/// A row served only by a camera, not in the relay role.
const fn camera_only(route: Route) -> Route {
    Route {
        relay: false,
        ..route
    }
}

/// Every route, first match wins.
pub const ROUTES: &[Route] = &[
    Route {
        json_only: true,
        ..row(
            "/health (JSON)",
            PathMatch::Exact("/health"),
            "GET, HEAD",
            Access::Stats,
            Handler::HealthJson,
        )
    },
    row(
        "/health",
        PathMatch::Exact("/health"),
        "GET, HEAD",
        Access::Open,
        Handler::Health,
    ),
    row(
        "/",
        PathMatch::Exact("/"),
        "GET, HEAD",
        Access::Open,
        Handler::Page,
    ),
    camera_only(row(
        "/index.html",
        PathMatch::Exact("/index.html"),
        "GET, HEAD",
        Access::Open,
        Handler::Page,
    )),
    row(
        "{hub}/negotiate",
        PathMatch::HubNegotiate,
        "POST",
        Access::Token,
        Handler::Negotiate,
    ),
    row("{hub}", PathMatch::Hub, "GET", Access::Token, Handler::Hub),
    camera_only(Route {
        body: BodyUse::Limited,
        ..row(
            "/whep, /whep/{id}",
            PathMatch::Whep,
            "POST, PATCH, DELETE",
            Access::Token,
            Handler::Whep,
        )
    }),
    camera_only(row(
        "/snapshot.jpg",
        PathMatch::Exact("/snapshot.jpg"),
        "GET, HEAD",
        Access::Token,
        Handler::Snapshot,
    )),
    camera_only(row(
        "/stream.mjpeg",
        PathMatch::Exact("/stream.mjpeg"),
        "GET",
        // Home Assistant's MJPEG camera sends its user name and password as Basic.
        Access::TokenOrBasic,
        Handler::Mjpeg,
    )),
    camera_only(row(
        "/api",
        PathMatch::Exact("/api"),
        "GET, HEAD",
        Access::TokenOrBasic,
        Handler::Go2rtcInfo,
    )),
    camera_only(row(
        "/api/streams",
        PathMatch::Exact("/api/streams"),
        "GET, HEAD",
        Access::TokenOrBasic,
        Handler::Go2rtcStreams,
    )),
    camera_only(row(
        "/api/frame.jpeg",
        PathMatch::Exact("/api/frame.jpeg"),
        "GET, HEAD",
        Access::TokenOrBasic,
        Handler::Go2rtcFrame,
    )),
    camera_only(row(
        "/api/ws",
        PathMatch::Exact("/api/ws"),
        "GET",
        Access::TokenOrBasic,
        Handler::Go2rtcWs,
    )),
    row(
        "/metrics",
        PathMatch::Exact("/metrics"),
        "GET, HEAD",
        Access::Stats,
        Handler::Metrics,
    ),
];

/// The route for `path` (`hub` is `[signaling] hub_path`), or `None` (404). In the relay role
/// (`relay`) only rows with [`Route::relay`] are found.
pub fn find(path: &str, hub: &str, wants_json: bool, relay: bool) -> Option<&'static Route> {
    ROUTES.iter().filter(|r| r.relay || !relay).find(|r| {
        let path_matches = match r.path {
            PathMatch::Exact(p) => path == p,
            PathMatch::Hub => path == hub,
            PathMatch::HubNegotiate => path.strip_prefix(hub) == Some("/negotiate"),
            PathMatch::Whep => crate::rtc::whep::route(path).is_some(),
        };
        path_matches && (wants_json || !r.json_only)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "/snaprtc-hub";

    fn access(path: &str, json: bool) -> Option<Access> {
        find(path, HUB, json, false).map(|r| r.access)
    }

    #[test]
    fn each_path_has_its_policy() {
        assert_eq!(access("/health", false), Some(Access::Open));
        assert_eq!(access("/health", true), Some(Access::Stats));
        assert_eq!(access("/metrics", false), Some(Access::Stats));
        assert_eq!(access("/snapshot.jpg", false), Some(Access::Token));
        assert_eq!(access("/snaprtc-hub/negotiate", false), Some(Access::Token));
        assert_eq!(access("/snaprtc-hub", false), Some(Access::Token));
        assert_eq!(access("/whep", false), Some(Access::Token));
        assert_eq!(access("/whep/nope", false), Some(Access::Token));
        assert_eq!(access("/", false), Some(Access::Open));
        for go2rtc in ["/api", "/api/streams", "/api/frame.jpeg", "/api/ws"] {
            assert_eq!(
                access(go2rtc, false),
                Some(Access::TokenOrBasic),
                "{go2rtc}"
            );
        }
        assert_eq!(access("/snaprtc-hubx", false), None);
        assert_eq!(access("/nope", false), None);
    }

    #[test]
    fn a_relay_serves_the_hub_health_metrics_and_its_front_page_only() {
        let relay = |path: &str, json: bool| find(path, HUB, json, true).map(|r| r.handler);
        assert_eq!(relay("/health", false), Some(Handler::Health));
        assert_eq!(relay("/health", true), Some(Handler::HealthJson));
        assert_eq!(relay("/metrics", false), Some(Handler::Metrics));
        assert_eq!(relay("/snaprtc-hub", false), Some(Handler::Hub));
        assert_eq!(
            relay("/snaprtc-hub/negotiate", false),
            Some(Handler::Negotiate)
        );
        assert_eq!(relay("/", false), Some(Handler::Page));
        for path in [
            "/whep",
            "/whep/abc",
            "/snapshot.jpg",
            "/index.html",
            "/api",
            "/api/ws",
        ] {
            assert_eq!(relay(path, false), None, "{path}");
            assert!(find(path, HUB, false, false).is_some(), "{path}");
        }
    }

    #[test]
    fn only_whep_reads_a_body() {
        for r in ROUTES {
            let want = if r.handler == Handler::Whep {
                BodyUse::Limited
            } else {
                BodyUse::Ignored
            };
            assert_eq!(r.body, want, "{}", r.name);
        }
    }

    #[test]
    fn stats_need_the_token_unless_metrics_auth_is_off() {
        let auth = Auth::Token("t".into());
        let none = http::HeaderMap::new();
        let mut server = ServerConfig::default();
        assert!(!Access::Stats.allows(&server, &auth, &none, None));
        assert!(Access::Stats.allows(&server, &auth, &none, Some("access_token=t")));
        server.metrics_auth = false;
        assert!(Access::Stats.allows(&server, &auth, &none, None));
        assert!(!Access::Token.allows(&server, &auth, &none, None));
        assert!(Access::Open.allows(&server, &auth, &none, None));
        assert!(Access::Token.allows(&server, &Auth::Open, &none, None));
    }

    #[test]
    fn methods_are_matched_exactly() {
        let r = find("/metrics", HUB, false, false).unwrap();
        assert!(r.allows_method(&http::Method::GET));
        assert!(r.allows_method(&http::Method::HEAD));
        assert!(!r.allows_method(&http::Method::POST));
    }

    #[test]
    fn docs_security_lists_every_route() {
        let doc = include_str!("../../docs/security.md");
        for r in ROUTES {
            assert!(
                doc.contains(&format!("| `{}` |", r.name)),
                "docs/security.md has no row for `{}`",
                r.name
            );
        }
    }
}
