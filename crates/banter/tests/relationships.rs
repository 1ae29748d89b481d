//! Friendship and blacklist checks end to end: real servers, real sockets. In the embedded mode the
//! admin API changes relations; in GoBelieve's MySQL mode (real MariaDB + Redis) the test plays
//! GoBelieve's API server — rows in `friend` / `blacklist`, events on `relationship_stream` — and a
//! second node's admin API reaches the first through the stream. Every change must reach an
//! already-connected session within a second.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::{Duration, Instant};

use common::*;
use proto::{cmd, AckStatus, Body};
use serde_json::json;

/// How soon a change must reach a connected session.
const WITHIN: Duration = Duration::from_secs(1);

/// Sends an IM and returns its ACK status.
async fn send(c: &mut Client, sender: i64, receiver: i64) -> i8 {
    let seq = c.send_im(sender, receiver, "{\"text\":\"hi\"}").await;
    let (ack, _) = c.recv_until(cmd::ACK).await;
    match body_of(&ack) {
        Body::Ack(a) => {
            assert_eq!(a.seq, seq);
            a.status
        }
        other => panic!("{other:?}"),
    }
}

/// Sends until the ACK status is `want`, failing after [`WITHIN`]; the messages sent before are
/// refused ones.
async fn eventually(c: &mut Client, sender: i64, receiver: i64, want: i8) {
    let start = Instant::now();
    loop {
        let got = send(c, sender, receiver).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < WITHIN,
            "status {got}, not {want}, {:?} after the change",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The receiver got the message (METADATA + IM + SYNC_NOTIFY).
async fn arrives(c: &mut Client, sender: i64) {
    let (im, _) = c.recv_until(cmd::IM).await;
    assert_eq!(im_of(&im).sender, sender);
    assert_eq!(c.recv().await.unwrap().cmd, cmd::SYNC_NOTIFY);
}

async fn admin(s: &TestServer, path: &str, body: serde_json::Value) -> serde_json::Value {
    let (st, v) = post_json(s.http, path, &body).await;
    assert_eq!(st, 200, "{path}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_relations_through_the_admin_api() {
    let s = TestServer::start_with(|c| {
        c.relationships.friendship = true;
        c.relationships.blacklist = true;
    })
    .await
    .unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    let mut b = Client::login(&s, 2, 2, false, "b").await;

    // Strangers.
    assert_eq!(send(&mut a, 1, 2).await, AckStatus::NOT_MY_FRIEND);
    // 1 lists 2, 2 does not list 1.
    let v = admin(
        &s,
        "/admin/friends/add",
        json!({"appid": APPID, "uid": 1, "friend_uid": 2}),
    )
    .await;
    assert_eq!(v["changed"], true);
    eventually(&mut a, 1, 2, AckStatus::NOT_YOUR_FRIEND).await;
    // Both ways: delivered.
    admin(
        &s,
        "/admin/friends/add",
        json!({"appid": APPID, "uid": 2, "friend_uid": 1}),
    )
    .await;
    eventually(&mut a, 1, 2, AckStatus::SUCCESS).await;
    arrives(&mut b, 1).await;
    assert_eq!(send(&mut b, 2, 1).await, AckStatus::SUCCESS);
    arrives(&mut a, 2).await;
    let (st, v) = http(
        s.http,
        "GET",
        &format!("/admin/friends?appid={APPID}&uid=1"),
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v, json!({"uids": [2], "next": null}));

    // 2 blacklists 1: 1 is refused, 2 may still write.
    let v = admin(
        &s,
        "/admin/blacklist/add",
        json!({"appid": APPID, "uid": 2, "blocked_uid": 1}),
    )
    .await;
    assert_eq!(v["changed"], true);
    eventually(&mut a, 1, 2, AckStatus::IN_YOUR_BLACKLIST).await;
    assert_eq!(send(&mut b, 2, 1).await, AckStatus::SUCCESS);
    arrives(&mut a, 2).await;
    admin(
        &s,
        "/admin/blacklist/remove",
        json!({"appid": APPID, "uid": 2, "blocked_uid": 1}),
    )
    .await;
    eventually(&mut a, 1, 2, AckStatus::SUCCESS).await;
    arrives(&mut b, 1).await;

    // Unfriending both ways at once.
    let v = admin(
        &s,
        "/admin/friends/remove",
        json!({"appid": APPID, "uid": 1, "friend_uid": 2, "mutual": true}),
    )
    .await;
    assert_eq!(v["changed"], true);
    eventually(&mut a, 1, 2, AckStatus::NOT_MY_FRIEND).await;
    let v = admin(
        &s,
        "/admin/friends/remove",
        json!({"appid": APPID, "uid": 1, "friend_uid": 2}),
    )
    .await;
    assert_eq!(v["changed"], false, "already gone");

    // Bad input: 400 with the API's JSON error.
    for (path, body) in [
        (
            "/admin/friends/add",
            json!({"appid": APPID, "uid": 0, "friend_uid": 2}),
        ),
        ("/admin/friends/add", json!({"appid": APPID, "uid": 1})),
        (
            "/admin/friends/add",
            json!({"appid": APPID, "uid": 1, "friend_uid": 2, "extra": 1}),
        ),
        (
            "/admin/blacklist/add",
            json!({"appid": -1, "uid": 1, "blocked_uid": 2}),
        ),
        (
            "/admin/blacklist/remove",
            json!({"appid": APPID, "uid": 1, "friend_uid": 2}),
        ),
    ] {
        let (st, v) = post_json(s.http, path, &body).await;
        assert_eq!(st, 400, "{path} {body}: {v}");
        assert_eq!(v["meta"]["code"], 400, "{v}");
        assert!(v["meta"]["message"].is_string(), "{v}");
    }
    let (st, _) = http(s.http, "POST", "/admin/friends/add", &[], b"not json").await;
    assert_eq!(st, 400);
    for q in [
        "appid=7",
        "appid=7&uid=1&limit=0",
        "appid=7&uid=1&after=-1",
        "appid=x&uid=1",
    ] {
        let (st, v) = http(s.http, "GET", &format!("/admin/blacklist?{q}"), &[], b"").await;
        assert_eq!(st, 400, "{q}: {v}");
        assert!(v.contains("\"message\""), "{v}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_off_by_default() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    let mut b = Client::login(&s, 2, 2, false, "b").await;
    admin(
        &s,
        "/admin/blacklist/add",
        json!({"appid": APPID, "uid": 2, "blocked_uid": 1}),
    )
    .await;
    assert_eq!(send(&mut a, 1, 2).await, AckStatus::SUCCESS);
    arrives(&mut b, 1).await;
    s.stop().await;
}

/// Writes GoBelieve's way: the row, then an event with the next action id.
async fn gobelieve_set(
    db: &sqlx::MySqlPool,
    redis: &mut redis::aio::MultiplexedConnection,
    table: &str,
    uid: i64,
    friend_uid: i64,
    on: bool,
) {
    let q = if on {
        format!("INSERT INTO `{table}` (appid, uid, friend_uid, `timestamp`) VALUES (?, ?, ?, 0)")
    } else {
        format!("DELETE FROM `{table}` WHERE appid = ? AND uid = ? AND friend_uid = ?")
    };
    sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(APPID)
        .bind(uid)
        .bind(friend_uid)
        .execute(db)
        .await
        .unwrap();
    let actions: Option<String> = redis::cmd("GET")
        .arg("friends_actions")
        .query_async(redis)
        .await
        .unwrap();
    let prev: i64 = actions
        .and_then(|v| v.rsplit(':').next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let value = if on { "1" } else { "0" };
    let (friend, blacklist) = if table == "friend" {
        (value, "0")
    } else {
        ("0", value)
    };
    let _: String = redis::cmd("XADD")
        .arg("relationship_stream")
        .arg("*")
        .arg(&[
            ("action_id", (prev + 1).to_string()),
            ("previous_action_id", prev.to_string()),
            ("name", table.to_string()),
            ("app_id", APPID.to_string()),
            ("uid", uid.to_string()),
            ("friend_uid", friend_uid.to_string()),
            ("friend", friend.to_string()),
            ("blacklist", blacklist.to_string()),
        ])
        .query_async(redis)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("friends_actions")
        .arg(format!("{prev}:{}", prev + 1))
        .query_async(redis)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobelieve_relations_through_the_stream() {
    let mariadb = testkit::MariaDb::start();
    let redis_server = testkit::RedisServer::start();
    let (db_url, redis_url) = (mariadb.url(), redis_server.url());
    let configure = move |c: &mut banter::config::Config| {
        c.groups.backend = banter::config::GroupsBackend::Mysql;
        c.groups.mysql.url = db_url.clone();
        c.groups.mysql.redis_url = redis_url.clone();
        c.relationships.friendship = true;
        c.relationships.blacklist = true;
    };
    let first = configure.clone();
    let s = TestServer::start_with(move |c| first(c)).await.unwrap();
    let db = sqlx::MySqlPool::connect(&mariadb.url()).await.unwrap();
    let mut redis = redis::Client::open(redis_server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    let mut b = Client::login(&s, 2, 2, false, "b").await;

    // The pair is read from MySQL once; from then on only the stream changes it.
    assert_eq!(send(&mut a, 1, 2).await, AckStatus::NOT_MY_FRIEND);
    gobelieve_set(&db, &mut redis, "friend", 1, 2, true).await;
    eventually(&mut a, 1, 2, AckStatus::NOT_YOUR_FRIEND).await;
    gobelieve_set(&db, &mut redis, "friend", 2, 1, true).await;
    eventually(&mut a, 1, 2, AckStatus::SUCCESS).await;
    arrives(&mut b, 1).await;
    gobelieve_set(&db, &mut redis, "blacklist", 2, 1, true).await;
    eventually(&mut a, 1, 2, AckStatus::IN_YOUR_BLACKLIST).await;
    gobelieve_set(&db, &mut redis, "blacklist", 2, 1, false).await;
    eventually(&mut a, 1, 2, AckStatus::SUCCESS).await;
    arrives(&mut b, 1).await;

    // A row written without an event is not seen by a cached pair (GoBelieve's contract); a
    // gap in the action ids makes the node start over from MySQL, which then sees it.
    sqlx::query("INSERT INTO blacklist (appid, uid, friend_uid, `timestamp`) VALUES (?, 2, 1, 0)")
        .bind(APPID)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(send(&mut a, 1, 2).await, AckStatus::SUCCESS);
    arrives(&mut b, 1).await;
    let _: () = redis::cmd("SET")
        .arg("friends_actions")
        .arg("100:100")
        .query_async(&mut redis)
        .await
        .unwrap();
    gobelieve_set(&db, &mut redis, "friend", 3, 4, true).await;
    eventually(&mut a, 1, 2, AckStatus::IN_YOUR_BLACKLIST).await;

    // A second node: its admin API writes MySQL and the stream, and reaches this node's session.
    let second = configure.clone();
    let s2 = TestServer::start_with(move |c| second(c)).await.unwrap();
    let v = admin(
        &s2,
        "/admin/blacklist/remove",
        json!({"appid": APPID, "uid": 2, "blocked_uid": 1}),
    )
    .await;
    assert_eq!(v["changed"], true);
    eventually(&mut a, 1, 2, AckStatus::SUCCESS).await;
    arrives(&mut b, 1).await;
    admin(
        &s2,
        "/admin/friends/remove",
        json!({"appid": APPID, "uid": 2, "friend_uid": 1}),
    )
    .await;
    eventually(&mut a, 1, 2, AckStatus::NOT_YOUR_FRIEND).await;
    let (st, v) = http(
        s2.http,
        "GET",
        &format!("/admin/friends?appid={APPID}&uid=1"),
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&v).unwrap()["uids"],
        json!([2])
    );
    s2.stop().await;
    s.stop().await;
}
