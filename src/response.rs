//! HTTP responses every route builds the same way: one body type and the plain answers (text,
//! JSON, 401, 405).
//!
//! A leaf module, not part of [`crate::http`]: `rtc::whep` builds responses too and sits below
//! `http` in the layering, so both import these helpers from here.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Response body of every route: the whole body is known when the response is built.
pub type Body = Full<Bytes>;

/// A plain-text response (an empty body carries no `Content-Type`).
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let body = body.into();
    let has_body = !body.is_empty();
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if has_body {
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
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

/// Set a header from a string that may not be a valid header value (then it is left out).
pub fn insert_header(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_has_no_content_type() {
        let r = text(StatusCode::NO_CONTENT, "");
        assert_eq!(r.status(), 204);
        assert!(r.headers().get(header::CONTENT_TYPE).is_none());
        let r = text(StatusCode::OK, "hi\n");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        let r = unauthorized();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let r = method_not_allowed("GET, HEAD");
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
    }
}
