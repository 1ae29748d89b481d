//! Queries: `sync`, `sync_since`, `latest`, `latest_peer`, `new_count`.
//!
//! A queue is a backward-linked list through the log. Each entry links to its predecessor
//! (`prev`) and to the entry at sequence number `jump_seq(seq)` (`jump`), a skew-binary skip
//! pointer. From the queue's head, following `jump` whenever it does not overshoot and `prev`
//! otherwise reaches any sequence number — or the last entry at or before any key — in O(log n)
//! entry reads. A sync therefore costs O(log n + returned entries) reads, whatever the queue's
//! length, and every entry newer than `after_key` is eventually returned: nothing is skipped.
//!
//! Every entry read is checked against the queue and sequence number the walk expects, so a
//! damaged link is reported as corruption rather than followed. With a commit index (`sync`
//! replication) readers start from the newest entry below it rather than from the queue's head
//! (`visible_head`, O(log n) reads), so nothing a follower has not confirmed is ever returned. Reads hit the recent-write
//! cache first, then `pread` the segment files; none takes the writer's lock.

use crate::error::StoreError;
use crate::format::{
    jump_seq, u32_at, Entry, MessageMeta, ENTRY_LEN, MESSAGE_FIXED_LEN, RECORD_HEADER_LEN,
    RECORD_MESSAGE,
};
use crate::queue::Published;
use crate::shared::Shared;
use crate::{QueueId, StoredMessage, SyncPage};

/// Largest back-distance for which an entry and its record are fetched with one read.
const ONE_READ_BACK: u64 = 16 * 1024;

impl Shared {
    /// Runs a read, retrying a few times if retention dropped what it was reading meanwhile.
    fn retrying<T>(&self, f: impl Fn() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            match f() {
                Err(StoreError::Truncated { .. }) if tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    /// The first key that may still be read (entries before it were dropped by retention).
    fn min_key(&self) -> i64 {
        self.log_start() as i64
    }

    fn corrupt_at(&self, pos: u64, why: impl Into<String>) -> StoreError {
        let (file, offset) = self.log().locate(pos);
        StoreError::corrupt(file, offset, why)
    }

    /// The head readers may see: the published head, or with a commit index (`sync`
    /// replication) the newest entry below it. `None` for an empty (or wholly unconfirmed) queue.
    pub(crate) fn visible_head(&self, q: QueueId) -> Result<Option<Published>, StoreError> {
        let Some(head) = self.heads().get(&q) else {
            return Ok(None);
        };
        if head.last_seq == 0 {
            return Ok(None);
        }
        let limit = self.visible_limit();
        if (head.last_key as u64) < limit {
            return Ok(Some(head));
        }
        // An entry is visible when its record ends at or before the limit (a record boundary),
        // i.e. when its key is below the limit.
        let bound = (limit as i64).saturating_sub(1);
        let seq = self.seq_at_or_before(q, head, bound)?;
        if seq == 0 {
            return Ok(None);
        }
        let last_key = self.key_of_seq(q, head, seq)?;
        Ok(Some(Published {
            last_key,
            last_seq: seq,
        }))
    }

    pub(crate) fn visible_last_key(&self, q: QueueId) -> Result<i64, StoreError> {
        self.retrying(|| Ok(self.visible_head(q)?.map_or(0, |h| h.last_key)))
    }

    /// Reads the entry at `key`, checking that it is entry `seq` of `q`.
    fn entry_at(&self, q: QueueId, key: i64, seq: u64) -> Result<Entry, StoreError> {
        if key <= 0 {
            return Err(self.corrupt_at(0, format!("queue link to key {key} for seq {seq}")));
        }
        let b = self.log().read(key as u64, ENTRY_LEN)?;
        let e = Entry::decode(&b);
        if e.queue() != Some(q) || e.seq != seq || (e.back as u64) < MESSAGE_FIXED_LEN as u64 {
            return Err(self.corrupt_at(
                key as u64,
                format!("expected entry {seq} of {q:?} at key {key}, found {e:?}"),
            ));
        }
        Ok(e)
    }

    /// Reads the message an entry belongs to.
    fn message_at(&self, key: i64, e: &Entry) -> Result<StoredMessage, StoreError> {
        let back = e.back as u64;
        let key_u = key as u64;
        let rec = key_u
            .checked_sub(back)
            .ok_or_else(|| self.corrupt_at(key_u, "entry points before the log"))?;
        let (head, body) = if back <= ONE_READ_BACK {
            let b = self.log().read(rec, back as usize)?;
            let meta = self.decode_meta(rec, &b, back)?;
            let body = b.slice(MESSAGE_FIXED_LEN..MESSAGE_FIXED_LEN + meta.1.body_len);
            (meta, body)
        } else {
            let b = self.log().read(rec, MESSAGE_FIXED_LEN)?;
            let meta = self.decode_meta(rec, &b, back)?;
            let body = self
                .log()
                .read(rec + MESSAGE_FIXED_LEN as u64, meta.1.body_len)?;
            (meta, body)
        };
        let (meta_bytes, meta) = head;
        if !meta.verify_content(&meta_bytes, &body) {
            return Err(self.corrupt_at(rec, "message content checksum mismatch"));
        }
        Ok(StoredMessage {
            key,
            prev_key: e.prev_key,
            device_id: meta.device_id,
            cmd: meta.cmd,
            flag: meta.flag,
            timestamp: meta.timestamp,
            body,
        })
    }

    /// Checks the record header and meta at `rec` (bytes `b` start there) against an entry at
    /// distance `back`.
    fn decode_meta(
        &self,
        rec: u64,
        b: &[u8],
        back: u64,
    ) -> Result<([u8; 32], MessageMeta), StoreError> {
        if b.len() < MESSAGE_FIXED_LEN || b[8] != RECORD_MESSAGE {
            return Err(self.corrupt_at(rec, "entry does not point at a message record"));
        }
        let len = u32_at(b, 4) as usize;
        let meta = MessageMeta::decode(&b[RECORD_HEADER_LEN..MESSAGE_FIXED_LEN])
            .map_err(|e| self.corrupt_at(rec, e))?;
        let first = meta.entry_back(0) as u64;
        let entry = ENTRY_LEN as u64;
        let fits = meta.payload_len() == len
            && back >= first
            && (back - first) / entry * entry == back - first
            && (back - first) / entry < meta.entry_count as u64;
        if !fits {
            return Err(self.corrupt_at(rec, "entry and message record disagree"));
        }
        let mut m = [0u8; 32];
        m.copy_from_slice(&b[RECORD_HEADER_LEN..MESSAGE_FIXED_LEN]);
        Ok((m, meta))
    }

    /// The largest sequence number of `q` whose key is ≤ `k` (0 if none); `k` < head key.
    fn seq_at_or_before(&self, q: QueueId, head: Published, k: i64) -> Result<u64, StoreError> {
        let (mut seq, mut key) = (head.last_seq, head.last_key);
        loop {
            let e = self.entry_at(q, key, seq)?;
            let js = jump_seq(seq);
            if js > 0 && e.jump_key > k {
                seq = js;
                key = e.jump_key;
            } else if seq > 1 && e.prev_key > k {
                seq -= 1;
                key = e.prev_key;
            } else {
                return Ok(seq - 1);
            }
        }
    }

    /// The key of entry `target` of `q` (1 ≤ target ≤ head seq).
    fn key_of_seq(&self, q: QueueId, head: Published, target: u64) -> Result<i64, StoreError> {
        let (mut seq, mut key) = (head.last_seq, head.last_key);
        while seq > target {
            let e = self.entry_at(q, key, seq)?;
            let js = jump_seq(seq);
            if js >= target {
                seq = js;
                key = e.jump_key;
            } else {
                seq -= 1;
                key = e.prev_key;
            }
        }
        Ok(key)
    }

    /// Entries `first..=last_seq` of `q` (last one at `last_key`), oldest first.
    fn collect_back(
        &self,
        q: QueueId,
        first: u64,
        last_seq: u64,
        last_key: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = Vec::with_capacity((last_seq + 1 - first) as usize);
        let (mut seq, mut key) = (last_seq, last_key);
        while seq >= first {
            let e = self.entry_at(q, key, seq)?;
            out.push(self.message_at(key, &e)?);
            seq -= 1;
            key = e.prev_key;
        }
        out.reverse();
        Ok(out)
    }

    pub(crate) fn sync_page(
        &self,
        q: QueueId,
        after_key: i64,
        limit: usize,
        join_ts: Option<i64>,
    ) -> Result<SyncPage, StoreError> {
        self.retrying(|| self.sync_once(q, after_key, limit, join_ts))
    }

    fn sync_once(
        &self,
        q: QueueId,
        after_key: i64,
        limit: usize,
        join_ts: Option<i64>,
    ) -> Result<SyncPage, StoreError> {
        let limit = limit.clamp(1, self.opts().max_sync_limit);
        let empty = |queue_last_key| SyncPage {
            messages: Vec::new(),
            last_key: after_key,
            has_more: false,
            queue_last_key,
        };
        let Some(head) = self.visible_head(q)? else {
            return Ok(empty(0));
        };
        if after_key >= head.last_key {
            return Ok(empty(head.last_key));
        }
        let k = after_key.max(self.min_key() - 1);
        if k >= head.last_key {
            // everything after `after_key` was dropped by retention: move the caller past it
            let mut page = empty(head.last_key);
            page.last_key = head.last_key;
            return Ok(page);
        }
        let before = self.seq_at_or_before(q, head, k)?;
        let window = match join_ts {
            Some(_) => limit.max(self.opts().max_sync_scan),
            None => limit,
        } as u64;
        let last_seq = (before + window).min(head.last_seq);
        let last_key = self.key_of_seq(q, head, last_seq)?;
        let mut msgs = self.collect_back(q, before + 1, last_seq, last_key)?;
        let mut page = SyncPage {
            messages: Vec::new(),
            last_key,
            has_more: last_seq < head.last_seq,
            queue_last_key: head.last_key,
        };
        if let Some(ts) = join_ts {
            msgs.retain(|m| m.timestamp >= ts);
            if msgs.len() > limit {
                msgs.truncate(limit);
                page.last_key = msgs[limit - 1].key;
                page.has_more = true;
            }
        }
        page.messages = msgs;
        Ok(page)
    }

    pub(crate) fn latest(&self, q: QueueId, n: usize) -> Result<Vec<StoredMessage>, StoreError> {
        self.retrying(|| {
            let n = n.min(self.opts().max_latest) as u64;
            let Some(head) = self.visible_head(q)? else {
                return Ok(Vec::new());
            };
            if n == 0 {
                return Ok(Vec::new());
            }
            // entries still retained: those with key ≥ log start
            let min = self.min_key();
            if head.last_key < min {
                return Ok(Vec::new());
            }
            let mut first = head.last_seq.saturating_sub(n - 1).max(1);
            if min > 0 {
                let before = self.seq_at_or_before(q, head, min - 1)?;
                first = first.max(before + 1);
            }
            if first > head.last_seq {
                return Ok(Vec::new());
            }
            self.collect_back(q, first, head.last_seq, head.last_key)
        })
    }

    pub(crate) fn latest_peer(
        &self,
        q: QueueId,
        n: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.retrying(|| {
            let n = n.min(self.opts().max_latest);
            let Some(head) = self.visible_head(q)? else {
                return Ok(Vec::new());
            };
            let min = self.min_key();
            if head.last_key < min || n == 0 {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            // the newest entry may itself be group content; start from the head
            let mut seq = head.last_seq;
            let mut key = head.last_key;
            let mut e = self.entry_at(q, key, seq)?;
            if !e.group_content() && out.len() < n {
                out.push(self.message_at(key, &e)?);
            }
            while out.len() < n {
                let next = e.prev_peer_key;
                if next <= 0 || next < min {
                    break;
                }
                // the peer chain does not carry sequence numbers: read and check the queue only
                let b = self.log().read(next as u64, ENTRY_LEN)?;
                let pe = Entry::decode(&b);
                if pe.queue() != Some(q) || pe.seq >= seq || pe.group_content() {
                    return Err(self.corrupt_at(next as u64, "broken peer-only chain"));
                }
                seq = pe.seq;
                key = next;
                e = pe;
                out.push(self.message_at(key, &e)?);
            }
            out.reverse();
            Ok(out)
        })
    }

    /// The key of the newest entry of `q` at or below `k`, `None` if there is none.
    pub(crate) fn key_at_or_before(&self, q: QueueId, k: i64) -> Result<Option<i64>, StoreError> {
        self.retrying(|| {
            let Some(head) = self.visible_head(q)? else {
                return Ok(None);
            };
            if k >= head.last_key {
                return Ok(Some(head.last_key));
            }
            let seq = self.seq_at_or_before(q, head, k)?;
            if seq == 0 {
                return Ok(None);
            }
            Ok(Some(self.key_of_seq(q, head, seq)?))
        })
    }

    pub(crate) fn new_count(&self, q: QueueId, after_key: i64) -> Result<u64, StoreError> {
        self.retrying(|| {
            let Some(head) = self.visible_head(q)? else {
                return Ok(0);
            };
            if after_key >= head.last_key {
                return Ok(0);
            }
            let k = after_key.max(self.min_key() - 1);
            if k >= head.last_key {
                return Ok(0);
            }
            let before = self.seq_at_or_before(q, head, k)?;
            Ok(head.last_seq - before)
        })
    }
}
