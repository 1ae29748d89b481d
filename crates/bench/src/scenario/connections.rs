//! `connections`: open and authenticate N connections, hold them idle with heartbeats, and measure the
//! server's resident memory per connection.
//!
//! Connection `i` is user `uid_base + i`, dialled from the `i`-th source address of the run (by default
//! 127.0.0.1 – 127.0.0.255, so N can exceed one address's ephemeral ports), authenticated, and given the
//! SDK's initial SYNC. Setup runs with bounded concurrency (and an optional connect rate). When all are
//! up, the scenario waits `settle`, then reads the server's memory and keeps the connections for the rest
//! of `hold`, pinging each after `--ping-interval` of silence; memory is read again at the end and the
//! larger reading is used. `bytes_per_connection` is `(rss_held - rss_before) / N`: the marginal cost of
//! one authenticated idle connection. Any failed or dropped connection fails the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{progress_bar, settle, BenchError};
use crate::client::{Client, ClientError, Event};
use crate::env::Env;
use crate::report::{new_histogram, ConnectionFigures, Report, Sample};

/// Parameters of the `connections` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsOptions {
    pub connections: usize,
    /// Connections per second during the ramp; `None` = as fast as the concurrency allows.
    pub rate: Option<f64>,
    /// How long to hold all connections once they are up (memory is read after `settle` and at the end).
    #[serde(serialize_with = "secs")]
    pub hold: Duration,
    #[serde(serialize_with = "secs")]
    pub settle: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for ConnectionsOptions {
    fn default() -> Self {
        ConnectionsOptions {
            connections: 1_000,
            rate: None,
            hold: Duration::from_secs(30),
            settle: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    pings: AtomicU64,
    pongs: AtomicU64,
    dropped: AtomicU64,
}

/// Holds one connection until cancelled.
async fn hold(mut c: Client, counters: Arc<Counters>, cancel: CancellationToken) {
    let r: Result<(), ClientError> = async {
        loop {
            c.flush().await?;
            c.shrink_idle();
            let deadline = c.deadline();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                r = c.fill() => r?,
                _ = tokio::time::sleep_until(deadline) => {
                    let before = c.stats().pings;
                    c.on_deadline()?;
                    if c.stats().pings > before {
                        counters.pings.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            while let Some(ev) = c.poll_event()? {
                if ev == Event::Pong {
                    counters.pongs.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    .await;
    if r.is_err() {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the scenario.
pub async fn run(env: &Env, o: &ConnectionsOptions) -> Result<Report, BenchError> {
    if o.connections == 0 {
        return Err(BenchError::Setup("--connections must be at least 1".into()));
    }
    crate::env::check_connection_budget(o.connections).map_err(BenchError::Setup)?;
    let mut report = Report::new(
        "connections",
        serde_json::to_value(o).unwrap_or_default(),
        env.transport(),
    );
    let uids: Vec<i64> = (0..o.connections as i64)
        .map(|i| env.uid_base + i)
        .collect();
    let tokens = env.tokens.issue(env.appid, &uids).await?;
    let baseline = match &env.memory {
        Some(m) => m.rss().await,
        None => None,
    };
    let kernel_before = crate::server::kernel_memory();

    let counters = Arc::new(Counters::default());
    let cancel = CancellationToken::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(env.connect_concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Duration, String>>();
    let mut set = JoinSet::new();
    let start = Instant::now();
    let ramp_deadline = start + env.duration;
    let bar = progress_bar(env.progress, o.connections as u64, "connections");
    let mut hist = new_histogram();
    let mut connected = 0u64;
    let mut failed = 0u64;
    let mut first_error = None;
    let mut timeline = Vec::new();
    let mut last_sample = (start, 0u64);
    let mut spawned = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut capped = false;
    while (connected + failed) < o.connections as u64 {
        // Spawn the connections the rate allows so far (all of them when unpaced).
        let allowed = match o.rate {
            Some(r) => ((start.elapsed().as_secs_f64() * r) as usize + 1).min(o.connections),
            None => o.connections,
        };
        while spawned < allowed {
            let i = spawned;
            spawned += 1;
            let opts = env.connect_options(i, uids[i], tokens[i].clone());
            let (sem, tx, counters, cancel) =
                (sem.clone(), tx.clone(), counters.clone(), cancel.clone());
            let bound = env.client.connect_timeout;
            set.spawn(async move {
                let setup = async {
                    let _permit = sem.acquire_owned().await;
                    let t0 = Instant::now();
                    let mut c = Client::connect(&opts).await?;
                    let took = t0.elapsed();
                    settle(&mut c, bound).await?;
                    Ok::<_, ClientError>((c, took))
                };
                let setup = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = setup => r,
                };
                match setup {
                    Ok((c, took)) => {
                        let _ = tx.send(Ok(took));
                        hold(c, counters, cancel).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
        tokio::select! {
            Some(r) = rx.recv() => {
                match r {
                    Ok(took) => {
                        connected += 1;
                        hist.saturating_record(took.as_micros() as u64);
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
                bar.set_position(connected + failed);
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if now.duration_since(last_sample.0) >= Duration::from_millis(250) {
                    let rate = (connected - last_sample.1) as f64 / now.duration_since(last_sample.0).as_secs_f64();
                    timeline.push(Sample {
                        t: now.duration_since(start).as_secs_f64(),
                        rate,
                    });
                    bar.set_message(format!("connections ({rate:.0}/s)"));
                    last_sample = (now, connected);
                }
                if now >= ramp_deadline {
                    capped = true;
                    break;
                }
            }
        }
    }
    let ramp = start.elapsed();
    bar.finish_and_clear();

    // Hold, reading memory after the settle time and at the end.
    let hold_start = Instant::now();
    let mut rss = None::<u64>;
    let mut kernel_held = None;
    if !capped && connected > 0 {
        tokio::time::sleep(o.settle.min(o.hold)).await;
        if let Some(m) = &env.memory {
            rss = m.rss().await;
        }
        kernel_held = crate::server::kernel_memory();
        let rest = o.hold.saturating_sub(hold_start.elapsed());
        tokio::time::sleep(rest).await;
        if let Some(m) = &env.memory {
            if let Some(r) = m.rss().await {
                rss = Some(rss.map_or(r, |x| x.max(r)));
            }
        }
    }
    cancel.cancel();
    while set.join_next().await.is_some() {}

    let mut fig = ConnectionFigures {
        connections: connected,
        failed_connections: failed,
        dropped_connections: counters.dropped.load(Ordering::Relaxed),
        connect_per_sec: connected as f64 / ramp.as_secs_f64().max(1e-6),
        server_rss_baseline_bytes: baseline,
        server_rss_bytes: rss,
        pings: counters.pings.load(Ordering::Relaxed),
        pongs: counters.pongs.load(Ordering::Relaxed),
        ..ConnectionFigures::default()
    };
    if !hist.is_empty() {
        let ms = |us: u64| us as f64 / 1000.0;
        fig.connect_p50_ms = ms(hist.value_at_quantile(0.5));
        fig.connect_p99_ms = ms(hist.value_at_quantile(0.99));
        fig.connect_max_ms = ms(hist.max());
    }
    if let (Some(before), Some(held)) = (kernel_before, kernel_held) {
        fig.host_slab_delta_bytes = Some(held.slab_bytes as i64 - before.slab_bytes as i64);
        fig.host_tcp_buffer_delta_bytes =
            Some(held.tcp_buffer_bytes as i64 - before.tcp_buffer_bytes as i64);
    }
    if let (Some(b), Some(r)) = (baseline, rss) {
        if connected > 0 {
            fig.bytes_per_connection = Some(r.saturating_sub(b) as f64 / connected as f64);
        }
    }
    report.duration_secs = ramp.as_secs_f64() + hold_start.elapsed().as_secs_f64();
    if capped {
        report.fail(format!(
            "only {connected} of {} connections were up at the duration cap of {:.0} s",
            o.connections,
            env.duration.as_secs_f64()
        ));
    }
    if failed > 0 {
        report.fail(format!(
            "{failed} connections failed; first error: {}",
            first_error.unwrap_or_default()
        ));
    }
    if fig.dropped_connections > 0 {
        report.fail(format!(
            "{} connections dropped while held",
            fig.dropped_connections
        ));
    }
    report.connections = Some(fig);
    report.latency = Some(hist);
    report.timeline_label = "connections/s".into();
    report.timeline = timeline;
    Ok(report)
}
