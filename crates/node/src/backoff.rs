//! Reconnect back-off with jitter, for every link that redials (route link, store link pool,
//! replication follower) and every sink that retries (webhook push).
//!
//! The delays grow exponentially from `min` to `max` (factor 2, `backon`'s exponential iterator),
//! each with a random jitter of up to the delay itself, capped at `max`: nodes that lost the same
//! peer at the same moment spread their redials instead of arriving together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The delays before successive attempts; [`Backoff::reset`] after a success.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays from `min` (plus jitter) doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
            max,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_up_to_the_cap_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1600));
        let mut b = Backoff::new(min, max);
        let first: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in first.iter().enumerate() {
            let base = (min * 2u32.pow(i as u32)).min(max);
            assert!(
                *d >= base && *d <= (base * 2).min(max),
                "attempt {i}: {d:?}"
            );
        }
        assert_eq!(first[7], max, "capped");
        b.reset();
        let again = b.next_delay();
        assert!(again >= min && again <= min * 2, "{again:?}");
    }

    #[test]
    fn jitter_spreads_simultaneous_clients() {
        let delays: std::collections::HashSet<Duration> = (0..16)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).next_delay())
            .collect();
        assert!(
            delays.len() > 8,
            "16 clients got only {} distinct delays",
            delays.len()
        );
    }
}
