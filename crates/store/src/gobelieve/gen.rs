//! A generator of GoBelieve deployments' stored data (`banter store gen-gobelieve`): peer
//! messages, normal-group messages (one copy per member, as GoBelieve stores them), super-group
//! messages, group notifications and system messages, written with [`GbWriter`]; plus a few
//! records of older GoBelieve versions, and the MySQL `group` / `group_member` rows of the groups
//! as SQL. Deterministic for a seed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::reader::GbQueue;
use super::writer::{im_body, GbWriter};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenOptions {
    pub appid: i64,
    /// Logical messages (a normal-group message counts once, however many copies it has).
    pub messages: u64,
    pub users: i64,
    /// Groups; every other one is a super group.
    pub groups: i64,
    pub seed: u64,
    /// Roll blocks over at this size (GoBelieve: 128 MiB).
    pub block_limit: u64,
    /// Also write records of older GoBelieve versions (not reachable through sync there).
    pub legacy_records: bool,
    /// Keep every queue's entries in [`Generated::queues`] (tests; memory grows with the data).
    pub keep_truth: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            appid: 7,
            messages: 1000,
            users: 100,
            groups: 4,
            seed: 1,
            block_limit: 128 << 20,
            legacy_records: true,
            keep_truth: false,
        }
    }
}

/// A generated group.
#[derive(Clone, Debug)]
pub struct GenGroup {
    pub gid: i64,
    pub is_super: bool,
    pub master: i64,
    /// Members with their join time (unix seconds).
    pub members: Vec<(i64, i64)>,
}

/// What was generated.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    pub messages: u64,
    /// Queue entries (index records).
    pub entries: u64,
    pub groups: Vec<GenGroup>,
    /// Per queue, (msgid, cmd, body) oldest first, when `keep_truth`.
    pub queues: BTreeMap<GbQueue, Vec<(i64, u8, Vec<u8>)>>,
}

/// A small deterministic generator (xorshift64*), so that fixtures do not depend on a crate's
/// algorithm choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Writes a GoBelieve data directory into `dir` (see the module docs).
pub fn generate(dir: &Path, o: &GenOptions) -> std::io::Result<Generated> {
    if o.users < 2 {
        return Err(std::io::Error::other("at least 2 users are needed"));
    }
    let mut w = GbWriter::with_block_limit(dir, o.block_limit)?;
    let mut rng = Rng(o.seed.max(1) ^ 0x9E37_79B9_7F4A_7C15);
    let mut g = Generated::default();
    let t0: i64 = 1_700_000_000;
    let uid = |i: u64| 1000 + i as i64;
    for k in 0..o.groups {
        let is_super = k % 2 == 1;
        let size = if is_super {
            20 + rng.below(80)
        } else {
            3 + rng.below(6)
        };
        let mut members: Vec<(i64, i64)> = Vec::new();
        while (members.len() as u64) < size.min(o.users as u64) {
            let u = uid(rng.below(o.users as u64));
            if !members.iter().any(|m| m.0 == u) {
                members.push((u, t0 - 86_400 + rng.below(3600) as i64));
            }
        }
        g.groups.push(GenGroup {
            gid: 500_000 + k,
            is_super,
            master: members[0].0,
            members,
        });
    }
    let appid = o.appid;
    let keep = |g: &mut Generated, q: GbQueue, id: i64, cmd: u8, body: &[u8]| {
        g.entries += 1;
        if o.keep_truth {
            g.queues
                .entry(q)
                .or_default()
                .push((id, cmd, body.to_vec()));
        }
    };
    if o.legacy_records {
        // what an older version left behind: OFFLINE (254) index records and deprecated
        // customer-service content, never reachable through GoBelieve's sync
        let body = im_body(uid(0), uid(1), t0 as i32 - 90_000, 1, b"{\"text\":\"old\"}");
        let c = w.append_record(4, 2, 0, &body)?;
        let mut old = Vec::new();
        for v in [appid, uid(1), c, 0] {
            old.extend_from_slice(&v.to_be_bytes());
        }
        w.append_record(254, 0, 0, &old)?;
        w.append_record(24, 2, 0, b"deprecated customer message")?;
    }
    for n in 0..o.messages {
        let ts = (t0 + (n / 10) as i64) as i32;
        let roll = rng.below(100);
        let text = format!("{{\"text\":\"message {n} r{}\"}}", rng.below(1_000_000));
        let dev = 1 + rng.below(3) as i64;
        if roll < 70 || g.groups.is_empty() {
            let s = uid(rng.below(o.users as u64));
            let mut r = uid(rng.below(o.users as u64));
            if r == s {
                r = if s == uid(0) { uid(1) } else { uid(0) };
            }
            let body = im_body(s, r, ts, n as i32, text.as_bytes());
            let a = w.save_peer(appid, r, dev, 4, &body)?;
            keep(&mut g, GbQueue::User { appid, uid: r }, a.msgid, 4, &body);
            let b = w.save_peer(appid, s, dev, 4, &body)?;
            keep(&mut g, GbQueue::User { appid, uid: s }, b.msgid, 4, &body);
        } else if roll < 72 {
            // a system message to one user (no timestamp in its body)
            let r = uid(rng.below(o.users as u64));
            let body = format!("{{\"system\":{n}}}").into_bytes();
            let a = w.save_peer(appid, r, 0, 21, &body)?;
            keep(&mut g, GbQueue::User { appid, uid: r }, a.msgid, 21, &body);
        } else {
            let grp = &g.groups[rng.below(g.groups.len() as u64) as usize];
            let (gid, is_super) = (grp.gid, grp.is_super);
            let members: Vec<i64> = grp.members.iter().map(|m| m.0).collect();
            let s = members[rng.below(members.len() as u64) as usize];
            if is_super {
                let body = im_body(s, gid, ts, n as i32, text.as_bytes());
                let a = w.save_group(appid, gid, dev, 8, &body)?;
                keep(&mut g, GbQueue::Group { appid, gid }, a.msgid, 8, &body);
            } else if roll < 74 {
                let body =
                    format!("{{\"notification\":{{\"group_id\":{gid},\"n\":{n}}}}}").into_bytes();
                for m in members {
                    let a = w.save_peer_flagged(appid, m, 0, 7, true, &body)?;
                    keep(&mut g, GbQueue::User { appid, uid: m }, a.msgid, 7, &body);
                }
            } else {
                let body = im_body(s, gid, ts, n as i32, text.as_bytes());
                for m in members {
                    let a = w.save_peer(appid, m, dev, 8, &body)?;
                    keep(&mut g, GbQueue::User { appid, uid: m }, a.msgid, 8, &body);
                }
            }
        }
        g.messages += 1;
    }
    w.finish()?;
    Ok(g)
}

/// GoBelieve's `group` and `group_member` tables (its `db.sql` schema).
pub const GROUP_TABLES_SQL: &str = "CREATE TABLE IF NOT EXISTS `group` (
  `id` BIGINT NOT NULL AUTO_INCREMENT, `appid` BIGINT DEFAULT NULL, `master` BIGINT DEFAULT NULL,
  `super` TINYINT NOT NULL DEFAULT 0, `name` VARCHAR(255) DEFAULT NULL,
  `notice` VARCHAR(255) DEFAULT NULL, `deleted` TINYINT(1) NOT NULL, PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;
CREATE TABLE IF NOT EXISTS `group_member` (
  `group_id` BIGINT NOT NULL DEFAULT 0, `uid` BIGINT NOT NULL DEFAULT 0, `timestamp` INT DEFAULT NULL,
  `nickname` VARCHAR(255) DEFAULT NULL, `mute` TINYINT(1) DEFAULT 0, `deleted` TINYINT(1) NOT NULL,
  PRIMARY KEY (`group_id`, `uid`), KEY `idx_group_member_uid` (`uid`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;
";

/// The MySQL tables and rows of the generated groups (GoBelieve's `group` and `group_member`),
/// as SQL statements.
pub fn groups_sql(appid: i64, groups: &[GenGroup], out: &mut impl Write) -> std::io::Result<()> {
    out.write_all(GROUP_TABLES_SQL.as_bytes())?;
    for grp in groups {
        writeln!(
            out,
            "INSERT INTO `group` (id, appid, master, super, name, notice, deleted) VALUES ({}, {appid}, {}, {}, 'group {}', '', 0);",
            grp.gid, grp.master, grp.is_super as u8, grp.gid
        )?;
        for (uid, ts) in &grp.members {
            writeln!(
                out,
                "INSERT INTO group_member (group_id, uid, timestamp, nickname, mute, deleted) VALUES ({}, {uid}, {ts}, '', 0, 0);",
                grp.gid
            )?;
        }
    }
    Ok(())
}
