//! `banter.toml`: the whole configuration of `banter serve`, its documented default ([`DEFAULT_TOML`],
//! printed by `banter config`), environment overrides (`BANTER_<SECTION>__<KEY>=value`) and validation.
//!
//! Every section is strict (`deny_unknown_fields`), so a misspelt key is an error rather than a silently
//! ignored setting. Loading collects every problem it finds and reports them together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use access::{ApiConfig, AppApiConfig, ServerConfig, SyncConfig, WebConfig};
use backend::{JwtOptions, MysqlGroupOptions, RedisPushOptions, WebhookOptions};
use media::MediaConfig;
use serde::{Deserialize, Serialize};

/// The documented default configuration. `banter serve` without a config file behaves exactly as if
/// this file were given (a test checks they agree).
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the message store and the embedded backend.
    pub data: DataConfig,
    pub server: ServerConfig,
    pub sync: SyncConfig,
    pub api: ApiConfig,
    /// The app API the SDKs call (uploads, device binding, supporters).
    pub app_api: AppApiConfig,
    /// The web chat client and admin console.
    pub web: WebConfig,
    /// Where uploads are kept and their limits.
    pub media: MediaConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub groups: GroupsConfig,
    pub push: PushConfig,
    pub moderation: ModerationConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub dir: PathBuf,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: PathBuf::from("./banter-data"),
        }
    }
}

/// `[store]`: the message store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub durability: String,
    pub fsync_interval_ms: u64,
    pub segment_mb: u64,
    pub checkpoint_interval_secs: u64,
    pub cache_mb: usize,
    pub max_body_bytes: usize,
    pub retention_days: u64,
    pub retention_max_gb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            durability: "always".into(),
            fsync_interval_ms: 100,
            segment_mb: 64,
            checkpoint_interval_secs: 10,
            cache_mb: 64,
            max_body_bytes: 64 * 1024,
            retention_days: 0,
            retention_max_gb: 0,
        }
    }
}

impl StoreConfig {
    /// The store engine's options for this section.
    pub fn options(&self) -> Result<store::StoreOptions, String> {
        let durability = match self.durability.as_str() {
            "always" => store::Durability::Always,
            "interval" => {
                if self.fsync_interval_ms == 0 {
                    return Err(
                        "store.fsync_interval_ms must be > 0 with durability \"interval\"".into(),
                    );
                }
                store::Durability::Interval(Duration::from_millis(self.fsync_interval_ms))
            }
            "none" => store::Durability::None,
            other => {
                return Err(format!(
                    "store.durability must be \"always\", \"interval\" or \"none\", got {other:?}"
                ))
            }
        };
        Ok(store::StoreOptions {
            durability,
            segment_bytes: self.segment_mb.max(1) << 20,
            checkpoint_interval: Duration::from_secs(self.checkpoint_interval_secs.max(1)),
            cache_bytes: self.cache_mb << 20,
            max_body_bytes: self.max_body_bytes,
            retention: store::Retention {
                max_age: (self.retention_days > 0)
                    .then(|| Duration::from_secs(self.retention_days * 86_400)),
                max_total_bytes: (self.retention_max_gb > 0).then_some(self.retention_max_gb << 30),
            },
            ..store::StoreOptions::default()
        })
    }
}

/// `[auth]`: where tokens, user flags, device ids and sync-key hints live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub backend: String,
    pub redis_url: String,
    pub flush_interval_ms: u64,
    pub jwt: JwtOptions,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            backend: "embedded".into(),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            flush_interval_ms: backend::DEFAULT_FLUSH_INTERVAL_MS,
            jwt: JwtOptions::default(),
        }
    }
}

/// `[groups]`: the group directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    pub backend: String,
    pub cache_groups: usize,
    pub max_members: usize,
    pub mysql: MysqlGroupOptions,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            backend: "embedded".into(),
            cache_groups: backend::DEFAULT_CACHE_GROUPS,
            max_members: backend::DEFAULT_MAX_MEMBERS,
            mysql: MysqlGroupOptions::default(),
        }
    }
}

/// `[push]`: offline-push jobs for receivers without an online session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    pub backend: String,
    pub redis: RedisPushOptions,
    pub webhook: WebhookOptions,
    /// `backend = "native"`: banter's own APNs and FCM senders (`docs/push.md`).
    pub native: push::NativeOptions,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            backend: "none".into(),
            redis: RedisPushOptions::default(),
            webhook: WebhookOptions::default(),
            native: push::NativeOptions::default(),
        }
    }
}

/// `[moderation]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModerationConfig {
    pub words_file: String,
    pub reload_secs: u64,
}

impl Default for ModerationConfig {
    fn default() -> Self {
        ModerationConfig {
            words_file: String::new(),
            reload_secs: 10,
        }
    }
}

/// `[cluster]`: when this access node is one of several (`banter im`). Empty lists = single node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name in logs and metrics.
    pub node_id: String,
    /// Routers (`banter imr`). A user's or room's router is `route_addrs[abs(id) mod N]`.
    pub route_addrs: Vec<String>,
    /// Routers for super-group publishes; empty = `route_addrs`.
    pub group_route_addrs: Vec<String>,
    /// Store nodes (`banter ims`) holding personal queues, sharded by `abs(uid) mod N`. Empty = the
    /// embedded store in `data.dir`.
    pub storage_addrs: Vec<String>,
    /// Store nodes holding super-group queues, sharded by `abs(gid) mod N`; empty = `storage_addrs`.
    pub group_storage_addrs: Vec<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Applies `BANTER_<SECTION>__<KEY>=value` overrides from `vars` to `table`. Values are read as TOML
/// (numbers, booleans, quoted strings, arrays) and fall back to a plain string.
pub fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
    errors: &mut Vec<String>,
) {
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("BANTER_") else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value.clone()));
        let path: Vec<&str> = std::iter::once(section.as_str())
            .chain(key.split("__"))
            .collect();
        if let Err(e) = set_path(table, &path, parsed) {
            errors.push(format!("{name}: {e}"));
        }
    }
}

/// Sets `table[path[0]][path[1]]…` to `value`, creating tables on the way.
fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.to_string(), value);
            Ok(())
        }
        [first, rest @ ..] => match table
            .entry(first.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => set_path(t, rest, value),
            _ => Err(format!("{first} is not a table")),
        },
    }
}

/// Reads a TOML file of any role's configuration (or nothing, for the defaults), applies
/// `BANTER_<SECTION>__<KEY>` environment overrides and deserializes it.
pub fn load_role_config<T: serde::de::DeserializeOwned>(path: Option<&Path>) -> Result<T, String> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?,
        None => String::new(),
    };
    let mut errors = Vec::new();
    let mut table: toml::Table = text.parse().map_err(|e| format!("config: {e}"))?;
    apply_env(&mut table, std::env::vars(), &mut errors);
    let parsed = toml::Value::Table(table).try_into::<T>();
    match parsed {
        Ok(v) if errors.is_empty() => Ok(v),
        Ok(_) => Err(errors.join("\n")),
        Err(e) => {
            errors.push(e.to_string());
            Err(errors.join("\n"))
        }
    }
}

impl Config {
    /// Loads `path` (or the defaults when `None`), applies environment overrides and validates.
    /// Every problem found is reported in one error.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?,
            None => String::new(),
        };
        Config::from_parts(&text, std::env::vars())
    }

    /// Parses `text` with the given environment overrides and validates the result.
    pub fn from_parts(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, String> {
        let mut errors = Vec::new();
        let mut table: toml::Table = text.parse().map_err(|e| format!("config: {e}"))?;
        apply_env(&mut table, env, &mut errors);
        let config: Config = match toml::Value::Table(table).try_into() {
            Ok(c) => c,
            Err(e) => {
                errors.push(e.to_string());
                return Err(errors.join("\n"));
            }
        };
        errors.extend(config.validate());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors.join("\n"))
        }
    }

    /// Every semantic problem of the configuration.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self.store.options() {
            errors.push(e);
        }
        match self.auth.backend.as_str() {
            "embedded" => {}
            "redis" if !self.auth.redis_url.is_empty() => {}
            "redis" => {
                errors.push("auth.redis_url is required with auth.backend = \"redis\"".into())
            }
            other => errors.push(format!(
                "auth.backend must be \"embedded\" or \"redis\", got {other:?}"
            )),
        }
        if !matches!(self.groups.backend.as_str(), "embedded" | "mysql") {
            errors.push(format!(
                "groups.backend must be \"embedded\" or \"mysql\", got {:?}",
                self.groups.backend
            ));
        }
        if !matches!(
            self.push.backend.as_str(),
            "none" | "redis" | "webhook" | "native"
        ) {
            errors.push(format!(
                "push.backend must be \"none\", \"redis\", \"webhook\" or \"native\", got {:?}",
                self.push.backend
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            errors.push(format!(
                "log.format must be \"text\" or \"json\", got {:?}",
                self.log.format
            ));
        }
        if self.server.max_body == 0 || self.server.max_body > proto::MAX_BODY_LEN {
            errors.push(format!(
                "server.max_body must be between 1 and {}",
                proto::MAX_BODY_LEN
            ));
        }
        errors.extend(self.app_api.validate());
        errors.extend(self.web.validate());
        errors.extend(self.media.validate());
        if self.sync.batch_messages == 0 {
            errors.push("sync.batch_messages must be > 0".into());
        }
        if self.server.tcp.is_empty()
            && self.server.ws.is_empty()
            && self.server.tls.is_empty()
            && self.server.wss.is_empty()
        {
            errors.push("no client listener configured (server.tcp, server.tls, server.ws, server.wss are all empty)".into());
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_matches_defaults() {
        let parsed = Config::from_parts(DEFAULT_TOML, std::iter::empty()).expect("default parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn env_overrides_apply() {
        let env = vec![
            (
                "BANTER_SERVER__TCP".to_string(),
                "127.0.0.1:4000".to_string(),
            ),
            ("BANTER_STORE__DURABILITY".to_string(), "none".to_string()),
            ("BANTER_SERVER__MAX_INFLIGHT".to_string(), "7".to_string()),
            ("BANTER_AUTH__JWT__SECRET".to_string(), "s3cret".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::from_parts("", env.into_iter()).expect("valid");
        assert_eq!(c.server.tcp, "127.0.0.1:4000");
        assert_eq!(c.store.durability, "none");
        assert_eq!(c.server.max_inflight, 7);
        assert_eq!(c.auth.jwt.secret.as_deref(), Some("s3cret"));
    }

    #[test]
    fn errors_are_reported_together() {
        let text = "[store]\ndurability = \"sometimes\"\n[auth]\nbackend = \"ldap\"\n[log]\nformat = \"xml\"\n";
        let e = Config::from_parts(text, std::iter::empty()).unwrap_err();
        assert!(e.contains("store.durability"), "{e}");
        assert!(e.contains("auth.backend"), "{e}");
        assert!(e.contains("log.format"), "{e}");
    }

    #[test]
    fn media_and_app_api_sections_are_validated() {
        let text = "[media]\nbackend = \"ftp\"\naccess = \"everyone\"\nthumbnail_sizes = []\n[app_api]\nprefix = \"/v{x}\"\npublic_url = \"im.example.com\"\n";
        let e = Config::from_parts(text, std::iter::empty()).unwrap_err();
        for key in [
            "media.backend",
            "media.access",
            "media.thumbnail_sizes",
            "app_api.prefix",
            "app_api.public_url",
        ] {
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = Config::from_parts("[media]\nbackend = \"s3\"\n", std::iter::empty()).unwrap_err();
        assert!(e.contains("media.s3.bucket"), "{e}");
        let env = vec![("BANTER_MEDIA__S3__BUCKET".to_string(), "photos".to_string())];
        let c = Config::from_parts("[media]\nbackend = \"s3\"\n", env.into_iter()).expect("valid");
        assert_eq!(c.media.s3.bucket, "photos");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::from_parts("[server]\nprot = 1\n", std::iter::empty()).unwrap_err();
        assert!(e.contains("prot"), "{e}");
    }
}
