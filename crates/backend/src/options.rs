//! Start-up options of both backend variants. They double as sections of `banter.toml`
//! (serde with `deny_unknown_fields` and defaults for every field).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default write-behind flush interval for sync-key hints and unread counts.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 200;

/// JWT verification keys. A JWT is accepted when it is HMAC-signed (HS256, HS384 or HS512) with the
/// secret of the app named by its `appid` claim, or, when that app has no secret of its own, with the
/// global secret. With no secret configured at all, JWT authentication is off.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtOptions {
    /// Global HMAC secret (raw bytes of the string) for apps without a secret of their own.
    /// GoBelieve's `jwt_signing_key`. Unset: only apps listed in `app_secrets` accept JWTs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Per-app HMAC secrets, keyed by appid written as a string: `"7" = "secret-of-app-7"`.
    #[serde(
        serialize_with = "ser_app_secrets",
        deserialize_with = "de_app_secrets"
    )]
    pub app_secrets: BTreeMap<i64, String>,
}

/// Secrets are redacted, so logging the configuration does not leak them.
impl std::fmt::Debug for JwtOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtOptions")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("app_secrets", &self.app_secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl JwtOptions {
    /// True when at least one secret is configured, i.e. JWTs can be verified at all.
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || !self.app_secrets.is_empty()
    }
}

fn ser_app_secrets<S: Serializer>(map: &BTreeMap<i64, String>, s: S) -> Result<S::Ok, S::Error> {
    let as_strings: BTreeMap<String, &String> =
        map.iter().map(|(k, v)| (k.to_string(), v)).collect();
    as_strings.serialize(s)
}

fn de_app_secrets<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<i64, String>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.trim()
                .parse::<i64>()
                .map(|appid| (appid, v))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "app_secrets key {k:?} is not an integer appid"
                    ))
                })
        })
        .collect()
}

/// The embedded backend: one SQLite file, nothing to install.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedOptions {
    /// The SQLite database file. Its parent directory is created when missing.
    pub path: PathBuf,
    /// JWT verification keys (also accepted in embedded mode).
    pub jwt: JwtOptions,
    /// How often (milliseconds) reported sync keys and unread counts are written to the file in one
    /// transaction. They are hints: a crash loses at most this much of them.
    pub flush_interval_ms: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            path: PathBuf::from("data/backend.sqlite3"),
            jwt: JwtOptions::default(),
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
        }
    }
}

/// The GoBelieve-compatible Redis backend (docs/compatibility.md, *GoBelieve's shared state*), for
/// running beside an existing GoBelieve API server that issues tokens.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisOptions {
    /// `redis://[:password@]host:port/db` (password and database number in the URL).
    pub url: String,
    /// JWT verification keys (checked before the `access_token_<token>` lookup for JWT-shaped tokens).
    pub jwt: JwtOptions,
    /// How often (milliseconds) reported sync keys and unread counts are written to Redis in one
    /// pipeline. They are hints: a crash loses at most this much of them.
    pub flush_interval_ms: u64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379/0".to_owned(),
            jwt: JwtOptions::default(),
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
        }
    }
}

/// Default bound on cached groups (each holds its member map).
pub const DEFAULT_CACHE_GROUPS: usize = 100_000;
/// Default largest group (members).
pub const DEFAULT_MAX_MEMBERS: usize = 100_000;
/// Default bound on queued offline-push jobs.
pub const DEFAULT_PUSH_QUEUE_CAPACITY: usize = 100_000;
/// Default most receivers in one group push job.
pub const DEFAULT_MAX_RECEIVERS_PER_JOB: usize = 1000;

/// The embedded group directory: its own SQLite file, nothing to install.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedGroupOptions {
    /// The SQLite database file of groups and members. Its parent directory is created when missing.
    pub path: PathBuf,
    /// Most groups kept in memory (each with its member map); least recently loaded ones beyond
    /// this are dropped and reloaded from the file on their next use.
    pub cache_groups: usize,
    /// Largest group, in members: a create or add that would exceed it is refused.
    pub max_members: usize,
}

impl Default for EmbeddedGroupOptions {
    fn default() -> Self {
        EmbeddedGroupOptions {
            path: PathBuf::from("data/groups.sqlite3"),
            cache_groups: DEFAULT_CACHE_GROUPS,
            max_members: DEFAULT_MAX_MEMBERS,
        }
    }
}

/// The GoBelieve-compatible group directory: the `group` and `group_member` tables of a MySQL or
/// MariaDB database, kept current through the Redis stream `group_manager_stream`
/// (docs/compatibility.md, *GoBelieve's shared state*), so GoBelieve's API server and other nodes
/// can change groups.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlGroupOptions {
    /// `mysql://user:password@host:port/database`. Missing tables are created; existing ones are
    /// used as they are.
    pub url: String,
    /// The Redis holding `groups_actions` and `group_manager_stream`:
    /// `redis://[:password@]host:port/db`.
    pub redis_url: String,
    /// Most groups kept in memory (each with its member map); others are reloaded from MySQL on
    /// their next use.
    pub cache_groups: usize,
    /// Largest group, in members: a create or add that would exceed it is refused.
    pub max_members: usize,
    /// Most MySQL connections in the pool.
    pub max_connections: u32,
    /// Approximate length `group_manager_stream` is trimmed to when this server appends to it
    /// (`XADD … MAXLEN ~ n`); 0 = never trim.
    pub stream_max_len: u64,
}

impl Default for MysqlGroupOptions {
    fn default() -> Self {
        MysqlGroupOptions {
            url: "mysql://root@127.0.0.1:3306/gobelieve".to_owned(),
            redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            cache_groups: DEFAULT_CACHE_GROUPS,
            max_members: DEFAULT_MAX_MEMBERS,
            max_connections: 8,
            stream_max_len: 100_000,
        }
    }
}

/// Offline push through the GoBelieve Redis lists (`push_queue`, `group_push_queue`,
/// `system_push_queue`, `customer_push_queue_v2`; docs/compatibility.md, *GoBelieve's shared
/// state*), read by an external push service.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisPushOptions {
    /// `redis://[:password@]host:port/db`.
    pub url: String,
    /// Most jobs waiting in memory; jobs pushed beyond it are dropped and counted.
    pub queue_capacity: usize,
    /// Most jobs written in one MULTI/EXEC.
    pub batch: usize,
    /// Group jobs with more receivers are split into several jobs of at most this many.
    pub max_receivers_per_job: usize,
}

impl Default for RedisPushOptions {
    fn default() -> Self {
        RedisPushOptions {
            url: "redis://127.0.0.1:6379/0".to_owned(),
            queue_capacity: DEFAULT_PUSH_QUEUE_CAPACITY,
            batch: 1000,
            max_receivers_per_job: DEFAULT_MAX_RECEIVERS_PER_JOB,
        }
    }
}

/// Offline push by HTTP POST of JSON batches to a webhook (the embedded deployment's push service).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookOptions {
    /// `http(s)://host[:port]/path` receiving `POST`s of JSON arrays of jobs.
    pub url: String,
    /// Sent as `Authorization: Bearer <secret>` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Most jobs waiting in memory; jobs pushed beyond it are dropped and counted.
    pub queue_capacity: usize,
    /// Most jobs in one POST.
    pub batch: usize,
    /// Timeout of one POST (connect, send, and response status), in milliseconds.
    pub timeout_ms: u64,
    /// Attempts per batch (the first included) before it is dropped and counted. Connection
    /// errors, timeouts, 408, 429 and 5xx are retried; other non-2xx answers drop the batch at once.
    pub max_attempts: u32,
    /// Wait before the first retry, in milliseconds (plus jitter); doubled on each further retry
    /// (at most 30 s).
    pub backoff_ms: u64,
    /// Group jobs with more receivers are split into several jobs of at most this many.
    pub max_receivers_per_job: usize,
    /// A PEM file of extra certificate authorities to trust for an `https://` URL (a private CA);
    /// empty = the platform's roots only.
    pub ca_file: String,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            url: "http://127.0.0.1:8080/push".to_owned(),
            secret: None,
            queue_capacity: DEFAULT_PUSH_QUEUE_CAPACITY,
            batch: 100,
            timeout_ms: 5000,
            max_attempts: 5,
            backoff_ms: 200,
            max_receivers_per_job: DEFAULT_MAX_RECEIVERS_PER_JOB,
            ca_file: String::new(),
        }
    }
}

/// The secret is redacted, so logging the configuration does not leak it.
impl std::fmt::Debug for WebhookOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookOptions")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("queue_capacity", &self.queue_capacity)
            .field("batch", &self.batch)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_ms", &self.backoff_ms)
            .field("max_receivers_per_job", &self.max_receivers_per_job)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}
