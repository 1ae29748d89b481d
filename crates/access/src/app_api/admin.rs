//! Operator endpoints of the app API's data, on the API listener behind `api.secret` like the rest
//! of the admin API (merged into the HTTP API's router):
//!
//! | Method and path | Body / query | Answer |
//! |---|---|---|
//! | `POST /admin/media/delete_user` | `{"appid", "uid"}` | `{"deleted_objects", "deleted_bytes"}` |
//! | `GET /admin/media/usage` | `?appid=&uid=` | `{"bytes"}` |
//! | `GET /admin/users/devices` | `?appid=&uid=` | `{"devices": [{"provider", "token", "bound_at"}]}` |
//! | `POST /admin/supporters` | `{"store_id", "supporters": [{"seller_id", "appid", "name"?, "appname"?}]}` | `{}` |
//! | `GET /admin/supporters` | `?store_id=` | `{"supporters": [...], "configured": [...]}` |
//! | `POST /admin/push/dnd` | `{"appid", "uid", "group_id"?, "on"}` | `{}` |
//! | `GET /admin/push/dnd` | `?appid=&uid=` | `{"user": bool, "groups": [gid…]}` |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use backend::{Backend, Supporter};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppApi;
use crate::api::{id, json_body, ApiError, Params};
use crate::openapi::ErrorBody;

type ApiResult = Result<Response, ApiError>;

/// What the operator endpoints need: the node's backend and the app API, unless disabled.
#[derive(Clone)]
struct AdminCtx {
    backend: Backend,
    api: Option<Arc<AppApi>>,
}

fn app_api(app: &AdminCtx) -> Result<&Arc<AppApi>, ApiError> {
    app.api
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the app API is disabled (app_api.enabled = false)"))
}

fn media_error(e: media::MediaError) -> ApiError {
    node::warn_throttled!(error = %e, "media storage error in the admin API");
    ApiError {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        message: format!("media storage error: {e}"),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserRef {
    appid: i64,
    uid: i64,
}

#[utoipa::path(
    post,
    path = "/admin/media/delete_user",
    tag = "admin",
    request_body = UserRef,
    responses(
        (status = 200, description = "`{\"deleted_objects\", \"deleted_bytes\"}`", body = Object),
        (status = 404, description = "The app API is disabled (`app_api.enabled = false`)", body = ErrorBody),
    ),
)]
async fn delete_user(State(app): State<AdminCtx>, body: Bytes) -> ApiResult {
    let r: UserRef = json_body(&body)?;
    if r.appid <= 0 || r.uid <= 0 {
        return Err(ApiError::bad("`appid` and `uid` must be > 0"));
    }
    let removed = app_api(&app)?
        .media
        .delete_user(r.appid, r.uid)
        .await
        .map_err(media_error)?;
    tracing::info!(
        appid = r.appid,
        uid = r.uid,
        objects = removed.objects,
        bytes = removed.bytes,
        "deleted a user's media"
    );
    Ok(
        Json(json!({"deleted_objects": removed.objects, "deleted_bytes": removed.bytes}))
            .into_response(),
    )
}

#[utoipa::path(
    get,
    path = "/admin/media/usage",
    tag = "admin",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "User (> 0)", minimum = 1),
    ),
    responses(
        (status = 200, description = "`{\"bytes\"}`", body = Object),
        (status = 404, description = "The app API is disabled (`app_api.enabled = false`)", body = ErrorBody),
    ),
)]
async fn usage(State(app): State<AdminCtx>, q: Params) -> ApiResult {
    let appid = id(&q, "appid")?;
    let uid = id(&q, "uid")?;
    let bytes = app_api(&app)?
        .media
        .usage(appid, uid)
        .await
        .map_err(media_error)?;
    Ok(Json(json!({ "bytes": bytes })).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/users/devices",
    tag = "admin",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "User (> 0)", minimum = 1),
    ),
    responses(
        (status = 200, description = "`{\"devices\": [{\"provider\", \"token\", \"bound_at\"}]}`", body = Object),
    ),
)]
async fn devices(State(app): State<AdminCtx>, q: Params) -> ApiResult {
    let appid = id(&q, "appid")?;
    let uid = id(&q, "uid")?;
    let list: Vec<_> = app
        .backend
        .devices(appid, uid)
        .await?
        .into_iter()
        .map(|d| json!({"provider": d.provider.name(), "token": d.token, "bound_at": d.bound_at}))
        .collect();
    Ok(Json(json!({ "devices": list })).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SupporterEntry {
    seller_id: i64,
    appid: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    appname: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetSupporters {
    store_id: i64,
    supporters: Vec<SupporterEntry>,
}

#[utoipa::path(
    post,
    path = "/admin/supporters",
    tag = "admin",
    request_body = SetSupporters,
    responses(
        (status = 200, description = "`{}`", body = Object),
    ),
)]
async fn set_supporters(State(app): State<AdminCtx>, body: Bytes) -> ApiResult {
    let r: SetSupporters = json_body(&body)?;
    let list: Vec<Supporter> = r
        .supporters
        .into_iter()
        .map(|s| Supporter {
            store_id: r.store_id,
            seller_id: s.seller_id,
            appid: s.appid,
            name: s.name,
            appname: s.appname,
        })
        .collect();
    app.backend.set_supporters(r.store_id, &list).await?;
    Ok(Json(json!({})).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/supporters",
    tag = "admin",
    params(
        ("store_id" = i64, Query, description = "Store (> 0)", minimum = 1),
    ),
    responses(
        (status = 200, description = "`{\"supporters\": [...], \"configured\": [...]}`", body = Object),
    ),
)]
async fn get_supporters(State(app): State<AdminCtx>, q: Params) -> ApiResult {
    let store_id = id(&q, "store_id")?;
    let stored = app.backend.supporters(store_id).await?;
    let configured: Vec<&Supporter> = app
        .api
        .as_ref()
        .map(|a| {
            a.config
                .supporters
                .iter()
                .filter(|s| s.store_id == store_id)
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({"supporters": stored, "configured": configured})).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetDnd {
    appid: i64,
    uid: i64,
    /// Absent or 0: the whole user.
    #[serde(default)]
    group_id: i64,
    on: bool,
}

#[utoipa::path(
    post,
    path = "/admin/push/dnd",
    tag = "admin",
    request_body = SetDnd,
    responses(
        (status = 200, description = "`{}`", body = Object),
    ),
)]
async fn set_dnd(State(app): State<AdminCtx>, body: Bytes) -> ApiResult {
    let r: SetDnd = json_body(&body)?;
    if r.appid <= 0 || r.uid <= 0 || r.group_id < 0 {
        return Err(ApiError::bad(
            "`appid` and `uid` must be > 0, `group_id` >= 0",
        ));
    }
    let scope = match r.group_id {
        0 => backend::DndScope::User,
        g => backend::DndScope::Group(g),
    };
    app.backend.set_dnd(r.appid, r.uid, scope, r.on).await?;
    Ok(Json(json!({})).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/push/dnd",
    tag = "admin",
    params(
        ("appid" = i64, Query, description = "App id (> 0)", minimum = 1),
        ("uid" = i64, Query, description = "User (> 0)", minimum = 1),
    ),
    responses(
        (status = 200, description = "`{\"user\": bool, \"groups\": [gid…]}`", body = Object),
    ),
)]
async fn get_dnd(State(app): State<AdminCtx>, q: Params) -> ApiResult {
    let appid = id(&q, "appid")?;
    let uid = id(&q, "uid")?;
    let d = app.backend.dnd(appid, uid).await?;
    Ok(Json(json!({"user": d.user, "groups": d.groups})).into_response())
}

/// The routes, merged into the API router (behind `api.secret`), working with the node's
/// `backend` and the app API (`None` when it is disabled: the media endpoints then answer 404).
pub fn routes<S: Clone + Send + Sync + 'static>(
    backend: Backend,
    api: Option<Arc<AppApi>>,
) -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(delete_user))
        .routes(routes!(usage))
        .routes(routes!(devices))
        .routes(routes!(set_supporters, get_supporters))
        .routes(routes!(set_dnd, get_dnd))
        .with_state(AdminCtx { backend, api })
}
