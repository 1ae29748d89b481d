//! Protection of the HTTP APIs that can change a node (access node API, router API, store node API
//! with `POST /promote`): a bearer secret, and the loopback rule for a node without one.
//!
//! * With a secret, every request but the open paths (health checks) must carry
//!   `Authorization: Bearer <secret>` (scheme in any case); others get 401 with a JSON error.
//! * Without a secret, the API may only listen on a loopback address ([`check_exposure`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The credentials of an `Authorization: Bearer <token>` value; the scheme is case-insensitive and
/// may be followed by several spaces (RFC 9110 §11.1, §11.4).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Compares without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `headers` carry the bearer `secret` (always true when `secret` is empty).
pub fn authorized(headers: &HeaderMap, secret: &str) -> bool {
    if secret.is_empty() {
        return true;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), secret.as_bytes())
}

/// The bearer rule of one API, for [`require_bearer`].
#[derive(Debug, Clone)]
pub struct BearerAuth {
    secret: Arc<str>,
    open_paths: &'static [&'static str],
    setting: &'static str,
}

impl BearerAuth {
    /// `secret` (empty: no check), the paths reachable without it, and the name of the setting
    /// holding it (quoted in the 401 answer).
    pub fn new(
        secret: &str,
        open_paths: &'static [&'static str],
        setting: &'static str,
    ) -> BearerAuth {
        BearerAuth {
            secret: secret.into(),
            open_paths,
            setting,
        }
    }
}

/// axum middleware (`from_fn_with_state(auth, require_bearer)`): 401 `{"error": …}` unless the
/// request is authorized or its path is open.
pub async fn require_bearer(State(auth): State<BearerAuth>, req: Request, next: Next) -> Response {
    if auth.open_paths.contains(&req.uri().path()) || authorized(req.headers(), &auth.secret) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({
            "error": format!("missing or wrong `Authorization: Bearer <{}>` header", auth.setting)
        })),
    )
        .into_response()
}

/// The loopback rule: an API without a secret may only listen on loopback addresses. `Err` names
/// both settings. An address that does not resolve counts as exposed.
pub async fn check_exposure(
    listen: &str,
    secret: &str,
    listen_setting: &str,
    secret_setting: &str,
) -> Result<(), String> {
    if listen.trim().is_empty() || !secret.is_empty() {
        return Ok(());
    }
    let loopback = tokio::net::lookup_host(listen)
        .await
        .map(|mut it| it.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "{listen_setting} = {listen:?} is not a loopback address; set {secret_setting} to expose the HTTP API"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bEaReR   abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        let mut h = HeaderMap::new();
        assert!(authorized(&h, ""));
        assert!(!authorized(&h, "s3"));
        h.insert(header::AUTHORIZATION, "Bearer s3".parse().expect("header"));
        assert!(authorized(&h, "s3"));
        assert!(!authorized(&h, "s4"));
        assert!(!authorized(&h, "s33"));
    }

    #[tokio::test]
    async fn loopback_rule() {
        assert!(check_exposure("127.0.0.1:0", "", "l", "s").await.is_ok());
        assert!(check_exposure("[::1]:0", "", "l", "s").await.is_ok());
        assert!(check_exposure("0.0.0.0:80", "secret", "l", "s")
            .await
            .is_ok());
        assert!(check_exposure("", "", "l", "s").await.is_ok());
        let e = check_exposure("0.0.0.0:80", "", "http_listen", "http_secret")
            .await
            .expect_err("refused");
        assert!(
            e.contains("http_listen") && e.contains("http_secret"),
            "{e}"
        );
    }
}
