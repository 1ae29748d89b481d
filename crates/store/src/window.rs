//! The window of recent idempotency keys (`docs/storage-format.md` §4.3): the keyed MESSAGE
//! records the store still recognises, so that a retried append is answered with its original
//! positions instead of being stored twice.
//!
//! The writer thread owns it. It is rebuilt at open from the KEY and WITHDRAW records of the
//! last `dedupe_log_bytes` of the log (`recovery`), kept up to date by the writer for its own
//! appends and for replicated records (so a promoted follower knows the keys its old leader
//! stored), cut back by a withdrawal (a withdrawn append must be stored again when retried) and
//! by in-process recovery (to the acknowledged end).
//!
//! Bounds: at most `dedupe_keys` keys, and only keys of records within `dedupe_log_bytes` of log
//! bytes of the newest one; the oldest are forgotten first. Log bytes, not positions: a promotion
//! makes positions jump by a terabyte or more (a JUMP record), and the keys of the records just
//! before it are exactly the ones the clients' resends after a fail-over need.
//!
//! Each key is hashed once per append: the table keeps the hash beside the key, and the age order
//! keeps only the hash and the position, so forgetting the oldest key finds its entry by hash and
//! position without hashing or comparing keys again. A key costs about 120 bytes of memory (the
//! 40-byte key, its slot and hash — 64 bytes — in a table at most seven-eighths full, 24 bytes in
//! the age order, both sized in powers of two), so the default 100 000 keys hold about 12 MB, up
//! to twice that while the table grows.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::format::{
    decode_key, decode_withdraw, jump_from, RECORD_HEADER_LEN, RECORD_JUMP, RECORD_KEY,
    RECORD_WITHDRAW,
};
use crate::AppendKey;

/// Where the MESSAGE record of a remembered key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Position of the record.
    pub pos: u64,
    /// Its length (header included).
    pub len: u32,
}

/// A remembered key: the key, where its record is, and the key's hash.
#[derive(Debug)]
struct Kept {
    key: AppendKey,
    slot: Slot,
    hash: u64,
}

/// A key in the age order: its record's position, the record's place in the log's bytes (its
/// position less the jumps below it) and the key's hash.
#[derive(Debug, Clone, Copy)]
struct Aged {
    pos: u64,
    at: u64,
    hash: u64,
}

/// The recent keys (see the module docs).
#[derive(Debug)]
pub(crate) struct Window {
    max_keys: usize,
    max_bytes: u64,
    hasher: RandomState,
    map: HashTable<Kept>,
    /// Keys by record position, oldest first; an entry whose key's slot moved on (the key was
    /// stored again later) is stale.
    order: VecDeque<Aged>,
    /// Positions the log skipped at promotions (JUMP records) so far.
    skipped: u64,
}

impl Window {
    /// An empty window of at most `max_keys` keys spanning at most `max_bytes` of log
    /// (`max_keys` 0: nothing is remembered).
    pub fn new(max_keys: usize, max_bytes: u64) -> Window {
        Window {
            max_keys,
            max_bytes,
            hasher: RandomState::new(),
            map: HashTable::new(),
            order: VecDeque::new(),
            skipped: 0,
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The record stored with `key`, if it is still remembered.
    pub fn get(&self, key: &AppendKey) -> Option<Slot> {
        let hash = self.hasher.hash_one(key);
        self.map.find(hash, |k| k.key == *key).map(|k| k.slot)
    }

    /// Remembers that the record at `pos` (`len` bytes) was stored with `key`. Positions only
    /// grow from one call to the next.
    pub fn insert(&mut self, key: AppendKey, pos: u64, len: u32) {
        if self.max_keys == 0 {
            return;
        }
        let at = pos.saturating_sub(self.skipped);
        let hash = self.hasher.hash_one(key);
        let slot = Slot { pos, len };
        match self.map.find_mut(hash, |k| k.key == key) {
            Some(k) => k.slot = slot,
            None => {
                self.map
                    .insert_unique(hash, Kept { key, slot, hash }, |k| k.hash);
            }
        }
        self.order.push_back(Aged { pos, at, hash });
        while self.order.len() > self.max_keys
            || self
                .order
                .front()
                .is_some_and(|a| a.at.saturating_add(self.max_bytes) < at)
        {
            self.pop_front();
        }
    }

    /// The log continues at `to` after ending at `from` (a promotion's JUMP record): the
    /// positions in between hold no bytes and do not count towards `dedupe_log_bytes`.
    pub fn jumped(&mut self, from: u64, to: u64) {
        self.skipped = self.skipped.saturating_add(to.saturating_sub(from));
    }

    fn pop_front(&mut self) {
        if let Some(a) = self.order.pop_front() {
            self.forget(a);
        }
    }

    /// Removes the key of `a` unless it was stored again later (then its slot moved on). A
    /// position holds one record, so the hash and the position find the entry.
    fn forget(&mut self, a: Aged) {
        if let Ok(e) = self.map.find_entry(a.hash, |k| k.slot.pos == a.pos) {
            e.remove();
        }
    }

    /// Forgets the keys of every record at or after `from` (withdrawn, or beyond the
    /// acknowledged end after a failed write).
    pub fn truncate(&mut self, from: u64) {
        while let Some(&a) = self.order.back() {
            if a.pos < from {
                break;
            }
            self.order.pop_back();
            self.forget(a);
        }
    }

    /// Applies a record found at `pos` in the log (recovery, replication): a KEY record adds
    /// its key, a WITHDRAW record forgets the keys it withdraws, a JUMP record (the first of
    /// the segment at `pos`) skips the positions it jumps over; a MESSAGE changes nothing.
    pub fn apply_record(&mut self, pos: u64, rec: &[u8]) -> Result<(), String> {
        match rec[8] {
            RECORD_KEY => {
                let (at, key) = decode_key(&rec[RECORD_HEADER_LEN..])?;
                if at >= pos || pos - at > u32::MAX as u64 {
                    return Err(format!(
                        "key record at position {pos} names the record at {at}"
                    ));
                }
                self.insert(key, at, (pos - at) as u32);
            }
            RECORD_WITHDRAW => {
                let w = decode_withdraw(&rec[RECORD_HEADER_LEN..])?;
                self.truncate(w.from);
            }
            RECORD_JUMP => {
                let from = jump_from(rec)
                    .ok_or_else(|| format!("jump record at position {pos} cannot be read"))?;
                self.jumped(from, pos);
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> AppendKey {
        AppendKey::server(7, i)
    }

    #[test]
    fn keeps_at_most_max_keys_oldest_forgotten_first() {
        let mut w = Window::new(3, u64::MAX);
        for i in 0..5 {
            w.insert(key(i), 100 * i, 100);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.get(&key(0)), None);
        assert_eq!(w.get(&key(1)), None);
        assert_eq!(w.get(&key(4)), Some(Slot { pos: 400, len: 100 }));
    }

    #[test]
    fn forgets_records_older_than_max_bytes() {
        let mut w = Window::new(100, 1000);
        w.insert(key(1), 0, 10);
        w.insert(key(2), 500, 10);
        w.insert(key(3), 1200, 10);
        assert_eq!(w.get(&key(1)), None, "more than 1000 bytes older");
        assert!(w.get(&key(2)).is_some());
        assert!(w.get(&key(3)).is_some());
    }

    #[test]
    fn positions_a_promotion_jumped_over_are_not_log_bytes() {
        let mut w = Window::new(100, 1000);
        w.insert(key(1), 100, 10);
        w.insert(key(2), 500, 10);
        // the log ended at 600 and continues at 1 TiB (a promotion)
        let to = 1 << 40;
        w.jumped(600, to);
        w.insert(key(3), to + 100, 10);
        assert!(
            w.get(&key(1)).is_some(),
            "200 bytes of log later, not a terabyte"
        );
        assert!(w.get(&key(2)).is_some());
        w.insert(key(4), to + 650, 10);
        assert_eq!(
            w.get(&key(1)),
            None,
            "now more than 1000 bytes of log older"
        );
        assert!(w.get(&key(2)).is_some());
        // a JUMP record found in the log (recovery, replication) counts the same way
        let mut r = Window::new(100, 1000);
        r.insert(key(1), 100, 10);
        let mut jump = Vec::new();
        crate::format::encode_jump(&mut jump, 600);
        r.apply_record(to, &jump).unwrap();
        r.insert(key(3), to + 100, 10);
        assert!(r.get(&key(1)).is_some());
    }

    #[test]
    fn truncate_forgets_from_a_position_on() {
        let mut w = Window::new(100, u64::MAX);
        for i in 0..5 {
            w.insert(key(i), 100 * i, 100);
        }
        w.truncate(250);
        assert_eq!(w.len(), 3);
        assert!(w.get(&key(2)).is_some());
        assert_eq!(w.get(&key(3)), None);
        w.insert(key(3), 300, 100);
        assert_eq!(w.get(&key(3)), Some(Slot { pos: 300, len: 100 }));
    }

    #[test]
    fn a_reused_key_points_at_the_newer_record_and_survives_the_older_eviction() {
        let mut w = Window::new(2, u64::MAX);
        w.insert(key(1), 0, 10);
        w.insert(key(1), 10, 10);
        w.insert(key(2), 20, 10); // evicts the stale (0, key 1) entry only
        assert_eq!(w.get(&key(1)), Some(Slot { pos: 10, len: 10 }));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn zero_keys_remembers_nothing() {
        let mut w = Window::new(0, u64::MAX);
        w.insert(key(1), 0, 10);
        assert_eq!(w.get(&key(1)), None);
    }

    #[test]
    fn key_and_withdraw_records_are_applied() {
        let mut w = Window::new(10, u64::MAX);
        let mut rec = Vec::new();
        crate::format::encode_key(&mut rec, 100, &key(1));
        w.apply_record(160, &rec).unwrap();
        assert_eq!(w.get(&key(1)), Some(Slot { pos: 100, len: 60 }));
        let mut bad = Vec::new();
        crate::format::encode_key(&mut bad, 500, &key(2));
        assert!(
            w.apply_record(400, &bad).is_err(),
            "a key names an earlier record"
        );
        let mut wd = Vec::new();
        crate::format::encode_withdraw(
            &mut wd,
            &crate::format::Withdraw {
                from: 100,
                to: 300,
                heads: Vec::new(),
            },
        );
        w.apply_record(300, &wd).unwrap();
        assert_eq!(w.get(&key(1)), None, "withdrawn");
    }
}
