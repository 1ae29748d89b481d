//! Property tests: every body variant survives encode → decode in every version 0..=3 (up to the fields a
//! version does not carry), and frames survive encode → decode however the byte stream is split.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proto::{
    Ack, AuthToken, Body, Customer, Frame, GroupSyncKey, Im, Metadata, Rt, HEADER_LEN, MAX_BODY_LEN,
};

fn content() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn im() -> impl Strategy<Value = Im> {
    (
        any::<i64>(),
        any::<i64>(),
        any::<i32>(),
        any::<i32>(),
        content(),
    )
        .prop_map(|(sender, receiver, timestamp, msgid, content)| Im {
            sender,
            receiver,
            timestamp,
            msgid,
            content,
        })
}

fn rt() -> impl Strategy<Value = Rt> {
    (any::<i64>(), any::<i64>(), content()).prop_map(|(sender, receiver, content)| Rt {
        sender,
        receiver,
        content,
    })
}

fn gkey() -> impl Strategy<Value = GroupSyncKey> {
    (any::<i64>(), any::<i64>())
        .prop_map(|(group_id, sync_key)| GroupSyncKey { group_id, sync_key })
}

fn auth_field() -> impl Strategy<Value = Bytes> {
    // Mostly short, sometimes beyond the 255-byte limit of the length byte.
    prop_oneof![
        4 => vec(any::<u8>(), 0..40),
        1 => vec(any::<u8>(), 0..300),
    ]
    .prop_map(Bytes::from)
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        any::<i32>().prop_map(Body::AuthStatus),
        im().prop_map(Body::Im),
        (any::<i32>(), any::<i8>()).prop_map(|(seq, status)| Body::Ack(Ack { seq, status })),
        content().prop_map(Body::GroupNotification),
        im().prop_map(Body::GroupIm),
        Just(Body::Ping),
        Just(Body::Pong),
        (any::<u8>(), auth_field(), auth_field()).prop_map(|(platform_id, token, device_id)| {
            Body::AuthToken(AuthToken {
                platform_id,
                token,
                device_id,
            })
        }),
        rt().prop_map(Body::Rt),
        any::<i64>().prop_map(Body::EnterRoom),
        any::<i64>().prop_map(Body::LeaveRoom),
        rt().prop_map(Body::RoomIm),
        content().prop_map(Body::System),
        any::<i32>().prop_map(Body::UnreadCount),
        (prop_oneof![Just(24u8), Just(25u8)], content())
            .prop_map(|(cmd, body)| Body::Deprecated { cmd, body }),
        any::<i64>().prop_map(Body::Sync),
        any::<i64>().prop_map(Body::SyncBegin),
        any::<i64>().prop_map(Body::SyncEnd),
        any::<i64>().prop_map(Body::SyncNotify),
        gkey().prop_map(Body::SyncGroup),
        gkey().prop_map(Body::SyncGroupBegin),
        gkey().prop_map(Body::SyncGroupEnd),
        gkey().prop_map(Body::SyncGroupNotify),
        any::<i64>().prop_map(Body::SyncKey),
        gkey().prop_map(Body::GroupSyncKey),
        content().prop_map(Body::Notification),
        (any::<i64>(), any::<i64>()).prop_map(|(sync_key, prev_sync_key)| {
            Body::Metadata(Metadata {
                sync_key,
                prev_sync_key,
            })
        }),
        (
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i32>(),
            content()
        )
            .prop_map(
                |(sender_appid, sender, receiver_appid, receiver, timestamp, content)| {
                    Body::Customer(Customer {
                        sender_appid,
                        sender,
                        receiver_appid,
                        receiver,
                        timestamp,
                        content,
                    })
                }
            ),
    ]
}

/// What `body` looks like after a trip through version `v`: v0 IM/GROUP_IM carry no timestamp, ACK below
/// v2 carries no status, AUTH_TOKEN fields are cut at 255 bytes.
fn normalise(body: &Body, v: u8) -> Body {
    match body.clone() {
        Body::Im(m) if v == 0 => Body::Im(Im { timestamp: 0, ..m }),
        Body::GroupIm(m) if v == 0 => Body::GroupIm(Im { timestamp: 0, ..m }),
        Body::Ack(a) if v < 2 => Body::Ack(Ack { status: 0, ..a }),
        Body::AuthToken(a) => Body::AuthToken(AuthToken {
            token: a.token.slice(..a.token.len().min(255)),
            device_id: a.device_id.slice(..a.device_id.len().min(255)),
            ..a
        }),
        other => other,
    }
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        any::<i32>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        vec(any::<u8>(), 0..300),
    )
        .prop_map(|(seq, cmd, version, flag, body)| Frame {
            seq,
            cmd,
            version,
            flag,
            body: Bytes::from(body),
        })
}

/// Feeds `stream` to the decoder in pieces cut at `cuts` (positions, any order, duplicates allowed).
fn decode_split(stream: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    for cut in cuts {
        buf.extend_from_slice(&stream[at..cut]);
        at = cut;
        while let Some(f) = Frame::decode(&mut buf, MAX_BODY_LEN).expect("valid stream") {
            frames.push(f);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frames
}

proptest! {
    #[test]
    fn body_round_trips_in_every_version(body in body(), v in 0u8..=3) {
        let bytes = body.to_bytes(v);
        prop_assert_eq!(bytes.len(), body.encoded_len(v));
        let decoded = Body::decode(body.cmd(), v, &bytes).expect("encoded body decodes");
        prop_assert_eq!(&decoded, &normalise(&body, v));
        // A normalised body is a fixed point.
        prop_assert_eq!(decoded.to_bytes(v), bytes);
    }

    #[test]
    fn versions_above_2_behave_like_2(body in body(), v in 3u8..=255) {
        prop_assert_eq!(body.to_bytes(v), body.to_bytes(2));
        let bytes = body.to_bytes(2);
        prop_assert_eq!(
            Body::decode(body.cmd(), v, &bytes).unwrap(),
            Body::decode(body.cmd(), 2, &bytes).unwrap()
        );
    }

    #[test]
    fn body_frames_round_trip(
        bodies in vec((body(), 0u8..=3, any::<i32>(), any::<u8>()), 1..8),
        cuts in vec(any::<usize>(), 0..10),
    ) {
        let mut stream = BytesMut::new();
        for (b, v, seq, flag) in &bodies {
            b.encode_frame(*seq, *v, *flag, &mut stream);
        }
        let frames = decode_split(&stream, &cuts);
        prop_assert_eq!(frames.len(), bodies.len());
        for (f, (b, v, seq, flag)) in frames.iter().zip(&bodies) {
            prop_assert_eq!((f.seq, f.cmd, f.version, f.flag), (*seq, b.cmd(), *v, *flag));
            prop_assert_eq!(Body::decode(f.cmd, f.version, &f.body).unwrap(), normalise(b, *v));
        }
    }

    #[test]
    fn frames_round_trip_at_any_split(
        frames in vec(frame(), 0..10),
        cuts in vec(any::<usize>(), 0..20),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            f.encode(&mut stream);
        }
        prop_assert_eq!(
            stream.len(),
            frames.iter().map(|f| HEADER_LEN + f.body.len()).sum::<usize>()
        );
        prop_assert_eq!(&decode_split(&stream, &cuts), &frames);
        // One byte at a time too.
        let every: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(&decode_split(&stream, &every), &frames);
    }

    #[test]
    fn frame_to_bytes_equals_encode(f in frame()) {
        let mut b = BytesMut::new();
        f.encode(&mut b);
        prop_assert_eq!(&f.to_bytes()[..], &b[..]);
        prop_assert_eq!(b[11], 0);
        let back = Frame::decode(&mut b, MAX_BODY_LEN).unwrap().unwrap();
        prop_assert_eq!(back, f);
    }

    #[test]
    fn frame_decoder_never_panics(bytes in vec(any::<u8>(), 0..200), cuts in vec(any::<usize>(), 0..8)) {
        // Arbitrary input: whole and split decoding agree on frames and on the error.
        let run = |cuts: &[usize]| {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut at = 0;
            for cut in cuts {
                buf.extend_from_slice(&bytes[at..cut]);
                at = cut;
                loop {
                    match Frame::decode(&mut buf, MAX_BODY_LEN) {
                        Ok(Some(f)) => out.push(Ok(f)),
                        Ok(None) => break,
                        Err(e) => {
                            out.push(Err(e));
                            return out;
                        }
                    }
                }
            }
            out
        };
        let whole = run(&[]);
        prop_assert_eq!(&run(&cuts), &whole);
        for f in whole.iter().flatten() {
            prop_assert!(f.body.len() <= MAX_BODY_LEN);
            // Body decoding never panics either.
            let _ = Body::decode(f.cmd, f.version, &f.body);
        }
    }
}
