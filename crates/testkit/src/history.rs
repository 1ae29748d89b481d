//! The history checker of the partition tests: what senders were told (every ACKed message) against
//! what the queues hold once the faults are healed.
//!
//! A sender gives every logical message a unique *nonce* (the content it sends, unchanged on every
//! resend) and a per-sender sequence number, sends one message at a time, resends after a refusal
//! or an unanswered attempt, and records the message with [`History::acked`] when an attempt is
//! ACKed. After the faults, every queue is read from the start ([`QueueEntry`] in queue order) and
//! [`check`] verifies:
//!
//! * **no loss**: every ACKed message is in its receiver's queue (and in its sender's queue, when
//!   that queue was read);
//! * **no duplicate**: no nonce appears twice in one queue. Duplicates are reported, never hidden,
//!   and split by cause: after a resend (an earlier attempt of the same message was refused or
//!   unanswered, yet stored) or without one (the store itself duplicated an append);
//! * **per-sender order**: in every queue, the messages of one sender appear in the order the
//!   sender sent them.
//!
//! Messages in a queue that no sender saw ACKed (an attempt whose outcome was unknown to the
//! sender and that it gave up on) are counted, not errors.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// One message whose sender received an ACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The sending user.
    pub sender: i64,
    /// The receiving user.
    pub receiver: i64,
    /// The sender's sequence number: the order in which it sent its messages.
    pub seq: u64,
    /// The message's unique content, identical on every attempt.
    pub nonce: String,
    /// Attempts it took (1 = ACKed at the first try).
    pub attempts: u32,
}

/// One message as read back from a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// The sender named in the stored message.
    pub sender: i64,
    /// The message's content.
    pub nonce: String,
}

/// Everything the senders were told, in the order they were told it.
#[derive(Clone, Debug, Default)]
pub struct History {
    acked: Vec<Acked>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Records an ACKed message.
    pub fn acked(&mut self, a: Acked) {
        self.acked.push(a);
    }

    /// Every ACKed message so far.
    pub fn all(&self) -> &[Acked] {
        &self.acked
    }

    /// Adds another sender's history.
    pub fn merge(&mut self, other: History) {
        self.acked.extend(other.acked);
    }
}

/// An ACKed message missing from a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The queue (user) it is missing from.
    pub queue: i64,
    /// The message.
    pub message: Acked,
}

/// A message found more than once in one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The queue (user) holding the copies.
    pub queue: i64,
    /// The message's nonce.
    pub nonce: String,
    /// How many times it is there.
    pub copies: usize,
    /// True when its sender resent it (an earlier attempt was refused or unanswered): the store
    /// kept an attempt the sender was not told about. False: stored twice from one attempt.
    pub after_resend: bool,
}

/// Two messages of one sender in a queue in the opposite order of their sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reorder {
    /// The queue (user).
    pub queue: i64,
    /// The sender.
    pub sender: i64,
    /// The sequence number found first in the queue…
    pub earlier_in_queue: u64,
    /// …although this smaller one follows it.
    pub later_in_queue: u64,
}

/// The verdict of [`check`].
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// ACKed messages checked.
    pub acked: usize,
    /// Queues read.
    pub queues: usize,
    /// Entries read over all queues.
    pub entries: usize,
    /// ACKed messages missing from a queue.
    pub lost: Vec<Lost>,
    /// Messages stored more than once in a queue.
    pub duplicates: Vec<Duplicate>,
    /// Pairs of one sender's messages out of order in a queue.
    pub reorders: Vec<Reorder>,
    /// Queue entries of messages no sender saw ACKed (allowed: their outcome was unknown).
    pub unacked_delivered: usize,
}

impl Report {
    /// True when nothing was lost, duplicated or reordered.
    pub fn ok(&self) -> bool {
        self.lost.is_empty() && self.duplicates.is_empty() && self.reorders.is_empty()
    }

    /// Duplicates that followed a resend (see [`Duplicate::after_resend`]).
    pub fn duplicates_after_resend(&self) -> usize {
        self.duplicates.iter().filter(|d| d.after_resend).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ACKed messages, {} queues, {} entries: {} lost, {} duplicated ({} after a resend, \
             {} without one), {} out of order, {} delivered without an ACK",
            self.acked,
            self.queues,
            self.entries,
            self.lost.len(),
            self.duplicates.len(),
            self.duplicates_after_resend(),
            self.duplicates.len() - self.duplicates_after_resend(),
            self.reorders.len(),
            self.unacked_delivered
        )?;
        for l in self.lost.iter().take(10) {
            write!(
                f,
                "\n  lost from queue {}: {} (sender {}, seq {}, {} attempts)",
                l.queue, l.message.nonce, l.message.sender, l.message.seq, l.message.attempts
            )?;
        }
        for d in self.duplicates.iter().take(10) {
            write!(
                f,
                "\n  {} copies in queue {} of {}{}",
                d.copies,
                d.queue,
                d.nonce,
                if d.after_resend {
                    " (resent)"
                } else {
                    " (one attempt)"
                }
            )?;
        }
        for r in self.reorders.iter().take(10) {
            write!(
                f,
                "\n  queue {}: sender {}'s seq {} before seq {}",
                r.queue, r.sender, r.earlier_in_queue, r.later_in_queue
            )?;
        }
        Ok(())
    }
}

/// Checks `history` against `queues` (owner → entries in queue order). An ACKed message must be in
/// its receiver's queue, and in its sender's queue when that was read; a queue not in `queues`
/// is not checked.
pub fn check(history: &History, queues: &BTreeMap<i64, Vec<QueueEntry>>) -> Report {
    let by_nonce: HashMap<&str, &Acked> = history
        .acked
        .iter()
        .map(|a| (a.nonce.as_str(), a))
        .collect();
    let mut report = Report {
        acked: history.acked.len(),
        queues: queues.len(),
        ..Report::default()
    };
    for (&owner, entries) in queues {
        report.entries += entries.len();
        let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
        // per sender: the highest sequence number seen so far in this queue
        let mut last_seq: HashMap<i64, u64> = HashMap::new();
        for e in entries {
            let n = copies.entry(e.nonce.as_str()).or_default();
            *n += 1;
            if *n > 1 {
                continue; // order is judged on first copies
            }
            let Some(a) = by_nonce.get(e.nonce.as_str()) else {
                report.unacked_delivered += 1;
                continue;
            };
            match last_seq.get(&a.sender) {
                Some(&prev) if prev > a.seq => report.reorders.push(Reorder {
                    queue: owner,
                    sender: a.sender,
                    earlier_in_queue: prev,
                    later_in_queue: a.seq,
                }),
                _ => {
                    last_seq.insert(a.sender, a.seq);
                }
            }
        }
        for (nonce, n) in &copies {
            if *n > 1 {
                report.duplicates.push(Duplicate {
                    queue: owner,
                    nonce: (*nonce).to_string(),
                    copies: *n,
                    after_resend: by_nonce.get(nonce).is_some_and(|a| a.attempts > 1),
                });
            }
        }
        for a in &history.acked {
            if (a.receiver == owner || a.sender == owner) && !copies.contains_key(a.nonce.as_str())
            {
                report.lost.push(Lost {
                    queue: owner,
                    message: a.clone(),
                });
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(sender: i64, receiver: i64, seq: u64, attempts: u32) -> Acked {
        Acked {
            sender,
            receiver,
            seq,
            nonce: format!("s{sender}-{seq}"),
            attempts,
        }
    }

    fn entry(sender: i64, seq: u64) -> QueueEntry {
        QueueEntry {
            sender,
            nonce: format!("s{sender}-{seq}"),
        }
    }

    /// Two senders to receiver 10; the queues as they should be.
    fn clean() -> (History, BTreeMap<i64, Vec<QueueEntry>>) {
        let mut h = History::new();
        for seq in 0..3 {
            h.acked(acked(1, 10, seq, 1));
            h.acked(acked(2, 10, seq, 1));
        }
        let mut q = BTreeMap::new();
        q.insert(
            10,
            vec![
                entry(1, 0),
                entry(2, 0),
                entry(2, 1),
                entry(1, 1),
                entry(1, 2),
                entry(2, 2),
            ],
        );
        q.insert(1, vec![entry(1, 0), entry(1, 1), entry(1, 2)]);
        (h, q)
    }

    #[test]
    fn a_clean_history_passes() {
        let (h, q) = clean();
        let r = check(&h, &q);
        assert!(r.ok(), "{r}");
        assert_eq!((r.acked, r.queues, r.entries), (6, 2, 9));
        assert_eq!(r.unacked_delivered, 0);
    }

    #[test]
    fn a_lost_message_is_found_in_the_receivers_and_the_senders_queue() {
        let (h, mut q) = clean();
        q.get_mut(&10).unwrap().retain(|e| e.nonce != "s1-1");
        q.get_mut(&1).unwrap().retain(|e| e.nonce != "s1-1");
        let r = check(&h, &q);
        assert!(!r.ok());
        let lost: Vec<(i64, &str)> = r
            .lost
            .iter()
            .map(|l| (l.queue, l.message.nonce.as_str()))
            .collect();
        assert_eq!(lost, vec![(1, "s1-1"), (10, "s1-1")]);
        assert!(r.duplicates.is_empty() && r.reorders.is_empty());
        assert!(r.to_string().contains(": 2 lost"), "{r}");
    }

    #[test]
    fn a_duplicate_is_reported_with_its_cause() {
        let (mut h, mut q) = clean();
        // s1-3 took two attempts and both were stored; s2-0 was stored twice from one attempt
        h.acked(acked(1, 10, 3, 2));
        let r10 = q.get_mut(&10).unwrap();
        r10.push(entry(1, 3));
        r10.push(entry(1, 3));
        r10.push(entry(2, 0));
        q.get_mut(&1).unwrap().push(entry(1, 3));
        let r = check(&h, &q);
        assert!(!r.ok());
        assert_eq!(r.duplicates.len(), 2, "{r}");
        let resent = r.duplicates.iter().find(|d| d.nonce == "s1-3").unwrap();
        assert_eq!(
            (resent.queue, resent.copies, resent.after_resend),
            (10, 2, true)
        );
        let store = r.duplicates.iter().find(|d| d.nonce == "s2-0").unwrap();
        assert!(!store.after_resend);
        assert_eq!(r.duplicates_after_resend(), 1);
        assert!(r.lost.is_empty());
        // the late second copy of s2-0 does not count as a reorder: order is judged on first copies
        assert!(r.reorders.is_empty(), "{r}");
    }

    #[test]
    fn a_reorder_within_one_sender_is_found() {
        let (h, mut q) = clean();
        q.insert(
            10,
            vec![
                entry(1, 0),
                entry(2, 0),
                entry(1, 2),
                entry(2, 1),
                entry(1, 1),
                entry(2, 2),
            ],
        );
        let r = check(&h, &q);
        assert!(!r.ok());
        assert_eq!(
            r.reorders,
            vec![Reorder {
                queue: 10,
                sender: 1,
                earlier_in_queue: 2,
                later_in_queue: 1
            }]
        );
        assert!(r.lost.is_empty() && r.duplicates.is_empty());
    }

    #[test]
    fn an_unacked_message_in_a_queue_is_counted_not_failed() {
        let (h, mut q) = clean();
        q.get_mut(&10).unwrap().push(QueueEntry {
            sender: 1,
            nonce: "s1-99".into(),
        });
        let r = check(&h, &q);
        assert!(r.ok(), "{r}");
        assert_eq!(r.unacked_delivered, 1);
    }

    #[test]
    fn queues_not_read_are_not_checked() {
        let (h, mut q) = clean();
        q.remove(&1);
        let r = check(&h, &q);
        assert!(r.ok(), "{r}");
        assert_eq!(r.queues, 1);
    }
}
