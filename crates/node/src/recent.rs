//! The process's recent warnings and errors, kept in memory for the admin console
//! (`GET /admin/errors`, `docs/web-client.md`).
//!
//! [`layer`] is a `tracing` layer the process's logging installs beside its log writer: every WARN
//! and ERROR event that passes the log filter is also copied into one bounded ring
//! ([`CAPACITY`] events; the oldest is dropped), each message cut to [`MAX_TEXT`] bytes. Nothing is
//! written to disk and nothing else is recorded: the log stays the full record, the ring is the
//! operator's quick look. [`snapshot`] returns the ring, newest last, with how many events were
//! dropped from it since the process started.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Events kept.
pub const CAPACITY: usize = 200;
/// Bytes of one event's text kept (message and fields).
pub const MAX_TEXT: usize = 1024;

/// One recorded event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecentEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `"WARN"` or `"ERROR"`.
    pub level: &'static str,
    /// The module that logged it.
    pub target: String,
    /// The message, then its fields as `name=value`.
    pub text: String,
}

/// The ring's contents.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Oldest first.
    pub events: Vec<RecentEvent>,
    /// Events pushed out of the ring since the process started.
    pub dropped: u64,
    pub capacity: usize,
}

struct Ring {
    events: VecDeque<RecentEvent>,
    dropped: u64,
}

fn ring() -> &'static Mutex<Ring> {
    static RING: OnceLock<Mutex<Ring>> = OnceLock::new();
    RING.get_or_init(|| {
        Mutex::new(Ring {
            events: VecDeque::with_capacity(CAPACITY),
            dropped: 0,
        })
    })
}

/// Adds one event (the layer's path; public so a process without the layer can still record).
pub fn record(event: RecentEvent) {
    let mut r = ring().lock();
    if r.events.len() == CAPACITY {
        r.events.pop_front();
        r.dropped += 1;
    }
    r.events.push_back(event);
}

/// The recorded events, oldest first.
pub fn snapshot() -> Snapshot {
    let r = ring().lock();
    Snapshot {
        events: r.events.iter().cloned().collect(),
        dropped: r.dropped,
        capacity: CAPACITY,
    }
}

/// The layer that copies WARN and ERROR events into the ring.
pub fn layer() -> RecentLayer {
    RecentLayer
}

/// See [`layer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RecentLayer;

/// Collects an event's message and fields into one bounded line.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn push(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        if self.message.len() + self.fields.len() > MAX_TEXT {
            return;
        }
        if field.name() == "message" {
            let _ = write!(self.message, "{value}");
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn finish(mut self) -> String {
        self.message.push_str(&self.fields);
        if self.message.len() > MAX_TEXT {
            let mut end = MAX_TEXT;
            while !self.message.is_char_boundary(end) {
                end -= 1;
            }
            self.message.truncate(end);
            self.message.push('…');
        }
        self.message
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, format_args!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for RecentLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = match *meta.level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            _ => return,
        };
        let mut text = Text::default();
        event.record(&mut text);
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        record(RecentEvent {
            at_ms,
            level,
            target: meta.target().to_owned(),
            text: text.finish(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_warnings_and_errors_bounded() {
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(code = 7, "recent-test disk almost full");
            tracing::error!(path = "/x", "recent-test {}", "write failed");
            tracing::warn!(big = %"y".repeat(3 * MAX_TEXT), "recent-test long");
        });
        let s = snapshot();
        let mine: Vec<&RecentEvent> = s
            .events
            .iter()
            .filter(|e| e.text.starts_with("recent-test"))
            .collect();
        assert_eq!(mine.len(), 3, "{mine:?}");
        assert_eq!(mine[0].level, "WARN");
        assert_eq!(mine[0].text, "recent-test disk almost full code=7");
        assert_eq!(mine[1].level, "ERROR");
        assert_eq!(mine[1].text, "recent-test write failed path=/x");
        assert!(mine[2].text.len() <= MAX_TEXT + '…'.len_utf8());
        assert!(mine[0].target.contains("recent"));

        for i in 0..CAPACITY + 5 {
            record(RecentEvent {
                at_ms: 0,
                level: "WARN",
                target: "t".into(),
                text: format!("fill {i}"),
            });
        }
        let s = snapshot();
        assert_eq!(s.events.len(), CAPACITY);
        assert!(s.dropped >= 5);
        assert_eq!(
            s.events.last().map(|e| e.text.as_str()),
            Some(format!("fill {}", CAPACITY + 4).as_str())
        );
    }
}
