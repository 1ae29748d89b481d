//! Importing a GoBelieve deployment's MySQL groups and Redis user state into the embedded stores,
//! against real MariaDB and Redis processes: what GoBelieve wrote is what banter serves afterwards,
//! deleted and malformed rows are left out, and a second run changes nothing.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use backend::import::{groups_from_mysql, users_from_redis};
use backend::{Backend, EmbeddedGroupOptions, EmbeddedOptions, GroupDirectory};
use redis::AsyncCommands;
use sqlx::MySqlPool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_groups_keep_ids_join_times_and_mute_bits() {
    let db = testkit::MariaDb::start();
    let pool = MySqlPool::connect(&db.url()).await.unwrap();
    for stmt in store_sql() {
        sqlx::raw_sql(stmt).execute(&pool).await.unwrap();
    }
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("groups.db");
    let first = groups_from_mysql(&db.url(), &path).await.unwrap();
    assert_eq!(first.groups, 2, "{first}");
    assert_eq!(first.super_groups, 1);
    assert_eq!(first.members, 3);
    assert_eq!(first.skipped_no_appid, 1);
    let second = groups_from_mysql(&db.url(), &path).await.unwrap();
    assert_eq!(first, second);

    let dir = GroupDirectory::open_embedded(EmbeddedGroupOptions {
        path,
        ..EmbeddedGroupOptions::default()
    })
    .await
    .unwrap();
    let g = dir.get(7, 3110).await.unwrap().expect("group 3110");
    assert!(!g.super_group);
    assert_eq!(g.members.len(), 2, "the deleted member is left out");
    let m = g.member(1).unwrap();
    assert_eq!((m.joined_at, m.mute), (1_600_000_000, false));
    let m = g.member(2).unwrap();
    assert_eq!(
        (m.joined_at, m.mute),
        (0, true),
        "NULL join time reads as 0"
    );
    let s = dir.get(7, 3111).await.unwrap().expect("super group 3111");
    assert!(s.super_group);
    assert!(dir.get(7, 3112).await.unwrap().is_none(), "deleted group");
    assert!(
        dir.get(7, 3113).await.unwrap().is_none(),
        "group without appid"
    );
}

fn store_sql() -> Vec<&'static str> {
    vec![
        // GoBelieve's db.sql
        "CREATE TABLE `group` (`id` BIGINT NOT NULL AUTO_INCREMENT, `appid` BIGINT DEFAULT NULL, `master` BIGINT DEFAULT NULL, `super` TINYINT NOT NULL DEFAULT 0, `name` VARCHAR(255) DEFAULT NULL, `notice` VARCHAR(255) DEFAULT NULL, `deleted` TINYINT(1) NOT NULL, PRIMARY KEY (`id`)) ENGINE=InnoDB DEFAULT CHARSET=utf8",
        "CREATE TABLE `group_member` (`group_id` BIGINT NOT NULL DEFAULT 0, `uid` BIGINT NOT NULL DEFAULT 0, `timestamp` INT DEFAULT NULL, `nickname` VARCHAR(255) DEFAULT NULL, `mute` TINYINT(1) DEFAULT 0, `deleted` TINYINT(1) NOT NULL, PRIMARY KEY (`group_id`, `uid`), KEY `idx_group_member_uid` (`uid`)) ENGINE=InnoDB DEFAULT CHARSET=utf8",
        "INSERT INTO `group` (id, appid, master, super, name, deleted) VALUES (3110, 7, 1, 0, 'normal', 0), (3111, 7, 1, 1, 'super', 0), (3112, 7, 1, 0, 'gone', 1), (3113, NULL, 1, 0, 'no app', 0)",
        "INSERT INTO group_member (group_id, uid, timestamp, mute, deleted) VALUES (3110, 1, 1600000000, 0, 0), (3110, 2, NULL, 1, 0), (3110, 3, 1600000000, 0, 1), (3111, 1, 1600000001, 0, 0)",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tokens_flags_hints_and_device_ids() {
    let redis = testkit::RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = c
        .hset_multiple(
            "access_token_tok-A",
            &[("user_id", "1000"), ("app_id", "7"), ("user_name", "alice")],
        )
        .await
        .unwrap();
    let _: () = c.hset("access_token_broken", "user_id", "x").await.unwrap();
    let _: () = c
        .hset_multiple(
            "users_7_1000",
            &[
                ("forbidden", "1"),
                ("notification_on", "1"),
                ("sync_key", "5000"),
                ("unread", "3"),
                ("group_sync_key_3111", "700"),
            ],
        )
        .await
        .unwrap();
    let _: () = c.set("devices_ab_cd-ef_1", "41").await.unwrap();
    let _: () = c.set("devices_id", "41").await.unwrap();
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("banter.db");
    let first = users_from_redis(&redis.url(), 0, &path).await.unwrap();
    assert_eq!(
        (
            first.tokens,
            first.users,
            first.group_sync_keys,
            first.devices,
            first.malformed
        ),
        (1, 1, 1, 1, 1),
        "{first}"
    );
    // banter moved a hint forward meanwhile; a second run must not move it back
    {
        let b = Backend::open_embedded(EmbeddedOptions {
            path: path.clone(),
            ..EmbeddedOptions::default()
        })
        .await
        .unwrap();
        b.report_sync_key(7, 1000, 9000);
        b.flush().await.unwrap();
    }
    let second = users_from_redis(&redis.url(), 0, &path).await.unwrap();
    assert_eq!(first, second);

    let b = Backend::open_embedded(EmbeddedOptions {
        path,
        ..EmbeddedOptions::default()
    })
    .await
    .unwrap();
    let who = b
        .authenticate("tok-A")
        .await
        .unwrap()
        .expect("the GoBelieve token works");
    assert_eq!((who.appid, who.uid), (7, 1000));
    assert!(b.authenticate("broken").await.unwrap().is_none());
    let f = b.user_flags(7, 1000).await.unwrap();
    assert!(f.forbidden && f.notification_on);
    assert_eq!(b.sync_key(7, 1000).await.unwrap(), 9000);
    assert_eq!(b.group_sync_key(7, 1000, 3111).await.unwrap(), 700);
    assert_eq!(b.unread(7, 1000).await.unwrap(), 3);
    assert_eq!(
        b.device_id("ab_cd-ef", 1).await.unwrap(),
        41,
        "device ids are kept"
    );
    assert!(
        b.device_id("new-device", 1).await.unwrap() > 41,
        "new ids come after them"
    );
}
