//! What keeps the sidecar's HTTP port safe on a developer's machine, where any web page the
//! developer visits can send requests to localhost:
//!
//! - [`allowed_host`]: the port answers only requests whose `Host` is `localhost`, `127.0.0.1` or
//!   `[::1]` (any port), or one the user allows with `--allowed-hosts`: a name, or `.domain` for
//!   the domain and every subdomain, Vite's `server.allowedHosts` rule (Jupyter's
//!   `local_hostnames` is the same idea). A DNS-rebinding page reaches the port under its own
//!   name, so it is refused before any route runs.
//! - [`same_origin_json`]: devstack's own state-changing routes (faults, dead-letter operations,
//!   the page's batch) refuse a foreign `Origin` and any body that is not JSON: a cross-site page
//!   can send a `text/plain` or form POST without a preflight, never an `application/json` one.
//!
//! Dapr's own routes keep daprd's behaviour: `POST /v1.0/bindings/{name}` takes any content
//! type from any origin, as daprd does (docs/local-stack.md says what that exposes).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::Response,
};

use super::error;

/// The `Host` names always allowed: loopback only.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The hosts the HTTP port answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// The loopback names and `extra`: names, or `.domain` for the domain and its subdomains.
    pub fn new(extra: &[String]) -> Self {
        Self(
            extra
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        )
    }

    /// Whether a request for `host` (a `Host` header's value, with or without a port) is
    /// answered.
    pub fn allows(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        LOOPBACK_HOSTS.contains(&name.as_str())
            || self
                .0
                .iter()
                .any(|allowed| match allowed.strip_prefix('.') {
                    Some(domain) => name == domain || name.ends_with(allowed.as_str()),
                    None => name == *allowed,
                })
    }
}

/// The name in a `Host` value, lower-cased, without its port: `[::1]` for `[::1]:3500`.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if host.starts_with('[') {
        &host[..=host.find(']')?]
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return None,
            None => host,
        }
    };
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// The request's authority: its `Host` header, or (HTTP/2) its URI's.
fn authority(request: &Request) -> Option<String> {
    match request.headers().get(header::HOST) {
        Some(host) => host.to_str().ok().map(str::to_owned),
        None => request.uri().authority().map(|a| a.as_str().to_owned()),
    }
}

/// Refuses, with 403, a request whose `Host` is not allowed.
pub async fn allowed_host(
    State(allowed): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    match authority(&request) {
        Some(host) if allowed.allows(&host) => next.run(request).await,
        host => error(
            StatusCode::FORBIDDEN,
            format!(
                "Host {:?} is not allowed: this port answers localhost, 127.0.0.1 and [::1]; \
                 allow another name with --allowed-hosts (DEVSTACK_ALLOWED_HOSTS)",
                host.unwrap_or_default()
            ),
        ),
    }
}

/// Refuses a cross-origin state change (403) and a body that is not JSON (415).
pub async fn same_origin_json(request: Request, next: Next) -> Response {
    let host = authority(&request).unwrap_or_default();
    if let Err(origin) = same_origin(request.headers(), &host) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "Origin {origin:?} is not this page's ({host}): devstack's state changes are \
                 taken from its own page, curl and scripts only"
            ),
        );
    }
    if !is_json(request.headers()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with Content-Type: application/json".to_owned(),
        );
    }
    next.run(request).await
}

/// Whether `Origin`, when sent, is `http://` + `host` (browsers send it with every cross-origin
/// POST; curl sends none). The foreign origin otherwise.
fn same_origin(headers: &HeaderMap, host: &str) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("(not text)");
    match origin.strip_prefix("http://") {
        Some(authority) if authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(origin.to_owned()),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_and_the_allowed_ones_pass_with_any_port() {
        let allowed = AllowedHosts::new(&["devbox.lan".into(), ".app.github.dev".into()]);
        for host in [
            "localhost",
            "localhost:3500",
            "LOCALHOST:3500",
            "127.0.0.1:3500",
            "[::1]:3500",
            "[::1]",
            "devbox.lan:3500",
            "app.github.dev",
            "foo-3500.app.github.dev",
        ] {
            assert!(allowed.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:3500",
            "localhost.evil.example",
            "127.0.0.2:3500",
            "0.0.0.0:3500",
            "[::2]:3500",
            "devbox.lan.evil:3500",
            "xapp.github.dev",
            "",
            "localhost:http",
        ] {
            assert!(!allowed.allows(host), "{host}");
        }
        assert!(!AllowedHosts::default().allows("devbox.lan"));
    }

    #[test]
    fn a_foreign_or_null_origin_is_told_apart_from_this_page_and_from_none() {
        let headers = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().unwrap());
            }
            h
        };
        assert_eq!(same_origin(&headers(None), "localhost:3500"), Ok(()));
        assert_eq!(
            same_origin(&headers(Some("http://localhost:3500")), "localhost:3500"),
            Ok(())
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://localhost:8080",
            "https://localhost:3500",
        ] {
            assert!(
                same_origin(&headers(Some(origin)), "localhost:3500").is_err(),
                "{origin}"
            );
        }
    }
}
