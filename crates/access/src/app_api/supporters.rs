//! `GET /supporters?store_id=N`: one supporter of a customer-service store for the calling user.
//!
//! The candidates are the store's supporters from `app_api.supporters` and from the admin API (the
//! admin API's entry wins for the same seller). Supporters with a session on this node are preferred;
//! among the candidates the choice is `uid mod n`, so a user keeps talking to the same supporter
//! while the list does not change. The answer carries both shapes the SDKs read: the Android SDK's
//! `Supporter` (`id`, `appid`, `name`, `appname`) at the top level, and GoBelieve's API server's
//! `{"data": {"seller_id", "name", "status"}}`.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use backend::Supporter;
use serde_json::json;

use super::{authenticate, AppError, AppResult, Ctx};
use crate::openapi::ErrorBody;

/// Configured and admin-managed supporters of `store_id`, by seller id.
pub(crate) async fn of_store(ctx: &Ctx, store_id: i64) -> Result<Vec<Supporter>, AppError> {
    let mut all: BTreeMap<i64, Supporter> = ctx
        .api
        .config
        .supporters
        .iter()
        .filter(|s| s.store_id == store_id)
        .map(|s| (s.seller_id, s.clone()))
        .collect();
    for s in ctx.backend.supporters(store_id).await? {
        all.insert(s.seller_id, s);
    }
    Ok(all.into_values().collect())
}

#[utoipa::path(
    get,
    path = "/supporters",
    tag = "app",
    params(("store_id" = i64, Query, description = "Store (> 0)", minimum = 1)),
    responses(
        (status = 200, description = "One supporter: `{\"id\", \"appid\", \"name\", \"appname\", \"seller_id\", \"status\", \"data\": {…}}`", body = Object),
        (status = 404, description = "The store has no supporter", body = ErrorBody),
    ),
)]
pub(crate) async fn get_one(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> AppResult {
    let user = authenticate(&ctx.backend, &headers).await?;
    let store_id = q
        .get("store_id")
        .ok_or_else(|| AppError::bad("missing query parameter `store_id`"))?
        .parse::<i64>()
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| AppError::bad("query parameter `store_id` must be an integer > 0"))?;
    let list = of_store(&ctx, store_id).await?;
    if list.is_empty() {
        return Err(AppError::not_found(format!(
            "store {store_id} has no supporter"
        )));
    }
    let online: Vec<&Supporter> = list
        .iter()
        .filter(|s| ctx.route.is_online(s.appid, s.seller_id))
        .collect();
    let candidates: Vec<&Supporter> = if online.is_empty() {
        list.iter().collect()
    } else {
        online
    };
    let s = candidates[(user.uid.unsigned_abs() % candidates.len() as u64) as usize];
    let status = if ctx.route.is_online(s.appid, s.seller_id) {
        "online"
    } else {
        "offline"
    };
    Ok(Json(json!({
        "id": s.seller_id,
        "appid": s.appid,
        "name": s.name,
        "appname": s.appname,
        "seller_id": s.seller_id,
        "status": status,
        "data": {
            "seller_id": s.seller_id,
            "appid": s.appid,
            "name": s.name,
            "appname": s.appname,
            "status": status,
        },
    }))
    .into_response())
}
