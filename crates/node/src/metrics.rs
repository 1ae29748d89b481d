//! Metrics of a node: one Prometheus registry per node (so a process running one node has exactly one
//! exporter, and tests running several nodes in one process keep them apart), built on the `metrics`
//! crate and `metrics-exporter-prometheus`. Every registry carries the standard `process_*` metrics
//! (`metrics-process`) and `banter_build_info`. Latency histograms (`*_seconds`) and size histograms
//! (`*_messages`, `*_entries`, `*_bytes`) have fixed buckets, so they render as real Prometheus
//! histograms. Counters a node keeps in its own atomics are copied in at scrape time ([`Registry::set_counter`]).

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Bucket bounds of latency histograms, in seconds (50 µs … 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Bucket bounds of count histograms (messages or entries per batch or sync).
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];
/// Bucket bounds of size histograms, in bytes (64 B … 16 MiB).
pub const BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

static BUILD: OnceLock<(String, String)> = OnceLock::new();

/// Records the version and commit `banter_build_info` reports (once per process; later calls are
/// ignored). Without it the registry reports this crate's version and commit "unknown".
pub fn set_build_info(version: &str, commit: &str) {
    let _ = BUILD.set((version.to_owned(), commit.to_owned()));
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, None)
}

/// How often a registry folds the samples recorded into its histograms into their buckets. The
/// exporter keeps every sample until then, so without it a node that is not scraped would grow by
/// every message's latencies.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A node's metrics.
pub struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    /// Held while the registry lives; its upkeep thread stops once it is gone.
    _alive: std::sync::Arc<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// A registry for a node of `role` (`access`, `router`, `store`).
    pub fn new(role: &'static str) -> Registry {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_messages".into()), COUNT_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_entries".into()), COUNT_BUCKETS)
            })
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        let alive = std::sync::Arc::new(());
        let watch = std::sync::Arc::downgrade(&alive);
        let upkeep = handle.clone();
        // Without the thread the samples are still folded in at every scrape.
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                if watch.strong_count() == 0 {
                    return;
                }
                upkeep.run_upkeep();
            });
        let r = Registry {
            recorder,
            handle,
            process,
            _alive: alive,
        };
        let (version, commit) = BUILD
            .get()
            .cloned()
            .unwrap_or_else(|| (env!("CARGO_PKG_VERSION").to_owned(), "unknown".to_owned()));
        r.gauge_with(
            "banter_build_info",
            "Always 1; the labels name the version, the git commit and the role of this node.",
            &[
                ("version", version),
                ("commit", commit),
                ("role", role.to_owned()),
            ],
        )
        .set(1.0);
        r
    }

    fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect();
        Key::from_parts(name, labels)
    }

    /// A counter (registered on first use; later calls return the same counter).
    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.counter_with(name, help, &[])
    }

    /// A counter with labels; keep label values bounded (a command, a transport, a status).
    pub fn counter_with(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, String)],
    ) -> Counter {
        self.recorder
            .describe_counter(name.into(), None, SharedString::const_str(help));
        self.recorder
            .register_counter(&Self::key(name, labels), &metadata())
    }

    /// A gauge.
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.gauge_with(name, help, &[])
    }

    /// A gauge with labels.
    pub fn gauge_with(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, String)],
    ) -> Gauge {
        self.recorder
            .describe_gauge(name.into(), None, SharedString::const_str(help));
        self.recorder
            .register_gauge(&Self::key(name, labels), &metadata())
    }

    /// A histogram; its name's suffix picks its buckets (`_seconds`, `_messages`, `_entries`,
    /// `_bytes`).
    pub fn histogram(&self, name: &'static str, help: &'static str) -> Histogram {
        self.histogram_with(name, help, &[])
    }

    /// A histogram with labels.
    pub fn histogram_with(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, String)],
    ) -> Histogram {
        let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
        self.recorder
            .describe_histogram(name.into(), unit, SharedString::const_str(help));
        self.recorder
            .register_histogram(&Self::key(name, labels), &metadata())
    }

    /// Sets a counter kept elsewhere (an atomic of the node) to its current total.
    pub fn set_counter(&self, name: &'static str, help: &'static str, value: u64) {
        self.counter(name, help).absolute(value);
    }

    /// Sets a labelled counter kept elsewhere to its current total.
    pub fn set_counter_with(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, String)],
        value: u64,
    ) {
        self.counter_with(name, help, labels).absolute(value);
    }

    /// Sets a gauge to `value`.
    pub fn set_gauge(&self, name: &'static str, help: &'static str, value: f64) {
        self.gauge(name, help).set(value);
    }

    /// The Prometheus text format of every metric, with the process metrics collected now.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }
}

/// The content type of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_process_and_build_info() {
        let r = Registry::new("test");
        r.set_counter("banter_things_total", "Things.", 5);
        r.histogram("banter_wait_seconds", "Waits.").record(0.003);
        r.histogram("banter_batch_messages", "Batches.").record(7.0);
        let _unused = r.histogram("banter_idle_seconds", "Never recorded.");
        let text = r.render();
        assert!(
            text.contains("# TYPE banter_idle_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("banter_idle_seconds_count 0"), "{text}");
        assert!(
            text.contains("# HELP banter_things_total Things."),
            "{text}"
        );
        assert!(text.contains("banter_things_total 5"), "{text}");
        assert!(
            text.contains("banter_wait_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("banter_batch_messages_bucket{le=\"10\"} 1"),
            "{text}"
        );
        assert!(text.contains("banter_build_info{"), "{text}");
        assert!(text.contains("role=\"test\""), "{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
