//! `store`: the in-process message-store benchmark (`store::bench`), run on a blocking thread with a
//! progress bar; its figures (`appends_per_sec`, `sync_entries_per_sec`, `messages`, `restart_ms`,
//! `disk_bytes`, …) become the report's fields.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use store::bench::{StoreBenchOptions, StoreBenchReport};
use store::Durability;

use super::{progress_bar, BenchError};
use crate::report::Report;

/// Parameters of the `store` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct StoreOptions {
    pub messages: u64,
    pub appenders: usize,
    pub message_size: usize,
    /// `always`, `none`, `interval` (1 s) or `interval=<ms>`.
    pub durability: String,
    /// Store directory (must not hold a store); default a temporary directory.
    pub dir: Option<PathBuf>,
    /// Users the messages are spread over.
    pub users: u64,
    pub keep: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        let d = StoreBenchOptions::default();
        StoreOptions {
            messages: d.messages,
            appenders: d.appenders,
            message_size: d.message_size,
            durability: "always".into(),
            dir: None,
            users: d.users,
            keep: false,
        }
    }
}

/// Parses a durability name.
pub fn parse_durability(s: &str) -> Result<Durability, BenchError> {
    match s {
        "always" => Ok(Durability::Always),
        "none" => Ok(Durability::None),
        "interval" => Ok(Durability::Interval(Duration::from_secs(1))),
        other => other
            .strip_prefix("interval=")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| Durability::Interval(Duration::from_millis(ms)))
            .ok_or_else(|| {
                BenchError::Setup(format!(
                    "bad durability {other:?}: expected always, none, interval or interval=<ms>"
                ))
            }),
    }
}

fn to_fields(r: &StoreBenchReport) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(&r.to_json()) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.remove("bench");
            m
        }
        _ => serde_json::Map::new(),
    }
}

/// Runs the scenario.
pub async fn run(o: &StoreOptions, show_progress: bool) -> Result<Report, BenchError> {
    let durability = parse_durability(&o.durability)?;
    let d = StoreBenchOptions::default();
    let opts = StoreBenchOptions {
        messages: o.messages,
        message_size: o.message_size,
        appenders: o.appenders,
        durability,
        dir: o.dir.clone(),
        users: o.users,
        sync_entries: d.sync_entries.min(o.messages * d.queues_per_message as u64),
        keep: o.keep,
        ..d
    };
    let bar = progress_bar(show_progress, o.messages, "appends");
    let b = bar.clone();
    let r = tokio::task::spawn_blocking(move || {
        store::bench::run(&opts, &move |done, total| {
            b.set_length(total);
            b.set_position(done);
        })
    })
    .await
    .map_err(|e| BenchError::Setup(format!("store benchmark thread: {e}")))?;
    bar.finish_and_clear();
    let r = r.map_err(|e| BenchError::Setup(format!("store benchmark: {e}")))?;
    let mut report = Report::new(
        "store",
        serde_json::to_value(o).unwrap_or_default(),
        "in-process",
    );
    report.duration_secs = r.append_secs;
    report.extra = to_fields(&r);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_names() {
        assert_eq!(parse_durability("always").unwrap(), Durability::Always);
        assert_eq!(parse_durability("none").unwrap(), Durability::None);
        assert_eq!(
            parse_durability("interval=250").unwrap(),
            Durability::Interval(Duration::from_millis(250))
        );
        assert!(parse_durability("sometimes").is_err());
    }

    #[tokio::test]
    async fn small_run_reports_the_store_fields() {
        let dir = tempfile::tempdir().unwrap();
        let o = StoreOptions {
            messages: 2_000,
            appenders: 16,
            message_size: 64,
            durability: "none".into(),
            dir: Some(dir.path().join("s")),
            users: 100,
            keep: false,
        };
        let r = run(&o, false).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
        for k in [
            "appends_per_sec",
            "sync_entries_per_sec",
            "messages",
            "restart_ms",
            "disk_bytes",
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["scenario"], "store");
        assert_eq!(v["messages"], 2000);
    }
}
