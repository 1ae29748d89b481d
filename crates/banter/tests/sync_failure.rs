//! A sync the server cannot answer (here: a store read that finds corrupt data) must neither be
//! answered as caught up (an empty SYNC_END) nor end the session (every client of a failing
//! store would reconnect and fail again, a reconnect storm): it is owed and tried again with
//! back-off, while the session keeps working. Other users' syncs are unaffected. (A store shard
//! that comes back answers the owed sync: `tests/cluster_failover.rs`.)
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::*;
use proto::{cmd, Body, GroupSyncKey, Im};
use serde_json::json;

/// Flips one byte of every occurrence of `needle` in the store's segment files.
fn corrupt_in_segments(s: &TestServer, needle: &[u8]) {
    let dir = s.data_dir.join("store");
    let mut hits = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("seg") {
            continue;
        }
        let mut data = std::fs::read(&path).unwrap();
        let mut changed = false;
        let mut i = 0;
        while let Some(p) = data[i..].windows(needle.len()).position(|w| w == needle) {
            data[i + p] ^= 0x20;
            hits += 1;
            changed = true;
            i += p + needle.len();
        }
        if changed {
            // in place, as a disk error would: the store keeps its open handles
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&data, 0).unwrap();
            f.sync_all().unwrap();
        }
    }
    assert!(
        hits > 0,
        "{:?} not found in the segments",
        String::from_utf8_lossy(needle)
    );
}

/// Sends `req` and expects neither its END nor a close for a few seconds (several retries), then
/// checks the session still works.
async fn expect_owed_and_alive(c: &mut Client, req: &Body, end_cmd: u8) {
    c.send_body(req, 0).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if let Some(f) = c.recv_timeout(left).await {
            assert_ne!(
                f.cmd, end_cmd,
                "a failed sync must not be answered as caught up"
            );
        }
    }
    // Still connected and served.
    c.send_body(&Body::Ping, 0).await;
    let (pong, _) = c.recv_until(cmd::PONG).await;
    assert_eq!(pong.cmd, cmd::PONG);
}

#[tokio::test]
async fn a_sync_the_store_cannot_answer_is_owed_and_the_session_kept() {
    // No recent-write cache: reads go to the segment files, where the test damages them.
    let s = TestServer::start_with(|c| c.store.cache_mb = 0)
        .await
        .unwrap();
    let (st, v) = post_json(
        s.http,
        "/admin/groups",
        &json!({"appid": APPID, "group_id": 77, "name": "g77", "master": 1, "super": true, "members": [1, 2]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");

    let mut a = Client::login(&s, 1, 2, false, "a").await;
    a.send_im(1, 2, "peer-content-to-damage").await;
    a.recv_until(cmd::ACK).await;
    a.send_body(
        &Body::GroupIm(Im {
            sender: 1,
            receiver: 77,
            timestamp: 0,
            msgid: 2,
            content: bytes::Bytes::from_static(b"group-content-to-damage"),
        }),
        proto::flag::TEXT,
    )
    .await;
    a.recv_until(cmd::ACK).await;
    // a third user with an intact queue
    a.send_im(1, 3, "intact").await;
    a.recv_until(cmd::ACK).await;

    corrupt_in_segments(&s, b"peer-content-to-damage");
    corrupt_in_segments(&s, b"group-content-to-damage");

    // Peer sync of the damaged personal queue: no SYNC_END, no close, the session works.
    let mut b = Client::login(&s, 2, 2, false, "b").await;
    expect_owed_and_alive(&mut b, &Body::Sync(0), cmd::SYNC_END).await;

    // Super-group sync of the damaged group queue: the same.
    let req = Body::SyncGroup(GroupSyncKey {
        group_id: 77,
        sync_key: 0,
    });
    expect_owed_and_alive(&mut b, &req, cmd::SYNC_GROUP_END).await;
    // It still sends messages (to an intact queue).
    b.send_im(2, 3, "from b").await;
    let (ack, _) = b.recv_until(cmd::ACK).await;
    assert_eq!(
        body_of(&ack),
        Body::Ack(proto::Ack {
            seq: b.seq,
            status: 0
        })
    );
    let (_, m) = s_metrics(&s).await;
    assert!(m.contains("syncs_deferred_total"), "{m}");

    // Someone else's sync is answered as usual.
    let mut c = Client::login(&s, 3, 2, false, "c").await;
    let (msgs, end) = c.sync(0).await;
    assert_eq!(msgs.len(), 2);
    assert!(end > 0);
    s.stop().await;
}

async fn s_metrics(s: &TestServer) -> (u16, String) {
    http(s.http, "GET", "/metrics", &[], b"").await
}
