//! The GoBelieve-compatible Redis backend. It reads and writes exactly GoBelieve's keys
//! (docs/compatibility.md, *GoBelieve's shared state*), so an
//! existing GoBelieve API server keeps issuing tokens and setting flags:
//!
//! * `access_token_<token>` hash: `user_id`, `app_id`, optional `user_name`. Looked up with a
//!   pipelined `EXISTS` + `HMGET`; a missing key or `user_id` 0 is an invalid token. Not cached, so
//!   a token deleted by the API server stops working at once.
//! * `users_<appid>_<uid>` hash: `forbidden`, `notification_on`, `sync_key`,
//!   `group_sync_key_<gid>`, `unread`. `set_forbidden` also publishes `speak_forbidden`
//!   (`"<appid>,<uid>,<0|1>"`) so every access node updates its live sessions. A task
//!   subscribed to that channel on its own connection feeds [`crate::Backend::forbidden_events`].
//! * `devices_<device>_<platform>` and the counter `devices_id`: allocated by one Lua script
//!   (GET, else INCR + SET), so concurrent first logins of a device get one id
//!   (docs/compatibility.md, *Tokens*).
//! * Sync keys are written by a Lua "set only if greater" script that compares decimal strings, so
//!   the check is atomic and exact for every i64 (docs/compatibility.md, *Tokens*); batches are
//!   pipelined by the write-behind flusher, never inline with a client's report.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::{broadcast, oneshot};
use tokio::task::AbortHandle;

use crate::moderation::{forbidden_channel, spawn_forbidden_subscriber, ForbiddenEvent};
use crate::token::{self, JwtVerifier};
use crate::write_behind::{spawn_flusher, Backoff, Batch, Sink, WriteBehind};
use crate::{AuthInfo, BackendError, RedisOptions, UserFlags};

/// Entries per pipeline when flushing.
const PIPELINE_CHUNK: usize = 512;

/// KEYS[1] = hash, ARGV[1] = field, ARGV[2] = new key as a canonical positive decimal.
/// Sets the field only when the new key is greater than the stored one (a non-numeric stored value
/// is overwritten). Compares decimal strings, not Lua doubles, so it is exact for every i64.
const SET_IF_GREATER_LUA: &str = r"
local new = ARGV[2]
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  cur = string.match(cur, '^0*(%d+)$')
  if cur and (#cur > #new or (#cur == #new and cur >= new)) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], new)
return 1
";

/// KEYS[1] = `devices_<device>_<platform>`, KEYS[2] = `devices_id`. Atomic get-or-allocate.
const DEVICE_ID_LUA: &str = r"
local id = redis.call('GET', KEYS[1])
if id then
  return id
end
id = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], id)
return id
";

/// `user_id`, `app_id`, `user_name` of an `access_token_<token>` hash.
type TokenFields = (Option<String>, Option<String>, Option<String>);

fn user_key(appid: i64, uid: i64) -> String {
    format!("users_{appid}_{uid}")
}

fn group_field(gid: i64) -> String {
    format!("group_sync_key_{gid}")
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// The Redis-backed variant.
pub struct RedisBackend {
    conn: ConnectionManager,
    jwt: Option<JwtVerifier>,
    device_script: Script,
    wb: Arc<WriteBehind>,
    sink: RedisSink,
    forbidden: broadcast::Sender<ForbiddenEvent>,
    /// The `speak_forbidden` subscriber task, stopped on drop.
    subscriber: AbortHandle,
    /// Dropping it tells the flusher to flush a last time and stop.
    _shutdown: oneshot::Sender<()>,
}

struct RedisSink {
    conn: ConnectionManager,
    script: Script,
}

impl Sink for RedisSink {
    async fn persist(&self, batch: &Batch) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        for chunk in batch.sync.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            pipe.load_script(&self.script).ignore();
            for &(appid, uid, key) in chunk {
                pipe.invoke_script(
                    self.script
                        .key(user_key(appid, uid))
                        .arg("sync_key")
                        .arg(key),
                )
                .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        for chunk in batch.group.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            pipe.load_script(&self.script).ignore();
            for &(appid, uid, gid, key) in chunk {
                pipe.invoke_script(
                    self.script
                        .key(user_key(appid, uid))
                        .arg(group_field(gid))
                        .arg(key),
                )
                .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        for chunk in batch.unread.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for &(appid, uid, count) in chunk {
                pipe.hset(user_key(appid, uid), "unread", count).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }

    async fn probe(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

/// Parse an integer field; missing reads as 0 (GoBelieve's rule), garbage is an error.
fn int_field(what: &str, v: Option<String>) -> Result<i64, BackendError> {
    match v {
        None => Ok(0),
        Some(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| BackendError::Corrupt(format!("{what} is not an integer: {s:?}"))),
    }
}

impl RedisBackend {
    /// Connect (failing fast when Redis is unreachable) and start the write-behind flusher.
    pub async fn open(opts: RedisOptions) -> Result<RedisBackend, BackendError> {
        let client = redis::Client::open(opts.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(5))
            // The retry delay is 1 s × factor^attempt (capped): keep reconnects within seconds.
            .set_factor(2)
            .set_max_delay(1000)
            .set_number_of_retries(2);
        let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        let script = Script::new(SET_IF_GREATER_LUA);
        // Fail now, not at the first flush, if scripting is unavailable.
        script.prepare_invoke().load_async(&mut conn).await?;

        let forbidden = forbidden_channel();
        let subscriber = spawn_forbidden_subscriber(client, forbidden.clone()).await?;

        let wb = WriteBehind::new();
        let (shutdown, shutdown_rx) = oneshot::channel();
        spawn_flusher(
            wb.clone(),
            RedisSink {
                conn: conn.clone(),
                script: script.clone(),
            },
            Duration::from_millis(opts.flush_interval_ms),
            shutdown_rx,
        );
        Ok(RedisBackend {
            jwt: JwtVerifier::new(&opts.jwt),
            device_script: Script::new(DEVICE_ID_LUA),
            sink: RedisSink {
                conn: conn.clone(),
                script,
            },
            conn,
            wb,
            forbidden,
            subscriber,
            _shutdown: shutdown,
        })
    }

    pub(crate) fn forbidden_events(&self) -> broadcast::Receiver<ForbiddenEvent> {
        self.forbidden.subscribe()
    }

    pub(crate) fn write_behind(&self) -> &WriteBehind {
        &self.wb
    }

    /// A handle on the shared connection, for the keys other modules own (`devices.rs`,
    /// `supporters.rs`).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
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
        let key = format!("access_token_{token}");
        let (exists, (uid, appid, user_name)): (bool, TokenFields) = redis::pipe()
            .exists(&key)
            .cmd("HMGET")
            .arg(&key)
            .arg("user_id")
            .arg("app_id")
            .arg("user_name")
            .query_async(&mut self.conn.clone())
            .await?;
        if !exists {
            return Ok(None);
        }
        let (Ok(uid), Ok(appid)) = (int_field("user_id", uid), int_field("app_id", appid)) else {
            tracing::warn!(
                "access token hash has non-integer user_id/app_id; treating the token as invalid"
            );
            return Ok(None);
        };
        if uid <= 0 || appid < 0 {
            return Ok(None);
        }
        Ok(Some(AuthInfo {
            appid,
            uid,
            user_name: user_name.unwrap_or_default(),
        }))
    }

    pub(crate) async fn grant(
        &self,
        appid: i64,
        uid: i64,
        user_name: &str,
        expires_in: Option<u64>,
    ) -> Result<String, BackendError> {
        let token = token::generate();
        let key = format!("access_token_{token}");
        let items: [(&str, String); 3] = [
            ("user_id", uid.to_string()),
            ("app_id", appid.to_string()),
            ("user_name", user_name.to_owned()),
        ];
        let mut pipe = redis::pipe();
        pipe.atomic().hset_multiple(&key, &items).ignore();
        if let Some(secs) = expires_in {
            // Redis removes the key when it expires, as it does for GoBelieve's own expiring tokens.
            pipe.expire(&key, i64::try_from(secs).unwrap_or(i64::MAX))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(token)
    }

    /// Deletes every `access_token_*` hash of the user. Redis has no index from a user to their
    /// tokens (GoBelieve's app server writes them), so this walks the token keys with `SCAN`, a
    /// batch at a time: an operator's call, not a hot path.
    pub(crate) async fn revoke_user(&self, appid: i64, uid: i64) -> Result<u64, BackendError> {
        let mut conn = self.conn.clone();
        let (uid_s, appid_s) = (uid.to_string(), appid.to_string());
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("access_token_*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HMGET").arg(k).arg("user_id").arg("app_id");
                }
                let owners: Vec<(Option<String>, Option<String>)> =
                    pipe.query_async(&mut conn).await?;
                let mine: Vec<&String> = keys
                    .iter()
                    .zip(&owners)
                    .filter(|(_, (u, a))| {
                        u.as_deref() == Some(uid_s.as_str())
                            && a.as_deref() == Some(appid_s.as_str())
                    })
                    .map(|(k, _)| k)
                    .collect();
                if !mine.is_empty() {
                    let n: u64 = conn.del(&mine).await?;
                    removed += n;
                }
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    pub(crate) async fn revoke(&self, token: &str) -> Result<Option<(i64, i64)>, BackendError> {
        let key = format!("access_token_{token}");
        // Read the owner and delete in one transaction, so the answer names the token that was removed.
        let ((uid, appid), removed): ((Option<String>, Option<String>), i64) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&key)
            .arg("user_id")
            .arg("app_id")
            .del(&key)
            .query_async(&mut self.conn.clone())
            .await?;
        if removed == 0 {
            return Ok(None);
        }
        // A hash with unreadable ids authenticated nobody, so no session can hold it.
        match (int_field("user_id", uid), int_field("app_id", appid)) {
            (Ok(uid), Ok(appid)) => Ok(Some((appid, uid))),
            _ => Ok(None),
        }
    }

    pub(crate) async fn user_flags(&self, appid: i64, uid: i64) -> Result<UserFlags, BackendError> {
        let (forbidden, notification_on): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(user_key(appid, uid))
            .arg("forbidden")
            .arg("notification_on")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(UserFlags {
            forbidden: int_field("forbidden", forbidden)? != 0,
            notification_on: int_field("notification_on", notification_on)? != 0,
        })
    }

    pub(crate) async fn set_forbidden(
        &self,
        appid: i64,
        uid: i64,
        forbidden: bool,
    ) -> Result<(), BackendError> {
        let flag = i64::from(forbidden);
        redis::pipe()
            .hset(user_key(appid, uid), "forbidden", flag)
            .ignore()
            .publish("speak_forbidden", format!("{appid},{uid},{flag}"))
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    pub(crate) async fn set_notification_on(
        &self,
        appid: i64,
        uid: i64,
        on: bool,
    ) -> Result<(), BackendError> {
        self.conn
            .clone()
            .hset::<_, _, _, ()>(user_key(appid, uid), "notification_on", i64::from(on))
            .await?;
        Ok(())
    }

    pub(crate) async fn device_id(&self, device: &str, platform: u8) -> Result<i64, BackendError> {
        let value: redis::Value = self
            .device_script
            .key(format!("devices_{device}_{platform}"))
            .key("devices_id")
            .invoke_async(&mut self.conn.clone())
            .await?;
        let id = match &value {
            redis::Value::Int(i) => Some(*i),
            redis::Value::BulkString(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            redis::Value::SimpleString(s) => s.trim().parse().ok(),
            _ => None,
        };
        id.ok_or_else(|| {
            BackendError::Corrupt(format!(
                "devices_{device}_{platform} is not an integer: {value:?}"
            ))
        })
    }

    async fn hget_int(&self, key: String, field: String) -> Result<i64, BackendError> {
        let v: Option<String> = self.conn.clone().hget(&key, &field).await?;
        int_field(&field, v)
    }

    /// A sync-key hint; a malformed stored value is only a lost hint (read as 0), not an error.
    async fn hget_hint(&self, key: String, field: String) -> Result<i64, BackendError> {
        match self.hget_int(key, field).await {
            Err(BackendError::Corrupt(why)) => {
                tracing::warn!(%why, "ignoring malformed sync-key hint");
                Ok(0)
            }
            other => other,
        }
    }

    pub(crate) async fn sync_key(&self, appid: i64, uid: i64) -> Result<i64, BackendError> {
        let pending = self.wb.sync_key(appid, uid).unwrap_or(0);
        let stored = self
            .hget_hint(user_key(appid, uid), "sync_key".to_owned())
            .await?;
        Ok(stored.max(pending))
    }

    pub(crate) async fn group_sync_key(
        &self,
        appid: i64,
        uid: i64,
        gid: i64,
    ) -> Result<i64, BackendError> {
        let pending = self.wb.group_sync_key(appid, uid, gid).unwrap_or(0);
        let stored = self
            .hget_hint(user_key(appid, uid), group_field(gid))
            .await?;
        Ok(stored.max(pending))
    }

    pub(crate) async fn unread(&self, appid: i64, uid: i64) -> Result<i32, BackendError> {
        if let Some(v) = self.wb.unread(appid, uid) {
            return Ok(v);
        }
        let v = self
            .hget_int(user_key(appid, uid), "unread".to_owned())
            .await?;
        i32::try_from(v).map_err(|_| BackendError::Corrupt(format!("unread out of range: {v}")))
    }

    pub(crate) async fn flush(&self) -> Result<(), BackendError> {
        self.wb.flush_retrying(&self.sink, Backoff::DEFAULT).await
    }
}
