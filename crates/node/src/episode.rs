//! Failure episodes for logging: one line when something starts failing, a summary with a count
//! at most every `every` while it keeps failing, and one line when it works again — instead of a
//! line per failed request (a store outage refuses thousands of messages a second).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What the caller should log after [`Episode::failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureLog {
    /// The first failure of an episode: log it (with its error).
    Started,
    /// Still failing: `failures` more since the last line, over `for_secs` seconds of episode.
    Ongoing { failures: u64, for_secs: u64 },
    /// Counted, nothing to log now.
    Quiet,
}

/// The end of an episode, from [`Episode::success`]: log it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Failures in the whole episode.
    pub failures: u64,
    pub after_secs: u64,
}

#[derive(Debug)]
struct State {
    failing: bool,
    started: Instant,
    last_line: Instant,
    total: u64,
    unreported: u64,
}

/// One failure episode tracker (cheap; one per store address, per subsystem).
#[derive(Debug)]
pub struct Episode {
    every: Duration,
    /// Mirrors `state.failing`, so that a success outside an episode costs one atomic load.
    failing: AtomicBool,
    state: Mutex<State>,
}

impl Episode {
    /// A tracker that repeats its summary at most every `every`.
    pub fn new(every: Duration) -> Episode {
        let now = Instant::now();
        Episode {
            every,
            failing: AtomicBool::new(false),
            state: Mutex::new(State {
                failing: false,
                started: now,
                last_line: now,
                total: 0,
                unreported: 0,
            }),
        }
    }

    /// Records a failure; says what to log.
    pub fn failure(&self) -> FailureLog {
        let now = Instant::now();
        let mut s = self.state.lock();
        if !s.failing {
            *s = State {
                failing: true,
                started: now,
                last_line: now,
                total: 1,
                unreported: 0,
            };
            self.failing.store(true, Ordering::Release);
            return FailureLog::Started;
        }
        s.total += 1;
        s.unreported += 1;
        if now.duration_since(s.last_line) >= self.every {
            s.last_line = now;
            let failures = std::mem::take(&mut s.unreported);
            return FailureLog::Ongoing {
                failures,
                for_secs: now.duration_since(s.started).as_secs(),
            };
        }
        FailureLog::Quiet
    }

    /// Records a success; `Some` when it ends an episode.
    pub fn success(&self) -> Option<Recovered> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let mut s = self.state.lock();
        if !s.failing {
            return None;
        }
        s.failing = false;
        self.failing.store(false, Ordering::Release);
        Some(Recovered {
            failures: s.total,
            after_secs: s.started.elapsed().as_secs(),
        })
    }

    /// Whether an episode is in progress.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_episode_then_summaries() {
        let e = Episode::new(Duration::from_millis(50));
        assert_eq!(e.success(), None);
        assert_eq!(e.failure(), FailureLog::Started);
        for _ in 0..1000 {
            assert_eq!(e.failure(), FailureLog::Quiet);
        }
        std::thread::sleep(Duration::from_millis(60));
        match e.failure() {
            FailureLog::Ongoing { failures, .. } => assert_eq!(failures, 1001),
            other => panic!("{other:?}"),
        }
        assert!(e.failing());
        let r = e.success().unwrap();
        assert_eq!(r.failures, 1002);
        assert_eq!(e.success(), None);
        assert_eq!(e.failure(), FailureLog::Started);
    }
}
