//! What every route set of the served study and the app shares: body limits, hardening
//! headers (with a Content-Security-Policy for pages), same-origin checks and JSON errors.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The policy of the app's pages: its own scripts, styles and pictures only (no inline script,
/// no other site), no framing, forms only to itself.
pub const STRICT_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// An error as an API reports it: a status and one line of JSON, `{"error": "..."}`.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// 400 with `what`.
pub fn bad(what: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, what.into())
}

/// 500 with the error's text.
pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// A body whose declared length is over `limit` is refused before a byte of it is read: the
/// client learns at once (one that sent `Expect: 100-continue` never sends the body), and the
/// server spends nothing on it. Bodies without a declared length are cut off at the limit by
/// `DefaultBodyLimit` as they arrive. Use with `middleware::from_fn_with_state(limit, ..)`.
pub async fn declared_length(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is {n} bytes; this server accepts at most {limit}"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

/// Headers for every response: no sniffing, no framing, no referrer, not cached unless the
/// route said otherwise. Use with `middleware::map_response`.
pub async fn harden(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// [`harden`], plus [`STRICT_CSP`] on every response.
pub async fn harden_strict(res: Response) -> Response {
    let mut res = harden(res).await;
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(STRICT_CSP),
    );
    res
}

/// The host part of a `Host` header value or of an origin's authority (`[::1]:8080` ->
/// `[::1]`, `localhost:80` -> `localhost`).
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .map_or(authority, |h| &authority[..h.len() + 2]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Whether a request may change state: `Host` names this server (one of `hosts`, e.g. the
/// loopback names when serving on loopback, which defeats DNS rebinding; any when empty), and
/// `Origin` (or, without one, `Referer`) is `http(s)://` that same host. Reading methods (GET,
/// HEAD) always may. The message says why not.
pub fn same_origin(method: &Method, headers: &HeaderMap, hosts: &[String]) -> Result<(), String> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or("no Host header")?;
    if !hosts.is_empty()
        && !hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host_name(host)))
    {
        return Err(format!("Host {host:?} is not this server"));
    }
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .ok_or("a state-changing request without Origin or Referer")?;
    let rest = from
        .strip_prefix("http://")
        .or_else(|| from.strip_prefix("https://"))
        .ok_or_else(|| format!("origin {from:?} is not this server"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(format!("origin {from:?} is not this server ({host})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_this_server_may_change_state() {
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let post = Method::POST;
        let ok = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(same_origin(&post, &ok, &hosts).is_ok());
        let referer = headers(&[
            ("host", "localhost:9"),
            ("referer", "http://localhost:9/jobs/3"),
        ]);
        assert!(same_origin(&post, &referer, &hosts).is_ok());
        for bad in [
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example"),
            ]),
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8081"),
            ]),
            headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
            headers(&[("host", "127.0.0.1:8080")]),
            headers(&[("origin", "http://127.0.0.1:8080")]),
            // DNS rebinding: the attacker's name resolving to loopback.
            headers(&[
                ("host", "evil.example:8080"),
                ("origin", "http://evil.example:8080"),
            ]),
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080.evil.example"),
            ]),
        ] {
            assert!(same_origin(&post, &bad, &hosts).is_err(), "{bad:?}");
        }
        // Reading needs only a known Host.
        let get = headers(&[("host", "127.0.0.1:8080")]);
        assert!(same_origin(&Method::GET, &get, &hosts).is_ok());
        let rebound = headers(&[("host", "evil.example")]);
        assert!(same_origin(&Method::GET, &rebound, &hosts).is_err());
        assert!(same_origin(&Method::GET, &rebound, &[]).is_ok());
        assert_eq!(host_name("[::1]:80"), "[::1]");
    }
}
