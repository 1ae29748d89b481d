//! The store benchmark behind `banter bench store`: appends with many concurrent appenders,
//! reopens the store (restart time), syncs queues from the start, and measures disk use.
//!
//! Appenders are logical: each keeps exactly one append in flight (submit, wait for the
//! durable acknowledgement, submit the next), and a few driver threads multiplex them, like the
//! access server's async tasks do. That measures the engine (group commit, fsync, encoding)
//! rather than the scheduling of hundreds of OS threads on two cores.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::format::message_record_len;
use crate::{AppendTicket, Durability, NewMessage, QueueId, Store, StoreError, StoreOptions};

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct StoreBenchOptions {
    /// Messages to append.
    pub messages: u64,
    /// Body size of each message.
    pub message_size: usize,
    /// Concurrent appenders (appends in flight).
    pub appenders: usize,
    pub durability: Durability,
    /// Directory for the store (default: a fresh directory under the system temp dir, removed
    /// afterwards). It must not already hold a store.
    pub dir: Option<PathBuf>,
    /// Distinct users messages are spread over.
    pub users: u64,
    /// Queues per message: 2 models a peer message (receiver's and sender's queue).
    pub queues_per_message: usize,
    /// Queue entries to read in the sync phase (at most what was written).
    pub sync_entries: u64,
    /// Keep the store directory afterwards.
    pub keep: bool,
    /// Threads that drive the appenders (each keeps `appenders / driver_threads` appends in
    /// flight).
    pub driver_threads: usize,
    /// Store options to use (durability is taken from `durability` above).
    pub store: StoreOptions,
    /// Give every append an idempotency key (as access nodes do), so the cost of the KEY record
    /// and of the key window is measured.
    pub keyed: bool,
}

impl Default for StoreBenchOptions {
    fn default() -> Self {
        StoreBenchOptions {
            messages: 1_000_000,
            message_size: 200,
            appenders: 256,
            durability: Durability::Always,
            dir: None,
            users: 100_000,
            queues_per_message: 2,
            sync_entries: 2_000_000,
            keep: false,
            driver_threads: 2,
            store: StoreOptions::default(),
            keyed: false,
        }
    }
}

/// Benchmark results.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreBenchReport {
    pub messages: u64,
    pub message_size: usize,
    pub appenders: usize,
    pub durability: String,
    pub queues_per_message: usize,
    pub append_secs: f64,
    pub appends_per_sec: f64,
    /// Median and 99th percentile append latency (submit to durable acknowledgement), µs.
    pub append_p50_us: u64,
    pub append_p99_us: u64,
    /// Group commits and fsyncs during the append phase.
    pub batches: u64,
    pub fsyncs: u64,
    pub sync_entries: u64,
    pub sync_entries_per_sec: f64,
    /// Time to reopen the store holding every message after a clean close.
    pub restart_ms: f64,
    /// Time to reopen it as after a crash: no final checkpoint, so the log written since the
    /// last background checkpoint is replayed.
    pub recovery_ms: f64,
    /// Bytes of every file in the store directory.
    pub disk_bytes: u64,
    /// messages × message_size.
    pub raw_bytes: u64,
    /// Fixed format overhead per message (record header, meta, queue entries).
    pub overhead_per_message: u64,
    /// disk_bytes / (raw_bytes + messages × overhead_per_message).
    pub disk_ratio: f64,
}

impl StoreBenchReport {
    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        format!(
            concat!(
                "{{\"bench\":\"store\",\"messages\":{},\"message_size\":{},\"appenders\":{},",
                "\"durability\":\"{}\",\"queues_per_message\":{},\"append_secs\":{:.3},",
                "\"appends_per_sec\":{:.0},\"append_p50_us\":{},\"append_p99_us\":{},",
                "\"batches\":{},\"fsyncs\":{},\"sync_entries\":{},\"sync_entries_per_sec\":{:.0},",
                "\"restart_ms\":{:.1},\"recovery_ms\":{:.1},\"disk_bytes\":{},\"raw_bytes\":{},",
                "\"overhead_per_message\":{},\"disk_ratio\":{:.4}}}"
            ),
            self.messages,
            self.message_size,
            self.appenders,
            self.durability,
            self.queues_per_message,
            self.append_secs,
            self.appends_per_sec,
            self.append_p50_us,
            self.append_p99_us,
            self.batches,
            self.fsyncs,
            self.sync_entries,
            self.sync_entries_per_sec,
            self.restart_ms,
            self.recovery_ms,
            self.disk_bytes,
            self.raw_bytes,
            self.overhead_per_message,
            self.disk_ratio
        )
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs the benchmark. `progress(done, total)` is called from worker threads as messages are
/// acknowledged.
pub fn run(
    opts: &StoreBenchOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<StoreBenchReport, StoreError> {
    if opts.messages == 0 || opts.appenders == 0 || opts.users == 0 || opts.queues_per_message == 0
    {
        return Err(StoreError::InvalidArgument(
            "messages, appenders, users and queues_per_message must be positive".into(),
        ));
    }
    let temp = opts.dir.is_none();
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "banter-store-bench-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ (opts.messages as u128)
        )),
    };
    let result = run_in(opts, &dir, progress);
    if temp && !opts.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(
    opts: &StoreBenchOptions,
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<StoreBenchReport, StoreError> {
    let store_opts = StoreOptions {
        durability: opts.durability,
        ..opts.store.clone()
    };
    let store = Store::open(dir, store_opts.clone())?;
    if store.log_end() != store.log_start() {
        return Err(StoreError::InvalidArgument(format!(
            "{} already holds a store; the benchmark needs an empty directory",
            dir.display()
        )));
    }
    let bodies: Vec<Bytes> = (0..64u64)
        .map(|i| {
            let mut r = Rng(i + 1);
            Bytes::from(
                (0..opts.message_size)
                    .map(|_| (r.next() % 95 + 32) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();

    // --- append phase
    let drivers = opts.driver_threads.clamp(1, opts.appenders);
    let next_msg = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let total = opts.messages;
    let stats0 = store.stats();
    let t0 = Instant::now();
    let latencies: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..drivers)
            .map(|d| {
                let store = &store;
                let bodies = &bodies;
                let next_msg = &next_msg;
                let done = &done;
                let in_flight =
                    opts.appenders / drivers + usize::from(d < opts.appenders % drivers);
                s.spawn(move || -> Result<Vec<u32>, StoreError> {
                    let mut rng = Rng(0xabcdef + d as u64);
                    let mut lat = Vec::new();
                    let mut queue: VecDeque<(Instant, AppendTicket)> = VecDeque::new();
                    let submit = |rng: &mut Rng, q: &mut VecDeque<(Instant, AppendTicket)>| {
                        let i = next_msg.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return false;
                        }
                        let queues = (0..opts.queues_per_message)
                            .map(|_| QueueId::user(1, (rng.next() % opts.users) as i64 + 1))
                            .collect();
                        let m = NewMessage {
                            key: opts.keyed.then(|| crate::AppendKey::server(d as u64, i)),
                            queues,
                            device_id: (i % 7) as i64,
                            cmd: 4,
                            flag: 0,
                            timestamp: 1_700_000_000 + (i / 1000) as i64,
                            body: bodies[(i % 64) as usize].clone(),
                        };
                        q.push_back((Instant::now(), store.append(vec![m])));
                        true
                    };
                    for _ in 0..in_flight {
                        if !submit(&mut rng, &mut queue) {
                            break;
                        }
                    }
                    let mut mine = 0u64;
                    while let Some((at, ticket)) = queue.pop_front() {
                        ticket.wait()?;
                        mine += 1;
                        if mine & 7 == 0 {
                            lat.push(at.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n & 8191 == 0 || n == total {
                            progress(n, total);
                        }
                        submit(&mut rng, &mut queue);
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(StoreError::InvalidArgument("driver panicked".into())))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let append_secs = t0.elapsed().as_secs_f64();
    let stats1 = store.stats();
    let mut lat: Vec<u32> = latencies.into_iter().flatten().collect();
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * p) as usize] as u64
        }
    };

    // --- recovery (as after a crash), then a clean restart
    store.close_without_checkpoint()?;
    drop(store);
    let t1 = Instant::now();
    let store = Store::open(dir, store_opts.clone())?;
    let recovery_ms = t1.elapsed().as_secs_f64() * 1000.0;
    store.close()?;
    drop(store);
    let disk_bytes = dir_bytes(dir);
    let t1 = Instant::now();
    let store = Store::open(dir, store_opts)?;
    let restart_ms = t1.elapsed().as_secs_f64() * 1000.0;

    // --- sync phase: whole queues from the start, users in order, on two threads
    let target = opts
        .sync_entries
        .min(opts.messages * opts.queues_per_message as u64);
    let read = AtomicU64::new(0);
    let t2 = Instant::now();
    std::thread::scope(|s| -> Result<(), StoreError> {
        let hs: Vec<_> = (0..2u64)
            .map(|t| {
                let store = &store;
                let read = &read;
                s.spawn(move || -> Result<(), StoreError> {
                    let mut uid = 1 + t;
                    while uid <= opts.users && read.load(Ordering::Relaxed) < target {
                        let q = QueueId::user(1, uid as i64);
                        let mut key = 0;
                        loop {
                            let page = store.sync(q, key, 1000)?;
                            read.fetch_add(page.messages.len() as u64, Ordering::Relaxed);
                            key = page.last_key;
                            if !page.has_more {
                                break;
                            }
                        }
                        uid += 2;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap_or_else(|_| {
                Err(StoreError::InvalidArgument("sync thread panicked".into()))
            })?;
        }
        Ok(())
    })?;
    let sync_secs = t2.elapsed().as_secs_f64();
    let sync_entries = read.load(Ordering::Relaxed);
    store.close()?;
    drop(store);

    let raw_bytes = opts.messages * opts.message_size as u64;
    let overhead = (message_record_len(0, opts.queues_per_message)) as u64;
    let durability = match opts.durability {
        Durability::Always => "always".to_string(),
        Durability::Interval(d) => format!("interval-{}ms", d.as_millis()),
        Durability::None => "none".to_string(),
    };
    Ok(StoreBenchReport {
        messages: stats1.messages - stats0.messages,
        message_size: opts.message_size,
        appenders: opts.appenders,
        durability,
        queues_per_message: opts.queues_per_message,
        append_secs,
        appends_per_sec: opts.messages as f64 / append_secs.max(1e-9),
        append_p50_us: pct(0.5),
        append_p99_us: pct(0.99),
        batches: stats1.batches - stats0.batches,
        fsyncs: stats1.fsyncs - stats0.fsyncs,
        sync_entries,
        sync_entries_per_sec: sync_entries as f64 / sync_secs.max(1e-9),
        restart_ms,
        recovery_ms,
        disk_bytes,
        raw_bytes,
        overhead_per_message: overhead,
        disk_ratio: disk_bytes as f64 / (raw_bytes + opts.messages * overhead).max(1) as f64,
    })
}
