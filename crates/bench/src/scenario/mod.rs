//! The scenarios and the machinery they share.
//!
//! A message scenario (`peer`, `group`, `room`) connects and settles all its clients first (authenticated,
//! initial sync done, rooms entered), then starts one task per connection. A task may send (a
//! [`SendPlan`]: a stream of numbered messages, with a window of un-ACKed messages and an optional rate) and
//! may receive (a [`Book`] of the streams it expects). A receiver that has everything does a final sync and
//! counts anything it returns as a duplicate. A supervisor samples progress for the timeline and the
//! progress bar and ends the run when every task is done, when nothing has moved for the drain timeout, or
//! at the duration cap; every task is then cancelled and its accounting collected.

pub mod connections;
pub mod group;
pub mod media;
pub mod peer;
pub mod push;
pub mod room;
pub mod store;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::accounting::{Book, Outcome, Tally};
use crate::client::{Client, ClientError, ClientStats, Event, Kind, Via};
use crate::content::{self, Payload};
use crate::env::Env;
use crate::report::{new_histogram, MessageFigures, ProcessCpu, Report, Sample};

/// Why a scenario could not run (as opposed to a run that ran and failed its checks, which is a
/// [`Report`] with `ok == false`).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("tokens: {0}")]
    Tokens(#[from] crate::tokens::TokenError),
    #[error(
        "{failed} of {total} connections failed to connect or authenticate; first error: {first}"
    )]
    Connect {
        failed: usize,
        total: usize,
        first: String,
    },
    #[error("server API: {0}")]
    Http(#[from] crate::api::HttpError),
    #[error("server: {0}")]
    Server(#[from] crate::server::ServerError),
    #[error("{0}")]
    Setup(String),
    #[error("client: {0}")]
    Client(#[from] ClientError),
}

/// A deliberate fault, to prove the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The first sender skips message `n` (numbers stay as planned, so the receiver sees a gap).
    Withhold { n: u64 },
    /// The first sender sends message `n` twice.
    Duplicate { n: u64 },
}

/// What one task sends.
#[derive(Debug, Clone)]
pub(crate) struct SendPlan {
    pub kind: Kind,
    pub to: i64,
    pub count: u64,
    /// Messages per second for this sender.
    pub rate: Option<f64>,
    pub window: usize,
    pub size: usize,
    pub fault: Option<Fault>,
}

/// How a receiver proves there is nothing more to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Nothing to verify (rooms).
    None,
    /// A final SYNC of the personal queue.
    Personal,
    /// A final SYNC_GROUP of this super group.
    Group(i64),
}

/// A task's part in the run.
pub(crate) struct Role {
    pub send: Option<SendPlan>,
    pub book: Option<Book>,
    /// The command whose messages are counted (IM, GROUP_IM, ROOM_IM).
    pub accept_cmd: u8,
    pub verify: Verify,
}

/// Progress counters shared by the tasks and the supervisor.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    pub done: AtomicUsize,
}

/// What one task reports at the end.
pub(crate) struct MemberResult {
    pub written: u64,
    pub acked: u64,
    pub refused: u64,
    pub book: Option<Book>,
    pub hist: Histogram<u64>,
    pub last_delivery: Option<Instant>,
    pub via_push: u64,
    pub via_sync: u64,
    pub own: u64,
    pub stats: ClientStats,
    pub error: Option<String>,
    pub done: bool,
    /// The client's sync state when the task did not finish.
    pub state: Option<String>,
}

/// A connection to set up: uid, token, super groups, and the access node it goes to (`None`: spread
/// round-robin by its index, [`Env::node_for`]).
pub(crate) struct ConnSpec {
    pub uid: i64,
    pub token: String,
    pub super_groups: Vec<i64>,
    pub node: Option<usize>,
}

/// Connects and authenticates every spec (bounded concurrency) and waits for each initial sync to end.
/// All or nothing: any failure is a [`BenchError::Connect`].
pub(crate) async fn connect_all(
    env: &Env,
    specs: Vec<ConnSpec>,
) -> Result<Vec<Client>, BenchError> {
    let total = specs.len();
    crate::env::check_connection_budget(total).map_err(BenchError::Setup)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(env.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let node = spec.node.unwrap_or_else(|| env.node_for(i));
        let mut opts = env.connect_options_on(node, i, spec.uid, spec.token);
        opts.super_groups = spec.super_groups;
        let sem = sem.clone();
        let bound = env.client.connect_timeout;
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let r = async {
                let mut c = Client::connect(&opts).await?;
                settle(&mut c, bound).await?;
                Ok::<_, ClientError>(c)
            }
            .await;
            (i, r)
        });
    }
    let mut clients: Vec<Option<Client>> = (0..total).map(|_| None).collect();
    let mut failed = 0;
    let mut first = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(c))) => clients[i] = Some(c),
            Ok((_, Err(e))) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if failed > 0 {
        return Err(BenchError::Connect {
            failed,
            total,
            first: first.unwrap_or_default(),
        });
    }
    Ok(clients.into_iter().flatten().collect())
}

/// Drives a fresh client until its initial syncs have ended (bounded).
pub(crate) async fn settle(c: &mut Client, bound: Duration) -> Result<(), ClientError> {
    let deadline = Instant::now() + bound;
    while c.is_syncing() {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(ClientError::Timeout("initial sync")),
        }
    }
    c.flush().await
}

/// Sends PING and waits for PONG: once it arrives, everything sent before it has been processed.
pub(crate) async fn round_trip(c: &mut Client, bound: Duration) -> Result<(), ClientError> {
    c.ping();
    let deadline = Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Ok(Event::Pong)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ClientError::Timeout("PONG")),
        }
    }
}

/// One connection's task: sends its plan, accounts what it receives, verifies, then idles until cancelled.
pub(crate) async fn member(
    mut c: Client,
    mut role: Role,
    env: Arc<Env>,
    shared: Arc<Shared>,
    start: Instant,
    cancel: CancellationToken,
) -> MemberResult {
    let mut r = MemberResult {
        written: 0,
        acked: 0,
        refused: 0,
        book: None,
        hist: new_histogram(),
        last_delivery: None,
        via_push: 0,
        via_sync: 0,
        own: 0,
        stats: ClientStats::default(),
        error: None,
        done: false,
        state: None,
    };
    let uid = c.uid();
    let mut n: u64 = 0;
    let mut send_done = role.send.is_none();
    // An empty book has nothing to wait for (and nothing to verify).
    let mut recv_done = role.book.as_ref().is_none_or(Book::complete);
    let mut verifying = false;
    if send_done && recv_done {
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    let err: Result<(), ClientError> = async {
        loop {
            // Send what the window and the rate allow.
            let mut next_due = None;
            if let Some(plan) = &role.send {
                let before = r.written;
                while n < plan.count && r.written - (r.acked + r.refused) < plan.window as u64 {
                    if let Some(rate) = plan.rate {
                        let due = start + Duration::from_secs_f64(n as f64 / rate);
                        if Instant::now() < due {
                            next_due = Some(due);
                            break;
                        }
                    }
                    let copies = match plan.fault {
                        Some(Fault::Withhold { n: w }) if w == n => 0,
                        Some(Fault::Duplicate { n: d }) if d == n => 2,
                        _ => 1,
                    };
                    for _ in 0..copies {
                        let p = Payload {
                            run: env.run_id,
                            n,
                            t: env.now_ns(),
                        };
                        let size = plan.size;
                        c.queue_message(plan.kind, plan.to, 0, |b| content::write(b, p, size));
                        r.written += 1;
                    }
                    n += 1;
                }
                if r.written > before {
                    shared.sent.fetch_add(r.written - before, Ordering::Relaxed);
                }
                if !send_done && n == plan.count && r.acked + r.refused >= r.written {
                    send_done = true;
                    if recv_done {
                        shared.done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            c.flush().await?;
            let wake = match next_due {
                Some(d) => d.min(c.deadline()),
                None => c.deadline(),
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                res = c.fill() => res?,
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= c.deadline() {
                        c.on_deadline()?;
                    }
                }
            }
            let mut delivered = 0u64;
            let mut acks = 0u64;
            while let Some(ev) = c.poll_event()? {
                match ev {
                    Event::Message(m) if m.cmd == role.accept_cmd => {
                        let Some(book) = role.book.as_mut() else {
                            continue;
                        };
                        if m.sender == uid {
                            r.own += 1;
                            continue;
                        }
                        match content::parse(&m.content) {
                            Some(p) if p.run == env.run_id => {
                                let outcome = book.record(m.sender, p.n);
                                if matches!(outcome, Outcome::New | Outcome::OutOfOrder) {
                                    delivered += 1;
                                    let now = env.now_ns();
                                    r.hist.saturating_record(now.saturating_sub(p.t) / 1000);
                                    match m.via {
                                        Via::Push => r.via_push += 1,
                                        Via::Sync => r.via_sync += 1,
                                        Via::Direct => {}
                                    }
                                }
                            }
                            _ => book.record_foreign(),
                        }
                    }
                    Event::Ack { status, .. } => {
                        acks += 1;
                        if status == 0 {
                            r.acked += 1;
                        } else {
                            r.refused += 1;
                        }
                    }
                    Event::SyncEnd { .. } | Event::GroupSyncEnd { .. }
                        if verifying && !c.is_syncing() =>
                    {
                        verifying = false;
                        recv_done = true;
                        if send_done {
                            shared.done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
            if delivered > 0 {
                r.last_delivery = Some(Instant::now());
                shared.received.fetch_add(delivered, Ordering::Relaxed);
            }
            if acks > 0 {
                shared.acked.fetch_add(acks, Ordering::Relaxed);
            }
            if !recv_done && !verifying && role.book.as_ref().is_some_and(|b| b.complete()) {
                match role.verify {
                    Verify::None => {
                        recv_done = true;
                        if send_done {
                            shared.done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Verify::Personal => {
                        verifying = true;
                        c.request_sync();
                    }
                    Verify::Group(g) => {
                        verifying = true;
                        c.request_group_sync(g);
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = err {
        r.error = Some(e.to_string());
    }
    r.done = send_done && recv_done;
    if !r.done {
        r.state = Some(format!(
            "{}; {} of {} sent ACKed",
            c.describe_sync_state(),
            r.acked + r.refused,
            r.written
        ));
    }
    r.book = role.book.take();
    r.stats = c.stats();
    r
}

/// Why the supervisor ended the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Every task finished.
    Complete,
    /// Nothing moved for the drain timeout.
    Stalled,
    /// The duration cap was reached.
    Capped,
}

/// Samples progress until the run ends; returns the timeline and why it ended.
pub(crate) async fn supervise(
    env: &Env,
    shared: &Shared,
    tasks: usize,
    expected: u64,
    start: Instant,
    label: &str,
) -> (End, Vec<Sample>) {
    let bar = progress_bar(env.progress, expected, label);
    let tick = Duration::from_millis(100);
    let sample_every = Duration::from_millis(250);
    let mut timeline = Vec::new();
    let mut last_sample = (start, 0u64);
    let mut last_change = Instant::now();
    let mut last_seen = (0, 0, 0);
    let end = loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let seen = (
            shared.sent.load(Ordering::Relaxed),
            shared.acked.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
        );
        if seen != last_seen {
            last_seen = seen;
            last_change = now;
        }
        bar.set_position(seen.2.min(expected));
        if now.duration_since(last_sample.0) >= sample_every {
            let dt = now.duration_since(last_sample.0).as_secs_f64();
            let rate = (seen.2 - last_sample.1) as f64 / dt;
            timeline.push(Sample {
                t: now.duration_since(start).as_secs_f64(),
                rate,
            });
            bar.set_message(format!("{label} ({rate:.0}/s)"));
            last_sample = (now, seen.2);
        }
        if shared.done.load(Ordering::Relaxed) >= tasks {
            break End::Complete;
        }
        if now.duration_since(last_change) >= env.drain_timeout {
            break End::Stalled;
        }
        if now.duration_since(start) >= env.duration {
            break End::Capped;
        }
    };
    bar.finish_and_clear();
    (end, timeline)
}

/// A progress bar on stderr (hidden when stderr is not a terminal, or when `show` is false).
pub(crate) fn progress_bar(show: bool, len: u64, label: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {human_pos}/{human_len} {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(label.to_string());
    bar
}

/// Runs settled clients with their roles and turns their results into a report's message figures.
pub(crate) async fn run_members(
    env: &Env,
    report: &mut Report,
    members: Vec<(Client, Role)>,
    expected: u64,
    messages_planned: u64,
    strict: bool,
) {
    let env_arc = Arc::new(env.clone());
    let shared = Arc::new(Shared::default());
    let cancel = CancellationToken::new();
    let tasks = members.len();
    let server_pid = match &env.memory {
        Some(crate::server::MemorySource::Pid(p)) => Some(*p),
        _ => None,
    };
    let own_pid = std::process::id();
    let cpu_before = (
        crate::server::cpu_secs(own_pid),
        server_pid.and_then(crate::server::cpu_secs),
    );
    let watched_before: Vec<Option<f64>> = env
        .cpu_pids
        .iter()
        .map(|(_, pid)| crate::server::cpu_secs(*pid))
        .collect();
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (c, role) in members {
        set.spawn(member(
            c,
            role,
            env_arc.clone(),
            shared.clone(),
            start,
            cancel.clone(),
        ));
    }
    let (end, timeline) = supervise(env, &shared, tasks, expected, start, "deliveries").await;
    let ended = Instant::now();
    let cpu_after = (
        crate::server::cpu_secs(own_pid),
        server_pid.and_then(crate::server::cpu_secs),
    );
    let watched_after: Vec<Option<f64>> = env
        .cpu_pids
        .iter()
        .map(|(_, pid)| crate::server::cpu_secs(*pid))
        .collect();
    cancel.cancel();
    let mut results = Vec::with_capacity(tasks);
    while let Some(j) = set.join_next().await {
        match j {
            Ok(r) => results.push(r),
            Err(e) => report.fail(format!("a client task failed: {e}")),
        }
    }
    let mut fig = MessageFigures::default();
    let mut tally = Tally::default();
    let mut hist = new_histogram();
    let mut last = None::<Instant>;
    let mut errors = Vec::new();
    let mut missing_notes = Vec::new();
    for r in &results {
        fig.messages_sent += r.written;
        fig.messages_acked += r.acked;
        fig.messages_refused += r.refused;
        fig.via_push += r.via_push;
        fig.via_sync += r.via_sync;
        fig.pushes_discarded += r.stats.pushes_discarded;
        fig.syncs += r.stats.syncs;
        fig.sync_timeouts += r.stats.sync_timeouts;
        fig.syncs_unanswered += r.stats.syncs.saturating_sub(r.stats.sync_ends);
        let _ = hist.add(&r.hist);
        if let Some(t) = r.last_delivery {
            last = Some(last.map_or(t, |l: Instant| l.max(t)));
        }
        if let Some(book) = &r.book {
            tally.add(&book.tally());
            if missing_notes.len() < 5 {
                for (sender, ns) in book.missing(8) {
                    if missing_notes.len() < 5 {
                        missing_notes.push(format!("missing from sender {sender}: {ns:?}…"));
                    }
                }
            }
        }
        if let Some(e) = &r.error {
            errors.push(e.clone());
        }
    }
    let measured = last
        .unwrap_or(ended)
        .duration_since(start)
        .as_secs_f64()
        .max(1e-6);
    report.duration_secs = measured;
    fig.set_tally(&tally);
    fig.set_latency(&hist);
    if let (Some(a), Some(b)) = (cpu_before.0, cpu_after.0) {
        fig.client_cpu_secs = b - a;
    }
    if let (Some(a), Some(b)) = (cpu_before.1, cpu_after.1) {
        fig.server_cpu_secs = Some(b - a);
        if fig.messages_acked > 0 {
            fig.server_cpu_us_per_message = Some((b - a) * 1e6 / fig.messages_acked as f64);
        }
    }
    fig.process_cpu = env
        .cpu_pids
        .iter()
        .zip(watched_before.iter().zip(&watched_after))
        .map(|((name, pid), (a, b))| ProcessCpu {
            name: name.clone(),
            pid: *pid,
            cpu_secs: a.zip(*b).map(|(a, b)| b - a),
        })
        .collect();
    fig.deliveries_per_sec = tally.unique as f64 / measured;
    let fanout = if messages_planned == 0 {
        1.0
    } else {
        (expected as f64 / messages_planned as f64).max(1e-9)
    };
    fig.messages_per_sec = fig.deliveries_per_sec / fanout;
    match end {
        End::Complete => {}
        End::Stalled => report.notes.push(format!(
            "ended after {:.1} s without progress (drain timeout)",
            env.drain_timeout.as_secs_f64()
        )),
        End::Capped => report.fail(format!(
            "the run hit the duration cap of {:.0} s",
            env.duration.as_secs_f64()
        )),
    }
    if !errors.is_empty() {
        report.fail(format!(
            "{} connections failed during the run; first: {}",
            errors.len(),
            errors[0]
        ));
    }
    let unacked = fig
        .messages_sent
        .saturating_sub(fig.messages_acked + fig.messages_refused);
    if unacked > 0 {
        report.fail(format!("{unacked} messages were never ACKed by the server"));
    }
    if fig.sync_timeouts > 0 {
        report.notes.push(format!(
            "WARNING: {} syncs got no SYNC_END within {} s and were sent again: the server dropped \
             them (see its log); their messages arrived late",
            fig.sync_timeouts,
            crate::client::SYNC_IN_FLIGHT_LIMIT.as_secs()
        ));
    }
    let unfinished = results.iter().filter(|r| !r.done).count();
    if strict && unfinished > 0 && tally.lost == 0 && unacked == 0 && errors.is_empty() {
        report.fail(format!(
            "{unfinished} receivers got every message but no answer to their final SYNC"
        ));
    }
    if fig.messages_refused > 0 {
        report.fail(format!(
            "{} messages refused by the server (non-zero ACK status)",
            fig.messages_refused
        ));
    }
    if strict {
        if tally.lost > 0 {
            report.fail(format!(
                "{} of {} deliveries lost",
                tally.lost, tally.expected
            ));
        }
        if tally.duplicated > 0 {
            report.fail(format!("{} deliveries duplicated", tally.duplicated));
        }
        if tally.out_of_order > 0 {
            report.fail(format!("{} deliveries out of order", tally.out_of_order));
        }
    } else if tally.duplicated > 0 {
        report.fail(format!("{} deliveries duplicated", tally.duplicated));
    }
    if tally.unexpected > 0 {
        report.fail(format!(
            "{} unexpected messages (never sent)",
            tally.unexpected
        ));
    }
    report
        .notes
        .extend(missing_notes.into_iter().filter(|_| tally.lost > 0));
    for st in results.iter().filter_map(|r| r.state.as_ref()).take(5) {
        report.notes.push(format!("unfinished: {st}"));
    }
    report.timeline_label = "deliveries/s".into();
    report.timeline = timeline;
    report.latency = Some(hist);
    report.messages = Some(fig);
}
