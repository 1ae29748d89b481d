//! What offline push needs to know about a user besides their devices: do-not-disturb settings
//! (for the whole user, or for one group) and the display name shown as a push's title.
//!
//! * Embedded: table `push_dnd` (appid, uid, gid; gid 0 = every message), and the newest non-empty
//!   `user_name` among the user's stored tokens.
//! * Redis: hash `push_dnd_<appid>_<uid>` (field `user`, or `group_<gid>`, → `1`), and the field
//!   `name` of GoBelieve's `users_<appid>_<uid>` hash (written by GoBelieve's API server).

use redis::AsyncCommands;
use sqlx::Row;

use crate::embedded::Embedded;
use crate::redis_backend::RedisBackend;
use crate::BackendError;

/// A do-not-disturb scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DndScope {
    /// No offline push at all for the user.
    User,
    /// No offline push for this group's messages.
    Group(i64),
}

impl DndScope {
    fn gid(self) -> i64 {
        match self {
            DndScope::User => 0,
            DndScope::Group(g) => g,
        }
    }

    fn redis_field(self) -> String {
        match self {
            DndScope::User => "user".to_owned(),
            DndScope::Group(g) => format!("group_{g}"),
        }
    }
}

/// A user's do-not-disturb settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DndSettings {
    /// Every offline push is off.
    pub user: bool,
    /// Groups whose messages are not pushed, ascending.
    pub groups: Vec<i64>,
}

fn dnd_key(appid: i64, uid: i64) -> String {
    format!("push_dnd_{appid}_{uid}")
}

impl Embedded {
    pub(crate) async fn set_dnd(
        &self,
        appid: i64,
        uid: i64,
        scope: DndScope,
        on: bool,
    ) -> Result<(), BackendError> {
        let sql = if on {
            "INSERT OR IGNORE INTO push_dnd (appid, uid, gid) VALUES (?1, ?2, ?3)"
        } else {
            "DELETE FROM push_dnd WHERE appid = ?1 AND uid = ?2 AND gid = ?3"
        };
        sqlx::query(sql)
            .bind(appid)
            .bind(uid)
            .bind(scope.gid())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub(crate) async fn dnd(&self, appid: i64, uid: i64) -> Result<DndSettings, BackendError> {
        let rows =
            sqlx::query("SELECT gid FROM push_dnd WHERE appid = ?1 AND uid = ?2 ORDER BY gid")
                .bind(appid)
                .bind(uid)
                .fetch_all(self.pool())
                .await?;
        let mut out = DndSettings::default();
        for row in rows {
            let gid: i64 = row.try_get("gid")?;
            if gid == 0 {
                out.user = true;
            } else {
                out.groups.push(gid);
            }
        }
        Ok(out)
    }

    pub(crate) async fn user_name(&self, appid: i64, uid: i64) -> Result<String, BackendError> {
        let row = sqlx::query(
            "SELECT user_name FROM tokens WHERE appid = ?1 AND uid = ?2 AND user_name <> ''
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(appid)
        .bind(uid)
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(r) => r.try_get("user_name")?,
            None => String::new(),
        })
    }
}

impl RedisBackend {
    pub(crate) async fn set_dnd(
        &self,
        appid: i64,
        uid: i64,
        scope: DndScope,
        on: bool,
    ) -> Result<(), BackendError> {
        let mut conn = self.connection();
        if on {
            conn.hset::<_, _, _, ()>(dnd_key(appid, uid), scope.redis_field(), 1)
                .await?;
        } else {
            conn.hdel::<_, _, ()>(dnd_key(appid, uid), scope.redis_field())
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn dnd(&self, appid: i64, uid: i64) -> Result<DndSettings, BackendError> {
        let mut conn = self.connection();
        let fields: Vec<String> = conn.hkeys(dnd_key(appid, uid)).await?;
        let mut out = DndSettings::default();
        for f in fields {
            if f == "user" {
                out.user = true;
            } else if let Some(g) = f.strip_prefix("group_").and_then(|g| g.parse().ok()) {
                out.groups.push(g);
            }
        }
        out.groups.sort_unstable();
        Ok(out)
    }

    pub(crate) async fn user_name(&self, appid: i64, uid: i64) -> Result<String, BackendError> {
        let mut conn = self.connection();
        let name: Option<String> = conn.hget(format!("users_{appid}_{uid}"), "name").await?;
        Ok(name.unwrap_or_default())
    }
}
