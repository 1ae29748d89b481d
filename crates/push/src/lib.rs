//! Offline push to phones, built in: banter sends to Apple (APNs) and Google (FCM) itself.
//!
//! [`Pusher`] implements the backend's [`NativePush`] seam (`PushSink::Native`), so access nodes
//! and routers hand it the same [`PushJob`]s they would put on GoBelieve's Redis queues. A job
//! goes through:
//!
//! 1. the **intake queue** (bounded; `push` never blocks, a full queue drops and counts);
//! 2. the **journal** ([`journal`]): accepted jobs are written and synced in batches;
//! 3. **expansion**: per receiver, do-not-disturb is checked, the bound devices are read
//!    (`Backend::devices`), the badge is the stored unread count plus one (stored back), and the
//!    notification is rendered ([`render`]) in the app's language with the sender's name;
//! 4. one bounded **lane per provider** (APNs, FCM) with a concurrency limit: each notification is
//!    claimed in the journal, then sent ([`apns`], [`fcm`]); 429, 5xx, timeouts and connection
//!    errors are retried with exponential back-off and full jitter (or the provider's
//!    `Retry-After`), dead tokens are unbound from the user, other refusals are given up.
//!
//! A slow or dead provider only fills its own lane (then drops and counts); nothing waits on it
//! but the push tasks. The metrics ([`meters`]: sent, failed, retried, dropped, tokens removed,
//! skipped, OAuth tokens and the send-time histogram) go to the registry of the node that starts
//! the senders with [`Pusher::start_with`]. Credentials are never logged. See `docs/push.md`.
#![forbid(unsafe_code)]

pub mod apns;
pub mod config;
pub mod fcm;
pub mod http;
pub mod journal;
pub mod jws;
pub mod meters;
pub mod mock;
pub mod render;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{Backend, BackendError, NativePush, PushJob, PushProvider};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify, Semaphore};

pub use config::{ApnsOptions, AppPush, FcmOptions, NativeOptions, Texts};
use journal::{Claim, Journal};
pub use meters::PushMetrics;
use meters::{Skip, PROVIDERS};
use render::{Conversation, Notification};

/// Jobs (or notifications) taken off a queue at once.
const BATCH: usize = 256;
/// Jobs expanded concurrently.
const EXPAND_CONCURRENCY: usize = 32;
/// How long [`Pusher::flush`] waits at most.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Why the push senders could not start.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("push configuration: {0}")]
    Config(String),
    #[error("push journal: {0}")]
    Journal(#[from] std::io::Error),
}

/// The result of one send attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Worth another attempt, after `after` when the provider said so.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// The token is dead: unbind it.
    Unregistered(String),
    /// Refused for another reason: give up.
    Failed(String),
}

/// Counters since start (the node's metrics count the same events, per provider: [`meters`]).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushStats {
    pub accepted: u64,
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
    pub dropped: u64,
    pub tokens_removed: u64,
}

struct AppProviders {
    texts: Texts,
    apns: Option<Arc<apns::Apns>>,
    fcm: Option<Arc<fcm::Fcm>>,
}

#[derive(Clone)]
enum Sender {
    Apns { apns: Arc<apns::Apns>, voip: bool },
    Fcm(Arc<fcm::Fcm>),
}

impl Sender {
    fn lane(&self) -> usize {
        match self {
            Sender::Apns { .. } => 0,
            Sender::Fcm(_) => 1,
        }
    }
}

/// A job being expanded: done (in the journal) when every notification is claimed or dropped.
struct JobTrack {
    id: u64,
    remaining: AtomicUsize,
    shared: Arc<Shared>,
}

impl JobTrack {
    fn release(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.finished_jobs.fetch_add(1, Ordering::Release);
            if self.id != 0 {
                let _ = self.shared.done_tx.send(self.id);
            }
            self.shared.progress.notify_waiters();
        }
    }
}

struct Delivery {
    job: Arc<JobTrack>,
    appid: i64,
    uid: i64,
    provider: PushProvider,
    token: String,
    note: Arc<Notification>,
    sender: Sender,
}

struct Shared {
    backend: Backend,
    journal: Arc<Journal>,
    apps: HashMap<i64, AppProviders>,
    push_system: bool,
    lanes: Vec<mpsc::Sender<Delivery>>,
    max_attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    done_tx: mpsc::UnboundedSender<u64>,
    metrics: PushMetrics,
    accepted: AtomicU64,
    finished_jobs: AtomicU64,
    outstanding: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    removed: AtomicU64,
    progress: Notify,
}

/// The built-in APNs/FCM push senders (see the module docs). Hand it to the backend's push seam
/// as `PushSink::Native(pusher)`.
pub struct Pusher {
    tx: mpsc::Sender<PushJob>,
    shared: Arc<Shared>,
}

impl Pusher {
    /// [`Pusher::start_with`] without metrics: what it counts is only in [`Pusher::stats`].
    pub async fn start(
        opts: &NativeOptions,
        data_dir: &Path,
        backend: Backend,
    ) -> Result<Arc<Pusher>, PushError> {
        Pusher::start_with(opts, data_dir, backend, PushMetrics::unexported()).await
    }

    /// Reads the credentials, opens the journal in `data_dir` (re-queuing the jobs it holds) and
    /// starts the tasks, recording into `metrics` (registered in the node's registry with
    /// [`PushMetrics::register`]). Inside a tokio runtime.
    pub async fn start_with(
        opts: &NativeOptions,
        data_dir: &Path,
        backend: Backend,
        metrics: PushMetrics,
    ) -> Result<Arc<Pusher>, PushError> {
        for (what, v) in [
            ("queue_capacity", opts.queue_capacity),
            ("provider_queue_capacity", opts.provider_queue_capacity),
            ("concurrency", opts.concurrency),
            ("max_attempts", opts.max_attempts as usize),
        ] {
            if v == 0 {
                return Err(PushError::Config(format!("push.native.{what} must be > 0")));
            }
        }
        let timeout = Duration::from_millis(opts.timeout_ms.max(1));
        let mut apps = HashMap::new();
        for a in &opts.apps {
            if a.appid <= 0 {
                return Err(PushError::Config(format!(
                    "push.native.apps: appid must be > 0, got {}",
                    a.appid
                )));
            }
            let texts = match (opts.texts.get(&a.language), a.language.as_str()) {
                (Some(t), _) => t.clone(),
                (None, "en") => Texts::english(),
                (None, "zh") => Texts::chinese(),
                (None, other) => {
                    return Err(PushError::Config(format!(
                        "app {}: language {other:?} has no [push.native.texts.{other}]",
                        a.appid
                    )))
                }
            };
            let apns = match &a.apns {
                Some(o) => Some(Arc::new(apns::Apns::new(o, &opts.ca_file, timeout)?)),
                None => None,
            };
            let fcm = match &a.fcm {
                Some(o) => Some(Arc::new(fcm::Fcm::new(
                    o,
                    &opts.ca_file,
                    timeout,
                    metrics.oauth_tokens.clone(),
                )?)),
                None => None,
            };
            if apps
                .insert(a.appid, AppProviders { texts, apns, fcm })
                .is_some()
            {
                return Err(PushError::Config(format!(
                    "push.native.apps: appid {} listed twice",
                    a.appid
                )));
            }
        }
        let dir = data_dir.to_path_buf();
        let (journal, recovered) = tokio::task::spawn_blocking(move || Journal::open(&dir))
            .await
            .map_err(|e| PushError::Config(format!("journal task: {e}")))??;
        let journal = Arc::new(journal);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut lanes = Vec::new();
        let mut lane_rxs = Vec::new();
        for _ in PROVIDERS {
            let (tx, rx) = mpsc::channel(opts.provider_queue_capacity);
            lanes.push(tx);
            lane_rxs.push(rx);
        }
        let shared = Arc::new(Shared {
            backend,
            journal: journal.clone(),
            apps,
            push_system: opts.push_system,
            lanes,
            max_attempts: opts.max_attempts,
            backoff: Duration::from_millis(opts.backoff_ms.max(1)),
            max_backoff: Duration::from_millis(opts.max_backoff_ms.max(opts.backoff_ms).max(1)),
            done_tx,
            metrics,
            accepted: AtomicU64::new(0),
            finished_jobs: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            progress: Notify::new(),
        });
        for (i, rx) in lane_rxs.into_iter().enumerate() {
            let sem = Arc::new(Semaphore::new(opts.concurrency));
            tokio::spawn(lane(i, rx, sem, shared.clone()));
        }
        tokio::spawn(write_done(done_rx, journal));
        let (tx, rx) = mpsc::channel(opts.queue_capacity);
        if !recovered.is_empty() {
            tracing::info!(
                jobs = recovered.len(),
                "re-queuing offline push jobs from the journal"
            );
        }
        shared
            .accepted
            .fetch_add(recovered.len() as u64, Ordering::Relaxed);
        tokio::spawn(intake(rx, shared.clone(), recovered));
        Ok(Arc::new(Pusher { tx, shared }))
    }

    /// Counters since start.
    pub fn stats(&self) -> PushStats {
        let s = &self.shared;
        PushStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            tokens_removed: s.removed.load(Ordering::Relaxed),
        }
    }

    /// Jobs accepted and not yet fully claimed, as the journal holds them.
    pub fn live_jobs(&self) -> usize {
        self.shared.journal.live()
    }

    /// Waits (at most 5 s) until every job accepted before the call is expanded and every
    /// notification sent or given up. What is left stays in the journal (unclaimed notifications
    /// are sent after a restart).
    pub async fn flush(&self) -> Result<(), BackendError> {
        let target = self.shared.accepted.load(Ordering::Relaxed);
        let deadline = Instant::now() + FLUSH_LIMIT;
        loop {
            let notified = self.shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let finished = self.shared.finished_jobs.load(Ordering::Acquire);
            let outstanding = self.shared.outstanding.load(Ordering::Acquire);
            if finished >= target && outstanding == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Internal(format!(
                    "offline push not drained: {} jobs being expanded, {outstanding} notifications pending",
                    target.saturating_sub(finished)
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

impl NativePush for Pusher {
    fn push(&self, job: PushJob) {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.intake_dropped.increment(1);
                node::warn_throttled!("offline push queue full; job dropped");
            }
        }
    }

    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn delivered(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    fn flush(
        &self,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<(), BackendError>> + Send + '_>> {
        Box::pin(Pusher::flush(self))
    }
}

/// Writes the `done` records, batched.
async fn write_done(mut rx: mpsc::UnboundedReceiver<u64>, journal: Arc<Journal>) {
    let mut ids = Vec::new();
    while rx.recv_many(&mut ids, 4096).await > 0 {
        let j = journal.clone();
        let batch = std::mem::take(&mut ids);
        match tokio::task::spawn_blocking(move || j.done(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => node::warn_throttled!(error = %e, "writing the push journal failed"),
            Err(e) => node::warn_throttled!(error = %e, "push journal task failed"),
        }
    }
}

/// Journals accepted jobs and expands them; first the jobs recovered from the journal.
async fn intake(
    mut rx: mpsc::Receiver<PushJob>,
    shared: Arc<Shared>,
    recovered: Vec<journal::Recovered>,
) {
    let recovered: Vec<(u64, PushJob, HashSet<Claim>)> = recovered
        .into_iter()
        .map(|r| (r.id, r.job, r.claims))
        .collect();
    expand_all(&shared, recovered).await;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let jobs = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        let j = shared.journal.clone();
        let to_write = jobs.clone();
        let ids = match tokio::task::spawn_blocking(move || j.add_jobs(&to_write)).await {
            Ok(Ok(ids)) => ids,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                node::warn_throttled!(error = %why, "writing the push journal failed; pushing without it");
                vec![0; jobs.len()]
            }
        };
        let work = ids
            .into_iter()
            .zip(jobs)
            .map(|(id, job)| (id, job, HashSet::new()))
            .collect();
        expand_all(&shared, work).await;
    }
}

async fn expand_all(shared: &Arc<Shared>, jobs: Vec<(u64, PushJob, HashSet<Claim>)>) {
    futures_util::stream::iter(jobs)
        .for_each_concurrent(EXPAND_CONCURRENCY, |(id, job, claims)| {
            let shared = shared.clone();
            async move { expand(&shared, id, job, &claims).await }
        })
        .await;
}

/// Resolves one job into notifications and hands them to the provider lanes.
async fn expand(shared: &Arc<Shared>, id: u64, job: PushJob, claims: &HashSet<Claim>) {
    // One guard reference, released at the end, so the job cannot finish while being expanded.
    let track = Arc::new(JobTrack {
        id,
        remaining: AtomicUsize::new(1),
        shared: shared.clone(),
    });
    let (appid, name_of, receivers, conversation, content) = match job {
        PushJob::Peer {
            appid,
            sender,
            receiver,
            content,
        } => (
            appid,
            Some((appid, sender)),
            vec![receiver],
            Conversation::Peer { sender },
            content,
        ),
        PushJob::Group {
            appid,
            sender,
            group_id,
            receivers,
            content,
        } => (
            appid,
            Some((appid, sender)),
            receivers,
            Conversation::Group { sender, group_id },
            content,
        ),
        PushJob::Customer {
            sender_appid,
            sender,
            receiver_appid,
            receiver,
            content,
        } => (
            receiver_appid,
            Some((sender_appid, sender)),
            vec![receiver],
            Conversation::Customer {
                sender_appid,
                sender,
            },
            content,
        ),
        PushJob::System {
            appid,
            receiver,
            content,
        } => (appid, None, vec![receiver], Conversation::System, content),
    };
    let Some(app) = shared.apps.get(&appid) else {
        shared.metrics.skipped(Skip::NoProvider);
        track.release();
        return;
    };
    if conversation == Conversation::System && !shared.push_system {
        shared.metrics.skipped(Skip::System);
        track.release();
        return;
    }
    let name = match name_of {
        Some((a, u)) if a > 0 && u > 0 => shared.backend.user_name(a, u).await.unwrap_or_default(),
        _ => String::new(),
    };
    let title = render::title(&conversation, &name, &app.texts);
    let body = render::body(&content, &app.texts);
    let mut seen: HashSet<(PushProvider, String)> = HashSet::new();
    for uid in receivers {
        if uid <= 0 {
            continue;
        }
        match shared.backend.dnd(appid, uid).await {
            Ok(d) => {
                let group_off = matches!(conversation, Conversation::Group { group_id, .. } if d.groups.contains(&group_id));
                if d.user || group_off {
                    shared.metrics.skipped(Skip::DoNotDisturb);
                    continue;
                }
            }
            Err(e) => {
                node::warn_throttled!(error = %e, "reading do-not-disturb settings failed; pushing anyway")
            }
        }
        let devices = match shared.backend.devices(appid, uid).await {
            Ok(d) => d,
            Err(e) => {
                node::warn_throttled!(error = %e, "reading push devices failed; notification skipped");
                shared.metrics.skipped(Skip::BackendError);
                continue;
            }
        };
        let targets: Vec<(PushProvider, String, Sender)> = devices
            .into_iter()
            .filter_map(|d| {
                let sender = match (d.provider, &app.apns, &app.fcm) {
                    (PushProvider::Apns, Some(a), _) => Sender::Apns {
                        apns: a.clone(),
                        voip: false,
                    },
                    (PushProvider::PushKit, Some(a), _) => Sender::Apns {
                        apns: a.clone(),
                        voip: true,
                    },
                    (PushProvider::Gcm, _, Some(f)) => Sender::Fcm(f.clone()),
                    _ => return None,
                };
                Some((d.provider, d.token, sender))
            })
            .filter(|(p, t, _)| !claims.contains(&(uid, *p, t.clone())))
            .filter(|(p, t, _)| seen.insert((*p, t.clone())))
            .collect();
        if targets.is_empty() {
            shared.metrics.skipped(Skip::NoDevice);
            continue;
        }
        let badge = shared
            .backend
            .unread(appid, uid)
            .await
            .unwrap_or(0)
            .saturating_add(1);
        shared.backend.set_unread(appid, uid, badge);
        let note = Arc::new(Notification {
            conversation,
            title: title.clone(),
            body: body.clone(),
            badge,
        });
        for (provider, token, sender) in targets {
            let lane = sender.lane();
            track.remaining.fetch_add(1, Ordering::AcqRel);
            shared.outstanding.fetch_add(1, Ordering::AcqRel);
            let d = Delivery {
                job: track.clone(),
                appid,
                uid,
                provider,
                token,
                note: note.clone(),
                sender,
            };
            if let Err(e) = shared.lanes[lane].try_send(d) {
                let d = e.into_inner();
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                shared.metrics.lanes[lane].dropped.increment(1);
                node::warn_throttled!(
                    provider = PROVIDERS[lane],
                    "push provider queue full; notification dropped"
                );
                finish(shared, &d);
            }
        }
    }
    track.release();
}

/// A notification is over (sent, given up or dropped).
fn finish(shared: &Shared, d: &Delivery) {
    d.job.release();
    shared.outstanding.fetch_sub(1, Ordering::AcqRel);
    shared.progress.notify_waiters();
}

/// One provider's lane: takes notifications as send slots free up, claims them, sends them.
async fn lane(
    i: usize,
    mut rx: mpsc::Receiver<Delivery>,
    sem: Arc<Semaphore>,
    shared: Arc<Shared>,
) {
    loop {
        let Ok(first_permit) = sem.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![(first_permit, first)];
        while batch.len() < BATCH {
            let Ok(p) = sem.clone().try_acquire_owned() else {
                break;
            };
            match rx.try_recv() {
                Ok(d) => batch.push((p, d)),
                Err(_) => break,
            }
        }
        let claims: Vec<(u64, Claim)> = batch
            .iter()
            .filter(|(_, d)| d.job.id != 0)
            .map(|(_, d)| (d.job.id, (d.uid, d.provider, d.token.clone())))
            .collect();
        if !claims.is_empty() {
            let j = shared.journal.clone();
            match tokio::task::spawn_blocking(move || j.claim(&claims)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    node::warn_throttled!(error = %e, "writing push claims failed; sending anyway")
                }
                Err(e) => {
                    node::warn_throttled!(error = %e, "push journal task failed; sending anyway")
                }
            }
        }
        for (permit, d) in batch {
            // Claimed: the job no longer needs this notification after a restart.
            d.job.release();
            let shared = shared.clone();
            let sem = sem.clone();
            tokio::spawn(async move {
                send(&shared, i, &d, permit, &sem).await;
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                shared.progress.notify_waiters();
            });
        }
    }
}

/// The wait before attempt `attempt + 1`: the provider's `Retry-After`, else exponential back-off
/// with full jitter; at most `max`.
pub fn retry_delay(
    attempt: u32,
    after: Option<Duration>,
    base: Duration,
    max: Duration,
) -> Duration {
    if let Some(a) = after {
        return a.min(max);
    }
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(max);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::random_range(ms / 2..=ms.max(1)))
}

async fn send(
    shared: &Shared,
    lane: usize,
    d: &Delivery,
    permit: tokio::sync::OwnedSemaphorePermit,
    sem: &Arc<Semaphore>,
) {
    let apns_body = match &d.sender {
        Sender::Apns { .. } => {
            Bytes::from(serde_json::to_vec(&apns::Apns::payload(&d.note)).unwrap_or_default())
        }
        Sender::Fcm(_) => Bytes::new(),
    };
    let provider = PROVIDERS[lane];
    let meters = &shared.metrics.lanes[lane];
    let mut permit = Some(permit);
    let mut attempt = 1;
    loop {
        let held = match permit.take() {
            Some(p) => p,
            None => match sem.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let started = Instant::now();
        let outcome = match &d.sender {
            Sender::Apns { apns, voip } => apns.send(&d.token, *voip, &d.note, &apns_body).await,
            Sender::Fcm(f) => f.send(&d.token, &d.note).await,
        };
        meters.send_seconds.record(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Sent => {
                shared.sent.fetch_add(1, Ordering::Relaxed);
                meters.sent.increment(1);
                tracing::debug!(provider, appid = d.appid, uid = d.uid, "push sent");
                return;
            }
            Outcome::Unregistered(why) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                meters.failed.increment(1);
                tracing::debug!(
                    provider,
                    appid = d.appid,
                    uid = d.uid,
                    why,
                    "push token is dead; unbinding it"
                );
                let tokens = [(d.provider, d.token.clone())];
                match shared.backend.unbind_devices(d.appid, d.uid, &tokens).await {
                    Ok(_) => {
                        shared.removed.fetch_add(1, Ordering::Relaxed);
                        meters.tokens_removed.increment(1);
                    }
                    Err(e) => {
                        node::warn_throttled!(provider, error = %e, "unbinding a dead push token failed")
                    }
                }
                return;
            }
            Outcome::Failed(why) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                meters.failed.increment(1);
                node::warn_throttled!(provider, why, "push refused; given up");
                return;
            }
            Outcome::Retry { why, after } => {
                if attempt >= shared.max_attempts {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    meters.failed.increment(1);
                    node::warn_throttled!(
                        provider,
                        why,
                        attempts = attempt,
                        "push failed; given up"
                    );
                    return;
                }
                shared.retried.fetch_add(1, Ordering::Relaxed);
                meters.retried.increment(1);
                let wait = retry_delay(attempt, after, shared.backoff, shared.max_backoff);
                tracing::debug!(provider, why, attempt, ?wait, "push failed; retrying");
                // The send slot is free while waiting.
                drop(held);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_honour_retry_after_and_grow_with_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(2)), base, max),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(99)), base, max),
            max
        );
        for attempt in 1..6 {
            let d = retry_delay(attempt, None, base, max);
            let ceiling = base * (1 << attempt);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} for attempt {attempt}"
            );
        }
        assert!(retry_delay(30, None, base, max) <= max);
    }
}
