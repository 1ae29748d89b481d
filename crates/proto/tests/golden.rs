//! Golden byte tests: every expected byte string below was written by hand from the layout tables of
//! docs/protocol.md §3.1 (header) and §6 (bodies), not produced by the code under test. Each case
//! is encoded and compared with the bytes, and the bytes are decoded and compared with the value.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use bytes::{Bytes, BytesMut};
use proto::{
    cmd, flag, Ack, AckStatus, AuthToken, Body, Customer, Frame, GroupSyncKey, Header, Im,
    Metadata, Platform, Rt, HEADER_LEN, MAX_BODY_LEN, STORAGE_VERSION,
};

/// Parses whitespace-separated hex ("01 02 0a" or "01020a").
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| (c as char).to_digit(16).expect("hex digit") as u8)
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits in {s:?}");
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

/// `body` encodes to exactly `expected` in each of `versions`, and `expected` decodes back to `body`.
fn golden(body: &Body, versions: &[u8], expected: &str) {
    let expected = hex(expected);
    for &v in versions {
        let enc = body.to_bytes(v);
        assert_eq!(
            &enc[..],
            &expected[..],
            "encode {} v{v}",
            cmd::name(body.cmd())
        );
        assert_eq!(body.encoded_len(v), expected.len(), "encoded_len v{v}");
        let dec = Body::decode(body.cmd(), v, &Bytes::from(expected.clone()))
            .unwrap_or_else(|e| panic!("decode {} v{v}: {e}", cmd::name(body.cmd())));
        assert_eq!(&dec, body, "decode {} v{v}", cmd::name(body.cmd()));
    }
}

/// `expected` decodes (as `cmd`, version `v`) to `body`.
fn decodes_to(cmd: u8, v: u8, bytes: &str, body: &Body) {
    let got = Body::decode(cmd, v, &Bytes::from(hex(bytes))).expect("decodes");
    assert_eq!(&got, body, "decode {} v{v}", cmd::name(cmd));
}

const ALL: &[u8] = &[0, 1, 2, 3, 255];

// Field values with distinct bytes, so that a swapped or shifted field shows up.
const A: i64 = 0x0102_0304_0506_0708;
const B: i64 = 0x1112_1314_1516_1718;
const TS: i32 = 0x5E0B_E100; // 2020-01-01T00:00:00Z
const MSGID: i32 = 42;

fn im(timestamp: i32) -> Im {
    Im {
        sender: A,
        receiver: B,
        timestamp,
        msgid: MSGID,
        content: Bytes::from_static(b"hi"),
    }
}

// ---- docs/protocol.md §5: command numbers, §7: constants ----

#[test]
fn command_numbers_match_spec_catalogue() {
    let table: &[(u8, u8)] = &[
        (cmd::AUTH_STATUS, 3),
        (cmd::IM, 4),
        (cmd::ACK, 5),
        (cmd::GROUP_NOTIFICATION, 7),
        (cmd::GROUP_IM, 8),
        (cmd::PING, 13),
        (cmd::PONG, 14),
        (cmd::AUTH_TOKEN, 15),
        (cmd::RT, 17),
        (cmd::ENTER_ROOM, 18),
        (cmd::LEAVE_ROOM, 19),
        (cmd::ROOM_IM, 20),
        (cmd::SYSTEM, 21),
        (cmd::UNREAD_COUNT, 22),
        (cmd::CUSTOMER_DEPRECATED, 24),
        (cmd::CUSTOMER_SUPPORT_DEPRECATED, 25),
        (cmd::SYNC, 26),
        (cmd::SYNC_BEGIN, 27),
        (cmd::SYNC_END, 28),
        (cmd::SYNC_NOTIFY, 29),
        (cmd::SYNC_GROUP, 30),
        (cmd::SYNC_GROUP_BEGIN, 31),
        (cmd::SYNC_GROUP_END, 32),
        (cmd::SYNC_GROUP_NOTIFY, 33),
        (cmd::SYNC_KEY, 34),
        (cmd::GROUP_SYNC_KEY, 35),
        (cmd::NOTIFICATION, 36),
        (cmd::METADATA, 37),
        (cmd::CUSTOMER_V2, 64),
    ];
    for &(constant, spec) in table {
        assert_eq!(constant, spec, "{}", cmd::name(constant));
        assert_ne!(cmd::name(constant), "UNKNOWN");
    }
}

#[test]
fn constants_match_spec() {
    // §7.1 flags
    assert_eq!(
        [
            flag::TEXT,
            flag::UNPERSISTENT,
            flag::GROUP,
            flag::SELF,
            flag::PUSH,
            flag::SUPER_GROUP
        ],
        [0x01, 0x02, 0x04, 0x08, 0x10, 0x20]
    );
    // §7.2 platforms
    assert_eq!((Platform::IOS, Platform::ANDROID, Platform::WEB), (1, 2, 3));
    assert!(Platform::is_mobile(1) && Platform::is_mobile(2));
    assert!(!Platform::is_mobile(3) && !Platform::is_mobile(4) && !Platform::is_mobile(0));
    // §7.3 ACK status
    assert_eq!(
        [
            AckStatus::SUCCESS,
            AckStatus::NOT_MY_FRIEND,
            AckStatus::NOT_YOUR_FRIEND,
            AckStatus::IN_YOUR_BLACKLIST,
            AckStatus::NOT_GROUP_MEMBER,
            AckStatus::GROUP_NONEXIST
        ],
        [0, 1, 2, 3, 64, 65]
    );
    // §3.1, §3.2, §4
    assert_eq!(HEADER_LEN, 12);
    assert_eq!(MAX_BODY_LEN, 32767);
    assert_eq!(STORAGE_VERSION, 2);
}

// ---- §6.1 AUTH_TOKEN ----

#[test]
fn auth_token() {
    let body = Body::AuthToken(AuthToken {
        platform_id: Platform::ANDROID,
        token: Bytes::from_static(b"abc"),
        device_id: Bytes::from_static(b"d1"),
    });
    // platform 02 | T=03 "abc" | D=02 "d1"
    golden(&body, ALL, "02 03 616263 02 6431");
    // Trailing bytes are ignored.
    decodes_to(cmd::AUTH_TOKEN, 1, "02 03 616263 02 6431 ff ee", &body);

    // Web, empty token, 36-byte UUID device id.
    let uuid = b"123e4567-e89b-12d3-a456-426614174000";
    let body = Body::AuthToken(AuthToken {
        platform_id: Platform::WEB,
        token: Bytes::new(),
        device_id: Bytes::from_static(uuid),
    });
    let mut want = String::from("03 00 24");
    for b in uuid {
        want.push_str(&format!(" {b:02x}"));
    }
    golden(&body, ALL, &want);

    // Token and device id of exactly 255 bytes each (the length byte's limit).
    let body = Body::AuthToken(AuthToken {
        platform_id: 4,
        token: Bytes::from(vec![b't'; 255]),
        device_id: Bytes::from(vec![b'd'; 255]),
    });
    let want = format!("04 ff {} ff {}", "74".repeat(255), "64".repeat(255));
    golden(&body, &[2], &want);
}

#[test]
fn auth_token_with_empty_fields_is_padded_to_the_minimum_length() {
    // docs/protocol.md §6.1: the body must be >= 4 bytes; trailing bytes are ignored. An AUTH_TOKEN
    // with empty token and device id is written with one trailing zero so that it is accepted.
    let body = Body::AuthToken(AuthToken {
        platform_id: Platform::IOS,
        token: Bytes::new(),
        device_id: Bytes::new(),
    });
    golden(&body, ALL, "01 00 00 00");
}

#[test]
fn auth_token_longer_than_255_is_truncated_and_length_agrees() {
    let body = Body::AuthToken(AuthToken {
        platform_id: 1,
        token: Bytes::from(vec![b'j'; 300]),
        device_id: Bytes::from(vec![b'u'; 256]),
    });
    let enc = body.to_bytes(2);
    let want = hex(&format!(
        "01 ff {} ff {}",
        "6a".repeat(255),
        "75".repeat(255)
    ));
    assert_eq!(&enc[..], &want[..]);
    assert_eq!(body.encoded_len(2), want.len());

    // The header written by encode_frame must declare the real body length, or the stream desyncs.
    let mut stream = BytesMut::new();
    body.encode_frame(1, 2, 0, &mut stream);
    Body::Ping.encode_frame(2, 2, 0, &mut stream);
    let f = Frame::decode(&mut stream, MAX_BODY_LEN).unwrap().unwrap();
    assert_eq!(f.body, enc);
    let p = Frame::decode(&mut stream, MAX_BODY_LEN).unwrap().unwrap();
    assert_eq!((p.seq, p.cmd, p.body.len()), (2, cmd::PING, 0));
    assert!(stream.is_empty());
}

// ---- §6.2 AUTH_STATUS ----

#[test]
fn auth_status() {
    golden(&Body::AuthStatus(0), ALL, "00000000");
    golden(&Body::AuthStatus(1), ALL, "00000001");
    golden(&Body::AuthStatus(-2), ALL, "fffffffe");
}

// ---- §6.3 IM and GROUP_IM ----

#[test]
fn im_version_0_has_a_20_byte_fixed_part_without_timestamp() {
    // sender | receiver | msgid | "hi"
    let v0 = "0102030405060708 1112131415161718 0000002a 6869";
    golden(&Body::Im(im(0)), &[0], v0);
    golden(&Body::GroupIm(im(0)), &[0], v0);
    // A timestamp is dropped when encoding for v0 (§6.3).
    assert_eq!(&Body::Im(im(TS)).to_bytes(0)[..], &hex(v0)[..]);
    assert_eq!(Body::GroupIm(im(TS)).encoded_len(0), 22);
    // Exactly the fixed part: empty content.
    let empty = Body::Im(Im {
        content: Bytes::new(),
        ..im(0)
    });
    golden(&empty, &[0], "0102030405060708 1112131415161718 0000002a");
}

#[test]
fn im_version_1_and_above_has_a_24_byte_fixed_part() {
    // sender | receiver | timestamp | msgid | "hi"
    let v1 = "0102030405060708 1112131415161718 5e0be100 0000002a 6869";
    golden(&Body::Im(im(TS)), &[1, 2, 3, 255], v1);
    golden(&Body::GroupIm(im(TS)), &[1, 2, 3, 255], v1);

    let neg = Body::Im(Im {
        sender: -1,
        receiver: i64::MIN,
        timestamp: -1,
        msgid: i32::MIN,
        content: Bytes::new(),
    });
    golden(
        &neg,
        &[1, 2],
        "ffffffffffffffff 8000000000000000 ffffffff 80000000",
    );
}

#[test]
fn im_same_bytes_read_differently_by_version() {
    // 24 bytes read as v0: msgid is bytes 16..20, content starts at 20.
    let bytes = "0102030405060708 1112131415161718 5e0be100 0000002a";
    decodes_to(
        cmd::IM,
        0,
        bytes,
        &Body::Im(Im {
            sender: A,
            receiver: B,
            timestamp: 0,
            msgid: TS,
            content: Bytes::from(hex("0000002a")),
        }),
    );
    decodes_to(
        cmd::GROUP_IM,
        2,
        bytes,
        &Body::GroupIm(Im {
            content: Bytes::new(),
            ..im(TS)
        }),
    );
}

// ---- §6.4 ACK ----

#[test]
fn ack_is_4_bytes_below_version_2_and_5_bytes_from_version_2() {
    let ack = |status| {
        Body::Ack(Ack {
            seq: 0x0000_0107,
            status,
        })
    };
    golden(&ack(0), &[0, 1], "00000107");
    golden(&ack(0), &[2, 3, 255], "00000107 00");
    golden(&ack(AckStatus::NOT_GROUP_MEMBER), &[2, 3], "00000107 40");
    golden(&ack(AckStatus::NOT_ALLOWED), &[2], "00000107 47");
    golden(&ack(-1), &[2], "00000107 ff");
    // Below v2 the status is not written.
    assert_eq!(
        &ack(AckStatus::IN_YOUR_BLACKLIST).to_bytes(1)[..],
        &hex("00000107")[..]
    );
    // Negative seq.
    golden(&Body::Ack(Ack { seq: -2, status: 3 }), &[2], "fffffffe 03");
}

// ---- §6.5 raw-content bodies ----

#[test]
fn raw_content_bodies() {
    let json = Bytes::from_static(br#"{"create":{}}"#);
    let want = "7b22637265617465223a7b7d7d";
    golden(&Body::GroupNotification(json.clone()), ALL, want);
    golden(&Body::System(json.clone()), ALL, want);
    golden(&Body::Notification(json.clone()), ALL, want);
    golden(&Body::System(Bytes::new()), ALL, "");
    golden(
        &Body::Deprecated {
            cmd: 24,
            body: Bytes::from_static(b"\x00\x01"),
        },
        ALL,
        "0001",
    );
    golden(
        &Body::Deprecated {
            cmd: 25,
            body: Bytes::new(),
        },
        ALL,
        "",
    );
}

#[test]
fn ping_and_pong_are_empty() {
    golden(&Body::Ping, ALL, "");
    golden(&Body::Pong, ALL, "");
}

// ---- §6.6 RT and ROOM_IM ----

#[test]
fn rt_and_room_im() {
    let rt = Rt {
        sender: A,
        receiver: B,
        content: Bytes::from_static(b"rt!"),
    };
    let want = "0102030405060708 1112131415161718 727421";
    golden(&Body::Rt(rt.clone()), ALL, want);
    golden(&Body::RoomIm(rt.clone()), ALL, want);
    golden(
        &Body::RoomIm(Rt {
            content: Bytes::new(),
            ..rt
        }),
        ALL,
        "0102030405060708 1112131415161718",
    );
}

// ---- §6.7 ENTER/LEAVE_ROOM, §6.8 UNREAD_COUNT ----

#[test]
fn rooms_and_unread_count() {
    golden(&Body::EnterRoom(A), ALL, "0102030405060708");
    golden(&Body::LeaveRoom(-1), ALL, "ffffffffffffffff");
    golden(&Body::UnreadCount(7), ALL, "00000007");
    golden(&Body::UnreadCount(i32::MAX), ALL, "7fffffff");
    // Trailing bytes of fixed layouts are ignored.
    decodes_to(
        cmd::ENTER_ROOM,
        2,
        "0102030405060708 99",
        &Body::EnterRoom(A),
    );
    decodes_to(cmd::UNREAD_COUNT, 1, "00000007 0000", &Body::UnreadCount(7));
}

// ---- §6.9 peer sync-key bodies ----

#[test]
fn peer_sync_key_bodies() {
    let key = 0x0000_0001_0000_0002;
    let want = "0000000100000002";
    for body in [
        Body::Sync(key),
        Body::SyncBegin(key),
        Body::SyncEnd(key),
        Body::SyncNotify(key),
        Body::SyncKey(key),
    ] {
        golden(&body, ALL, want);
    }
    assert_eq!(
        [
            Body::Sync(0).cmd(),
            Body::SyncBegin(0).cmd(),
            Body::SyncEnd(0).cmd(),
            Body::SyncNotify(0).cmd(),
            Body::SyncKey(0).cmd()
        ],
        [26, 27, 28, 29, 34]
    );
}

// ---- §6.10 group sync-key bodies ----

#[test]
fn group_sync_key_bodies() {
    let g = GroupSyncKey {
        group_id: A,
        sync_key: 0x100,
    };
    let want = "0102030405060708 0000000000000100";
    for body in [
        Body::SyncGroup(g),
        Body::SyncGroupBegin(g),
        Body::SyncGroupEnd(g),
        Body::SyncGroupNotify(g),
        Body::GroupSyncKey(g),
    ] {
        golden(&body, ALL, want);
    }
    assert_eq!(
        [
            Body::SyncGroup(g).cmd(),
            Body::SyncGroupBegin(g).cmd(),
            Body::SyncGroupEnd(g).cmd(),
            Body::SyncGroupNotify(g).cmd(),
            Body::GroupSyncKey(g).cmd()
        ],
        [30, 31, 32, 33, 35]
    );
}

// ---- §6.11 METADATA ----

#[test]
fn metadata_is_always_32_bytes_with_16_zero_bytes() {
    let m = Body::Metadata(Metadata {
        sync_key: 0x100,
        prev_sync_key: 0xff,
    });
    golden(
        &m,
        ALL,
        "0000000000000100 00000000000000ff 00000000000000000000000000000000",
    );
    // The reserved bytes are ignored on read.
    decodes_to(
        cmd::METADATA,
        2,
        "0000000000000100 00000000000000ff ffffffffffffffffffffffffffffffff ab",
        &m,
    );
}

// ---- §6.12 CUSTOMER_V2 ----

#[test]
fn customer_v2_has_a_36_byte_fixed_part() {
    let c = Body::Customer(Customer {
        sender_appid: 7,
        sender: A,
        receiver_appid: 8,
        receiver: B,
        timestamp: TS,
        content: Bytes::from_static(b"x"),
    });
    // sender_appid | sender | receiver_appid | receiver | timestamp | "x"
    golden(
        &c,
        ALL,
        "0000000000000007 0102030405060708 0000000000000008 1112131415161718 5e0be100 78",
    );
    assert_eq!(c.cmd(), 64);
}

// ---- §3.1 whole frames ----

fn golden_frame(body: &Body, seq: i32, version: u8, fl: u8, expected: &str) {
    let expected = hex(expected);
    let mut out = BytesMut::new();
    body.encode_frame(seq, version, fl, &mut out);
    assert_eq!(&out[..], &expected[..], "frame {}", cmd::name(body.cmd()));

    let mut buf = BytesMut::from(&expected[..]);
    let f = Frame::decode(&mut buf, MAX_BODY_LEN).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(
        (f.seq, f.cmd, f.version, f.flag),
        (seq, body.cmd(), version, fl)
    );
    assert_eq!(&f.body[..], &expected[HEADER_LEN..]);
    assert_eq!(&f.to_bytes()[..], &expected[..]);
    assert_eq!(&Body::decode(f.cmd, f.version, &f.body).unwrap(), body);

    let h = Header::parse(&expected, MAX_BODY_LEN).unwrap().unwrap();
    assert_eq!(
        h,
        Header {
            len: expected.len() - HEADER_LEN,
            seq,
            cmd: body.cmd(),
            version,
            flag: fl
        }
    );
}

#[test]
fn whole_frames() {
    // length | seq | cmd | version | flag | reserved
    golden_frame(
        &Body::Im(im(TS)),
        5,
        1,
        flag::TEXT,
        "0000001a 00000005 04 01 01 00
         0102030405060708 1112131415161718 5e0be100 0000002a 6869",
    );
    golden_frame(
        &Body::Im(im(0)),
        6,
        0,
        0,
        "00000016 00000006 04 00 00 00
         0102030405060708 1112131415161718 0000002a 6869",
    );
    golden_frame(&Body::Ping, 1, 2, 0, "00000000 00000001 0d 02 00 00");
    golden_frame(
        &Body::Ack(Ack {
            seq: 0x107,
            status: 0,
        }),
        3,
        2,
        flag::SUPER_GROUP,
        "00000005 00000003 05 02 20 00 00000107 00",
    );
    golden_frame(
        &Body::AuthToken(AuthToken {
            platform_id: 2,
            token: Bytes::from_static(b"abc"),
            device_id: Bytes::from_static(b"d1"),
        }),
        0,
        2,
        0,
        "00000008 00000000 0f 02 00 00 02 03 616263 02 6431",
    );
    golden_frame(
        &Body::Metadata(Metadata {
            sync_key: 2,
            prev_sync_key: 1,
        }),
        -1,
        2,
        flag::PUSH,
        "00000020 ffffffff 25 02 10 00
         0000000000000002 0000000000000001 00000000000000000000000000000000",
    );
    golden_frame(
        &Body::GroupSyncKey(GroupSyncKey {
            group_id: 9,
            sync_key: 10,
        }),
        0x7fff_ffff,
        3,
        0,
        "00000010 7fffffff 23 03 00 00 0000000000000009 000000000000000a",
    );
}

#[test]
fn reserved_header_byte_is_ignored_on_read_and_written_as_zero() {
    let bytes = hex("00000000 00000009 0e 01 00 ff");
    let mut buf = BytesMut::from(&bytes[..]);
    let f = Frame::decode(&mut buf, MAX_BODY_LEN).unwrap().unwrap();
    assert_eq!((f.seq, f.cmd, f.version, f.flag), (9, cmd::PONG, 1, 0));
    assert_eq!(&f.to_bytes()[..], &hex("00000000 00000009 0e 01 00 00")[..]);
}
