//! The admin HTTP API of the group directory, user flags and friend and blacklist relations (JSON,
//! behind the same `api.secret` rule as the rest of the API). With the MySQL directory the same
//! calls write MySQL and announce the change on `group_manager_stream` (relations:
//! `relationship_stream`), so an operator can use either.
//!
//! | Method and path | Body | Answer |
//! |---|---|---|
//! | `POST /admin/groups` | `{"appid", "group_id"?, "name", "master"?, "super"?, "members": [uid…]}` | `{"group_id": n}` (an explicit id within 1 ..= 2^53 − 1, else one is allocated) |
//! | `GET /admin/groups?appid=&group_id=` | – | the group with its members |
//! | `POST /admin/groups/disband` | `{"appid", "group_id"}` | `{"disbanded": bool}` |
//! | `POST /admin/groups/members/add` | `{"appid", "group_id", "members": [uid…]}` | `{}` |
//! | `POST /admin/groups/members/remove` | `{"appid", "group_id", "members": [uid…]}` | `{}` |
//! | `POST /admin/groups/mute` | `{"appid", "group_id", "uid", "mute": bool}` | `{}` |
//! | `POST /admin/groups/rename` | `{"appid", "group_id", "name"}` | `{}` |
//! | `POST /admin/groups/upgrade` | `{"appid", "group_id"}` | `{}` (now a super group) |
//! | `POST /admin/users/forbidden` | `{"appid", "uid", "forbidden": bool}` | `{}` |
//! | `POST /admin/friends/add` | `{"appid", "uid", "friend_uid", "mutual"?: bool}` | `{"changed": bool}` ("`uid` lists `friend_uid` as a friend"; `mutual`: both ways) |
//! | `POST /admin/friends/remove` | the same | `{"changed": bool}` |
//! | `GET /admin/friends?appid=&uid=&after=&limit=` | – | `{"uids": [uid…], "next": uid or null}` (whom `uid` lists) |
//! | `POST /admin/blacklist/add` | `{"appid", "uid", "blocked_uid"}` | `{"changed": bool}` ("`uid` has blacklisted `blocked_uid`") |
//! | `POST /admin/blacklist/remove` | the same | `{"changed": bool}` |
//! | `GET /admin/blacklist?appid=&uid=&after=&limit=` | – | `{"uids": [uid…], "next": uid or null}` |
//!
//! Relation changes reach the checks of this node at once, and in MySQL mode every node through
//! `relationship_stream`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use backend::RelationKind;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{id, json_body, ApiError, Params};
use crate::app::App;
use crate::openapi::ErrorBody;

type ApiResult = Result<Response, ApiError>;

fn positive(name: &str, v: i64) -> Result<i64, ApiError> {
    if v > 0 {
        Ok(v)
    } else {
        Err(ApiError::bad(format!("`{name}` must be > 0")))
    }
}

fn done() -> ApiResult {
    Ok(Json(json!({})).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    appid: i64,
    #[serde(default)]
    group_id: Option<i64>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    master: i64,
    #[serde(default, rename = "super")]
    super_group: bool,
    #[serde(default)]
    members: Vec<i64>,
}

#[utoipa::path(
    post,
    path = "/admin/groups",
    tag = "admin",
    request_body = CreateReq,
    responses(
        (status = 200, description = "`{\"group_id\": n}`", body = Object),
    ),
)]
async fn create(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: CreateReq = json_body(&body)?;
    positive("appid", r.appid)?;
    if let Some(g) = r.group_id {
        positive("group_id", g)?;
    }
    if r.members.iter().any(|&m| m <= 0) {
        return Err(ApiError::bad("`members` must be uids > 0"));
    }
    let gid = app
        .groups
        .create(
            r.appid,
            r.group_id,
            &r.name,
            r.master,
            r.super_group,
            &r.members,
        )
        .await?;
    Ok(Json(json!({ "group_id": gid })).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/groups",
    tag = "admin",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("group_id" = i64, Query, description = "Group (> 0)", minimum = 1),
    ),
    responses(
        (status = 200, description = "The group with its members", body = Object),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn show(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    let appid = id(&q, "appid")?;
    let gid = id(&q, "group_id")?;
    let g =
        app.groups.get(appid, gid).await?.ok_or_else(|| {
            ApiError::not_found(format!("group {gid} does not exist in app {appid}"))
        })?;
    let mut members: Vec<_> = g
        .members
        .iter()
        .map(|(uid, m)| json!({"uid": uid, "mute": m.mute, "joined_at": m.joined_at}))
        .collect();
    members.sort_by_key(|m| m["uid"].as_i64());
    Ok(Json(json!({
        "appid": g.appid, "group_id": g.gid, "name": g.name, "master": g.master,
        "super": g.super_group, "members": members,
    }))
    .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GroupRef {
    appid: i64,
    group_id: i64,
}

#[utoipa::path(
    post,
    path = "/admin/groups/disband",
    tag = "admin",
    request_body = GroupRef,
    responses(
        (status = 200, description = "`{\"disbanded\": bool}`", body = Object),
    ),
)]
async fn disband(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: GroupRef = json_body(&body)?;
    let ok = app
        .groups
        .disband(
            positive("appid", r.appid)?,
            positive("group_id", r.group_id)?,
        )
        .await?;
    Ok(Json(json!({ "disbanded": ok })).into_response())
}

#[utoipa::path(
    post,
    path = "/admin/groups/upgrade",
    tag = "admin",
    request_body = GroupRef,
    responses(
        (status = 200, description = "`{}`: now a super group", body = Object),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn upgrade(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: GroupRef = json_body(&body)?;
    app.groups
        .upgrade(
            positive("appid", r.appid)?,
            positive("group_id", r.group_id)?,
        )
        .await?;
    done()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MembersReq {
    appid: i64,
    group_id: i64,
    members: Vec<i64>,
}

fn members_of(r: &MembersReq) -> Result<(i64, i64), ApiError> {
    if r.members.is_empty() || r.members.iter().any(|&m| m <= 0) {
        return Err(ApiError::bad(
            "`members` must be a non-empty list of uids > 0",
        ));
    }
    Ok((
        positive("appid", r.appid)?,
        positive("group_id", r.group_id)?,
    ))
}

#[utoipa::path(
    post,
    path = "/admin/groups/members/add",
    tag = "admin",
    request_body = MembersReq,
    responses(
        (status = 200, description = "`{}`", body = Object),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn add_members(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: MembersReq = json_body(&body)?;
    let (appid, gid) = members_of(&r)?;
    app.groups.add_members(appid, gid, &r.members).await?;
    done()
}

#[utoipa::path(
    post,
    path = "/admin/groups/members/remove",
    tag = "admin",
    request_body = MembersReq,
    responses(
        (status = 200, description = "`{}`", body = Object),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn remove_members(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: MembersReq = json_body(&body)?;
    let (appid, gid) = members_of(&r)?;
    app.groups.remove_members(appid, gid, &r.members).await?;
    done()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MuteReq {
    appid: i64,
    group_id: i64,
    uid: i64,
    mute: bool,
}

#[utoipa::path(
    post,
    path = "/admin/groups/mute",
    tag = "admin",
    request_body = MuteReq,
    responses(
        (status = 200, description = "`{}`", body = Object),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn mute(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: MuteReq = json_body(&body)?;
    app.groups
        .set_mute(
            positive("appid", r.appid)?,
            positive("group_id", r.group_id)?,
            positive("uid", r.uid)?,
            r.mute,
        )
        .await?;
    done()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RenameReq {
    appid: i64,
    group_id: i64,
    name: String,
}

#[utoipa::path(
    post,
    path = "/admin/groups/rename",
    tag = "admin",
    request_body = RenameReq,
    responses(
        (status = 200, description = "`{}`", body = Object),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn rename(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: RenameReq = json_body(&body)?;
    app.groups
        .rename(
            positive("appid", r.appid)?,
            positive("group_id", r.group_id)?,
            &r.name,
        )
        .await?;
    done()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ForbiddenReq {
    appid: i64,
    uid: i64,
    forbidden: bool,
}

#[utoipa::path(
    post,
    path = "/admin/users/forbidden",
    tag = "admin",
    request_body = ForbiddenReq,
    responses(
        (status = 200, description = "`{}`", body = Object),
    ),
)]
async fn forbidden(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let r: ForbiddenReq = json_body(&body)?;
    let (appid, uid) = (positive("appid", r.appid)?, positive("uid", r.uid)?);
    app.backend.set_forbidden(appid, uid, r.forbidden).await?;
    // Sessions on this node see it at once (other nodes through the backend's event stream).
    app.route.set_forbidden(appid, uid, r.forbidden);
    done()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FriendReq {
    appid: i64,
    uid: i64,
    friend_uid: i64,
    #[serde(default)]
    mutual: bool,
}

async fn set_friend(app: &App, body: &Bytes, on: bool) -> ApiResult {
    let r: FriendReq = json_body(body)?;
    let (appid, uid) = (positive("appid", r.appid)?, positive("uid", r.uid)?);
    let other = positive("friend_uid", r.friend_uid)?;
    let mut changed = app
        .relations
        .set(RelationKind::Friend, appid, uid, other, on)
        .await?;
    if r.mutual {
        changed |= app
            .relations
            .set(RelationKind::Friend, appid, other, uid, on)
            .await?;
    }
    Ok(Json(json!({ "changed": changed })).into_response())
}

#[utoipa::path(
    post,
    path = "/admin/friends/add",
    tag = "admin",
    request_body = FriendReq,
    responses(
        (status = 200, description = "`{\"changed\": bool}`: whether a row was added", body = Object),
    ),
)]
async fn add_friend(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    set_friend(&app, &body, true).await
}

#[utoipa::path(
    post,
    path = "/admin/friends/remove",
    tag = "admin",
    request_body = FriendReq,
    responses(
        (status = 200, description = "`{\"changed\": bool}`: whether a row was removed", body = Object),
    ),
)]
async fn remove_friend(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    set_friend(&app, &body, false).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BlockReq {
    appid: i64,
    uid: i64,
    blocked_uid: i64,
}

async fn set_blocked(app: &App, body: &Bytes, on: bool) -> ApiResult {
    let r: BlockReq = json_body(body)?;
    let changed = app
        .relations
        .set(
            RelationKind::Blacklist,
            positive("appid", r.appid)?,
            positive("uid", r.uid)?,
            positive("blocked_uid", r.blocked_uid)?,
            on,
        )
        .await?;
    Ok(Json(json!({ "changed": changed })).into_response())
}

#[utoipa::path(
    post,
    path = "/admin/blacklist/add",
    tag = "admin",
    request_body = BlockReq,
    responses(
        (status = 200, description = "`{\"changed\": bool}`: whether a row was added", body = Object),
    ),
)]
async fn add_blocked(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    set_blocked(&app, &body, true).await
}

#[utoipa::path(
    post,
    path = "/admin/blacklist/remove",
    tag = "admin",
    request_body = BlockReq,
    responses(
        (status = 200, description = "`{\"changed\": bool}`: whether a row was removed", body = Object),
    ),
)]
async fn remove_blocked(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    set_blocked(&app, &body, false).await
}

async fn list_relation(app: &App, q: &Params, kind: RelationKind) -> ApiResult {
    let appid = id(q, "appid")?;
    let uid = id(q, "uid")?;
    let (after, limit) = crate::server_api::page(q)?;
    let uids = app.relations.list(kind, appid, uid, after, limit).await?;
    let next = (uids.len() as i64 == limit)
        .then(|| uids.last().copied())
        .flatten();
    Ok(Json(json!({ "uids": uids, "next": next })).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/friends",
    tag = "admin",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "User (> 0)", minimum = 1),
        ("after" = Option<i64>, Query, description = "The last uid of the previous page (default 0)"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 ..= 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "`{\"uids\": [uid…], \"next\": uid or null}`: the users `uid` lists as friends", body = Object),
    ),
)]
async fn list_friends(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    list_relation(&app, &q, RelationKind::Friend).await
}

#[utoipa::path(
    get,
    path = "/admin/blacklist",
    tag = "admin",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "User (> 0)", minimum = 1),
        ("after" = Option<i64>, Query, description = "The last uid of the previous page (default 0)"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 ..= 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "`{\"uids\": [uid…], \"next\": uid or null}`: the users `uid` has blacklisted", body = Object),
    ),
)]
async fn list_blocked(State(app): State<Arc<App>>, q: Params) -> ApiResult {
    list_relation(&app, &q, RelationKind::Blacklist).await
}

/// Admin routes, merged into the API router.
pub(crate) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(create, show))
        .routes(routes!(disband))
        .routes(routes!(upgrade))
        .routes(routes!(add_members))
        .routes(routes!(remove_members))
        .routes(routes!(mute))
        .routes(routes!(rename))
        .routes(routes!(forbidden))
        .routes(routes!(list_friends))
        .routes(routes!(add_friend))
        .routes(routes!(remove_friend))
        .routes(routes!(list_blocked))
        .routes(routes!(add_blocked))
        .routes(routes!(remove_blocked))
}
