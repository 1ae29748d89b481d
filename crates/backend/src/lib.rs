//! The backend: everything the access server needs that is not messages — stored tokens and JWTs,
//! user flags (`forbidden`, `notification_on`), device ids, sync-key hints and unread counts, push
//! device tokens ([`devices`]) and customer-service supporters ([`supporters`]); the group
//! directory ([`groups`]) and friendship and blacklist relations ([`relations`]).
//!
//! [`Backend`] is one type with two variants chosen at start-up:
//! * [`Backend::open_embedded`]: a SQLite file (zero setup, the default of `banter serve`);
//! * [`Backend::open_redis`]: the GoBelieve Redis keys (docs/compatibility.md, *GoBelieve's shared
//!   state*), so an existing GoBelieve API server keeps issuing tokens.
//!
//! Sync-key reports and unread counts are on the message hot path: they are recorded in memory
//! (see [`write_behind`]) and persisted in the background in batches. Call [`Backend::flush`] at
//! shutdown.
#![forbid(unsafe_code)]

use std::sync::Arc;

mod action_stream;
mod cache;
pub mod devices;
pub mod embedded;
mod error;
pub mod groups;
mod health;
pub mod import;
mod jwt_hmac;
pub mod moderation;
mod options;
pub mod push;
mod push_job;
pub mod push_prefs;
pub mod redis_backend;
pub mod relations;
pub mod supporters;
mod token;
pub mod write_behind;

pub use devices::{BoundDevice, PushProvider};
pub use error::BackendError;
pub use groups::{Group, GroupChange, GroupDirectory, GroupSummary, Member};
pub use health::BackendHealth;
pub use moderation::{ForbiddenEvent, SharedWordFilter, WordFilter};
pub use options::{
    EmbeddedGroupOptions, EmbeddedOptions, JwtOptions, MysqlGroupOptions, RedisOptions,
    RedisPushOptions, WebhookOptions, DEFAULT_CACHE_GROUPS, DEFAULT_FLUSH_INTERVAL_MS,
    DEFAULT_MAX_MEMBERS, DEFAULT_MAX_RECEIVERS_PER_JOB, DEFAULT_PUSH_QUEUE_CAPACITY,
};
pub use push::{NativePush, PushJob, PushSink};
pub use push_prefs::{DndScope, DndSettings};
pub use relations::{MysqlRelationOptions, Relation, RelationDirectory, RelationKind};
pub use supporters::Supporter;
pub use token::fingerprint as token_fingerprint;

/// Who a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    /// The application id.
    pub appid: i64,
    /// The user id (always > 0).
    pub uid: i64,
    /// The user's display name, empty when the token carries none.
    pub user_name: String,
}

/// Per-user flags read at login (docs/protocol.md §8.2).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct UserFlags {
    /// Speak-banned in rooms.
    pub forbidden: bool,
    /// "Notify my phone while I am on the desktop" (docs/protocol.md §9.9).
    pub notification_on: bool,
}

/// Longest device string accepted by [`Backend::device_id`].
pub const MAX_DEVICE_LEN: usize = 1024;

/// The backend seam: an embedded SQLite file or a GoBelieve Redis. Cheap to clone.
#[derive(Clone)]
pub enum Backend {
    /// SQLite file.
    Embedded(Arc<embedded::Embedded>),
    /// GoBelieve-compatible Redis.
    Redis(Arc<redis_backend::RedisBackend>),
}

fn check_ids(appid: i64, uid: i64) -> Result<(), BackendError> {
    if appid <= 0 || uid <= 0 {
        return Err(BackendError::InvalidArgument(format!(
            "appid and uid must be > 0 (got appid {appid}, uid {uid})"
        )));
    }
    Ok(())
}

impl Backend {
    /// Open (creating when missing) the SQLite file `opts.path`; its parent directory is created.
    pub async fn open_embedded(opts: EmbeddedOptions) -> Result<Backend, BackendError> {
        Ok(Backend::Embedded(Arc::new(
            embedded::Embedded::open(opts).await?,
        )))
    }

    /// Connect to Redis at `opts.url`; fails when it does not answer within about 2 s.
    pub async fn open_redis(opts: RedisOptions) -> Result<Backend, BackendError> {
        Ok(Backend::Redis(Arc::new(
            redis_backend::RedisBackend::open(opts).await?,
        )))
    }

    /// `Ok(None)` = unknown, revoked, expired or invalid token (the client gets AUTH_STATUS 1);
    /// `Err` = the backend failed.
    ///
    /// Accepts stored tokens and JWTs (HS256, HS384, HS512; any other algorithm is rejected) with
    /// numeric `appid` and `uid` claims; `exp`, `nbf` and `iat` are validated when present, without
    /// leeway. The key is the per-app secret of the token's `appid` claim, else the global secret.
    /// A `uid` that is not > 0 (or a negative appid) makes the token invalid.
    pub async fn authenticate(&self, token: &str) -> Result<Option<AuthInfo>, BackendError> {
        let r = match self {
            Backend::Embedded(b) => b.authenticate(token).await,
            Backend::Redis(b) => b.authenticate(token).await,
        };
        self.observe_read(r)
    }

    /// Issue a random token (256 bits, 64 hex characters) for `(appid, uid, user_name)` and store it;
    /// it lives until revoked.
    pub async fn grant(
        &self,
        appid: i64,
        uid: i64,
        user_name: &str,
    ) -> Result<String, BackendError> {
        self.grant_expiring(appid, uid, user_name, None).await
    }

    /// [`Backend::grant`], and with `expires_in` (seconds, > 0) the token stops authenticating that long from now; without
    /// it the token lives until revoked.
    pub async fn grant_expiring(
        &self,
        appid: i64,
        uid: i64,
        user_name: &str,
        expires_in: Option<u64>,
    ) -> Result<String, BackendError> {
        check_ids(appid, uid)?;
        if expires_in == Some(0) {
            return Err(BackendError::InvalidArgument(
                "expires_in must be > 0 seconds (leave it out for a token that does not expire)"
                    .into(),
            ));
        }
        let r = match self {
            Backend::Embedded(b) => b.grant(appid, uid, user_name, expires_in).await,
            Backend::Redis(b) => b.grant(appid, uid, user_name, expires_in).await,
        };
        self.observe_write(r)
    }

    /// Revoke every stored token of the user; how many were removed. JWTs are not stored and stay
    /// valid until their `exp`; ending the user's sessions is the caller's part.
    pub async fn revoke_user(&self, appid: i64, uid: i64) -> Result<u64, BackendError> {
        check_ids(appid, uid)?;
        let r = match self {
            Backend::Embedded(b) => b.revoke_user(appid, uid).await,
            Backend::Redis(b) => b.revoke_user(appid, uid).await,
        };
        self.observe_write(r)
    }

    /// Revoke a stored token; `Ok(Some((appid, uid)))`, whose token it was, if it existed. It stops
    /// authenticating at once; ending the sessions that logged in with it is the caller's part.
    pub async fn revoke(&self, token: &str) -> Result<Option<(i64, i64)>, BackendError> {
        let r = match self {
            Backend::Embedded(b) => b.revoke(token).await,
            Backend::Redis(b) => b.revoke(token).await,
        };
        self.observe_write(r)
    }

    /// The user's flags; both false when never set.
    pub async fn user_flags(&self, appid: i64, uid: i64) -> Result<UserFlags, BackendError> {
        let r = match self {
            Backend::Embedded(b) => b.user_flags(appid, uid).await,
            Backend::Redis(b) => b.user_flags(appid, uid).await,
        };
        self.observe_read(r)
    }

    /// Set or clear the room speak-ban flag. In Redis mode this also publishes `speak_forbidden`;
    /// either way it reaches [`Backend::forbidden_events`].
    pub async fn set_forbidden(
        &self,
        appid: i64,
        uid: i64,
        forbidden: bool,
    ) -> Result<(), BackendError> {
        check_ids(appid, uid)?;
        let r = match self {
            Backend::Embedded(b) => b.set_forbidden(appid, uid, forbidden).await,
            Backend::Redis(b) => b.set_forbidden(appid, uid, forbidden).await,
        };
        self.observe_write(r)
    }

    /// Live speak-ban changes (docs/protocol.md §9.8), for sessions already logged in: in Redis
    /// mode every `speak_forbidden` publication (from GoBelieve's API server, other nodes, or
    /// [`Backend::set_forbidden`]); in embedded mode every `set_forbidden`. A receiver that lags
    /// (`RecvError::Lagged`) missed events and should re-read the flags of its users.
    pub fn forbidden_events(&self) -> tokio::sync::broadcast::Receiver<ForbiddenEvent> {
        match self {
            Backend::Embedded(b) => b.forbidden_events(),
            Backend::Redis(b) => b.forbidden_events(),
        }
    }

    /// Set or clear `notification_on`.
    pub async fn set_notification_on(
        &self,
        appid: i64,
        uid: i64,
        on: bool,
    ) -> Result<(), BackendError> {
        check_ids(appid, uid)?;
        let r = match self {
            Backend::Embedded(b) => b.set_notification_on(appid, uid, on).await,
            Backend::Redis(b) => b.set_notification_on(appid, uid, on).await,
        };
        self.observe_write(r)
    }

    /// The server-side integer device id (≥ 1) for (device string, platform): the same pair gives the
    /// same id for every user, and concurrent first calls agree (docs/protocol.md §8.2). The caller
    /// keeps GoBelieve's rule of device id 0 for web (platform 3) or an empty device string. A
    /// device string longer than [`MAX_DEVICE_LEN`] bytes is an `InvalidArgument`.
    pub async fn device_id(&self, device: &str, platform: u8) -> Result<i64, BackendError> {
        if device.len() > MAX_DEVICE_LEN {
            return Err(BackendError::InvalidArgument(format!(
                "device id string of {} bytes (limit {MAX_DEVICE_LEN})",
                device.len()
            )));
        }
        let r = match self {
            Backend::Embedded(b) => b.device_id(device, platform).await,
            Backend::Redis(b) => b.device_id(device, platform).await,
        };
        self.observe_read(r)
    }

    /// Records a write's outcome in the backend's health: a success shows that it works again.
    fn observe_write<T>(&self, r: Result<T, BackendError>) -> Result<T, BackendError> {
        self.write_behind().health.observe(&r);
        r
    }

    /// Records a read's outcome: a failure counts, a success proves nothing about writes (a full
    /// disk still serves reads) and leaves a failing backend failing.
    fn observe_read<T>(&self, r: Result<T, BackendError>) -> Result<T, BackendError> {
        if let Err(e) = &r {
            self.write_behind().health.failed(e);
        }
        r
    }

    /// The backend's health: failing since the first operation that failed because of the
    /// storage service, with the last error, until one succeeds again (probed in the background
    /// while failing). For health and readiness endpoints.
    pub fn health(&self) -> BackendHealth {
        self.write_behind().health.snapshot()
    }

    fn write_behind(&self) -> &write_behind::WriteBehind {
        match self {
            Backend::Embedded(b) => b.write_behind(),
            Backend::Redis(b) => b.write_behind(),
        }
    }

    /// Record a peer sync-key report (docs/protocol.md §10.5): kept only if greater; `key <= 0` is
    /// ignored. No I/O: persisted by the background flusher.
    pub fn report_sync_key(&self, appid: i64, uid: i64, key: i64) {
        self.write_behind().report_sync_key(appid, uid, key);
    }

    /// Record a super-group sync-key report; as [`Backend::report_sync_key`].
    pub fn report_group_sync_key(&self, appid: i64, uid: i64, gid: i64, key: i64) {
        self.write_behind()
            .report_group_sync_key(appid, uid, gid, key);
    }

    /// The peer sync-key hint (0 when none), including reports not yet persisted.
    pub async fn sync_key(&self, appid: i64, uid: i64) -> Result<i64, BackendError> {
        let r = match self {
            Backend::Embedded(b) => b.sync_key(appid, uid).await,
            Backend::Redis(b) => b.sync_key(appid, uid).await,
        };
        self.observe_read(r)
    }

    /// The super-group sync-key hint (0 when none), including reports not yet persisted.
    pub async fn group_sync_key(
        &self,
        appid: i64,
        uid: i64,
        gid: i64,
    ) -> Result<i64, BackendError> {
        let r = match self {
            Backend::Embedded(b) => b.group_sync_key(appid, uid, gid).await,
            Backend::Redis(b) => b.group_sync_key(appid, uid, gid).await,
        };
        self.observe_read(r)
    }

    /// Record the unread count (docs/protocol.md §12), last value wins. No I/O: persisted in the
    /// background.
    pub fn set_unread(&self, appid: i64, uid: i64, count: i32) {
        self.write_behind().set_unread(appid, uid, count);
    }

    /// The unread count (0 when none), including a value not yet persisted.
    pub async fn unread(&self, appid: i64, uid: i64) -> Result<i32, BackendError> {
        let r = match self {
            Backend::Embedded(b) => b.unread(appid, uid).await,
            Backend::Redis(b) => b.unread(appid, uid).await,
        };
        self.observe_read(r)
    }

    /// Reports dropped since start because the write-behind buffer was full (for metrics).
    pub fn dropped_reports(&self) -> u64 {
        self.write_behind().dropped()
    }

    /// Persist everything write-behind now (call at shutdown); a failing flush is retried a few
    /// times with back-off before its entries are given up.
    pub async fn flush(&self) -> Result<(), BackendError> {
        match self {
            Backend::Embedded(b) => b.flush().await,
            Backend::Redis(b) => b.flush().await,
        }
    }

    /// Binds push device tokens to the user (`POST /device/bind`); a token bound to another user of
    /// the app before is moved. See [`devices`] for where they are kept.
    pub async fn bind_devices(
        &self,
        appid: i64,
        uid: i64,
        tokens: &[(PushProvider, String)],
    ) -> Result<(), BackendError> {
        check_ids(appid, uid)?;
        devices::check_tokens(tokens)?;
        match self {
            Backend::Embedded(b) => b.bind_devices(appid, uid, tokens).await,
            Backend::Redis(b) => b.bind_devices(appid, uid, tokens).await,
        }
    }

    /// Unbinds push device tokens from the user (`POST /device/unbind`); returns how many were bound.
    pub async fn unbind_devices(
        &self,
        appid: i64,
        uid: i64,
        tokens: &[(PushProvider, String)],
    ) -> Result<u64, BackendError> {
        check_ids(appid, uid)?;
        devices::check_tokens(tokens)?;
        match self {
            Backend::Embedded(b) => b.unbind_devices(appid, uid, tokens).await,
            Backend::Redis(b) => b.unbind_devices(appid, uid, tokens).await,
        }
    }

    /// The user's bound devices, most recently bound first: what offline push sends to.
    pub async fn devices(&self, appid: i64, uid: i64) -> Result<Vec<BoundDevice>, BackendError> {
        check_ids(appid, uid)?;
        match self {
            Backend::Embedded(b) => b.devices(appid, uid).await,
            Backend::Redis(b) => b.devices(appid, uid).await,
        }
    }

    /// Turns offline push off (`on` = true) or back on for the user, or for one group's messages.
    pub async fn set_dnd(
        &self,
        appid: i64,
        uid: i64,
        scope: DndScope,
        on: bool,
    ) -> Result<(), BackendError> {
        check_ids(appid, uid)?;
        if let DndScope::Group(g) = scope {
            if g <= 0 {
                return Err(BackendError::InvalidArgument(format!(
                    "group id must be > 0 (got {g})"
                )));
            }
        }
        let r = match self {
            Backend::Embedded(b) => b.set_dnd(appid, uid, scope, on).await,
            Backend::Redis(b) => b.set_dnd(appid, uid, scope, on).await,
        };
        self.observe_write(r)
    }

    /// The user's do-not-disturb settings (none when never set).
    pub async fn dnd(&self, appid: i64, uid: i64) -> Result<DndSettings, BackendError> {
        check_ids(appid, uid)?;
        let r = match self {
            Backend::Embedded(b) => b.dnd(appid, uid).await,
            Backend::Redis(b) => b.dnd(appid, uid).await,
        };
        self.observe_read(r)
    }

    /// The user's display name if known (embedded: from their newest named token; Redis: the
    /// `name` field of `users_<appid>_<uid>`), else empty.
    pub async fn user_name(&self, appid: i64, uid: i64) -> Result<String, BackendError> {
        let r = match self {
            Backend::Embedded(b) => b.user_name(appid, uid).await,
            Backend::Redis(b) => b.user_name(appid, uid).await,
        };
        self.observe_read(r)
    }

    /// Replaces the supporters of a store (admin API).
    pub async fn set_supporters(
        &self,
        store_id: i64,
        list: &[Supporter],
    ) -> Result<(), BackendError> {
        supporters::check(store_id, list)?;
        match self {
            Backend::Embedded(b) => b.set_supporters(store_id, list).await,
            Backend::Redis(b) => b.set_supporters(store_id, list).await,
        }
    }

    /// The supporters of a store set through the admin API.
    pub async fn supporters(&self, store_id: i64) -> Result<Vec<Supporter>, BackendError> {
        match self {
            Backend::Embedded(b) => b.supporters(store_id).await,
            Backend::Redis(b) => b.supporters(store_id).await,
        }
    }

    /// `"embedded"` or `"redis"`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Redis(_) => "redis",
        }
    }
}
