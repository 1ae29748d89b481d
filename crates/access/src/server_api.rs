//! The server API banter adds beside GoBelieve's endpoints, for an app's backend and its operators
//! (behind the same `api.secret` rule as the rest of the HTTP API; errors in the same JSON shape):
//!
//! | Method and path | Input | Answer |
//! |---|---|---|
//! | `POST /auth/revoke_user` | `{"appid", "uid"}` | `{"revoked": n, "sessions_closed": n}`: every stored token of the user revoked, every session closed (on every node in cluster mode) |
//! | `POST /admin/users/kick` | `{"appid", "uid"}` | `{"sessions_closed": n}`: the user's sessions closed, tokens kept (clients may log in again) |
//! | `GET /admin/groups/list` | `appid`, `after`?, `limit`? | `{"groups": [{"group_id", "name", "master", "super", "members"}…], "next": id or null}` |
//! | `GET /admin/users/groups` | `appid`, `uid`, `after`?, `limit`? | the groups the user is a member of, same shape |
//! | `GET /load_group_history_message` | `appid`, `group_id`, `last_id` | a super group's messages after `last_id`: `{"data", "last_id", "has_more"}` like `/load_history_message` |
//! | `GET /load_latest_group_message` | `appid`, `group_id`, `limit` | a super group's newest messages, oldest first: `{"data"}` like `/load_latest_message` |
//! | `GET /online` | `appid`, `uid` | `{"online": bool}` (single-node mode; in cluster mode the routers answer it) |
//! | `GET /all_online` | `online_only`? | `[{"appid", "users": [uid…]}…]` (single-node mode, as the router's) |
//!
//! Listings page by id: `after` (default 0) is the last id of the previous page, `limit` 1 ..= 1000
//! (default 100); `next` is the `after` of the next page, `null` on the last one.
//! `sessions_closed` counts this node's sessions; other nodes close theirs when the router passes the
//! request on. `/online` and `/all_online` answer 404 on an access node of a cluster, naming the
//! router's API instead: only the routers know every node's sessions.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use store::QueueId;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{id, int, json_body, message_json, opt_int, ApiError, Params};
use crate::app::App;
use crate::openapi::{any_method, ErrorBody};

type ApiResult = Result<Response, ApiError>;

/// Groups per page when `limit` is not given.
const DEFAULT_LIMIT: i64 = 100;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserReq {
    appid: i64,
    uid: i64,
}

fn user_req(body: &Bytes) -> Result<UserReq, ApiError> {
    let r: UserReq = json_body(body)?;
    if r.appid <= 0 || r.uid <= 0 {
        return Err(ApiError::bad("`appid` and `uid` must be > 0"));
    }
    Ok(r)
}

#[utoipa::path(
    post,
    path = "/auth/revoke_user",
    tag = "auth",
    request_body = UserReq,
    responses(
        (status = 200, description = "`{\"revoked\": n, \"sessions_closed\": n}`", body = Object),
    ),
)]
async fn revoke_user(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r = user_req(&body)?;
    let revoked = app.backend.revoke_user(r.appid, r.uid).await?;
    let sessions = app.kick(r.appid, r.uid, 0);
    Ok(Json(json!({ "revoked": revoked, "sessions_closed": sessions })).into_response())
}

#[utoipa::path(
    post,
    path = "/admin/users/kick",
    tag = "admin",
    request_body = UserReq,
    responses(
        (status = 200, description = "`{\"sessions_closed\": n}`; tokens are kept", body = Object),
    ),
)]
async fn kick(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r = user_req(&body)?;
    let sessions = app.kick(r.appid, r.uid, 0);
    Ok(Json(json!({ "sessions_closed": sessions })).into_response())
}

/// `after` and `limit` of a listing.
pub(crate) fn page(q: &Params) -> Result<(i64, i64), ApiError> {
    let after = opt_int(q, "after")?.unwrap_or(0);
    let limit = opt_int(q, "limit")?.unwrap_or(DEFAULT_LIMIT);
    Ok((after, limit))
}

fn listing(groups: Vec<backend::GroupSummary>, limit: i64) -> Response {
    let next = (groups.len() as i64 == limit)
        .then(|| groups.last().map(|g| g.group_id))
        .flatten();
    Json(json!({ "groups": groups, "next": next })).into_response()
}

#[utoipa::path(
    get,
    path = "/admin/groups/list",
    tag = "admin",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("after" = Option<i64>, Query, description = "The last id of the previous page (default 0)"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 ..= 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "`{\"groups\": [{\"group_id\", \"name\", \"master\", \"super\", \"members\"}…], \"next\": id or null}`", body = Object),
    ),
)]
async fn list_groups(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    let appid = id(&q, "appid")?;
    let (after, limit) = page(&q)?;
    let groups = app.groups.list(appid, after, limit).await?;
    Ok(listing(groups, limit))
}

#[utoipa::path(
    get,
    path = "/admin/users/groups",
    tag = "admin",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "User (> 0)", minimum = 1),
        ("after" = Option<i64>, Query, description = "The last id of the previous page (default 0)"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 ..= 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "The groups the user is a member of, as `/admin/groups/list`", body = Object),
    ),
)]
async fn user_groups(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    let appid = id(&q, "appid")?;
    let uid = id(&q, "uid")?;
    let (after, limit) = page(&q)?;
    let groups = app.groups.groups_of(appid, uid, after, limit).await?;
    Ok(listing(groups, limit))
}

/// The super group `group_id` of `appid`, or the error naming why it has no group history.
async fn super_group(app: &App, q: &Params) -> Result<QueueId, ApiError> {
    let appid = id(q, "appid")?;
    let gid = id(q, "group_id")?;
    match app.groups.get(appid, gid).await? {
        None => Err(ApiError::not_found(format!(
            "no group {gid} in app {appid}"
        ))),
        Some(g) if !g.super_group => Err(ApiError::bad(format!(
            "group {gid} is a normal group: its messages are in each member's history \
             (/load_history_message)"
        ))),
        Some(_) => Ok(QueueId::Group { appid, gid }),
    }
}

#[utoipa::path(
    method(get, post),
    path = "/load_group_history_message",
    tag = "server",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("group_id" = i64, Query, description = "Super group (> 0)", minimum = 1),
        ("last_id" = i64, Query, description = "Sync key after which to read (>= 0)", minimum = 0),
    ),
    responses(
        (status = 200, description = "`{\"data\": [message…], \"last_id\", \"has_more\"}`", body = Object),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn group_history(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    let last_id = int(&q, "last_id")?;
    if last_id < 0 {
        return Err(ApiError::bad("query parameter `last_id` must be >= 0"));
    }
    let queue = super_group(&app, &q).await?;
    let page = app
        .store
        .sync(queue, last_id, app.sync.batch_messages)
        .await?;
    let data: Vec<Value> = page.messages.iter().filter_map(message_json).collect();
    Ok(
        Json(json!({ "data": data, "last_id": page.last_key, "has_more": page.has_more }))
            .into_response(),
    )
}

#[utoipa::path(
    method(get, post),
    path = "/load_latest_group_message",
    tag = "server",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("group_id" = i64, Query, description = "Super group (> 0)", minimum = 1),
        ("limit" = i64, Query, description = "Most messages (> 0)", minimum = 1),
    ),
    responses(
        (status = 200, description = "`{\"data\": [message…]}`, oldest first", body = Object),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn latest_group(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    let limit = int(&q, "limit")?;
    if limit <= 0 {
        return Err(ApiError::bad("query parameter `limit` must be > 0"));
    }
    let queue = super_group(&app, &q).await?;
    let limit = (limit as usize).min(app.sync.max_latest);
    let msgs = app.store.latest(queue, limit).await?;
    let data: Vec<Value> = msgs.iter().filter_map(message_json).collect();
    Ok(Json(json!({ "data": data })).into_response())
}

fn cluster_presence() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "this access node is part of a cluster: ask a router's HTTP API (`banter imr`) \
                  for /online and /all_online, which knows every node's sessions"
            .into(),
    }
}

#[utoipa::path(
    method(get, post),
    path = "/online",
    tag = "server",
    params(
        ("appid" = i64, Query, description = "App id"),
        ("uid" = i64, Query, description = "User"),
    ),
    responses(
        (status = 200, description = "`{\"online\": bool}`", body = Object),
        (status = 404, description = "An access node of a cluster: ask a router's API", body = ErrorBody),
    ),
)]
async fn online(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    if app.links.is_enabled() {
        return Err(cluster_presence());
    }
    let appid = int(&q, "appid")?;
    let uid = int(&q, "uid")?;
    Ok(Json(json!({ "online": app.route.is_online(appid, uid) })).into_response())
}

#[utoipa::path(
    method(get, post),
    path = "/all_online",
    tag = "server",
    params(
        ("online_only" = Option<String>, Query, description = "`1`/`true`: only users with a session marked online"),
    ),
    responses(
        (status = 200, description = "`[{\"appid\", \"users\": [uid…]}…]`", body = [Object]),
        (status = 404, description = "An access node of a cluster: ask a router's API", body = ErrorBody),
    ),
)]
async fn all_online(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    if app.links.is_enabled() {
        return Err(cluster_presence());
    }
    let online_only = match q.get("online_only") {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(v) => {
            return Err(ApiError::bad(format!(
                "query parameter `online_only` must be 1 or 0, got {v:?}"
            )))
        }
    };
    let mut users: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for s in app.route.all() {
        if !online_only || s.online {
            users.entry(s.appid).or_default().push(s.uid);
        }
    }
    let list: Vec<Value> = users
        .into_iter()
        .map(|(appid, mut uids)| {
            uids.sort_unstable();
            uids.dedup();
            json!({ "appid": appid, "users": uids })
        })
        .collect();
    Ok(Json(list).into_response())
}

/// The routes of this module, merged into the HTTP API's router.
pub(crate) fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(revoke_user))
        .routes(routes!(kick))
        .routes(routes!(list_groups))
        .routes(routes!(user_groups))
        .routes(any_method!(group_history))
        .routes(any_method!(latest_group))
        .routes(any_method!(online))
        .routes(any_method!(all_online))
}
