//! The GoBelieve-compatible group directory: the `group` and `group_member` tables
//! (created when missing, used as they are otherwise; soft deletes through the `deleted` columns),
//! kept current through `group_manager_stream` (docs/compatibility.md, *GoBelieve's shared state*).
//!
//! * Admin operations write MySQL in one transaction, then append their event(s) to the stream
//!   (see [`super::stream`]) and wait, briefly, until this directory's own follower has applied
//!   them, so the caller reads its own writes. Changes of a few members are announced member by
//!   member; larger ones (and creations, which GoBelieve's `im` would otherwise cache as empty
//!   groups) as `group_changed`, which makes every node reload the group.
//! * One follower task reads the stream with `XREAD BLOCK` on a dedicated connection and applies
//!   each read round in order: member events re-read those members' rows (join time and mute bit
//!   as stored, fix #23), `group_upgrade` sets the flag, other events drop the group from the cache
//!   (the next use reloads it). An action id that does not follow the previous one (a writer that
//!   skipped one, a trimmed stream) or a lost Redis connection clears the whole cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{MySql, MySqlConnection, QueryBuilder, Row};
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

use super::cache::GroupCache;
use super::stream::{self, EventKind, GroupEvent, STREAM_KEY};
use super::{
    changes_channel, ids_exhausted, not_found, now_secs, too_many, Group, GroupChange,
    GroupSummary, Member, NewGroup,
};
use crate::action_stream::{self, Follower, Round, StreamPos, StreamWriter};
use crate::{BackendError, MysqlGroupOptions};

/// Member rows per multi-row statement.
const ROWS_PER_STATEMENT: usize = 1000;
/// Changes of at most this many members are announced member by member.
const MEMBER_EVENTS_MAX: usize = 100;
/// Member events for one group in one read round beyond which the group is reloaded whole.
const REFRESH_MAX: usize = 1000;
/// How long an admin call waits for the follower to apply its own event.
const APPLY_WAIT: Duration = Duration::from_secs(3);

/// The GoBelieve schema of groups (`friend` and `blacklist` are the relations module's).
/// `utf8mb4` so names may hold any character; existing tables are left as they are.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS `group` (
        `id` BIGINT NOT NULL AUTO_INCREMENT,
        `appid` BIGINT DEFAULT NULL,
        `master` BIGINT DEFAULT NULL,
        `super` TINYINT NOT NULL DEFAULT 0,
        `name` VARCHAR(255) DEFAULT NULL,
        `notice` VARCHAR(255) DEFAULT NULL,
        `deleted` TINYINT(1) NOT NULL,
        PRIMARY KEY (`id`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS `group_member` (
        `group_id` BIGINT NOT NULL DEFAULT 0,
        `uid` BIGINT NOT NULL DEFAULT 0,
        `timestamp` INT DEFAULT NULL,
        `nickname` VARCHAR(255) DEFAULT NULL,
        `mute` TINYINT(1) DEFAULT 0,
        `deleted` TINYINT(1) NOT NULL,
        PRIMARY KEY (`group_id`, `uid`),
        KEY `idx_group_member_uid` (`uid`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
];

/// `sqlx` errors of this module are MySQL errors (the `From` impl labels them SQLite).
trait OrMysql<T> {
    fn my(self) -> Result<T, BackendError>;
}

impl<T> OrMysql<T> for Result<T, sqlx::Error> {
    fn my(self) -> Result<T, BackendError> {
        self.map_err(BackendError::Mysql)
    }
}

/// What the follower and the loaders share.
struct Core {
    pool: MySqlPool,
    cache: GroupCache,
    changes: broadcast::Sender<GroupChange>,
    /// The stream position the follower has applied up to.
    applied: watch::Sender<StreamPos>,
}

/// The MySQL-backed variant.
pub struct MysqlGroups {
    core: Arc<Core>,
    writer: StreamWriter,
    max_members: usize,
    follower: AbortHandle,
}

impl Drop for MysqlGroups {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl MysqlGroups {
    /// Connect to both, create missing tables, and start the follower at the stream's end.
    pub async fn open(opts: MysqlGroupOptions) -> Result<MysqlGroups, BackendError> {
        let pool = MySqlPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect(&opts.url)
            .await
            .my()?;
        for stmt in SCHEMA {
            sqlx::raw_sql(*stmt).execute(&pool).await.my()?;
        }
        let client = redis::Client::open(opts.redis_url.as_str())?;
        let mut conn = action_stream::writer_connection(&client).await?;
        let (action_id, pos) = action_stream::start_position(&mut conn, stream::KEYS).await?;
        let reader = action_stream::follower_connection(&client).await?;

        let core = Arc::new(Core {
            pool,
            cache: GroupCache::new(opts.cache_groups),
            changes: changes_channel(),
            applied: watch::channel(pos).0,
        });
        let follower = tokio::spawn(action_stream::follow(
            core.clone(),
            stream::KEYS,
            client,
            reader,
            pos,
            action_id,
        ));
        Ok(MysqlGroups {
            core,
            writer: StreamWriter::new(conn, stream::KEYS, stream::FIELDS, opts.stream_max_len),
            max_members: opts.max_members,
            follower: follower.abort_handle(),
        })
    }

    pub(crate) fn max_members(&self) -> usize {
        self.max_members
    }

    pub(crate) fn changes(&self) -> broadcast::Receiver<GroupChange> {
        self.core.changes.subscribe()
    }

    pub(crate) fn cached(&self, gid: i64) -> Option<Option<Arc<Group>>> {
        self.core.cache.lookup(gid)
    }

    /// The app's live groups (or those `member` is a live member of) with ids above `after`, in id
    /// order.
    pub(crate) async fn list(
        &self,
        appid: i64,
        member: Option<i64>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<GroupSummary>, BackendError> {
        const COLUMNS: &str = "SELECT CAST(g.id AS SIGNED) AS gid, COALESCE(g.name, '') AS name, \
            CAST(COALESCE(g.master, 0) AS SIGNED) AS master, CAST(g.super AS SIGNED) AS super, \
            (SELECT CAST(count(*) AS SIGNED) FROM group_member c WHERE c.group_id = g.id AND c.deleted = 0) AS members \
            FROM `group` g ";
        let pool = &self.core.pool;
        let rows = match member {
            None => sqlx::query(sqlx::AssertSqlSafe(format!(
                "{COLUMNS} WHERE g.appid = ? AND g.deleted = 0 AND g.id > ? ORDER BY g.id LIMIT ?"
            )))
            .bind(appid)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await
            .my()?,
            Some(uid) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "{COLUMNS} JOIN group_member m ON m.group_id = g.id AND m.deleted = 0 \
                 WHERE m.uid = ? AND g.appid = ? AND g.deleted = 0 AND g.id > ? ORDER BY g.id LIMIT ?"
            )))
            .bind(uid)
            .bind(appid)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await
            .my()?,
        };
        rows.iter()
            .map(|r| {
                Ok(GroupSummary {
                    group_id: r.try_get("gid").my()?,
                    name: r.try_get("name").my()?,
                    master: r.try_get("master").my()?,
                    super_group: r.try_get::<i64, _>("super").my()? != 0,
                    members: r.try_get("members").my()?,
                })
            })
            .collect()
    }

    pub(crate) async fn get(&self, gid: i64) -> Result<Option<Arc<Group>>, BackendError> {
        let core = &self.core;
        core.cache.get_or_load(gid, || core.load(gid)).await
    }

    /// Append the events of a committed change and wait until the follower applied them; when it
    /// does not in time (or the append fails), drop the group from the cache here directly.
    async fn announce(
        &self,
        appid: i64,
        gid: i64,
        events: &[GroupEvent],
    ) -> Result<(), BackendError> {
        let values: Vec<Vec<String>> = events.iter().map(GroupEvent::values).collect();
        let pos = match self.writer.append(&values).await {
            Ok(pos) => pos,
            Err(e) => {
                tracing::warn!(gid, error = %e, "group change stored in MySQL but not announced on {STREAM_KEY}");
                self.core.local_change(appid, gid);
                return Err(e);
            }
        };
        let mut applied = self.core.applied.subscribe();
        let done = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|p| *p >= pos)).await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::warn!(gid, %pos, "the group stream follower is behind; reloading the group locally");
            self.core.local_change(appid, gid);
        }
        Ok(())
    }

    /// Lock the live group row of `appid`; `NotFound` otherwise.
    async fn require(conn: &mut MySqlConnection, appid: i64, gid: i64) -> Result<(), BackendError> {
        let owner: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(COALESCE(appid, 0) AS SIGNED) FROM `group` WHERE id = ? AND deleted = 0 FOR UPDATE",
        )
        .bind(gid)
        .fetch_optional(conn)
        .await
        .my()?;
        match owner {
            Some(owner) if owner == appid => Ok(()),
            _ => Err(not_found(appid, gid)),
        }
    }

    /// Insert members joined at `now`; live members keep their row, deleted rows are revived as
    /// new members.
    async fn upsert_members(
        conn: &mut MySqlConnection,
        gid: i64,
        uids: &[i64],
        now: i64,
    ) -> Result<(), BackendError> {
        for chunk in uids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT INTO group_member (group_id, uid, `timestamp`, mute, deleted) ",
            );
            q.push_values(chunk, |mut row, &uid| {
                row.push_bind(gid)
                    .push_bind(uid)
                    .push_bind(now)
                    .push_bind(0_i64)
                    .push_bind(0_i64);
            });
            // Assignments run left to right: `deleted` must be reset last.
            q.push(
                " ON DUPLICATE KEY UPDATE `timestamp` = IF(deleted <> 0, VALUES(`timestamp`), `timestamp`),
                  mute = IF(deleted <> 0, 0, mute), deleted = 0",
            );
            q.build().execute(&mut *conn).await.my()?;
        }
        Ok(())
    }

    fn member_events(kind: EventKind, appid: i64, gid: i64, uids: &[i64]) -> Vec<GroupEvent> {
        if uids.len() <= MEMBER_EVENTS_MAX {
            uids.iter()
                .map(|&uid| GroupEvent::member(kind, appid, gid, uid))
                .collect()
        } else {
            vec![GroupEvent::group(EventKind::Changed, appid, gid)]
        }
    }

    pub(crate) async fn create(&self, spec: NewGroup<'_>) -> Result<i64, BackendError> {
        let now = now_secs();
        let mut tx = self.core.pool.begin().await.my()?;
        let gid = match spec.gid {
            Some(gid) => {
                let deleted: Option<i64> = sqlx::query_scalar(
                    "SELECT CAST(deleted AS SIGNED) FROM `group` WHERE id = ? FOR UPDATE",
                )
                .bind(gid)
                .fetch_optional(&mut *tx)
                .await
                .my()?;
                match deleted {
                    Some(0) => {
                        return Err(BackendError::InvalidArgument(format!(
                            "group {gid} already exists"
                        )))
                    }
                    Some(_) => {
                        // Reuse a disbanded group's id: fresh row, no members.
                        sqlx::query(
                            "UPDATE `group` SET appid = ?, master = ?, super = ?, name = ?, notice = NULL, deleted = 0 WHERE id = ?",
                        )
                        .bind(spec.appid)
                        .bind(spec.master)
                        .bind(i64::from(spec.super_group))
                        .bind(spec.name)
                        .bind(gid)
                        .execute(&mut *tx)
                        .await
                        .my()?;
                        sqlx::query("UPDATE group_member SET deleted = 1 WHERE group_id = ?")
                            .bind(gid)
                            .execute(&mut *tx)
                            .await
                            .my()?;
                    }
                    None => {
                        sqlx::query(
                            "INSERT INTO `group` (id, appid, master, super, name, deleted) VALUES (?, ?, ?, ?, ?, 0)",
                        )
                        .bind(gid)
                        .bind(spec.appid)
                        .bind(spec.master)
                        .bind(i64::from(spec.super_group))
                        .bind(spec.name)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| duplicate_as_exists(e, gid))?;
                        // Member rows left behind by a hard-deleted group are not this group's.
                        sqlx::query("UPDATE group_member SET deleted = 1 WHERE group_id = ?")
                            .bind(gid)
                            .execute(&mut *tx)
                            .await
                            .my()?;
                    }
                }
                gid
            }
            None => {
                let done = match sqlx::query(
                    "INSERT INTO `group` (appid, master, super, name, deleted) VALUES (?, ?, ?, ?, 0)",
                )
                .bind(spec.appid)
                .bind(spec.master)
                .bind(i64::from(spec.super_group))
                .bind(spec.name)
                .execute(&mut *tx)
                .await
                {
                    Ok(done) => done,
                    Err(e) => {
                        drop(tx);
                        return Err(self.auto_id_failure(e).await);
                    }
                };
                i64::try_from(done.last_insert_id()).map_err(|_| {
                    BackendError::Corrupt(format!(
                        "group id {} out of range",
                        done.last_insert_id()
                    ))
                })?
            }
        };
        Self::upsert_members(&mut tx, gid, &spec.members, now).await?;
        tx.commit().await.my()?;
        let create = GroupEvent {
            super_group: spec.super_group,
            ..GroupEvent::group(EventKind::Create, spec.appid, gid)
        };
        let changed = GroupEvent::group(EventKind::Changed, spec.appid, gid);
        self.announce(spec.appid, gid, &[create, changed]).await?;
        Ok(gid)
    }

    /// Explains a failed automatic-id insert: `AUTO_INCREMENT` allocates above the largest id, so once
    /// a group holds id i64::MAX (soft-deleted rows included) no id can be allocated.
    async fn auto_id_failure(&self, e: sqlx::Error) -> BackendError {
        let largest: Result<Option<i64>, _> = sqlx::query_scalar("SELECT MAX(id) FROM `group`")
            .fetch_one(&self.core.pool)
            .await;
        match largest {
            Ok(Some(largest)) if largest == i64::MAX => ids_exhausted(largest),
            _ => BackendError::Mysql(e),
        }
    }

    pub(crate) async fn disband(&self, appid: i64, gid: i64) -> Result<bool, BackendError> {
        let done = sqlx::query(
            "UPDATE `group` SET deleted = 1 WHERE id = ? AND appid = ? AND deleted = 0",
        )
        .bind(gid)
        .bind(appid)
        .execute(&self.core.pool)
        .await
        .my()?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.announce(
            appid,
            gid,
            &[GroupEvent::group(EventKind::Disband, appid, gid)],
        )
        .await?;
        Ok(true)
    }

    pub(crate) async fn add_members(
        &self,
        appid: i64,
        gid: i64,
        uids: Vec<i64>,
    ) -> Result<(), BackendError> {
        let now = now_secs();
        let mut tx = self.core.pool.begin().await.my()?;
        Self::require(&mut tx, appid, gid).await?;
        Self::upsert_members(&mut tx, gid, &uids, now).await?;
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM group_member WHERE group_id = ? AND deleted = 0",
        )
        .bind(gid)
        .fetch_one(&mut *tx)
        .await
        .my()?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > self.max_members {
            tx.rollback().await.my()?;
            return Err(too_many(count, self.max_members));
        }
        tx.commit().await.my()?;
        if uids.is_empty() {
            return Ok(());
        }
        let events = Self::member_events(EventKind::MemberAdd, appid, gid, &uids);
        self.announce(appid, gid, &events).await
    }

    pub(crate) async fn remove_members(
        &self,
        appid: i64,
        gid: i64,
        uids: Vec<i64>,
    ) -> Result<(), BackendError> {
        let mut tx = self.core.pool.begin().await.my()?;
        Self::require(&mut tx, appid, gid).await?;
        let mut removed = 0;
        for chunk in uids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(
                "UPDATE group_member SET deleted = 1 WHERE deleted = 0 AND group_id = ",
            );
            q.push_bind(gid).push(" AND uid IN (");
            let mut list = q.separated(", ");
            for &uid in chunk {
                list.push_bind(uid);
            }
            q.push(")");
            removed += q.build().execute(&mut *tx).await.my()?.rows_affected();
        }
        tx.commit().await.my()?;
        if removed == 0 {
            return Ok(());
        }
        let events = Self::member_events(EventKind::MemberRemove, appid, gid, &uids);
        self.announce(appid, gid, &events).await
    }

    pub(crate) async fn set_mute(
        &self,
        appid: i64,
        gid: i64,
        uid: i64,
        mute: bool,
    ) -> Result<(), BackendError> {
        let mut tx = self.core.pool.begin().await.my()?;
        Self::require(&mut tx, appid, gid).await?;
        let member: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(uid AS SIGNED) FROM group_member WHERE group_id = ? AND uid = ? AND deleted = 0 FOR UPDATE",
        )
        .bind(gid)
        .bind(uid)
        .fetch_optional(&mut *tx)
        .await
        .my()?;
        if member.is_none() {
            return Err(BackendError::NotFound(format!(
                "user {uid} is not a member of group {gid}"
            )));
        }
        sqlx::query("UPDATE group_member SET mute = ? WHERE group_id = ? AND uid = ?")
            .bind(i64::from(mute))
            .bind(gid)
            .bind(uid)
            .execute(&mut *tx)
            .await
            .my()?;
        tx.commit().await.my()?;
        let event = GroupEvent {
            mute,
            ..GroupEvent::member(EventKind::MemberMute, appid, gid, uid)
        };
        self.announce(appid, gid, &[event]).await
    }

    pub(crate) async fn rename(
        &self,
        appid: i64,
        gid: i64,
        name: &str,
    ) -> Result<(), BackendError> {
        let mut tx = self.core.pool.begin().await.my()?;
        Self::require(&mut tx, appid, gid).await?;
        sqlx::query("UPDATE `group` SET name = ? WHERE id = ?")
            .bind(name)
            .bind(gid)
            .execute(&mut *tx)
            .await
            .my()?;
        tx.commit().await.my()?;
        self.announce(
            appid,
            gid,
            &[GroupEvent::group(EventKind::Changed, appid, gid)],
        )
        .await
    }

    pub(crate) async fn upgrade(&self, appid: i64, gid: i64) -> Result<(), BackendError> {
        let mut tx = self.core.pool.begin().await.my()?;
        Self::require(&mut tx, appid, gid).await?;
        sqlx::query("UPDATE `group` SET super = 1 WHERE id = ?")
            .bind(gid)
            .execute(&mut *tx)
            .await
            .my()?;
        tx.commit().await.my()?;
        let event = GroupEvent {
            super_group: true,
            ..GroupEvent::group(EventKind::Upgrade, appid, gid)
        };
        self.announce(appid, gid, &[event]).await
    }
}

/// A duplicate-key error on insert means another caller created the id first.
fn duplicate_as_exists(e: sqlx::Error, gid: i64) -> BackendError {
    let duplicate = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "23000");
    if duplicate {
        BackendError::InvalidArgument(format!("group {gid} already exists"))
    } else {
        BackendError::Mysql(e)
    }
}

fn member_from_row(row: &sqlx::mysql::MySqlRow) -> Result<(i64, Member), BackendError> {
    Ok((
        row.try_get("uid").my()?,
        Member {
            joined_at: row.try_get("ts").my()?,
            mute: row.try_get::<i64, _>("mute").my()? != 0,
        },
    ))
}

const MEMBER_COLUMNS: &str =
    "SELECT CAST(uid AS SIGNED) AS uid, CAST(COALESCE(`timestamp`, 0) AS SIGNED) AS ts, \
     CAST(COALESCE(mute, 0) AS SIGNED) AS mute FROM group_member WHERE deleted = 0 AND group_id = ";

impl Core {
    /// Load a live group and its live members from one consistent snapshot.
    async fn load(&self, gid: i64) -> Result<Option<Group>, BackendError> {
        let mut tx = self.pool.begin().await.my()?;
        let row = sqlx::query(
            "SELECT CAST(COALESCE(appid, 0) AS SIGNED) AS appid, CAST(COALESCE(master, 0) AS SIGNED) AS master,
                    CAST(super AS SIGNED) AS super, COALESCE(name, '') AS name
             FROM `group` WHERE id = ? AND deleted = 0",
        )
        .bind(gid)
        .fetch_optional(&mut *tx)
        .await
        .my()?;
        let Some(row) = row else { return Ok(None) };
        let mut q = QueryBuilder::<MySql>::new(MEMBER_COLUMNS);
        q.push_bind(gid);
        let rows = q.build().fetch_all(&mut *tx).await.my()?;
        tx.commit().await.my()?;
        let mut members = HashMap::with_capacity(rows.len());
        for r in &rows {
            let (uid, m) = member_from_row(r)?;
            members.insert(uid, m);
        }
        Ok(Some(Group {
            appid: row.try_get("appid").my()?,
            gid,
            name: row.try_get("name").my()?,
            master: row.try_get("master").my()?,
            super_group: row.try_get::<i64, _>("super").my()? != 0,
            members,
        }))
    }

    /// The stored rows of `uids` in `gid` (absent = not a member).
    async fn load_members(
        &self,
        gid: i64,
        uids: &BTreeSet<i64>,
    ) -> Result<HashMap<i64, Member>, BackendError> {
        let mut out = HashMap::with_capacity(uids.len());
        let uids: Vec<i64> = uids.iter().copied().collect();
        for chunk in uids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(MEMBER_COLUMNS);
            q.push_bind(gid).push(" AND uid IN (");
            let mut list = q.separated(", ");
            for &uid in chunk {
                list.push_bind(uid);
            }
            q.push(")");
            for r in q.build().fetch_all(&self.pool).await.my()? {
                let (uid, m) = member_from_row(&r)?;
                out.insert(uid, m);
            }
        }
        Ok(out)
    }

    fn announce(&self, appid: i64, gid: i64) {
        let _ = self.changes.send(GroupChange { appid, gid });
    }

    fn local_change(&self, appid: i64, gid: i64) {
        self.cache.invalidate(gid);
        self.announce(appid, gid);
    }

    /// Forget every cached group and announce each (plus `also`).
    fn reload_all(&self, also: impl IntoIterator<Item = (i64, i64)>) {
        let mut gone: BTreeMap<i64, i64> = self
            .cache
            .clear()
            .into_iter()
            .map(|(appid, gid)| (gid, appid))
            .collect();
        for (appid, gid) in also {
            gone.entry(gid).or_insert(appid);
        }
        for (gid, appid) in gone {
            self.announce(appid, gid);
        }
    }

    /// Apply one read round of stream entries, in order.
    async fn apply_round(&self, round: Round) {
        #[derive(Default)]
        struct Plan {
            appid: i64,
            reload: bool,
            upgrade: bool,
            members: BTreeSet<i64>,
        }
        let mut plans: BTreeMap<i64, Plan> = BTreeMap::new();
        for entry in &round.entries {
            let Some(event) = stream::parse_event(entry) else {
                tracing::debug!(entry = %entry.id, "ignoring unknown group event");
                continue;
            };
            if event.gid <= 0 {
                tracing::debug!(entry = %entry.id, "ignoring group event without a group id");
                continue;
            }
            let plan = plans.entry(event.gid).or_default();
            if plan.appid == 0 {
                plan.appid = event.appid;
            }
            match event.kind {
                EventKind::Create | EventKind::Disband | EventKind::Changed => plan.reload = true,
                EventKind::Upgrade => plan.upgrade = true,
                EventKind::MemberAdd | EventKind::MemberRemove | EventKind::MemberMute => {
                    if event.member > 0 {
                        plan.members.insert(event.member);
                    } else {
                        plan.reload = true;
                    }
                }
            }
        }
        if round.out_of_sequence {
            self.reload_all(plans.iter().map(|(&gid, p)| (p.appid, gid)));
            return;
        }
        for (gid, plan) in plans {
            let mut appid = plan.appid;
            if plan.reload || plan.members.len() > REFRESH_MAX {
                if let Some(g) = self.cache.cached(gid) {
                    appid = g.appid;
                }
                self.cache.invalidate(gid);
            } else {
                // Loads that read MySQL before this change must not insert their result.
                self.cache.bump(gid);
                if let Some(old) = self.cache.cached(gid) {
                    appid = old.appid;
                    match self.load_members(gid, &plan.members).await {
                        Ok(rows) => {
                            let mut new = Group::clone(&old);
                            new.super_group |= plan.upgrade;
                            for uid in &plan.members {
                                match rows.get(uid) {
                                    Some(m) => new.members.insert(*uid, *m),
                                    None => new.members.remove(uid),
                                };
                            }
                            self.cache.replace_if_same(gid, &old, new);
                        }
                        Err(e) => {
                            tracing::warn!(gid, error = %e, "cannot re-read group members; dropping the group from the cache");
                            self.cache.invalidate(gid);
                        }
                    }
                }
            }
            self.announce(appid, gid);
        }
    }
}

impl Follower for Core {
    async fn apply(&self, round: Round) {
        self.apply_round(round).await;
    }

    fn reconnected(&self) {
        // Events may have been missed while disconnected (e.g. a trimmed stream): start over
        // from MySQL.
        self.reload_all([]);
    }

    fn applied(&self, pos: StreamPos) {
        self.applied.send_replace(pos);
    }
}
