//! The offline-push sink: jobs for users who are offline when a message arrives, handed to an
//! external push service (APNs/FCM senders) in one of two ways:
//!
//! * [`PushSink::redis`]: `RPUSH` of GoBelieve's JSON jobs (docs/compatibility.md, *GoBelieve's
//!   shared state*; keys sorted) onto `push_queue`, `group_push_queue`, `system_push_queue` and
//!   `customer_push_queue_v2`, up to `batch` jobs per MULTI/EXEC. A failed batch is retried with
//!   backoff until it is written.
//! * [`PushSink::webhook`]: HTTP `POST` of a JSON array of jobs, each with a `type` field
//!   (`peer`, `group`, `system`, `customer`), over `http` or `https` (`node::http_client`), with a
//!   timeout, bounded retries with exponential backoff and jitter, and an optional bearer token.
//!
//! * [`PushSink::Native`]: the jobs go to a [`NativePush`] implementation — banter's own APNs and
//!   FCM senders (crate `push`), which resolve devices, render the notification and send it.
//!
//! [`PushSink::push`] never blocks and does no I/O: it puts the job on a bounded in-memory queue
//! drained by one background task. When the queue is full the job is dropped and counted
//! ([`PushSink::dropped`], plus a warning), never silently (docs/compatibility.md, *Groups, rooms
//! and customer service*: offline push jobs). Group jobs are split into jobs of at most
//! `max_receivers_per_job` receivers. Call [`PushSink::flush`] at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use node::backoff::Backoff;
use node::reqwest::{self, StatusCode};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::{BackendError, RedisPushOptions, WebhookOptions};

/// Redis retry backoff bounds.
const REDIS_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REDIS_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest webhook retry wait.
const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Most bytes of a webhook answer read (and ignored).
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// `flush` gives up when the sink has been failing without progress this long.
const FLUSH_STALL: Duration = Duration::from_secs(10);

/// One offline-push request. `content` is the message content (usually JSON text) as sent. Its serde
/// form (`{"type":"peer",…}`) is what the native push service's journal stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PushJob {
    /// A peer message (`push_queue`).
    Peer {
        /// The app of both users.
        appid: i64,
        /// Who sent it.
        sender: i64,
        /// The offline receiver.
        receiver: i64,
        /// Message content.
        content: String,
    },
    /// A group message (`group_push_queue`).
    Group {
        /// The group's app.
        appid: i64,
        /// Who sent it.
        sender: i64,
        /// The group.
        group_id: i64,
        /// The offline members (the sender excluded).
        receivers: Vec<i64>,
        /// Message content.
        content: String,
    },
    /// A system message (`system_push_queue`).
    System {
        /// The receiver's app.
        appid: i64,
        /// The offline receiver.
        receiver: i64,
        /// Message content.
        content: String,
    },
    /// A customer-service message across apps (`customer_push_queue_v2`).
    Customer {
        /// The sender's app.
        sender_appid: i64,
        /// Who sent it.
        sender: i64,
        /// The receiver's app.
        receiver_appid: i64,
        /// The offline receiver.
        receiver: i64,
        /// Message content.
        content: String,
    },
}

// The JSON shapes. Fields are declared in alphabetical order, so the output has sorted keys
// whatever serde_json features the build enables.

#[derive(Serialize)]
struct PeerJson<'a> {
    appid: i64,
    content: &'a str,
    receiver: i64,
    sender: i64,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    appid: i64,
    content: &'a str,
    group_id: i64,
    receivers: &'a [i64],
    sender: i64,
}

#[derive(Serialize)]
struct SystemJson<'a> {
    appid: i64,
    content: &'a str,
    receiver: i64,
}

#[derive(Serialize)]
struct CustomerJson<'a> {
    /// The receiver's app (GoBelieve's `appid` of a customer job).
    appid: i64,
    content: &'a str,
    receiver: i64,
    receiver_appid: i64,
    sender: i64,
    sender_appid: i64,
}

/// A job as the webhook receives it: the queue job plus `"type"`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum JobJson<'a> {
    Peer(PeerJson<'a>),
    Group(GroupJson<'a>),
    System(SystemJson<'a>),
    Customer(CustomerJson<'a>),
}

impl PushJob {
    /// The GoBelieve Redis list of this job.
    pub fn queue(&self) -> &'static str {
        match self {
            PushJob::Peer { .. } => "push_queue",
            PushJob::Group { .. } => "group_push_queue",
            PushJob::System { .. } => "system_push_queue",
            PushJob::Customer { .. } => "customer_push_queue_v2",
        }
    }

    fn json(&self) -> JobJson<'_> {
        match self {
            PushJob::Peer {
                appid,
                sender,
                receiver,
                content,
            } => JobJson::Peer(PeerJson {
                appid: *appid,
                content,
                receiver: *receiver,
                sender: *sender,
            }),
            PushJob::Group {
                appid,
                sender,
                group_id,
                receivers,
                content,
            } => JobJson::Group(GroupJson {
                appid: *appid,
                content,
                group_id: *group_id,
                receivers,
                sender: *sender,
            }),
            PushJob::System {
                appid,
                receiver,
                content,
            } => JobJson::System(SystemJson {
                appid: *appid,
                content,
                receiver: *receiver,
            }),
            PushJob::Customer {
                sender_appid,
                sender,
                receiver_appid,
                receiver,
                content,
            } => JobJson::Customer(CustomerJson {
                appid: *receiver_appid,
                content,
                receiver: *receiver,
                receiver_appid: *receiver_appid,
                sender: *sender,
                sender_appid: *sender_appid,
            }),
        }
    }

    /// GoBelieve's push-queue job: a JSON object with sorted keys, without `type`.
    pub fn to_queue_json(&self) -> String {
        let json = match self.json() {
            JobJson::Peer(j) => serde_json::to_string(&j),
            JobJson::Group(j) => serde_json::to_string(&j),
            JobJson::System(j) => serde_json::to_string(&j),
            JobJson::Customer(j) => serde_json::to_string(&j),
        };
        // Serialising these plain structs cannot fail.
        json.unwrap_or_default()
    }

    /// Split a group job into jobs of at most `max` receivers (other jobs are returned as they
    /// are; a group job without receivers yields nothing).
    fn split(self, max: usize, out: &mut Vec<PushJob>) {
        match self {
            PushJob::Group {
                appid,
                sender,
                group_id,
                receivers,
                content,
            } if receivers.len() > max => {
                for chunk in receivers.chunks(max) {
                    out.push(PushJob::Group {
                        appid,
                        sender,
                        group_id,
                        receivers: chunk.to_vec(),
                        content: content.clone(),
                    });
                }
            }
            PushJob::Group { ref receivers, .. } if receivers.is_empty() => {}
            job => out.push(job),
        }
    }
}

/// Counters shared by the queue front and its worker.
#[derive(Default)]
struct Stats {
    /// Jobs put on the queue.
    accepted: AtomicU64,
    /// Jobs taken off the queue and finished (delivered or given up).
    finished: AtomicU64,
    delivered: AtomicU64,
    /// Queue-full drops plus batches given up.
    dropped: AtomicU64,
    /// Woken whenever `finished` grows or a batch attempt fails.
    progress: Notify,
    /// Since when, and why, the current batch keeps failing.
    failing: Mutex<Option<(Instant, String)>>,
}

impl Stats {
    fn finished(&self, n: usize, delivered: bool) {
        let n = n as u64;
        if delivered {
            self.delivered.fetch_add(n, Ordering::Relaxed);
            *self.failing.lock() = None;
        } else {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
        self.finished.fetch_add(n, Ordering::Release);
        self.progress.notify_waiters();
    }

    fn failed_attempt(&self, why: String) {
        let mut failing = self.failing.lock();
        let since = failing.as_ref().map_or_else(Instant::now, |(t, _)| *t);
        *failing = Some((since, why));
        drop(failing);
        self.progress.notify_waiters();
    }
}

/// A bounded job queue with its background worker (both transports).
pub struct PushQueue {
    tx: mpsc::Sender<PushJob>,
    max_receivers: usize,
    stats: Arc<Stats>,
    worker: JoinHandle<()>,
    kind: &'static str,
}

/// An offline-push sender living outside this crate (the `push` crate's APNs/FCM senders), so the
/// backend does not depend on it. `push` must not block or do I/O, like [`PushSink::push`].
pub trait NativePush: Send + Sync + 'static {
    /// Queue a job; when the sender's queue is full it is dropped and counted.
    fn push(&self, job: PushJob);
    /// Jobs dropped since start.
    fn dropped(&self) -> u64;
    /// Device notifications accepted by a provider since start.
    fn delivered(&self) -> u64;
    /// Wait (bounded) until what was queued before the call is sent or given up.
    fn flush(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BackendError>> + Send + '_>>;
}

/// The push seam: off, GoBelieve Redis lists, a webhook, or the built-in APNs/FCM senders. Cheap
/// to clone.
#[derive(Clone)]
pub enum PushSink {
    /// No offline push: jobs are discarded (not counted as dropped).
    Disabled,
    /// GoBelieve's Redis lists (docs/compatibility.md, *GoBelieve's shared state*).
    Redis(Arc<PushQueue>),
    /// HTTP POSTs of JSON batches.
    Webhook(Arc<PushQueue>),
    /// banter's own APNs/FCM senders (crate `push`).
    Native(Arc<dyn NativePush>),
}

fn check_nonzero(what: &str, v: usize) -> Result<(), BackendError> {
    if v == 0 {
        return Err(BackendError::InvalidArgument(format!(
            "push option {what} must be > 0"
        )));
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Handle, BackendError> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        BackendError::Internal("the push sink must be created inside a tokio runtime".into())
    })
}

impl PushSink {
    /// Connect to Redis at `opts.url` (failing when it does not answer within about 2 s) and
    /// start the writer task.
    pub async fn redis(opts: RedisPushOptions) -> Result<PushSink, BackendError> {
        check_nonzero("queue_capacity", opts.queue_capacity)?;
        check_nonzero("batch", opts.batch)?;
        check_nonzero("max_receivers_per_job", opts.max_receivers_per_job)?;
        let client = redis::Client::open(opts.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(5))
            .set_factor(2)
            .set_max_delay(1000)
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        let queue = PushQueue::start(
            "redis",
            opts.queue_capacity,
            opts.batch,
            opts.max_receivers_per_job,
            Transport::Redis(RedisTransport { conn }),
        )?;
        Ok(PushSink::Redis(Arc::new(queue)))
    }

    /// Check the options and start the webhook task (inside a tokio runtime). `http://` or
    /// `https://` URLs (rustls, the platform's roots plus `ca_file`'s), through the project's HTTP client
    /// (`node::http_client`).
    pub fn webhook(opts: WebhookOptions) -> Result<PushSink, BackendError> {
        check_nonzero("queue_capacity", opts.queue_capacity)?;
        check_nonzero("batch", opts.batch)?;
        check_nonzero("max_receivers_per_job", opts.max_receivers_per_job)?;
        if opts.max_attempts == 0 {
            return Err(BackendError::InvalidArgument(
                "push option max_attempts must be > 0".into(),
            ));
        }
        let url = reqwest::Url::parse(&opts.url).map_err(|e| {
            BackendError::InvalidArgument(format!("push webhook url {:?}: {e}", opts.url))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(BackendError::InvalidArgument(format!(
                "push webhook url {:?} must be http(s)://host[:port]/path",
                opts.url
            )));
        }
        let authorization = match &opts.secret {
            Some(secret) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| {
                    BackendError::InvalidArgument(
                        "push webhook secret must be visible ASCII".into(),
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let timeout = Duration::from_millis(opts.timeout_ms.max(1));
        let mut builder = node::http_client::builder(timeout);
        if !opts.ca_file.is_empty() {
            let pem = std::fs::read(&opts.ca_file).map_err(|source| BackendError::Io {
                path: opts.ca_file.clone().into(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                BackendError::InvalidArgument(format!("push webhook ca_file {}: {e}", opts.ca_file))
            })?;
            if certs.is_empty() {
                return Err(BackendError::InvalidArgument(format!(
                    "push webhook ca_file {} holds no certificate",
                    opts.ca_file
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| BackendError::InvalidArgument(format!("push webhook HTTP client: {e}")))?;
        let queue = PushQueue::start(
            "webhook",
            opts.queue_capacity,
            opts.batch,
            opts.max_receivers_per_job,
            Transport::Webhook(Box::new(WebhookTransport {
                client,
                url,
                authorization,
                timeout,
                max_attempts: opts.max_attempts,
                backoff: Duration::from_millis(opts.backoff_ms),
            })),
        )?;
        Ok(PushSink::Webhook(Arc::new(queue)))
    }

    /// Queue a job (group jobs split by `max_receivers_per_job`). Never blocks, no I/O; when the
    /// queue is full the job is dropped and counted.
    pub fn push(&self, job: PushJob) {
        match self {
            PushSink::Disabled => {}
            PushSink::Redis(q) | PushSink::Webhook(q) => q.push(job),
            PushSink::Native(n) => n.push(job),
        }
    }

    /// Jobs dropped since start: queue full, or (webhook) given up after the retries.
    pub fn dropped(&self) -> u64 {
        match self {
            PushSink::Disabled => 0,
            PushSink::Redis(q) | PushSink::Webhook(q) => q.stats.dropped.load(Ordering::Relaxed),
            PushSink::Native(n) => n.dropped(),
        }
    }

    /// Jobs handed to Redis or accepted by the webhook since start.
    pub fn delivered(&self) -> u64 {
        match self {
            PushSink::Disabled => 0,
            PushSink::Redis(q) | PushSink::Webhook(q) => q.stats.delivered.load(Ordering::Relaxed),
            PushSink::Native(n) => n.delivered(),
        }
    }

    /// Wait until every job queued before the call is delivered or given up. Fails when the sink
    /// has been failing for 10 s without progress (Redis or the webhook down; the jobs stay
    /// queued and are still retried), or when the worker is gone.
    pub async fn flush(&self) -> Result<(), BackendError> {
        match self {
            PushSink::Disabled => Ok(()),
            PushSink::Redis(q) | PushSink::Webhook(q) => q.flush().await,
            PushSink::Native(n) => n.flush().await,
        }
    }

    /// `"disabled"`, `"redis"`, `"webhook"` or `"native"`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PushSink::Disabled => "disabled",
            PushSink::Redis(q) | PushSink::Webhook(q) => q.kind,
            PushSink::Native(_) => "native",
        }
    }
}

impl Drop for PushQueue {
    fn drop(&mut self) {
        // The worker drains what is queued and stops by itself once the sender is gone; nothing
        // to do here but to say so when jobs are left.
        let left = self
            .stats
            .accepted
            .load(Ordering::Relaxed)
            .saturating_sub(self.stats.finished.load(Ordering::Relaxed));
        if left > 0 {
            tracing::debug!(
                left,
                "push sink dropped with jobs queued; the worker drains them"
            );
        }
    }
}

impl PushQueue {
    fn start(
        kind: &'static str,
        capacity: usize,
        batch: usize,
        max_receivers: usize,
        transport: Transport,
    ) -> Result<PushQueue, BackendError> {
        let rt = runtime()?;
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(Stats::default());
        let worker = rt.spawn(run(rx, batch, transport, stats.clone()));
        Ok(PushQueue {
            tx,
            max_receivers,
            stats,
            worker,
            kind,
        })
    }

    fn push(&self, job: PushJob) {
        let mut jobs = Vec::with_capacity(1);
        job.split(self.max_receivers, &mut jobs);
        for job in jobs {
            match self.tx.try_send(job) {
                Ok(()) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // The first drop and then every 1000th, so a flood does not flood the log.
                    if n == 1 || n.checked_rem(1000) == Some(0) {
                        let why = match e {
                            mpsc::error::TrySendError::Full(_) => "queue full",
                            mpsc::error::TrySendError::Closed(_) => "worker stopped",
                        };
                        tracing::warn!(
                            sink = self.kind,
                            dropped_total = n,
                            why,
                            "offline push job dropped"
                        );
                    }
                }
            }
        }
    }

    async fn flush(&self) -> Result<(), BackendError> {
        let target = self.stats.accepted.load(Ordering::Relaxed);
        loop {
            let notified = self.stats.progress.notified();
            tokio::pin!(notified);
            // Registered before the checks, so a wake-up between them is not lost.
            notified.as_mut().enable();
            if self.stats.finished.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if self.worker.is_finished() {
                return Err(BackendError::Internal(format!(
                    "the {} push worker stopped with jobs queued",
                    self.kind
                )));
            }
            if let Some((since, why)) = self.stats.failing.lock().clone() {
                if since.elapsed() >= FLUSH_STALL {
                    return Err(match self.kind {
                        "redis" => BackendError::Redis(redis::RedisError::from((
                            redis::ErrorKind::IoError,
                            "push queue not drained",
                            why,
                        ))),
                        _ => BackendError::Webhook(format!("push queue not drained: {why}")),
                    });
                }
            }
            // Also wake periodically to re-check the stall clock.
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}

enum Transport {
    Redis(RedisTransport),
    Webhook(Box<WebhookTransport>),
}

impl Transport {
    async fn deliver(&self, jobs: &[PushJob], stats: &Stats, closed: impl Fn() -> bool) {
        match self {
            Transport::Redis(t) => t.deliver(jobs, stats, closed).await,
            Transport::Webhook(t) => t.deliver(jobs, stats).await,
        }
    }
}

/// The worker: take up to `batch` queued jobs at a time and deliver them.
async fn run(
    mut rx: mpsc::Receiver<PushJob>,
    batch: usize,
    transport: Transport,
    stats: Arc<Stats>,
) {
    let mut jobs = Vec::with_capacity(batch.min(4096));
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        while jobs.len() < batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        transport.deliver(&jobs, &stats, || rx.is_closed()).await;
        jobs.clear();
    }
}

struct RedisTransport {
    conn: ConnectionManager,
}

impl RedisTransport {
    /// MULTI, one RPUSH per list (jobs in order), EXEC; retried with backoff until it succeeds.
    /// Once the sink itself is gone (shutdown without flush), a failing batch is given up.
    async fn deliver(&self, jobs: &[PushJob], stats: &Stats, closed: impl Fn() -> bool) {
        let mut by_queue: Vec<(&'static str, Vec<String>)> = Vec::new();
        for job in jobs {
            let queue = job.queue();
            let json = job.to_queue_json();
            match by_queue.iter_mut().find(|(q, _)| *q == queue) {
                Some((_, list)) => list.push(json),
                None => by_queue.push((queue, vec![json])),
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (queue, list) in &by_queue {
            pipe.rpush(*queue, list).ignore();
        }
        let mut backoff = REDIS_BACKOFF_MIN;
        loop {
            match pipe.query_async::<()>(&mut self.conn.clone()).await {
                Ok(()) => {
                    stats.finished(jobs.len(), true);
                    return;
                }
                Err(e) => {
                    if closed() {
                        tracing::warn!(error = %e, jobs = jobs.len(), "push sink shut down while Redis fails; jobs dropped");
                        stats.finished(jobs.len(), false);
                        return;
                    }
                    tracing::warn!(error = %e, jobs = jobs.len(), ?backoff, "writing offline push jobs to Redis failed; retrying");
                    stats.failed_attempt(e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(REDIS_BACKOFF_MAX);
                }
            }
        }
    }
}

struct WebhookTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    max_attempts: u32,
    backoff: Duration,
}

/// The outcome of one POST.
enum Attempt {
    Delivered,
    /// Worth retrying (connection error, timeout, 408, 429, 5xx).
    Retry(String),
    /// Not worth retrying (another non-2xx status).
    GiveUp(String),
}

impl WebhookTransport {
    async fn deliver(&self, jobs: &[PushJob], stats: &Stats) {
        let array: Vec<JobJson<'_>> = jobs.iter().map(PushJob::json).collect();
        let body = match serde_json::to_vec(&array) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode push jobs; dropped");
                stats.finished(jobs.len(), false);
                return;
            }
        };
        let mut backoff = Backoff::new(self.backoff, WEBHOOK_BACKOFF_MAX);
        for attempt in 1..=self.max_attempts {
            match self.post(body.clone()).await {
                Attempt::Delivered => {
                    stats.finished(jobs.len(), true);
                    return;
                }
                Attempt::GiveUp(why) => {
                    tracing::warn!(
                        why,
                        jobs = jobs.len(),
                        "push webhook refused a batch; dropped"
                    );
                    stats.finished(jobs.len(), false);
                    return;
                }
                Attempt::Retry(why) => {
                    if attempt == self.max_attempts {
                        tracing::warn!(
                            why,
                            jobs = jobs.len(),
                            attempts = attempt,
                            "push webhook failed; batch dropped"
                        );
                        stats.finished(jobs.len(), false);
                        return;
                    }
                    let delay = backoff.next_delay();
                    tracing::debug!(why, attempt, ?delay, "push webhook failed; retrying");
                    stats.failed_attempt(why);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn post(&self, body: Bytes) -> Attempt {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(auth) = &self.authorization {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let exchange = async {
            let mut resp = req.send().await?;
            let status = resp.status();
            // Read (a bounded amount of) the answer so the connection can be reused.
            let mut read = 0;
            while read < MAX_RESPONSE_BODY {
                match resp.chunk().await? {
                    Some(c) => read += c.len(),
                    None => break,
                }
            }
            Ok::<StatusCode, reqwest::Error>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Attempt::Retry(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) if e.is_timeout() => {
                Attempt::Retry(format!("no answer within {:?}", self.timeout))
            }
            Ok(Err(e)) => Attempt::Retry(e.to_string()),
            Ok(Ok(status)) if status.is_success() => Attempt::Delivered,
            Ok(Ok(status))
                if status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                Attempt::Retry(format!("HTTP {status}"))
            }
            Ok(Ok(status)) => Attempt::GiveUp(format!("HTTP {status}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_json_has_sorted_keys() {
        let job = PushJob::Peer {
            appid: 7,
            sender: 1,
            receiver: 2,
            content: "{\"text\":\"hi\"}".into(),
        };
        assert_eq!(
            job.to_queue_json(),
            r#"{"appid":7,"content":"{\"text\":\"hi\"}","receiver":2,"sender":1}"#
        );
        let mut out = Vec::new();
        PushJob::Group {
            appid: 7,
            sender: 1,
            group_id: 3,
            receivers: (1..=25).collect(),
            content: String::new(),
        }
        .split(10, &mut out);
        let sizes: Vec<usize> = out
            .iter()
            .map(|j| match j {
                PushJob::Group { receivers, .. } => receivers.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, vec![10, 10, 5]);
    }
}
