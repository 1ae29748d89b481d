//! Fail-over support in the engine: a promotion continues the log above every position the old
//! leader could have used (a JUMP record opening a higher segment), which replicates, survives a
//! restart and passes `check`; a commit index hides entries no follower confirmed; withdrawn
//! (unconfirmed, refused) records never become visible — on the leader, on followers that
//! replicate the WITHDRAW records, and after a restart.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::msg;
use store::format::{jump_target, JUMP_ALIGN};
use store::{QueueId, ReplicationStream, Role, Store, StoreError, StoreOptions};

fn opts(role: Role) -> StoreOptions {
    StoreOptions {
        segment_bytes: 8192,
        cache_bytes: 16 * 1024,
        role,
        ..common::small_opts()
    }
}

fn keys(s: &Store, q: QueueId) -> Vec<(i64, i64, String)> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let p = s.sync(q, after, 3000).unwrap();
        out.extend(p.messages.iter().map(|m| {
            (
                m.key,
                m.prev_key,
                String::from_utf8_lossy(&m.body).into_owned(),
            )
        }));
        after = p.last_key;
        if !p.has_more {
            return out;
        }
    }
}

fn bodies(s: &Store, q: QueueId) -> Vec<String> {
    keys(s, q).into_iter().map(|k| k.2).collect()
}

/// Applies everything `stream` has to `follower`.
fn pump(stream: &mut ReplicationStream, follower: &Store) {
    while let Some(b) = stream.try_next().unwrap() {
        let end = b.end();
        assert_eq!(follower.apply_replicated(b).wait().unwrap(), end);
    }
}

fn append(s: &Store, qs: &[QueueId], body: &str) -> Vec<store::Appended> {
    s.append_blocking(vec![msg(qs, body)]).unwrap().remove(0)
}

#[test]
fn promotions_never_reuse_a_position() {
    let root = tempfile::tempdir().unwrap();
    let q = QueueId::user(1, 1);
    let leader = Store::open(root.path().join("a"), opts(Role::Leader)).unwrap();
    let b = Store::open(root.path().join("b"), opts(Role::Follower)).unwrap();
    for i in 0..50 {
        append(&leader, &[q, QueueId::user(1, 2)], &format!("m{i}"));
    }
    let mut to_b = leader.subscribe(0).unwrap();
    pump(&mut to_b, &b);
    // The old leader goes on without b (async replication), then dies: its tail is lost.
    let mut lost = Vec::new();
    for i in 0..30 {
        lost.push(append(&leader, &[q], &format!("lost{i}"))[0].key);
    }
    let old_end = leader.log_end();
    let reported = b.log_end(); // what b heard of the leader's end
    drop(leader);

    let end = b.promote_past(reported).wait().unwrap();
    assert_eq!(b.role(), Role::Leader);
    // the gap is not log: only the JUMP record lies between the old end and the new one
    assert_eq!(b.log_bytes_between(reported, end), 28);
    assert_eq!(b.log_bytes_between(0, end), reported + 28);
    assert!(end > jump_target(reported) && end > old_end + JUMP_ALIGN);
    let after = append(&b, &[q], "after the first fail-over");
    // A key from the lost tail is below every new key, and a sync from it returns the new one.
    assert!(lost.iter().all(|&k| k < after[0].key));
    let from_lost = b.sync(q, *lost.last().unwrap(), 100).unwrap();
    assert_eq!(
        from_lost
            .messages
            .iter()
            .map(|m| m.body.as_ref())
            .collect::<Vec<_>>(),
        vec![&b"after the first fail-over"[..]]
    );

    // A follower of the promoted store: one from scratch, one that holds the pre-promotion log.
    let c = Store::open(root.path().join("c"), opts(Role::Follower)).unwrap();
    let mut to_c = b.subscribe(0).unwrap();
    pump(&mut to_c, &c);
    assert_eq!(c.log_end(), b.log_end());
    assert_eq!(keys(&c, q), keys(&b, q));
    // A position inside the gap is not one of this log's: refused.
    assert!(matches!(
        b.subscribe(reported + 1000),
        Err(StoreError::InvalidArgument(_))
    ));

    // Two more fail-overs: c takes over from b, then d from c.
    append(&b, &[q], "before the second fail-over");
    pump(&mut to_c, &c);
    let end2 = c.promote_past(b.log_end()).wait().unwrap();
    assert!(end2 >= jump_target(b.log_end()));
    append(&c, &[q], "after the second fail-over");
    let d = Store::open(root.path().join("d"), opts(Role::Follower)).unwrap();
    let mut to_d = c.subscribe(0).unwrap();
    pump(&mut to_d, &d);
    d.promote_past(c.log_end()).wait().unwrap();
    append(&d, &[q], "after the third fail-over");
    let all = keys(&d, q);
    assert_eq!(all.len(), 50 + 4);
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0 && w[1].1 == w[0].0),
        "keys strictly increase and link up across three fail-overs: {all:?}"
    );

    // Restart and offline check with the jumps on disk.
    let d_end = d.log_end();
    d.close().unwrap();
    drop(d);
    let report = store::tools::check(root.path().join("d")).unwrap();
    assert!(report.is_clean(), "{report}");
    let d = Store::open(root.path().join("d"), opts(Role::Leader)).unwrap();
    assert_eq!(d.log_end(), d_end);
    assert_eq!(keys(&d, q), all);
    drop(to_c);
    drop(b);
    let report = store::tools::check(root.path().join("b")).unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_commit_index_hides_unconfirmed_entries() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path().join("s"), opts(Role::Leader)).unwrap();
    let q = QueueId::user(1, 7);
    let m0 = append(&s, &[q], "m0")[0];
    s.enable_commit_visibility();
    assert_eq!(
        s.visible_limit(),
        s.log_end(),
        "what was there is committed"
    );
    let m1 = append(&s, &[q], "m1")[0];
    // durable on the leader, not confirmed: invisible to every read
    assert_eq!(bodies(&s, q), vec!["m0"]);
    assert_eq!(s.last_key(q), m0.key);
    assert_eq!(s.new_count(q, 0).unwrap(), 1);
    assert_eq!(s.latest(q, 10).unwrap().len(), 1);
    assert_eq!(s.latest_peer(q, 10).unwrap().len(), 1);
    let page = s.sync(q, m0.key, 10).unwrap();
    assert!(page.messages.is_empty());
    assert_eq!(page.queue_last_key, m0.key);
    // a queue whose only entry is unconfirmed looks empty
    let fresh = QueueId::user(1, 8);
    append(&s, &[fresh], "only");
    assert_eq!(s.last_key(fresh), 0);
    assert!(bodies(&s, fresh).is_empty());
    // confirmed: visible
    s.raise_visible_limit(s.log_end());
    assert_eq!(bodies(&s, q), vec!["m0", "m1"]);
    assert_eq!(s.last_key(q), m1.key);
    assert_eq!(bodies(&s, fresh), vec!["only"]);
}

#[test]
fn withdrawn_records_are_never_visible() {
    let root = tempfile::tempdir().unwrap();
    let leader = Store::open(root.path().join("l"), opts(Role::Leader)).unwrap();
    let follower = Store::open(root.path().join("f"), opts(Role::Follower)).unwrap();
    let (a, b, g) = (
        QueueId::user(1, 1),
        QueueId::user(1, 2),
        QueueId::group(1, 9),
    );
    leader.enable_commit_visibility();
    let m0 = append(&leader, &[a, g], "m0");
    leader.raise_visible_limit(leader.log_end());
    // Unconfirmed: m1 (a, b), m2 (a, g), and a group message to 5000 queues (two WITHDRAW
    // records).
    append(&leader, &[a, b], "m1");
    append(&leader, &[a, g], "m2");
    let many: Vec<QueueId> = (100..5100).map(|u| QueueId::user(1, u)).collect();
    append(&leader, &many, "to many");
    let from = leader.visible_limit();
    let to = leader.withdraw_unconfirmed(from).wait().unwrap();
    assert!(to > from);
    // Even once the commit index passes them, they stay invisible.
    leader.raise_visible_limit(leader.log_end());
    assert_eq!(bodies(&leader, a), vec!["m0"]);
    assert!(bodies(&leader, b).is_empty());
    assert_eq!(bodies(&leader, g), vec!["m0"]);
    assert!(bodies(&leader, many[4999]).is_empty());
    // Queues continue from before the withdrawal.
    let m3 = append(&leader, &[a, b], "m3");
    assert_eq!(m3[0].prev_key, m0[0].key);
    assert_eq!(m3[1].prev_key, 0);
    leader.raise_visible_limit(leader.log_end());
    // A second withdrawal.
    append(&leader, &[a], "m4");
    let to2 = leader
        .withdraw_unconfirmed(leader.visible_limit())
        .wait()
        .unwrap();
    assert!(to2 > to);
    assert_eq!(bodies(&leader, a), vec!["m0", "m3"]);
    leader.raise_visible_limit(leader.log_end());
    // Nothing after to2 to withdraw: resolves at the log end without writing anything.
    let end = leader.log_end();
    assert_eq!(
        leader.withdraw_unconfirmed(end).wait().unwrap(),
        end,
        "empty withdrawal"
    );
    let m5 = append(&leader, &[a], "m5");
    leader.raise_visible_limit(leader.log_end());
    assert_eq!(m5[0].prev_key, m3[0].key);
    assert_eq!(bodies(&leader, a), vec!["m0", "m3", "m5"]);
    assert_eq!(bodies(&leader, b), vec!["m3"]);

    // A follower replicating the withdrawals sees the same queues.
    let mut stream = leader.subscribe(0).unwrap();
    pump(&mut stream, &follower);
    for q in [a, b, g, many[0], many[4999]] {
        assert_eq!(keys(&follower, q), keys(&leader, q), "{q:?}");
    }
    // ... also after a restart of both (replaying the WITHDRAW records), and `check` agrees.
    let before: Vec<_> = [a, b, g].iter().map(|&q| keys(&leader, q)).collect();
    drop(stream);
    drop(leader);
    drop(follower);
    for (name, role) in [("l", Role::Leader), ("f", Role::Follower)] {
        let report = store::tools::check(root.path().join(name)).unwrap();
        assert!(report.is_clean(), "{report}");
        let s = Store::open(root.path().join(name), opts(role)).unwrap();
        let after: Vec<_> = [a, b, g].iter().map(|&q| keys(&s, q)).collect();
        assert_eq!(after, before, "{name} after a restart");
        assert!(bodies(&s, many[10]).is_empty());
    }
    // A follower promoted after replicating the withdrawals continues the queues correctly.
    let f = Store::open(root.path().join("f"), opts(Role::Follower)).unwrap();
    f.promote().wait().unwrap();
    let r = append(&f, &[a], "after promotion");
    assert_eq!(r[0].prev_key, m5[0].key);
}

#[test]
fn a_checkpoint_right_after_a_control_record_is_accepted_on_open() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let q = QueueId::user(3, 3);
    {
        let s = Store::open(&dir, opts(Role::Follower)).unwrap();
        s.promote().wait().unwrap();
        s.checkpoint().unwrap(); // the log ends with the JUMP record
        append(&s, &[q], "x");
        s.enable_commit_visibility();
        append(&s, &[q], "y");
        s.withdraw_unconfirmed(s.visible_limit()).wait().unwrap();
        s.checkpoint().unwrap(); // the log ends with a WITHDRAW record
        s.close_without_checkpoint().unwrap();
    }
    let s = Store::open(&dir, opts(Role::Leader)).unwrap();
    assert_eq!(bodies(&s, q), vec!["x"]);
}
