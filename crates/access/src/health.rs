//! Liveness and readiness of the node, for orchestrators and operators.
//!
//! * `GET /healthz` answers 200 as long as the process serves HTTP (liveness), with each
//!   component's state in the body: the embedded store (`ok`, `degraded` with reasons,
//!   `recovering` from a failed write with the failure and since when, or `failed`) and the
//!   backend (`ok`, or `failing` with the last error and since when).
//! * `GET /readyz` answers 200 when the node can accept messages and logins, 503 (same body)
//!   when it cannot: the embedded store refuses appends, or the backend is failing.
//!
//! Both are exempt from `api.secret`. With store nodes (`cluster.storage_addrs`) the store's state
//! is on the store nodes' own endpoints and is not part of this node's readiness.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use store::StoreState;

use crate::app::{App, StoreClient};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The components' states, whether the node is ready, and why not.
fn report(app: &App) -> (bool, Value) {
    let mut unready: Vec<String> = Vec::new();
    let mut degraded = false;
    let store = match &app.store {
        StoreClient::Local(s) => {
            let h = s.health();
            match h.state {
                StoreState::Ok => {}
                StoreState::Degraded => degraded = true,
                StoreState::Recovering | StoreState::Failed => unready.push(format!(
                    "the message store is {} and refuses messages: {}",
                    h.state.as_str(),
                    h.reasons.join("; ")
                )),
            }
            json!({
                "mode": "local",
                "state": h.state.as_str(),
                "accepting": h.accepting,
                "reasons": h.reasons,
                "since": h.since.map(unix),
                "recovery_attempts": h.recovery_attempts,
                "recoveries": h.recoveries,
                "last_failure": h.last_failure.map(|(error, at)| json!({"error": error, "at": unix(at)})),
            })
        }
        StoreClient::Remote(_) => json!({ "mode": "remote" }),
    };
    let b = app.backend.health();
    if b.failing {
        unready.push(format!(
            "the {} backend is failing: {}",
            app.backend.kind(),
            b.last_error.as_ref().map_or("", |e| e.0.as_str())
        ));
    }
    let backend = json!({
        "kind": app.backend.kind(),
        "state": if b.failing { "failing" } else { "ok" },
        "since": b.since.map(unix),
        "failures": b.failures,
        "last_error": b.last_error.map(|(error, at)| json!({"error": error, "at": unix(at)})),
    });
    let ready = unready.is_empty();
    let status = if !ready {
        "failing"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    };
    (
        ready,
        json!({
            "status": status,
            "ready": ready,
            "unready_reasons": unready,
            "store": store,
            "backend": backend,
        }),
    )
}

/// Liveness: always 200 while the process answers, with the components' states.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "`{\"status\", \"ready\", \"unready_reasons\", \"store\", \"backend\"}`", body = Object)),
)]
pub(crate) async fn healthz(State(app): State<Arc<App>>) -> Response {
    Json(report(&app).1).into_response()
}

/// Readiness: 503 when the node cannot accept messages or logins.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready: the same report as `/healthz`", body = Object),
        (status = 503, description = "Not ready: the same report, `unready_reasons` saying why", body = Object),
    ),
)]
pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Response {
    let (ready, body) = report(&app);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
