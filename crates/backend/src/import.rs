//! Importing a GoBelieve deployment's non-message state into the embedded backend
//! (`banter store import-gobelieve --mysql/--redis`, `docs/migration.md`):
//!
//! * [`groups_from_mysql`]: the live rows of GoBelieve's `group` and `group_member` tables go to
//!   the embedded group directory, keeping ids, super flags, masters, names, join times and mute
//!   bits. Each group is replaced as a whole, so a second run changes nothing.
//! * [`users_from_redis`]: `access_token_<token>` hashes become stored tokens (the same token
//!   strings keep working), `users_<appid>_<uid>` hashes give the user flags (`forbidden`,
//!   `notification_on`), the unread count and the sync-key hints (`sync_key`,
//!   `group_sync_key_<gid>`; GoBelieve keys, which the store translates on sync), and
//!   `devices_<device>_<platform>` keep their device ids (messages record the sender's device id,
//!   so the SELF flag of synced messages stays right). Hints only ever move forward (the larger
//!   key wins), tokens and devices already present are kept: a second run changes nothing.
//!
//! Neither is needed when banter uses GoBelieve's MySQL (`[groups] mode = "mysql"`) or Redis
//! (`[backend] mode = "redis"`) itself: those modes read the same tables and keys.

use std::fmt;
use std::path::Path;

use sqlx::mysql::MySqlPoolOptions;
use sqlx::Row;

use crate::groups::embedded::EmbeddedGroups;
use crate::{BackendError, EmbeddedGroupOptions, EmbeddedOptions};

/// What [`groups_from_mysql`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupImport {
    pub groups: u64,
    pub super_groups: u64,
    pub members: u64,
    /// Live groups without an appid (GoBelieve allows NULL), not imported.
    pub skipped_no_appid: u64,
}

impl fmt::Display for GroupImport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "groups from MySQL: {} groups ({} super groups), {} members; {} skipped (no appid)",
            self.groups, self.super_groups, self.members, self.skipped_no_appid
        )
    }
}

/// What [`users_from_redis`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserImport {
    pub tokens: u64,
    pub users: u64,
    pub group_sync_keys: u64,
    pub devices: u64,
    /// Keys whose name or fields are not what GoBelieve writes, not imported.
    pub malformed: u64,
}

impl fmt::Display for UserImport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "users from Redis: {} tokens, {} users (flags, unread, sync-key hints), {} super-group sync-key hints, {} device ids; {} malformed keys skipped",
            self.tokens, self.users, self.group_sync_keys, self.devices, self.malformed
        )
    }
}

trait My<T> {
    fn my(self) -> Result<T, BackendError>;
}

impl<T> My<T> for Result<T, sqlx::Error> {
    fn my(self) -> Result<T, BackendError> {
        self.map_err(BackendError::Mysql)
    }
}

/// Copies GoBelieve's MySQL groups and members (`mysql://…/gobelieve`) into the embedded group
/// directory file `groups_db` (created if missing). See the module docs.
pub async fn groups_from_mysql(url: &str, groups_db: &Path) -> Result<GroupImport, BackendError> {
    let mysql = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .my()?;
    let dir = EmbeddedGroups::open(EmbeddedGroupOptions {
        path: groups_db.to_path_buf(),
        ..EmbeddedGroupOptions::default()
    })
    .await?;
    let mut report = GroupImport::default();
    let groups = sqlx::query(
        "SELECT CAST(id AS SIGNED) AS id, CAST(COALESCE(appid, 0) AS SIGNED) AS appid,
                CAST(COALESCE(master, 0) AS SIGNED) AS master, CAST(super AS SIGNED) AS super,
                COALESCE(name, '') AS name
         FROM `group` WHERE deleted = 0 ORDER BY id",
    )
    .fetch_all(&mysql)
    .await
    .my()?;
    for g in groups {
        let gid: i64 = g.try_get("id").my()?;
        let appid: i64 = g.try_get("appid").my()?;
        if appid <= 0 {
            report.skipped_no_appid += 1;
            continue;
        }
        let is_super = g.try_get::<i64, _>("super").my()? != 0;
        let members: Vec<(i64, i64, bool)> = sqlx::query(
            "SELECT CAST(uid AS SIGNED) AS uid, CAST(COALESCE(`timestamp`, 0) AS SIGNED) AS ts,
                    CAST(COALESCE(mute, 0) AS SIGNED) AS mute
             FROM group_member WHERE deleted = 0 AND group_id = ? ORDER BY uid",
        )
        .bind(gid)
        .fetch_all(&mysql)
        .await
        .my()?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("uid")?,
                r.try_get("ts")?,
                r.try_get::<i64, _>("mute")? != 0,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .my()?;
        dir.import_group(
            appid,
            gid,
            &g.try_get::<String, _>("name").my()?,
            g.try_get("master").my()?,
            is_super,
            &members,
        )
        .await?;
        report.groups += 1;
        report.super_groups += u64::from(is_super);
        report.members += members.len() as u64;
    }
    mysql.close().await;
    Ok(report)
}

/// Parses `users_<appid>_<uid>`.
fn user_key(k: &str) -> Option<(i64, i64)> {
    let (a, u) = k.strip_prefix("users_")?.split_once('_')?;
    Some((a.parse().ok()?, u.parse().ok()?))
}

/// Parses `devices_<device>_<platform>` (the device string may itself contain `_`).
fn device_key(k: &str) -> Option<(&str, i64)> {
    let (d, p) = k.strip_prefix("devices_")?.rsplit_once('_')?;
    Some((d, p.parse().ok()?))
}

/// Copies GoBelieve's Redis tokens, user state and device ids into the embedded backend file
/// `banter_db` (created if missing). See the module docs.
pub async fn users_from_redis(
    url: &str,
    db: i64,
    banter_db: &Path,
) -> Result<UserImport, BackendError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    if db > 0 {
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(&mut conn)
            .await?;
    }
    let emb = crate::embedded::Embedded::open(EmbeddedOptions {
        path: banter_db.to_path_buf(),
        ..EmbeddedOptions::default()
    })
    .await?;
    let pool = emb.pool().clone();
    let mut report = UserImport::default();
    let keys = scan(&mut conn, "access_token_*").await?;
    for k in keys {
        let token = &k["access_token_".len()..];
        let (uid, appid, name): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(&k)
                .arg("user_id")
                .arg("app_id")
                .arg("user_name")
                .query_async(&mut conn)
                .await?;
        let (Some(uid), Some(appid)) = (
            uid.and_then(|v| v.parse::<i64>().ok()),
            appid.and_then(|v| v.parse::<i64>().ok()),
        ) else {
            report.malformed += 1;
            continue;
        };
        if token.is_empty() || uid <= 0 || appid <= 0 {
            report.malformed += 1;
            continue;
        }
        sqlx::query("INSERT OR IGNORE INTO tokens (token_hash, appid, uid, user_name, created_at) VALUES (?1, ?2, ?3, ?4, strftime('%s','now'))")
            .bind(&crate::token::hash(token)[..])
            .bind(appid)
            .bind(uid)
            .bind(name.unwrap_or_default())
            .execute(&pool)
            .await?;
        report.tokens += 1;
    }
    for k in scan(&mut conn, "users_*").await? {
        let Some((appid, uid)) = user_key(&k) else {
            report.malformed += 1;
            continue;
        };
        let fields: Vec<(String, String)> =
            redis::cmd("HGETALL").arg(&k).query_async(&mut conn).await?;
        let num = |name: &str| -> i64 {
            fields
                .iter()
                .find(|f| f.0 == name)
                .and_then(|f| f.1.parse().ok())
                .unwrap_or(0)
        };
        sqlx::query(
            "INSERT INTO users (appid, uid, forbidden, notification_on, sync_key, unread)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (appid, uid) DO UPDATE SET forbidden = excluded.forbidden,
                notification_on = excluded.notification_on, unread = excluded.unread,
                sync_key = MAX(users.sync_key, excluded.sync_key)",
        )
        .bind(appid)
        .bind(uid)
        .bind(num("forbidden").clamp(0, 1))
        .bind(num("notification_on").clamp(0, 1))
        .bind(num("sync_key").max(0))
        .bind(num("unread"))
        .execute(&pool)
        .await?;
        report.users += 1;
        for (f, v) in &fields {
            let Some(gid) = f.strip_prefix("group_sync_key_") else {
                continue;
            };
            let (Ok(gid), Ok(key)) = (gid.parse::<i64>(), v.parse::<i64>()) else {
                report.malformed += 1;
                continue;
            };
            sqlx::query(
                "INSERT INTO group_sync_keys (appid, uid, gid, sync_key) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (appid, uid, gid) DO UPDATE SET sync_key = MAX(group_sync_keys.sync_key, excluded.sync_key)",
            )
            .bind(appid)
            .bind(uid)
            .bind(gid)
            .bind(key)
            .execute(&pool)
            .await?;
            report.group_sync_keys += 1;
        }
    }
    for k in scan(&mut conn, "devices_*").await? {
        if k == "devices_id" {
            continue;
        }
        let Some((device, platform)) = device_key(&k) else {
            report.malformed += 1;
            continue;
        };
        let id: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut conn).await?;
        let Some(id) = id.and_then(|v| v.parse::<i64>().ok()).filter(|&i| i > 0) else {
            report.malformed += 1;
            continue;
        };
        sqlx::query("INSERT OR IGNORE INTO devices (id, device, platform) VALUES (?1, ?2, ?3)")
            .bind(id)
            .bind(device)
            .bind(platform)
            .execute(&pool)
            .await?;
        report.devices += 1;
    }
    emb.flush().await?;
    pool.close().await;
    Ok(report)
}

/// Every key matching `pattern` (SCAN, so Redis is never blocked).
async fn scan(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Result<Vec<String>, BackendError> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        out.extend(keys);
        if next == 0 {
            out.sort_unstable();
            out.dedup();
            return Ok(out);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        assert_eq!(user_key("users_7_1000"), Some((7, 1000)));
        assert_eq!(user_key("users_7"), None);
        assert_eq!(device_key("devices_a_b-c_2"), Some(("a_b-c", 2)));
        assert_eq!(device_key("devices_id"), None);
    }
}
