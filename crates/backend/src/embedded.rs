//! The embedded backend: one SQLite file (WAL mode) through `sqlx`, for `banter serve` with nothing
//! else installed.
//!
//! Tables: `tokens` (SHA-256 of the token → appid, uid, user name; the token itself is never stored),
//! `users` (flags, peer sync-key hint, unread count), `group_sync_keys`, `devices` (device string and
//! platform → integer id from an AUTOINCREMENT key, so ids start at 1 and are never reused),
//! `push_devices` and `supporters` (used by `devices` and `supporters`).
//!
//! Valid stored tokens are cached in a bounded in-memory map in front of SQLite; `revoke` removes the
//! entry, and a lookup racing with a revoke never re-inserts it (see [`crate::cache`]). Device ids
//! never change once allocated, so they are cached too. Sync-key hints and unread counts go through
//! the write-behind buffer and are written in one transaction per flush.
//!
//! **Failed writes.** A write that fails (`SQLITE_FULL` when the disk is full, an I/O error) can
//! leave its connection inside a transaction that still holds the database's write lock; every
//! other connection would then wait for it and fail with "database is locked" long after the disk
//! has room again. So every write goes through `settle`: after a failure the connection is
//! rolled back and discarded. The table `health_probe` (one row of 16 KiB) is written only to find
//! out whether a failing database accepts writes again.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{broadcast, oneshot};

use crate::cache::{self, BoundedCache};
use crate::moderation::{forbidden_channel, ForbiddenEvent};
use crate::token::{self, JwtVerifier};
use crate::write_behind::{spawn_flusher, Backoff, Batch, Sink, WriteBehind};
use crate::{AuthInfo, BackendError, EmbeddedOptions, UserFlags};

/// Cached valid tokens.
const TOKEN_CACHE_ENTRIES: usize = 1 << 16;
/// Cached device ids.
const DEVICE_CACHE_ENTRIES: usize = 1 << 16;
/// Rows per multi-row upsert in a flush (4 parameters each, well under SQLite's limit).
const ROWS_PER_STATEMENT: usize = 200;
/// Bytes the health probe writes (a few pages).
const PROBE_BYTES: i64 = 16 << 10;
/// Schema version stored in `PRAGMA user_version`.
/// Version 2 added `tokens.expires_at`.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tokens (
        token_hash BLOB PRIMARY KEY,
        appid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        user_name TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens (appid, uid)",
    "CREATE TABLE IF NOT EXISTS users (
        appid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        forbidden INTEGER NOT NULL DEFAULT 0,
        notification_on INTEGER NOT NULL DEFAULT 0,
        sync_key INTEGER NOT NULL DEFAULT 0,
        unread INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (appid, uid)
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS group_sync_keys (
        appid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        sync_key INTEGER NOT NULL,
        PRIMARY KEY (appid, uid, gid)
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS devices (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device TEXT NOT NULL,
        platform INTEGER NOT NULL,
        UNIQUE (device, platform)
    )",
    "CREATE TABLE IF NOT EXISTS health_probe (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        pad BLOB
    )",
    // Push device tokens bound through the app API (see `devices.rs`).
    "CREATE TABLE IF NOT EXISTS push_devices (
        appid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        provider TEXT NOT NULL,
        token TEXT NOT NULL,
        bound_at INTEGER NOT NULL,
        PRIMARY KEY (appid, uid, provider, token)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS push_devices_by_token ON push_devices (appid, provider, token)",
    // Offline-push do-not-disturb settings (see `push_prefs.rs`); gid 0 = the whole user.
    "CREATE TABLE IF NOT EXISTS push_dnd (
        appid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        PRIMARY KEY (appid, uid, gid)
    ) WITHOUT ROWID",
    // The sender's name of a push title (`push_prefs.rs`).
    "CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens (appid, uid)",
    // Customer-service supporters managed with the admin API (see `supporters.rs`).
    "CREATE TABLE IF NOT EXISTS supporters (
        store_id INTEGER NOT NULL,
        seller_id INTEGER NOT NULL,
        appid INTEGER NOT NULL,
        name TEXT NOT NULL,
        appname TEXT NOT NULL,
        PRIMARY KEY (store_id, seller_id)
    ) WITHOUT ROWID",
];

/// The result of a write made on `conn`. When it failed, whatever transaction it left open is
/// rolled back and the connection is closed rather than returned to the pool, so that no lock
/// outlives the failure.
async fn settle<T>(
    conn: PoolConnection<Sqlite>,
    r: Result<T, sqlx::Error>,
) -> Result<T, BackendError> {
    if let Err(e) = &r {
        tracing::debug!(error = %e, "SQLite write failed; discarding its connection");
        discard(conn).await;
    }
    Ok(r?)
}

async fn discard(mut conn: PoolConnection<Sqlite>) {
    // Fails harmlessly ("no transaction is active") when SQLite already rolled back.
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing a failed SQLite connection");
    }
}

/// The SQLite-backed variant.
pub struct Embedded {
    pool: SqlitePool,
    jwt: Option<JwtVerifier>,
    /// Valid tokens, who they name and when they expire.
    tokens: BoundedCache<cache::Key, CachedToken>,
    /// Device ids by [`device_key`].
    devices: BoundedCache<cache::Key, i64>,
    wb: Arc<WriteBehind>,
    sink: SqliteSink,
    forbidden: broadcast::Sender<ForbiddenEvent>,
    /// Dropping it tells the flusher to flush a last time and stop.
    _shutdown: oneshot::Sender<()>,
}

/// The device cache's key of a client's device id on a platform.
fn device_key(device: &str, platform: u8) -> cache::Key {
    use sha2::{Digest, Sha256};
    let digest: [u8; 32] = Sha256::new()
        .chain_update([platform])
        .chain_update(device.as_bytes())
        .finalize()
        .into();
    cache::key(&digest)
}

/// A cached valid token. Compact (40 bytes against 56 for `(AuthInfo, Option<i64>)`): the cache holds
/// one per recently authenticated token, so its table is part of what each connection costs
/// (docs/benchmarks.md, Connections).
#[derive(Clone)]
struct CachedToken {
    appid: i64,
    uid: i64,
    /// The user name, usually empty (no allocation).
    user_name: Box<str>,
    /// Unix seconds; `i64::MAX` = never.
    expires_at: i64,
}

impl CachedToken {
    fn new(info: &AuthInfo, expires_at: Option<i64>) -> CachedToken {
        CachedToken {
            appid: info.appid,
            uid: info.uid,
            user_name: info.user_name.as_str().into(),
            expires_at: expires_at.unwrap_or(i64::MAX),
        }
    }

    fn info(&self) -> AuthInfo {
        AuthInfo {
            appid: self.appid,
            uid: self.uid,
            user_name: self.user_name.to_string(),
        }
    }

    fn expires_at(&self) -> Option<i64> {
        (self.expires_at != i64::MAX).then_some(self.expires_at)
    }
}

struct SqliteSink {
    pool: SqlitePool,
}

impl Sink for SqliteSink {
    async fn persist(&self, batch: &Batch) -> Result<(), BackendError> {
        let mut conn = self.pool.acquire().await?;
        let r = persist_batch(&mut conn, batch).await;
        settle(conn, r).await
    }

    async fn probe(&self) -> Result<(), BackendError> {
        let mut conn = self.pool.acquire().await?;
        // Several pages, not one row: a nearly full disk can still take a tiny write into space
        // SQLite already holds, which would call the backend healthy while grants still fail.
        let r = sqlx::query(
            "INSERT INTO health_probe (id, at, pad) VALUES (1, ?1, zeroblob(?2))
             ON CONFLICT (id) DO UPDATE SET at = excluded.at, pad = excluded.pad",
        )
        .bind(now_secs())
        .bind(PROBE_BYTES)
        .execute(&mut *conn)
        .await;
        settle(conn, r).await.map(|_| ())
    }
}

/// One transaction per flush, multi-row upserts of up to ROWS_PER_STATEMENT rows each.
async fn persist_batch(conn: &mut SqliteConnection, batch: &Batch) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    for chunk in batch.sync.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO users (appid, uid, sync_key) ");
        q.push_values(chunk, |mut row, &(appid, uid, key)| {
            row.push_bind(appid).push_bind(uid).push_bind(key);
        });
        q.push(
            " ON CONFLICT (appid, uid) DO UPDATE SET sync_key = max(sync_key, excluded.sync_key)",
        );
        q.build().execute(&mut *tx).await?;
    }
    for chunk in batch.group.chunks(ROWS_PER_STATEMENT) {
        let mut q =
            QueryBuilder::<Sqlite>::new("INSERT INTO group_sync_keys (appid, uid, gid, sync_key) ");
        q.push_values(chunk, |mut row, &(appid, uid, gid, key)| {
            row.push_bind(appid)
                .push_bind(uid)
                .push_bind(gid)
                .push_bind(key);
        });
        q.push(" ON CONFLICT (appid, uid, gid) DO UPDATE SET sync_key = max(sync_key, excluded.sync_key)");
        q.build().execute(&mut *tx).await?;
    }
    for chunk in batch.unread.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO users (appid, uid, unread) ");
        q.push_values(chunk, |mut row, &(appid, uid, count)| {
            row.push_bind(appid).push_bind(uid).push_bind(count);
        });
        q.push(" ON CONFLICT (appid, uid) DO UPDATE SET unread = excluded.unread");
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A pool on the SQLite file `path` (created when missing, with its parent directory): WAL mode,
/// `synchronous = NORMAL`, a 5 s busy timeout. Every embedded store opens its file this way.
pub(crate) async fn open_sqlite(path: &std::path::Path) -> Result<SqlitePool, BackendError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| BackendError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let connect = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    Ok(SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(connect)
        .await?)
}

impl Embedded {
    /// Open (or create) the SQLite file and start the write-behind flusher.
    pub async fn open(opts: EmbeddedOptions) -> Result<Embedded, BackendError> {
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
        // Version 1 files have `tokens` without `expires_at`; add it before the indexes are made.
        let has_tokens: bool = sqlx::query_scalar(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'tokens'",
        )
        .fetch_one(&pool)
        .await?;
        if has_tokens {
            let has_expiry: bool = sqlx::query_scalar(
                "SELECT count(*) > 0 FROM pragma_table_info('tokens') WHERE name = 'expires_at'",
            )
            .fetch_one(&pool)
            .await?;
            if !has_expiry {
                sqlx::query("ALTER TABLE tokens ADD COLUMN expires_at INTEGER")
                    .execute(&pool)
                    .await?;
            }
        }
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await?;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {SCHEMA_VERSION}"
        )))
        .execute(&pool)
        .await?;

        let wb = WriteBehind::new();
        let (shutdown, shutdown_rx) = oneshot::channel();
        spawn_flusher(
            wb.clone(),
            SqliteSink { pool: pool.clone() },
            Duration::from_millis(opts.flush_interval_ms),
            shutdown_rx,
        );
        Ok(Embedded {
            jwt: JwtVerifier::new(&opts.jwt),
            tokens: BoundedCache::new(TOKEN_CACHE_ENTRIES),
            devices: BoundedCache::new(DEVICE_CACHE_ENTRIES),
            sink: SqliteSink { pool: pool.clone() },
            pool,
            wb,
            forbidden: forbidden_channel(),
            _shutdown: shutdown,
        })
    }

    pub(crate) fn write_behind(&self) -> &WriteBehind {
        &self.wb
    }

    /// The connection pool, for the tables other modules own (`push_devices`, `supporters`).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn authenticate(&self, token: &str) -> Result<Option<AuthInfo>, BackendError> {
        if let Some(jwt) = &self.jwt {
            if token::looks_like_jwt(token) {
                return Ok(jwt.verify(token));
            }
        }
        if token.is_empty() || token.len() > token::MAX_TOKEN_LEN {
            return Ok(None);
        }
        let hash = token::hash(token);
        let key = cache::key(&hash);
        let live = |expires_at: Option<i64>| expires_at.is_none_or(|at| now_secs() < at);
        if let Some(cached) = self.tokens.get(&key) {
            return Ok(live(cached.expires_at()).then(|| cached.info()));
        }
        let ticket = self.tokens.ticket(&key);
        let row = sqlx::query(
            "SELECT appid, uid, user_name, expires_at FROM tokens WHERE token_hash = ?1",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let info = AuthInfo {
            appid: row.try_get("appid")?,
            uid: row.try_get("uid")?,
            user_name: row.try_get("user_name")?,
        };
        let expires_at: Option<i64> = row.try_get("expires_at")?;
        if info.uid <= 0 {
            return Ok(None);
        }
        self.tokens
            .insert(key, CachedToken::new(&info, expires_at), ticket);
        Ok(live(expires_at).then_some(info))
    }

    pub(crate) async fn grant(
        &self,
        appid: i64,
        uid: i64,
        user_name: &str,
        expires_in: Option<u64>,
    ) -> Result<String, BackendError> {
        let token = token::generate();
        let now = now_secs();
        let expires_at =
            expires_in.map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)));
        let mut conn = self.pool.acquire().await?;
        let r = sqlx::query("INSERT INTO tokens (token_hash, appid, uid, user_name, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .bind(&token::hash(&token)[..])
            .bind(appid)
            .bind(uid)
            .bind(user_name)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *conn)
            .await;
        settle(conn, r).await?;
        Ok(token)
    }

    pub(crate) async fn revoke(&self, token: &str) -> Result<Option<(i64, i64)>, BackendError> {
        let hash = token::hash(token);
        let key = cache::key(&hash);
        // Invalidate before and after: no lookup can cache the row across the delete.
        self.tokens.invalidate(&key);
        let mut conn = self.pool.acquire().await?;
        let r = sqlx::query("DELETE FROM tokens WHERE token_hash = ?1 RETURNING appid, uid")
            .bind(&hash[..])
            .fetch_optional(&mut *conn)
            .await;
        let row = settle(conn, r).await?;
        self.tokens.invalidate(&key);
        Ok(match row {
            Some(row) => Some((row.try_get("appid")?, row.try_get("uid")?)),
            None => None,
        })
    }

    /// Deletes every stored token of the user (expired ones too); how many there were.
    pub(crate) async fn revoke_user(&self, appid: i64, uid: i64) -> Result<u64, BackendError> {
        let mut conn = self.pool.acquire().await?;
        let r =
            sqlx::query("DELETE FROM tokens WHERE appid = ?1 AND uid = ?2 RETURNING token_hash")
                .bind(appid)
                .bind(uid)
                .fetch_all(&mut *conn)
                .await;
        let rows = settle(conn, r).await?;
        for row in &rows {
            let hash: Vec<u8> = row.try_get("token_hash")?;
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                self.tokens.invalidate(&cache::key(&hash));
            }
        }
        Ok(rows.len() as u64)
    }

    pub(crate) async fn user_flags(&self, appid: i64, uid: i64) -> Result<UserFlags, BackendError> {
        let row = sqlx::query(
            "SELECT forbidden, notification_on FROM users WHERE appid = ?1 AND uid = ?2",
        )
        .bind(appid)
        .bind(uid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => UserFlags {
                forbidden: row.try_get::<i64, _>("forbidden")? != 0,
                notification_on: row.try_get::<i64, _>("notification_on")? != 0,
            },
            None => UserFlags::default(),
        })
    }

    pub(crate) async fn set_forbidden(
        &self,
        appid: i64,
        uid: i64,
        forbidden: bool,
    ) -> Result<(), BackendError> {
        let mut conn = self.pool.acquire().await?;
        let r = sqlx::query(
            "INSERT INTO users (appid, uid, forbidden) VALUES (?1, ?2, ?3)
             ON CONFLICT (appid, uid) DO UPDATE SET forbidden = excluded.forbidden",
        )
        .bind(appid)
        .bind(uid)
        .bind(i64::from(forbidden))
        .execute(&mut *conn)
        .await;
        settle(conn, r).await?;
        // No receiver is not an error.
        let _ = self.forbidden.send(ForbiddenEvent {
            appid,
            uid,
            forbidden,
        });
        Ok(())
    }

    pub(crate) fn forbidden_events(&self) -> broadcast::Receiver<ForbiddenEvent> {
        self.forbidden.subscribe()
    }

    pub(crate) async fn set_notification_on(
        &self,
        appid: i64,
        uid: i64,
        on: bool,
    ) -> Result<(), BackendError> {
        let mut conn = self.pool.acquire().await?;
        let r = sqlx::query(
            "INSERT INTO users (appid, uid, notification_on) VALUES (?1, ?2, ?3)
             ON CONFLICT (appid, uid) DO UPDATE SET notification_on = excluded.notification_on",
        )
        .bind(appid)
        .bind(uid)
        .bind(i64::from(on))
        .execute(&mut *conn)
        .await;
        settle(conn, r).await?;
        Ok(())
    }

    pub(crate) async fn device_id(&self, device: &str, platform: u8) -> Result<i64, BackendError> {
        let key = device_key(device, platform);
        if let Some(id) = self.devices.get(&key) {
            return Ok(id);
        }
        let ticket = self.devices.ticket(&key);
        // One statement, atomic under SQLite's write lock: concurrent first logins get one id.
        let mut conn = self.pool.acquire().await?;
        let r = sqlx::query_scalar(
            "INSERT INTO devices (device, platform) VALUES (?1, ?2)
             ON CONFLICT (device, platform) DO UPDATE SET device = excluded.device
             RETURNING id",
        )
        .bind(device)
        .bind(i64::from(platform))
        .fetch_one(&mut *conn)
        .await;
        let id: i64 = settle(conn, r).await?;
        self.devices.insert(key, id, ticket);
        Ok(id)
    }

    pub(crate) async fn sync_key(&self, appid: i64, uid: i64) -> Result<i64, BackendError> {
        // Memory first: a flush between the two reads moves the value from memory to the file.
        let pending = self.wb.sync_key(appid, uid).unwrap_or(0);
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT sync_key FROM users WHERE appid = ?1 AND uid = ?2")
                .bind(appid)
                .bind(uid)
                .fetch_optional(&self.pool)
                .await?;
        Ok(stored.unwrap_or(0).max(pending))
    }

    pub(crate) async fn group_sync_key(
        &self,
        appid: i64,
        uid: i64,
        gid: i64,
    ) -> Result<i64, BackendError> {
        let pending = self.wb.group_sync_key(appid, uid, gid).unwrap_or(0);
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT sync_key FROM group_sync_keys WHERE appid = ?1 AND uid = ?2 AND gid = ?3",
        )
        .bind(appid)
        .bind(uid)
        .bind(gid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(stored.unwrap_or(0).max(pending))
    }

    pub(crate) async fn unread(&self, appid: i64, uid: i64) -> Result<i32, BackendError> {
        if let Some(v) = self.wb.unread(appid, uid) {
            return Ok(v);
        }
        let stored: Option<i32> =
            sqlx::query_scalar("SELECT unread FROM users WHERE appid = ?1 AND uid = ?2")
                .bind(appid)
                .bind(uid)
                .fetch_optional(&self.pool)
                .await?;
        Ok(stored.unwrap_or(0))
    }

    pub(crate) async fn flush(&self) -> Result<(), BackendError> {
        self.wb.flush_retrying(&self.sink, Backoff::DEFAULT).await
    }
}
