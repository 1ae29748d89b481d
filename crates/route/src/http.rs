//! The router's HTTP API (docs/server-api.md, *Presence*, plus banter's additions). Any
//! method is accepted on the GoBelieve paths, as the original does.
//!
//! * `/online?appid=&uid=` → `{"online":bool}`: true when some access node subscribed the user
//!   with online = 1.
//! * `/all_online` → `[{"appid":7,"users":[1,2]}, …]`, each user once. Like GoBelieve it lists
//!   every *subscribed* user, online flag or not (so a user connected only through a session that
//!   does not count as online is listed); `?online_only=1` (banter) lists only users online on
//!   some node (docs/compatibility.md, *Cluster*: `/all_online`).
//! * `/summary` → connections with their subscription counts and queues, and totals.
//! * `/metrics` → Prometheus text. `/healthz` → `{"status":"ok"}`.
//!
//! Bad parameters answer 400 with GoBelieve's error shape `{"meta":{"code":400,"message":"…"}}`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router as Http};
use serde_json::json;

use crate::Router;

type Params = Query<HashMap<String, String>>;

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"meta": {"code": 400, "message": message}})),
    )
        .into_response()
}

/// A plain decimal integer parameter (an optional `-` and digits; no spaces, no `+`), as strict as
/// GoBelieve's.
fn int(q: &HashMap<String, String>, name: &str) -> Option<i64> {
    let v = q.get(name)?;
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

async fn online(State(r): State<Arc<Router>>, Query(q): Params) -> Response {
    let (Some(appid), Some(uid)) = (int(&q, "appid"), int(&q, "uid")) else {
        return bad_request("invalid query param");
    };
    Json(json!({"online": r.table.is_online(appid, uid)})).into_response()
}

async fn all_online(State(r): State<Arc<Router>>, Query(q): Params) -> Response {
    let online_only = match q.get("online_only").map(String::as_str) {
        None | Some("") | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(_) => return bad_request("invalid query param"),
    };
    let list: Vec<serde_json::Value> = r
        .table
        .all_users(online_only)
        .into_iter()
        .map(|(appid, users)| json!({"appid": appid, "users": users}))
        .collect();
    Json(list).into_response()
}

async fn summary(State(r): State<Arc<Router>>) -> Response {
    let conns: Vec<serde_json::Value> = r
        .table
        .conns()
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "peer": c.peer.to_string(),
                "users": c.users.load(Ordering::Relaxed),
                "rooms": c.rooms.load(Ordering::Relaxed),
                "queued": c.queued(),
                "received": c.received.load(Ordering::Relaxed),
                "sent": c.sent.load(Ordering::Relaxed),
                "dropped": c.dropped.load(Ordering::Relaxed),
            })
        })
        .collect();
    let (users, online, rooms) = r.table.counts();
    let m = &r.metrics;
    Json(json!({
        "connections": conns,
        "users": users,
        "online_users": online,
        "rooms": rooms,
        "publish_in": m.publish_in_user.load(Ordering::Relaxed)
            + m.publish_in_group.load(Ordering::Relaxed)
            + m.publish_in_room.load(Ordering::Relaxed),
        "publish_out": m.publish_out.load(Ordering::Relaxed),
        "dropped": m.dropped.load(Ordering::Relaxed),
        "push": {
            "sink": r.push.kind(),
            "requests": m.push_requests.load(Ordering::Relaxed),
            "jobs": m.push_jobs.load(Ordering::Relaxed),
            "delivered": r.push.delivered(),
            "dropped": r.push.dropped(),
        },
    }))
    .into_response()
}

async fn metrics(State(r): State<Arc<Router>>) -> Response {
    (
        [(header::CONTENT_TYPE, node::metrics::CONTENT_TYPE)],
        crate::metrics::render(&r),
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub(crate) fn router(r: Arc<Router>) -> Http {
    Http::new()
        .route("/online", any(online))
        .route("/all_online", any(all_online))
        .route("/summary", any(summary))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(r)
}
