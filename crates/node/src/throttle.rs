//! Rate-limited log lines for failures that repeat once per request or message.
//!
//! When a disk fills or a store node goes away, every refused message would otherwise write its own
//! WARN line — hundreds of thousands of lines in seconds, which refill the disk that just filled. A
//! [`Throttle`] lets one line through per interval and counts the ones it held back; the next line
//! that passes carries that count (`suppressed = N`), so nothing is hidden, only summarised.
//! Counters on `/metrics` remain the exact record; the log is the human-readable hint.
//!
//! ```
//! node::warn_throttled!(error = "disk full", "storing a message failed");
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often a throttled call site may log by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One call site's gate: at most one line per interval.
pub struct Throttle {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] before which nothing passes (0: the first line passes).
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    pub const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval_ms: interval.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held back since the last
    /// one; `None` (and one more held back) otherwise.
    pub fn check(&self) -> Option<u64> {
        self.check_at(epoch().elapsed().as_millis() as u64)
    }

    fn check_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.interval_ms.max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `tracing::warn!` for a line that may repeat per request or message: at most one per
/// [`DEFAULT_INTERVAL`] from this call site, with a `suppressed` field counting the lines held back
/// since the previous one.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::throttle::Throttle =
            $crate::throttle::Throttle::new($crate::throttle::DEFAULT_INTERVAL);
        if let Some(suppressed) = THROTTLE.check() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

/// [`warn_throttled!`] at ERROR level.
#[macro_export]
macro_rules! error_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::throttle::Throttle =
            $crate::throttle::Throttle::new($crate::throttle::DEFAULT_INTERVAL);
        if let Some(suppressed) = THROTTLE.check() {
            ::tracing::error!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_count_of_those_held_back() {
        let t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.check_at(5), Some(0), "the first line passes");
        for ms in [6, 100, 9_000, 10_004] {
            assert_eq!(t.check_at(ms), None, "held back at {ms} ms");
        }
        assert_eq!(
            t.check_at(10_005),
            Some(4),
            "the next line reports 4 held back"
        );
        assert_eq!(t.check_at(10_006), None);
        assert_eq!(t.check_at(30_000), Some(1));
    }

    #[test]
    fn concurrent_callers_let_exactly_one_line_through() {
        let t = std::sync::Arc::new(Throttle::new(Duration::from_secs(3600)));
        let passed: u64 = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..1000).filter(|_| t.check().is_some()).count() as u64)
            })
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(passed, 1);
        assert_eq!(t.suppressed.load(Ordering::Relaxed), 7_999);
    }
}
