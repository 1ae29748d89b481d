//! Queue heads. The writer owns one [`Head`] per queue (sequence number, peer-only chain head and
//! the skew-binary jump chain it needs to give the next entry its skip pointer). Readers see a
//! separate, sharded map of [`Published`] heads that the writer updates only after the entries
//! are durable, so a reader never observes an entry that could still be lost.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use parking_lot::RwLock;

use crate::format::{jump_chain_seqs, jump_seq, CheckpointQueue, Entry};
use crate::QueueId;

/// A fast, seeded hasher for queue ids (two i64s and a tag).
#[derive(Clone, Copy)]
pub(crate) struct QueueHasherBuilder {
    seed: u64,
}

impl QueueHasherBuilder {
    pub(crate) fn new() -> Self {
        // Take randomness from std's RandomState so ids chosen by clients cannot be aimed at
        // one bucket without knowing the per-process seed.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        QueueHasherBuilder {
            seed: h.finish() | 1,
        }
    }
}

impl BuildHasher for QueueHasherBuilder {
    type Hasher = QueueHasher;
    fn build_hasher(&self) -> QueueHasher {
        QueueHasher { h: self.seed }
    }
}

pub(crate) struct QueueHasher {
    h: u64,
}

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

impl Hasher for QueueHasher {
    fn finish(&self) -> u64 {
        fold_mul(self.h, 0x2d35_8dcc_aa6c_78a5)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut a = [0u8; 8];
            a[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(a));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.h = fold_mul(self.h ^ v, 0x9e37_79b9_7f4a_7c15);
    }
    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(v as u64);
    }
    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

pub(crate) type QueueMap<V> = HashMap<QueueId, V, QueueHasherBuilder>;

/// Links computed for a new entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Links {
    pub seq: u64,
    pub prev_key: i64,
    pub jump_key: i64,
    pub prev_peer_key: i64,
}

/// The writer's state of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Head {
    pub last_seq: u64,
    pub last_peer_key: i64,
    /// (seq, key) of the jump chain from the newest entry, oldest first. Keys may be 0 for entries
    /// that are no longer retained (never followed by readers).
    pub chain: Vec<(u64, i64)>,
}

impl Head {
    pub fn last_key(&self) -> i64 {
        self.chain.last().map_or(0, |c| c.1)
    }

    /// Links for a new entry at `key` and the state after it.
    pub fn push(&mut self, key: i64, group_content: bool) -> Links {
        let seq = self.last_seq.wrapping_add(1);
        let prev_key = self.last_key();
        let prev_peer_key = self.last_peer_key;
        let js = jump_seq(seq);
        while let Some(&(s, _)) = self.chain.last() {
            if s > js {
                self.chain.pop();
            } else {
                break;
            }
        }
        let jump_key = if js == 0 {
            0
        } else {
            self.chain.last().map_or(0, |c| c.1)
        };
        self.chain.push((seq, key));
        self.last_seq = seq;
        if !group_content {
            self.last_peer_key = key;
        }
        Links {
            seq,
            prev_key,
            jump_key,
            prev_peer_key,
        }
    }

    /// The head a checkpoint or WITHDRAW record describes; `None` for an empty queue
    /// (`last_seq` 0).
    pub fn from_state(s: &CheckpointQueue) -> Option<Head> {
        if s.last_seq == 0 {
            return None;
        }
        Some(Head {
            last_seq: s.last_seq,
            last_peer_key: s.last_peer_key,
            chain: jump_chain_seqs(s.last_seq)
                .into_iter()
                .zip(s.chain_keys.iter().copied())
                .collect(),
        })
    }

    /// This head in the checkpoint / WITHDRAW layout.
    pub fn to_state(&self, queue: QueueId) -> CheckpointQueue {
        CheckpointQueue {
            queue,
            last_seq: self.last_seq,
            last_peer_key: self.last_peer_key,
            chain_keys: self.chain.iter().map(|c| c.1).collect(),
        }
    }

    /// A head for a queue first seen at entry `e` during a replay that has no earlier state (no
    /// checkpoint, oldest segments dropped): every earlier entry is gone, so the chain keys are
    /// unknown and recorded as the entry says (prev) or 0.
    pub fn rebased(e: &Entry) -> Head {
        let before = e.seq - 1;
        let seqs = jump_chain_seqs(before);
        let n = seqs.len();
        let chain = seqs
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, if i + 1 == n { e.prev_key } else { 0 }))
            .collect();
        Head {
            last_seq: before,
            last_peer_key: e.prev_peer_key,
            chain,
        }
    }

    /// Replays an entry read from the log at `key`, checking that it continues this queue.
    pub fn apply(&mut self, e: &Entry, key: i64) -> Result<(), String> {
        if e.seq != self.last_seq.wrapping_add(1) {
            return Err(format!(
                "queue entry has sequence number {} but the queue is at {}",
                e.seq, self.last_seq
            ));
        }
        if e.prev_key != self.last_key() {
            return Err(format!(
                "queue entry links to {} but the queue's newest key is {}",
                e.prev_key,
                self.last_key()
            ));
        }
        let links = self.push(key, e.group_content());
        if links.jump_key != e.jump_key {
            if links.jump_key == 0 {
                // Unknown (dropped) target: adopt what the log says.
                let js = jump_seq(e.seq);
                if let Some(c) = self.chain.iter_mut().find(|c| c.0 == js) {
                    c.1 = e.jump_key;
                }
            } else {
                return Err(format!(
                    "queue entry jump link {} differs from the expected {}",
                    e.jump_key, links.jump_key
                ));
            }
        }
        if links.prev_peer_key != e.prev_peer_key && links.prev_peer_key != 0 {
            return Err(format!(
                "queue entry peer link {} differs from the expected {}",
                e.prev_peer_key, links.prev_peer_key
            ));
        }
        Ok(())
    }
}

/// What readers know about a queue: its newest durable key and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Published {
    pub last_key: i64,
    pub last_seq: u64,
}

const SHARDS: usize = 64;

/// Sharded reader-side map of queue heads.
pub(crate) struct PublishedHeads {
    shards: Vec<RwLock<QueueMap<Published>>>,
    hasher: QueueHasherBuilder,
}

impl PublishedHeads {
    pub fn new() -> Self {
        let hasher = QueueHasherBuilder::new();
        PublishedHeads {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(hasher)))
                .collect(),
            hasher,
        }
    }

    fn shard(&self, q: &QueueId) -> usize {
        (self.hasher.hash_one(q) >> 58) as usize % SHARDS
    }

    pub fn get(&self, q: &QueueId) -> Option<Published> {
        self.shards[self.shard(q)].read().get(q).copied()
    }

    pub fn set(&self, q: QueueId, p: Published) {
        self.shards[self.shard(&q)].write().insert(q, p);
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Applies updates in order (later ones win), taking each shard's lock once.
    pub fn set_many(&self, updates: &[(QueueId, Published)]) {
        if updates.len() < 8 {
            for (q, p) in updates {
                self.set(*q, *p);
            }
            return;
        }
        // (shard, index): sorting keeps the order of updates within a shard
        let mut order: Vec<(u32, u32)> = updates
            .iter()
            .enumerate()
            .map(|(i, (q, _))| (self.shard(q) as u32, i as u32))
            .collect();
        order.sort_unstable();
        let mut i = 0;
        while i < order.len() {
            let shard = order[i].0;
            let mut map = self.shards[shard as usize].write();
            while i < order.len() && order[i].0 == shard {
                let (q, p) = updates[order[i].1 as usize];
                map.insert(q, p);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_builds_valid_jump_chain() {
        let mut h = Head::default();
        let mut keys = vec![0i64];
        let mut jumps = vec![0i64];
        for s in 1..=5000u64 {
            let key = (s * 100) as i64;
            let l = h.push(key, s % 3 == 0);
            assert_eq!(l.seq, s);
            assert_eq!(l.prev_key, keys[(s - 1) as usize]);
            assert_eq!(l.jump_key, keys[jump_seq(s) as usize]);
            keys.push(key);
            jumps.push(l.jump_key);
            let seqs: Vec<u64> = h.chain.iter().map(|c| c.0).collect();
            assert_eq!(seqs, jump_chain_seqs(s));
        }
    }

    #[test]
    fn apply_accepts_what_push_produced() {
        let mut writer = Head::default();
        let mut replay = Head::default();
        for s in 1..=300u64 {
            let key = (s * 64) as i64;
            let l = writer.push(key, s % 2 == 0);
            let e = Entry {
                kind: 1,
                flags: if s % 2 == 0 { 1 } else { 0 },
                back: 0,
                appid: 1,
                id: 1,
                seq: l.seq,
                prev_key: l.prev_key,
                jump_key: l.jump_key,
                prev_peer_key: l.prev_peer_key,
            };
            replay.apply(&e, key).unwrap();
        }
        assert_eq!(writer, replay);
    }
}
