//! The writer's control submissions, each processed alone in a writer turn: a promotion (seal the
//! log, open a segment at `format::jump_target` of its end with a JUMP record, become a leader) and
//! a withdrawal (read back the unconfirmed records from a position to the log end — written, maybe
//! not yet durable — walk every queue they touched back to its newest entry before them, and write
//! WITHDRAW records with those heads). The records then go through the sync thread like any batch,
//! so they become durable, visible and replicated in log order. See `docs/storage-format.md`
//! §4.1–§4.2.

use std::sync::atomic::Ordering;

use crate::error::StoreError;
use crate::format::{
    check_record, encode_jump, encode_withdraw, jump_seq, jump_target, Entry, MessageView,
    RecordCheck, Withdraw, ENTRY_LEN, RECORD_HEADER_LEN, RECORD_MESSAGE,
};
use crate::queue::{Head, Published};
use crate::shared::Stats;
use crate::submit::Submission;
use crate::syncer::{Outcome, Written};
use crate::writer::Writer;
use crate::QueueId;

impl Writer {
    /// A promotion or a withdrawal, alone in its writer turn: computes its control record(s),
    /// writes them and hands them to the sync thread like any batch, so they become durable and
    /// visible (and replicate) in log order.
    pub(crate) fn process_control(&mut self, sub: Submission) {
        let (tx, planned) = match sub {
            Submission::Jump { min_end, tx } => {
                let r = if self.shared.is_follower() {
                    self.plan_jump(min_end)
                } else {
                    Err(Failed::Refused(StoreError::NotFollower))
                };
                (tx, r)
            }
            Submission::Withdraw { from, tx } => (tx, self.plan_withdraw(from)),
            other => {
                other.fail(StoreError::InvalidArgument(
                    "not a control submission".into(),
                ));
                return;
            }
        };
        let plan = match planned {
            Ok(Some(plan)) => plan,
            Ok(None) => {
                let end = self.end;
                let _ = tx.send(Ok(end));
                return;
            }
            Err(Failed::Refused(e)) => {
                let _ = tx.send(Err(e));
                return;
            }
            Err(Failed::Io(e)) => {
                self.enter_recovery(&e);
                let _ = tx.send(Err(e));
                return;
            }
        };
        let ControlPlan {
            start,
            buf,
            bounds,
            updates,
            heads,
            result,
            promote,
        } = plan;
        let fsync_epoch = self.shared.fsync_epoch();
        if let Err(e) = self.write_batch(start, &buf, &bounds) {
            self.enter_recovery(&e);
            let _ = tx.send(Err(e));
            return;
        }
        let end = start + buf.len() as u64;
        self.end = end;
        for (q, h) in heads {
            if h.last_seq == 0 {
                self.heads.remove(&q);
            } else {
                self.heads.insert(q, h);
            }
        }
        let result = if promote { end } else { result };
        if promote {
            // Everything this store holds is the truth now: the commit index starts at the new
            // end, then appends are accepted (they queue behind this turn of the writer).
            self.shared.become_leader(end);
        }
        self.maybe_request_spare();
        let file = self.active.as_ref().map(|a| a.file.clone());
        Stats::add(&self.shared.stats().batches, 1);
        Stats::add(&self.shared.stats().bytes_written, buf.len() as u64);
        self.syncer.syncq.push(Written {
            start,
            end,
            buf,
            updates,
            outcomes: vec![Outcome::Replicate(tx, Ok(result))],
            spent: Vec::new(),
            file,
            fsync_epoch,
        });
    }

    /// Promotion: seal the log at its end and open a segment at `jump_target` of
    /// `max(end, min_end)` with a JUMP record.
    fn plan_jump(&mut self, min_end: u64) -> Result<Option<ControlPlan>, Failed> {
        let from = self.end;
        let target = jump_target(from.max(min_end));
        self.roll_at(from, target).map_err(Failed::Io)?;
        self.end = target;
        self.window.jumped(from, target);
        let mut buf = Vec::with_capacity(crate::format::JUMP_RECORD_LEN);
        encode_jump(&mut buf, from);
        tracing::info!(
            from,
            to = target,
            "promotion: the log continues above every position the old leader could have used"
        );
        Ok(Some(ControlPlan {
            start: target,
            bounds: vec![buf.len()],
            buf,
            updates: Vec::new(),
            heads: Vec::new(),
            result: 0,
            promote: true,
        }))
    }

    /// Withdrawal of the records in `from..end`: every queue they touched goes back to its newest
    /// entry before `from`, recorded in WITHDRAW records (at most [`WITHDRAW_HEADS_PER_RECORD`]
    /// queues each, so each replicates in a frame of ordinary size).
    fn plan_withdraw(&mut self, from: u64) -> Result<Option<ControlPlan>, Failed> {
        let to = self.end;
        if from >= to {
            return Ok(None);
        }
        // A withdrawn append is stored afresh when retried: its key must not answer for it.
        self.window.truncate(from);
        let touched = self.touched_queues(from, to).map_err(Failed::Refused)?;
        self.finish_withdraw(from, to, touched)
    }

    /// The queues that the MESSAGE records in `from..to` (written, maybe not durable) append to,
    /// in the order first seen.
    fn touched_queues(&self, from: u64, to: u64) -> Result<Vec<QueueId>, StoreError> {
        let mut touched: Vec<QueueId> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut p = from;
        while p < to {
            let avail = self
                .shared
                .log()
                .segment_for(p)
                .map(|s| s.end.load(Ordering::Acquire).min(to).saturating_sub(p))
                .unwrap_or(0);
            if avail == 0 {
                return Err(StoreError::InvalidArgument(format!(
                    "cannot withdraw {from}..{to}: position {p} is not in the log"
                )));
            }
            let mut data = self
                .shared
                .log()
                .read_written(p, avail.min(WITHDRAW_READ_CHUNK as u64) as usize)?;
            let mut off = 0usize;
            while off < data.len() {
                match check_record(&data[off..]) {
                    RecordCheck::Valid { len, .. } => {
                        note_queues(&data[off..off + len], &mut touched, &mut seen);
                        off += len;
                    }
                    // one record larger than a chunk: read it whole
                    RecordCheck::Incomplete { needed } if off == 0 && needed as u64 <= avail => {
                        data = self.shared.log().read_written(p, needed)?;
                    }
                    RecordCheck::Incomplete { .. } if off > 0 => break,
                    RecordCheck::Incomplete { .. } => {
                        let (file, offset) = self.shared.log().locate(p);
                        return Err(StoreError::corrupt(
                            file,
                            offset,
                            "record runs past the range",
                        ));
                    }
                    RecordCheck::Bad(why) => {
                        let (file, offset) = self.shared.log().locate(p + off as u64);
                        return Err(StoreError::corrupt(file, offset, why));
                    }
                }
            }
            p += off as u64;
        }
        Ok(touched)
    }

    /// Computes each touched queue's head before `from` and encodes the WITHDRAW records at `to`.
    fn finish_withdraw(
        &mut self,
        from: u64,
        to: u64,
        touched: Vec<QueueId>,
    ) -> Result<Option<ControlPlan>, Failed> {
        let mut heads: Vec<(QueueId, Head)> = Vec::new();
        for q in touched {
            let Some(head) = self.heads.get(&q) else {
                continue;
            };
            if (head.last_key() as u64) < from {
                continue; // an earlier withdrawal already set it back
            }
            heads.push((q, self.head_before(q, head, from).map_err(Failed::Refused)?));
        }
        if heads.is_empty() {
            // Nothing is on a queue any more (e.g. withdrawn before): nothing to record.
            return Ok(None);
        }
        let mut buf = Vec::new();
        let mut bounds = Vec::new();
        let mut updates = Vec::with_capacity(heads.len());
        for chunk in heads.chunks(WITHDRAW_HEADS_PER_RECORD) {
            let w = Withdraw {
                from,
                to: to + buf.len() as u64,
                heads: chunk.iter().map(|(q, h)| h.to_state(*q)).collect(),
            };
            encode_withdraw(&mut buf, &w);
            bounds.push(buf.len());
        }
        for (q, h) in &heads {
            updates.push((
                *q,
                Published {
                    last_key: h.last_key(),
                    last_seq: h.last_seq,
                },
            ));
        }
        tracing::debug!(
            from,
            to,
            queues = heads.len(),
            "withdrawing unconfirmed records"
        );
        Ok(Some(ControlPlan {
            start: to,
            buf,
            bounds,
            updates,
            heads,
            result: to,
            promote: false,
        }))
    }

    /// The head `q` had before position `from`: walks back from `head` past every entry at or
    /// after `from`, then rebuilds the jump chain of the entry it stops at (O(log n) reads).
    fn head_before(&self, q: QueueId, head: &Head, from: u64) -> Result<Head, StoreError> {
        let mut seq = head.last_seq;
        let mut key = head.last_key();
        let mut last_peer = head.last_peer_key;
        while seq > 0 && key >= 0 && key as u64 >= from {
            let e = self.written_entry(q, key, seq)?;
            last_peer = e.prev_peer_key;
            seq -= 1;
            key = e.prev_key;
        }
        if seq == 0 {
            return Ok(Head::default());
        }
        // Chain of `seq`, newest first: seq, jump_seq(seq), …; each key from the entry above.
        let start = self.shared.log().log_start.load(Ordering::Acquire) as i64;
        let mut chain = Vec::new();
        let (mut s, mut k) = (seq, key);
        while s > 0 {
            chain.push((s, k));
            let js = jump_seq(s);
            if js == 0 {
                break;
            }
            k = if k > 0 && k >= start {
                self.written_entry(q, k, s)?.jump_key
            } else {
                0 // no longer retained: never followed by readers
            };
            s = js;
        }
        chain.reverse();
        Ok(Head {
            last_seq: seq,
            last_peer_key: last_peer,
            chain,
        })
    }

    /// Reads the written (possibly not yet durable) entry at `key`, which must be entry `seq`
    /// of `q`.
    fn written_entry(&self, q: QueueId, key: i64, seq: u64) -> Result<Entry, StoreError> {
        let b = self.shared.log().read_written(key as u64, ENTRY_LEN)?;
        let e = Entry::decode(&b);
        if e.queue() != Some(q) || e.seq != seq {
            let (file, offset) = self.shared.log().locate(key as u64);
            return Err(StoreError::corrupt(
                file,
                offset,
                format!("expected entry {seq} of {q:?} at key {key}, found {e:?}"),
            ));
        }
        Ok(e)
    }
}

/// How a control submission failed: refused (nothing written, the store is fine) or by an I/O
/// error (the store is poisoned).
enum Failed {
    Refused(StoreError),
    Io(StoreError),
}

/// Control records ready to be written at `start`.
struct ControlPlan {
    start: u64,
    buf: Vec<u8>,
    bounds: Vec<usize>,
    updates: Vec<(QueueId, Published)>,
    /// Writer heads to set (`last_seq` 0: remove).
    heads: Vec<(QueueId, Head)>,
    /// What the ticket resolves to (the new end for a promotion).
    result: u64,
    promote: bool,
}

/// Queues named in one WITHDRAW record at most.
const WITHDRAW_HEADS_PER_RECORD: usize = 4096;
/// Bytes read at a time when scanning the records to withdraw.
const WITHDRAW_READ_CHUNK: usize = 4 << 20;

/// Adds the queues of a MESSAGE record's entries to `touched` (control records have none).
fn note_queues(
    rec: &[u8],
    touched: &mut Vec<QueueId>,
    seen: &mut std::collections::HashSet<QueueId>,
) {
    if rec[8] != RECORD_MESSAGE {
        return;
    }
    if let Ok(view) = MessageView::decode(&rec[RECORD_HEADER_LEN..]) {
        for i in 0..view.entry_count() {
            if let Some(q) = view.entry(i).queue() {
                if seen.insert(q) {
                    touched.push(q);
                }
            }
        }
    }
}
