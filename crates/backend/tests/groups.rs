//! The group directory: one behaviour suite run against both variants (embedded SQLite in a temp
//! dir; MySQL on a private MariaDB with a private Redis for `group_manager_stream`), then the
//! MySQL-only scenarios: events written by "another app server", action-id gaps, restarts and a
//! second node following the first.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backend::groups::MAX_EXPLICIT_GROUP_ID;
use backend::{
    BackendError, EmbeddedGroupOptions, Group, GroupChange, GroupDirectory, Member,
    MysqlGroupOptions,
};
use redis::AsyncCommands;
use sqlx::MySqlPool;
use tokio::sync::broadcast;

/// Large enough for the 10,000-member group, small enough to test the limit cheaply.
const MAX_MEMBERS: usize = 20_000;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

async fn open_embedded(dir: &tempfile::TempDir) -> GroupDirectory {
    GroupDirectory::open_embedded(EmbeddedGroupOptions {
        path: dir.path().join("nested/groups.db"),
        cache_groups: 1000,
        max_members: MAX_MEMBERS,
    })
    .await
    .expect("open embedded")
}

fn mysql_options(db: &testkit::MariaDb, redis: &testkit::RedisServer) -> MysqlGroupOptions {
    MysqlGroupOptions {
        url: db.url(),
        redis_url: redis.url(),
        cache_groups: 1000,
        max_members: MAX_MEMBERS,
        max_connections: 4,
        stream_max_len: 10_000,
    }
}

async fn open_mysql(db: &testkit::MariaDb, redis: &testkit::RedisServer) -> GroupDirectory {
    GroupDirectory::open_mysql(mysql_options(db, redis))
        .await
        .expect("open mysql")
}

async fn get(d: &GroupDirectory, appid: i64, gid: i64) -> Arc<Group> {
    d.get(appid, gid)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("group {gid} of app {appid} not found"))
}

/// Wait until `want` arrives on `rx` (other events are skipped).
async fn expect_change(rx: &mut broadcast::Receiver<GroupChange>, appid: i64, gid: i64) {
    let want = GroupChange { appid, gid };
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(c) if c == want => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("changes channel closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no change event for {want:?}"));
}

fn uids(range: std::ops::Range<i64>) -> Vec<i64> {
    range.collect()
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, BackendError>) {
    assert!(matches!(r, Err(BackendError::NotFound(_))), "{r:?}");
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, BackendError>) {
    assert!(matches!(r, Err(BackendError::InvalidArgument(_))), "{r:?}");
}

/// The shared behaviour suite. Each scenario uses its own appid.
async fn suite(d: &GroupDirectory) {
    create_and_get(d, 101).await;
    validation(d, 102).await;
    ten_thousand_members(d, 103).await;
    add_remove_and_join_times(d, 104).await;
    mute(d, 105).await;
    rename_and_upgrade(d, 106).await;
    disband_and_reuse(d, 107).await;
    appid_scoping(d, 108, 109).await;
    change_events(d, 110).await;
    snapshots_are_immutable(d, 111).await;
    listings(d, 113, 114).await;
    // Last: it leaves the automatic ids above 2^53.
    explicit_id_bounds(d, 112).await;
}

async fn listings(d: &GroupDirectory, app: i64, other: i64) {
    let mut gids = Vec::new();
    for i in 0..5i64 {
        let members: &[i64] = if i % 2 == 0 { &[1, 2] } else { &[2, 3, 4] };
        gids.push(
            d.create(app, None, &format!("g{i}"), 1, i == 4, members)
                .await
                .expect("create"),
        );
    }
    d.create(other, None, "elsewhere", 1, false, &[1])
        .await
        .expect("create");
    let first = d.list(app, 0, 2).await.expect("list");
    assert_eq!(
        first.iter().map(|g| g.group_id).collect::<Vec<_>>(),
        gids[..2]
    );
    assert_eq!(
        (first[0].name.as_str(), first[0].members, first[0].master),
        ("g0", 2, 1)
    );
    assert_eq!(first[1].members, 3);
    let rest = d.list(app, gids[1], 10).await.expect("list");
    assert_eq!(
        rest.iter().map(|g| g.group_id).collect::<Vec<_>>(),
        gids[2..]
    );
    assert!(rest[2].super_group);
    let of_1 = d.groups_of(app, 1, 0, 10).await.expect("groups_of");
    assert_eq!(
        of_1.iter().map(|g| g.group_id).collect::<Vec<_>>(),
        vec![gids[0], gids[2], gids[4]]
    );
    // Removed members and disbanded groups are not listed.
    d.remove_members(app, gids[0], &[1]).await.expect("remove");
    assert!(d.disband(app, gids[2]).await.expect("disband"));
    let of_1 = d.groups_of(app, 1, 0, 10).await.expect("groups_of");
    assert_eq!(
        of_1.iter().map(|g| g.group_id).collect::<Vec<_>>(),
        vec![gids[4]]
    );
    assert_eq!(d.list(app, 0, 10).await.expect("list").len(), 4);
    for (after, limit) in [(-1, 10), (0, 0), (0, 1001)] {
        assert!(
            matches!(
                d.list(app, after, limit).await,
                Err(BackendError::InvalidArgument(_))
            ),
            "after {after}, limit {limit}"
        );
    }
    assert!(matches!(
        d.groups_of(app, 0, 0, 10).await,
        Err(BackendError::InvalidArgument(_))
    ));
}

async fn create_and_get(d: &GroupDirectory, app: i64) {
    let t0 = now();
    let gid = d
        .create(app, None, "friends", 1, false, &[1, 2, 3, 2])
        .await
        .expect("create");
    assert!(gid > 0);
    let g = get(d, app, gid).await;
    assert_eq!(
        (g.appid, g.gid, g.name.as_str(), g.master),
        (app, gid, "friends", 1)
    );
    assert!(!g.super_group);
    assert_eq!(g.members.len(), 3, "duplicates collapse");
    for uid in [1, 2, 3] {
        let m = g.member(uid).expect("member");
        assert!(!m.mute);
        assert!(m.joined_at >= t0 && m.joined_at <= now(), "{m:?}");
    }
    assert!(!g.is_member(4));

    // Another allocation gets another id; an explicit id is kept; a taken id is refused.
    let gid2 = d
        .create(app, None, "", 0, true, &[])
        .await
        .expect("create empty");
    assert_ne!(gid, gid2);
    let g2 = get(d, app, gid2).await;
    assert!(g2.super_group && g2.members.is_empty() && g2.name.is_empty());
    let explicit = 1_000_000 + app;
    assert_eq!(
        d.create(app, Some(explicit), "named", 5, false, &[5])
            .await
            .expect("create explicit"),
        explicit
    );
    assert_eq!(get(d, app, explicit).await.name, "named");
    assert_invalid(d.create(app, Some(explicit), "again", 5, false, &[]).await);
    // Unicode names up to 255 bytes.
    let name = "群".repeat(85);
    assert_eq!(name.len(), 255);
    let gid3 = d
        .create(app, None, &name, 1, false, &[1])
        .await
        .expect("unicode name");
    assert_eq!(get(d, app, gid3).await.name, name);

    // Unknown ids are None, also for ids ≤ 0.
    assert!(d.get(app, 987_654_321).await.expect("get").is_none());
    assert!(d.get(app, 0).await.expect("get").is_none());
    assert!(d.get(0, gid).await.expect("get").is_none());
}

async fn validation(d: &GroupDirectory, app: i64) {
    assert_invalid(d.create(0, None, "x", 1, false, &[]).await);
    assert_invalid(d.create(app, Some(0), "x", 1, false, &[]).await);
    assert_invalid(d.create(app, Some(-3), "x", 1, false, &[]).await);
    assert_invalid(d.create(app, None, "x", -1, false, &[]).await);
    assert_invalid(d.create(app, None, &"n".repeat(256), 1, false, &[]).await);
    assert_invalid(d.create(app, None, "x", 1, false, &[1, 0]).await);
    assert_invalid(d.create(app, None, "x", 1, false, &[-5]).await);
    let too_many = uids(1..MAX_MEMBERS as i64 + 2);
    assert_invalid(d.create(app, None, "x", 1, false, &too_many).await);

    let gid = d
        .create(app, None, "v", 1, false, &[1])
        .await
        .expect("create");
    assert_invalid(d.add_members(app, gid, &[0]).await);
    assert_invalid(d.rename(app, gid, &"n".repeat(256)).await);
    assert_invalid(d.set_mute(app, gid, 0, true).await);
    assert_invalid(d.disband(app, 0).await);
    // Growing past max_members is refused as a whole.
    let many = uids(2..MAX_MEMBERS as i64 + 1);
    d.add_members(app, gid, &many)
        .await
        .expect("up to the limit");
    assert_eq!(get(d, app, gid).await.members.len(), MAX_MEMBERS);
    assert_invalid(
        d.add_members(
            app,
            gid,
            &[MAX_MEMBERS as i64 + 10, MAX_MEMBERS as i64 + 11],
        )
        .await,
    );
    assert_eq!(get(d, app, gid).await.members.len(), MAX_MEMBERS);
    // Re-adding existing members is fine.
    d.add_members(app, gid, &[1, 2])
        .await
        .expect("idempotent add");
    assert!(d.disband(app, gid).await.expect("disband"));
}

async fn ten_thousand_members(d: &GroupDirectory, app: i64) {
    let members = uids(1..10_001);
    let started = Instant::now();
    let gid = d
        .create(app, None, "big", 1, true, &members)
        .await
        .expect("create 10k");
    let created = started.elapsed();
    let g = get(d, app, gid).await;
    assert_eq!(g.members.len(), 10_000);
    assert!(g.is_member(1) && g.is_member(10_000) && !g.is_member(10_001));

    d.add_members(app, gid, &uids(10_001..10_051))
        .await
        .expect("add 50");
    d.remove_members(app, gid, &uids(1..5_001))
        .await
        .expect("remove 5000");
    d.set_mute(app, gid, 9_999, true).await.expect("mute");
    let g = get(d, app, gid).await;
    assert_eq!(g.members.len(), 5_050);
    assert!(!g.is_member(1) && g.is_member(5_001) && g.is_member(10_050));
    assert!(g.member(9_999).expect("member").mute);

    // Cached reads are cheap.
    let started_reads = Instant::now();
    for _ in 0..1000 {
        assert_eq!(get(d, app, gid).await.members.len(), 5_050);
    }
    let reads = started_reads.elapsed();
    eprintln!(
        "[{}] create 10k members: {created:?}; 1000 cached gets: {reads:?}; total {:?}",
        d.kind(),
        started.elapsed()
    );
    assert!(reads < Duration::from_secs(2), "cached gets took {reads:?}");
}

async fn add_remove_and_join_times(d: &GroupDirectory, app: i64) {
    let gid = d
        .create(app, None, "jt", 1, false, &[1, 2])
        .await
        .expect("create");
    let first = get(d, app, gid).await;
    let joined_2 = first.member(2).expect("2").joined_at;
    // Let the clock move so a new join time is distinguishable.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    d.add_members(app, gid, &[2, 3]).await.expect("add");
    let g = get(d, app, gid).await;
    assert_eq!(
        g.member(2).expect("2").joined_at,
        joined_2,
        "existing member keeps its join time"
    );
    let joined_3 = g.member(3).expect("3").joined_at;
    assert!(joined_3 > joined_2, "{joined_3} vs {joined_2}");

    // Removing a non-member is ignored; removed members are gone; re-adding gives a new join time.
    d.remove_members(app, gid, &[2, 77]).await.expect("remove");
    let g = get(d, app, gid).await;
    assert_eq!(g.members.len(), 2);
    assert!(!g.is_member(2));
    d.add_members(app, gid, &[2]).await.expect("re-add");
    assert!(get(d, app, gid).await.member(2).expect("2").joined_at > joined_2);
    d.add_members(app, gid, &[]).await.expect("empty add");
    d.remove_members(app, gid, &[]).await.expect("empty remove");

    assert_not_found(d.add_members(app, 987_654_321, &[1]).await);
    assert_not_found(d.remove_members(app, 987_654_321, &[1]).await);
}

async fn mute(d: &GroupDirectory, app: i64) {
    let gid = d
        .create(app, None, "m", 1, false, &[1, 2])
        .await
        .expect("create");
    d.set_mute(app, gid, 2, true).await.expect("mute");
    let g = get(d, app, gid).await;
    assert!(g.member(2).expect("2").mute);
    assert!(!g.member(1).expect("1").mute);
    d.set_mute(app, gid, 2, true).await.expect("mute twice");
    d.set_mute(app, gid, 2, false).await.expect("unmute");
    assert!(!get(d, app, gid).await.member(2).expect("2").mute);
    assert_not_found(d.set_mute(app, gid, 3, true).await);
    assert_not_found(d.set_mute(app, 987_654_321, 1, true).await);
    // A mute survives a join-time-preserving re-add.
    d.set_mute(app, gid, 1, true).await.expect("mute 1");
    d.add_members(app, gid, &[1]).await.expect("re-add");
    assert!(get(d, app, gid).await.member(1).expect("1").mute);
}

async fn rename_and_upgrade(d: &GroupDirectory, app: i64) {
    let gid = d
        .create(app, None, "old", 1, false, &[1])
        .await
        .expect("create");
    d.rename(app, gid, "new").await.expect("rename");
    d.rename(app, gid, "new").await.expect("same name again");
    let g = get(d, app, gid).await;
    assert_eq!(g.name, "new");
    assert!(!g.super_group);
    assert_eq!(g.members.len(), 1);
    d.upgrade(app, gid).await.expect("upgrade");
    d.upgrade(app, gid).await.expect("upgrade twice");
    let g = get(d, app, gid).await;
    assert!(g.super_group);
    assert_eq!(g.name, "new");
    assert_not_found(d.rename(app, 987_654_321, "x").await);
    assert_not_found(d.upgrade(app, 987_654_321).await);
}

/// Explicit ids are bounded (so automatic ids can never run out), and automatic ids keep working after
/// the largest explicit id, in this app and any other.
async fn explicit_id_bounds(d: &GroupDirectory, app: i64) {
    for bad in [
        i64::MAX,
        i64::MAX - 1,
        MAX_EXPLICIT_GROUP_ID + 1,
        1 << 62,
        0,
        -1,
        i64::MIN,
    ] {
        let r = d.create(app, Some(bad), "x", 1, false, &[1]).await;
        match &r {
            Err(BackendError::InvalidArgument(m)) if bad > 0 => {
                assert!(m.contains(&MAX_EXPLICIT_GROUP_ID.to_string()), "{m}")
            }
            _ => assert_invalid(r),
        }
        assert!(d.get(app, bad).await.expect("get").is_none());
    }
    let top = d
        .create(app, Some(MAX_EXPLICIT_GROUP_ID), "top", 1, false, &[1])
        .await
        .expect("the largest explicit id");
    assert_eq!(top, MAX_EXPLICIT_GROUP_ID);
    let auto = d
        .create(app, None, "after", 1, false, &[1])
        .await
        .expect("an automatic id after the largest explicit one");
    assert!(auto > MAX_EXPLICIT_GROUP_ID, "{auto}");
    assert!(d.disband(app, top).await.expect("disband"));
    let other = d
        .create(app + 1000, None, "other app", 1, false, &[2])
        .await
        .expect("automatic ids keep working in another app");
    assert!(other > auto, "{other} after {auto}");
    assert_eq!(get(d, app + 1000, other).await.name, "other app");
}

/// A database written before explicit ids were bounded may hold id i64::MAX; creating a group
/// without an id then fails with an error that says why (not "database or disk is full"), while
/// explicit ids still work.
async fn exhausted_ids_are_explained(d: &GroupDirectory, app: i64) {
    let r = d.create(app, None, "no id left", 1, false, &[1]).await;
    match &r {
        Err(BackendError::InvalidArgument(m)) => {
            assert!(m.contains("no group id can be allocated"), "{m}")
        }
        other => panic!("expected an explanation, got {other:?}"),
    }
    let gid = d
        .create(app, Some(77_777), "explicit", 1, false, &[1])
        .await
        .expect("explicit ids still work");
    assert_eq!(get(d, app, gid).await.name, "explicit");
}

async fn disband_and_reuse(d: &GroupDirectory, app: i64) {
    let gid = d
        .create(app, None, "gone", 1, false, &[1, 2])
        .await
        .expect("create");
    assert!(d.get(app, gid).await.expect("get").is_some());
    assert!(d.disband(app, gid).await.expect("disband"));
    assert!(d.get(app, gid).await.expect("get").is_none());
    assert!(!d.disband(app, gid).await.expect("disband again"));
    assert_not_found(d.add_members(app, gid, &[3]).await);
    assert_not_found(d.set_mute(app, gid, 1, true).await);
    assert_not_found(d.rename(app, gid, "x").await);
    assert_not_found(d.upgrade(app, gid).await);
    // A disbanded id can be created again, without the old members.
    assert_eq!(
        d.create(app, Some(gid), "back", 9, false, &[9])
            .await
            .expect("recreate"),
        gid
    );
    let g = get(d, app, gid).await;
    assert_eq!(g.name, "back");
    assert_eq!(g.members.keys().copied().collect::<Vec<_>>(), vec![9]);
}

async fn appid_scoping(d: &GroupDirectory, app: i64, other: i64) {
    let gid = d
        .create(app, None, "mine", 1, false, &[1])
        .await
        .expect("create");
    assert!(d.get(other, gid).await.expect("get").is_none());
    assert_not_found(d.add_members(other, gid, &[2]).await);
    assert_not_found(d.remove_members(other, gid, &[1]).await);
    assert_not_found(d.set_mute(other, gid, 1, true).await);
    assert_not_found(d.rename(other, gid, "theirs").await);
    assert_not_found(d.upgrade(other, gid).await);
    assert!(!d.disband(other, gid).await.expect("disband other"));
    assert_invalid(d.create(other, Some(gid), "steal", 1, false, &[]).await);
    let g = get(d, app, gid).await;
    assert_eq!(
        (g.name.as_str(), g.members.len(), g.super_group),
        ("mine", 1, false)
    );
}

async fn change_events(d: &GroupDirectory, app: i64) {
    let mut rx = d.changes();
    let gid = d
        .create(app, None, "ev", 1, false, &[1])
        .await
        .expect("create");
    expect_change(&mut rx, app, gid).await;
    d.add_members(app, gid, &[2]).await.expect("add");
    expect_change(&mut rx, app, gid).await;
    d.set_mute(app, gid, 2, true).await.expect("mute");
    expect_change(&mut rx, app, gid).await;
    d.remove_members(app, gid, &[2]).await.expect("remove");
    expect_change(&mut rx, app, gid).await;
    d.rename(app, gid, "ev2").await.expect("rename");
    expect_change(&mut rx, app, gid).await;
    d.upgrade(app, gid).await.expect("upgrade");
    expect_change(&mut rx, app, gid).await;
    d.disband(app, gid).await.expect("disband");
    expect_change(&mut rx, app, gid).await;
}

async fn snapshots_are_immutable(d: &GroupDirectory, app: i64) {
    let gid = d
        .create(app, None, "snap", 1, false, &uids(1..1001))
        .await
        .expect("create");
    let before = get(d, app, gid).await;
    // Readers hammer the group while admin calls change it (no in-place mutation:
    // docs/compatibility.md, *Other defects*).
    let reader = {
        let d = d.clone();
        tokio::spawn(async move {
            let mut reads = 0u32;
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                let g = d.get(app, gid).await.expect("get").expect("exists");
                assert!(g.members.len() >= 1000);
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        })
    };
    for uid in 1..21 {
        d.set_mute(app, gid, uid, true).await.expect("mute");
    }
    d.add_members(app, gid, &[5000]).await.expect("add");
    assert!(reader.await.expect("reader") > 0);
    // The old snapshot is untouched.
    assert_eq!(before.members.len(), 1000);
    assert!(before.members.values().all(|m| !m.mute));
    let after = get(d, app, gid).await;
    assert_eq!(after.members.len(), 1001);
    assert_eq!(after.members.values().filter(|m| m.mute).count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_variant() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = open_embedded(&dir).await;
    assert_eq!(d.kind(), "embedded");
    suite(&d).await;

    // A reopened file has everything.
    let gid = d
        .create(200, None, "persist", 1, false, &[1, 2])
        .await
        .expect("create");
    d.set_mute(200, gid, 2, true).await.expect("mute");
    let joined = get(&d, 200, gid).await.member(1).expect("1").joined_at;
    drop(d);
    let d = open_embedded(&dir).await;
    let g = get(&d, 200, gid).await;
    assert_eq!(
        g.member(1),
        Some(Member {
            mute: false,
            joined_at: joined
        })
    );
    assert!(g.member(2).expect("2").mute);
    eprintln!("embedded variant: {:?}", started.elapsed());
}

#[tokio::test]
async fn embedded_database_with_the_largest_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = open_embedded(&dir).await;
    d.create(1, None, "first", 1, false, &[1])
        .await
        .expect("create");
    drop(d);
    // What an unbounded explicit id left behind.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite:{}",
        dir.path().join("nested/groups.db").display()
    ))
    .await
    .expect("sqlite");
    sqlx::query(
        "INSERT INTO groups (gid, appid, name, master, super, created_at) VALUES (?1, 1, 'max', 1, 0, 0)",
    )
    .bind(i64::MAX)
    .execute(&pool)
    .await
    .expect("insert");
    pool.close().await;
    let d = open_embedded(&dir).await;
    assert!(d.disband(1, i64::MAX).await.expect("disband"));
    exhausted_ids_are_explained(&d, 2).await;
}

// ---- MySQL ----

/// What GoBelieve's API server does: write MySQL, then XADD an event with the next action id
/// (`gap` > 0 skips that many ids).
#[allow(clippy::too_many_arguments)]
async fn foreign_event(
    redis: &mut redis::aio::MultiplexedConnection,
    name: &str,
    appid: i64,
    gid: i64,
    member: i64,
    super_group: &str,
    mute: &str,
    gap: i64,
) {
    let actions: Option<String> = redis.get("groups_actions").await.expect("GET");
    let cur: i64 = actions
        .as_deref()
        .and_then(|a| a.split(':').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let prev = cur + gap;
    let id = prev + 1;
    let _: () = redis
        .set("groups_actions", format!("{prev}:{id}"))
        .await
        .expect("SET");
    let fields: Vec<(&str, String)> = vec![
        ("action_id", id.to_string()),
        ("previous_action_id", prev.to_string()),
        ("name", name.to_owned()),
        ("app_id", appid.to_string()),
        ("group_id", gid.to_string()),
        ("member_id", member.to_string()),
        ("super", super_group.to_owned()),
        ("mute", mute.to_owned()),
    ];
    let _: String = redis
        .xadd("group_manager_stream", "*", &fields)
        .await
        .expect("XADD");
}

async fn raw_redis(server: &testkit::RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Poll `check` until it holds (the follower applies asynchronously).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_variant() {
    let started = Instant::now();
    let redis_server = testkit::RedisServer::start();
    let db = testkit::MariaDb::start();
    eprintln!("services up: {:?}", started.elapsed());
    let d = open_mysql(&db, &redis_server).await;
    assert_eq!(d.kind(), "mysql");
    suite(&d).await;
    eprintln!("mysql suite: {:?}", started.elapsed());

    let pool = MySqlPool::connect(&db.url()).await.expect("mysql");
    let mut redis = raw_redis(&redis_server).await;
    foreign_events_apply_live(&d, &pool, &mut redis).await;
    gap_reloads(&d, &pool, &mut redis).await;
    second_node_follows(&d, &db, &redis_server).await;
    restart_loads_existing(d, &db, &redis_server).await;

    // What an unbounded explicit id left behind (GoBelieve's own API server, or an older banter).
    sqlx::query("INSERT INTO `group` (id, appid, master, super, name, deleted) VALUES (?, 400, 1, 0, 'max', 0)")
        .bind(i64::MAX)
        .execute(&pool)
        .await
        .expect("insert");
    let d = open_mysql(&db, &redis_server).await;
    assert!(d.disband(400, i64::MAX).await.expect("disband"));
    exhausted_ids_are_explained(&d, 401).await;
    eprintln!("mysql variant: {:?}", started.elapsed());
}

async fn foreign_events_apply_live(
    d: &GroupDirectory,
    pool: &MySqlPool,
    redis: &mut redis::aio::MultiplexedConnection,
) {
    let app = 301;
    let mut rx = d.changes();
    // A group created by the app server: rows first, then group_create. It is not cached empty
    // (docs/compatibility.md, *Groups, rooms and customer service*): its members are there.
    // Cache "no such group" first, so the event must invalidate it.
    assert!(d.get(app, 5001).await.expect("get").is_none());
    sqlx::query("INSERT INTO `group` (id, appid, master, super, name, deleted) VALUES (5001, 301, 1, 0, 'foreign', 0)")
        .execute(pool)
        .await
        .expect("insert group");
    sqlx::query("INSERT INTO group_member (group_id, uid, timestamp, mute, deleted) VALUES (5001, 1, 1000000, 0, 0), (5001, 2, NULL, 0, 0)")
        .execute(pool)
        .await
        .expect("insert members");
    foreign_event(redis, "group_create", app, 5001, 0, "0", "0", 0).await;
    expect_change(&mut rx, app, 5001).await;
    let g = get(d, app, 5001).await;
    assert_eq!(g.name, "foreign");
    assert_eq!(
        g.member(1),
        Some(Member {
            mute: false,
            joined_at: 1_000_000
        })
    );
    assert_eq!(
        g.member(2).expect("2").joined_at,
        0,
        "NULL timestamp reads as 0"
    );

    // member_add: the stored join time, not "now" (docs/compatibility.md, *Groups, rooms and
    // customer service*).
    sqlx::query("INSERT INTO group_member (group_id, uid, timestamp, mute, deleted) VALUES (5001, 3, 1234567, 0, 0)")
        .execute(pool)
        .await
        .expect("insert member");
    foreign_event(redis, "group_member_add", app, 5001, 3, "0", "0", 0).await;
    expect_change(&mut rx, app, 5001).await;
    assert_eq!(
        get(d, app, 5001).await.member(3),
        Some(Member {
            mute: false,
            joined_at: 1_234_567
        })
    );

    // mute written as "true", as some writers do.
    sqlx::query("UPDATE group_member SET mute = 1 WHERE group_id = 5001 AND uid = 3")
        .execute(pool)
        .await
        .expect("mute");
    foreign_event(redis, "group_member_mute", app, 5001, 3, "0", "true", 0).await;
    expect_change(&mut rx, app, 5001).await;
    assert!(get(d, app, 5001).await.member(3).expect("3").mute);

    // member_remove (soft delete, as GoBelieve does).
    sqlx::query("UPDATE group_member SET deleted = 1 WHERE group_id = 5001 AND uid = 2")
        .execute(pool)
        .await
        .expect("remove");
    foreign_event(redis, "group_member_remove", app, 5001, 2, "0", "0", 0).await;
    expect_change(&mut rx, app, 5001).await;
    assert!(!get(d, app, 5001).await.is_member(2));

    // upgrade, then a name change announced as group_changed.
    sqlx::query("UPDATE `group` SET super = 1, name = 'renamed' WHERE id = 5001")
        .execute(pool)
        .await
        .expect("upgrade");
    foreign_event(redis, "group_upgrade", app, 5001, 0, "1", "0", 0).await;
    expect_change(&mut rx, app, 5001).await;
    assert!(get(d, app, 5001).await.super_group);
    foreign_event(redis, "group_changed", app, 5001, 0, "0", "0", 0).await;
    expect_change(&mut rx, app, 5001).await;
    assert_eq!(get(d, app, 5001).await.name, "renamed");

    // An unknown event name is ignored (the action id still counts).
    foreign_event(redis, "group_something_new", app, 5001, 0, "0", "0", 0).await;

    // disband.
    sqlx::query("UPDATE `group` SET deleted = 1 WHERE id = 5001")
        .execute(pool)
        .await
        .expect("disband");
    foreign_event(redis, "group_disband", app, 5001, 0, "0", "0", 0).await;
    expect_change(&mut rx, app, 5001).await;
    assert!(d.get(app, 5001).await.expect("get").is_none());
}

async fn gap_reloads(
    d: &GroupDirectory,
    pool: &MySqlPool,
    redis: &mut redis::aio::MultiplexedConnection,
) {
    let app = 302;
    let gid = d
        .create(app, None, "gap", 1, false, &[1])
        .await
        .expect("create");
    assert_eq!(get(d, app, gid).await.members.len(), 1);
    let mut rx = d.changes();
    // A change made without any event (a lost one) …
    sqlx::query("INSERT INTO group_member (group_id, uid, timestamp, mute, deleted) VALUES (?, 2, 42, 0, 0)")
        .bind(gid)
        .execute(pool)
        .await
        .expect("insert");
    assert_eq!(get(d, app, gid).await.members.len(), 1, "still cached");
    // … then an event about another group whose action id skips some: every cached group is
    // reloaded and announced.
    foreign_event(redis, "group_changed", app, 999_999, 0, "0", "0", 3).await;
    expect_change(&mut rx, app, gid).await;
    let g = get(d, app, gid).await;
    assert_eq!(
        g.member(2),
        Some(Member {
            mute: false,
            joined_at: 42
        })
    );
    // The sequence continues from the new id: our own writes keep working without reloads.
    d.add_members(app, gid, &[3]).await.expect("add");
    assert!(get(d, app, gid).await.is_member(3));
}

async fn second_node_follows(
    a: &GroupDirectory,
    db: &testkit::MariaDb,
    redis_server: &testkit::RedisServer,
) {
    let app = 303;
    let b = open_mysql(db, redis_server).await;
    let gid = a
        .create(app, None, "shared", 1, false, &[1, 2])
        .await
        .expect("create");
    // b loads it, then follows a's changes live.
    assert_eq!(get(&b, app, gid).await.members.len(), 2);
    let mut rx = b.changes();
    a.add_members(app, gid, &[3]).await.expect("add");
    expect_change(&mut rx, app, gid).await;
    let joined_a = get(a, app, gid).await.member(3).expect("3").joined_at;
    assert_eq!(
        get(&b, app, gid).await.member(3).expect("3").joined_at,
        joined_a
    );
    a.set_mute(app, gid, 1, true).await.expect("mute");
    expect_change(&mut rx, app, gid).await;
    assert!(get(&b, app, gid).await.member(1).expect("1").mute);
    // A bulk change (announced as group_changed) reaches b too.
    a.add_members(app, gid, &uids(100..400))
        .await
        .expect("bulk add");
    eventually("b sees the bulk add", || async {
        get(&b, app, gid).await.members.len() == 303
    })
    .await;
    // And b's changes reach a.
    b.remove_members(app, gid, &[2]).await.expect("remove on b");
    eventually("a sees b's remove", || async {
        !get(a, app, gid).await.is_member(2)
    })
    .await;
    b.disband(app, gid).await.expect("disband on b");
    eventually("a sees b's disband", || async {
        a.get(app, gid).await.expect("get").is_none()
    })
    .await;
}

async fn restart_loads_existing(
    d: GroupDirectory,
    db: &testkit::MariaDb,
    redis_server: &testkit::RedisServer,
) {
    let app = 304;
    let gid = d
        .create(app, None, "durable", 1, true, &uids(1..3001))
        .await
        .expect("create");
    d.set_mute(app, gid, 7, true).await.expect("mute");
    let before = get(&d, app, gid).await;
    drop(d);
    let d = open_mysql(db, redis_server).await;
    let after = get(&d, app, gid).await;
    assert_eq!(after.members, before.members);
    assert_eq!(
        (after.name.as_str(), after.super_group, after.master),
        ("durable", true, 1)
    );
    // And it keeps following the stream after the restart.
    let mut rx = d.changes();
    d.rename(app, gid, "still here").await.expect("rename");
    expect_change(&mut rx, app, gid).await;
    assert_eq!(get(&d, app, gid).await.name, "still here");
}
