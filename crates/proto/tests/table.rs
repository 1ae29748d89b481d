//! The command table agrees with the bodies, and the helpers for stored bodies (version-0 re-layout,
//! sender access, the stored frame writer) agree with the typed encoding.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use bytes::{Bytes, BytesMut};
use proto::cmd::{self, Layout, COMMANDS};
use proto::{body, flag, Body, Customer, Frame, Im, Metadata, Sender};

/// A body of each layout's minimum length that decodes.
fn minimal(layout: Layout) -> Option<Bytes> {
    let len = match layout {
        Layout::Empty | Layout::Raw => 0,
        Layout::I32 => 4,
        Layout::Ack => 5,
        Layout::AuthToken => return Some(Bytes::from_static(&[1, 0, 0, 0])),
        Layout::Key => 8,
        Layout::GroupKey | Layout::Rt => 16,
        Layout::Im => 24,
        Layout::Metadata => 32,
        Layout::Customer => 36,
        Layout::Internal => return None,
    };
    Some(Bytes::from(vec![0u8; len]))
}

#[test]
fn every_command_is_in_the_table_once_and_decodes_with_its_layout() {
    for (i, c) in COMMANDS.iter().enumerate() {
        assert_eq!(cmd::info(c.number), Some(c), "{}", c.name);
        assert!(
            COMMANDS[i + 1..].iter().all(|o| o.number != c.number),
            "{} twice",
            c.name
        );
        let Some(b) = minimal(c.layout) else {
            assert!(Body::decode(c.number, 2, &Bytes::new()).is_err());
            continue;
        };
        let decoded = Body::decode(c.number, 2, &b).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(decoded.cmd(), c.number, "{}", c.name);
        assert_eq!(decoded.to_stored(), b, "{} re-encodes", c.name);
    }
    assert_eq!(cmd::info(0), None);
    assert_eq!(cmd::name(200), "UNKNOWN");
}

#[test]
fn before_auth_commands() {
    // PING is answered and AUTH_TOKEN handled; ACK, PONG, METADATA and the deprecated commands are
    // ignored whatever the state. Every other client command waits for authentication.
    let expected = [5, 13, 14, 15, 24, 25, 37];
    for c in 0..=255u8 {
        assert_eq!(cmd::before_auth(c), expected.contains(&c), "cmd {c}");
        if cmd::before_auth(c) {
            assert!(cmd::client_allowed(c), "cmd {c}");
        }
    }
}

fn im(timestamp: i32) -> Im {
    Im {
        sender: 7,
        receiver: 9,
        timestamp,
        msgid: 3,
        content: Bytes::from_static(b"hello"),
    }
}

#[test]
fn stored_bodies_are_relaid_for_version_0_only() {
    let stored = Body::Im(im(1234)).to_stored();
    for v in 0..=3u8 {
        let (head, tail) = body::relayout(cmd::IM, v, &stored);
        let joined = [head, tail].concat();
        let expected = Body::Im(im(if v == 0 { 0 } else { 1234 })).to_bytes(v);
        assert_eq!(joined, &expected[..], "v{v}");
    }
    // Other commands, and a body too short to be an IM, are never touched.
    let rt = Body::Rt(proto::Rt {
        sender: 1,
        receiver: 2,
        content: Bytes::from_static(b"abcdefgh"),
    })
    .to_stored();
    assert_eq!(body::relayout(cmd::RT, 0, &rt), (&rt[..], &[][..]));
    assert_eq!(
        body::relayout(cmd::IM, 0, &[1, 2, 3]),
        (&[1u8, 2, 3][..], &[][..])
    );
}

#[test]
fn the_stored_frame_writer_matches_the_typed_encoding() {
    for v in 0..=2u8 {
        let body = Body::GroupIm(im(if v == 0 { 0 } else { 99 }));
        let stored = Body::GroupIm(im(99)).to_stored();
        let mut a = BytesMut::new();
        proto::write_stored(&mut a, 42, v, cmd::GROUP_IM, flag::PUSH, &stored);
        let mut b = BytesMut::new();
        body.encode_frame(42, v, flag::PUSH, &mut b);
        assert_eq!(a, b, "v{v}");
    }
    let inner = proto::stored_frame(cmd::SYNC_NOTIFY, 0, &Body::SyncNotify(5).to_stored());
    let mut buf = BytesMut::from(&inner[..]);
    let f = Frame::decode(&mut buf, proto::MAX_BODY_LEN)
        .unwrap()
        .unwrap();
    assert_eq!((f.seq, f.cmd, f.version), (0, cmd::SYNC_NOTIFY, 2));
    assert_eq!(
        Body::decode(f.cmd, 2, &f.body).unwrap(),
        Body::SyncNotify(5)
    );
}

#[test]
fn senders_of_stored_bodies() {
    let stored = Body::Im(im(1)).to_stored();
    let sender = Sender {
        appid: None,
        uid: 7,
    };
    assert_eq!(body::stored_sender(cmd::IM, &stored), Some(sender));
    assert_eq!(body::stored_sender(cmd::GROUP_IM, &stored), Some(sender));
    let c = Body::Customer(Customer {
        sender_appid: 11,
        sender: 12,
        receiver_appid: 13,
        receiver: 14,
        timestamp: 0,
        content: Bytes::new(),
    })
    .to_stored();
    assert_eq!(
        body::stored_sender(cmd::CUSTOMER_V2, &c),
        Some(Sender {
            appid: Some(11),
            uid: 12
        })
    );
    assert_eq!(
        body::stored_sender(cmd::SYSTEM, b"0123456789abcdefghijklmnopqrstuvwxyz"),
        None
    );
    assert_eq!(body::stored_sender(cmd::IM, &stored[..23]), None);
    assert_eq!(body::stored_sender(cmd::CUSTOMER_V2, &c[..35]), None);
}

#[test]
fn pushed_length_counts_both_frames() {
    let meta = Body::Metadata(Metadata {
        sync_key: 1,
        prev_sync_key: 0,
    });
    let mut b = BytesMut::new();
    meta.encode_frame(1, 2, 0, &mut b);
    Body::Im(im(1)).encode_frame(2, 2, 0, &mut b);
    let body_len = Body::Im(im(1)).to_stored().len();
    assert_eq!(proto::pushed_len(body_len, true), b.len());
    assert_eq!(
        proto::pushed_len(body_len, false),
        proto::HEADER_LEN + body_len
    );
}
