//! Push device tokens bound by clients (`POST /device/bind` of the app API), where offline push reads
//! them. A user may have several devices, and several tokens per provider.
//!
//! * Embedded: table `push_devices` (appid, uid, provider, token, bound_at).
//! * Redis: GoBelieve's fields on `users_<appid>_<uid>` — `<provider>_device_token` and
//!   `<provider>_timestamp` (`apns`, `pushkit`, `ng`, `xg`, `xm`, `hw`, `gcm`, `jp`), which an existing
//!   GoBelieve push service reads (one token per provider: the latest) — plus the hash
//!   `push_devices_<appid>_<uid>` (field `<provider>:<token>` → bind time) with every bound device.
//!
//! A token identifies one device: binding it for a user removes it from whichever user of the same
//! app had it before (a phone that switches accounts stops receiving the old account's pushes). The
//! embedded backend does it in the bind's transaction; Redis through the owner key
//! `push_device_owner_<appid>_<provider>_<token>`. Unbinding removes the token from the user's
//! devices, and GoBelieve's field only when it holds that token (as GoBelieve's API server does).

use redis::{AsyncCommands, Script};
use sqlx::Row;

use crate::embedded::Embedded;
use crate::redis_backend::RedisBackend;
use crate::BackendError;

/// Longest accepted device token.
pub const MAX_TOKEN_LEN: usize = 4096;

/// A push service a device token belongs to, named as GoBelieve's SDKs name the bind fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PushProvider {
    /// Apple push (`apns_device_token`).
    Apns,
    /// Apple VoIP push (`pushkit_device_token`).
    PushKit,
    /// `ng_device_token`.
    Ng,
    /// Tencent XG (`xg_device_token`).
    Xg,
    /// Xiaomi (`xm_device_token`).
    Xm,
    /// Huawei (`hw_device_token`).
    Hw,
    /// Google FCM/GCM (`gcm_device_token`).
    Gcm,
    /// JPush (`jp_device_token`).
    Jp,
}

impl PushProvider {
    /// Every provider, in field order.
    pub const ALL: [PushProvider; 8] = [
        PushProvider::Apns,
        PushProvider::PushKit,
        PushProvider::Ng,
        PushProvider::Xg,
        PushProvider::Xm,
        PushProvider::Hw,
        PushProvider::Gcm,
        PushProvider::Jp,
    ];

    /// `apns`, `pushkit`, `ng`, `xg`, `xm`, `hw`, `gcm`, `jp`.
    pub fn name(self) -> &'static str {
        match self {
            PushProvider::Apns => "apns",
            PushProvider::PushKit => "pushkit",
            PushProvider::Ng => "ng",
            PushProvider::Xg => "xg",
            PushProvider::Xm => "xm",
            PushProvider::Hw => "hw",
            PushProvider::Gcm => "gcm",
            PushProvider::Jp => "jp",
        }
    }

    /// The provider called `name`.
    pub fn from_name(name: &str) -> Option<PushProvider> {
        PushProvider::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The bind request's field and GoBelieve's hash field: `<name>_device_token`.
    pub fn token_field(self) -> String {
        format!("{}_device_token", self.name())
    }

    /// GoBelieve's time field: `<name>_timestamp`.
    pub fn timestamp_field(self) -> String {
        format!("{}_timestamp", self.name())
    }
}

/// One bound device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundDevice {
    pub provider: PushProvider,
    pub token: String,
    /// Unix seconds of the bind.
    pub bound_at: i64,
}

pub(crate) fn check_tokens(tokens: &[(PushProvider, String)]) -> Result<(), BackendError> {
    if tokens.is_empty() {
        return Err(BackendError::InvalidArgument(
            "no device token given".into(),
        ));
    }
    for (p, t) in tokens {
        if t.is_empty() || t.len() > MAX_TOKEN_LEN || t.chars().any(char::is_control) {
            return Err(BackendError::InvalidArgument(format!(
                "`{}` must be 1 to {MAX_TOKEN_LEN} printable characters",
                p.token_field()
            )));
        }
    }
    Ok(())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Embedded {
    pub(crate) async fn bind_devices(
        &self,
        appid: i64,
        uid: i64,
        tokens: &[(PushProvider, String)],
    ) -> Result<(), BackendError> {
        let now = now_secs();
        let mut tx = self.pool().begin().await?;
        for (p, token) in tokens {
            sqlx::query(
                "DELETE FROM push_devices WHERE appid = ?1 AND provider = ?2 AND token = ?3 AND uid <> ?4",
            )
            .bind(appid)
            .bind(p.name())
            .bind(token)
            .bind(uid)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO push_devices (appid, uid, provider, token, bound_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (appid, uid, provider, token) DO UPDATE SET bound_at = excluded.bound_at",
            )
            .bind(appid)
            .bind(uid)
            .bind(p.name())
            .bind(token)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn unbind_devices(
        &self,
        appid: i64,
        uid: i64,
        tokens: &[(PushProvider, String)],
    ) -> Result<u64, BackendError> {
        let mut removed = 0;
        let mut tx = self.pool().begin().await?;
        for (p, token) in tokens {
            removed += sqlx::query(
                "DELETE FROM push_devices WHERE appid = ?1 AND uid = ?2 AND provider = ?3 AND token = ?4",
            )
            .bind(appid)
            .bind(uid)
            .bind(p.name())
            .bind(token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(removed)
    }

    pub(crate) async fn devices(
        &self,
        appid: i64,
        uid: i64,
    ) -> Result<Vec<BoundDevice>, BackendError> {
        let rows = sqlx::query(
            "SELECT provider, token, bound_at FROM push_devices WHERE appid = ?1 AND uid = ?2
             ORDER BY bound_at DESC, provider, token",
        )
        .bind(appid)
        .bind(uid)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("provider")?;
            let provider = PushProvider::from_name(&name).ok_or_else(|| {
                BackendError::Corrupt(format!("push_devices.provider {name:?} is unknown"))
            })?;
            out.push(BoundDevice {
                provider,
                token: row.try_get("token")?,
                bound_at: row.try_get("bound_at")?,
            });
        }
        Ok(out)
    }
}

fn user_key(appid: i64, uid: i64) -> String {
    format!("users_{appid}_{uid}")
}

fn devices_key(appid: i64, uid: i64) -> String {
    format!("push_devices_{appid}_{uid}")
}

fn owner_key(appid: i64, p: PushProvider, token: &str) -> String {
    format!("push_device_owner_{appid}_{}_{token}", p.name())
}

/// KEYS[1] = hash, ARGV[1] = field, ARGV[2] = value: HDEL only when the field holds the value.
const HDEL_IF_EQUAL_LUA: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

/// KEYS[1] = key, ARGV[1] = value: DEL only when the key holds the value.
const DEL_IF_EQUAL_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

impl RedisBackend {
    pub(crate) async fn bind_devices(
        &self,
        appid: i64,
        uid: i64,
        tokens: &[(PushProvider, String)],
    ) -> Result<(), BackendError> {
        let now = now_secs();
        let mut conn = self.connection();
        let hdel_if = Script::new(HDEL_IF_EQUAL_LUA);
        for (p, token) in tokens {
            let member = format!("{}:{token}", p.name());
            let (previous,): (Option<String>,) = redis::pipe()
                .atomic()
                .hset_multiple(
                    user_key(appid, uid),
                    &[
                        (p.token_field(), token.clone()),
                        (p.timestamp_field(), now.to_string()),
                    ],
                )
                .ignore()
                .hset(devices_key(appid, uid), &member, now)
                .ignore()
                // GETSET rather than SET … GET: GoBelieve deployments may run Redis before 6.2.
                .getset(owner_key(appid, *p, token), uid)
                .query_async(&mut conn)
                .await?;
            let Some(prev) = previous.and_then(|v| v.parse::<i64>().ok()) else {
                continue;
            };
            if prev == uid {
                continue;
            }
            // The device now belongs to `uid`: its previous user stops receiving pushes on it.
            conn.hdel::<_, _, ()>(devices_key(appid, prev), &member)
                .await?;
            hdel_if
                .key(user_key(appid, prev))
                .arg(p.token_field())
                .arg(token)
                .invoke_async::<i64>(&mut conn)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn unbind_devices(
        &self,
        appid: i64,
        uid: i64,
        tokens: &[(PushProvider, String)],
    ) -> Result<u64, BackendError> {
        let mut conn = self.connection();
        let hdel_if = Script::new(HDEL_IF_EQUAL_LUA);
        let del_if = Script::new(DEL_IF_EQUAL_LUA);
        let mut removed = 0u64;
        for (p, token) in tokens {
            let member = format!("{}:{token}", p.name());
            let n: u64 = conn.hdel(devices_key(appid, uid), &member).await?;
            let field: u64 = hdel_if
                .key(user_key(appid, uid))
                .arg(p.token_field())
                .arg(token)
                .invoke_async(&mut conn)
                .await?;
            del_if
                .key(owner_key(appid, *p, token))
                .arg(uid)
                .invoke_async::<i64>(&mut conn)
                .await?;
            removed += n.max(field);
        }
        Ok(removed)
    }

    pub(crate) async fn devices(
        &self,
        appid: i64,
        uid: i64,
    ) -> Result<Vec<BoundDevice>, BackendError> {
        let mut conn = self.connection();
        let all: Vec<(String, String)> = conn.hgetall(devices_key(appid, uid)).await?;
        let mut out: Vec<BoundDevice> = all
            .into_iter()
            .filter_map(|(member, at)| {
                let (name, token) = member.split_once(':')?;
                Some(BoundDevice {
                    provider: PushProvider::from_name(name)?,
                    token: token.to_string(),
                    bound_at: at.trim().parse().unwrap_or(0),
                })
            })
            .collect();
        // Tokens GoBelieve's API server bound (only its fields hold them) count too.
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(user_key(appid, uid));
        for p in PushProvider::ALL {
            cmd.arg(p.token_field()).arg(p.timestamp_field());
        }
        let fields: Vec<Option<String>> = cmd.query_async(&mut conn).await?;
        for (p, pair) in PushProvider::ALL.into_iter().zip(fields.chunks(2)) {
            let (Some(Some(token)), ts) = (pair.first(), pair.get(1)) else {
                continue;
            };
            if token.is_empty() || out.iter().any(|d| d.provider == p && &d.token == token) {
                continue;
            }
            out.push(BoundDevice {
                provider: p,
                token: token.clone(),
                bound_at: ts
                    .and_then(|t| t.as_deref())
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0),
            });
        }
        out.sort_by(|a, b| {
            b.bound_at
                .cmp(&a.bound_at)
                .then(a.provider.cmp(&b.provider))
                .then(a.token.cmp(&b.token))
        });
        Ok(out)
    }
}
