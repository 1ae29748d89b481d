//! The HTTP API (docs/http-api.md) for app servers and operators, plus banter's token endpoints,
//! `/metrics` (Prometheus text format), `/healthz` and `/readyz` (see [`crate::health`]).
//!
//! Every parameter is validated: a bad request gets a 4xx whose JSON body names the problem, in
//! GoBelieve's error shape `{"meta":{"code":N,"message":"…"}}`. Integer parameters are plain decimal
//! (an optional `-` and digits, nothing else: no spaces, no `+`), as strict as GoBelieve's; when a
//! query parameter is repeated, the first one counts, as in GoBelieve. Posting endpoints answer 200
//! only once the message is durably stored (the original answers 200 even when storage failed). When
//! `api.secret` is set, every request except `/healthz` and `/readyz` must carry
//! `Authorization: Bearer <secret>` (the scheme in any case), checked before the body is read.
//!
//! Request bodies are read whole before a handler runs: at most `api.max_body` bytes (413 otherwise)
//! within `api.body_timeout_secs` (408 and the connection closed otherwise), both with JSON errors.
//! Connection limits and header timeouts are the listener's (`listener`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use proto::cmd;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use store::QueueId;
use tracing::debug;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{id, int, json_body, message_json, opt_int, ApiError, Params};
use crate::app::{App, Stats};
use crate::handlers::peer;
use crate::openapi::{self, any_method, ApiDoc, ErrorBody};

type ApiResult = Result<Response, ApiError>;

fn content_of(app: &App, body: &Bytes) -> Result<bytes::Bytes, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad("the request body (message content) is empty"));
    }
    if body.len() > app.server.max_body - 36 {
        return Err(ApiError::bad(format!(
            "content of {} bytes exceeds the limit of {} bytes",
            body.len(),
            app.server.max_body - 36
        )));
    }
    Ok(body.clone())
}

/// The answer of a post whose message is not stored (nothing has a key).
fn delivered() -> ApiResult {
    Ok(Json(json!({"data": {}})).into_response())
}

/// `enforce=1`: a server post gets the checks a client's message would (membership, mute,
/// speak ban). Missing, empty, `0` or `false`: it does not (server posts are trusted, as in GoBelieve).
fn enforce(q: &Params) -> Result<bool, ApiError> {
    match q.get("enforce") {
        None | Some("" | "0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(v) => Err(ApiError::bad(format!(
            "query parameter `enforce` must be 1 or 0, got {v:?}"
        ))),
    }
}

/// The keys a group post's entries got: `{"id"}` for a super group's one queue, `{"ids": {uid: key}}`
/// for a normal group's member queues.
fn group_keys(keys: &[(QueueId, i64)]) -> Value {
    match keys {
        [(QueueId::Group { .. }, key)] => json!({ "id": key }),
        _ => {
            let ids: Map<String, Value> = keys
                .iter()
                .filter_map(|(q, key)| match q {
                    QueueId::User { uid, .. } => Some((uid.to_string(), json!(key))),
                    _ => None,
                })
                .collect();
            json!({ "ids": ids })
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GrantReq {
    appid: i64,
    uid: i64,
    #[serde(default)]
    user_name: String,
    /// Seconds the token lives; absent = until revoked.
    #[serde(default)]
    expires_in: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/auth/grant",
    tag = "auth",
    request_body = GrantReq,
    responses((status = 200, description = "`{\"token\", \"expires_in\"?}`: a token the user logs in with", body = Object)),
)]
async fn grant(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: GrantReq = json_body(&body)?;
    if r.appid <= 0 || r.uid <= 0 {
        return Err(ApiError::bad("`appid` and `uid` must be > 0"));
    }
    let token = app
        .backend
        .grant_expiring(r.appid, r.uid, &r.user_name, r.expires_in)
        .await?;
    let mut answer = json!({ "token": token });
    if let Some(secs) = r.expires_in {
        answer["expires_in"] = json!(secs);
    }
    Ok(Json(answer).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RevokeReq {
    token: String,
}

#[utoipa::path(
    post,
    path = "/auth/revoke",
    tag = "auth",
    request_body = RevokeReq,
    responses((status = 200, description = "`{\"revoked\": bool, \"sessions_closed\": n}`; the sessions that logged in with the token end", body = Object)),
)]
async fn revoke(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: RevokeReq = json_body(&body)?;
    if r.token.is_empty() {
        return Err(ApiError::bad("`token` must not be empty"));
    }
    let owner = app.backend.revoke(&r.token).await?;
    // The token no longer authenticates; the sessions that logged in with it end too.
    let sessions = owner.map_or(0, |(appid, uid)| {
        app.kick(appid, uid, backend::token_fingerprint(&r.token))
    });
    Ok(Json(json!({ "revoked": owner.is_some(), "sessions_closed": sessions })).into_response())
}

#[utoipa::path(
    method(get, post),
    path = "/post_peer_message",
    tag = "gobelieve",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("sender" = i64, Query, description = "Sender uid (> 0)", minimum = 1),
        ("receiver" = i64, Query, description = "Receiver uid (> 0)", minimum = 1),
    ),
    request_body(content = String, content_type = "text/plain", description = "The message content (not empty, at most server.max_body - 36 bytes)"),
    responses((status = 200, description = "Stored: `{\"data\": {\"id\", \"sender_id\"}}`, the sync keys in the receiver's and the sender's queues", body = Object)),
)]
async fn post_peer_message(State(app): State<Arc<App>>, q: Params, body: Bytes) -> ApiResult {
    let appid = id(&q, "appid")?;
    let sender = id(&q, "sender")?;
    let receiver = id(&q, "receiver")?;
    let content = content_of(&app, &body)?;
    let (receiver_key, sender_key) =
        peer::post_peer(&app, appid, sender, receiver, content).await?;
    Ok(Json(json!({"data": {"id": receiver_key, "sender_id": sender_key}})).into_response())
}

#[derive(Deserialize, ToSchema)]
struct SystemReq {
    appid: i64,
    receivers: Vec<i64>,
    content: String,
}

#[utoipa::path(
    method(get, post),
    path = "/post_system_message",
    tag = "gobelieve",
    request_body = SystemReq,
    responses((status = 200, description = "Stored: `{\"data\": {\"ids\": [key…]}}`", body = Object)),
)]
async fn post_system_message(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: SystemReq = json_body(&body)?;
    if r.appid <= 0 {
        return Err(ApiError::bad("`appid` must be > 0"));
    }
    if r.receivers.is_empty() || r.receivers.iter().any(|&u| u <= 0) {
        return Err(ApiError::bad(
            "`receivers` must be a non-empty list of uids > 0",
        ));
    }
    if r.receivers.len() > 10_000 {
        return Err(ApiError::bad("at most 10000 receivers per request"));
    }
    let content = content_of(&app, &Bytes::from(r.content))?;
    let ids = peer::post_system(&app, r.appid, &r.receivers, content).await?;
    Ok(Json(json!({"data": {"ids": ids}})).into_response())
}

#[utoipa::path(
    method(get, post),
    path = "/post_notification",
    tag = "gobelieve",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "Receiver uid (> 0)", minimum = 1),
    ),
    request_body(content = String, content_type = "text/plain", description = "The message content (not empty, at most server.max_body - 36 bytes)"),
    responses((status = 200, description = "Sent to the user's online sessions (not stored): `{\"data\": {}}`", body = Object)),
)]
async fn post_notification(State(app): State<Arc<App>>, q: Params, body: Bytes) -> ApiResult {
    let appid = id(&q, "appid")?;
    let uid = id(&q, "uid")?;
    let content = content_of(&app, &body)?;
    peer::post_notification(&app, appid, uid, content);
    delivered()
}

#[utoipa::path(
    method(get, post),
    path = "/post_realtime_message",
    tag = "gobelieve",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("sender" = i64, Query, description = "Sender uid (> 0)", minimum = 1),
        ("receiver" = i64, Query, description = "Receiver uid (> 0)", minimum = 1),
    ),
    request_body(content = String, content_type = "text/plain", description = "The message content (not empty, at most server.max_body - 36 bytes)"),
    responses((status = 200, description = "Sent to the receiver's online sessions (not stored): `{\"data\": {}}`", body = Object)),
)]
async fn post_realtime_message(State(app): State<Arc<App>>, q: Params, body: Bytes) -> ApiResult {
    let appid = id(&q, "appid")?;
    let sender = id(&q, "sender")?;
    let receiver = id(&q, "receiver")?;
    let content = content_of(&app, &body)?;
    let rt = proto::Rt {
        sender,
        receiver,
        content,
    };
    crate::handlers::rt::deliver_rt(&app, appid, &rt, 0);
    delivered()
}

#[utoipa::path(
    method(get, post),
    path = "/post_room_message",
    tag = "gobelieve",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "Sender uid (> 0)", minimum = 1),
        ("room" = i64, Query, description = "Room id (> 0)", minimum = 1),
        ("enforce" = Option<String>, Query, description = "`1`/`true`: refuse a speak-banned sender (`0`/`false`/absent: trusted)"),
    ),
    request_body(content = String, content_type = "text/plain", description = "The message content (not empty, at most server.max_body - 36 bytes)"),
    responses(
        (status = 200, description = "Sent to the room's members on line: `{\"data\": {}}`", body = Object),
        (status = 403, description = "`enforce=1` and the sender is speak-banned", body = ErrorBody),
    ),
)]
async fn post_room_message(State(app): State<Arc<App>>, q: Params, body: Bytes) -> ApiResult {
    let appid = id(&q, "appid")?;
    let uid = id(&q, "uid")?;
    let room = id(&q, "room")?;
    let content = content_of(&app, &body)?;
    if enforce(&q)? && app.backend.user_flags(appid, uid).await?.forbidden {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: "the sender is speak-banned".into(),
        });
    }
    crate::handlers::room::post_room(&app, appid, uid, room, content);
    delivered()
}

#[derive(Deserialize, ToSchema)]
struct CustomerReq {
    sender_appid: i64,
    sender: i64,
    receiver_appid: i64,
    receiver: i64,
    content: String,
}

#[utoipa::path(
    method(get, post),
    path = "/post_customer_message",
    tag = "gobelieve",
    request_body = CustomerReq,
    responses(
        (status = 200, description = "Stored: `{\"data\": {\"id\", \"sender_id\"}}` (`{}` when nothing was stored)", body = Object),
        (status = 403, description = "Customer-service messages are disabled (`server.kefu_appid = 0`)", body = ErrorBody),
    ),
)]
async fn post_customer_message(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: CustomerReq = json_body(&body)?;
    for (name, v) in [
        ("sender_appid", r.sender_appid),
        ("sender", r.sender),
        ("receiver_appid", r.receiver_appid),
        ("receiver", r.receiver),
    ] {
        if v <= 0 {
            return Err(ApiError::bad(format!("`{name}` must be > 0")));
        }
    }
    if app.server.kefu_appid == 0 {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: "customer-service messages are disabled (server.kefu_appid = 0)".into(),
        });
    }
    let content = content_of(&app, &Bytes::from(r.content))?;
    let keys = crate::handlers::customer::post_customer(
        &app,
        proto::Customer {
            sender_appid: r.sender_appid,
            sender: r.sender,
            receiver_appid: r.receiver_appid,
            receiver: r.receiver,
            timestamp: 0,
            content,
        },
    )
    .await?;
    let data = match keys {
        Some((receiver_key, sender_key)) => json!({"id": receiver_key, "sender_id": sender_key}),
        None => json!({}),
    };
    Ok(Json(json!({ "data": data })).into_response())
}

#[utoipa::path(
    method(get, post),
    path = "/post_group_message",
    tag = "gobelieve",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("sender" = i64, Query, description = "Sender uid (> 0)", minimum = 1),
        ("receiver" = i64, Query, description = "Group id (> 0)", minimum = 1),
        ("enforce" = Option<String>, Query, description = "`1`/`true`: the checks a client's message gets (membership, mute, speak ban)"),
    ),
    request_body(content = String, content_type = "text/plain", description = "The message content (not empty, at most server.max_body - 36 bytes)"),
    responses(
        (status = 200, description = "Stored: `{\"data\": {\"id\"}}` (super group) or `{\"data\": {\"ids\": {uid: key}}}`", body = Object),
        (status = 403, description = "`enforce=1` and the sender may not post to the group", body = ErrorBody),
        (status = 404, description = "No such group, or a group without members", body = ErrorBody),
    ),
)]
async fn post_group_message(State(app): State<Arc<App>>, q: Params, body: Bytes) -> ApiResult {
    let appid = id(&q, "appid")?;
    let sender = id(&q, "sender")?;
    let gid = id(&q, "receiver")?;
    let enforce = enforce(&q)?;
    let content = content_of(&app, &body)?;
    let keys =
        crate::handlers::group::post_group_message(&app, appid, sender, gid, content, enforce)
            .await?;
    Ok(Json(json!({ "data": group_keys(&keys) })).into_response())
}

#[derive(Deserialize, ToSchema)]
struct GroupNotificationReq {
    appid: i64,
    group_id: i64,
    notification: String,
    #[serde(default, rename = "super")]
    super_group: bool,
    /// Members to notify (non-numeric entries are ignored).
    #[serde(default)]
    #[schema(value_type = Vec<i64>)]
    members: Vec<serde_json::Value>,
}

#[utoipa::path(
    method(get, post),
    path = "/post_group_notification",
    tag = "gobelieve",
    request_body = GroupNotificationReq,
    responses(
        (status = 200, description = "Stored: as `/post_group_message`", body = Object),
        (status = 403, description = "`enforce=1` and the sender may not post to the group", body = ErrorBody),
        (status = 404, description = "No such group, or a group without members", body = ErrorBody),
    ),
)]
async fn post_group_notification(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: GroupNotificationReq = json_body(&body)?;
    if r.appid <= 0 || r.group_id <= 0 {
        return Err(ApiError::bad("`appid` and `group_id` must be > 0"));
    }
    // As in GoBelieve, non-numeric members are ignored.
    let members: Vec<i64> = r.members.iter().filter_map(|v| v.as_i64()).collect();
    let content = content_of(&app, &Bytes::from(r.notification))?;
    let keys = crate::handlers::group::post_group_notification(
        &app,
        r.appid,
        r.group_id,
        content,
        &members,
        r.super_group,
    )
    .await?;
    Ok(Json(json!({ "data": group_keys(&keys) })).into_response())
}

#[utoipa::path(
    method(get, post),
    path = "/load_latest_message",
    tag = "gobelieve",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "User (> 0)", minimum = 1),
        ("limit" = i64, Query, description = "Most messages (> 0; capped by sync.max_latest)"),
    ),
    responses((status = 200, description = "`{\"data\": [message…]}`, oldest first", body = Object)),
)]
async fn load_latest_message(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    let appid = id(&q, "appid")?;
    let uid = id(&q, "uid")?;
    let limit = int(&q, "limit")?;
    if limit <= 0 {
        return Err(ApiError::bad("query parameter `limit` must be > 0"));
    }
    let limit = (limit as usize).min(app.sync.max_latest);
    let msgs = app
        .store
        .latest(QueueId::User { appid, uid }, limit)
        .await?;
    let data: Vec<Value> = msgs
        .iter()
        .filter(|m| m.cmd != cmd::SYSTEM)
        .filter_map(message_json)
        .collect();
    Ok(Json(json!({ "data": data })).into_response())
}

#[utoipa::path(
    method(get, post),
    path = "/load_history_message",
    tag = "gobelieve",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "User (> 0)", minimum = 1),
        ("last_id" = i64, Query, description = "Sync key after which to read (>= 0)", minimum = 0),
    ),
    responses((status = 200, description = "`{\"data\": [message…], \"last_id\", \"has_more\"}`", body = Object)),
)]
async fn load_history_message(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    let appid = id(&q, "appid")?;
    let uid = id(&q, "uid")?;
    let last_id = int(&q, "last_id")?;
    if last_id < 0 {
        return Err(ApiError::bad("query parameter `last_id` must be >= 0"));
    }
    let page = app
        .store
        .sync(
            QueueId::User { appid, uid },
            last_id,
            app.sync.batch_messages,
        )
        .await?;
    let data: Vec<Value> = page.messages.iter().filter_map(message_json).collect();
    Ok(
        Json(json!({ "data": data, "last_id": page.last_key, "has_more": page.has_more }))
            .into_response(),
    )
}

#[utoipa::path(
    method(get, post),
    path = "/get_offline_count",
    tag = "gobelieve",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "User (> 0)", minimum = 1),
        ("sync_key" = Option<i64>, Query, description = "Count after this key (>= 0; absent or 0: the user's stored sync key)"),
    ),
    responses((status = 200, description = "`{\"data\": {\"count\"}}`", body = Object)),
)]
async fn get_offline_count(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    let appid = id(&q, "appid")?;
    let uid = id(&q, "uid")?;
    let mut key = opt_int(&q, "sync_key")?.unwrap_or(0);
    if key < 0 {
        return Err(ApiError::bad("query parameter `sync_key` must be >= 0"));
    }
    if key == 0 {
        key = app.backend.sync_key(appid, uid).await?;
    }
    let count = app
        .store
        .new_count(QueueId::User { appid, uid }, key)
        .await?;
    Ok(Json(json!({ "data": { "count": count } })).into_response())
}

/// Resident set size of this process, from /proc.
pub fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[utoipa::path(
    method(get, post),
    path = "/summary",
    tag = "operations",
    params(("appid" = Option<i64>, Query, description = "Also the figures of this app")),
    responses((status = 200, description = "Connection, client and message counts (GoBelieve's `/summary` fields plus `pid`, `rss_bytes`)", body = Object)),
)]
async fn summary(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    let appid = opt_int(&q, "appid")?;
    let st = &app.stats;
    let (users, clients) = app.route.counts(None);
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let mut obj = Map::new();
    obj.insert("goroutine_count".into(), json!(tasks));
    obj.insert(
        "connection_count".into(),
        json!(Stats::get(&st.connections)),
    );
    obj.insert("client_count".into(), json!(clients));
    obj.insert("clientset_count".into(), json!(users));
    obj.insert(
        "in_message_count".into(),
        json!(Stats::get(&st.messages_in)),
    );
    obj.insert(
        "out_message_count".into(),
        json!(Stats::get(&st.deliveries)),
    );
    obj.insert("pid".into(), json!(std::process::id()));
    obj.insert("rss_bytes".into(), json!(rss_bytes()));
    if let Some(a) = appid.filter(|&a| a != 0) {
        let (u, c) = app.route.counts(Some(a));
        let (rooms, room_clients, big) = app.rooms.stats(a, 1000);
        let room_stat: Map<String, Value> = big
            .into_iter()
            .map(|(room, n)| (room.to_string(), json!(n)))
            .collect();
        obj.insert(
            format!("app_{a}"),
            json!({"clientset_count": u, "client_count": c, "room_count": rooms, "room_client_count": room_clients, "room_stat": room_stat}),
        );
    }
    Ok(Json(Value::Object(obj)).into_response())
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, node::metrics::CONTENT_TYPE)],
        app.render_metrics(),
    )
        .into_response()
}

async fn require_secret(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if app.api.secret.is_empty() || matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    if node::admin::authorized(&headers, &app.api.secret) {
        next.run(req).await
    } else {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong `Authorization: Bearer <api.secret>` header".into(),
        }
        .into_response()
    }
}

/// Reads the whole request body, at most `api.max_body` bytes within `api.body_timeout_secs`, before
/// the handler runs; answers 413 or 408 (closing the connection) with a JSON error otherwise.
async fn read_body(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let max = app.api.max_body;
    let too_large = || {
        Stats::inc(&app.stats.api_bodies_refused);
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body exceeds the limit of {max} bytes (api.max_body)"),
        }
        .into_response()
    };
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let limit = Duration::from_secs(app.api.body_timeout_secs);
    let body = match tokio::time::timeout(limit, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            debug!(error = %e, "cannot read an HTTP request body");
            return ApiError::bad(format!("cannot read the request body: {e}")).into_response();
        }
        Err(_) => {
            Stats::inc(&app.stats.api_bodies_refused);
            debug!(path = parts.uri.path(), "HTTP request body timed out");
            let mut r = ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                message: format!(
                    "the request body was not received within {} s (api.body_timeout_secs)",
                    limit.as_secs()
                ),
            }
            .into_response();
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return r;
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

pub(crate) async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint".into(),
    }
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "method not allowed on this endpoint".into(),
    }
}

/// The error answers every operation of this router may give besides its own.
const ERRORS: &[(StatusCode, &str)] = &[
    (
        StatusCode::BAD_REQUEST,
        "A parameter or the body is missing or invalid (the message names it)",
    ),
    (
        StatusCode::UNAUTHORIZED,
        "`api.secret` is set and the request lacks `Authorization: Bearer <api.secret>`",
    ),
    (
        StatusCode::REQUEST_TIMEOUT,
        "The body did not arrive within `api.body_timeout_secs`",
    ),
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        "The body exceeds `api.max_body`",
    ),
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "The message store or the backend failed",
    ),
];

/// The API router and its document: GoBelieve's endpoints, tokens, operations and `admin`'s routes
/// (the admin and server APIs, defined beside it), all behind the same authentication and body
/// limits. GoBelieve's endpoints accept any method, as the original does.
pub(crate) fn router(app: Arc<App>, admin: OpenApiRouter<Arc<App>>) -> OpenApiRouter {
    let mut api = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(grant))
        .routes(routes!(revoke))
        .routes(any_method!(post_peer_message))
        .routes(any_method!(post_system_message))
        .routes(any_method!(post_notification))
        .routes(any_method!(post_realtime_message))
        .routes(any_method!(post_room_message))
        .routes(any_method!(post_group_message))
        .routes(any_method!(post_group_notification))
        .routes(any_method!(post_customer_message))
        .routes(any_method!(load_latest_message))
        .routes(any_method!(load_history_message))
        .routes(any_method!(get_offline_count))
        .routes(any_method!(summary))
        .routes(routes!(metrics))
        .routes(routes!(crate::health::healthz))
        .routes(routes!(crate::health::readyz))
        .routes(routes!(crate::openapi::openapi_json))
        .merge(admin);
    openapi::document_security(api.get_openapi_mut(), "api_secret");
    openapi::document_errors(api.get_openapi_mut(), ERRORS);
    api.fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), read_body))
        .layer(middleware::from_fn_with_state(app.clone(), require_secret))
        .layer(DefaultBodyLimit::max(app.api.max_body))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Records each request's duration by route template (bounded: unmatched paths are one label),
/// method and status.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let response = next.run(req).await;
    app.metrics.http_request(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
