//! Exactly-once and in-order accounting of received bench messages.
//!
//! A *stream* is what one sender sends towards one receiver (directly, or through a group or room): messages
//! numbered `0..expected`. [`StreamCheck`] keeps one bit per expected message, so it tells apart a new
//! message, a duplicate, one that overtook an earlier one (out of order) and one that was never sent. A
//! receiver keeps a [`Book`] with one stream per sender it expects to hear from; the books of all receivers
//! add up to a [`Tally`].

use std::collections::HashMap;

/// What [`StreamCheck::record`] made of a message number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First arrival, in order.
    New,
    /// First arrival, but a later message had already arrived.
    OutOfOrder,
    /// Already received.
    Duplicate,
    /// A number the sender never sent.
    Unexpected,
}

/// The accounting of one stream.
#[derive(Debug, Clone)]
pub struct StreamCheck {
    bits: Vec<u64>,
    expected: u64,
    /// One past the highest number received.
    high: u64,
    unique: u64,
    duplicated: u64,
    out_of_order: u64,
    unexpected: u64,
}

impl StreamCheck {
    /// A stream of `expected` messages numbered from 0.
    pub fn new(expected: u64) -> StreamCheck {
        let words = expected.div_ceil(64) as usize;
        StreamCheck {
            bits: vec![0; words],
            expected,
            high: 0,
            unique: 0,
            duplicated: 0,
            out_of_order: 0,
            unexpected: 0,
        }
    }

    /// Records the arrival of message `n`.
    pub fn record(&mut self, n: u64) -> Outcome {
        if n >= self.expected {
            self.unexpected += 1;
            return Outcome::Unexpected;
        }
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if self.bits[word] & bit != 0 {
            self.duplicated += 1;
            return Outcome::Duplicate;
        }
        self.bits[word] |= bit;
        self.unique += 1;
        if n + 1 < self.high {
            self.out_of_order += 1;
            Outcome::OutOfOrder
        } else {
            self.high = n + 1;
            Outcome::New
        }
    }

    /// Whether every expected message has arrived.
    pub fn complete(&self) -> bool {
        self.unique == self.expected
    }

    /// Numbers not (yet) received, at most `limit` of them, lowest first.
    pub fn missing(&self, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for (w, &word) in self.bits.iter().enumerate() {
            if word == u64::MAX {
                continue;
            }
            for b in 0..64u64 {
                let n = w as u64 * 64 + b;
                if n >= self.expected || out.len() >= limit {
                    return out;
                }
                if word & (1 << b) == 0 {
                    out.push(n);
                }
            }
        }
        out
    }

    /// This stream's figures.
    pub fn tally(&self) -> Tally {
        Tally {
            expected: self.expected,
            unique: self.unique,
            lost: self.expected - self.unique,
            duplicated: self.duplicated,
            out_of_order: self.out_of_order,
            unexpected: self.unexpected,
            foreign: 0,
        }
    }
}

/// Totals over any number of streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Messages that should have arrived.
    pub expected: u64,
    /// Distinct expected messages that did arrive.
    pub unique: u64,
    /// `expected - unique`.
    pub lost: u64,
    /// Arrivals of a message that had already arrived.
    pub duplicated: u64,
    /// First arrivals after a later message of the same stream.
    pub out_of_order: u64,
    /// Bench messages of this run with a sender or number that was never sent.
    pub unexpected: u64,
    /// Messages that are not this run's bench messages (other content, other runs).
    pub foreign: u64,
}

impl Tally {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Tally) {
        self.expected += other.expected;
        self.unique += other.unique;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
        self.foreign += other.foreign;
    }
}

/// One receiver's streams, keyed by sender uid.
#[derive(Debug, Clone, Default)]
pub struct Book {
    index: HashMap<i64, usize>,
    senders: Vec<i64>,
    streams: Vec<StreamCheck>,
    complete: usize,
    unexpected: u64,
    foreign: u64,
}

impl Book {
    /// A book expecting `expected` messages from each of `senders`.
    pub fn new(senders: &[i64], expected: u64) -> Book {
        let mut book = Book::default();
        for &s in senders {
            if book.index.contains_key(&s) {
                continue;
            }
            book.index.insert(s, book.streams.len());
            book.senders.push(s);
            book.streams.push(StreamCheck::new(expected));
            if expected == 0 {
                book.complete += 1;
            }
        }
        book
    }

    /// Records message `n` from `sender`.
    pub fn record(&mut self, sender: i64, n: u64) -> Outcome {
        let Some(&i) = self.index.get(&sender) else {
            self.unexpected += 1;
            return Outcome::Unexpected;
        };
        let s = &mut self.streams[i];
        let outcome = s.record(n);
        if matches!(outcome, Outcome::New | Outcome::OutOfOrder) && s.complete() {
            self.complete += 1;
        }
        outcome
    }

    /// Counts a message that is not one of this run's bench messages.
    pub fn record_foreign(&mut self) {
        self.foreign += 1;
    }

    /// Whether every stream is complete.
    pub fn complete(&self) -> bool {
        self.complete == self.streams.len()
    }

    /// Totals of all streams.
    pub fn tally(&self) -> Tally {
        let mut t = Tally {
            unexpected: self.unexpected,
            foreign: self.foreign,
            ..Tally::default()
        };
        for s in &self.streams {
            t.add(&s.tally());
        }
        t
    }

    /// For each incomplete stream: the sender and up to `limit` missing numbers.
    pub fn missing(&self, limit: usize) -> Vec<(i64, Vec<u64>)> {
        self.senders
            .iter()
            .zip(&self.streams)
            .filter(|(_, s)| !s.complete())
            .map(|(&sender, s)| (sender, s.missing(limit)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_exactly_once() {
        let mut s = StreamCheck::new(200);
        for n in 0..200 {
            assert_eq!(s.record(n), Outcome::New);
        }
        assert!(s.complete());
        let t = s.tally();
        assert_eq!(
            (t.unique, t.lost, t.duplicated, t.out_of_order),
            (200, 0, 0, 0)
        );
        assert!(s.missing(10).is_empty());
    }

    #[test]
    fn withheld_message_is_lost() {
        let mut s = StreamCheck::new(100);
        for n in (0..100).filter(|&n| n != 42) {
            s.record(n);
        }
        assert!(!s.complete());
        assert_eq!(s.tally().lost, 1);
        assert_eq!(s.missing(10), vec![42]);
        // The late arrival of 42 is out of order but completes the stream.
        assert_eq!(s.record(42), Outcome::OutOfOrder);
        assert!(s.complete());
        assert_eq!(s.tally().out_of_order, 1);
    }

    #[test]
    fn duplicates_and_unexpected() {
        let mut s = StreamCheck::new(10);
        assert_eq!(s.record(3), Outcome::New);
        assert_eq!(s.record(3), Outcome::Duplicate);
        assert_eq!(s.record(10), Outcome::Unexpected);
        let t = s.tally();
        assert_eq!((t.unique, t.lost, t.duplicated, t.unexpected), (1, 9, 1, 1));
    }

    #[test]
    fn book_tracks_streams_per_sender() {
        let mut b = Book::new(&[5, 7], 3);
        assert!(!b.complete());
        for n in 0..3 {
            b.record(5, n);
        }
        assert!(!b.complete());
        b.record(7, 0);
        b.record(7, 2);
        assert_eq!(b.record(9, 0), Outcome::Unexpected);
        b.record_foreign();
        assert_eq!(b.missing(5), vec![(7, vec![1])]);
        b.record(7, 1);
        assert!(b.complete());
        let t = b.tally();
        assert_eq!(t.expected, 6);
        assert_eq!(t.unique, 6);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.unexpected, 1);
        assert_eq!(t.foreign, 1);
        // A duplicate after completion does not change completeness.
        assert_eq!(b.record(5, 1), Outcome::Duplicate);
        assert!(b.complete());
    }

    #[test]
    fn empty_book_is_complete() {
        assert!(Book::new(&[], 5).complete());
        assert!(Book::new(&[1], 0).complete());
    }
}
