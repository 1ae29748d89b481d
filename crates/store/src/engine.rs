//! The [`Store`] handle: `Store::open` takes what recovery re-established (`recovery`), hands
//! each part to the thread that owns it — the writer (`writer`: queue heads, log end, active
//! segment), the sync thread (`syncer`), the checkpointer (`checkpoint`) and the preallocator
//! (`prealloc`) — and starts them; the threads and the handle share only the read side
//! (`shared`) and the submission queue (`submit`). The handle's API: appends, reads (`read`),
//! checkpoints, statistics, health and close; replication's part is in `replication`.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::checkpoint::{checkpointer_loop, Checkpoints};
use crate::error::StoreError;
use crate::format::{message_record_len, KEY_RECORD_LEN};
use crate::health::StoreHealth;
use crate::options::StoreOptions;
use crate::prealloc::{prealloc_loop, SpareSlot};
use crate::shared::{Shared, Stats};
use crate::submit::{Submission, Submissions};
use crate::syncer::{SyncQueue, Syncer};
use crate::writer::{Writer, WriterState};
use crate::{AppendTicket, Appended, NewMessage, QueueId, SyncPage, Ticket};

/// Counters and sizes, for monitoring and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages appended since open.
    pub messages: u64,
    /// Queue entries appended since open.
    pub entries: u64,
    /// Retried appends answered with their original positions since open (their key was
    /// remembered: nothing was written).
    pub repeated: u64,
    /// Group commits (writes) since open.
    pub batches: u64,
    /// fsyncs of the log since open.
    pub fsyncs: u64,
    pub bytes_written: u64,
    pub checkpoints: u64,
    pub segments_dropped: u64,
    /// Oldest retained position.
    pub log_start: u64,
    /// Position after the newest acknowledged record.
    pub log_end: u64,
    pub segments: usize,
    pub queues: usize,
    /// Position covered by the newest checkpoint.
    pub checkpoint_position: u64,
}

/// The store's threads while they run.
struct Threads {
    writer: JoinHandle<Writer>,
    others: Vec<JoinHandle<()>>,
}

fn spawn<T: Send + 'static>(
    name: &str,
    dir: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, StoreError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StoreError::io("spawn a store thread", dir, e))
}

/// The message store. `Send + Sync`; share it as `Arc<Store>`.
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    /// The writer's input.
    pub(crate) submissions: Arc<Submissions>,
    checkpoints: Arc<Checkpoints>,
    spare: Arc<SpareSlot>,
    threads: Mutex<Option<Threads>>,
    /// The writer, once its thread has stopped (for the final fsync and checkpoint).
    stopped_writer: Mutex<Option<Writer>>,
    close_result: Mutex<Option<Result<(), String>>>,
    /// Translation of GoBelieve sync keys, when the store was written by an import.
    pub(crate) legacy_keys: Option<crate::gobelieve::KeyMap>,
}

impl Store {
    /// Opens (creating if missing) the store in `dir`: recovery (see `recovery`) re-establishes
    /// the state from the files, then the engine's threads start — the writer, the syncer, the
    /// checkpointer and the preallocator.
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store, StoreError> {
        let r = crate::recovery::open(dir.as_ref(), &opts)?;
        let dir = r.dir.clone();
        let submissions = Arc::new(Submissions::new(opts.max_pending_bytes));
        let shared = Arc::new(Shared::new(
            opts,
            r.dir,
            r.dir_file,
            r.lock,
            r.log,
            r.published,
        ));
        let checkpoints = Arc::new(Checkpoints::new(r.checkpoint));
        let spare = Arc::new(SpareSlot::new(r.spare));
        let syncq = Arc::new(SyncQueue::default());
        let remembered_keys = r.window.len();
        let syncer = Syncer {
            shared: shared.clone(),
            syncq,
            submissions: submissions.clone(),
            checkpoints: checkpoints.clone(),
        };
        let writer = Writer::new(
            shared.clone(),
            submissions.clone(),
            syncer.clone(),
            spare.clone(),
            WriterState {
                heads: r.heads,
                window: r.window,
                end: r.end,
                active: r.active,
            },
        );
        let (sh, ck, sub) = (shared.clone(), checkpoints.clone(), submissions.clone());
        let (sh2, sp) = (shared.clone(), spare.clone());
        let threads = Threads {
            writer: spawn("store-writer", &dir, move || writer.run())?,
            others: vec![
                spawn("store-sync", &dir, move || syncer.run())?,
                spawn("store-checkpoint", &dir, move || {
                    checkpointer_loop(sh, ck, sub)
                })?,
                spawn("store-prealloc", &dir, move || prealloc_loop(sh2, sp))?,
            ],
        };
        tracing::info!(
            dir = %dir.display(),
            log_start = r.log_start,
            log_end = r.end,
            replayed_records = r.replayed,
            remembered_keys,
            elapsed_ms = r.started.elapsed().as_millis() as u64,
            "store opened"
        );
        let legacy_keys = match crate::gobelieve::KeyMap::open(&dir) {
            Ok(m) => m,
            Err(why) => {
                // The messages are all there; only the translation of GoBelieve keys is missing.
                tracing::error!(error = %why, "the GoBelieve key map cannot be read: clients still holding GoBelieve sync keys get their history again from the start");
                None
            }
        };
        if let Some(m) = &legacy_keys {
            tracing::info!(
                pairs = m.len(),
                base = m.base(),
                "GoBelieve sync keys below the base are translated"
            );
        }
        Ok(Store {
            shared,
            submissions,
            checkpoints,
            spare,
            threads: Mutex::new(Some(threads)),
            stopped_writer: Mutex::new(None),
            close_result: Mutex::new(None),
            legacy_keys,
        })
    }

    /// Submits messages; they become durable together with every other concurrent submission
    /// (group commit). The ticket yields, for each message, one [`Appended`] per queue, in order.
    pub fn append(&self, batch: Vec<NewMessage>) -> AppendTicket {
        let shared = &self.shared;
        if batch.is_empty() {
            return Ticket::ready(Ok(Vec::new()));
        }
        if shared.is_follower() {
            return Ticket::ready(Err(StoreError::NotLeader));
        }
        if let Some(e) = shared.health().refusal() {
            return Ticket::ready(Err(e));
        }
        let mut bytes = 0usize;
        for m in &batch {
            match validate(shared.opts(), m) {
                Ok(n) => bytes += n,
                Err(e) => return Ticket::ready(Err(e)),
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let results = batch
            .iter()
            .map(|m| Vec::with_capacity(m.queues.len()))
            .collect();
        self.submissions.submit(Submission::Append {
            msgs: batch,
            results,
            bytes,
            tx,
        });
        Ticket::new(rx)
    }

    /// [`Store::append`] and wait. Do not call from an async runtime thread.
    pub fn append_blocking(
        &self,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Vec<Appended>>, StoreError> {
        self.append(batch).wait()
    }

    /// The next entries of `queue` after `after_key`, oldest first, at most `limit`
    /// (clamped to `1..=max_sync_limit`). Nothing is ever skipped: `has_more` says whether to
    /// call again from `last_key`.
    pub fn sync(
        &self,
        queue: QueueId,
        after_key: i64,
        limit: usize,
    ) -> Result<SyncPage, StoreError> {
        let after_key = self.translate_legacy_key(queue, after_key)?;
        self.shared.sync_page(queue, after_key, limit, None)
    }

    /// Super-group sync honouring a member's join time: entries with `timestamp < join_ts` are
    /// never returned (but `last_key` moves past them). At most `max_sync_scan` entries are
    /// examined per call.
    pub fn sync_since(
        &self,
        queue: QueueId,
        after_key: i64,
        limit: usize,
        join_ts: i64,
    ) -> Result<SyncPage, StoreError> {
        let after_key = self.translate_legacy_key(queue, after_key)?;
        self.shared
            .sync_page(queue, after_key, limit, Some(join_ts))
    }

    /// The newest `n` entries (clamped to `max_latest`), oldest first.
    pub fn latest(
        &self,
        queue: QueueId,
        n: usize,
    ) -> Result<Vec<crate::StoredMessage>, StoreError> {
        self.shared.latest(queue, n)
    }

    /// Newest entries walking the peer-only chain (entries whose content is not a group
    /// message), at most `n` (clamped to `max_latest`), oldest first.
    pub fn latest_peer(
        &self,
        queue: QueueId,
        n: usize,
    ) -> Result<Vec<crate::StoredMessage>, StoreError> {
        self.shared.latest_peer(queue, n)
    }

    /// How many entries of `queue` are newer than `after_key`: O(log n) reads, no scan.
    pub fn new_count(&self, queue: QueueId, after_key: i64) -> Result<u64, StoreError> {
        let after_key = self.translate_legacy_key(queue, after_key)?;
        self.shared.new_count(queue, after_key)
    }

    /// The banter key equivalent to `key` for `queue`: `key` itself, unless the store was
    /// written by a GoBelieve import and `key` is a GoBelieve sync key (`1..base`), which is
    /// translated through the import's key map (`gobelieve::keymap`): to the newest entry of
    /// `queue` the client already had, or to the base when it had none. [`Store::sync`],
    /// [`Store::sync_since`] and [`Store::new_count`] apply it themselves.
    pub fn translate_legacy_key(&self, queue: QueueId, key: i64) -> Result<i64, StoreError> {
        let Some(map) = &self.legacy_keys else {
            return Ok(key);
        };
        if key <= 0 || key >= map.base() {
            return Ok(key);
        }
        let paired = map
            .lookup(key)
            .map_err(|e| StoreError::io("read the GoBelieve key map", self.dir(), e))?;
        let found = match paired {
            Some(b) => self.shared.key_at_or_before(queue, b)?,
            None => None,
        };
        Ok(found.unwrap_or(map.base()))
    }

    /// Newest visible key of `queue` (see [`Store::try_last_key`]); 0 if empty, or if the queue
    /// cannot be read.
    pub fn last_key(&self, queue: QueueId) -> i64 {
        self.try_last_key(queue).unwrap_or(0)
    }

    /// Newest visible key of `queue`, 0 if empty: the newest acknowledged entry, or with a commit
    /// index (`sync` replication) the newest one below it, found in O(log n) reads.
    pub fn try_last_key(&self, queue: QueueId) -> Result<i64, StoreError> {
        self.shared.visible_last_key(queue)
    }

    /// Writes a checkpoint of the queue heads now (no-op if nothing changed). Waits for the writer
    /// to reach the end of its current batch: do not call from an async runtime thread.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        if let Some(w) = self.stopped_writer.lock().as_mut() {
            return self.checkpoint_with(w);
        }
        if self.threads.lock().is_none() {
            // closing, or the writer thread did not stop cleanly: nobody to ask for the heads
            return Err(StoreError::Closed);
        }
        self.checkpoints.checkpoint(&self.shared, &self.submissions)
    }

    /// A checkpoint with the heads of a writer whose thread has stopped.
    fn checkpoint_with(&self, w: &mut Writer) -> Result<(), StoreError> {
        self.checkpoints
            .write(&self.shared, |generation, unchanged_at| {
                w.snapshot(generation, unchanged_at)
            })
    }

    /// Drops old segments according to the retention options now (also done in the background).
    pub fn apply_retention(&self) -> Result<usize, StoreError> {
        self.checkpoints.apply_retention(&self.shared)
    }

    /// Oldest retained log position.
    pub fn log_start(&self) -> u64 {
        self.shared.log_start()
    }

    /// Position after the newest acknowledged record.
    pub fn log_end(&self) -> u64 {
        self.shared.durable_end()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.shared.dir()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> StoreStats {
        let s = self.shared.stats();
        StoreStats {
            messages: Stats::get(&s.messages),
            entries: Stats::get(&s.entries),
            repeated: Stats::get(&s.repeated),
            batches: Stats::get(&s.batches),
            fsyncs: Stats::get(&s.fsyncs),
            bytes_written: Stats::get(&s.bytes_written),
            checkpoints: Stats::get(&s.checkpoints),
            segments_dropped: Stats::get(&s.segments_dropped),
            log_start: self.log_start(),
            log_end: self.log_end(),
            segments: self.shared.log().segment_count(),
            queues: self.shared.heads().len(),
            checkpoint_position: self.checkpoints.position(),
        }
    }

    /// Fault injection for tests: every later fsync of the log fails (as if the disk had).
    #[doc(hidden)]
    pub fn inject_fsync_failure(&self) {
        self.shared.inject_fsync_failure(true);
    }

    /// Ends [`Store::inject_fsync_failure`]: fsyncs work again (as after a disk was replaced).
    #[doc(hidden)]
    pub fn clear_injected_fsync_failure(&self) {
        self.shared.inject_fsync_failure(false);
    }

    /// Whether the store refuses appends now: it is recovering from a failed write or fsync
    /// (and resumes by itself), or it failed for good. See [`Store::health`].
    pub fn is_poisoned(&self) -> bool {
        self.shared.health().is_refusing()
    }

    /// Whether appends are accepted now.
    pub fn accepts_appends(&self) -> bool {
        !self.shared.health().is_refusing()
    }

    /// The store's health: accepting appends or not, the failure it is recovering from and since
    /// when, and what degrades it (little free space, no descriptor in reserve, failing
    /// checkpoints or preallocation). For health and readiness endpoints.
    pub fn health(&self) -> StoreHealth {
        self.shared.health().snapshot()
    }

    /// Flushes pending appends, fsyncs, writes a final checkpoint and stops the store's threads.
    /// Later appends fail with [`StoreError::Closed`]; reads keep working. Idempotent.
    pub fn close(&self) -> Result<(), StoreError> {
        let mut res = self.close_result.lock();
        if let Some(r) = res.as_ref() {
            return r.clone().map_err(StoreError::Poisoned);
        }
        let r = self.close_inner();
        *res = Some(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        r
    }

    /// Like [`Store::close`] but without the final checkpoint, leaving the directory as a crash
    /// right after the last acknowledged append would (everything acknowledged is durable; the
    /// next open replays the log since the last background checkpoint). For recovery benchmarks
    /// and tests.
    #[doc(hidden)]
    pub fn close_without_checkpoint(&self) -> Result<(), StoreError> {
        let mut res = self.close_result.lock();
        if let Some(r) = res.as_ref() {
            return r.clone().map_err(StoreError::Poisoned);
        }
        let r = self.stop_threads().and_then(|()| self.final_sync());
        *res = Some(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        r
    }

    fn close_inner(&self) -> Result<(), StoreError> {
        self.stop_threads()?;
        self.final_sync()?;
        self.checkpoint()
    }

    /// fsyncs whatever the stopped writer left unsynced.
    fn final_sync(&self) -> Result<(), StoreError> {
        match self.stopped_writer.lock().as_mut() {
            Some(w) => w.sync_active(),
            None => Err(StoreError::Poisoned(
                "the writer thread did not stop cleanly".into(),
            )),
        }
    }

    fn stop_threads(&self) -> Result<(), StoreError> {
        let shared = &self.shared;
        self.submissions.close();
        self.checkpoints.stop();
        self.spare.stop();
        if let Some(t) = self.threads.lock().take() {
            let writer = t.writer.join();
            for o in t.others {
                let _ = o.join();
            }
            if let Ok(w) = writer {
                *self.stopped_writer.lock() = Some(w);
            }
        }
        shared.set_stopped();
        shared.notify_end();
        if shared.health().is_recovering() {
            // one last attempt, so that a store whose disk came back closes cleanly
            if let Some(w) = self.stopped_writer.lock().as_mut() {
                w.recovery_step(true);
            }
        }
        match shared.health().refusal() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "store close on drop failed");
        }
    }
}

/// Checks a message against the options' limits; its record's size.
fn validate(opts: &StoreOptions, m: &NewMessage) -> Result<usize, StoreError> {
    if m.queues.is_empty() {
        return Err(StoreError::InvalidArgument(
            "a message needs at least one queue".into(),
        ));
    }
    if m.queues.len() > opts.max_queues_per_message {
        return Err(StoreError::InvalidArgument(format!(
            "a message may go to at most {} queues, this one lists {}",
            opts.max_queues_per_message,
            m.queues.len()
        )));
    }
    if m.body.len() > opts.max_body_bytes {
        return Err(StoreError::InvalidArgument(format!(
            "message body of {} bytes exceeds the maximum of {}",
            m.body.len(),
            opts.max_body_bytes
        )));
    }
    let key = if m.key.is_some() { KEY_RECORD_LEN } else { 0 };
    Ok(message_record_len(m.body.len(), m.queues.len()) + key)
}
