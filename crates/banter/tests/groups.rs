//! Groups end to end: normal groups of 10,000 members, super groups with gap-free sync and join times,
//! answered refusals, server posts and notifications — against the embedded directory and against
//! GoBelieve's MySQL schema (real MariaDB + Redis processes).
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::*;
use proto::{cmd, flag, AckStatus, Body, GroupSyncKey, Im};
use serde_json::json;

async fn admin(s: &TestServer, path: &str, body: serde_json::Value) -> serde_json::Value {
    let (st, v) = post_json(s.http, path, &body).await;
    assert_eq!(st, 200, "{path}: {v}");
    v
}

async fn create_group(s: &TestServer, gid: i64, members: &[i64], super_group: bool) {
    let v = admin(s, "/admin/groups", json!({"appid": APPID, "group_id": gid, "name": format!("g{gid}"), "master": members[0], "super": super_group, "members": members})).await;
    assert_eq!(v["group_id"], gid);
}

fn group_im(sender: i64, gid: i64, text: &str) -> Body {
    Body::GroupIm(Im {
        sender,
        receiver: gid,
        timestamp: 0,
        msgid: 1,
        content: text.as_bytes().to_vec().into(),
    })
}

async fn send_group(
    c: &mut Client,
    sender: i64,
    gid: i64,
    text: &str,
) -> (proto::Frame, Vec<proto::Frame>, i32) {
    let seq = c.send_body(&group_im(sender, gid, text), flag::TEXT).await;
    let (ack, before) = c.recv_until(cmd::ACK).await;
    (ack, before, seq)
}

fn ack_status(f: &proto::Frame) -> i8 {
    match body_of(f) {
        Body::Ack(a) => a.status,
        other => panic!("{other:?}"),
    }
}

/// The behaviour every group directory must give.
async fn normal_group_of_ten_thousand(s: &TestServer) {
    let members: Vec<i64> = (1..=10_000).collect();
    create_group(s, 3110, &members, false).await;
    let mut sender = Client::login(s, 1, 2, false, "s").await;
    let mut online: Vec<Client> = Vec::new();
    for uid in [2, 500, 9_999] {
        online.push(Client::login(s, uid, 2, false, "m").await);
    }
    let (ack, before, _) = send_group(&mut sender, 1, 3110, "{\"text\":\"hello everyone\"}").await;
    assert_eq!(ack_status(&ack), 0);
    assert_eq!(ack.flag, 0, "normal-group ACK has no SUPER_GROUP flag");
    assert_eq!(
        before.last().unwrap().cmd,
        cmd::METADATA,
        "ACK is preceded by METADATA"
    );
    for c in online.iter_mut() {
        let meta = c.recv().await.unwrap();
        assert_eq!(meta.cmd, cmd::METADATA);
        let m = c.recv().await.unwrap();
        assert_eq!((m.cmd, m.seq), (cmd::GROUP_IM, meta.seq + 1));
        assert_eq!(m.flag & flag::PUSH, flag::PUSH);
        assert_eq!(m.flag & flag::SUPER_GROUP, 0);
        assert_eq!(c.recv().await.unwrap().cmd, cmd::SYNC_NOTIFY);
    }
    // An offline member finds it in their personal queue.
    let mut late = Client::login(s, 7_777, 1, false, "late").await;
    let (msgs, _) = late.sync(0).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].cmd, cmd::GROUP_IM);
    assert_eq!(
        &im_of(&msgs[0]).content[..],
        b"{\"text\":\"hello everyone\"}"
    );
}

async fn refusals(s: &TestServer) {
    create_group(s, 4000, &[1, 2, 3], false).await;
    let mut c = Client::login(s, 1, 2, false, "a").await;
    let mut outsider = Client::login(s, 50, 2, false, "o").await;
    let (ack, _, _) = send_group(&mut outsider, 50, 4000, "x").await;
    assert_eq!(ack_status(&ack), AckStatus::NOT_GROUP_MEMBER);
    let (ack, _, _) = send_group(&mut c, 1, 987_654, "x").await;
    assert_eq!(ack_status(&ack), AckStatus::GROUP_NONEXIST);
    admin(
        s,
        "/admin/groups/mute",
        json!({"appid": APPID, "group_id": 4000, "uid": 1, "mute": true}),
    )
    .await;
    let (ack, _, _) = send_group(&mut c, 1, 4000, "x").await;
    assert_eq!(ack_status(&ack), AckStatus::GROUP_MUTED);
    admin(
        s,
        "/admin/groups/mute",
        json!({"appid": APPID, "group_id": 4000, "uid": 1, "mute": false}),
    )
    .await;
    let (ack, _, _) = send_group(&mut c, 1, 4000, "x").await;
    assert_eq!(ack_status(&ack), 0);
    admin(
        s,
        "/admin/users/forbidden",
        json!({"appid": APPID, "uid": 1, "forbidden": true}),
    )
    .await;
    let (ack, _, _) = send_group(&mut c, 1, 4000, "x").await;
    assert_eq!(ack_status(&ack), AckStatus::FORBIDDEN);
    admin(
        s,
        "/admin/users/forbidden",
        json!({"appid": APPID, "uid": 1, "forbidden": false}),
    )
    .await;
    let (ack, _, _) = send_group(&mut c, 1, 4000, "x").await;
    assert_eq!(ack_status(&ack), 0, "the ban is lifted at once");
    // A v1 session gets no ACK at all for a refusal.
    let mut old = Client::login(s, 51, 1, false, "old").await;
    old.send_body(&group_im(51, 4000, "x"), 0).await;
    old.send_body(&Body::Ping, 0).await;
    assert_eq!(old.recv().await.unwrap().cmd, cmd::PONG);
    // Disbanded groups are unknown.
    admin(
        s,
        "/admin/groups/disband",
        json!({"appid": APPID, "group_id": 4000}),
    )
    .await;
    let mut c2 = Client::login(s, 2, 2, false, "b").await;
    let (ack, _, _) = send_group(&mut c2, 2, 4000, "x").await;
    assert_eq!(ack_status(&ack), AckStatus::GROUP_NONEXIST);
}

async fn sync_group_all(c: &mut Client, gid: i64, mut key: i64) -> (Vec<proto::Frame>, i64) {
    let mut all = Vec::new();
    loop {
        c.send_body(
            &Body::SyncGroup(GroupSyncKey {
                group_id: gid,
                sync_key: key,
            }),
            0,
        )
        .await;
        c.recv_until(cmd::SYNC_GROUP_BEGIN).await;
        let mut got = 0;
        loop {
            let f = c.recv().await.expect("group sync frames");
            if f.cmd == cmd::SYNC_GROUP_END {
                let Body::SyncGroupEnd(g) = body_of(&f) else {
                    unreachable!()
                };
                assert_eq!(g.group_id, gid);
                key = g.sync_key;
                break;
            }
            if f.cmd == cmd::GROUP_IM || f.cmd == cmd::GROUP_NOTIFICATION {
                got += 1;
                all.push(f);
            }
        }
        if got == 0 {
            return (all, key);
        }
    }
}

async fn super_group(s: &TestServer) {
    create_group(s, 3111, &[1, 2, 3], true).await;
    let mut a = Client::login(s, 1, 2, false, "a").await;
    let mut b = Client::login(s, 2, 2, false, "b").await;
    let (ack, before, _) = send_group(&mut a, 1, 3111, "first").await;
    assert_eq!(ack_status(&ack), 0);
    assert_eq!(
        ack.flag,
        flag::SUPER_GROUP,
        "super-group ACK carries flag 0x20"
    );
    let Body::Metadata(ack_meta) = body_of(before.last().unwrap()) else {
        panic!()
    };
    let meta = b.recv().await.unwrap();
    let m = b.recv().await.unwrap();
    assert_eq!((m.cmd, m.seq), (cmd::GROUP_IM, meta.seq + 1));
    assert_eq!(
        m.flag & (flag::PUSH | flag::SUPER_GROUP),
        flag::PUSH | flag::SUPER_GROUP
    );
    assert_eq!(
        body_of(&meta),
        Body::Metadata(ack_meta),
        "same group-queue position for everyone"
    );
    let n = b.recv().await.unwrap();
    assert_eq!(
        body_of(&n),
        Body::SyncGroupNotify(GroupSyncKey {
            group_id: 3111,
            sync_key: ack_meta.sync_key
        })
    );
    // Super-group messages are not in personal queues.
    let (personal, _) = b.sync_all(0).await;
    assert!(personal
        .iter()
        .all(|f| f.cmd != cmd::GROUP_IM || &im_of(f).content[..] != b"first"));

    // 5,000 messages, then a sync from key 0 returns all of them in order.
    for i in 0..5_000 {
        a.send_body(&group_im(1, 3111, &format!("{i}")), 0).await;
    }
    for _ in 0..5_000 {
        let (ack, _) = a.recv_until(cmd::ACK).await;
        assert_eq!(ack_status(&ack), 0);
    }
    let mut c = Client::login(s, 3, 1, false, "c").await;
    let (msgs, end) = sync_group_all(&mut c, 3111, 0).await;
    let texts: Vec<String> = msgs
        .iter()
        .map(|f| String::from_utf8(im_of(f).content.to_vec()).unwrap())
        .collect();
    let mut want = vec!["first".to_string()];
    want.extend((0..5_000).map(|i| i.to_string()));
    assert_eq!(texts, want);
    // GROUP_SYNC_KEY is remembered: SYNC_GROUP(gid, 0) resumes from it.
    c.send_body(
        &Body::GroupSyncKey(GroupSyncKey {
            group_id: 3111,
            sync_key: end,
        }),
        0,
    )
    .await;
    c.send_body(&Body::Ping, 0).await;
    c.recv_until(cmd::PONG).await;
    let (msgs, _) = sync_group_all(&mut c, 3111, 0).await;
    assert!(msgs.is_empty());

    // A member who joins later does not see earlier messages.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    admin(
        s,
        "/admin/groups/members/add",
        json!({"appid": APPID, "group_id": 3111, "members": [4]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send_group(&mut a, 1, 3111, "after join").await;
    let mut d = Client::login(s, 4, 2, false, "d").await;
    let (msgs, _) = sync_group_all(&mut d, 3111, 0).await;
    let texts: Vec<String> = msgs
        .iter()
        .map(|f| String::from_utf8(im_of(f).content.to_vec()).unwrap())
        .collect();
    assert_eq!(texts, vec!["after join".to_string()]);
}

async fn server_posts(s: &TestServer) {
    create_group(s, 5000, &[1, 2], false).await;
    create_group(s, 5001, &[1, 2], true).await;
    let mut b = Client::login(s, 2, 1, false, "b").await;
    let (st, _) = http(
        s.http,
        "POST",
        "/post_group_message?appid=7&sender=1&receiver=5000",
        &[],
        b"via api",
    )
    .await;
    assert_eq!(st, 200);
    let (m, _) = b.recv_until(cmd::GROUP_IM).await;
    assert_eq!(&im_of(&m).content[..], b"via api");
    let (st, _) = http(
        s.http,
        "POST",
        "/post_group_message?appid=7&sender=1&receiver=5001",
        &[],
        b"super via api",
    )
    .await;
    assert_eq!(st, 200);
    b.recv_until(cmd::SYNC_GROUP_NOTIFY).await;
    let (st, _) = post_json(
        s.http,
        "/post_group_notification",
        &json!({"appid": APPID, "group_id": 5000, "notification": "{\"update_name\":{}}"}),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = post_json(
        s.http,
        "/post_group_notification",
        &json!({"appid": APPID, "group_id": 5001, "notification": "{\"quit_group\":{}}"}),
    )
    .await;
    assert_eq!(st, 200);
    let (msgs, _) = b.sync_all(0).await;
    assert!(msgs
        .iter()
        .any(|f| f.cmd == cmd::GROUP_NOTIFICATION && &f.body[..] == b"{\"update_name\":{}}"));
    let (msgs, _) = sync_group_all(&mut b, 5001, 0).await;
    assert_eq!(
        msgs.iter().map(|f| f.cmd).collect::<Vec<_>>(),
        vec![cmd::GROUP_IM, cmd::GROUP_NOTIFICATION]
    );
    let (st, body) = post_json(
        s.http,
        "/post_group_notification",
        &json!({"appid": APPID, "group_id": 999_999, "notification": "x"}),
    )
    .await;
    // A missing group is 404 on every endpoint.
    assert_eq!(st, 404, "{body}");
    let (st, _) = http(
        s.http,
        "POST",
        "/post_group_message?appid=7&sender=1&receiver=999999",
        &[],
        b"x",
    )
    .await;
    assert_eq!(st, 404);
}

async fn suite(s: TestServer) {
    normal_group_of_ten_thousand(&s).await;
    refusals(&s).await;
    super_group(&s).await;
    server_posts(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_with_the_embedded_directory() {
    suite(TestServer::start().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_with_the_gobelieve_mysql_directory() {
    let db = testkit::MariaDb::start();
    let redis = testkit::RedisServer::start();
    let (db_url, redis_url) = (db.url(), redis.url());
    let s = TestServer::start_with(move |c| {
        c.groups.backend = banter::config::GroupsBackend::Mysql;
        c.groups.mysql.url = db_url;
        c.groups.mysql.redis_url = redis_url;
    })
    .await
    .unwrap();
    suite(s).await;
}
