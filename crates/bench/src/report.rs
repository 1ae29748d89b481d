//! What a scenario run produced: figures, failures, the human summary and the one-line JSON.
//!
//! The JSON line has `scenario`, `ok`, `failures`, `params`, `transport`, `duration_secs`, then the figures
//! of the scenario's kind flattened in: for message scenarios `messages_per_sec`, `deliveries_per_sec`,
//! `p50_ms` … `max_ms`, `lost`, `duplicated`, …; for `connections`: `connections`, `server_rss_bytes`,
//! `bytes_per_connection`, …; for `store` the store benchmark's own fields.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::accounting::Tally;

/// Latency histogram unit: microseconds, up to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds that satisfy the constructor's preconditions (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid constant histogram bounds")
}

/// Figures of the message scenarios (`peer`, `group`, `room`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MessageFigures {
    /// Messages the senders sent.
    pub messages_sent: u64,
    /// Messages the server ACKed with status 0.
    pub messages_acked: u64,
    /// Messages the server ACKed with a non-zero status.
    pub messages_refused: u64,
    /// Distinct messages received, per second of the measured interval (for fan-out: messages sent whose
    /// deliveries all arrived, i.e. deliveries / fan-out).
    pub messages_per_sec: f64,
    /// Distinct deliveries (one message arriving at one receiver) per second.
    pub deliveries_per_sec: f64,
    /// Deliveries expected and received.
    pub deliveries_expected: u64,
    pub deliveries: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub foreign: u64,
    /// Deliveries accepted on the METADATA fast path, and received through SYNC.
    pub via_push: u64,
    pub via_sync: u64,
    /// Pushes that missed the fast path (then synced).
    pub pushes_discarded: u64,
    pub syncs: u64,
    /// Syncs that got no SYNC_END within the SDKs' 4 s, and syncs never answered at all.
    pub sync_timeouts: u64,
    pub syncs_unanswered: u64,
    /// CPU seconds used during the run by the load generator, and by the server when its pid is known.
    pub client_cpu_secs: f64,
    pub server_cpu_secs: Option<f64>,
    /// The server's CPU time per message ACKed, in microseconds (when its pid is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_message: Option<f64>,
    /// CPU seconds used during the run by each watched server process (`--cpu-pid NAME=PID`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub process_cpu: Vec<ProcessCpu>,
}

/// CPU time of one watched process during the measured interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessCpu {
    pub name: String,
    pub pid: u32,
    /// User + system seconds; `None` when the process could not be read (e.g. it exited).
    pub cpu_secs: Option<f64>,
}

impl MessageFigures {
    /// Copies accounting totals in.
    pub fn set_tally(&mut self, t: &Tally) {
        self.deliveries_expected = t.expected;
        self.deliveries = t.unique;
        self.lost = t.lost;
        self.duplicated = t.duplicated;
        self.out_of_order = t.out_of_order;
        self.unexpected = t.unexpected;
        self.foreign = t.foreign;
    }

    /// Copies percentiles in from a histogram of microseconds.
    pub fn set_latency(&mut self, h: &Histogram<u64>) {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        if h.is_empty() {
            return;
        }
        self.p50_ms = ms(h.value_at_quantile(0.50));
        self.p90_ms = ms(h.value_at_quantile(0.90));
        self.p99_ms = ms(h.value_at_quantile(0.99));
        self.p999_ms = ms(h.value_at_quantile(0.999));
        self.max_ms = ms(h.max());
    }
}

/// Figures of the `connections` scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionFigures {
    /// Connections authenticated and held.
    pub connections: u64,
    /// Connections that failed to connect or authenticate.
    pub failed_connections: u64,
    /// Held connections that the server closed or that went dead during the hold.
    pub dropped_connections: u64,
    /// Authenticated connections per second during the ramp.
    pub connect_per_sec: f64,
    /// Connect-plus-authenticate latency.
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    pub connect_max_ms: f64,
    /// Server resident memory before connecting and while holding the connections.
    pub server_rss_baseline_bytes: Option<u64>,
    pub server_rss_bytes: Option<u64>,
    /// `(server_rss_bytes - server_rss_baseline_bytes) / connections`.
    pub bytes_per_connection: Option<f64>,
    /// Growth of this host's kernel slab and TCP buffer memory while the connections are held. With
    /// client and server on one host it covers both ends of every connection.
    pub host_slab_delta_bytes: Option<i64>,
    pub host_tcp_buffer_delta_bytes: Option<i64>,
    /// PINGs sent and PONGs received during the hold.
    pub pings: u64,
    pub pongs: u64,
}

/// One point of the throughput timeline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the measured interval started.
    pub t: f64,
    /// Rate over the preceding sampling interval (per second).
    pub rate: f64,
}

/// A scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// False when the run failed: lost, duplicated or reordered messages where the semantics promise
    /// exactly-once in-order delivery, failed connections, or timeouts.
    pub ok: bool,
    pub failures: Vec<String>,
    pub params: serde_json::Value,
    pub transport: String,
    /// Length of the measured interval.
    pub duration_secs: f64,
    #[serde(flatten)]
    pub messages: Option<MessageFigures>,
    #[serde(flatten)]
    pub connections: Option<ConnectionFigures>,
    /// Scenario-specific figures (the store benchmark's).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Latency histogram in microseconds.
    #[serde(skip)]
    pub latency: Option<Histogram<u64>>,
    /// What the timeline's rate counts ("deliveries/s", "connections/s").
    #[serde(skip)]
    pub timeline_label: String,
    #[serde(skip)]
    pub timeline: Vec<Sample>,
    /// Extra lines for the human summary (e.g. which messages are missing).
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl Report {
    /// An empty, successful report.
    pub fn new(scenario: &str, params: serde_json::Value, transport: &str) -> Report {
        Report {
            scenario: scenario.to_string(),
            ok: true,
            failures: Vec::new(),
            params,
            transport: transport.to_string(),
            duration_secs: 0.0,
            messages: None,
            connections: None,
            extra: serde_json::Map::new(),
            latency: None,
            timeline_label: String::new(),
            timeline: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Marks the run failed for `why`.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.ok = false;
        self.failures.push(why.into());
    }

    /// The one-line JSON.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human summary (several lines, no trailing newline).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let status = if self.ok { "OK" } else { "FAILED" };
        let _ = write!(
            s,
            "banter bench {} — {} ({} transport, {:.2} s measured)",
            self.scenario, status, self.transport, self.duration_secs
        );
        if let Some(m) = &self.messages {
            let _ = write!(
                s,
                "\n  sent {} messages ({} acked, {} refused); {} of {} deliveries arrived",
                m.messages_sent,
                m.messages_acked,
                m.messages_refused,
                m.deliveries,
                m.deliveries_expected
            );
            let _ = write!(
                s,
                "\n  throughput: {:.0} messages/s, {:.0} deliveries/s",
                m.messages_per_sec, m.deliveries_per_sec
            );
            let _ = write!(
                s,
                "\n  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                m.p50_ms, m.p90_ms, m.p99_ms, m.p999_ms, m.max_ms
            );
            let _ = write!(
                s,
                "\n  lost {}  duplicated {}  out of order {}  unexpected {}  foreign {}",
                m.lost, m.duplicated, m.out_of_order, m.unexpected, m.foreign
            );
            let _ = write!(
                s,
                "\n  client: {} via push fast path, {} via sync, {} pushes left to sync, {} syncs ({} timed out, {} unanswered)",
                m.via_push, m.via_sync, m.pushes_discarded, m.syncs, m.sync_timeouts, m.syncs_unanswered
            );
            let _ = write!(s, "\n  CPU: load generator {:.2} s", m.client_cpu_secs);
            if let Some(c) = m.server_cpu_secs {
                let _ = write!(s, ", server {c:.2} s");
            }
            if let Some(us) = m.server_cpu_us_per_message {
                let _ = write!(s, " ({us:.2} µs per message)");
            }
            if !m.process_cpu.is_empty() {
                let per_msg = |secs: f64| secs * 1e6 / m.deliveries.max(1) as f64;
                let mut total = 0.0;
                s.push_str("\n  CPU of servers (s, µs per delivery):");
                for p in &m.process_cpu {
                    match p.cpu_secs {
                        Some(c) => {
                            total += c;
                            let _ = write!(s, " {} {c:.2} ({:.2})", p.name, per_msg(c));
                        }
                        None => {
                            let _ = write!(s, " {} unreadable", p.name);
                        }
                    }
                }
                let _ = write!(s, "; all {total:.2} ({:.2})", per_msg(total));
            }
        }
        if let Some(c) = &self.connections {
            let _ = write!(
                s,
                "\n  {} connections held, {} failed, {} dropped; {:.0} connects/s (p50 {:.2} ms, p99 {:.2} ms)",
                c.connections,
                c.failed_connections,
                c.dropped_connections,
                c.connect_per_sec,
                c.connect_p50_ms,
                c.connect_p99_ms
            );
            match (
                c.server_rss_baseline_bytes,
                c.server_rss_bytes,
                c.bytes_per_connection,
            ) {
                (Some(b), Some(r), Some(per)) => {
                    let _ = write!(
                        s,
                        "\n  server RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes per connection",
                        b as f64 / 1048576.0,
                        r as f64 / 1048576.0,
                        per
                    );
                }
                _ => s.push_str("\n  server memory not measured (give --server-pid or --summary)"),
            }
            if let (Some(slab), Some(tcp)) =
                (c.host_slab_delta_bytes, c.host_tcp_buffer_delta_bytes)
            {
                let n = c.connections.max(1) as f64;
                let _ = write!(
                    s,
                    "\n  host kernel: slab {:+.1} MiB ({:.0} bytes per connection, both ends), TCP buffers {:+.1} MiB",
                    slab as f64 / 1048576.0,
                    slab as f64 / n,
                    tcp as f64 / 1048576.0
                );
            }
            let _ = write!(s, "\n  heartbeats: {} pings, {} pongs", c.pings, c.pongs);
        }
        for (k, v) in &self.extra {
            let _ = write!(s, "\n  {k}: {v}");
        }
        for n in &self.notes {
            let _ = write!(s, "\n  {n}");
        }
        for f in &self.failures {
            let _ = write!(s, "\n  FAILURE: {f}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_the_documented_fields() {
        let mut r = Report::new("peer", serde_json::json!({"pairs": 2}), "tcp");
        let mut m = MessageFigures::default();
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        m.set_latency(&h);
        m.set_tally(&Tally {
            expected: 10,
            unique: 9,
            lost: 1,
            ..Tally::default()
        });
        r.messages = Some(m);
        r.fail("1 message lost");
        let line = r.json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for k in [
            "scenario",
            "params",
            "messages_per_sec",
            "deliveries_per_sec",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "lost",
            "duplicated",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {line}");
        }
        assert_eq!(v["ok"], false);
        assert_eq!(v["lost"], 1);
        assert_eq!(v["params"]["pairs"], 2);
        let p50 = v["p50_ms"].as_f64().unwrap();
        assert!((4.9..5.1).contains(&p50), "{p50}");
        assert!(v.get("connections").is_none());
        assert!(r.summary().contains("FAILURE: 1 message lost"));
        assert!(
            v.get("process_cpu").is_none(),
            "omitted when no pid is watched"
        );
    }

    #[test]
    fn watched_processes_are_reported() {
        let mut r = Report::new("peer", serde_json::json!({}), "tcp");
        r.messages = Some(MessageFigures {
            deliveries: 1_000_000,
            process_cpu: vec![
                ProcessCpu {
                    name: "im1".into(),
                    pid: 10,
                    cpu_secs: Some(3.0),
                },
                ProcessCpu {
                    name: "ims1".into(),
                    pid: 11,
                    cpu_secs: Some(1.5),
                },
            ],
            ..MessageFigures::default()
        });
        let v: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
        assert_eq!(v["process_cpu"][0]["name"], "im1");
        assert_eq!(v["process_cpu"][1]["cpu_secs"], 1.5);
        let s = r.summary();
        assert!(s.contains("im1 3.00 (3.00)"), "{s}");
        assert!(s.contains("all 4.50 (4.50)"), "{s}");
    }

    #[test]
    fn connection_figures_flatten() {
        let mut r = Report::new("connections", serde_json::json!({}), "tcp");
        r.connections = Some(ConnectionFigures {
            connections: 10,
            server_rss_bytes: Some(1000),
            server_rss_baseline_bytes: Some(500),
            bytes_per_connection: Some(50.0),
            ..ConnectionFigures::default()
        });
        let v: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
        assert_eq!(v["connections"], 10);
        assert_eq!(v["server_rss_bytes"], 1000);
        assert_eq!(v["bytes_per_connection"], 50.0);
        assert!(v.get("messages_per_sec").is_none());
        assert!(r.summary().contains("50 bytes per connection"));
    }
}
