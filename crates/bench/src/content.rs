//! The content of bench messages.
//!
//! The server treats message content as opaque bytes; by app convention it is a JSON object. Every bench
//! message is one, in a fixed field order so it is written and parsed without allocation:
//!
//! ```text
//! {"r":<run id>,"n":<sequence number in its stream>,"t":<send time, ns since the run's epoch>,"text":"xxxx…"}
//! ```
//!
//! `r` tells this run's messages from leftovers of earlier runs against the same server, `n` drives the
//! exactly-once/in-order check and `t` the latency measurement. The `text` field pads the content to the
//! requested size.

use bytes::{BufMut, BytesMut};

/// The fields a bench message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// The run that sent it.
    pub run: u32,
    /// Sequence number within its stream (one sender towards one receiver, group or room), from 0.
    pub n: u64,
    /// Send time in nanoseconds since the run's epoch (a monotonic clock shared by senders and receivers).
    pub t: u64,
}

const PREFIX_R: &[u8] = b"{\"r\":";
const FIELD_N: &[u8] = b",\"n\":";
const FIELD_T: &[u8] = b",\"t\":";
const FIELD_TEXT: &[u8] = b",\"text\":\"";
const SUFFIX: &[u8] = b"\"}";

/// Smallest content [`write`] produces (all numbers one digit, empty text).
pub const MIN_SIZE: usize =
    PREFIX_R.len() + 1 + FIELD_N.len() + 1 + FIELD_T.len() + 1 + FIELD_TEXT.len() + SUFFIX.len();

fn put_u64(dst: &mut BytesMut, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    dst.put_slice(&digits[i..]);
}

/// Appends the content of a bench message to `dst`, padded with `x` so that it is `size` bytes long
/// (or as short as possible when `size` is smaller than the fixed fields).
pub fn write(dst: &mut BytesMut, p: Payload, size: usize) {
    let start = dst.len();
    dst.reserve(size.max(MIN_SIZE + 40));
    dst.put_slice(PREFIX_R);
    put_u64(dst, u64::from(p.run));
    dst.put_slice(FIELD_N);
    put_u64(dst, p.n);
    dst.put_slice(FIELD_T);
    put_u64(dst, p.t);
    dst.put_slice(FIELD_TEXT);
    let used = dst.len() - start + SUFFIX.len();
    if size > used {
        dst.put_bytes(b'x', size - used);
    }
    dst.put_slice(SUFFIX);
}

fn take_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let end = s
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    if end == 0 || end > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &s[..end] {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((v, &s[end..]))
}

/// Parses the fields of a bench message; `None` for any other content.
pub fn parse(content: &[u8]) -> Option<Payload> {
    let s = content.strip_prefix(PREFIX_R)?;
    let (run, s) = take_u64(s)?;
    let s = s.strip_prefix(FIELD_N)?;
    let (n, s) = take_u64(s)?;
    let s = s.strip_prefix(FIELD_T)?;
    let (t, _) = take_u64(s)?;
    Some(Payload {
        run: u32::try_from(run).ok()?,
        n,
        t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let p = Payload {
            run: 4_000_000_000,
            n: 12345,
            t: 987_654_321_000,
        };
        for size in [0, 10, MIN_SIZE, 64, 100, 1000] {
            let mut b = BytesMut::new();
            write(&mut b, p, size);
            assert_eq!(parse(&b), Some(p), "size {size}");
            let v: serde_json::Value = serde_json::from_slice(&b).expect("valid JSON");
            assert_eq!(v["n"], 12345);
            if size > 60 {
                assert_eq!(b.len(), size);
            }
        }
    }

    #[test]
    fn zero_values() {
        let p = Payload { run: 0, n: 0, t: 0 };
        let mut b = BytesMut::new();
        write(&mut b, p, 0);
        assert_eq!(b.len(), MIN_SIZE);
        assert_eq!(parse(&b), Some(p));
    }

    #[test]
    fn rejects_other_content() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"{\"text\":\"hello\"}"), None);
        assert_eq!(parse(b"{\"r\":1,\"n\":,\"t\":3"), None);
        assert_eq!(
            parse(b"{\"r\":1,\"n\":99999999999999999999999,\"t\":3}"),
            None
        );
        assert_eq!(parse(b"{\"r\":99999999999,\"n\":1,\"t\":3}"), None);
    }
}
