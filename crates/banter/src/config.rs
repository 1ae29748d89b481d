//! `banter.toml`: the whole configuration of `banter serve`, its documented default ([`DEFAULT_TOML`],
//! printed by `banter config`), environment overrides (`BANTER_<SECTION>__<KEY>=value`) and validation.
//!
//! Every section is strict (`deny_unknown_fields`), so a misspelt key is an error rather than a silently
//! ignored setting. Loading collects every problem it finds and reports them together.

use std::path::{Path, PathBuf};

use access::{ApiConfig, AppApiConfig, RelationshipsConfig, ServerConfig, SyncConfig, WebConfig};
use backend::{JwtOptions, MysqlGroupOptions, RedisPushOptions, WebhookOptions};
use media::MediaConfig;
use serde::{Deserialize, Serialize};
use store::StoreSettings;

use crate::load::{self, ConfigError, Loaded, Override};
pub use node::log::{LogFormat, LogSettings};

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
    /// The message store (the same section as `banter ims`'s `[store]`).
    pub store: StoreSettings,
    pub auth: AuthConfig,
    pub groups: GroupsConfig,
    /// Friendship and blacklist checks (relations live where `groups.backend` says).
    pub relationships: RelationshipsConfig,
    pub push: PushConfig,
    pub moderation: ModerationConfig,
    pub cluster: ClusterConfig,
    pub log: LogSettings,
    pub runtime: node::runtime::RuntimeSettings,
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

/// `[auth]`: where tokens, user flags, device ids and sync-key hints live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Where tokens and user state live.
    pub backend: AuthBackend,
    pub redis_url: String,
    pub flush_interval_ms: u64,
    pub jwt: JwtOptions,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            backend: AuthBackend::Embedded,
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
    /// Where the group directory lives.
    pub backend: GroupsBackend,
    pub cache_groups: usize,
    pub max_members: usize,
    pub mysql: MysqlGroupOptions,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            backend: GroupsBackend::Embedded,
            cache_groups: backend::DEFAULT_CACHE_GROUPS,
            max_members: backend::DEFAULT_MAX_MEMBERS,
            mysql: MysqlGroupOptions::default(),
        }
    }
}

/// `[auth].backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthBackend {
    /// SQLite in the data directory.
    #[default]
    Embedded,
    /// GoBelieve's Redis keys (`auth.redis_url`).
    Redis,
}

/// `[groups].backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupsBackend {
    /// SQLite in the data directory.
    #[default]
    Embedded,
    /// GoBelieve's MySQL tables (`groups.mysql`).
    Mysql,
}

pub use route::PushBackend;

/// `[push]`: offline-push jobs for receivers without an online session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// `none`, `redis`, `webhook` or `native`.
    pub backend: PushBackend,
    pub redis: RedisPushOptions,
    pub webhook: WebhookOptions,
    /// `backend = "native"`: banter's own APNs and FCM senders (`docs/push.md`).
    pub native: push::NativeOptions,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            backend: PushBackend::None,
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// etcd endpoints (`http://host:port`). Set = discovery: this node registers, follows the
    /// live routers (in place of `route_addrs`) and each store shard's elected leader.
    pub etcd: Vec<String>,
    /// Key prefix of this cluster in etcd.
    pub etcd_prefix: String,
    /// etcd lease TTL in seconds for this node's registration.
    pub lease_ttl_secs: u64,
    /// With etcd: the store shards holding personal queues, by name (a user's is
    /// `storage_shards[abs(uid) mod N]`), in place of `storage_addrs`.
    pub storage_shards: Vec<String>,
    /// With etcd: the shards holding super-group queues; empty = `storage_shards`.
    pub group_storage_shards: Vec<String>,
    /// Host registered for this node's listeners; "" = the addresses as bound.
    pub advertise_host: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            route_addrs: Vec::new(),
            group_route_addrs: Vec::new(),
            storage_addrs: Vec::new(),
            group_storage_addrs: Vec::new(),
            etcd: Vec::new(),
            etcd_prefix: "/banter".into(),
            lease_ttl_secs: 3,
            storage_shards: Vec::new(),
            group_storage_shards: Vec::new(),
            advertise_host: String::new(),
        }
    }
}

/// Reads a TOML file of any role's configuration (or nothing, for the defaults), applies
/// `BANTER_*` environment variables and `overrides`, and deserializes it; every problem at once.
pub fn load_role_config<T>(
    path: Option<&Path>,
    overrides: &[Override],
    validate: impl Fn(&T) -> Vec<String>,
) -> Result<T, ConfigError>
where
    T: serde::de::DeserializeOwned + Serialize + Default,
{
    load::load(path, std::env::vars(), overrides, validate).map(|l| l.value)
}

impl Config {
    /// Loads `path` (or the defaults when `None`) with the process environment and command-line
    /// `overrides`, and validates; every problem found is reported in one error.
    pub fn load(
        path: Option<&Path>,
        overrides: &[Override],
    ) -> Result<Loaded<Config>, ConfigError> {
        load::load(path, std::env::vars(), overrides, Config::validate)
    }

    /// Parses `text` with the given environment and validates the result (problems as one string).
    pub fn from_parts(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, String> {
        load::load_str(text, Path::new("<config>"), env, &[], Config::validate)
            .map(|l| l.value)
            .map_err(|e| e.to_string())
    }

    /// Every semantic problem of the configuration.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = self.store.validate("store");
        if self.auth.backend == AuthBackend::Redis && self.auth.redis_url.is_empty() {
            errors.push("auth.redis_url is required with auth.backend = \"redis\"".into());
        }
        errors.extend(crate::logging::problems(&self.log));
        errors.extend(self.runtime.problems());
        if self.server.max_body == 0 || self.server.max_body > proto::MAX_BODY_LEN {
            errors.push(format!(
                "server.max_body must be between 1 and {}",
                proto::MAX_BODY_LEN
            ));
        }
        if self.server.room_backlog_bytes == 0 {
            errors.push("server.room_backlog_bytes must be > 0".into());
        }
        if self.server.room_backlog_secs == 0 {
            errors.push("server.room_backlog_secs must be > 0".into());
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
        assert_eq!(c.store.durability, store::DurabilityMode::None);
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
    fn several_mistakes_are_reported_with_their_lines() {
        let text = "[server]\nprot = 1\ntcp = 4000\n[store]\ndurability = \"alway\"\nfsync_interval_ms = \"x\"\n[log]\nlevel = \"info,=[\"\n";
        let e = load::load_str::<Config>(
            text,
            Path::new("banter.toml"),
            vec![("BANTER_SERVER_MAX_BODY".to_string(), "1".to_string())],
            &[],
            Config::validate,
        )
        .unwrap_err();
        let s = e.to_string();
        assert_eq!(e.0.len(), 6, "{s}");
        assert!(
            s.contains("banter.toml:2: unknown key `server.prot`"),
            "{s}"
        );
        assert!(
            s.contains(
                "banter.toml:3: server.tcp: invalid type: integer `4000`, expected a string"
            ),
            "{s}"
        );
        assert!(s.contains("banter.toml:5: store.durability: \"alway\" is not one of \"always\", \"interval\", \"none\" (did you mean \"always\"?)"), "{s}");
        assert!(
            s.contains("banter.toml:6: store.fsync_interval_ms: invalid type"),
            "{s}"
        );
        assert!(s.contains("banter.toml:8: log.level:"), "{s}");
        assert!(s.contains("environment variable BANTER_SERVER_MAX_BODY: unknown key `server_max_body` (did you mean BANTER_SERVER__MAX_BODY?)"), "{s}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::from_parts("[server]\nprot = 1\n", std::iter::empty()).unwrap_err();
        assert!(e.contains("prot"), "{e}");
    }
}
