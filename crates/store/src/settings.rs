//! The store's configuration section as operators write it (`[store]` of `banter serve` and of
//! `banter ims`): one serde type shared by both roles, turned into [`StoreOptions`] in one place.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::options::{Durability, Retention, StoreOptions};

/// `durability` in a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// fsync before acknowledging (group commit).
    #[default]
    Always,
    /// fsync at most `fsync_interval_ms` after a write.
    Interval,
    /// Never fsync the log (only sealed segments and checkpoints).
    None,
}

/// `[store]`: durability, segment size, checkpoint cadence, cache, largest body and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// When an append counts as durable.
    pub durability: DurabilityMode,
    /// fsync period with durability `interval`, in ms (> 0).
    pub fsync_interval_ms: u64,
    /// Size of one log segment file in MiB.
    pub segment_mb: u64,
    /// Seconds between background checkpoints of the queue heads (bounds restart replay).
    pub checkpoint_interval_secs: u64,
    /// MiB of recently written log kept in memory for reads (and replication).
    pub cache_mb: usize,
    /// Largest stored message body in bytes.
    pub max_body_bytes: usize,
    /// Drop whole sealed segments older than this many days (0 = keep forever).
    pub retention_days: u64,
    /// Drop the oldest sealed segments while the log exceeds this many GiB (0 = no limit).
    pub retention_max_gb: u64,
    /// Most idempotency keys remembered, so a retried append is not stored twice (0 = none).
    pub dedupe_keys: usize,
    /// MiB of the log's end whose keys are remembered (read again at start-up).
    pub dedupe_log_mb: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            durability: DurabilityMode::Always,
            fsync_interval_ms: 100,
            segment_mb: 64,
            checkpoint_interval_secs: 10,
            cache_mb: 64,
            max_body_bytes: 64 * 1024,
            retention_days: 0,
            retention_max_gb: 0,
            dedupe_keys: 100_000,
            dedupe_log_mb: 64,
        }
    }
}

impl StoreSettings {
    /// Problems of this section; each message starts with `<prefix>.<key>`.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.durability == DurabilityMode::Interval && self.fsync_interval_ms == 0 {
            errors.push(format!(
                "{prefix}.fsync_interval_ms must be > 0 with durability \"interval\""
            ));
        }
        if self.max_body_bytes == 0 {
            errors.push(format!("{prefix}.max_body_bytes must be > 0"));
        }
        if self.dedupe_keys > 10_000_000 {
            errors.push(format!(
                "{prefix}.dedupe_keys must be at most 10000000 (about 1.2 GB of memory)"
            ));
        }
        if self.dedupe_keys > 0 && self.dedupe_log_mb == 0 {
            errors.push(format!(
                "{prefix}.dedupe_log_mb must be > 0 when dedupe_keys is"
            ));
        }
        errors
    }

    /// The engine options for this section (other options keep their defaults).
    pub fn options(&self) -> StoreOptions {
        let durability = match self.durability {
            DurabilityMode::Always => Durability::Always,
            DurabilityMode::Interval => {
                Durability::Interval(Duration::from_millis(self.fsync_interval_ms.max(1)))
            }
            DurabilityMode::None => Durability::None,
        };
        StoreOptions {
            durability,
            segment_bytes: self.segment_mb.max(1) << 20,
            checkpoint_interval: Duration::from_secs(self.checkpoint_interval_secs.max(1)),
            cache_bytes: self.cache_mb << 20,
            max_body_bytes: self.max_body_bytes,
            retention: Retention {
                max_age: (self.retention_days > 0)
                    .then(|| Duration::from_secs(self.retention_days * 86_400)),
                max_total_bytes: (self.retention_max_gb > 0).then_some(self.retention_max_gb << 30),
            },
            dedupe_keys: self.dedupe_keys,
            dedupe_log_bytes: self.dedupe_log_mb << 20,
            ..StoreOptions::default()
        }
    }
}
