//! The push senders' metrics, recorded into the registry of the node that runs them
//! ([`node::metrics::Registry`]; there is no global `metrics` recorder). Every series is
//! registered once, when the senders start — each provider lane's counters and send-time
//! histogram, the intake queue's drop counter, FCM's OAuth token counter, one skip counter per
//! reason — so the hot path only increments handles it holds (no name formatting, no registry
//! look-ups) and every series is exported from the start, at 0.
//!
//! | Metric | Labels |
//! |---|---|
//! | `banter_push_sent_total`, `banter_push_failed_total`, `banter_push_retried_total`, `banter_push_tokens_removed_total`, histogram `banter_push_send_seconds` | `provider` = `apns`, `fcm` |
//! | `banter_push_dropped_total` | `provider` = `apns`, `fcm`, `intake` (the job queue) |
//! | `banter_push_oauth_tokens_total` | `provider` = `fcm` |
//! | `banter_push_skipped_total` | `reason` = `no_provider`, `system`, `do_not_disturb`, `no_device`, `backend_error` |

use metrics::{Counter, Histogram};
use node::metrics::Registry;

/// The provider lanes' label values, by lane index (APNs, including VoIP pushes, then FCM).
pub const PROVIDERS: [&str; 2] = ["apns", "fcm"];

/// Why a job or a receiver got no notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The job's app has no provider configured.
    NoProvider,
    /// A system message, with `push_system` off.
    System,
    /// The receiver (or the group, for them) is under do-not-disturb.
    DoNotDisturb,
    /// The receiver has no device of a configured provider.
    NoDevice,
    /// The receiver's devices could not be read.
    BackendError,
}

impl Skip {
    /// Every reason, in the order of [`Skip::index`].
    pub const ALL: [Skip; 5] = [
        Skip::NoProvider,
        Skip::System,
        Skip::DoNotDisturb,
        Skip::NoDevice,
        Skip::BackendError,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Skip::NoProvider => "no_provider",
            Skip::System => "system",
            Skip::DoNotDisturb => "do_not_disturb",
            Skip::NoDevice => "no_device",
            Skip::BackendError => "backend_error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The series of one provider lane.
#[derive(Clone)]
pub struct LaneMeters {
    pub sent: Counter,
    pub failed: Counter,
    pub retried: Counter,
    pub dropped: Counter,
    pub tokens_removed: Counter,
    /// One send attempt, from the request to its answer (or timeout).
    pub send_seconds: Histogram,
}

/// Every push series, registered once (see the module docs).
#[derive(Clone)]
pub struct PushMetrics {
    /// By lane index ([`PROVIDERS`]).
    pub lanes: [LaneMeters; 2],
    /// Jobs dropped because the intake queue was full.
    pub intake_dropped: Counter,
    /// OAuth2 access tokens fetched for FCM.
    pub oauth_tokens: Counter,
    skipped: [Counter; 5],
}

// Help texts, one per metric name.
const SENT: &str = "Device notifications accepted by the provider.";
const FAILED: &str = "Device notifications given up: refused, dead token, or out of attempts.";
const RETRIED: &str = "Send attempts repeated after a 429, 5xx, timeout or connection error.";
const DROPPED: &str =
    "Jobs (provider intake) or device notifications (apns, fcm) dropped: their queue was full.";
const TOKENS_REMOVED: &str = "Dead device tokens unbound from their user.";
const SEND_SECONDS: &str =
    "Time of one send attempt to the provider, from the request to its answer or timeout.";
const OAUTH_TOKENS: &str = "OAuth2 access tokens fetched from the provider's token endpoint.";
const SKIPPED: &str =
    "Receivers (jobs, for no_provider and system) that got no notification, by reason.";

impl PushMetrics {
    /// Registers every series in `registry` (the node's `/metrics`).
    pub fn register(registry: &Registry) -> PushMetrics {
        let provider = |p: &str| [("provider", p.to_owned())];
        let lane = |p: &str| LaneMeters {
            sent: registry.counter_with("banter_push_sent_total", SENT, &provider(p)),
            failed: registry.counter_with("banter_push_failed_total", FAILED, &provider(p)),
            retried: registry.counter_with("banter_push_retried_total", RETRIED, &provider(p)),
            dropped: registry.counter_with("banter_push_dropped_total", DROPPED, &provider(p)),
            tokens_removed: registry.counter_with(
                "banter_push_tokens_removed_total",
                TOKENS_REMOVED,
                &provider(p),
            ),
            send_seconds: registry.histogram_with(
                "banter_push_send_seconds",
                SEND_SECONDS,
                &provider(p),
            ),
        };
        PushMetrics {
            lanes: PROVIDERS.map(lane),
            intake_dropped: registry.counter_with(
                "banter_push_dropped_total",
                DROPPED,
                &provider("intake"),
            ),
            oauth_tokens: registry.counter_with(
                "banter_push_oauth_tokens_total",
                OAUTH_TOKENS,
                &provider("fcm"),
            ),
            skipped: Skip::ALL.map(|s| {
                registry.counter_with(
                    "banter_push_skipped_total",
                    SKIPPED,
                    &[("reason", s.label().to_owned())],
                )
            }),
        }
    }

    /// Handles that record nothing, for senders whose node exports no metrics.
    pub fn unexported() -> PushMetrics {
        let lane = |_| LaneMeters {
            sent: Counter::noop(),
            failed: Counter::noop(),
            retried: Counter::noop(),
            dropped: Counter::noop(),
            tokens_removed: Counter::noop(),
            send_seconds: Histogram::noop(),
        };
        PushMetrics {
            lanes: PROVIDERS.map(lane),
            intake_dropped: Counter::noop(),
            oauth_tokens: Counter::noop(),
            skipped: Skip::ALL.map(|_| Counter::noop()),
        }
    }

    /// Counts a skip.
    pub fn skipped(&self, reason: Skip) {
        self.skipped[reason.index()].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_registered_with_bounded_labels_and_counts() {
        let r = Registry::new("test");
        let m = PushMetrics::register(&r);
        for (i, s) in Skip::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        m.lanes[1].sent.increment(2);
        m.lanes[0].send_seconds.record(0.003);
        m.intake_dropped.increment(1);
        m.skipped(Skip::DoNotDisturb);
        let text = r.render();
        for p in PROVIDERS {
            for name in [
                "banter_push_sent_total",
                "banter_push_failed_total",
                "banter_push_retried_total",
                "banter_push_dropped_total",
                "banter_push_tokens_removed_total",
                "banter_push_send_seconds_count",
            ] {
                assert!(
                    text.contains(&format!("{name}{{provider=\"{p}\"}}")),
                    "{name} {p}: {text}"
                );
            }
        }
        assert!(
            text.contains("banter_push_sent_total{provider=\"fcm\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("banter_push_sent_total{provider=\"apns\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("banter_push_send_seconds_bucket{provider=\"apns\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("banter_push_dropped_total{provider=\"intake\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("banter_push_oauth_tokens_total{provider=\"fcm\"} 0"),
            "{text}"
        );
        for s in Skip::ALL {
            let n = u8::from(s == Skip::DoNotDisturb);
            assert!(
                text.contains(&format!(
                    "banter_push_skipped_total{{reason=\"{}\"}} {n}",
                    s.label()
                )),
                "{s:?}: {text}"
            );
        }
        assert!(
            text.contains("# TYPE banter_push_send_seconds histogram"),
            "{text}"
        );
    }
}
