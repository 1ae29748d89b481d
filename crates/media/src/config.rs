//! `[media]`: where uploads are kept and the limits that apply to them. Embedded in `banter.toml` by
//! the binary; every field has a documented default (`crates/banter/src/default.toml`).

use serde::{Deserialize, Serialize};

/// `media.backend`: where uploads are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MediaBackend {
    /// Files under `media.dir`.
    #[default]
    Local,
    /// An S3-compatible bucket (`[media.s3]`).
    S3,
}

/// `media.access`: who may download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MediaAccess {
    /// Users of the media's app (Bearer token), or anyone holding a signed URL.
    #[default]
    App,
    /// Anyone with the URL.
    Public,
}

/// `[media]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// `"local"`: files under `dir`; `"s3"`: an S3-compatible bucket (`[media.s3]`).
    pub backend: MediaBackend,
    /// Directory of the local backend, and of every backend's upload spool files. Empty:
    /// `<data.dir>/media`.
    pub dir: String,
    /// Who may download: `"app"` — users of the media's app (Bearer token), or anyone holding a
    /// signed URL; `"public"` — anyone with the URL.
    pub access: MediaAccess,
    /// HMAC key of signed URLs (`GET <url>?expires=…&sig=…`). Empty disables signing. Access nodes
    /// sharing a bucket need the same key.
    pub signing_secret: String,
    /// Lifetime of a signed URL when the request does not name one.
    pub signed_url_ttl_secs: u64,
    /// Longest lifetime a signed URL may be given.
    pub signed_url_max_ttl_secs: u64,
    /// Largest image (`POST /images`), in bytes.
    pub max_image_bytes: u64,
    /// Largest voice clip (`POST /audios`), in bytes.
    pub max_audio_bytes: u64,
    /// Largest file (`POST /files`), in bytes.
    pub max_file_bytes: u64,
    /// Largest image accepted, in pixels (width × height); bounds the memory a thumbnail takes.
    pub max_image_pixels: u64,
    /// Thumbnail edges clients may ask for (`<url>@<w>w_<h>h_<0|1>c`, each of w and h one of these).
    pub thumbnail_sizes: Vec<u32>,
    /// Thumbnails computed at once; further requests wait.
    pub thumbnail_workers: usize,
    /// Bytes one user may keep (all their uploads and thumbnails), in MiB. 0 = no quota.
    pub user_quota_mb: u64,
    /// Uploads one user may start per minute. 0 = no limit.
    pub uploads_per_minute: u32,
    /// Uploads in progress at once on this node; more are refused with 429.
    pub max_concurrent_uploads: usize,
    /// Seconds an upload may go without receiving a byte before it is abandoned.
    pub idle_timeout_secs: u64,
    /// `Cache-Control: max-age` of downloads (content never changes under a URL).
    pub cache_max_age_secs: u64,
    pub s3: S3Config,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            backend: MediaBackend::Local,
            dir: String::new(),
            access: MediaAccess::App,
            signing_secret: String::new(),
            signed_url_ttl_secs: 3600,
            signed_url_max_ttl_secs: 7 * 86_400,
            max_image_bytes: 10 << 20,
            max_audio_bytes: 10 << 20,
            max_file_bytes: 100 << 20,
            max_image_pixels: 40_000_000,
            thumbnail_sizes: vec![128, 256, 512],
            thumbnail_workers: 2,
            user_quota_mb: 0,
            uploads_per_minute: 0,
            max_concurrent_uploads: 256,
            idle_timeout_secs: 30,
            cache_max_age_secs: 31_536_000,
            s3: S3Config::default(),
        }
    }
}

/// The signing secret is redacted, so logging the configuration does not leak it.
impl std::fmt::Debug for MediaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaConfig")
            .field("backend", &self.backend)
            .field("dir", &self.dir)
            .field("access", &self.access)
            .field(
                "signing_secret",
                &(!self.signing_secret.is_empty()).then_some("<redacted>"),
            )
            .field("max_image_bytes", &self.max_image_bytes)
            .field("max_audio_bytes", &self.max_audio_bytes)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("user_quota_mb", &self.user_quota_mb)
            .field("uploads_per_minute", &self.uploads_per_minute)
            .field("s3", &self.s3)
            .finish_non_exhaustive()
    }
}

impl MediaConfig {
    /// Every semantic problem of the section, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.backend == MediaBackend::S3 && self.s3.bucket.trim().is_empty() {
            errors.push("media.s3.bucket is required with media.backend = \"s3\"".into());
        }
        for (name, v) in [
            ("max_image_bytes", self.max_image_bytes),
            ("max_audio_bytes", self.max_audio_bytes),
            ("max_file_bytes", self.max_file_bytes),
            ("max_image_pixels", self.max_image_pixels),
        ] {
            if v == 0 {
                errors.push(format!("media.{name} must be > 0"));
            }
        }
        if self.thumbnail_sizes.is_empty()
            || self.thumbnail_sizes.iter().any(|&s| s == 0 || s > 4096)
        {
            errors.push("media.thumbnail_sizes must list edges between 1 and 4096".into());
        }
        if self.thumbnail_workers == 0 || self.max_concurrent_uploads == 0 {
            errors.push(
                "media.thumbnail_workers and media.max_concurrent_uploads must be > 0".into(),
            );
        }
        if self.idle_timeout_secs == 0 {
            errors.push("media.idle_timeout_secs must be > 0".into());
        }
        if self.signed_url_ttl_secs == 0 || self.signed_url_ttl_secs > self.signed_url_max_ttl_secs
        {
            errors.push(
                "media.signed_url_ttl_secs must be > 0 and at most media.signed_url_max_ttl_secs"
                    .into(),
            );
        }
        errors
    }
}

/// `[media.s3]`: the bucket of `backend = "s3"`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// `http(s)://host:port` of an S3-compatible service; empty = AWS for `region`.
    pub endpoint: String,
    /// Credentials; empty = the environment's (`AWS_ACCESS_KEY_ID`, instance profile, …).
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Key prefix inside the bucket (e.g. `"banter/"`).
    pub prefix: String,
    /// Allow a plain-HTTP endpoint (tests, a service on a private network).
    pub allow_http: bool,
    /// `bucket.host` addressing instead of `host/bucket`.
    pub virtual_hosted_style: bool,
    /// Multipart part size in MiB (at least 5, S3's minimum); files up to this size are one PUT.
    pub part_size_mb: u64,
    /// Seconds one request to the service may take.
    pub timeout_secs: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            prefix: String::new(),
            allow_http: false,
            virtual_hosted_style: false,
            part_size_mb: 8,
            timeout_secs: 60,
        }
    }
}

/// The secret key is redacted.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &(!self.secret_access_key.is_empty()).then_some("<redacted>"),
            )
            .field("prefix", &self.prefix)
            .field("allow_http", &self.allow_http)
            .field("part_size_mb", &self.part_size_mb)
            .finish_non_exhaustive()
    }
}
