//! Migration from GoBelieve end to end: the committed fixture (a GoBelieve ims data directory
//! written by `banter store gen-gobelieve`) plus its MySQL groups (real MariaDB) and Redis user
//! state (real Redis) are imported with `banter store import-gobelieve`; a `banter serve` on the
//! imported data then gives clients that synced to a GoBelieve key exactly the messages after it,
//! over TCP, for personal and super-group queues; a second run changes nothing; damaged block
//! files are reported and skipped.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use proto::{cmd, Body, GroupSyncKey};
use store::gobelieve::gen::{generate, groups_sql, GenOptions, Generated};
use store::gobelieve::GbQueue;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gobelieve")
}

/// The options the fixture was written with:
/// `banter store gen-gobelieve --out crates/banter/tests/fixtures/gobelieve --messages 600
///  --users 30 --groups 4 --seed 15 --block-bytes 65536`.
fn fixture_opts(keep_truth: bool) -> GenOptions {
    GenOptions {
        appid: APPID,
        messages: 600,
        users: 30,
        groups: 4,
        seed: 15,
        block_limit: 65536,
        legacy_records: true,
        keep_truth,
    }
}

fn truth(tmp: &Path) -> Generated {
    generate(&tmp.join("truth"), &fixture_opts(true)).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn banter(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_banter"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn import(from: &Path, data: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "store",
        "import-gobelieve",
        "--from",
        from.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = banter(&args);
    assert!(ok, "import failed:\n{out}\n{err}");
    out
}

#[test]
fn the_fixture_is_what_the_generator_writes() {
    let t = tempfile::tempdir().unwrap();
    let g = generate(&t.path().join("gb"), &fixture_opts(false)).unwrap();
    let mut sql = Vec::new();
    groups_sql(APPID, &g.groups, &mut sql).unwrap();
    std::fs::write(t.path().join("gb/groups.sql"), sql).unwrap();
    let (want, got) = (files(&t.path().join("gb")), files(&fixture()));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &want {
        assert!(
            got[name] == *bytes,
            "{name} differs from the generator's output"
        );
    }
    let total: usize = got.values().map(|b| b.len()).sum();
    assert!(total < 400 << 10, "the fixture stays small ({total} bytes)");
    assert!(
        got.contains_key("message_2"),
        "the fixture spans several block files"
    );
}

/// SYNC from `key` until caught up; (cmd, body) of every message.
async fn peer_sync(c: &mut Client, key: i64) -> (Vec<(u8, Vec<u8>)>, i64) {
    let (frames, end) = c.sync_all(key).await;
    (
        frames.iter().map(|f| (f.cmd, f.body.to_vec())).collect(),
        end,
    )
}

async fn group_sync(c: &mut Client, gid: i64, mut key: i64) -> (Vec<(u8, Vec<u8>)>, i64) {
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
        let mut n = 0;
        loop {
            let f = c.recv().await.expect("sync frames");
            if f.cmd == cmd::SYNC_GROUP_END {
                match body_of(&f) {
                    Body::SyncGroupEnd(k) => key = k.sync_key,
                    other => panic!("{other:?}"),
                }
                break;
            }
            if f.cmd == cmd::SYNC_GROUP_NOTIFY {
                continue;
            }
            all.push((f.cmd, f.body.to_vec()));
            n += 1;
        }
        if n == 0 {
            return (all, key);
        }
    }
}

fn entries(g: &Generated, q: GbQueue) -> Vec<(i64, u8, Vec<u8>)> {
    g.queues[&q].clone()
}

fn after(e: &[(i64, u8, Vec<u8>)], cut: usize) -> Vec<(u8, Vec<u8>)> {
    e[cut..].iter().map(|x| (x.1, x.2.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_continue_from_their_gobelieve_sync_keys() {
    let t = tempfile::tempdir().unwrap();
    let (gb, data) = (t.path().join("gb"), t.path().join("data"));
    copy_dir(&fixture(), &gb);
    let g = truth(t.path());

    // GoBelieve's MySQL groups and Redis hints, as its app server and im left them
    let db = testkit::MariaDb::start();
    let mut sql = std::fs::read(gb.join("groups.sql")).unwrap();
    sql.splice(0..0, b"USE test;\n".iter().copied());
    let mut client = Command::new("mariadb")
        .args(["-u", "root", "--socket"])
        .arg(db.socket())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    client.stdin.take().unwrap().write_all(&sql).unwrap();
    assert!(client.wait().unwrap().success());
    let redis = testkit::RedisServer::start();
    // a user whose app reinstalled: the client sends key 0 and the server uses the hint
    let (peer_q, peer) = g
        .queues
        .iter()
        .filter(|(q, _)| matches!(q, GbQueue::User { .. }))
        .max_by_key(|(_, e)| e.len())
        .map(|(q, e)| (*q, e.clone()))
        .unwrap();
    let GbQueue::User { uid, .. } = peer_q else {
        unreachable!()
    };
    let hint_cut = peer.len() / 3;
    let sg = g.groups.iter().find(|gr| gr.is_super).unwrap().clone();
    let sg_entries = entries(
        &g,
        GbQueue::Group {
            appid: APPID,
            gid: sg.gid,
        },
    );
    let member = sg.members[1].0;
    let group_hint_cut = sg_entries.len() / 2;
    let redis_cli = |args: &[&str]| {
        let st = Command::new("redis-cli")
            .args(["-p", &redis.port().to_string()])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success());
    };
    redis_cli(&[
        "HSET",
        &format!("users_{APPID}_{uid}"),
        "sync_key",
        &peer[hint_cut - 1].0.to_string(),
    ]);
    redis_cli(&[
        "HSET",
        &format!("users_{APPID}_{member}"),
        &format!("group_sync_key_{}", sg.gid),
        &sg_entries[group_hint_cut - 1].0.to_string(),
    ]);
    redis_cli(&[
        "HSET",
        "access_token_gobelieve-token-1",
        "user_id",
        &uid.to_string(),
        "app_id",
        &APPID.to_string(),
    ]);

    let out = import(&gb, &data, &["--mysql", &db.url(), "--redis", &redis.url()]);
    assert!(
        out.contains(&format!("messages imported: {}", g.entries)),
        "{out}"
    );
    assert!(
        out.contains("index record of an older GoBelieve version: 1"),
        "{out}"
    );
    assert!(
        out.contains(&format!("groups from MySQL: {} groups", g.groups.len())),
        "{out}"
    );
    assert!(out.contains("1 tokens"), "{out}");

    // a second run changes nothing
    let before = (
        files(&data.join("store")),
        files(&data.join("store/gobelieve")),
    );
    let again = import(&gb, &data, &["--mysql", &db.url(), "--redis", &redis.url()]);
    assert!(again.contains("nothing new"), "{again}");
    assert!(again.contains("messages imported: 0"), "{again}");
    let seg = |m: &BTreeMap<String, Vec<u8>>| {
        m.iter()
            .filter(|(k, _)| k.ends_with(".seg"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let after_run = (
        files(&data.join("store")),
        files(&data.join("store/gobelieve")),
    );
    assert_eq!(seg(&before.0), seg(&after_run.0));
    assert_eq!(before.1, after_run.1);

    let s = TestServer::start_config(banter::testing::test_config(data.clone()))
        .await
        .unwrap();

    // the GoBelieve token works as it is
    let mut c = Client::tcp(s.tcp).await;
    assert_eq!(
        c.auth("gobelieve-token-1", 2, proto::Platform::ANDROID, "d1")
            .await,
        0
    );
    // key 0: the imported GoBelieve hint, translated
    let (got, _) = peer_sync(&mut c, 0).await;
    assert_eq!(got, after(&peer, hint_cut));
    // explicit GoBelieve keys: exactly what follows, nothing twice, nothing missing
    for cut in [1, peer.len() / 2, peer.len() - 1, peer.len()] {
        let (got, end) = peer_sync(&mut c, peer[cut - 1].0).await;
        assert_eq!(
            got,
            after(&peer, cut),
            "after entry {cut} of {}",
            peer.len()
        );
        // the end key is a banter key: syncing from it again gives nothing
        assert!(end > peer.last().unwrap().0);
        assert!(peer_sync(&mut c, end).await.0.is_empty());
    }
    // new messages continue the queue
    let mut c2 = Client::login(&s, peer_q_other(&g, uid), 2, false, "d2").await;
    c2.send_im(peer_q_other(&g, uid), uid, "after the migration")
        .await;
    c2.recv_until(cmd::ACK).await;
    let (got, _) = peer_sync(&mut c, peer[peer.len() - 1].0).await;
    assert_eq!(got.len(), 1);

    // super group: the member's hint, then explicit keys
    let mut m = Client::login(&s, member, 2, false, "m1").await;
    let (got, _) = group_sync(&mut m, sg.gid, 0).await;
    assert_eq!(got, after(&sg_entries, group_hint_cut));
    for cut in [1, sg_entries.len() - 1, sg_entries.len()] {
        let (got, _) = group_sync(&mut m, sg.gid, sg_entries[cut - 1].0).await;
        assert_eq!(got, after(&sg_entries, cut), "group entry {cut}");
    }
    s.stop().await;
}

/// Another user of the app (not `uid`).
fn peer_q_other(g: &Generated, uid: i64) -> i64 {
    g.queues
        .keys()
        .find_map(|q| match q {
            GbQueue::User { uid: u, .. } if *u != uid => Some(*u),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_block_files_are_reported_and_skipped() {
    let t = tempfile::tempdir().unwrap();
    let (gb, data) = (t.path().join("gb"), t.path().join("data"));
    copy_dir(&fixture(), &gb);
    let g = truth(t.path());
    // garbage in the middle of block 1 and a torn write at the end of the last block
    let b1 = gb.join("message_1");
    let mut bytes = std::fs::read(&b1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 64].fill(0xAB);
    std::fs::write(&b1, &bytes).unwrap();
    let last = (0..)
        .map(|n| gb.join(format!("message_{n}")))
        .take_while(|p| p.exists())
        .last()
        .unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    let (ok, out, err) = banter(&[
        "store",
        "import-gobelieve",
        "--from",
        gb.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("corrupt bytes: 1"), "{out}");
    assert!(out.contains("truncated record: 1"), "{out}");
    assert!(out.contains("at message_1 offset"), "{out}");
    assert!(err.contains("skipped at message_1 offset"), "{err}");
    let n: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("messages imported: "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(n < g.entries && n + 20 > g.entries, "{n} of {}", g.entries);

    // the server serves what was imported; a user's history is the original minus the damage
    let s = TestServer::start_config(banter::testing::test_config(data.clone()))
        .await
        .unwrap();
    let (q, e) = g
        .queues
        .iter()
        .find(|(q, _)| matches!(q, GbQueue::User { .. }))
        .unwrap();
    let GbQueue::User { uid, .. } = *q else {
        unreachable!()
    };
    let mut c = Client::login(&s, uid, 2, false, "d").await;
    let (got, _) = peer_sync(&mut c, 0).await;
    assert!(got.len() <= e.len() && got.len() + 5 >= e.len());
    let mut it = e.iter();
    for m in &got {
        assert!(
            it.any(|x| x.1 == m.0 && x.2 == m.1),
            "order or content differs"
        );
    }
    s.stop().await;
}
