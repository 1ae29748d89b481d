//! The store's health: whether it accepts appends now, the failure it is recovering from, and what
//! degrades it while it keeps working. `Store::health` reports it; the
//! append path reads only one atomic.
//!
//! A failed write or fsync no longer poisons the store until a restart. The batch that failed (and,
//! after a failed fsync, every batch that fsync covered) is refused; the store then refuses appends
//! until the writer thread has re-established its state from what is on disk (`resume`) and the
//! resource that ran out (free space, descriptors) is back, retrying with back-off. Only a bug (a
//! panicking writer) or acknowledged data found damaged during that recovery stops it for good.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::error::StoreError;

/// Where the store stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreState {
    /// Accepting appends, nothing to report.
    Ok,
    /// Accepting appends, but something needs attention (see [`StoreHealth::reasons`]): little free
    /// space, no descriptor in reserve, failing checkpoints or preallocation.
    Degraded,
    /// A write or fsync failed: appends are refused while the store re-establishes its state from
    /// disk and waits for the resource that ran out; it resumes by itself.
    Recovering,
    /// Refusing appends until restarted: the writer hit a bug, or recovery found acknowledged
    /// data damaged on disk.
    Failed,
}

impl StoreState {
    /// `"ok"`, `"degraded"`, `"recovering"` or `"failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Ok => "ok",
            StoreState::Degraded => "degraded",
            StoreState::Recovering => "recovering",
            StoreState::Failed => "failed",
        }
    }
}

/// A snapshot of the store's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    pub state: StoreState,
    /// Appends are accepted now (state `Ok` or `Degraded`).
    pub accepting: bool,
    /// Why the state is not `Ok`: the failure being recovered from (and what recovery waits for),
    /// or each degradation.
    pub reasons: Vec<String>,
    /// When the current non-`Ok` state began.
    pub since: Option<SystemTime>,
    /// Recovery attempts in the current `Recovering` episode.
    pub recovery_attempts: u32,
    /// Completed in-process recoveries since the store was opened.
    pub recoveries: u64,
    /// The most recent write failure (kept after recovery) and when it happened.
    pub last_failure: Option<(String, SystemTime)>,
}

/// What makes the store degraded while it still accepts appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Degradation {
    LowSpace,
    PreallocSpace,
    NoDescriptorReserve,
    Checkpoint,
    Preallocation,
}

/// What a failure ran out of: recovery waits for it to come back before accepting appends again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    NoSpace,
    NoDescriptors,
    Other,
}

impl Cause {
    pub(crate) fn of(e: &StoreError) -> Cause {
        match e {
            StoreError::Io { source, .. } => Cause::of_io(source),
            _ => Cause::Other,
        }
    }

    pub(crate) fn of_io(e: &std::io::Error) -> Cause {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Cause::NoSpace,
            Some(libc::EMFILE) | Some(libc::ENFILE) => Cause::NoDescriptors,
            _ => Cause::Other,
        }
    }
}

const ACCEPTING: u8 = 0;
const RECOVERING: u8 = 1;
const FAILED: u8 = 2;

/// First retry of a recovery after this long, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct Health {
    mode: AtomicU8,
    inner: Mutex<HealthInner>,
}

#[derive(Default)]
struct HealthInner {
    /// The failure being recovered from (or that failed the store).
    reason: Option<String>,
    /// What recovery is waiting for now (the last attempt's error, or the missing resource).
    waiting: Option<String>,
    since: Option<SystemTime>,
    cause: Option<Cause>,
    attempts: u32,
    next_attempt: Option<Instant>,
    /// The log files and queue heads were re-established; only the resource is still missing.
    files_recovered: bool,
    recoveries: u64,
    last_failure: Option<(String, SystemTime)>,
    degraded: BTreeMap<Degradation, (String, SystemTime)>,
}

impl Health {
    pub(crate) fn new() -> Health {
        Health {
            mode: AtomicU8::new(ACCEPTING),
            inner: Mutex::new(HealthInner::default()),
        }
    }

    /// The error appends get now, if they are refused.
    pub(crate) fn refusal(&self) -> Option<StoreError> {
        match self.mode.load(Ordering::Acquire) {
            ACCEPTING => None,
            mode => {
                let h = self.inner.lock();
                let why = h.reason.clone().unwrap_or_default();
                Some(StoreError::Poisoned(if mode == FAILED {
                    format!("{why}; restart to recover")
                } else {
                    match &h.waiting {
                        Some(w) => {
                            format!("recovering from an earlier failure ({why}); waiting for: {w}")
                        }
                        None => format!("recovering from an earlier failure ({why})"),
                    }
                }))
            }
        }
    }

    pub(crate) fn is_refusing(&self) -> bool {
        self.mode.load(Ordering::Acquire) != ACCEPTING
    }

    pub(crate) fn is_recovering(&self) -> bool {
        self.mode.load(Ordering::Acquire) == RECOVERING
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.mode.load(Ordering::Acquire) == FAILED
    }

    /// A write or fsync failed: refuse appends until recovered. Returns whether this started a
    /// new episode (so the caller logs it once).
    pub(crate) fn fail(&self, e: &StoreError) -> bool {
        let mut h = self.inner.lock();
        let now = SystemTime::now();
        h.last_failure = Some((e.to_string(), now));
        if self.mode.load(Ordering::Acquire) != ACCEPTING {
            return false;
        }
        h.reason = Some(e.to_string());
        h.waiting = None;
        h.since = Some(now);
        h.cause = Some(Cause::of(e));
        h.attempts = 0;
        h.next_attempt = Some(Instant::now());
        h.files_recovered = false;
        self.mode.store(RECOVERING, Ordering::Release);
        tracing::error!(error = %e, "store write failed; refusing appends until recovered");
        true
    }

    /// Refuse appends until restarted.
    pub(crate) fn fail_for_good(&self, why: String) {
        let mut h = self.inner.lock();
        if self.mode.load(Ordering::Acquire) == FAILED {
            return;
        }
        tracing::error!(reason = %why, "store failed; refusing appends until restarted");
        h.last_failure = Some((why.clone(), SystemTime::now()));
        h.reason = Some(why);
        h.waiting = None;
        if h.since.is_none() || self.mode.load(Ordering::Acquire) == ACCEPTING {
            h.since = Some(SystemTime::now());
        }
        self.mode.store(FAILED, Ordering::Release);
    }

    /// When the next recovery attempt is due (`None` unless recovering).
    pub(crate) fn next_attempt(&self) -> Option<Instant> {
        if !self.is_recovering() {
            return None;
        }
        self.inner.lock().next_attempt
    }

    pub(crate) fn files_recovered(&self) -> bool {
        self.inner.lock().files_recovered
    }

    pub(crate) fn set_files_recovered(&self) {
        self.inner.lock().files_recovered = true;
    }

    pub(crate) fn cause(&self) -> Option<Cause> {
        self.inner.lock().cause
    }

    /// An attempt did not finish: try again after a back-off, saying what it waits for.
    pub(crate) fn retry_later(&self, waiting: String) -> Instant {
        let mut h = self.inner.lock();
        h.attempts = h.attempts.saturating_add(1);
        let shift = h.attempts.saturating_sub(1).min(16);
        let delay = FIRST_BACKOFF.saturating_mul(1u32 << shift).min(MAX_BACKOFF);
        if h.waiting.as_deref() != Some(waiting.as_str()) {
            tracing::warn!(waiting_for = %waiting, attempt = h.attempts, "store recovery not finished; retrying");
        }
        h.waiting = Some(waiting);
        let at = Instant::now() + delay;
        h.next_attempt = Some(at);
        at
    }

    /// Recovery finished: accept appends again.
    pub(crate) fn recovered(&self) {
        let mut h = self.inner.lock();
        if self.mode.load(Ordering::Acquire) != RECOVERING {
            return;
        }
        tracing::info!(
            failure = h.reason.as_deref().unwrap_or(""),
            attempts = h.attempts + 1,
            "store recovered; accepting appends again"
        );
        h.reason = None;
        h.waiting = None;
        h.since = None;
        h.cause = None;
        h.attempts = 0;
        h.next_attempt = None;
        h.files_recovered = false;
        h.recoveries += 1;
        self.mode.store(ACCEPTING, Ordering::Release);
    }

    pub(crate) fn degrade(&self, what: Degradation, why: String) {
        let mut h = self.inner.lock();
        match h.degraded.get_mut(&what) {
            Some(d) => d.0 = why,
            None => {
                tracing::warn!(reason = %why, "store degraded");
                h.degraded.insert(what, (why, SystemTime::now()));
            }
        }
    }

    pub(crate) fn clear(&self, what: Degradation) {
        let mut h = self.inner.lock();
        if let Some((why, _)) = h.degraded.remove(&what) {
            tracing::info!(resolved = %why, "store no longer degraded by this");
        }
    }

    pub(crate) fn snapshot(&self) -> StoreHealth {
        let h = self.inner.lock();
        let mode = self.mode.load(Ordering::Acquire);
        let (state, reasons, since) = match mode {
            ACCEPTING if h.degraded.is_empty() => (StoreState::Ok, Vec::new(), None),
            ACCEPTING => (
                StoreState::Degraded,
                h.degraded.values().map(|d| d.0.clone()).collect(),
                h.degraded.values().map(|d| d.1).min(),
            ),
            _ => {
                let mut reasons: Vec<String> = h.reason.iter().cloned().collect();
                if let Some(w) = &h.waiting {
                    reasons.push(format!("waiting for: {w}"));
                }
                let state = if mode == FAILED {
                    StoreState::Failed
                } else {
                    StoreState::Recovering
                };
                (state, reasons, h.since)
            }
        };
        StoreHealth {
            state,
            accepting: mode == ACCEPTING,
            reasons,
            since,
            recovery_attempts: h.attempts,
            recoveries: h.recoveries,
            last_failure: h.last_failure.clone(),
        }
    }
}
