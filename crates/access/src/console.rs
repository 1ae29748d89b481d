//! What the admin console (`docs/web-client.md`) reads beyond `/metrics` and the admin API, behind
//! the same `api.secret` rule:
//!
//! | Method and path | Answer |
//! |---|---|
//! | `GET /admin/errors` | the process's recent WARN and ERROR log events ([`node::recent`]): `{"events": [{"at_ms", "level", "target", "text"}…], "dropped", "capacity"}`, oldest first |
//! | `GET /admin/cluster` | what this node knows of its cluster: `{"mode": "single"}`, or `{"mode": "cluster", "routers": [{"addr", "connected", …}], "stores": [{"addr", "role", "reachable", "leader", "log_end", "error"}]}` |
//!
//! The routers are this node's route links (their state and counters); the store nodes are pinged
//! once per request, each within [`PING_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::{App, StoreClient};

/// How long `/admin/cluster` waits for each store node's ping.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(
    get,
    path = "/admin/errors",
    tag = "admin",
    responses(
        (status = 200, description = "`{\"events\": [{\"at_ms\", \"level\", \"target\", \"text\"}…], \"dropped\", \"capacity\"}`, oldest first", body = Object),
    ),
)]
async fn errors() -> Response {
    Json(node::recent::snapshot()).into_response()
}

#[utoipa::path(
    get,
    path = "/admin/cluster",
    tag = "admin",
    responses(
        (status = 200, description = "`{\"mode\": \"single\"}`, or `{\"mode\": \"cluster\", \"routers\": […], \"stores\": […]}`", body = Object),
    ),
)]
async fn cluster(State(app): State<Arc<App>>) -> Response {
    let remote = match &app.store {
        StoreClient::Remote(r) => Some(r.clone()),
        StoreClient::Local(_) => None,
    };
    if !app.links.is_enabled() && remote.is_none() {
        return Json(json!({ "mode": "single" })).into_response();
    }
    let routers: Vec<Value> = app
        .links
        .stats()
        .into_iter()
        .map(|l| {
            json!({
                "addr": l.addr,
                "connected": l.connected,
                "queued": l.queued,
                "users": l.users,
                "rooms": l.rooms,
                "sent": l.sent,
                "received": l.received,
                "dropped": l.dropped,
                "connects": l.connects,
            })
        })
        .collect();
    let mut stores = Vec::new();
    if let Some(r) = remote {
        let (storage, group) = r.addrs();
        let role = |addr: &str| match (
            storage.iter().any(|a| a == addr),
            group.iter().any(|a| a == addr),
        ) {
            (true, true) => "personal and group queues",
            (true, false) => "personal queues",
            _ => "group queues",
        };
        let pings = tokio::time::timeout(PING_TIMEOUT, r.ping_all()).await;
        match pings {
            Ok(pings) => {
                for (addr, res) in pings {
                    let (reachable, leader, log_end, error) = match res {
                        Ok(p) => (true, Some(p.leader), Some(p.log_end), None),
                        Err(e) => (false, None, None, Some(e.to_string())),
                    };
                    stores.push(json!({
                        "addr": addr, "role": role(&addr), "reachable": reachable, "leader": leader,
                        "log_end": log_end, "error": error,
                    }));
                }
            }
            Err(_) => {
                let mut all = storage.clone();
                all.extend(group.iter().filter(|g| !storage.contains(g)).cloned());
                for addr in all {
                    stores.push(json!({
                        "addr": addr, "role": role(&addr), "reachable": false, "leader": null,
                        "log_end": null,
                        "error": format!("no answer within {} s", PING_TIMEOUT.as_secs()),
                    }));
                }
            }
        }
    }
    Json(json!({ "mode": "cluster", "routers": routers, "stores": stores })).into_response()
}

/// The routes of this module, merged into the HTTP API's admin router.
pub(crate) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(errors))
        .routes(routes!(cluster))
}
