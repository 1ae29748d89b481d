//! Friendship and blacklist relations (docs/server-api.md, *Relationships*), the data behind the
//! friendship and blacklist checks of peer messages (docs/protocol.md §9.2).
//!
//! A relation is a row "`uid` lists `friend_uid` as a friend" or "`uid` has blacklisted
//! `friend_uid`", scoped by app. [`RelationDirectory`] keeps them in one of two stores:
//!
//! * [`RelationDirectory::open_embedded`]: tables `friend` and `blacklist` in its own SQLite file;
//!   changes are made through [`RelationDirectory::set`] (the admin API) on this node.
//! * [`RelationDirectory::open_mysql`]: GoBelieve's `friend` and `blacklist` tables, followed live
//!   through the Redis stream `relationship_stream` and its counter `friends_actions`
//!   (docs/compatibility.md, *GoBelieve's shared state*), so GoBelieve's API server and other
//!   nodes can change them; [`RelationDirectory::set`] writes MySQL and appends the event.
//!
//! Reads go through a bounded cache of user pairs: the key is `(appid, smaller uid, larger uid)`,
//! the value four bits (each direction's friend row and blacklist row). A pair not cached is read
//! from the store once ([`RelationDirectory::load`]) and then answered from memory
//! ([`RelationDirectory::cached`]), absent rows included; changes update cached pairs in place.
//! An action id out of sequence or a lost stream connection empties the cache.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamId;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::SqlitePool;
use sqlx::Row;
use tokio::task::AbortHandle;

use crate::action_stream::{
    self, field, field_bool, field_int, Follower, Keys, Round, StreamWriter,
};
use crate::cache::BoundedCache;
use crate::BackendError;

/// The stream and its action-id counter.
const KEYS: Keys = Keys {
    stream: "relationship_stream",
    actions: "friends_actions",
};
/// The fields of an event besides the action ids.
const FIELDS: &[&str] = &["name", "app_id", "uid", "friend_uid", "friend", "blacklist"];

/// The most uids one listing returns (as for groups).
pub use crate::groups::MAX_LIST_LIMIT;

/// Default bound on cached user pairs.
pub const DEFAULT_CACHE_PAIRS: usize = 1_000_000;

/// Which relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// "`uid` lists `friend_uid` as a friend" (table `friend`).
    Friend,
    /// "`uid` has blacklisted `friend_uid`" (table `blacklist`).
    Blacklist,
}

impl RelationKind {
    /// The table, and the event name on `relationship_stream`.
    pub fn name(self) -> &'static str {
        match self {
            RelationKind::Friend => "friend",
            RelationKind::Blacklist => "blacklist",
        }
    }

    /// The pair bit of "`uid` → `other`".
    fn bit(self, uid: i64, other: i64) -> u8 {
        let forward = uid <= other;
        match (self, forward) {
            (RelationKind::Friend, true) => FRIEND_LO_HI,
            (RelationKind::Friend, false) => FRIEND_HI_LO,
            (RelationKind::Blacklist, true) => BLOCK_LO_HI,
            (RelationKind::Blacklist, false) => BLOCK_HI_LO,
        }
    }
}

const FRIEND_LO_HI: u8 = 1;
const FRIEND_HI_LO: u8 = 2;
const BLOCK_LO_HI: u8 = 4;
const BLOCK_HI_LO: u8 = 8;

type PairKey = (i64, i64, i64);

fn pair_key(appid: i64, a: i64, b: i64) -> PairKey {
    (appid, a.min(b), a.max(b))
}

/// The relations between two users `a` and `b`, from `a`'s side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relation {
    /// `a` lists `b` as a friend.
    pub a_lists_b: bool,
    /// `b` lists `a` as a friend.
    pub b_lists_a: bool,
    /// `a` has blacklisted `b`.
    pub a_blocks_b: bool,
    /// `b` has blacklisted `a`.
    pub b_blocks_a: bool,
}

impl Relation {
    fn of(bits: u8, a: i64, b: i64) -> Relation {
        let has = |kind: RelationKind, from: i64, to: i64| bits & kind.bit(from, to) != 0;
        Relation {
            a_lists_b: has(RelationKind::Friend, a, b),
            b_lists_a: has(RelationKind::Friend, b, a),
            a_blocks_b: has(RelationKind::Blacklist, a, b),
            b_blocks_a: has(RelationKind::Blacklist, b, a),
        }
    }
}

/// The GoBelieve-compatible store: `friend` and `blacklist` in a MySQL or MariaDB database,
/// changes announced on `relationship_stream` in the Redis holding `friends_actions`.
#[derive(Debug, Clone)]
pub struct MysqlRelationOptions {
    /// `mysql://user:password@host:port/database`. Missing tables are created.
    pub url: String,
    /// `redis://[:password@]host:port/db`.
    pub redis_url: String,
    /// Most MySQL connections in the pool.
    pub max_connections: u32,
    /// Approximate length the stream is trimmed to when this server appends to it; 0 = never.
    pub stream_max_len: u64,
    /// Most user pairs kept in memory.
    pub cache_pairs: usize,
    /// Follow the stream (a node that checks relations). Without it the cache is not kept
    /// current, so only nodes that do not check should leave it off.
    pub follow: bool,
}

/// Both stores' tables: GoBelieve's schema (`utf8mb4` like the group tables in MySQL).
const MYSQL_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS `friend` (
        `appid` BIGINT NOT NULL,
        `uid` BIGINT NOT NULL,
        `friend_uid` BIGINT NOT NULL,
        `timestamp` INT NOT NULL,
        PRIMARY KEY (`appid`, `uid`, `friend_uid`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS `blacklist` (
        `appid` BIGINT NOT NULL,
        `uid` BIGINT NOT NULL,
        `friend_uid` BIGINT NOT NULL,
        `timestamp` INT NOT NULL,
        PRIMARY KEY (`appid`, `uid`, `friend_uid`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
];

const SQLITE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS friend (
        appid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        friend_uid INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        PRIMARY KEY (appid, uid, friend_uid)
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS blacklist (
        appid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        friend_uid INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        PRIMARY KEY (appid, uid, friend_uid)
    ) WITHOUT ROWID",
];

/// The rows of one pair, both tables, both directions: `(kind, uid)` where kind 0 = friend,
/// 1 = blacklist, and `uid` is the one listing the other. Parameters: appid, a, b, b, a twice.
/// (`CAST … AS SIGNED` gives MySQL's 64-bit integers; SQLite reads it as an integer too.)
const PAIR_QUERY: &str =
    "SELECT CAST(0 AS SIGNED) AS kind, CAST(uid AS SIGNED) AS uid FROM friend \
     WHERE appid = ? AND ((uid = ? AND friend_uid = ?) OR (uid = ? AND friend_uid = ?)) \
     UNION ALL SELECT CAST(1 AS SIGNED) AS kind, CAST(uid AS SIGNED) AS uid FROM blacklist \
     WHERE appid = ? AND ((uid = ? AND friend_uid = ?) OR (uid = ? AND friend_uid = ?))";

enum Store {
    Embedded(SqlitePool),
    Mysql {
        pool: MySqlPool,
        writer: StreamWriter,
    },
}

/// What the follower shares with the directory.
struct Pairs {
    cache: BoundedCache<PairKey, u8>,
}

impl Pairs {
    fn set(&self, kind: RelationKind, appid: i64, uid: i64, other: i64, on: bool) {
        let bit = kind.bit(uid, other);
        self.cache.update(&pair_key(appid, uid, other), |bits| {
            if on {
                *bits |= bit;
            } else {
                *bits &= !bit;
            }
        });
    }
}

impl Follower for Pairs {
    async fn apply(&self, round: Round) {
        for entry in &round.entries {
            match parse_event(entry) {
                Some((kind, appid, uid, other, on)) => self.set(kind, appid, uid, other, on),
                None => tracing::debug!(entry = %entry.id, "ignoring relationship event"),
            }
        }
        if round.out_of_sequence {
            self.cache.clear();
        }
    }

    fn reconnected(&self) {
        self.cache.clear();
    }

    fn applied(&self, _pos: action_stream::StreamPos) {}
}

/// `(kind, appid, uid, friend_uid, value)` of a stream entry; `None` for an unknown name or ids
/// that are missing or not > 0.
fn parse_event(id: &StreamId) -> Option<(RelationKind, i64, i64, i64, bool)> {
    let kind = match field(id, "name")?.as_str() {
        "friend" => RelationKind::Friend,
        "blacklist" => RelationKind::Blacklist,
        _ => return None,
    };
    let appid = field_int(id, "app_id").filter(|&v| v > 0)?;
    let uid = field_int(id, "uid").filter(|&v| v > 0)?;
    let other = field_int(id, "friend_uid").filter(|&v| v > 0)?;
    Some((kind, appid, uid, other, field_bool(id, kind.name())))
}

struct Inner {
    store: Store,
    pairs: Arc<Pairs>,
    follower: Option<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(f) = &self.follower {
            f.abort();
        }
    }
}

/// Friend and blacklist relations with their pair cache. Cheap to clone.
#[derive(Clone)]
pub struct RelationDirectory(Arc<Inner>);

fn check_ids(appid: i64, uid: i64, other: i64) -> Result<(), BackendError> {
    for (name, v) in [("appid", appid), ("uid", uid), ("friend_uid", other)] {
        if v <= 0 {
            return Err(BackendError::InvalidArgument(format!(
                "{name} must be > 0 (got {v})"
            )));
        }
    }
    Ok(())
}

fn now_secs() -> i64 {
    crate::groups::now_secs()
}

impl RelationDirectory {
    /// Open (creating when missing) the SQLite file `path`; its parent directory is created.
    pub async fn open_embedded(
        path: &std::path::Path,
        cache_pairs: usize,
    ) -> Result<RelationDirectory, BackendError> {
        let pool = crate::embedded::open_sqlite(path).await?;
        for stmt in SQLITE_SCHEMA {
            sqlx::query(*stmt).execute(&pool).await?;
        }
        Ok(RelationDirectory(Arc::new(Inner {
            store: Store::Embedded(pool),
            pairs: Arc::new(Pairs {
                cache: BoundedCache::new(cache_pairs),
            }),
            follower: None,
        })))
    }

    /// Connect to MySQL (creating the tables when missing) and to Redis, and, with
    /// `opts.follow`, start following `relationship_stream` from its current end. Fails when
    /// either does not answer within a few seconds.
    pub async fn open_mysql(opts: MysqlRelationOptions) -> Result<RelationDirectory, BackendError> {
        let pool = MySqlPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect(&opts.url)
            .await
            .map_err(BackendError::Mysql)?;
        for stmt in MYSQL_SCHEMA {
            sqlx::raw_sql(*stmt)
                .execute(&pool)
                .await
                .map_err(BackendError::Mysql)?;
        }
        let client = redis::Client::open(opts.redis_url.as_str())?;
        let mut conn = action_stream::writer_connection(&client).await?;
        let pairs = Arc::new(Pairs {
            cache: BoundedCache::new(opts.cache_pairs),
        });
        let follower = if opts.follow {
            let (action_id, pos) = action_stream::start_position(&mut conn, KEYS).await?;
            let reader = action_stream::follower_connection(&client).await?;
            let task = tokio::spawn(action_stream::follow(
                pairs.clone(),
                KEYS,
                client,
                reader,
                pos,
                action_id,
            ));
            Some(task.abort_handle())
        } else {
            None
        };
        Ok(RelationDirectory(Arc::new(Inner {
            store: Store::Mysql {
                pool,
                writer: StreamWriter::new(conn, KEYS, FIELDS, opts.stream_max_len),
            },
            pairs,
            follower,
        })))
    }

    /// The relations between `a` and `b` in app `appid` if the pair is cached (no I/O): the hot
    /// path. `None` = call [`RelationDirectory::load`].
    pub fn cached(&self, appid: i64, a: i64, b: i64) -> Option<Relation> {
        let bits = self.0.pairs.cache.get(&pair_key(appid, a, b))?;
        Some(Relation::of(bits, a, b))
    }

    /// The relations between `a` and `b`, read from the store and cached.
    pub async fn load(&self, appid: i64, a: i64, b: i64) -> Result<Relation, BackendError> {
        let key = pair_key(appid, a, b);
        let cache = &self.0.pairs.cache;
        if let Some(bits) = cache.get(&key) {
            return Ok(Relation::of(bits, a, b));
        }
        let ticket = cache.ticket(&key);
        // The same query and parameters for both stores (their query types differ).
        macro_rules! pair_rows {
            ($pool:expr) => {
                sqlx::query(PAIR_QUERY)
                    .bind(appid)
                    .bind(a)
                    .bind(b)
                    .bind(b)
                    .bind(a)
                    .bind(appid)
                    .bind(a)
                    .bind(b)
                    .bind(b)
                    .bind(a)
                    .fetch_all($pool)
                    .await
                    .and_then(|rows| {
                        rows.iter()
                            .map(|r| Ok((r.try_get("kind")?, r.try_get("uid")?)))
                            .collect::<Result<Vec<(i64, i64)>, sqlx::Error>>()
                    })
            };
        }
        let rows = match &self.0.store {
            Store::Embedded(pool) => pair_rows!(pool)?,
            Store::Mysql { pool, .. } => pair_rows!(pool).map_err(BackendError::Mysql)?,
        };
        let mut bits = 0;
        for (kind, lister) in rows {
            let kind = if kind == 0 {
                RelationKind::Friend
            } else {
                RelationKind::Blacklist
            };
            let other = if lister == a { b } else { a };
            bits |= kind.bit(lister, other);
        }
        cache.insert(key, bits, ticket);
        Ok(Relation::of(bits, a, b))
    }

    /// Add (`on`) or remove the row "`uid` → `other`" of `kind`; whether it changed. Cached pairs
    /// on this node change at once; in MySQL mode the change is also appended to
    /// `relationship_stream` (every time, so retrying a call whose announcement failed announces
    /// it), and an `Err(Redis)` means it is stored but other nodes were not told.
    pub async fn set(
        &self,
        kind: RelationKind,
        appid: i64,
        uid: i64,
        other: i64,
        on: bool,
    ) -> Result<bool, BackendError> {
        check_ids(appid, uid, other)?;
        let table = kind.name();
        let changed = match &self.0.store {
            Store::Embedded(pool) => {
                let q = if on {
                    format!("INSERT OR IGNORE INTO {table} (appid, uid, friend_uid, timestamp) VALUES (?, ?, ?, ?)")
                } else {
                    format!("DELETE FROM {table} WHERE appid = ? AND uid = ? AND friend_uid = ?")
                };
                let q = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(appid)
                    .bind(uid)
                    .bind(other);
                let q = if on { q.bind(now_secs()) } else { q };
                q.execute(pool).await?.rows_affected() > 0
            }
            Store::Mysql { pool, .. } => {
                let q = if on {
                    format!("INSERT IGNORE INTO `{table}` (appid, uid, friend_uid, `timestamp`) VALUES (?, ?, ?, ?)")
                } else {
                    format!("DELETE FROM `{table}` WHERE appid = ? AND uid = ? AND friend_uid = ?")
                };
                let q = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(appid)
                    .bind(uid)
                    .bind(other);
                let q = if on { q.bind(now_secs()) } else { q };
                q.execute(pool)
                    .await
                    .map_err(BackendError::Mysql)?
                    .rows_affected()
                    > 0
            }
        };
        self.0.pairs.set(kind, appid, uid, other, on);
        if let Store::Mysql { writer, .. } = &self.0.store {
            let flag = |k: RelationKind| if k == kind && on { "1" } else { "0" };
            let event = vec![
                kind.name().to_owned(),
                appid.to_string(),
                uid.to_string(),
                other.to_string(),
                flag(RelationKind::Friend).to_owned(),
                flag(RelationKind::Blacklist).to_owned(),
            ];
            if let Err(e) = writer.append(&[event]).await {
                tracing::warn!(error = %e, "relation stored in MySQL but not announced on {}", KEYS.stream);
                return Err(e);
            }
        }
        Ok(changed)
    }

    /// The uids `uid` lists in `kind` above `after`, ascending, at most `limit`
    /// (1 ..= [`MAX_LIST_LIMIT`]). Page on by passing the last uid returned as `after`.
    pub async fn list(
        &self,
        kind: RelationKind,
        appid: i64,
        uid: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<i64>, BackendError> {
        check_ids(appid, uid, 1)?;
        crate::groups::check_page(after, limit)?;
        let table = kind.name();
        let q = format!(
            "SELECT friend_uid FROM {table} WHERE appid = ? AND uid = ? AND friend_uid > ? \
             ORDER BY friend_uid LIMIT ?"
        );
        Ok(match &self.0.store {
            Store::Embedded(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(q))
                    .bind(appid)
                    .bind(uid)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            Store::Mysql { pool, .. } => sqlx::query_scalar(sqlx::AssertSqlSafe(q))
                .bind(appid)
                .bind(uid)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(BackendError::Mysql)?,
        })
    }

    /// `"embedded"` or `"mysql"`, for logs.
    pub fn kind(&self) -> &'static str {
        match self.0.store {
            Store::Embedded(_) => "embedded",
            Store::Mysql { .. } => "mysql",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_bits_read_from_either_side() {
        let mut bits = 0;
        bits |= RelationKind::Friend.bit(7, 3);
        bits |= RelationKind::Blacklist.bit(3, 7);
        let from7 = Relation::of(bits, 7, 3);
        assert_eq!(
            from7,
            Relation {
                a_lists_b: true,
                b_lists_a: false,
                a_blocks_b: false,
                b_blocks_a: true
            }
        );
        let from3 = Relation::of(bits, 3, 7);
        assert!(from3.b_lists_a && !from3.a_lists_b && from3.a_blocks_b && !from3.b_blocks_a);
        // A user and themself: one row serves both directions.
        let me = Relation::of(RelationKind::Friend.bit(5, 5), 5, 5);
        assert!(me.a_lists_b && me.b_lists_a);
    }
}
