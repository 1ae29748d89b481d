//! Process-wide logging: an `EnvFilter` (`RUST_LOG` wins over the configured level), text or JSON
//! lines on stderr, and — when the node has a `node_id` — that id on every line (`node=<id>` first
//! in text, a `"node"` field in JSON), so the logs of many nodes can be merged and still be told apart.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `format` is `"json"` or anything else for text.
pub fn init(level: &str, format: &str, node_id: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let node = (!node_id.is_empty()).then(|| node_id.to_owned());
    if format == "json" {
        let fmt = NodeJson {
            node: node.map(|n| serde_json::to_string(&n).unwrap_or_default()),
            inner: Format::default().json(),
        };
        builder
            .json()
            .event_format(fmt)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .init();
    } else {
        builder
            .event_format(NodeText {
                node,
                inner: Format::default(),
            })
            .init();
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
