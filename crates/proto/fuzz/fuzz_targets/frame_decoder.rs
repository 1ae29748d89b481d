//! Fuzzes the incremental frame decoder and the body codecs.
//!
//! Input layout: byte 0 gives `k = byte0 % 16`, the next `k` bytes are chunk sizes (cycled; each is
//! `size + 1`, so never 0), and everything after them is the byte stream a client would send. The stream is
//! decoded once as a whole and once fed chunk by chunk; both must yield the same frames, the same error
//! and the same leftover bytes. Every decoded frame's body is decoded with the frame's cmd and version;
//! whatever decodes is re-encoded (body and whole frame) and must decode again to the same value.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use proto::{Body, DecodeError, Frame, HEADER_LEN, MAX_BODY_LEN};

/// Frames, the error that stopped decoding (if any), and the bytes left over.
type Outcome = (Vec<Frame>, Option<DecodeError>, Vec<u8>);

fn drain(buf: &mut BytesMut, frames: &mut Vec<Frame>) -> Option<DecodeError> {
    loop {
        match Frame::decode(buf, MAX_BODY_LEN) {
            Ok(Some(f)) => {
                assert!(f.body.len() <= MAX_BODY_LEN);
                frames.push(f);
            }
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fn whole(stream: &[u8]) -> Outcome {
    let mut buf = BytesMut::from(stream);
    let mut frames = Vec::new();
    let err = drain(&mut buf, &mut frames);
    (frames, err, buf.to_vec())
}

fn chunked(stream: &[u8], sizes: &[u8]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = if sizes.is_empty() {
            1
        } else {
            sizes[i % sizes.len()] as usize + 1
        };
        i += 1;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        if let Some(e) = drain(&mut buf, &mut frames) {
            // The connection is closed at the first error; what is still unread stays unread.
            let mut left = buf.to_vec();
            left.extend_from_slice(rest);
            return (frames, Some(e), left);
        }
    }
    (frames, None, buf.to_vec())
}

fn check_frame(f: &Frame, original: &[u8]) {
    // Re-encoding the frame reproduces its bytes, except the reserved byte, which is written as 0.
    let bytes = f.to_bytes();
    assert_eq!(bytes.len(), HEADER_LEN + f.body.len());
    assert_eq!(&bytes[..11], &original[..11]);
    assert_eq!(bytes[11], 0);
    assert_eq!(&bytes[12..], &original[12..]);

    let Ok(body) = Body::decode(f.cmd, f.version, &f.body) else {
        return;
    };
    assert_eq!(body.cmd(), f.cmd);
    let re: Bytes = body.to_bytes(f.version);
    assert_eq!(re.len(), body.encoded_len(f.version));
    assert!(re.len() <= f.body.len().max(5));
    let again = Body::decode(f.cmd, f.version, &re).expect("re-encoded body must decode");
    assert_eq!(again, body);

    // The whole frame built from the typed body decodes to the same header and body.
    let mut out = BytesMut::new();
    body.encode_frame(f.seq, f.version, f.flag, &mut out);
    let g = Frame::decode(&mut out, MAX_BODY_LEN)
        .expect("re-encoded frame must decode")
        .expect("re-encoded frame is complete");
    assert!(out.is_empty());
    assert_eq!((g.seq, g.cmd, g.version, g.flag), (f.seq, f.cmd, f.version, f.flag));
    assert_eq!(g.body, re);
    assert_eq!(Body::decode(g.cmd, g.version, &g.body).unwrap(), body);
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = (k % 16) as usize;
    if rest.len() < k {
        return;
    }
    let (sizes, stream) = rest.split_at(k);

    let reference = whole(stream);
    let split = chunked(stream, sizes);
    assert_eq!(reference, split);

    let (frames, _, _) = &reference;
    let mut at = 0;
    for f in frames {
        let end = at + HEADER_LEN + f.body.len();
        check_frame(f, &stream[at..end]);
        at = end;
    }
    assert_eq!(at + reference.2.len(), stream.len());
});
