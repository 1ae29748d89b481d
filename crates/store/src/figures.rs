//! The store's figures under their exported metric names, so every process that runs a store
//! (`banter serve` with the embedded store, `banter ims`) exports the same metrics: the
//! histograms it records as it works ([`StoreHistograms::named`]) and the counters and gauges read
//! from [`StoreStats`] at scrape time ([`StoreStats::figures`]).

use crate::engine::StoreStats;
use crate::options::StoreHistograms;

/// Whether a figure only grows (since the store was opened) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureKind {
    Counter,
    Gauge,
}

/// One figure of [`StoreStats`] as a metric.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: FigureKind,
    pub value: u64,
}

impl StoreHistograms {
    /// The store's histograms, each created by `make(name, help)` (e.g. a registry's
    /// `histogram`).
    pub fn named(mut make: impl FnMut(&'static str, &'static str) -> metrics::Histogram) -> Self {
        StoreHistograms {
            fsync_seconds: make(
                "banter_store_fsync_seconds",
                "Duration of each fsync of the message store (log, checkpoints, directories).",
            ),
            batch_messages: make(
                "banter_store_batch_messages",
                "Messages per group commit of the message store.",
            ),
            batch_bytes: make(
                "banter_store_batch_bytes",
                "Bytes per group commit of the message store.",
            ),
        }
    }
}

impl StoreStats {
    /// Every counter and gauge of these statistics, with its metric name and help.
    pub fn figures(&self) -> [Figure; 11] {
        use FigureKind::{Counter, Gauge};
        let f = |name, help, kind, value| Figure {
            name,
            help,
            kind,
            value,
        };
        [
            f(
                "banter_store_messages_total",
                "Messages appended to the message store since it was opened.",
                Counter,
                self.messages,
            ),
            f(
                "banter_store_entries_total",
                "Queue entries appended to the message store since it was opened.",
                Counter,
                self.entries,
            ),
            f(
                "banter_store_repeated_appends_total",
                "Retried appends the message store answered with their original positions (same idempotency key): nothing written.",
                Counter,
                self.repeated,
            ),
            f(
                "banter_store_batches_total",
                "Group commits (writes) of the message store.",
                Counter,
                self.batches,
            ),
            f(
                "banter_store_fsyncs_total",
                "fsyncs of the message store's log.",
                Counter,
                self.fsyncs,
            ),
            f(
                "banter_store_written_bytes_total",
                "Bytes written to the message store's log.",
                Counter,
                self.bytes_written,
            ),
            f(
                "banter_store_checkpoints_total",
                "Checkpoints taken by the message store.",
                Counter,
                self.checkpoints,
            ),
            f(
                "banter_store_segments_dropped_total",
                "Log segments dropped by retention.",
                Counter,
                self.segments_dropped,
            ),
            f(
                "banter_store_segments",
                "Log segment files of the message store.",
                Gauge,
                self.segments as u64,
            ),
            f(
                "banter_store_queues",
                "Queues of the message store.",
                Gauge,
                self.queues as u64,
            ),
            f(
                "banter_store_log_bytes",
                "Bytes between the oldest retained and the newest acknowledged position of the log.",
                Gauge,
                self.log_end.saturating_sub(self.log_start),
            ),
        ]
    }
}
