//! Process-wide logging: an `EnvFilter` (`RUST_LOG` wins over the configured level), text or JSON
//! lines on stderr, and — when the node has a `node_id` — that id on every line (`node=<id>` first
//! in text, a `"node"` field in JSON), so the logs of many nodes can be merged and still be told apart.
//! Colours only when stderr is a terminal, so log files carry no escape codes. Every role (`serve`,
//! `im`, `imr`, `ims`) logs through [`init`], which also copies WARN and ERROR events into the
//! in-memory ring the admin console shows ([`node::recent`]).

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub use node::log::LogFormat;

/// Parses a level or filter (`info`, `info,access=debug`).
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("not a log level or filter ({level:?}): {e}"))
}

/// The problems of a `[log]` section (each message starts with its key).
pub fn problems(log: &node::log::LogSettings) -> Vec<String> {
    filter(&log.level)
        .err()
        .map(|e| format!("log.level: {e}"))
        .into_iter()
        .collect()
}

/// Installs the global subscriber. `RUST_LOG`, when set and valid, wins over `level`.
pub fn init(level: &str, format: LogFormat, node_id: &str) -> Result<(), String> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => filter(level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let node = (!node_id.is_empty()).then(|| node_id.to_owned());
    if format == LogFormat::Json {
        let fmt = NodeJson {
            node: node.map(|n| serde_json::to_string(&n).unwrap_or_default()),
            inner: Format::default().json(),
        };
        builder
            .json()
            .event_format(fmt)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .finish()
            .with(node::recent::layer())
            .try_init()
            .map_err(|e| e.to_string())
    } else {
        let ansi = std::io::stderr().is_terminal();
        builder
            .event_format(NodeText {
                node,
                inner: Format::default().with_ansi(ansi),
            })
            .finish()
            .with(node::recent::layer())
            .try_init()
            .map_err(|e| e.to_string())
    }
}

/// Text lines: `node=<id> ` before the usual line.
struct NodeText {
    node: Option<String>,
    inner: Format<Full>,
}

impl<S, N> FormatEvent<S, N> for NodeText
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if let Some(node) = &self.node {
            write!(writer, "node={node} ")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// JSON lines: `"node":"<id>"` as the first field of each object. `node` is already JSON-quoted.
struct NodeJson {
    node: Option<String>,
    inner: Format<Json>,
}

impl<S, N> FormatEvent<S, N> for NodeJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(node) = &self.node else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"node\":{node},{rest}"),
            None => writer.write_str(&line),
        }
    }
}
