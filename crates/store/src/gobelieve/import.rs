//! `banter store import-gobelieve`: copies a GoBelieve `ims` data directory into a banter store.
//!
//! * **Order.** The source is read front to back ([`super::reader`]) and every queue entry
//!   becomes one banter message on the same queue (a user's personal queue or a super group's
//!   queue), appended in the source's order: every queue keeps its order, and normal-group
//!   messages (stored once per member by GoBelieve) stay in each member's queue.
//! * **Keys.** A fresh store is first promoted above every GoBelieve id (its log starts at
//!   `base`, a JUMP record, `docs/storage-format.md` §2), and each entry's pair of keys goes to
//!   the key map ([`super::keymap`]), which the store consults when a client syncs with a
//!   GoBelieve key.
//! * **Checkpoint and resume.** After each batch is durable in the store, its key pairs are
//!   appended (fsynced) and then the state file is replaced (write, fsync, rename): where the scan
//!   stands, how many pairs are valid, the store's log end and the running totals. A run that was
//!   interrupted continues from there; records the store received after the last state (the
//!   run died between the two writes) are matched to the source again by position, which is
//!   exact because the import is the store's only writer and a record's size follows from its
//!   body. A second run over an unchanged source finds nothing new and changes nothing; over a
//!   source that grew (GoBelieve still running), it imports only what is new.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;

use super::format::content_timestamp;
use super::keymap::{KeyWriter, IMPORT_DIR, KEYS_FILE};
use super::reader::{GbEntry, GbQueue, Item, Pos, Problem, Source};
use super::state::{State, STATE_FILE};
use crate::format::{jump_target, message_record_len, JUMP_RECORD_LEN};
use crate::{NewMessage, QueueId, Role, Store, StoreError, StoreOptions, FLAG_GROUP};

/// A progress callback.
pub type ProgressFn = Box<dyn FnMut(&Progress)>;
/// A callback for each problem found.
pub type ProblemFn = Box<dyn FnMut(&Problem)>;

/// Import settings.
pub struct ImportOptions {
    /// Messages per store append (one group commit and one state update each).
    pub batch_messages: usize,
    /// Called with the progress after every batch and at the end.
    pub progress: Option<ProgressFn>,
    /// Called with every problem found (the report keeps only the first [`KEEP_PROBLEMS`]).
    pub on_problem: Option<ProblemFn>,
    /// Stop after this many messages (tests of resumption).
    pub stop_after: Option<u64>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            batch_messages: 4096,
            progress: None,
            on_problem: None,
            stop_after: None,
        }
    }
}

/// Problems listed individually in the report.
pub const KEEP_PROBLEMS: usize = 50;

/// Progress of a run.
#[derive(Clone, Debug)]
pub struct Progress {
    pub source_bytes_done: u64,
    pub source_bytes: u64,
    pub messages: u64,
    pub elapsed_secs: f64,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImportError {
    let what = what.into();
    move |source| ImportError::Io { what, source }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    pub source: PathBuf,
    pub resumed: bool,
    /// Entries imported by this run.
    pub messages: u64,
    pub user_entries: u64,
    pub group_entries: u64,
    /// Distinct users and super groups whose queues got entries in this run.
    pub users: u64,
    pub groups: u64,
    /// Totals over every run.
    pub total_entries: u64,
    /// Problems found by this run, by kind.
    pub problems: BTreeMap<String, u64>,
    /// The first problems, with where and why.
    pub problem_list: Vec<Problem>,
    pub base: i64,
    pub elapsed_secs: f64,
}

impl ImportReport {
    pub fn problem_count(&self) -> u64 {
        self.problems.values().sum()
    }

    /// Messages per second of this run.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed_secs.max(1e-9)
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "import of {}", self.source.display())?;
        if self.resumed {
            writeln!(f, "  resumed from the previous run's checkpoint")?;
        }
        writeln!(
            f,
            "  messages imported: {} ({} personal-queue entries, {} super-group entries) in {:.1} s, {:.0} msgs/s",
            self.messages,
            self.user_entries,
            self.group_entries,
            self.elapsed_secs,
            self.rate()
        )?;
        writeln!(f, "  users: {}, super groups: {}", self.users, self.groups)?;
        writeln!(
            f,
            "  entries imported over all runs: {}",
            self.total_entries
        )?;
        if self.messages == 0 && self.problems.is_empty() {
            writeln!(f, "  nothing new: the source is already imported")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "  skipped records: none")?;
        } else {
            writeln!(f, "  skipped records: {}", self.problem_count())?;
            for (k, v) in &self.problems {
                writeln!(f, "    {k}: {v}")?;
            }
            for p in &self.problem_list {
                writeln!(f, "    at {}: {} ({})", p.at, p.kind.name(), p.detail)?;
            }
            if (self.problem_list.len() as u64) < self.problem_count() {
                writeln!(f, "    … (only the first {KEEP_PROBLEMS} are listed)")?;
            }
        }
        write!(
            f,
            "  GoBelieve sync keys (below {}) are translated on a client's first sync",
            self.base
        )
    }
}

/// The banter queue and message of a GoBelieve entry.
fn to_message(e: &GbEntry, last_ts: &mut i64) -> NewMessage {
    let queue = match e.queue {
        GbQueue::User { appid, uid } => QueueId::user(appid, uid),
        GbQueue::Group { appid, gid } => QueueId::group(appid, gid),
    };
    let ts = match content_timestamp(e.cmd, &e.body) {
        Some(t) => {
            *last_ts = (*last_ts).max(t);
            t
        }
        None => *last_ts,
    };
    let flag = if e.group_content
        && e.cmd != crate::CMD_GROUP_IM
        && matches!(e.queue, GbQueue::User { .. })
    {
        FLAG_GROUP
    } else {
        0
    };
    NewMessage {
        key: None,
        queues: vec![queue],
        device_id: e.device_id,
        cmd: e.cmd,
        flag,
        timestamp: ts,
        body: Bytes::copy_from_slice(&e.body),
    }
}

/// Imports the GoBelieve data directory `from` into the store directory `store_dir` (see the
/// module docs). The store must be new or one a previous import wrote; no server may have it
/// open.
pub fn import(
    from: &Path,
    store_dir: &Path,
    mut opts: ImportOptions,
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    let source_path = from
        .canonicalize()
        .map_err(io(format!("GoBelieve data directory {}", from.display())))?;
    let src = Source::open(&source_path).map_err(io(format!("reading {}", from.display())))?;
    if src.blocks().is_empty() {
        return Err(ImportError::Invalid(format!(
            "{} holds no GoBelieve block files (message_0, message_1, …): give the ims storage_root",
            from.display()
        )));
    }
    std::fs::create_dir_all(store_dir).map_err(io(format!("creating {}", store_dir.display())))?;
    let map_dir = store_dir.join(IMPORT_DIR);
    let state_path = map_dir.join(STATE_FILE);
    let prior = if state_path.exists() {
        State::load(&state_path).map_err(ImportError::Invalid)?
    } else {
        None
    };
    let source_name = source_path.display().to_string();
    let (store, prior) = match prior {
        Some(s) => (Store::open(store_dir, StoreOptions::default())?, Ok(s)),
        None => open_fresh(&src, store_dir, &map_dir, source_name.clone())?,
    };
    let result = run(
        &src,
        &store,
        &map_dir,
        prior,
        source_name,
        &mut opts,
        started,
    );
    let closed = store.close();
    let report = result?;
    closed?;
    Ok(report)
}

fn run(
    src: &Source,
    store: &Store,
    map_dir: &Path,
    prior: Result<State, State>,
    source_name: String,
    opts: &mut ImportOptions,
    started: Instant,
) -> Result<ImportReport, ImportError> {
    let resumed = prior.is_ok();
    let mut state = match prior {
        Ok(s) => {
            if s.source != source_name {
                return Err(ImportError::Invalid(format!(
                    "this store was imported from {}, not {source_name}: import each GoBelieve directory into its own new store",
                    s.source
                )));
            }
            s
        }
        Err(fresh) => fresh,
    };
    if src.id_bound() >= state.base {
        return Err(ImportError::Invalid(format!(
            "the GoBelieve message ids reach {}, above the import's base {}",
            src.id_bound(),
            state.base
        )));
    }
    let mut keys = KeyWriter::open(map_dir, state.pairs)
        .map_err(io(format!("opening {}", map_dir.join(KEYS_FILE).display())))?;
    let store_end = store.log_end();
    if store_end < state.banter_end {
        return Err(ImportError::Invalid(format!(
            "the store ends at {store_end}, before the import's checkpoint ({}): it is not the store this import wrote",
            state.banter_end
        )));
    }
    let mut report = ImportReport {
        source: src.dir().to_path_buf(),
        resumed,
        base: state.base,
        ..ImportReport::default()
    };
    let mut users = HashSet::new();
    let mut groups = HashSet::new();
    let mut batch: Vec<NewMessage> = Vec::new();
    let mut batch_ids: Vec<i64> = Vec::new();
    let mut batch_next = state.scanned;
    // records the store already holds past the checkpoint (the previous run died between the
    // store append and the state update): matched to the source by position
    let mut adopt_end = state.banter_end;
    let mut last_progress = Instant::now();
    for item in src.scan(state.scanned) {
        match item {
            Item::Problem(p, next) => {
                if p.at >= state.problems_through {
                    *report
                        .problems
                        .entry(p.kind.name().to_string())
                        .or_default() += 1;
                    *state.problems.entry(p.kind.name().to_string()).or_default() += 1;
                    if let Some(cb) = opts.on_problem.as_mut() {
                        cb(&p);
                    }
                    if report.problem_list.len() < KEEP_PROBLEMS {
                        report.problem_list.push(p);
                    }
                    state.problems_through = state.problems_through.max(next);
                }
            }
            Item::Entry(e, next) => {
                let m = to_message(&e, &mut state.last_ts);
                let user = matches!(e.queue, GbQueue::User { .. });
                if adopt_end < store_end {
                    let len = message_record_len(m.body.len(), 1) as u64;
                    let key = adopt_end + (len - crate::format::ENTRY_LEN as u64);
                    adopt_end += len;
                    if adopt_end > store_end {
                        return Err(ImportError::Invalid(format!(
                            "the store's log ({store_end}) does not end where the source's entries do ({adopt_end}): it was written by something else"
                        )));
                    }
                    keys.push(e.msgid, key as i64);
                    state.pairs += 1;
                    state.banter_end = adopt_end;
                    state.scanned = next;
                    state.problems_through = state.problems_through.max(next);
                    if user {
                        state.user_entries += 1;
                    } else {
                        state.group_entries += 1;
                    }
                    if adopt_end == store_end {
                        keys.flush().map_err(io("writing the key map"))?;
                        state
                            .save(map_dir)
                            .map_err(io("writing the import state"))?;
                    }
                    continue;
                }
                if user {
                    users.insert(e.queue);
                    report.user_entries += 1;
                } else {
                    groups.insert(e.queue);
                    report.group_entries += 1;
                }
                batch.push(m);
                batch_ids.push(e.msgid);
                batch_next = next;
                if batch.len() >= opts.batch_messages {
                    commit(
                        store,
                        &mut keys,
                        map_dir,
                        &mut state,
                        &mut batch,
                        &mut batch_ids,
                        batch_next,
                    )?;
                    report.messages = report.user_entries + report.group_entries;
                    if let Some(cb) = opts.progress.as_mut() {
                        if last_progress.elapsed().as_millis() >= 1000 {
                            last_progress = Instant::now();
                            cb(&Progress {
                                source_bytes_done: src.bytes_before(state.scanned),
                                source_bytes: src.total_bytes(),
                                messages: report.messages,
                                elapsed_secs: started.elapsed().as_secs_f64(),
                            });
                        }
                    }
                    if opts.stop_after.is_some_and(|n| report.messages >= n) {
                        break;
                    }
                }
            }
        }
    }
    if adopt_end < store_end {
        return Err(ImportError::Invalid(format!(
            "the store holds records past what the source accounts for ({adopt_end} < {store_end}): it was written by something else"
        )));
    }
    let stopped_early = opts
        .stop_after
        .is_some_and(|n| report.user_entries + report.group_entries >= n);
    if !batch.is_empty() {
        commit(
            store,
            &mut keys,
            map_dir,
            &mut state,
            &mut batch,
            &mut batch_ids,
            batch_next,
        )?;
    } else if !report.problems.is_empty() && !stopped_early {
        state
            .save(map_dir)
            .map_err(io("writing the import state"))?;
    }
    report.messages = report.user_entries + report.group_entries;
    report.users = users.len() as u64;
    report.groups = groups.len() as u64;
    report.total_entries = state.user_entries + state.group_entries;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    if report.messages > 0 {
        store.checkpoint()?;
    }
    if let Some(cb) = opts.progress.as_mut() {
        cb(&Progress {
            source_bytes_done: src.bytes_before(state.scanned),
            source_bytes: src.total_bytes(),
            messages: report.messages,
            elapsed_secs: report.elapsed_secs,
        });
    }
    Ok(report)
}

/// A new import: the store must be empty; its log is moved above every GoBelieve id (a JUMP
/// record, as a promotion writes). Returns the store open for appends and the new state (as
/// `Err`: not resumed).
fn open_fresh(
    src: &Source,
    store_dir: &Path,
    map_dir: &Path,
    source: String,
) -> Result<(Store, Result<State, State>), ImportError> {
    let follower = StoreOptions {
        role: Role::Follower,
        ..StoreOptions::default()
    };
    let expect_base = jump_target(src.id_bound() as u64);
    let store = Store::open(store_dir, follower)?;
    let end = store.log_end();
    let (store, base) = if end == 0 {
        let after = store.promote_past(src.id_bound() as u64).wait()?;
        (store, after - JUMP_RECORD_LEN as u64)
    } else if end == expect_base + JUMP_RECORD_LEN as u64 {
        // an earlier run moved the log and stopped before it wrote its state
        store.close()?;
        drop(store);
        (
            Store::open(store_dir, StoreOptions::default())?,
            expect_base,
        )
    } else {
        let _ = store.close();
        return Err(ImportError::Invalid(format!(
            "the store in {} already holds messages; import into a new, empty data directory",
            store_dir.display()
        )));
    };
    std::fs::create_dir_all(map_dir).map_err(io(format!("creating {}", map_dir.display())))?;
    let state = State {
        source,
        base: base as i64,
        banter_end: store.log_end(),
        ..State::default()
    };
    KeyWriter::open(map_dir, 0).map_err(io("creating the key map"))?;
    state
        .save(map_dir)
        .map_err(io("writing the import state"))?;
    Ok((store, Err(state)))
}

/// Appends a batch, then records its key pairs, then the state.
fn commit(
    store: &Store,
    keys: &mut KeyWriter,
    map_dir: &Path,
    state: &mut State,
    batch: &mut Vec<NewMessage>,
    ids: &mut Vec<i64>,
    next: Pos,
) -> Result<(), ImportError> {
    let groups = batch
        .iter()
        .filter(|m| matches!(m.queues[0], QueueId::Group { .. }))
        .count() as u64;
    let users = batch.len() as u64 - groups;
    let appended = store.append_blocking(std::mem::take(batch))?;
    for (a, id) in appended.iter().zip(ids.iter()) {
        keys.push(*id, a[0].key);
    }
    keys.flush().map_err(io("writing the key map"))?;
    state.pairs += appended.len() as u64;
    state.user_entries += users;
    state.group_entries += groups;
    state.banter_end = store.log_end();
    state.scanned = next;
    state.problems_through = state.problems_through.max(next);
    ids.clear();
    state
        .save(map_dir)
        .map_err(io("writing the import state"))?;
    Ok(())
}
