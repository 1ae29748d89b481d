//! The embedded group directory: its own SQLite file (WAL mode), tables `groups` (id, app, name,
//! master, super flag) and `group_members` (group, uid, join time, mute bit).
//!
//! Admin operations run one at a time: each commits one SQLite transaction, then derives the new
//! snapshot from the cached one (when the group is cached) and announces the change. Group ids
//! are allocated by `AUTOINCREMENT`, so an allocated id is never handed out twice.

use std::sync::Arc;

use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::broadcast;

use super::cache::GroupCache;
use super::{
    changes_channel, ids_exhausted, not_found, now_secs, too_many, with_added, with_removed, Group,
    GroupChange, GroupSummary, Member, NewGroup,
};
use crate::{BackendError, EmbeddedGroupOptions};

/// Member rows per multi-row statement (3 parameters each).
const ROWS_PER_STATEMENT: usize = 300;
/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS groups (
        gid INTEGER PRIMARY KEY AUTOINCREMENT,
        appid INTEGER NOT NULL,
        name TEXT NOT NULL,
        master INTEGER NOT NULL,
        super INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS group_members (
        gid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        joined_at INTEGER NOT NULL,
        mute INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (gid, uid)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS group_members_uid ON group_members (uid)",
    "CREATE INDEX IF NOT EXISTS groups_appid ON groups (appid, gid)",
];

/// The SQLite-backed variant.
pub struct EmbeddedGroups {
    pool: SqlitePool,
    cache: GroupCache,
    changes: broadcast::Sender<GroupChange>,
    max_members: usize,
    /// Admin operations one at a time, so cached snapshots follow the commit order.
    admin: tokio::sync::Mutex<()>,
}

impl EmbeddedGroups {
    /// Open (or create) the SQLite file.
    pub async fn open(opts: EmbeddedGroupOptions) -> Result<EmbeddedGroups, BackendError> {
        let pool = crate::embedded::open_sqlite(&opts.path).await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&pool)
            .await?;
        if version > SCHEMA_VERSION {
            return Err(BackendError::Corrupt(format!(
                "{} has schema version {version}, newer than this server's {SCHEMA_VERSION}",
                opts.path.display()
            )));
        }
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await?;
        }
        sqlx::query("PRAGMA user_version = 1")
            .execute(&pool)
            .await?;
        Ok(EmbeddedGroups {
            pool,
            cache: GroupCache::new(opts.cache_groups),
            changes: changes_channel(),
            max_members: opts.max_members,
            admin: tokio::sync::Mutex::new(()),
        })
    }

    /// A write transaction that takes the write lock up front (waiting up to the busy timeout), so
    /// it never fails upgrading a read snapshot to a write.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Sqlite>, BackendError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub(crate) fn max_members(&self) -> usize {
        self.max_members
    }

    pub(crate) fn changes(&self) -> broadcast::Receiver<GroupChange> {
        self.changes.subscribe()
    }

    fn announce(&self, appid: i64, gid: i64) {
        // No receiver is not an error.
        let _ = self.changes.send(GroupChange { appid, gid });
    }

    pub(crate) fn cached(&self, gid: i64) -> Option<Option<Arc<Group>>> {
        self.cache.lookup(gid)
    }

    /// The app's groups (or those `member` belongs to) with ids above `after`, in id order.
    pub(crate) async fn list(
        &self,
        appid: i64,
        member: Option<i64>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<GroupSummary>, BackendError> {
        const COLUMNS: &str = "SELECT g.gid, g.name, g.master, g.super, \
            (SELECT count(*) FROM group_members c WHERE c.gid = g.gid) AS members FROM groups g ";
        let rows = match member {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{COLUMNS} WHERE g.appid = ?1 AND g.gid > ?2 ORDER BY g.gid LIMIT ?3"
                )))
                .bind(appid)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            Some(uid) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{COLUMNS} JOIN group_members m ON m.gid = g.gid \
                     WHERE m.uid = ?1 AND g.appid = ?2 AND g.gid > ?3 ORDER BY g.gid LIMIT ?4"
                )))
                .bind(uid)
                .bind(appid)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(GroupSummary {
                    group_id: r.try_get("gid")?,
                    name: r.try_get("name")?,
                    master: r.try_get("master")?,
                    super_group: r.try_get::<i64, _>("super")? != 0,
                    members: r.try_get("members")?,
                })
            })
            .collect()
    }

    pub(crate) async fn get(&self, gid: i64) -> Result<Option<Arc<Group>>, BackendError> {
        self.cache.get_or_load(gid, || self.load(gid)).await
    }

    async fn load(&self, gid: i64) -> Result<Option<Group>, BackendError> {
        // One read transaction: the group row and its members from the same snapshot.
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT appid, name, master, super FROM groups WHERE gid = ?1")
            .bind(gid)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let rows = sqlx::query("SELECT uid, joined_at, mute FROM group_members WHERE gid = ?1")
            .bind(gid)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut members = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            members.insert(
                r.try_get::<i64, _>("uid")?,
                Member {
                    joined_at: r.try_get("joined_at")?,
                    mute: r.try_get::<i64, _>("mute")? != 0,
                },
            );
        }
        Ok(Some(Group {
            appid: row.try_get("appid")?,
            gid,
            name: row.try_get("name")?,
            master: row.try_get("master")?,
            super_group: row.try_get::<i64, _>("super")? != 0,
            members,
        }))
    }

    /// The group's appid, or None.
    async fn owner(conn: &mut SqliteConnection, gid: i64) -> Result<Option<i64>, BackendError> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT appid FROM groups WHERE gid = ?1")
                .bind(gid)
                .fetch_optional(conn)
                .await?,
        )
    }

    async fn require(
        conn: &mut SqliteConnection,
        appid: i64,
        gid: i64,
    ) -> Result<(), BackendError> {
        match Self::owner(conn, gid).await? {
            Some(owner) if owner == appid => Ok(()),
            _ => Err(not_found(appid, gid)),
        }
    }

    async fn insert_members(
        conn: &mut SqliteConnection,
        gid: i64,
        uids: &[i64],
        now: i64,
    ) -> Result<(), BackendError> {
        for chunk in uids.chunks(ROWS_PER_STATEMENT) {
            let mut q =
                QueryBuilder::<Sqlite>::new("INSERT INTO group_members (gid, uid, joined_at) ");
            q.push_values(chunk, |mut row, &uid| {
                row.push_bind(gid).push_bind(uid).push_bind(now);
            });
            q.push(" ON CONFLICT (gid, uid) DO NOTHING");
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    pub(crate) async fn create(&self, spec: NewGroup<'_>) -> Result<i64, BackendError> {
        let _admin = self.admin.lock().await;
        let now = now_secs();
        let mut tx = self.write_tx().await?;
        match spec.gid {
            Some(gid) => {
                if Self::owner(&mut tx, gid).await?.is_some() {
                    return Err(BackendError::InvalidArgument(format!(
                        "group {gid} already exists"
                    )));
                }
            }
            None => {
                // `AUTOINCREMENT` allocates above the largest id ever used; at i64::MAX it can
                // allocate nothing (SQLite says "database or disk is full").
                let largest: Option<i64> =
                    sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'groups'")
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(largest) = largest.filter(|&l| l == i64::MAX) {
                    return Err(ids_exhausted(largest));
                }
            }
        }
        let gid: i64 = sqlx::query_scalar(
            "INSERT INTO groups (gid, appid, name, master, super, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING gid",
        )
        .bind(spec.gid)
        .bind(spec.appid)
        .bind(spec.name)
        .bind(spec.master)
        .bind(i64::from(spec.super_group))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        // A reused id (of a disbanded group) starts without members.
        sqlx::query("DELETE FROM group_members WHERE gid = ?1")
            .bind(gid)
            .execute(&mut *tx)
            .await?;
        Self::insert_members(&mut tx, gid, &spec.members, now).await?;
        tx.commit().await?;
        self.cache.set(gid, Some(Arc::new(spec.snapshot(gid, now))));
        self.announce(spec.appid, gid);
        Ok(gid)
    }

    /// Writes a group exactly as given (an import from GoBelieve's MySQL): replaces the group
    /// row and its members, keeping their join times and mute bits. Idempotent.
    pub(crate) async fn import_group(
        &self,
        appid: i64,
        gid: i64,
        name: &str,
        master: i64,
        super_group: bool,
        members: &[(i64, i64, bool)],
    ) -> Result<(), BackendError> {
        let _admin = self.admin.lock().await;
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO groups (gid, appid, name, master, super, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, strftime('%s','now'))
             ON CONFLICT (gid) DO UPDATE SET appid = excluded.appid, name = excluded.name,
                master = excluded.master, super = excluded.super",
        )
        .bind(gid)
        .bind(appid)
        .bind(name)
        .bind(master)
        .bind(i64::from(super_group))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM group_members WHERE gid = ?1")
            .bind(gid)
            .execute(&mut *tx)
            .await?;
        for chunk in members.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO group_members (gid, uid, joined_at, mute) ",
            );
            q.push_values(chunk, |mut row, &(uid, joined_at, mute)| {
                row.push_bind(gid)
                    .push_bind(uid)
                    .push_bind(joined_at)
                    .push_bind(i64::from(mute));
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.cache.invalidate(gid);
        Ok(())
    }

    pub(crate) async fn disband(&self, appid: i64, gid: i64) -> Result<bool, BackendError> {
        let _admin = self.admin.lock().await;
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM groups WHERE gid = ?1 AND appid = ?2")
            .bind(gid)
            .bind(appid)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM group_members WHERE gid = ?1")
            .bind(gid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.cache.set(gid, None);
        self.announce(appid, gid);
        Ok(true)
    }

    pub(crate) async fn add_members(
        &self,
        appid: i64,
        gid: i64,
        uids: Vec<i64>,
    ) -> Result<(), BackendError> {
        let _admin = self.admin.lock().await;
        let now = now_secs();
        let mut tx = self.write_tx().await?;
        Self::require(&mut tx, appid, gid).await?;
        Self::insert_members(&mut tx, gid, &uids, now).await?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM group_members WHERE gid = ?1")
            .bind(gid)
            .fetch_one(&mut *tx)
            .await?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > self.max_members {
            tx.rollback().await?;
            return Err(too_many(count, self.max_members));
        }
        tx.commit().await?;
        self.cache.update(gid, |old| with_added(old, &uids, now));
        self.announce(appid, gid);
        Ok(())
    }

    pub(crate) async fn remove_members(
        &self,
        appid: i64,
        gid: i64,
        uids: Vec<i64>,
    ) -> Result<(), BackendError> {
        let _admin = self.admin.lock().await;
        let mut tx = self.write_tx().await?;
        Self::require(&mut tx, appid, gid).await?;
        for chunk in uids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM group_members WHERE gid = ");
            q.push_bind(gid).push(" AND uid IN (");
            let mut list = q.separated(", ");
            for &uid in chunk {
                list.push_bind(uid);
            }
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.cache.update(gid, |old| with_removed(old, &uids));
        self.announce(appid, gid);
        Ok(())
    }

    pub(crate) async fn set_mute(
        &self,
        appid: i64,
        gid: i64,
        uid: i64,
        mute: bool,
    ) -> Result<(), BackendError> {
        let _admin = self.admin.lock().await;
        let mut tx = self.write_tx().await?;
        Self::require(&mut tx, appid, gid).await?;
        let done = sqlx::query("UPDATE group_members SET mute = ?1 WHERE gid = ?2 AND uid = ?3")
            .bind(i64::from(mute))
            .bind(gid)
            .bind(uid)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(BackendError::NotFound(format!(
                "user {uid} is not a member of group {gid}"
            )));
        }
        tx.commit().await?;
        self.cache.update(gid, |old| {
            let mut g = old.clone();
            if let Some(m) = g.members.get_mut(&uid) {
                m.mute = mute;
            }
            g
        });
        self.announce(appid, gid);
        Ok(())
    }

    /// Finish a one-row update of the `groups` row: `NotFound` when nothing matched, else apply
    /// the change to the cached snapshot and announce it.
    fn updated_group(
        &self,
        appid: i64,
        gid: i64,
        rows: u64,
        apply: impl FnOnce(&mut Group),
    ) -> Result<(), BackendError> {
        if rows == 0 {
            return Err(not_found(appid, gid));
        }
        self.cache.update(gid, |old| {
            let mut g = old.clone();
            apply(&mut g);
            g
        });
        self.announce(appid, gid);
        Ok(())
    }

    pub(crate) async fn rename(
        &self,
        appid: i64,
        gid: i64,
        name: &str,
    ) -> Result<(), BackendError> {
        let _admin = self.admin.lock().await;
        let done = sqlx::query("UPDATE groups SET name = ?1 WHERE gid = ?2 AND appid = ?3")
            .bind(name)
            .bind(gid)
            .bind(appid)
            .execute(&self.pool)
            .await?;
        self.updated_group(appid, gid, done.rows_affected(), |g| {
            g.name = name.to_owned()
        })
    }

    pub(crate) async fn upgrade(&self, appid: i64, gid: i64) -> Result<(), BackendError> {
        let _admin = self.admin.lock().await;
        let done = sqlx::query("UPDATE groups SET super = 1 WHERE gid = ?1 AND appid = ?2")
            .bind(gid)
            .bind(appid)
            .execute(&self.pool)
            .await?;
        self.updated_group(appid, gid, done.rows_affected(), |g| g.super_group = true)
    }
}
