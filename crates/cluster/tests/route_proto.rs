//! Golden bytes of every route body (docs/internal-protocols.md, *route link*) and decoding of odd
//! input.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use bytes::{Bytes, BytesMut};
use cluster::route_proto::{
    cmd, legacy_publishes, push_bodies, PushRequest, RouteBody, RouteKind, RouteProtoError,
    RoutedMessage,
};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// An IM frame as a client receives it: header (len 26, seq 0, cmd 4, version 2, flag PUSH) and a
/// v2 body (sender 1, receiver 2, timestamp 3, msgid 4, content "hi").
fn inner() -> Vec<u8> {
    hex("0000001a 00000000 04 02 10 00
         0000000000000001 0000000000000002 00000003 00000004 6869")
}

/// A route message of `kind` around [`inner`], and its body's golden bytes.
fn message(kind: RouteKind) -> (RoutedMessage, Vec<u8>) {
    let inner = inner();
    let m = RoutedMessage {
        kind,
        appid: 7,
        receiver: 2,
        msgid: 0x1000,
        prev_msgid: 0x0f00,
        timestamp_ns: 0x1122334455667788,
        inner: Bytes::from(inner.clone()),
    };
    let mut golden = hex("0000000000000007 0000000000000002 0000000000001000
         0000000000000f00 1122334455667788 0026");
    golden.extend_from_slice(&inner);
    (m, golden)
}

fn frame(body: &RouteBody, seq: i32) -> Vec<u8> {
    let mut b = BytesMut::new();
    body.encode_frame(seq, &mut b).expect("encodes");
    b.to_vec()
}

fn roundtrip(body: &RouteBody, golden_body: &[u8]) {
    let encoded = body.encode().expect("encodes");
    assert_eq!(&encoded[..], golden_body, "{body:?}");
    let decoded =
        RouteBody::decode(body.cmd(), &Bytes::copy_from_slice(golden_body)).expect("decodes");
    assert_eq!(&decoded, body);
}

#[test]
fn subscribe_golden() {
    let body = RouteBody::Subscribe {
        appid: 7,
        uid: 0x0102030405060708,
        online: true,
    };
    roundtrip(&body, &hex("0000000000000007 0102030405060708 01"));
    // Whole frame: length 17, seq 1, cmd 130, version 0, flag 0, reserved 0.
    assert_eq!(
        frame(&body, 1),
        hex("00000011 00000001 82 00 00 00 0000000000000007 0102030405060708 01")
    );
    roundtrip(
        &RouteBody::Subscribe {
            appid: -1,
            uid: 2,
            online: false,
        },
        &hex("ffffffffffffffff 0000000000000002 00"),
    );
    // Any non-zero online byte is online, trailing bytes ignored.
    assert_eq!(
        RouteBody::decode(
            cmd::SUBSCRIBE,
            &Bytes::from(hex("0000000000000007 0000000000000002 05 ff"))
        ),
        Ok(RouteBody::Subscribe {
            appid: 7,
            uid: 2,
            online: true
        })
    );
}

#[test]
fn unsubscribe_and_rooms_golden() {
    let pair = hex("0000000000000007 00000000000003e8");
    roundtrip(
        &RouteBody::Unsubscribe {
            appid: 7,
            uid: 1000,
        },
        &pair,
    );
    roundtrip(
        &RouteBody::SubscribeRoom {
            appid: 7,
            room: 1000,
        },
        &pair,
    );
    roundtrip(
        &RouteBody::UnsubscribeRoom {
            appid: 7,
            room: 1000,
        },
        &pair,
    );
    assert_eq!(
        frame(
            &RouteBody::SubscribeRoom {
                appid: 7,
                room: 1000
            },
            2
        ),
        hex("00000010 00000002 88 00 00 00 0000000000000007 00000000000003e8")
    );
    assert_eq!(
        frame(
            &RouteBody::Unsubscribe {
                appid: 7,
                uid: 1000
            },
            3
        )[8],
        131
    );
    assert_eq!(
        frame(
            &RouteBody::UnsubscribeRoom {
                appid: 7,
                room: 1000
            },
            3
        )[8],
        137
    );
}

#[test]
fn publish_golden() {
    for (kind, c) in [
        (RouteKind::User, 132u8),
        (RouteKind::Group, 135),
        (RouteKind::Room, 138),
    ] {
        let (m, golden) = message(kind);
        let body = RouteBody::Publish(m.clone());
        assert_eq!(body.cmd(), c);
        roundtrip(&body, &golden);
        let f = frame(&body, 9);
        assert_eq!(&f[..12], &[0, 0, 0, 80, 0, 0, 0, 9, c, 0, 0, 0]);
        let parsed = m.inner_frame().expect("inner frame");
        assert_eq!((parsed.cmd, parsed.version, parsed.flag), (4, 2, 0x10));
        assert_eq!(parsed.body.len(), 26);
    }
}

#[test]
fn publish_from_gobelieve_has_no_prev() {
    // GoBelieve writes 0 in the device_id field: prev unknown.
    let mut golden = hex("0000000000000007 0000000000000002 0000000000000005
         0000000000000000 0000000000000000 0026");
    golden.extend_from_slice(&inner());
    match RouteBody::decode(cmd::PUBLISH, &Bytes::from(golden)) {
        Ok(RouteBody::Publish(m)) => {
            assert_eq!((m.msgid, m.prev_msgid), (5, 0));
            assert!(m.flags_consistent());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn publish_stored_golden_and_what_it_stands_for() {
    let (message, publish) = message(RouteKind::User);
    for push in [false, true] {
        let mut golden = publish.clone();
        golden.push(u8::from(push));
        let body = RouteBody::PublishStored {
            message: message.clone(),
            push,
        };
        assert_eq!(body.cmd(), 143);
        roundtrip(&body, &golden);
        // For a node that does not take it: the message's own PUBLISH, then the PUBLISH of
        // SYNC_NOTIFY(0x1000) — same receiver and timestamp, no keys of its own.
        let legacy = legacy_publishes(&Bytes::from(golden)).expect("valid");
        let [(c1, b1), (c2, b2)] = legacy.frames;
        assert_eq!((c1, c2), (cmd::PUBLISH, cmd::PUBLISH));
        assert_eq!(&b1[..], &publish[..]);
        let notify = hex("0000000000000007 0000000000000002 0000000000000000
             0000000000000000 1122334455667788 0014
             00000008 00000000 1d 02 00 00 0000000000001000");
        assert_eq!(&b2[..], &notify[..]);
        assert_eq!(
            RouteBody::decode(c2, &b2).expect("decodes"),
            RouteBody::Publish(message.sync_notify())
        );
        // With its push byte, also the PUSH naming the receiver.
        let expected = push.then(|| PushRequest {
            appid: 7,
            receivers: vec![2],
            inner: message.inner.clone(),
        });
        assert_eq!(legacy.push, expected);
    }
    // STORED_PUBLISH is empty both ways.
    roundtrip(&RouteBody::StoredPublish, &[]);
    assert_eq!(RouteBody::StoredPublish.cmd(), 142);
    // No push byte, or no sync key: an error, not a panic.
    assert!(matches!(
        RouteBody::decode(cmd::PUBLISH_STORED, &Bytes::from(publish.clone())),
        Err(RouteProtoError::TooShort { .. })
    ));
    let mut keyless = publish;
    keyless[16..24].fill(0);
    keyless.push(0);
    assert!(matches!(
        RouteBody::decode(cmd::PUBLISH_STORED, &Bytes::from(keyless)),
        Err(RouteProtoError::BadValue { .. })
    ));
}

#[test]
fn push_golden() {
    let inner = inner();
    let mut golden = hex("0000000000000007 0002 0000000000000003 0000000000000004 0026");
    golden.extend_from_slice(&inner);
    let body = RouteBody::Push(PushRequest {
        appid: 7,
        receivers: vec![3, 4],
        inner: Bytes::from(inner.clone()),
    });
    roundtrip(&body, &golden);
    assert_eq!(frame(&body, 1)[8], 134);
    assert_eq!(
        push_bodies(7, &[3, 4], &inner).expect("encodes"),
        vec![Bytes::from(golden)]
    );
}

#[test]
fn odd_input_is_an_error_not_a_panic() {
    let short = |c: u8, n: usize| RouteBody::decode(c, &Bytes::from(vec![0u8; n]));
    assert!(matches!(
        short(cmd::SUBSCRIBE, 16),
        Err(RouteProtoError::TooShort { .. })
    ));
    assert!(matches!(
        short(cmd::UNSUBSCRIBE, 15),
        Err(RouteProtoError::TooShort { .. })
    ));
    assert!(matches!(
        short(cmd::SUBSCRIBE_ROOM, 0),
        Err(RouteProtoError::TooShort { .. })
    ));
    assert!(matches!(
        short(cmd::PUBLISH, 41),
        Err(RouteProtoError::TooShort { .. })
    ));
    assert!(matches!(
        short(cmd::PUSH, 11),
        Err(RouteProtoError::TooShort { .. })
    ));
    assert_eq!(short(99, 20), Err(RouteProtoError::UnknownCommand(99)));
    // An inner length running past the body.
    let mut b = hex(
        "0000000000000007 0000000000000002 0000000000000000 0000000000000000 0000000000000000 0100",
    );
    b.extend_from_slice(&[0u8; 20]);
    assert!(matches!(
        RouteBody::decode(cmd::PUBLISH, &Bytes::from(b)),
        Err(RouteProtoError::TooShort { .. })
    ));
    // An inner frame whose header claims more than it has.
    let mut b = hex(
        "0000000000000007 0000000000000002 0000000000000000 0000000000000000 0000000000000000 000c",
    );
    b.extend_from_slice(&hex("00000005 00000000 04 02 00 00"));
    assert!(matches!(
        RouteBody::decode(cmd::PUBLISH, &Bytes::from(b)),
        Err(RouteProtoError::BadInner { .. })
    ));
    // An inner frame shorter than a header.
    let mut b = hex(
        "0000000000000007 0000000000000002 0000000000000000 0000000000000000 0000000000000000 0004",
    );
    b.extend_from_slice(&[0u8; 4]);
    assert!(matches!(
        RouteBody::decode(cmd::PUBLISH_ROOM, &Bytes::from(b)),
        Err(RouteProtoError::BadInner { .. })
    ));
    // A receiver count running past the body.
    let b = hex("0000000000000007 ffff 0000");
    assert!(matches!(
        RouteBody::decode(cmd::PUSH, &Bytes::from(b)),
        Err(RouteProtoError::TooShort { .. })
    ));
    // Every truncation of a valid PUSH fails cleanly.
    let mut golden = hex("0000000000000007 0002 0000000000000003 0000000000000004 0026");
    golden.extend_from_slice(&inner());
    for n in 0..golden.len() {
        assert!(
            RouteBody::decode(cmd::PUSH, &Bytes::copy_from_slice(&golden[..n])).is_err(),
            "{n}"
        );
    }
}

#[test]
fn metadata_flags_check() {
    let mut m = RoutedMessage {
        kind: RouteKind::Group,
        appid: 7,
        receiver: 2,
        msgid: 5,
        prev_msgid: 0,
        timestamp_ns: 0,
        inner: Bytes::from(inner()),
    };
    // PUSH without SUPER_GROUP on a group message with metadata.
    assert!(!m.flags_consistent());
    m.kind = RouteKind::User;
    assert!(m.flags_consistent());
    m.msgid = 0;
    m.inner = Bytes::from_static(b"junk");
    assert!(m.flags_consistent());
    assert!(m.inner_frame().is_none());
}
