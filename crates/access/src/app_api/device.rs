//! `POST /device/bind` and `POST /device/unbind`: the JSON body names the device's push tokens in
//! the SDKs' fields — `apns_device_token`, `pushkit_device_token` (iOS), `ng_device_token`,
//! `xg_device_token`, `xm_device_token`, `hw_device_token`, `gcm_device_token`, `jp_device_token`
//! (Android) — any non-empty subset. They are stored where offline push reads them
//! ([`backend::devices`]). Answer: `{"success": true}` (unbind adds `"removed"`).
//!
//! `POST /push/dnd` (`{"group_id"?, "on"}`: do-not-disturb for the user, or for one group's
//! messages) and `GET /push/dnd` (`{"user", "groups"}`): the user's offline-push settings.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use backend::PushProvider;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{authenticate, AppError, AppResult, Ctx};

/// The tokens named in a bind/unbind body. Unknown fields are ignored (newer SDKs may send more).
fn tokens_of(body: &Bytes) -> Result<Vec<(PushProvider, String)>, AppError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| AppError::bad(format!("invalid json: {e}")))?;
    let Value::Object(map) = v else {
        return Err(AppError::bad("the body must be a JSON object"));
    };
    let mut out = Vec::new();
    for p in PushProvider::ALL {
        match map.get(&p.token_field()) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => out.push((p, s.clone())),
            Some(_) => {
                return Err(AppError::bad(format!(
                    "`{}` must be a string",
                    p.token_field()
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(AppError::bad(
            "no device token: give at least one of apns_device_token, pushkit_device_token, ng_device_token, xg_device_token, xm_device_token, hw_device_token, gcm_device_token, jp_device_token",
        ));
    }
    Ok(out)
}

#[utoipa::path(
    post,
    path = "/device/bind",
    tag = "app",
    request_body(content = Object, description = "Any non-empty subset of `apns_device_token`, `pushkit_device_token`, `ng_device_token`, `xg_device_token`, `xm_device_token`, `hw_device_token`, `gcm_device_token`, `jp_device_token` (strings)"),
    responses((status = 200, description = "`{\"success\": true}`", body = Object)),
)]
pub(crate) async fn bind(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> AppResult {
    let user = authenticate(&ctx.backend, &headers).await?;
    let tokens = tokens_of(&body)?;
    ctx.backend
        .bind_devices(user.appid, user.uid, &tokens)
        .await?;
    Ok(Json(json!({"success": true})).into_response())
}

#[utoipa::path(
    post,
    path = "/device/unbind",
    tag = "app",
    request_body(content = Object, description = "Any non-empty subset of `apns_device_token`, `pushkit_device_token`, `ng_device_token`, `xg_device_token`, `xm_device_token`, `hw_device_token`, `gcm_device_token`, `jp_device_token` (strings)"),
    responses((status = 200, description = "`{\"success\": true, \"removed\": n}`", body = Object)),
)]
pub(crate) async fn unbind(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> AppResult {
    let user = authenticate(&ctx.backend, &headers).await?;
    let tokens = tokens_of(&body)?;
    let removed = ctx
        .backend
        .unbind_devices(user.appid, user.uid, &tokens)
        .await?;
    Ok(Json(json!({"success": true, "removed": removed})).into_response())
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DndBody {
    /// Absent or 0: every message.
    #[serde(default)]
    group_id: i64,
    on: bool,
}

#[utoipa::path(
    post,
    path = "/push/dnd",
    tag = "app",
    request_body = DndBody,
    responses((status = 200, description = "`{\"success\": true}`", body = Object)),
)]
pub(crate) async fn set_dnd(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> AppResult {
    let user = authenticate(&ctx.backend, &headers).await?;
    let r: DndBody =
        serde_json::from_slice(&body).map_err(|e| AppError::bad(format!("invalid json: {e}")))?;
    let scope = match r.group_id {
        0 => backend::DndScope::User,
        g if g > 0 => backend::DndScope::Group(g),
        _ => return Err(AppError::bad("`group_id` must be >= 0")),
    };
    ctx.backend
        .set_dnd(user.appid, user.uid, scope, r.on)
        .await?;
    Ok(Json(json!({"success": true})).into_response())
}

#[utoipa::path(
    get,
    path = "/push/dnd",
    tag = "app",
    responses((status = 200, description = "`{\"user\": bool, \"groups\": [gid…]}`", body = Object)),
)]
pub(crate) async fn get_dnd(State(ctx): State<Ctx>, headers: HeaderMap) -> AppResult {
    let user = authenticate(&ctx.backend, &headers).await?;
    let d = ctx.backend.dnd(user.appid, user.uid).await?;
    Ok(Json(json!({"user": d.user, "groups": d.groups})).into_response())
}
