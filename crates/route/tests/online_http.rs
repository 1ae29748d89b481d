//! Online flags and the HTTP API: `/online`, `/all_online` (with and without `online_only`),
//! `/summary`, `/healthz`, `/metrics`, and 400s for bad parameters.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::TestRouter;
use route::RouterConfig;
use serde_json::json;

#[tokio::test]
async fn online_flags_and_http_api() {
    let r = TestRouter::start(RouterConfig::default()).await;
    assert_eq!(r.json("/healthz").await, json!({"status": "ok"}));
    assert_eq!(
        r.json("/online?appid=7&uid=1").await,
        json!({"online": false})
    );
    assert_eq!(r.json("/all_online").await, json!([]));

    let mut a = r.node().await;
    let mut b = r.node().await;
    a.subscribe(7, 1, false).await;
    a.subscribe(7, 2, true).await;
    b.subscribe(7, 2, false).await; // subscribed by two nodes: listed once
    b.subscribe(8, 1, false).await;
    r.wait_subscriptions(&[(2, 0), (2, 0)]).await;
    assert_eq!(
        r.json("/online?appid=7&uid=1").await,
        json!({"online": false})
    );
    assert_eq!(
        r.json("/online?appid=7&uid=2").await,
        json!({"online": true})
    );
    assert_eq!(
        r.json("/all_online").await,
        json!([{"appid": 7, "users": [1, 2]}, {"appid": 8, "users": [1]}])
    );
    assert_eq!(
        r.json("/all_online?online_only=1").await,
        json!([{"appid": 7, "users": [2]}])
    );

    // SUBSCRIBE overwrites the flag.
    a.subscribe(7, 1, true).await;
    a.subscribe(7, 2, false).await;
    r.wait_summary("flags", |s| s["online_users"] == json!(1))
        .await;
    assert_eq!(
        r.json("/online?appid=7&uid=1").await,
        json!({"online": true})
    );
    assert_eq!(
        r.json("/online?appid=7&uid=2").await,
        json!({"online": false})
    );

    // A closed connection is forgotten.
    drop(a);
    r.wait_subscriptions(&[(2, 0)]).await;
    assert_eq!(
        r.json("/online?appid=7&uid=1").await,
        json!({"online": false})
    );
    assert_eq!(
        r.json("/all_online").await,
        json!([{"appid": 7, "users": [2]}, {"appid": 8, "users": [1]}])
    );
    let s = r.json("/summary").await;
    assert_eq!(
        (s["users"].clone(), s["online_users"].clone()),
        (json!(2), json!(0))
    );
    assert_eq!(s["push"]["sink"], json!("disabled"));

    // Bad parameters.
    for q in [
        "/online",
        "/online?appid=7",
        "/online?appid=x&uid=1",
        "/online?appid=7&uid=1.5",
        // Integers are plain decimal, as in GoBelieve: no spaces, no `+`, not empty.
        "/online?appid=%207&uid=1",
        "/online?appid=7&uid=1%20",
        "/online?appid=%2B7&uid=1",
        "/online?appid=&uid=1",
        "/all_online?online_only=maybe",
        "/all_online?online_only=%201",
    ] {
        let (status, body) = r.get(q).await;
        assert_eq!(status, 400, "{q}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v,
            json!({"meta": {"code": 400, "message": "invalid query param"}}),
            "{q}"
        );
    }

    let (status, metrics) = r.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "banter_route_connections 1",
        "banter_route_subscriptions 2",
        "banter_route_users 2",
        "banter_route_online_users 0",
        "banter_route_connections_accepted_total 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    b.unsubscribe(7, 2).await;
    b.unsubscribe(8, 1).await;
    r.wait_subscriptions(&[(0, 0)]).await;
    assert_eq!(r.json("/all_online").await, json!([]));
    r.stop().await;
}
