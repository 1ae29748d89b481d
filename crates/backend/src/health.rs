//! The backend's health as its callers see it: failing from the first operation that fails because
//! of the storage service (SQLite, Redis, MySQL, the disk) until a write succeeds again (reads that
//! succeed prove nothing: a full disk still serves them). While it is failing the write-behind
//! flusher probes it with back-off (`write_behind`), so the state returns to ok by itself
//! once the service works again, whether or not anything else touches it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::BackendError;

/// A snapshot of the backend's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    /// The last operation that reached the storage service failed.
    pub failing: bool,
    /// The most recent failure (kept after recovery) and when it happened.
    pub last_error: Option<(String, SystemTime)>,
    /// When the current failing streak began.
    pub since: Option<SystemTime>,
    /// Operations that failed since start.
    pub failures: u64,
}

#[derive(Default)]
struct Detail {
    last_error: Option<(String, SystemTime)>,
    since: Option<SystemTime>,
}

/// Shared by a backend's operations and its flusher.
#[derive(Default)]
pub(crate) struct HealthTracker {
    failing: AtomicBool,
    failures: AtomicU64,
    detail: Mutex<Detail>,
}

/// Whether an error says the storage service failed (as opposed to the caller or the data).
fn is_service_failure(e: &BackendError) -> bool {
    !matches!(
        e,
        BackendError::InvalidArgument(_) | BackendError::NotFound(_) | BackendError::Corrupt(_)
    )
}

impl HealthTracker {
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Records an operation's outcome.
    pub(crate) fn observe<T>(&self, r: &Result<T, BackendError>) {
        match r {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
    }

    pub(crate) fn succeeded(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut d = self.detail.lock();
        if self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!(
                last_error = d.last_error.as_ref().map(|e| e.0.as_str()).unwrap_or(""),
                "backend works again"
            );
        }
        d.since = None;
    }

    pub(crate) fn failed(&self, e: &BackendError) {
        if !is_service_failure(e) {
            return;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let mut d = self.detail.lock();
        d.last_error = Some((e.to_string(), now));
        if !self.failing.swap(true, Ordering::AcqRel) {
            d.since = Some(now);
        }
    }

    pub(crate) fn snapshot(&self) -> BackendHealth {
        let d = self.detail.lock();
        BackendHealth {
            failing: self.failing.load(Ordering::Acquire),
            last_error: d.last_error.clone(),
            since: d.since,
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_until_an_operation_succeeds_and_caller_errors_do_not_count() {
        let h = HealthTracker::default();
        h.observe::<()>(&Err(BackendError::InvalidArgument("x".into())));
        assert!(!h.snapshot().failing);
        h.observe::<()>(&Err(BackendError::Internal("disk full".into())));
        h.observe::<()>(&Err(BackendError::Internal("still full".into())));
        let s = h.snapshot();
        assert!(s.failing);
        assert_eq!(s.failures, 2);
        assert!(s.last_error.as_ref().unwrap().0.contains("still full"));
        let since = s.since.unwrap();
        assert!(since <= s.last_error.unwrap().1);
        h.observe(&Ok(()));
        let s = h.snapshot();
        assert!(!s.failing && s.since.is_none());
        assert!(s.last_error.is_some(), "the last error is kept");
    }
}
