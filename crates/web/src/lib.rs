//! The web chat client and the admin console served by banter (`docs/web-client.md`).
//!
//! This crate owns the browser assets — plain ES modules and CSS under `assets/`, embedded into the
//! binary with `include_bytes!`, so `cargo build` stays the only build step — and the small router
//! that serves them:
//!
//! | Path | What |
//! |---|---|
//! | `GET /` | the chat client (`assets/index.html`) |
//! | `GET /admin` | the admin console (`assets/admin.html`), on the API listener only |
//! | `GET /assets/…` | the modules, styles and icon |
//! | `GET /web/config` | what the page needs to connect: the WebSocket URL, the app API prefix, whether dev sign-in and the admin API are available |
//! | `POST /web/dev-signin` | `{"appid", "uid", "name"?}` → `{"token"}` through the grant path, only where [`WebConfig::dev_signin`] allows it |
//! | `GET /web/presence?uids=1,2,…` | with `Authorization: Bearer <the user's token>`: `{"online": {"uid": bool…}}` for at most [`PRESENCE_MAX_UIDS`] users of the token's app, where this node knows it ([`WebContext::presence`]), else `{"known": false}` |
//!
//! Every answer carries a Content-Security-Policy without inline script (scripts and styles only from
//! this origin; `connect-src` names the WebSocket endpoint), `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer` and `X-Frame-Options: DENY`. Errors are JSON
//! `{"meta": {"code", "message"}}`, the HTTP API's one error shape. Each route is in the API
//! listener's OpenAPI document (`#[utoipa::path]` on its handler).
//! Tokens never travel in URLs: the page sends them in WebSocket frames and `Authorization` headers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::debug;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `web.dev_signin`: who may use the client's dev sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DevSignin {
    /// Only a browser on this machine: the peer address and the `Host` header must both be
    /// loopback.
    #[default]
    Loopback,
    /// Anyone who reaches the page (demos only).
    On,
    /// Nobody.
    Off,
}

/// `[web]`: the web chat client and admin console.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the chat client at `/` (and the admin console at `/admin` on the API listener).
    pub enabled: bool,
    /// The client's "dev sign-in" (app id + uid → token through the grant path, no password):
    /// `"loopback"` (only for a browser on this machine: the peer address and the `Host` header must
    /// both be loopback), `"on"` (anyone who reaches the page: demos only) or `"off"`.
    pub dev_signin: DevSignin,
    /// The WebSocket URL the page connects to, e.g. `wss://im.example.com/ws` behind a TLS proxy.
    /// Empty: `ws://<host of the page>:<server.ws port>/ws` (or `wss://` with `server.wss` only).
    pub ws_url: String,
    /// The app server's token URL (absolute `http(s)://…` or a path on this origin): the page offers
    /// "Sign in with the app", POSTs there with the browser's credentials for that site and expects
    /// `{"token", "appid", "uid", "name"?}`. Its origin is added to the page's `connect-src`.
    /// Empty: not offered.
    pub token_url: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            dev_signin: DevSignin::Loopback,
            ws_url: String::new(),
            token_url: String::new(),
        }
    }
}

impl WebConfig {
    /// Problems with the section, one message each.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let u = self.ws_url.trim();
        if !u.is_empty() && !u.starts_with("ws://") && !u.starts_with("wss://") {
            errors.push(format!(
                "web.ws_url must start with ws:// or wss://, got {u:?}"
            ));
        }
        let t = self.token_url.trim();
        let scheme_ok = t.starts_with("http://") || t.starts_with("https://");
        let path_ok = t.starts_with('/') && !t.starts_with("//");
        let clean = t.bytes().all(|b| b.is_ascii_graphic());
        if !t.is_empty() && (!(scheme_ok || path_ok) || !clean) {
            errors.push(format!(
                "web.token_url must be an http:// or https:// URL or a path starting with /, got {t:?}"
            ));
        }
        errors
    }
}

/// Everything the router needs to know about the node it is served by.
pub struct WebContext {
    pub config: WebConfig,
    /// Issues dev sign-in tokens (the same grant as `POST /auth/grant`).
    pub backend: backend::Backend,
    /// The bound WebSocket and WSS listeners (the page connects to one of them).
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    /// The app API's prefix on this listener (uploads and downloads), when it is served here.
    pub app_api_prefix: Option<String>,
    /// `app_api.public_url`, when set: downloads may come from there (allowed in `connect-src`).
    pub app_api_public_url: String,
    /// Whether the operator API (`/summary`, `/metrics`, `/admin/…`) is on this listener, and whether
    /// it needs `Authorization: Bearer <api.secret>`.
    pub admin_api: bool,
    pub admin_secret_required: bool,
    /// `server.kefu_appid`: the customer-service app (0 = none).
    pub kefu_appid: i64,
    /// Whether `(appid, uid)` has a session, where this node knows every session (single-node
    /// mode); `None` where it does not (an access node of a cluster: only the routers know).
    pub presence: Option<Presence>,
}

/// See [`WebContext::presence`].
pub type Presence = Arc<dyn Fn(i64, i64) -> bool + Send + Sync>;

/// Users one `/web/presence` request may ask about.
pub const PRESENCE_MAX_UIDS: usize = 100;

struct Asset {
    path: &'static str,
    mime: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $mime:expr) => {
        Asset {
            path: $path,
            mime: $mime,
            bytes: include_bytes!(concat!("../assets/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("admin.html", "text/html; charset=utf-8"),
    asset!("css/app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/proto.js", JS),
    asset!("js/client.js", JS),
    asset!("js/store.js", JS),
    asset!("js/media.js", JS),
    asset!("js/app.js", JS),
    asset!("js/admin.js", JS),
    asset!("js/util.js", JS),
];

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// A strong validator for an embedded asset (FNV-1a of its bytes; assets change only with the binary).
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// The page's host as the browser addressed it (without the port), from the `Host` header.
fn request_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?.trim();
    if host.is_empty() {
        return None;
    }
    // "[::1]:6666" → "[::1]"; "example.com:6666" → "example.com".
    let name = if let Some(end) = host.find(']') {
        &host[..=end]
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
    ok.then(|| name.to_ascii_lowercase())
}

fn is_loopback_host(name: &str) -> bool {
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

impl WebContext {
    /// The WebSocket URL the page should use.
    fn ws_url(&self, headers: &HeaderMap) -> Option<String> {
        let configured = self.config.ws_url.trim();
        if !configured.is_empty() {
            return Some(configured.to_string());
        }
        let host = request_host(headers).unwrap_or_else(|| "127.0.0.1".into());
        match (self.ws, self.wss) {
            (Some(a), _) => Some(format!("ws://{host}:{}/ws", a.port())),
            (None, Some(a)) => Some(format!("wss://{host}:{}/ws", a.port())),
            (None, None) => None,
        }
    }

    fn csp(&self, headers: &HeaderMap) -> String {
        let mut connect = String::from("'self'");
        if let Some(ws) = self.ws_url(headers) {
            connect.push(' ');
            connect.push_str(&origin_of(&ws));
        }
        let public = self.app_api_public_url.trim();
        if !public.is_empty() {
            connect.push(' ');
            connect.push_str(&origin_of(public));
        }
        let token_url = self.config.token_url.trim();
        if token_url.starts_with("http://") || token_url.starts_with("https://") {
            connect.push(' ');
            connect.push_str(&origin_of(token_url));
        }
        format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
             media-src 'self' blob:; connect-src {connect}; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    }
}

/// `scheme://host[:port]` of a URL (CSP source expressions take no path).
fn origin_of(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            format!("{}{}", &url[..i + 3], &rest[..end])
        }
        None => url.to_string(),
    }
}

/// An error in the HTTP API's one shape (`{"meta": {"code", "message"}}`).
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({ "meta": { "code": status.as_u16(), "message": message.into() } });
    (status, Json(body)).into_response()
}

fn secure_headers(ctx: &WebContext, req: &HeaderMap, resp: &mut Response) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.csp(req)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn serve(ctx: &WebContext, headers: &HeaderMap, asset: &Asset) -> Response {
    let tag = etag(asset.bytes);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.mime)], asset.bytes).into_response()
    };
    let h = resp.headers_mut();
    // Revalidated on every load (a 304 costs one round trip): a new binary is seen at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    secure_headers(ctx, headers, &mut resp);
    resp
}

#[utoipa::path(
    get,
    path = "/",
    tag = "web",
    responses(
        (status = 200, description = "The chat client", body = String, content_type = "text/html"),
        (status = 304, description = "`If-None-Match` matched"),
    ),
)]
async fn index(State(ctx): State<Arc<WebContext>>, headers: HeaderMap) -> Response {
    serve(&ctx, &headers, find("index.html").expect("embedded"))
}

#[utoipa::path(
    get,
    path = "/index.html",
    tag = "web",
    responses(
        (status = 200, description = "The chat client", body = String, content_type = "text/html"),
        (status = 304, description = "`If-None-Match` matched"),
    ),
)]
async fn index_html(state: State<Arc<WebContext>>, headers: HeaderMap) -> Response {
    index(state, headers).await
}

#[utoipa::path(
    get,
    path = "/admin",
    tag = "web",
    responses(
        (status = 200, description = "The admin console (API listener only)", body = String, content_type = "text/html"),
        (status = 304, description = "`If-None-Match` matched"),
    ),
)]
async fn admin(State(ctx): State<Arc<WebContext>>, headers: HeaderMap) -> Response {
    serve(&ctx, &headers, find("admin.html").expect("embedded"))
}

#[utoipa::path(
    get,
    path = "/assets/{path}",
    tag = "web",
    params(("path" = String, Path, description = "An asset: `css/app.css`, `js/app.js`, `icon.svg`, …")),
    responses(
        (status = 200, description = "The asset", content((String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml"))),
        (status = 304, description = "`If-None-Match` matched"),
        (status = 404, description = "No such asset", body = Object),
    ),
)]
async fn asset(
    State(ctx): State<Arc<WebContext>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    match find(&path).filter(|a| !a.path.ends_with(".html")) {
        Some(a) => serve(&ctx, &headers, a),
        None => error(StatusCode::NOT_FOUND, format!("no asset {path:?}")),
    }
}

#[utoipa::path(
    get,
    path = "/web/config",
    tag = "web",
    responses((status = 200, description = "`{\"ws_url\", \"app_api\", \"dev_signin\", \"admin_api\", \"admin_secret_required\", \"kefu_appid\"}`: what the page needs to connect", body = Object)),
)]
async fn config(State(ctx): State<Arc<WebContext>>, headers: HeaderMap) -> Response {
    let body = json!({
        "ws_url": ctx.ws_url(&headers),
        "app_api": ctx.app_api_prefix,
        "dev_signin": ctx.config.dev_signin != DevSignin::Off,
        "admin_api": ctx.admin_api,
        "admin_secret_required": ctx.admin_secret_required,
        "kefu_appid": ctx.kefu_appid,
        "token_url": ctx.config.token_url.trim(),
        "presence": ctx.presence.is_some(),
    });
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure_headers(&ctx, &headers, &mut resp);
    resp
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SigninReq {
    appid: i64,
    uid: i64,
    #[serde(default)]
    name: String,
}

/// Why a dev sign-in request is refused here, if it is.
fn signin_refusal(
    ctx: &WebContext,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<String> {
    match ctx.config.dev_signin {
        DevSignin::On => {}
        DevSignin::Loopback => {
            let peer_ok = peer.is_some_and(|p| p.ip().is_loopback());
            let host_ok = request_host(headers).is_some_and(|h| is_loopback_host(&h));
            if !peer_ok || !host_ok {
                return Some(
                    "dev sign-in is only available from this machine (web.dev_signin = \"loopback\")"
                        .into(),
                );
            }
        }
        DevSignin::Off => return Some("dev sign-in is disabled (web.dev_signin = \"off\")".into()),
    }
    // A cross-site page cannot send JSON without a CORS preflight (which this router never grants),
    // and a browser names the page's origin: it must be this very host.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        return Some("the body must be JSON (Content-Type: application/json)".into());
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let same = origin
            .split_once("://")
            .is_some_and(|(_, h)| h.eq_ignore_ascii_case(host));
        if !same {
            return Some(format!("cross-origin sign-in from {origin:?} refused"));
        }
    }
    None
}

#[utoipa::path(
    post,
    path = "/web/dev-signin",
    tag = "web",
    request_body = SigninReq,
    responses(
        (status = 200, description = "`{\"token\"}`", body = Object),
        (status = 400, description = "Invalid body", body = Object),
        (status = 403, description = "Dev sign-in is off, or only for loopback, or not a same-origin JSON request", body = Object),
        (status = 413, description = "Body over 4 KiB", body = Object),
        (status = 503, description = "The backend failed", body = Object),
    ),
)]
async fn dev_signin(
    State(ctx): State<Arc<WebContext>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(why) = signin_refusal(&ctx, peer.map(|Extension(ConnectInfo(p))| p), &headers) {
        return error(StatusCode::FORBIDDEN, why);
    }
    let r: SigninReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid json: {e}")),
    };
    if r.appid <= 0 || r.uid <= 0 {
        return error(StatusCode::BAD_REQUEST, "`appid` and `uid` must be > 0");
    }
    if r.name.len() > 255 {
        return error(StatusCode::BAD_REQUEST, "`name` is longer than 255 bytes");
    }
    match ctx.backend.grant(r.appid, r.uid, &r.name).await {
        Ok(token) => {
            debug!(appid = r.appid, uid = r.uid, "web dev sign-in");
            let mut resp = Json(json!({ "token": token })).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(backend::BackendError::InvalidArgument(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot issue a token: {e}"),
        ),
    }
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    node::admin::bearer_token(v).filter(|t| !t.is_empty())
}

/// `uids=1,2,3` → the distinct ids, or why not.
fn presence_uids(query: Option<&str>) -> Result<Vec<i64>, String> {
    let raw = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("uids="))
        .ok_or("query parameter `uids` (comma-separated user ids) is required")?;
    let mut uids = Vec::new();
    for part in raw.split([',', ' ']).filter(|p| !p.is_empty()) {
        match part.parse::<i64>() {
            Ok(u) if u > 0 => {
                if !uids.contains(&u) {
                    uids.push(u);
                }
            }
            _ => return Err(format!("`uids` must be user ids > 0, got {part:?}")),
        }
        if uids.len() > PRESENCE_MAX_UIDS {
            return Err(format!("at most {PRESENCE_MAX_UIDS} users per request"));
        }
    }
    if uids.is_empty() {
        return Err("`uids` names no user".into());
    }
    Ok(uids)
}

/// Presence for a signed-in user: only with a valid token, only users of the token's app, at most
/// [`PRESENCE_MAX_UIDS`] at a time. The token travels in the `Authorization` header only.
#[utoipa::path(
    get,
    path = "/web/presence",
    tag = "web",
    params(
        ("uids" = String, Query, description = "Comma-separated uids of the token's app, at most 100"),
    ),
    responses(
        (status = 200, description = "`{\"online\": {\"uid\": bool…}}`, or `{\"known\": false}` where this node cannot know (cluster mode)", body = Object),
        (status = 400, description = "`uids` missing, not ids, or more than 100", body = Object),
        (status = 401, description = "No bearer token, or one that is unknown, revoked or expired", body = Object),
        (status = 503, description = "The backend failed", body = Object),
    ),
)]
async fn presence(
    State(ctx): State<Arc<WebContext>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` header",
        );
    };
    let uids = match presence_uids(uri.query()) {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let me = match ctx.backend.authenticate(token).await {
        Ok(Some(info)) if info.appid > 0 => info,
        Ok(_) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "the token is unknown, revoked or expired",
            )
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token: {e}"),
            )
        }
    };
    let body = match &ctx.presence {
        Some(online) => {
            let map: serde_json::Map<String, serde_json::Value> = uids
                .iter()
                .map(|&u| (u.to_string(), json!(online(me.appid, u))))
                .collect();
            json!({ "online": map })
        }
        None => json!({ "known": false }),
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether a WebSocket upgrade may proceed, given `server.ws_allowed_origins` (`allowed`), the
/// request's `Origin` header and its `Host` header. A request without `Origin` is not from a browser
/// page and is always allowed (SDKs on phones and servers send none). An empty list allows the same
/// host as the WebSocket endpoint (any port: the page comes from the API port) and loopback pages;
/// `"*"` allows every origin; other entries are exact origins (`https://app.example.com`).
pub fn ws_origin_allowed(allowed: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin.map(str::trim) else {
        return true;
    };
    if allowed.is_empty() {
        let Some((_, rest)) = origin.split_once("://") else {
            return false;
        };
        let mut hm = HeaderMap::new();
        let Ok(v) = HeaderValue::from_str(rest) else {
            return false;
        };
        hm.insert(header::HOST, v);
        let Some(origin_host) = request_host(&hm) else {
            return false;
        };
        if is_loopback_host(&origin_host) {
            return true;
        }
        let mut hm = HeaderMap::new();
        let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) else {
            return false;
        };
        hm.insert(header::HOST, v);
        return request_host(&hm).is_some_and(|h| h == origin_host);
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The router serving the client (and, with `ctx.admin_api`, the admin console), with its part of
/// the OpenAPI document. Mount it beside the API routers: it has no fallback of its own and none of
/// its paths collide with theirs.
pub fn router(ctx: Arc<WebContext>) -> OpenApiRouter {
    let mut r = OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(index_html))
        .routes(routes!(config))
        .routes(routes!(dev_signin))
        .routes(routes!(presence));
    // Assets have nested paths (`js/app.js`): a catch-all route, which OpenAPI writes `{path}`.
    let (_, paths, _) = routes!(asset);
    r = r.route("/assets/{*path}", get(asset));
    r.get_openapi_mut().paths.paths.extend(paths.paths);
    if ctx.admin_api {
        r = r.routes(routes!(admin));
    }
    // The only body is dev sign-in's small JSON.
    r.layer(DefaultBodyLimit::max(4096)).with_state(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("[::1]:6666"));
        assert_eq!(request_host(&h).as_deref(), Some("[::1]"));
        assert!(is_loopback_host("[::1]"));
        h.insert(header::HOST, HeaderValue::from_static("Example.com:6666"));
        assert_eq!(request_host(&h).as_deref(), Some("example.com"));
        assert!(!is_loopback_host("example.com"));
        assert!(is_loopback_host("127.0.0.2"));
        assert!(is_loopback_host("localhost"));
        h.insert(header::HOST, HeaderValue::from_static("evil.com\"; x"));
        assert_eq!(request_host(&h), None);
        assert_eq!(
            origin_of("wss://im.example.com:443/ws?x"),
            "wss://im.example.com:443"
        );
        assert_eq!(origin_of("https://a.b/v2"), "https://a.b");
    }

    #[test]
    fn websocket_origins() {
        let none: Vec<String> = Vec::new();
        assert!(ws_origin_allowed(&none, None, Some("im.example.com:13891")));
        assert!(ws_origin_allowed(
            &none,
            Some("http://127.0.0.1:6666"),
            Some("im.example.com:13891")
        ));
        assert!(ws_origin_allowed(
            &none,
            Some("http://localhost:6666"),
            Some("localhost:13891")
        ));
        assert!(ws_origin_allowed(
            &none,
            Some("https://im.example.com"),
            Some("im.example.com:13891")
        ));
        assert!(!ws_origin_allowed(
            &none,
            Some("https://evil.example"),
            Some("im.example.com:13891")
        ));
        assert!(!ws_origin_allowed(
            &none,
            Some("null"),
            Some("im.example.com:13891")
        ));
        assert!(!ws_origin_allowed(
            &none,
            Some("https://evil.example"),
            None
        ));
        let list = vec!["https://app.example.com".to_string()];
        assert!(ws_origin_allowed(
            &list,
            Some("https://app.example.com"),
            None
        ));
        assert!(!ws_origin_allowed(
            &list,
            Some("http://127.0.0.1:6666"),
            None
        ));
        assert!(ws_origin_allowed(
            &["*".to_string()],
            Some("https://x.y"),
            None
        ));
    }

    #[test]
    fn every_asset_is_embedded_and_config_is_validated() {
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{} is empty", a.path);
        }
        assert!(WebConfig::default().validate().is_empty());
        let bad = WebConfig {
            ws_url: "http://x".into(),
            token_url: "javascript:x".into(),
            ..WebConfig::default()
        };
        assert_eq!(bad.validate().len(), 2);
        for ok in ["https://app.example.com/im/token", "/login/token", ""] {
            let c = WebConfig {
                token_url: ok.into(),
                ..WebConfig::default()
            };
            assert!(c.validate().is_empty(), "{ok}");
        }
        let c = WebConfig {
            token_url: "//evil.example/t".into(),
            ..WebConfig::default()
        };
        assert_eq!(c.validate().len(), 1);
    }

    #[test]
    fn presence_asks_are_bounded() {
        assert_eq!(presence_uids(Some("uids=3,1,3")), Ok(vec![3, 1]));
        assert_eq!(presence_uids(Some("x=1&uids=5")), Ok(vec![5]));
        assert!(presence_uids(None).is_err());
        assert!(presence_uids(Some("uids=")).is_err());
        assert!(presence_uids(Some("uids=1,-2")).is_err());
        assert!(presence_uids(Some("uids=1,abc")).is_err());
        let many: Vec<String> = (1..=PRESENCE_MAX_UIDS + 1).map(|u| u.to_string()).collect();
        let q = format!("uids={}", many.join(","));
        assert!(presence_uids(Some(&q)).unwrap_err().contains("at most"));
    }
}
