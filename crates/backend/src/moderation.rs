//! Moderation: the banned-word filter applied to TEXT messages (docs/protocol.md §9.8), reloadable
//! without a restart, and live updates of the room speak-ban flag (`forbidden`, docs/protocol.md
//! §9.8).
//!
//! * [`WordFilter`]: one `aho-corasick` automaton over the banned words of a word file. Matching
//!   ignores ASCII case and "noise" (whitespace, punctuation and symbols between the letters, so
//!   `b.a d` matches `bad`); the letters of a match become `*`, the noise around them stays.
//! * [`SharedWordFilter`]: the current filter behind a lock, swapped whole by
//!   [`WordFilter::watch`], which polls the file's modification time and size.
//! * [`ForbiddenEvent`]: what [`crate::Backend::forbidden_events`] delivers. In Redis mode a task
//!   subscribes to `speak_forbidden` (payload `"<appid>,<uid>,<0|1>"`, written by GoBelieve's API
//!   server and by [`crate::Backend::set_forbidden`]) on its own connection and reconnects with
//!   backoff; in embedded mode `set_forbidden` emits the event itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use aho_corasick::{AhoCorasick, MatchKind};
use futures_util::StreamExt;
use parking_lot::RwLock;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use crate::BackendError;

/// The pub/sub channel of speak-ban changes.
pub const FORBIDDEN_CHANNEL: &str = "speak_forbidden";
/// Events buffered per [`crate::Backend::forbidden_events`] receiver before it lags.
const FORBIDDEN_CAPACITY: usize = 1024;
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Characters skipped when matching: everything that is not a letter or a digit.
fn is_noise(c: char) -> bool {
    !c.is_alphanumeric()
}

/// A banned-word filter. Cheap to share behind an `Arc`; immutable once built.
pub struct WordFilter {
    automaton: Option<AhoCorasick>,
    words: usize,
}

impl std::fmt::Debug for WordFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordFilter")
            .field("words", &self.words)
            .finish()
    }
}

impl WordFilter {
    /// A filter that bans nothing.
    pub fn empty() -> WordFilter {
        WordFilter {
            automaton: None,
            words: 0,
        }
    }

    /// A filter banning `words` (noise characters in a word are ignored; words that are all
    /// noise are skipped).
    pub fn new<I, S>(words: I) -> Result<WordFilter, BackendError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let words: Vec<String> = words
            .into_iter()
            .map(|w| {
                w.as_ref()
                    .chars()
                    .filter(|&c| !is_noise(c))
                    .collect::<String>()
            })
            .filter(|w| !w.is_empty())
            .collect();
        if words.is_empty() {
            return Ok(WordFilter::empty());
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .ascii_case_insensitive(true)
            .build(&words)
            .map_err(|e| BackendError::InvalidArgument(format!("banned-word list: {e}")))?;
        Ok(WordFilter {
            automaton: Some(automaton),
            words: words.len(),
        })
    }

    /// Parse a word list: one word per line, UTF-8, `#` starts a comment line, blank lines are
    /// ignored, surrounding whitespace is trimmed.
    pub fn parse(text: &str) -> Result<WordFilter, BackendError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        WordFilter::new(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        )
    }

    /// Load a word file (see [`WordFilter::parse`]).
    pub fn load(path: &Path) -> Result<WordFilter, BackendError> {
        let text = std::fs::read_to_string(path).map_err(|source| BackendError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        WordFilter::parse(&text)
    }

    /// How many words are banned.
    pub fn len(&self) -> usize {
        self.words
    }

    /// True when nothing is banned.
    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    /// `None` when `text` is clean; otherwise the text with every letter of every banned
    /// occurrence replaced by `*` (one `*` per character).
    pub fn filter_text(&self, text: &str) -> Option<String> {
        let automaton = self.automaton.as_ref()?;
        // The text without noise, and for each of its bytes the original byte offset of its char.
        let mut clean = String::with_capacity(text.len());
        let mut origin: Vec<usize> = Vec::with_capacity(text.len());
        for (at, c) in text.char_indices() {
            if !is_noise(c) {
                clean.push(c);
                origin.extend(std::iter::repeat_n(at, c.len_utf8()));
            }
        }
        let mut masked: Vec<usize> = Vec::new();
        for m in automaton.find_iter(&clean) {
            // Each original char once (its bytes share one origin).
            let mut last = usize::MAX;
            for &at in &origin[m.start()..m.end()] {
                if at != last {
                    masked.push(at);
                    last = at;
                }
            }
        }
        if masked.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut next = masked.iter().peekable();
        for (at, c) in text.char_indices() {
            if next.peek() == Some(&&at) {
                next.next();
                out.push('*');
            } else {
                out.push(c);
            }
        }
        Some(out)
    }

    /// docs/protocol.md §9.8: when `content` is a JSON object whose string field `"text"` contains
    /// a banned word, the content re-encoded with that field filtered; `None` otherwise (clean, not
    /// JSON, no string `text`).
    pub fn filter_content(&self, content: &[u8]) -> Option<Vec<u8>> {
        self.automaton.as_ref()?;
        let mut value: serde_json::Value = serde_json::from_slice(content).ok()?;
        let text = value.as_object_mut()?.get_mut("text")?;
        let filtered = self.filter_text(text.as_str()?)?;
        *text = serde_json::Value::String(filtered);
        serde_json::to_vec(&value).ok()
    }

    /// A shared filter loaded from `path` and reloaded when the file changes (its modification
    /// time or size), checked every `interval`. A file that fails to load keeps the previous
    /// filter (a warning is logged); when the first load fails the filter starts empty and the
    /// file is retried when it changes. Must be called inside a tokio runtime (otherwise the file
    /// is loaded once and not watched). The watching stops when the last handle is dropped.
    pub fn watch(path: impl Into<PathBuf>, interval: Duration) -> SharedWordFilter {
        let path = path.into();
        let (filter, seen) = match WordFilter::load(&path) {
            Ok(f) => (f, signature(&path)),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot load the banned-word file; filtering nothing until it loads");
                (WordFilter::empty(), signature(&path))
            }
        };
        let shared = SharedWordFilter::new(filter);
        shared.spawn_watcher(path, interval, seen);
        shared
    }

    /// As [`WordFilter::watch`], but fails when the file cannot be loaded now.
    pub fn try_watch(
        path: impl Into<PathBuf>,
        interval: Duration,
    ) -> Result<SharedWordFilter, BackendError> {
        let path = path.into();
        let seen = signature(&path);
        let shared = SharedWordFilter::new(WordFilter::load(&path)?);
        shared.spawn_watcher(path, interval, seen);
        Ok(shared)
    }
}

/// What identifies a version of the file: modification time and size.
fn signature(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

struct Shared {
    current: RwLock<Arc<WordFilter>>,
    reloads: AtomicU64,
}

/// The current [`WordFilter`], swapped whole on reload. Cheap to clone.
#[derive(Clone)]
pub struct SharedWordFilter {
    inner: Arc<Shared>,
}

impl SharedWordFilter {
    /// A fixed filter (not watched).
    pub fn new(filter: WordFilter) -> SharedWordFilter {
        SharedWordFilter {
            inner: Arc::new(Shared {
                current: RwLock::new(Arc::new(filter)),
                reloads: AtomicU64::new(0),
            }),
        }
    }

    /// The filter in force now.
    pub fn current(&self) -> Arc<WordFilter> {
        self.inner.current.read().clone()
    }

    /// [`WordFilter::filter_text`] with the current filter.
    pub fn filter_text(&self, text: &str) -> Option<String> {
        self.current().filter_text(text)
    }

    /// [`WordFilter::filter_content`] with the current filter.
    pub fn filter_content(&self, content: &[u8]) -> Option<Vec<u8>> {
        self.current().filter_content(content)
    }

    /// Successful reloads since start (for logs and metrics).
    pub fn reloads(&self) -> u64 {
        self.inner.reloads.load(Ordering::Relaxed)
    }

    fn spawn_watcher(&self, path: PathBuf, interval: Duration, seen: Option<(SystemTime, u64)>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(path = %path.display(), "not inside a tokio runtime: the banned-word file is not watched");
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(watch_file(
            weak,
            path,
            interval.max(Duration::from_millis(10)),
            seen,
        ));
    }
}

async fn watch_file(
    shared: Weak<Shared>,
    path: PathBuf,
    interval: Duration,
    mut seen: Option<(SystemTime, u64)>,
) {
    // A changed file is loaded once it has stayed the same for one interval: a file being rewritten in
    // place (truncated, then written) must not be read half-way and an empty list put in force.
    let mut settling = None;
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = signature(&path);
        if now == seen {
            settling = None;
            continue;
        }
        if now.is_none() {
            seen = now;
            tracing::warn!(path = %path.display(), "the banned-word file is gone; keeping the current filter");
            continue;
        }
        if settling != Some(now) {
            settling = Some(now);
            continue;
        }
        settling = None;
        seen = now;
        match WordFilter::load(&path) {
            Ok(filter) => {
                tracing::info!(path = %path.display(), words = filter.len(), "banned-word file reloaded");
                *shared.current.write() = Arc::new(filter);
                shared.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot reload the banned-word file; keeping the previous filter");
            }
        }
    }
}

/// A change of a user's room speak-ban flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForbiddenEvent {
    /// The user's app.
    pub appid: i64,
    /// The user.
    pub uid: i64,
    /// Banned (true) or allowed again (false).
    pub forbidden: bool,
}

pub(crate) fn forbidden_channel() -> broadcast::Sender<ForbiddenEvent> {
    broadcast::channel(FORBIDDEN_CAPACITY).0
}

/// `"<appid>,<uid>,<flag>"`; flag 0 = allowed, any other integer = banned.
pub(crate) fn parse_forbidden(payload: &str) -> Option<ForbiddenEvent> {
    let mut parts = payload.split(',').map(str::trim);
    let appid: i64 = parts.next()?.parse().ok()?;
    let uid: i64 = parts.next()?.parse().ok()?;
    let flag: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || appid < 0 || uid <= 0 {
        return None;
    }
    Some(ForbiddenEvent {
        appid,
        uid,
        forbidden: flag != 0,
    })
}

async fn subscribe(client: &redis::Client) -> Result<redis::aio::PubSub, BackendError> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(FORBIDDEN_CHANNEL).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, connect).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(BackendError::Redis(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "timed out subscribing to speak_forbidden",
        )))),
    }
}

/// Subscribe to `speak_forbidden` now (failing when Redis does not answer), then forward every
/// well-formed payload to `events` from a background task that reconnects with backoff.
pub(crate) async fn spawn_forbidden_subscriber(
    client: redis::Client,
    events: broadcast::Sender<ForbiddenEvent>,
) -> Result<AbortHandle, BackendError> {
    let first = subscribe(&client).await?;
    let task = tokio::spawn(async move {
        let mut pubsub = Some(first);
        let mut backoff = BACKOFF_MIN;
        loop {
            let conn = match pubsub.take() {
                Some(p) => p,
                None => match subscribe(&client).await {
                    Ok(p) => {
                        tracing::info!("resubscribed to {FORBIDDEN_CHANNEL}");
                        backoff = BACKOFF_MIN;
                        p
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, ?backoff, "cannot resubscribe to {FORBIDDEN_CHANNEL}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            let mut messages = conn.into_on_message();
            while let Some(msg) = messages.next().await {
                let payload: String = match msg.get_payload() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(error = %e, "ignoring a non-text {FORBIDDEN_CHANNEL} payload");
                        continue;
                    }
                };
                match parse_forbidden(&payload) {
                    Some(event) => {
                        // No receiver is not an error.
                        let _ = events.send(event);
                    }
                    None => {
                        tracing::debug!(payload, "ignoring a malformed {FORBIDDEN_CHANNEL} payload")
                    }
                }
            }
            tracing::warn!("the {FORBIDDEN_CHANNEL} subscription was lost; reconnecting");
            tokio::time::sleep(backoff).await;
        }
    });
    Ok(task.abort_handle())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            parse_forbidden("7,1001,1"),
            Some(ForbiddenEvent {
                appid: 7,
                uid: 1001,
                forbidden: true
            })
        );
        assert_eq!(
            parse_forbidden(" 7 , 1001 , 0 ").map(|e| e.forbidden),
            Some(false)
        );
        for bad in [
            "", "7", "7,1", "7,1,x", "a,1,1", "7,0,1", "7,1,1,1", "7,-1,1",
        ] {
            assert_eq!(parse_forbidden(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn noise_and_case() {
        let f = WordFilter::new(["bad", "坏人", "a b"]).expect("filter");
        assert_eq!(f.len(), 3);
        assert_eq!(f.filter_text("fine"), None);
        assert_eq!(f.filter_text("so BAD!").as_deref(), Some("so ***!"));
        assert_eq!(f.filter_text("b.a d day").as_deref(), Some("*.* * day"));
        assert_eq!(f.filter_text("他是坏 人").as_deref(), Some("他是* *"));
        assert_eq!(f.filter_text("xaby").as_deref(), Some("x**y"));
        assert!(WordFilter::new(["", " ", "!!"]).expect("filter").is_empty());
    }
}
