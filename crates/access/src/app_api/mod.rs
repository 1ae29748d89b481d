//! The app API the GoBelieve SDKs call at their API URL (`IMHttpAPI.setAPIURL` on Android,
//! `[IMHttpAPI instance].apiURL` on iOS): media uploads and downloads, push device binding and the
//! customer-service supporter lookup. Every call authenticates with `Authorization: Bearer <the
//! user's IM token>` through the same [`backend::Backend::authenticate`] as IM sessions. The whole
//! API, with every field and error, is specified in `docs/app-api.md`.
//!
//! | Module | Owns |
//! |---|---|
//! | `mod.rs` | configuration, shared state, the router, authentication, errors, CORS |
//! | `upload.rs` | `POST /images`, `/audios`, `/files`: streaming into a spool, limits, the answer |
//! | `download.rs` | `GET`/`HEAD` of media URLs: access rules, signed URLs, ETag, ranges |
//! | `device.rs` | `POST /device/bind`, `/device/unbind`; `POST`/`GET /push/dnd` (do-not-disturb) |
//! | `supporters.rs` | `GET /supporters` |
//! | `admin.rs` | operator endpoints on the API listener (`/admin/media/…`, devices, supporters) |
//!
//! The router is served under `app_api.prefix` on the API listener (unless `on_api_listener` is
//! false) and, when `app_api.listen` is set, alone on a listener of its own meant for the public
//! network. It is not behind `api.secret`: SDKs authenticate as users.

mod admin;
mod device;
mod download;
mod supporters;
mod upload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use backend::{AuthInfo, Backend, Supporter};
use media::Media;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::ErrorBody;
use crate::route::RouteTable;

pub use admin::routes as admin_routes;

/// `[app_api]`: where and how the app API is served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AppApiConfig {
    /// Serve the app API at all.
    pub enabled: bool,
    /// Path prefix of every app API endpoint (GoBelieve's SDKs use `…/v2`). `""` = at the root.
    pub prefix: String,
    /// Also serve it on the API listener (`api.listen`), beside the operator endpoints.
    pub on_api_listener: bool,
    /// A listener of its own serving only the app API (for the public network; the API listener is
    /// loopback-only without `api.secret`). `""` = none.
    pub listen: String,
    /// The URL the SDKs are given as their API URL (e.g. `https://im.example.com/v2`); upload answers
    /// build `src_url` from it. `""` = `http://<Host header><prefix>`.
    pub public_url: String,
    /// `Access-Control-Allow-Origin` for browser apps: `"*"`, a comma-separated list of origins, or
    /// `""` for no CORS headers.
    pub cors_allow_origin: String,
    /// Customer-service supporters from configuration (the admin API adds more).
    pub supporters: Vec<Supporter>,
}

impl Default for AppApiConfig {
    fn default() -> Self {
        AppApiConfig {
            enabled: true,
            prefix: "/v2".into(),
            on_api_listener: true,
            listen: String::new(),
            public_url: String::new(),
            cors_allow_origin: "*".into(),
            supporters: Vec::new(),
        }
    }
}

impl AppApiConfig {
    /// The prefix normalised to `""` or `/segment[/segment…]`.
    pub fn normalized_prefix(&self) -> String {
        let p = self.prefix.trim().trim_end_matches('/');
        if p.is_empty() {
            String::new()
        } else if p.starts_with('/') {
            p.to_string()
        } else {
            format!("/{p}")
        }
    }

    /// Every semantic problem of the section, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let p = self.normalized_prefix();
        if p.contains("//") || p.contains('{') || p.contains('}') || p.contains('*') {
            errors.push(format!(
                "app_api.prefix {:?} is not a plain path",
                self.prefix
            ));
        }
        let url = &self.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            errors.push("app_api.public_url must start with http:// or https://".into());
        }
        for s in &self.supporters {
            if s.store_id <= 0 || s.seller_id <= 0 || s.appid <= 0 {
                errors.push(
                    "app_api.supporters entries need store_id, seller_id and appid > 0".into(),
                );
                break;
            }
        }
        errors
    }
}

/// Uploads one user started in the current minute, for `media.uploads_per_minute`.
struct RateLimiter {
    per_minute: u32,
    windows: parking_lot::Mutex<HashMap<(i64, i64), (Instant, u32)>>,
}

/// Users tracked at once by the rate limiter before stale windows are dropped.
const RATE_TABLE_PRUNE_AT: usize = 100_000;

impl RateLimiter {
    /// `Err(seconds to wait)` when the user is over the limit.
    fn check(&self, appid: i64, uid: i64) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let mut w = self.windows.lock();
        if w.len() >= RATE_TABLE_PRUNE_AT {
            w.retain(|_, (start, _)| now.duration_since(*start) < minute);
        }
        let e = w.entry((appid, uid)).or_insert((now, 0));
        if now.duration_since(e.0) >= minute {
            *e = (now, 0);
        }
        if e.1 >= self.per_minute {
            let wait = minute
                .saturating_sub(now.duration_since(e.0))
                .as_secs()
                .max(1);
            return Err(wait);
        }
        e.1 += 1;
        Ok(())
    }
}

/// The app API's state, shared by every listener that serves it.
pub struct AppApi {
    pub config: AppApiConfig,
    pub media: Arc<Media>,
    limiter: RateLimiter,
}

impl AppApi {
    pub fn new(config: AppApiConfig, media: Arc<Media>) -> AppApi {
        let per_minute = media.config().uploads_per_minute;
        AppApi {
            config,
            media,
            limiter: RateLimiter {
                per_minute,
                windows: parking_lot::Mutex::new(HashMap::new()),
            },
        }
    }
}

/// Handler state: what the app API needs of the node — the backend (tokens, devices, supporters,
/// do-not-disturb) and the local route table (who is online) — and the app API itself.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub backend: Backend,
    pub route: Arc<RouteTable>,
    pub api: Arc<AppApi>,
}

/// A refusal: status and message, answered as GoBelieve's `{"meta":{"code","message"}}`.
#[derive(Debug)]
pub(crate) struct AppError {
    pub status: StatusCode,
    pub message: String,
    /// `Retry-After` seconds (429).
    pub retry_after: Option<u64>,
    /// Extra headers (e.g. `Content-Range` of a 416).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl AppError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> AppError {
        AppError {
            status,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }
    pub fn bad(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unavailable(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn too_many(message: impl Into<String>, wait_secs: u64) -> AppError {
        AppError {
            retry_after: Some(wait_secs),
            ..AppError::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut r = ErrorBody::response(self.status, self.message);
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        for (k, v) in self.headers {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

impl From<backend::BackendError> for AppError {
    fn from(e: backend::BackendError) -> Self {
        match e {
            backend::BackendError::InvalidArgument(m) => AppError::bad(m),
            backend::BackendError::NotFound(m) => AppError::not_found(m),
            other => {
                node::warn_throttled!(error = %other, "backend error in the app API");
                AppError::unavailable(format!("backend error: {other}"))
            }
        }
    }
}

impl From<media::MediaError> for AppError {
    fn from(e: media::MediaError) -> Self {
        node::warn_throttled!(error = %e, "media storage error in the app API");
        AppError::unavailable(format!("media storage error: {e}"))
    }
}

impl From<media::IngestError> for AppError {
    fn from(e: media::IngestError) -> Self {
        match e {
            media::IngestError::Type(t) => {
                AppError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, t.to_string())
            }
            media::IngestError::Image(p @ media::ImageProblem::Unreadable(_)) => {
                AppError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, p.to_string())
            }
            media::IngestError::Image(p @ media::ImageProblem::TooManyPixels { .. }) => {
                AppError::new(StatusCode::PAYLOAD_TOO_LARGE, p.to_string())
            }
            media::IngestError::Media(m) => m.into(),
        }
    }
}

pub(crate) type AppResult = Result<Response, AppError>;

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The user a request authenticates as: 401 without a valid token.
pub(crate) async fn authenticate(
    backend: &Backend,
    headers: &HeaderMap,
) -> Result<AuthInfo, AppError> {
    let Some(token) = bearer(headers) else {
        return Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` header",
        ));
    };
    match backend.authenticate(token).await? {
        Some(info) if info.appid > 0 => Ok(info),
        _ => Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "the token is unknown, revoked or expired",
        )),
    }
}

/// `http://<Host><prefix>` or the configured public URL, without a trailing `/`.
pub(crate) fn base_url(api: &AppApi, headers: &HeaderMap) -> String {
    let configured = api.config.public_url.trim().trim_end_matches('/');
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}{}", api.config.normalized_prefix())
}

async fn not_found() -> AppError {
    AppError::not_found("no such app API endpoint")
}

fn cors(cfg: &AppApiConfig) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origin = cfg.cors_allow_origin.trim();
    if origin.is_empty() {
        return None;
    }
    let allow = if origin == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origin
                .split(',')
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::RANGE,
                header::IF_NONE_MATCH,
                header::IF_RANGE,
            ])
            .expose_headers([
                header::CONTENT_RANGE,
                header::CONTENT_LENGTH,
                header::ETAG,
                header::ACCEPT_RANGES,
            ])
            .max_age(Duration::from_secs(86_400)),
    )
}

/// The error answers every app API operation may give besides its own.
const ERRORS: &[(StatusCode, &str)] = &[
    (
        StatusCode::BAD_REQUEST,
        "A parameter or the body is missing or invalid (the message names it)",
    ),
    (
        StatusCode::UNAUTHORIZED,
        "No `Authorization: Bearer <token>`, or the token is unknown, revoked or expired",
    ),
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "The backend or the media storage failed",
    ),
];

/// The app API router and its document, under the configured prefix. `standalone`: it is the
/// listener's only router (it then answers unknown paths itself; merged into the API router, that
/// router does). It works with the node's `backend` and local route table (`route`).
pub fn router(
    backend: Backend,
    route: Arc<RouteTable>,
    api: Arc<AppApi>,
    standalone: bool,
) -> OpenApiRouter {
    let prefix = api.config.normalized_prefix();
    let cors = cors(&api.config);
    let ctx = Ctx {
        backend,
        route,
        api,
    };
    let mut inner = OpenApiRouter::new()
        .routes(routes!(upload::images))
        .routes(routes!(upload::audios))
        .routes(routes!(upload::files))
        .routes(routes!(device::bind))
        .routes(routes!(device::unbind))
        .routes(routes!(device::set_dnd, device::get_dnd))
        .routes(routes!(supporters::get_one))
        .routes(routes!(download::sign))
        .routes(routes!(download::download));
    crate::openapi::document_security(inner.get_openapi_mut(), "user_token");
    crate::openapi::document_errors(inner.get_openapi_mut(), ERRORS);
    if standalone || !prefix.is_empty() {
        inner = inner.fallback(not_found);
    }
    let mut inner = inner
        // Uploads are limited per kind while they stream (media.max_*_bytes), not here.
        .layer(DefaultBodyLimit::disable())
        .with_state(ctx);
    if let Some(c) = cors {
        inner = inner.layer(c);
    }
    if prefix.is_empty() {
        inner
    } else if standalone {
        OpenApiRouter::new()
            .nest(&prefix, inner)
            .fallback(not_found)
    } else {
        OpenApiRouter::new().nest(&prefix, inner)
    }
}
