//! banter's additions to the server API: token expiry, revoking every token of a user, kicking a
//! user, listing groups, super-group history, presence in single-node mode, the JSON answers of the
//! post endpoints, and the `enforce` policy for server posts — each with its 4xx answers.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::*;
use proto::cmd;
use serde_json::{json, Value};

async fn get(s: &TestServer, path: &str) -> (u16, Value) {
    let (st, body) = http(s.http, "GET", path, &[], b"").await;
    (st, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn post(s: &TestServer, path: &str, body: &[u8]) -> (u16, Value) {
    let (st, text) = http(s.http, "POST", path, &[], body).await;
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create_group(s: &TestServer, members: &[i64], super_group: bool) -> i64 {
    let (st, v) = post_json(
        s.http,
        "/admin/groups",
        &json!({"appid": APPID, "name": "g", "master": members[0], "super": super_group, "members": members}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["group_id"].as_i64().unwrap()
}

#[tokio::test]
async fn a_token_granted_with_expires_in_stops_working_when_it_expires() {
    let s = TestServer::start().await.unwrap();
    let (st, v) = post_json(
        s.http,
        "/auth/grant",
        &json!({"appid": APPID, "uid": 5, "expires_in": 2}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["expires_in"], 2);
    let token = v["token"].as_str().unwrap().to_string();
    let mut c = Client::tcp(s.tcp).await;
    assert_eq!(c.auth(&token, 2, proto::Platform::ANDROID, "d1").await, 0);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut late = Client::tcp(s.tcp).await;
    assert_eq!(
        late.auth(&token, 2, proto::Platform::ANDROID, "d2").await,
        1,
        "an expired token no longer logs in"
    );
    let (st, v) = post_json(
        s.http,
        "/auth/grant",
        &json!({"appid": APPID, "uid": 5, "expires_in": 0}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = post_json(
        s.http,
        "/auth/grant",
        &json!({"appid": APPID, "uid": 5, "expires_in": -3}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn revoke_user_removes_every_token_and_closes_every_session_and_kick_only_closes() {
    let s = TestServer::start().await.unwrap();
    let t1 = grant(&s, 21).await;
    let t2 = grant(&s, 21).await;
    let other = grant(&s, 22).await;
    let mut a = Client::tcp(s.tcp).await;
    assert_eq!(a.auth(&t1, 2, proto::Platform::ANDROID, "a").await, 0);
    let mut b = Client::ws(&s).await;
    assert_eq!(b.auth(&t2, 2, proto::Platform::WEB, "b").await, 0);
    let mut o = Client::tcp(s.tcp).await;
    assert_eq!(o.auth(&other, 2, proto::Platform::ANDROID, "o").await, 0);

    // Kick: sessions closed, tokens kept.
    let (st, v) = post_json(
        s.http,
        "/admin/users/kick",
        &json!({"appid": APPID, "uid": 21}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sessions_closed"], 2);
    assert!(a.closed_within(WAIT).await);
    assert!(b.closed_within(WAIT).await);
    let mut again = Client::tcp(s.tcp).await;
    assert_eq!(
        again.auth(&t1, 2, proto::Platform::ANDROID, "a").await,
        0,
        "kick keeps tokens"
    );

    // Revoke all: tokens gone, sessions closed; another user's untouched.
    let (st, v) = post_json(
        s.http,
        "/auth/revoke_user",
        &json!({"appid": APPID, "uid": 21}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["revoked"], 2);
    assert_eq!(v["sessions_closed"], 1);
    assert!(again.closed_within(WAIT).await);
    for t in [&t1, &t2] {
        let mut c = Client::tcp(s.tcp).await;
        assert_eq!(c.auth(t, 2, proto::Platform::ANDROID, "x").await, 1);
    }
    o.send_im(22, 23, "still here").await;
    let (ack, _) = o.recv_until(cmd::ACK).await;
    assert_eq!(ack.body.len(), 5, "the other user's session still works");

    for bad in [
        json!({"appid": APPID}),
        json!({"appid": APPID, "uid": 0}),
        json!({"appid": APPID, "uid": 21, "extra": 1}),
    ] {
        let (st, v) = post_json(s.http, "/auth/revoke_user", &bad).await;
        assert_eq!(st, 400, "{bad} → {v}");
        let (st, v) = post_json(s.http, "/admin/users/kick", &bad).await;
        assert_eq!(st, 400, "{bad} → {v}");
    }
    s.stop().await;
}

#[tokio::test]
async fn groups_of_an_app_and_of_a_user_are_listed_in_pages() {
    let s = TestServer::start().await.unwrap();
    let mut gids = Vec::new();
    for i in 0..5 {
        let members: Vec<i64> = if i % 2 == 0 { vec![1, 2] } else { vec![2, 3] };
        gids.push(create_group(&s, &members, i == 4).await);
    }
    let (st, v) = get(&s, &format!("/admin/groups/list?appid={APPID}&limit=2")).await;
    assert_eq!(st, 200, "{v}");
    let page: Vec<i64> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group_id"].as_i64().unwrap())
        .collect();
    assert_eq!(page, gids[..2]);
    assert_eq!(v["groups"][0]["members"], 2);
    assert_eq!(v["next"], gids[1]);
    let mut all = page;
    let mut after = v["next"].as_i64().unwrap();
    loop {
        let (st, v) = get(
            &s,
            &format!("/admin/groups/list?appid={APPID}&limit=2&after={after}"),
        )
        .await;
        assert_eq!(st, 200);
        all.extend(
            v["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["group_id"].as_i64().unwrap()),
        );
        match v["next"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(all, gids);
    let (_, v) = get(&s, &format!("/admin/groups/list?appid={}", APPID + 1)).await;
    assert_eq!(
        v["groups"],
        json!([]),
        "another app's groups are not listed"
    );

    let (st, v) = get(&s, &format!("/admin/users/groups?appid={APPID}&uid=1")).await;
    assert_eq!(st, 200, "{v}");
    let mine: Vec<i64> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group_id"].as_i64().unwrap())
        .collect();
    assert_eq!(mine, vec![gids[0], gids[2], gids[4]]);
    assert_eq!(v["groups"][2]["super"], true);
    assert_eq!(v["next"], Value::Null);

    for bad in [
        "/admin/groups/list",
        "/admin/groups/list?appid=0",
        "/admin/groups/list?appid=7&limit=0",
        "/admin/groups/list?appid=7&limit=1001",
        "/admin/groups/list?appid=7&after=-1",
        "/admin/groups/list?appid=7&after=x",
        "/admin/users/groups?appid=7",
        "/admin/users/groups?appid=7&uid=-2",
    ] {
        let (st, v) = get(&s, bad).await;
        assert_eq!(st, 400, "{bad} → {v}");
        assert!(v["meta"]["message"].is_string(), "{bad} → {v}");
    }
    s.stop().await;
}

#[tokio::test]
async fn super_group_history_is_paged_over_http() {
    let s = TestServer::start().await.unwrap();
    let gid = create_group(&s, &[1, 2], true).await;
    let normal = create_group(&s, &[1, 2], false).await;
    let mut keys = Vec::new();
    for i in 0..3 {
        let (st, v) = post(
            &s,
            &format!("/post_group_message?appid={APPID}&sender=1&receiver={gid}"),
            format!("m{i}").as_bytes(),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        keys.push(
            v["data"]["id"]
                .as_i64()
                .expect("a super group post answers its key"),
        );
    }
    let (st, v) = get(
        &s,
        &format!("/load_group_history_message?appid={APPID}&group_id={gid}&last_id=0"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0]["content"], "m0");
    assert_eq!(data[0]["command"], 8);
    assert_eq!(data[2]["id"], keys[2]);
    assert_eq!(v["last_id"], keys[2]);
    assert_eq!(v["has_more"], false);
    let (_, v) = get(
        &s,
        &format!(
            "/load_group_history_message?appid={APPID}&group_id={gid}&last_id={}",
            keys[0]
        ),
    )
    .await;
    assert_eq!(
        v["data"].as_array().unwrap().len(),
        2,
        "after the first: {v}"
    );
    let (st, v) = get(
        &s,
        &format!("/load_latest_group_message?appid={APPID}&group_id={gid}&limit=2"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let latest: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(latest, ["m1", "m2"]);

    for (path, status) in [
        (
            format!("/load_group_history_message?appid={APPID}&group_id={gid}"),
            400,
        ),
        (
            format!("/load_group_history_message?appid={APPID}&group_id={gid}&last_id=-1"),
            400,
        ),
        (
            format!("/load_group_history_message?appid={APPID}&group_id={normal}&last_id=0"),
            400,
        ),
        (
            format!("/load_group_history_message?appid={APPID}&group_id=999999&last_id=0"),
            404,
        ),
        (
            format!(
                "/load_group_history_message?appid={}&group_id={gid}&last_id=0",
                APPID + 1
            ),
            404,
        ),
        (
            format!("/load_latest_group_message?appid={APPID}&group_id={gid}&limit=0"),
            400,
        ),
    ] {
        let (st, v) = get(&s, &path).await;
        assert_eq!(st, status, "{path} → {v}");
    }
    s.stop().await;
}

#[tokio::test]
async fn presence_is_answered_in_single_node_mode() {
    let s = TestServer::start().await.unwrap();
    let (st, v) = get(&s, &format!("/online?appid={APPID}&uid=31")).await;
    assert_eq!(st, 200);
    assert_eq!(v, json!({"online": false}));
    let c = Client::login(&s, 31, 2, false, "p").await;
    let _w = Client::login(&s, 32, 2, true, "q").await;
    let (_, v) = get(&s, &format!("/online?appid={APPID}&uid=31")).await;
    assert_eq!(v, json!({"online": true}));
    let (st, v) = get(&s, "/all_online").await;
    assert_eq!(st, 200);
    assert_eq!(v, json!([{"appid": APPID, "users": [31, 32]}]));
    drop(c);
    let mut gone = false;
    for _ in 0..100 {
        let (_, v) = get(&s, &format!("/online?appid={APPID}&uid=31")).await;
        if v == json!({"online": false}) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "a closed session is no longer online");
    for bad in [
        "/online?appid=7",
        "/online?appid=7&uid=x",
        "/all_online?online_only=2",
    ] {
        let (st, v) = get(&s, bad).await;
        assert_eq!(st, 400, "{bad} → {v}");
    }
    s.stop().await;
}

#[tokio::test]
async fn posts_answer_json_with_their_keys_and_enforce_applies_the_client_checks() {
    let s = TestServer::start().await.unwrap();
    let mut b = Client::login(&s, 2, 2, false, "b").await;
    let (st, v) = post(&s, "/post_peer_message?appid=7&sender=1&receiver=2", b"hi").await;
    assert_eq!(st, 200, "{v}");
    let id = v["data"]["id"].as_i64().unwrap();
    assert!(v["data"]["sender_id"].as_i64().unwrap() > 0);
    let (msgs, _) = b.sync(0).await;
    assert_eq!(msgs.len(), 1);
    let (_, h) = get(&s, "/load_history_message?appid=7&uid=2&last_id=0").await;
    assert_eq!(
        h["data"][0]["id"], id,
        "the answered key is the receiver's history id"
    );

    let (st, v) = post_json(
        s.http,
        "/post_system_message",
        &json!({"appid": APPID, "receivers": [2, 3], "content": "sys"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["ids"].as_array().unwrap().len(), 2);

    let (st, v) = post(&s, "/post_notification?appid=7&uid=2", b"n").await;
    assert_eq!((st, &v), (200, &json!({"data": {}})));

    let gid = create_group(&s, &[1, 2], false).await;
    let (st, v) = post(
        &s,
        &format!("/post_group_message?appid={APPID}&sender=1&receiver={gid}"),
        b"g",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["data"]["ids"]["1"].as_i64().is_some() && v["data"]["ids"]["2"].as_i64().is_some(),
        "{v}"
    );

    // Without enforce a server post is trusted: a non-member, a muted member, a speak-banned user.
    let (st, _) = post(
        &s,
        &format!("/post_group_message?appid={APPID}&sender=9&receiver={gid}"),
        b"x",
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = post(
        &s,
        &format!("/post_group_message?appid={APPID}&sender=9&receiver={gid}&enforce=1"),
        b"x",
    )
    .await;
    assert_eq!(st, 403, "{v}");
    assert!(v["meta"]["message"]
        .as_str()
        .unwrap()
        .contains("not a member"));
    let (st, _) = post_json(
        s.http,
        "/admin/groups/mute",
        &json!({"appid": APPID, "group_id": gid, "uid": 1, "mute": true}),
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = post(
        &s,
        &format!("/post_group_message?appid={APPID}&sender=1&receiver={gid}&enforce=1"),
        b"x",
    )
    .await;
    assert_eq!(st, 403, "{v}");
    assert!(v["meta"]["message"].as_str().unwrap().contains("muted"));
    let (st, _) = post_json(
        s.http,
        "/admin/users/forbidden",
        &json!({"appid": APPID, "uid": 2, "forbidden": true}),
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = post(
        &s,
        &format!("/post_group_message?appid={APPID}&sender=2&receiver={gid}&enforce=1"),
        b"x",
    )
    .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = post(
        &s,
        "/post_room_message?appid=7&uid=2&room=5&enforce=1",
        b"r",
    )
    .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = post(&s, "/post_room_message?appid=7&uid=2&room=5", b"r").await;
    assert_eq!((st, &v), (200, &json!({"data": {}})));
    let (st, v) = post(
        &s,
        "/post_room_message?appid=7&uid=2&room=5&enforce=yes",
        b"r",
    )
    .await;
    assert_eq!(st, 400, "{v}");
    s.stop().await;
}
